"""A reader that finds a config it cannot use on its flash (written by hand, by an old tool, or
half edited) boots into the safe unprovisioned state: door shut, red blink, REPL up, the field
named on its console. It never reboot-loops (it used to raise in the gate at boot and reset every
5 s). Runs the real boot.py/main.py on the virtual board."""
import json
import os
import time
from pathlib import Path

from tools.virtual_board.client import VirtualBoard

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "boards" / "esp32-devkitc-i2c.json"


def test_bad_gate_value_on_flash_means_unprovisioned_not_a_reboot_loop(tmp_path):
    cfg = {"reader_id": "gate-01", "site": "site-a", "secret": os.urandom(32).hex(),
           "site_keys": {"card": os.urandom(16).hex(), "pin": os.urandom(16).hex()},
           "gate": {"hold_ms": -5, "open_ms": 3000, "pin_policy": "card"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with VirtualBoard(BOARD, tmp_path / "flash.img", config=path) as vb:
        said = vb.wait_for(lambda e: "gate.hold_ms: -5 is outside 100..10000" in e.get("log", ""), 60)
        assert "grindvakt" in said["log"]
        vb.wait_for(lambda e: e.get("event") == "wdt-start", 20)  # fed by the unprovisioned loop
        t0 = time.monotonic()
        while time.monotonic() - t0 < 7:  # longer than the fatal-error pause (5 s) and a blink
            time.sleep(0.5)
        boots = [e for e in vb.events() if e.get("event") == "boot"]
        assert len(boots) == 1, boots  # no reset since power-on
        red = [e for e in vb.events() if e.get("dev") == "led" and e.get("color") == "red"]
        assert sum(1 for e in red if e["on"]) >= 2, red  # blinking
        assert not any(e.get("dev") == "relay" and e.get("on") for e in vb.events())  # door shut
        out = vb.mpremote("exec", "import gv.config as c; print(c.problems(__import__('json')"
                                  ".load(open('/config.json'))))")
        assert out.returncode == 0 and "gate.hold_ms" in out.stdout, out.stdout + out.stderr
