# docs/vectors/pn532-frames.json checked on the unix port (tests/test_pn532_frame.py checks the
# same file under CPython): the codec encodes and decodes every vector byte for byte.
import json

from mpt import eq
from gv.pn532 import frame


def _load():
    with open("docs/vectors/pn532-frames.json") as f:
        return json.load(f)


def test_encode_decode_vectors():
    v = _load()
    for e in v["encode"]:
        data = bytes.fromhex(e["data"])
        f = frame.frame(data)
        eq(f.hex(), e["frame"], e["name"])
        r = frame.decode(f, 0, len(f))
        d, n = r >> 16, r & 0xFFFF
        eq(bytes(f[d:d + n]), data, e["name"])


def test_special_vectors():
    for e in _load()["special"]:
        b = bytes.fromhex(e["frame"])
        r = frame.decode(b, 0, len(b))
        if e["decode"] == "data":
            eq(r >= 0, True, e["name"])
            eq(bytes(b[r >> 16:(r >> 16) + (r & 0xFFFF)]).hex(), e["data"], e["name"])
        else:
            eq(frame.NAMES[r], e["decode"], e["name"])
