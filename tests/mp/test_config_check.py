# The reader checks its config with the same code as the host (gv.configcheck), under MicroPython,
# then drops the checker's bytecode: the running reader keeps none of its heap.
import gc
import sys

import mpt
from gv import config as C

GOOD = {"reader_id": "gate-01", "site": "site-a", "secret": "ab" * 32,
        "site_keys": {"card": "00" * 16, "pin": "11" * 16},
        "wifi": {"ssid": "gates", "password": "wifi-pass-1"},
        "broker": {"host": "10.0.0.2", "port": 8883, "tls": False, "user": "gate-01",
                   "password": "p" * 20},
        "gate": {"hold_ms": 500, "open_ms": 3000}}


def test_same_refusals_as_the_host_on_a_real_reader():
    d = dict(GOOD, gate={"hold_ms": -5, "open_ms": 999999999})
    errs = C.problems(d, True)
    mpt.eq(errs, ["gate.hold_ms: -5 is outside 100..10000 (ms a card must be held)",
                  "gate.open_ms: 999999999 is outside 500..60000 (ms the door stays open)"])
    d = dict(GOOD, broker=dict(GOOD["broker"], host="127.0.0.1"))
    mpt.eq(C.problems(d, True)[0][:40], "broker.host: 127.0.0.1 is the reader its")
    mpt.eq(C.problems(d, False), [])  # the unix port (a virtual board) may use the local broker
    mpt.raises(C.ConfigError, C.Config, dict(GOOD, gate={"pin_policy": "x"}), True)


def _drop():
    sys.modules.pop("gv.configcheck", None)
    import gv
    if hasattr(gv, "configcheck"):
        delattr(gv, "configcheck")


def test_the_checker_leaves_the_heap_once_the_config_is_checked():
    gc.collect()
    f0 = gc.mem_free()
    import gv.configcheck as K  # what holding the checker would cost
    gc.collect()
    held = f0 - gc.mem_free()
    del K
    _drop()
    gc.collect()
    before = gc.mem_free()
    c = C.Config(GOOD, True)  # imports the checker, checks, drops it
    gc.collect()
    kept = before - gc.mem_free()
    mpt.eq(c.gate["hold_ms"], 500)
    assert "gv.configcheck" not in sys.modules
    import gv
    assert not hasattr(gv, "configcheck")
    # the Config's own objects (and qstrs interned for good) stay; the checker's bytecode does not
    # (from .mpy on the 64-bit unix port: 9,888 B held, 544 B kept)
    assert kept * 3 < held, (kept, held)
