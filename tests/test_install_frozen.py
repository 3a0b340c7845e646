"""The deploy's two paths on the virtual board: a frozen-firmware board (the reader's modules from a
ROMFS image standing in for the frozen firmware) gets only board.json and its config, after the
build id it runs is checked over the REPL; stock MicroPython with .mpy files is refused where the
heap shows no PSRAM."""
import io
import json
import re
import shutil

import pytest

from tests.test_install_deploy import ROOT, reader_config
from tools import deploy, firmware
from tools.virtual_board import image
from tools.virtual_board.client import VirtualBoard

FROZEN = ROOT / "boards" / "esp32-devkitc-i2c.json"
WROVER = ROOT / "boards" / "esp32-wrover-i2c.json"


def _progress():
    buf = io.StringIO()
    return deploy.Progress(out=buf), buf


def test_a_frozen_board_gets_its_config_and_no_code(tmp_path):
    cfg = reader_config()
    want = firmware.build_id(firmware.def_dir("esp32"))
    with VirtualBoard(FROZEN, tmp_path / "flash.img", blank=True, romfs=True) as vb:
        vb.wait_for(lambda e: e.get("event") == "boot", 30)
        # code left on the filesystem would shadow the frozen modules ("" is first in sys.path)
        put = vb.mpremote("exec", "import os; os.mkdir('gv'); open('gv/app.py', 'w').write('X = 1');"
                                  " open('main.py', 'w').write('print(1)')", resume=False)
        assert put.returncode == 0, put.stderr
        p, said = _progress()
        vb.mark()
        rep = deploy.deploy(vb.pty, FROZEN, config=cfg, hello_timeout=None, progress=p, build_root=tmp_path / "b")
        out = said.getvalue()
        assert rep.copied == ["board.json"] and rep.config_written and rep.verified == 2
        assert rep.removed == ["gv/app.py", "main.py", "gv/"]
        assert f"the board runs firmware build {want}: the one built" in out
        assert ("not flashing (--flash does): esptool --chip esp32 --port " + vb.pty +
                " --baud 460800 write-flash -z 0x1000 build/firmware/GRINDVAKT_ESP32/firmware.bin") in out
        # reset: the reader comes up from the firmware's modules with the config just provisioned
        vb.wait_for(lambda e: e.get("event") == "boot" and e["cause"] == "hard", 30)
        vb.wait_for(lambda e: e.get("event") == "wdt-start", 60)
        state = json.loads(vb.mpremote("fs", "cat", ":deploy.json", resume=False).stdout)
        assert state["state"] == "complete" and state["build"] == want
        ls = vb.mpremote("exec", "import os; print(sorted(os.listdir('/')))", resume=False).stdout
        assert "'gv'" not in ls and "main.py" not in ls and "'config.json'" in ls

        # --flash runs exactly the esptool lines it prints, with the firmware `make firmware` built
        fw_root = tmp_path / "fw"
        with pytest.raises(deploy.DeployError, match="no firmware built for GRINDVAKT_ESP32: run `make firmware"):
            deploy.deploy(vb.pty, FROZEN, config=cfg, hello_timeout=None, progress=p, flash=True,
                          firmware_root=fw_root, build_root=tmp_path / "b")
        (fw_root / "GRINDVAKT_ESP32").mkdir(parents=True)
        (fw_root / "GRINDVAKT_ESP32" / "manifest.json").write_text(json.dumps({"build_id": "0" * 16}))
        with pytest.raises(deploy.DeployError, match=f"is build 0000000000000000, the sources give {want}"):
            deploy.deploy(vb.pty, FROZEN, config=cfg, hello_timeout=None, progress=p, flash=True,
                          firmware_root=fw_root, build_root=tmp_path / "b")
        (fw_root / "GRINDVAKT_ESP32" / "manifest.json").write_text(json.dumps({"build_id": want}))
        ran = []
        again = deploy.deploy(vb.pty, FROZEN, config=cfg, hello_timeout=None, progress=p, flash=True, erase=True,
                              firmware_root=fw_root, build_root=tmp_path / "b", reset=False,
                              esptool_run=lambda argv: ran.append(argv) or 0)
        image_path = str(fw_root / "GRINDVAKT_ESP32" / "firmware.bin")
        assert ran == [["esptool", "--chip", "esp32", "--port", vb.pty, "erase-flash"],
                       ["esptool", "--chip", "esp32", "--port", vb.pty, "--baud", "460800", "write-flash", "-z",
                        "0x1000", image_path]]
        assert again.up_to_date and again.copied == []


