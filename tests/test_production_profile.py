"""The production profile of the frozen firmware (`make firmware PROFILE=production`, docs/security.md)
as far as it can be checked without ESP-IDF, a board or eFuses: the sdkconfig fragment and partition
table say what they must, the profile is in the build id and the manifest, the build refuses to start
without a signing key, and on the virtual board a provisioned production reader gives no REPL on its
serial console while it keeps deciding cards."""
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_firmware import FAKE_DOCKER, _env, _fake_bin, _run_cli
from tools import firmware
from tools.site import ReaderSpec, SiteSpec, VirtualSite, present
from tools.virtual_board.image import romfs_image

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "tools" / "demo_data" / "cards.csv"
ANNA, CARL = "04a1b2c3d4e5f6", "04c0ffee112233"  # active; never activated


@pytest.mark.parametrize("chip", sorted(firmware.DEFS))
def test_the_production_fragment_sets_what_security_md_asks(chip, tmp_path):
    d = firmware.def_dir(chip)
    assert firmware.check_production(d, chip) == []
    frag = firmware.read_fragment(d / "sdkconfig.production")
    assert frag["CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE"] == "y" and frag["CONFIG_SECURE_BOOT_V2_ENABLED"] == "y"
    assert frag["CONFIG_NVS_ENCRYPTION"] == "y" and frag.get("CONFIG_SECURE_BOOT_ALLOW_JTAG", "n") == "n"
    # a copy with flash encryption in development mode, JTAG left on, vfs not encrypted: each named
    bad = tmp_path / d.name
    shutil.copytree(d, bad)
    text = (bad / "sdkconfig.production").read_text()
    text = text.replace("CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE=y", "CONFIG_SECURE_FLASH_ENCRYPTION_MODE_DEVELOPMENT=y")
    text = text.replace("# CONFIG_SECURE_BOOT_ALLOW_JTAG is not set", "CONFIG_SECURE_BOOT_ALLOW_JTAG=y")
    (bad / "sdkconfig.production").write_text(text)
    parts = (bad / "partitions-production.csv").read_text()
    (bad / "partitions-production.csv").write_text(parts.replace("0x200000, encrypted", "0x200000,")
                                                   .replace("0x600000, encrypted", "0x600000,"))
    problems = "\n".join(firmware.check_production(bad, chip))
    assert "CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE is 'n', production needs 'y'" in problems
    assert "CONFIG_SECURE_BOOT_ALLOW_JTAG is 'y', production needs 'n'" in problems
    assert "vfs is not flagged encrypted" in problems


def test_the_profile_is_in_the_build_id_and_the_build_needs_a_signing_key(tmp_path):
    d = firmware.def_dir("esp32")
    dev, prod = firmware.build_id(d), firmware.build_id(d, profile="production")
    assert dev != prod and prod == firmware.build_id(d, profile="production")
    assert "PROFILE = 'production'" in firmware.gv_build_source(d, prod, "production")
    with pytest.raises(firmware.FirmwareError, match="unknown profile"):
        firmware.build_id(d, profile="prod")
    # the production fragment is an input of the production id only
    copy = tmp_path / "boards" / "micropython" / d.name  # the layout the manifest expects
    shutil.copytree(d, copy)
    shutil.copytree(firmware.FIRMWARE, tmp_path / "firmware", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "sdkconfig.production").write_text((d / "sdkconfig.production").read_text() + "# changed\n")
    assert firmware.build_id(copy) == dev and firmware.build_id(copy, profile="production") != prod
    with pytest.raises(firmware.NoToolchain, match="(?s)GV_SECURE_BOOT_KEY is not set: .*espsecure generate-signing-key"):
        firmware.signing_key({})


