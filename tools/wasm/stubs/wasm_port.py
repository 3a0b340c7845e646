# What this WebAssembly port lacks beside the ESP32's MicroPython, patched in before the firmware
# runs (importing this module does it): os.urandom (the ESP32's hardware RNG) and a
# binascii.a2b_base64 that takes str (this port's binascii is micropython-lib's, bytes only).
import binascii
import os

if not hasattr(os, "urandom"):
    import random

    os.urandom = lambda n: bytes(random.getrandbits(8) for _ in range(n))

_a2b = binascii.a2b_base64
binascii.a2b_base64 = lambda s: _a2b(s.encode() if isinstance(s, str) else s)
