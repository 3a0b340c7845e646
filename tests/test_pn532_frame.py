"""The PN532 frame codec under CPython: the shared vectors, and hypothesis properties (any data
round-trips; any single changed byte of a frame is refused or decodes to the same data)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hypothesis import given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "firmware"))

from gv.pn532 import frame  # noqa: E402

VECTORS = json.loads((ROOT / "docs" / "vectors" / "pn532-frames.json").read_text())


def _data(b: bytes, r: int) -> bytes:
    return bytes(b[r >> 16:(r >> 16) + (r & 0xFFFF)])


def test_vectors():
    for e in VECTORS["encode"]:
        data = bytes.fromhex(e["data"])
        f = frame.frame(data)
        assert f.hex() == e["frame"], e["name"]
        assert _data(f, frame.decode(f, 0, len(f))) == data
    for e in VECTORS["special"]:
        b = bytes.fromhex(e["frame"])
        r = frame.decode(b, 0, len(b))
        if e["decode"] == "data":
            assert _data(b, r).hex() == e["data"]
        else:
            assert frame.NAMES[r] == e["decode"], e["name"]


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=300))
def test_roundtrip(data):
    if len(data) == 1 and data[0] == 0x7F:
        return  # that is the error frame by definition
    f = frame.frame(data)
    r = frame.decode(f, 0, len(f))
    assert r >= 0 and _data(f, r) == data
    assert frame.decode(f, 0, len(f) - 1) == frame.INCOMPLETE


@settings(max_examples=500)
@given(st.binary(min_size=2, max_size=40), st.data())
def test_one_changed_byte_is_caught(data, draw):
    f = bytearray(frame.frame(data))
    i = draw.draw(st.integers(0, len(f) - 1))
    f[i] ^= draw.draw(st.integers(1, 255))
    r = frame.decode(f, 0, len(f))
    assert r < 0 or _data(f, r) == data


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_garbage_never_raises(b):
    r = frame.decode(b, 0, len(b))
    assert r >= frame.BAD_POST
    if r >= 0:
        assert (r >> 16) + (r & 0xFFFF) + 2 <= len(b)