def test_a_frozen_board_running_other_firmware_is_refused(tmp_path):
    # firmware built from other sources: a ROMFS image of a changed checkout
    proj = tmp_path / "proj"
    shutil.copytree(firmware.BOARD_DEFS, proj / "boards" / "micropython")
    shutil.copytree(firmware.FIRMWARE, proj / "firmware", ignore=shutil.ignore_patterns("__pycache__"))
    core = proj / "firmware" / "gv" / "gate" / "core.py"
    core.write_text(core.read_text() + "\n# changed\n")
    other_def = proj / "boards" / "micropython" / "GRINDVAKT_ESP32"
    other = image.romfs_image(FROZEN, tmp_path / "other.img", def_path=other_def)
    want, theirs = firmware.build_id(firmware.def_dir("esp32")), firmware.build_id(other_def)
    assert want != theirs
    with VirtualBoard(FROZEN, tmp_path / "a.img", blank=True, romfs=other) as vb:
        vb.wait_for(lambda e: e.get("event") == "boot", 30)
        with pytest.raises(deploy.DeployError, match=f"runs firmware build {theirs}, this checkout builds {want}; "
                                                     f"flash it: `make firmware BOARD="):
            deploy.deploy(vb.pty, FROZEN, config=reader_config(), hello_timeout=None,
                          progress=deploy.Progress(quiet=True), build_root=tmp_path / "b")
        ls = vb.mpremote("exec", "import os; print(os.listdir('/'))", resume=False)
        assert ls.stdout.strip().endswith("['rom']"), ls.stdout  # refused before anything was written
    # stock MicroPython (no gv_build frozen in) on a frozen board file
    with VirtualBoard(FROZEN, tmp_path / "s.img", blank=True) as vb:
        vb.wait_for(lambda e: e.get("event") == "boot", 30)
        with pytest.raises(deploy.DeployError, match="runs MicroPython without the grindvakt firmware"):
            deploy.deploy(vb.pty, FROZEN, config=reader_config(), hello_timeout=None,
                          progress=deploy.Progress(quiet=True), build_root=tmp_path / "b")


def test_stock_mpy_deploy_is_refused_on_a_board_without_psram(tmp_path):
    # a WROVER flashed with the plain ESP32_GENERIC image (no PSRAM support): the heap of a plain board
    with VirtualBoard(WROVER, tmp_path / "flash.img", blank=True, heapsize="384k") as vb:
        vb.wait_for(lambda e: e.get("event") == "boot", 30)
        kw = dict(config=reader_config(), hello_timeout=None, build_root=tmp_path / "b", reset=False)
        with pytest.raises(deploy.DeployError) as e:
            deploy.deploy(vb.pty, WROVER, progress=deploy.Progress(quiet=True), **kw)
        msg = str(e.value)
        assert re.search(r"has 38\d,\d\d\d bytes of MicroPython heap: no PSRAM in use", msg), msg
        assert "run the frozen grindvakt firmware instead" in msg and "make firmware BOARD=" in msg
        assert "write-flash -z 0x1000 ESP32_GENERIC-SPIRAM-" in msg and "--allow-small-heap" in msg
        ls = vb.mpremote("exec", "import os; print(os.listdir('/'))", resume=False)
        assert ls.stdout.strip().endswith("[]"), ls.stdout  # nothing written
        p, said = _progress()
        rep = deploy.deploy(vb.pty, WROVER, progress=p, allow_small_heap=True, **kw)
        assert "WARNING (--allow-small-heap)" in said.getvalue() and "gv/app.mpy" in rep.copied


def test_the_frozen_deploy_ends_with_the_readers_authentic_hello(tmp_path):
    from tests.broker import Broker
    from tests.test_install_hello import config_for

    with Broker(readers=[("gate-01", "site-a")]) as b, \
            VirtualBoard(FROZEN, tmp_path / "flash.img", blank=True, romfs=True) as vb:
        vb.wait_for(lambda e: e.get("event") == "boot", 30)
        rep = deploy.deploy(vb.pty, FROZEN, config=config_for(b), hello_timeout=60, mqtt_user=b.host_user,
                            mqtt_password=b.host_password, progress=deploy.Progress(quiet=True),
                            build_root=tmp_path / "b")
        assert rep.copied == ["board.json"] and rep.hello is not None and rep.hello["fw"], rep.as_dict()