def test_a_production_build_passes_the_profile_and_key_and_says_so_in_the_manifest(tmp_path):
    mp = tmp_path / "micropython"
    mp.mkdir()
    git = ["git", "-C", str(mp), "-c", "user.name=t", "-c", "user.email=t@t"]
    for c in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"], ["tag", firmware.MICROPYTHON_TAG]):
        subprocess.run(git + c, check=True)
    out_root = tmp_path / "out"
    out = out_root / "GRINDVAKT_ESP32-production"
    key = tmp_path / "keys" / "sb.pem"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY-----\n(stand-in)\n-----END PRIVATE KEY-----\n")
    bindir = _fake_bin(tmp_path, "docker", FAKE_DOCKER)
    env = _env(tmp_path, f"{bindir}:/usr/bin:/bin", MICROPY_DIR=str(mp),
               FAKE_DOCKER_LOG=str(tmp_path / "docker.log"), EXPECT_GEN=str(out))
    no_key = _run_cli(["build", "boards/esp32-spi.json", "--profile", "production", "--out", str(out_root)], env)
    assert no_key.returncode == 2 and "GV_SECURE_BOOT_KEY is not set" in no_key.stderr
    assert not out.exists()
    r = _run_cli(["build", "boards/esp32-spi.json", "--profile", "production", "--out", str(out_root)],
                 dict(env, GV_SECURE_BOOT_KEY=str(key)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "profile production" in r.stdout and "burns eFuses" in r.stdout
    run = [json.loads(x) for x in (tmp_path / "docker.log").read_text().splitlines() if json.loads(x)[0] == "run"][-1]
    assert "GV_FIRMWARE_PROFILE=production" in run and f"{key}:{key}:ro" in run
    m = json.loads((out / "manifest.json").read_text())
    assert m["profile"] == "production" and m["partitions"] == "partitions-production.csv"
    assert m["build_id"] == firmware.build_id(firmware.def_dir("esp32"), profile="production")
    assert (out / "sdkconfig.signing").read_text() == f'CONFIG_SECURE_BOOT_SIGNING_KEY="{key}"\n'
    assert "PROFILE = 'production'" in (out / "gv_build.py").read_text()
    assert firmware.built_manifest("boards/esp32-spi.json", out_root, "production")["profile"] == "production"
    assert firmware.built_manifest("boards/esp32-spi.json", out_root) is None  # the development build: not made


def _serial(pty: str, data: bytes, wait: float = 1.5) -> bytes:
    """Write to the board's serial port as a terminal program would, and read what comes back."""
    import os
    import termios
    import tty

    fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd, termios.TCSANOW)
        os.write(fd, data)
        got, end = b"", time.monotonic() + wait
        while time.monotonic() < end:
            try:
                got += os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(0.05)
        return got
    finally:
        os.close(fd)


def test_a_provisioned_production_reader_gives_no_repl_and_still_decides(tmp_path):
    img = romfs_image(ROOT / "boards" / "esp32-devkitc-i2c.json", profile="production")
    with VirtualSite(tmp_path / "site", [SiteSpec("site-a", "Kvarteret Bavern", "BY-2026-000101"),
                                         SiteSpec("site-b", "Hamnen etapp 2", "BY-2026-000202")],
                     [ReaderSpec("gate-01", "site-a")], romfs=img) as site:
        site.start(CARDS)
        site.wait_converged(120)
        vb = site.readers["gate-01"].board
        assert any(e.get("event") == "console" and e.get("state") == "locked" for e in vb.events())
        assert present(vb, ANNA)["granted"]
        # Ctrl-C, the raw REPL (Ctrl-A), a soft reset (Ctrl-D), Enter: no prompt comes back
        got = _serial(vb.pty, b"\x03\x03\r\n\x01\x04\r\n")
        assert b">>>" not in got and b"raw REPL" not in got, got
        p = vb.mpremote("exec", "print('in')", resume=True, timeout=30)
        assert p.returncode != 0 and "could not enter raw repl" in (p.stdout + p.stderr).lower()
        # the reader never stopped: it still grants and refuses, with no reboot in between
        assert present(vb, ANNA)["granted"]
        assert not present(vb, CARL)["granted"]
        assert not [e for e in vb.events() if e.get("event") in ("boot", "crash") and e.get("boot", 1) > 1]


def test_a_production_board_is_provisioned_once_then_locks_its_console(tmp_path):
    import io

    from tests.test_install_deploy import reader_config
    from tools import deploy
    from tools.virtual_board.client import VirtualBoard

    board = ROOT / "boards" / "esp32-devkitc-i2c.json"
    img = romfs_image(board, profile="production")
    want = firmware.build_id(firmware.def_dir("esp32"), profile="production")
    with VirtualBoard(board, tmp_path / "flash.img", blank=True, romfs=img) as vb:
        vb.wait_for(lambda e: e.get("event") == "boot", 30)
        buf = io.StringIO()
        # the development build id is not what this board runs: refused before anything is written
        with pytest.raises(deploy.DeployError, match="this checkout builds"):
            deploy.deploy(vb.pty, board, config=reader_config(), hello_timeout=None,
                          progress=deploy.Progress(out=buf), build_root=tmp_path / "b")
        # unprovisioned (no config yet): the REPL is there, and the production deploy goes through
        vb.mark()
        rep = deploy.deploy(vb.pty, board, config=reader_config(), hello_timeout=None,
                            progress=deploy.Progress(out=buf), build_root=tmp_path / "b", profile="production")
        assert rep.config_written and f"the board runs firmware build {want}" in buf.getvalue()
        assert "build/firmware/GRINDVAKT_ESP32-production/firmware.bin" in buf.getvalue()
        # after the deploy's reset the reader holds secrets: console locked, no raw REPL
        vb.wait_for(lambda e: e.get("event") == "console" and e.get("state") == "locked", 60)
        p = vb.mpremote("exec", "print('in')", resume=True, timeout=30)
        assert p.returncode != 0 and "could not enter raw repl" in (p.stdout + p.stderr).lower()
        assert not any(e.get("event") == "crash" for e in vb.events())
