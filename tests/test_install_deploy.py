"""Deploy with the real mpremote onto the virtual board (the firmware on the unix port behind a pty)."""
import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tools import build, deploy, provision
from tools.virtual_board.client import VirtualBoard

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "boards" / "esp32-wrover-i2c.json"  # stock MicroPython + .mpy files: a PSRAM board
QUIET = deploy.Progress(quiet=True)


def reader_config(reader_id="gate-01", broker=None):
    return provision.make_config(
        reader_id, "site-a", wifi_ssid="site-a", wifi_password="wifi-secret", broker_host="127.0.0.1",
        broker_port=(broker or {}).get("port", 1883), broker_password=(broker or {}).get("password", "p" * 20),
        secret_hex=os.urandom(32).hex(), card_key_hex=os.urandom(16).hex(), pin_key_hex=os.urandom(16).hex(),
        tls=False, virtual=True)


@pytest.fixture
def vb(tmp_path):
    # a board with MicroPython and nothing else on its flash, as it comes from esptool
    with VirtualBoard(BOARD, tmp_path / "flash.img", blank=True) as b:
        b.wait_for(lambda e: e.get("event") == "boot", 30)
        yield b


def mpremote_cat(vb, path):
    out = vb.mpremote("fs", "cat", ":" + path, resume=False)  # soft reset first: a clean heap
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_first_deploy_then_nothing_then_one_changed_file(vb, tmp_path):
    src = tmp_path / "fw"
    shutil.copytree(build.FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = reader_config()
    kw = dict(config=cfg, hello_timeout=None, progress=QUIET, build_root=tmp_path / "build", src=src)
    # a board file for another chip is refused before anything is written
    with pytest.raises(deploy.DeployError, match="esp32s3 but the device is esp32"):
        deploy.deploy(vb.pty, ROOT / "boards" / "esp32s3-uart.json", **kw)

    # an old source left on the board would shadow the new .mpy: deploy must remove it
    old = vb.mpremote("exec", "import os; os.mkdir('gv'); f = open('gv/app.py', 'w'); f.write('OLD = 1'); f.close()",
                      resume=False)
    assert old.returncode == 0, old.stderr
    vb.mark()
    first = deploy.deploy(vb.pty, BOARD, **kw)
    manifest = json.loads((tmp_path / "build" / BOARD.stem / "manifest.json").read_text())
    n = len(manifest["files"])
    assert len(first.copied) == n and first.config_written and first.verified == n + 1
    assert first.removed == ["gv/app.py"]
    assert first.device["heap"] >= deploy.PSRAM_MIN_HEAP  # the PSRAM board's heap let the .mpy files on
    # the board was reset (that the deployed reader then comes up and says hello is
    # tests/test_install_hello.py's end-to-end case)
    vb.wait_for(lambda e: e.get("event") == "boot" and e["cause"] == "hard")
    state = json.loads(mpremote_cat(vb, "deploy.json"))  # checked with the mpremote CLI itself
    assert state["state"] == "complete" and state["build"] == manifest["build_id"]
    rid = vb.mpremote("exec", "import json; print(json.load(open('config.json'))['reader_id'])", resume=False)
    assert rid.stdout.strip().endswith("gate-01"), rid.stdout + rid.stderr

    second = deploy.deploy(vb.pty, BOARD, **kw)
    assert second.copied == [] and second.up_to_date and not second.config_written and second.removed == []

    app = src / "gv" / "app.py"
    app.write_text(app.read_text() + "\n_DEPLOY_TEST = 1\n")
    third = deploy.deploy(vb.pty, BOARD, **kw)
    assert third.copied == ["gv/app.mpy"] and not third.config_written and third.verified == n + 1
    out = vb.mpremote("exec", "import gv.app; print(gv.app._DEPLOY_TEST)", resume=False)
    assert out.stdout.strip().endswith("1"), out.stdout + out.stderr


def _cli(vb, tmp_path, cfg_path, *extra):
    src = tmp_path / "fw"  # a snapshot: the firmware/ folder may change while the test runs
    if not src.exists():
        shutil.copytree(build.FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    return [sys.executable, "-m", "tools.deploy", "--port", vb.pty, "--board", str(BOARD), "--reader",
            str(cfg_path), "--no-hello", "--build-dir", str(tmp_path / "build"), "--src", str(src), *extra]


def test_a_cut_mid_copy_is_detected_and_a_rerun_finishes(vb, tmp_path):
    cfg = reader_config()
    cfg_path = provision.write_config(cfg, tmp_path / "gate-01.json")
    proc = subprocess.Popen(_cli(vb, tmp_path, cfg_path), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "[4/" in line:  # three files are in place, the fourth is on its way: pull the cable
            vb.send("reset")
            proc.kill()
            break
    proc.wait()
    assert any("[4/" in x for x in lines), "".join(lines)
    state = json.loads(mpremote_cat(vb, "deploy.json"))
    assert state["state"] == "in-progress"  # the board itself says it is half deployed
    # what a cut in the middle of a file leaves (the kill above may or may not have hit one)
    assert vb.mpremote("exec", "f = open('gv/app.mpy.part', 'wb'); f.write(b'M\\x06half'); f.close()",
                       resume=False).returncode == 0

    report = tmp_path / "report.json"
    rerun = subprocess.run(_cli(vb, tmp_path, cfg_path, "--report", str(report)), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "was cut off before it finished: finishing it now" in rerun.stdout
    shown = "".join(lines) + rerun.stdout + rerun.stderr + report.read_text()
    assert cfg["secret"] not in shown and cfg["broker"]["password"] not in shown
    r = json.loads(report.read_text())
    total = len(json.loads((tmp_path / "build" / BOARD.stem / "manifest.json").read_text())["files"])
    assert r["resumed"] and 0 < r["files_copied"] <= total - 3  # the three done are not copied again
    assert json.loads(mpremote_cat(vb, "deploy.json"))["state"] == "complete"
    assert "gv/app.mpy.part" in r["removed"] and "app.mpy.part" not in vb.mpremote("fs", "ls", ":gv", resume=False).stdout
    again = subprocess.run(_cli(vb, tmp_path, cfg_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "copied 0 files" in again.stdout, again.stdout + again.stderr


ROM_BANNER = (b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
              b"waiting for download\r\n")


def test_a_board_without_micropython_gets_the_esptool_command(tmp_path):
    # The ESP32 ROM can't run here: a pty that answers like the ROM's download mode stands in for it.
    master, slave = pty.openpty()
    link = tmp_path / "rom.pty"
    link.symlink_to(os.ttyname(slave))
    stop = threading.Event()

    def rom():
        while not stop.is_set():
            try:
                if os.read(master, 64):
                    os.write(master, ROM_BANNER)
            except OSError:
                return

    t = threading.Thread(target=rom, daemon=True)
    t.start()
    cfg_path = provision.write_config(reader_config(), tmp_path / "gate-01.json")

    def run(board):
        return subprocess.run([sys.executable, "-m", "tools.deploy", "--port", str(link), "--board",
                               str(ROOT / "boards" / board), "--reader", str(cfg_path), "--no-hello",
                               "--repl-timeout", "2", "--build-dir", str(tmp_path / "build")],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    stock, frozen = run("esp32s3-n8r2-uart.json"), run("esp32-devkitc-i2c.json")
    stop.set()
    os.close(master)
    assert stock.returncode == 2, stock.stdout + stock.stderr
    assert "ROM bootloader" in stock.stderr
    # esptool v5's hyphenated commands, the stock image for the chip
    assert f"esptool --chip esp32s3 --port {link} erase-flash" in stock.stderr
    assert "--baud 460800 write-flash -z 0 ESP32_GENERIC_S3-" in stock.stderr
    # a frozen board gets the grindvakt firmware's command instead
    assert frozen.returncode == 2, frozen.stdout + frozen.stderr
    assert "make firmware BOARD=" in frozen.stderr and "--flash --erase" in frozen.stderr
    assert (f"esptool --chip esp32 --port {link} --baud 460800 write-flash -z 0x1000 "
            f"build/firmware/GRINDVAKT_ESP32/firmware.bin") in frozen.stderr


@pytest.mark.parametrize("dev_mpy,native,msg", [
    (0x0B05, 0, "device loads v5"),       # an older MicroPython's .mpy version
    (0x0B06 & 0xFF | (2 << 10), 10, "native code"),  # native xtensawin build on an x64 device
])
def test_mpy_incompatibility_is_refused(dev_mpy, native, msg):
    board = deploy.boards.load(BOARD)
    manifest = {"mpy_version": 6, "mpy_sub_version": 3, "mpy_native_arch": native}
    info = {"chip": "esp32", "version": (1, 29, 0), "mpy": dev_mpy, "machine": "x"}
    with pytest.raises(deploy.DeployError, match=msg):
        deploy.check_device(info, board, manifest)
    old = dict(info, version=(1, 20, 0), mpy=0x0306)
    with pytest.raises(deploy.DeployError, match="older than 1.23.0"):
        deploy.check_device(old, board, dict(manifest, mpy_native_arch=0))


def test_stale_code_is_only_what_the_build_owns_or_shadows():
    want = {p: {} for p in ("main.py", "boot.py", "board.json", "gv/app.mpy", "gv/sync/mqtt.mpy")}
    on_device = ["main.py", "main.mpy", "gv/app.py", "gv/app.mpy", "gv/old/x.mpy", "gv/app.mpy.part",
                 "lib/umqtt/simple.py", "webrepl_cfg.py"]
    assert deploy.stale_code(on_device, want) == ["gv/app.mpy.part", "gv/app.py", "gv/old/x.mpy", "main.mpy"]
