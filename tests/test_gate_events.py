"""The event codec under CPython (the host decodes events with this same module) against the
shared vectors in docs/vectors/events.json, plus a property test of pack/unpack."""
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gv import events as E

VEC = json.loads((Path(__file__).resolve().parent.parent / "docs/vectors/events.json").read_text())


@pytest.mark.parametrize("c", VEC["events"], ids=lambda c: "seq%d" % c["seq"])
def test_vector(c):
    uid = bytes.fromhex(c["uid"])
    flags = (E.F_CLOCK_SET if c["clock_set"] else 0) | (E.F_FLOOR if c["floor"] else 0)
    ev = E.pack(c["seq"], c["kind"], c["result"], c["reason"], uid, len(uid), c["t"], flags, c["aux"])
    assert ev.hex() == c["hex"]
    d = E.unpack(bytes.fromhex(c["hex"]))
    keys = ("seq", "kind", "result", "reason", "t", "clock_set", "floor", "aux")
    assert d == {k: c[k] for k in keys} | {"uid": uid}


@pytest.mark.parametrize("c", VEC["invalid"], ids=lambda c: c["why"])
def test_invalid_vector(c):
    with pytest.raises(E.EventError):
        E.unpack(bytes.fromhex(c["hex"]))


@given(st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 2), st.integers(0, 255),
       st.binary(max_size=10), st.integers(0, 2**32 - 1), st.booleans(), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_roundtrip(seq, kind, result, reason, uid, t, clock, floor, aux):
    flags = (E.F_CLOCK_SET if clock else 0) | (E.F_FLOOR if floor else 0)
    ev = E.pack(seq, kind, result, reason, uid, len(uid), t, flags, aux)
    assert len(ev) == E.SIZE
    assert E.unpack(ev) == {"seq": seq, "kind": kind, "result": result, "reason": reason, "t": t,
                            "clock_set": clock, "floor": floor, "uid": uid, "aux": aux}


@given(st.binary(min_size=0, max_size=40))
def test_garbage_never_decodes_silently(data):
    try:
        d = E.unpack(data)
    except E.EventError:
        return
    assert len(data) == E.SIZE and E.pack(d["seq"], d["kind"], d["result"], d["reason"], d["uid"],
                                          len(d["uid"]), d["t"], int(d["clock_set"]) | 2 * int(d["floor"]), d["aux"]) == data
