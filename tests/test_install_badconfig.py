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


def test_unprovisioned_reader_tells_the_host_why(tmp_path):
    """A refused config whose Wi-Fi and broker parts are sound: the reader says why on its own
    status topic (retained) and the host logs it loudly and keeps it in the audit log."""
    import host_sync  # noqa: F401
    from host_sync.db import Db
    from host_sync.registry import Registry
    from host_sync.store import RegistryData
    from host_sync.syncer import HostSync
    from tests.broker import Broker

    db = Db("sqlite:///%s" % (tmp_path / "gv.sqlite3"))
    reg = Registry(db)
    reg.add_site("site-a", "A", "PL1")
    reg.add_reader("gate-01", "site-a")
    with Broker(readers=[("gate-01", "site-a")]) as b:
        host = HostSync(RegistryData(db), "127.0.0.1", b.plain_port or b.port, b.host_user, b.host_password)
        host.start()
        try:
            cfg = {"reader_id": "gate-01", "site": "site-a", "virtual": True, "secret": os.urandom(32).hex(),
                   "site_keys": {"card": os.urandom(16).hex(), "pin": os.urandom(16).hex()},
                   "broker": b.reader_broker_config("gate-01"), "gate": {"open_ms": 0}}
            path = tmp_path / "config.json"
            path.write_text(json.dumps(cfg))
            with VirtualBoard(BOARD, tmp_path / "flash.img", config=path) as vb:
                vb.wait_for(lambda e: "reported to the host" in e.get("log", ""), 60)
                t0 = time.monotonic()
                while time.monotonic() - t0 < 20 and not reg.audit_log("gate-01"):
                    time.sleep(0.2)
                seen = [a for a in reg.audit_log("gate-01") if a["action"] == "reader unprovisioned"]
                assert seen and "gate.open_ms: 0 is outside 500..60000" in seen[0]["detail"], seen
                assert not reg.reader("gate-01")["online"]
                assert len([e for e in vb.events() if e.get("event") == "boot"]) == 1
        finally:
            host.stop()
            db.close()


def test_a_start_up_that_fails_every_boot_stops_after_three(tmp_path):
    """Not a config the validation knows (here a board file without its PN532): the reader
    reboots after a fatal error, but the third in a row leaves it in the safe state, door shut,
    instead of a reboot loop; a healthy run clears the count."""
    cfg = {"reader_id": "gate-01", "site": "site-a", "secret": os.urandom(32).hex(),
           "site_keys": {"card": os.urandom(16).hex(), "pin": os.urandom(16).hex()}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with VirtualBoard(BOARD, tmp_path / "flash.img", config=path) as vb:
        vb.wait_for(lambda e: "reader gate-01 at site-a up" in e.get("log", ""), 60)
        board = json.loads((ROOT / "boards" / "esp32-devkitc-i2c.json").read_text())
        board.pop("pn532")
        code = "import json\nf = open('board.json', 'w'); json.dump(%r, f); f.close()" % board
        assert vb.mpremote("exec", code, resume=False).returncode == 0
        vb.mark()
        vb.send("reset")
        stopped = vb.wait_for(lambda e: "stopped after 3 fatal errors in a row" in e.get("log", ""), 90)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 7:
            time.sleep(0.5)
        boots = [e for e in vb.events() if e.get("event") == "boot"]
        assert [b["cause"] for b in boots[-3:]] == ["power-on", "hard", "hard"], boots
        assert boots[-1]["t"] < stopped["t"]  # and none since: 7 s, more than the 5 s pause
        assert not any(e.get("dev") == "relay" and e.get("on") for e in vb.events()[-200:])
        out = vb.mpremote("exec", "print(open('fatal.json').read())", resume=False)
        assert '"n": 3' in out.stdout and "KeyError" in out.stdout, out.stdout
