"""grindvakt host sync service: card registry, operators' CLI, MQTT sync and staff ledger."""
import os as _os
import sys as _sys

# The wire and flash codecs are defined once, in the firmware package `gv` (it runs under both
# MicroPython and CPython); the host imports that same code rather than keeping a second copy.
_FW = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "firmware")
if _FW not in _sys.path:
    _sys.path.insert(0, _FW)
