"""host_sync.wire: per-reader sessions (replay and stale-session checks on the host side),
catch-up deltas cut at version boundaries, raw rebuild chunks, increasing counters."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import host_sync  # noqa: F401
from gv.sync import protocol as P
from host_sync import wire
from tests.host_kit import kept, unpack_chunk
from tests.sync_support import make_record

SECRET = bytes(range(32))


def _reader_msg(typ, body, nonce, ctr, rid="gate-01", secret=SECRET):
    return P.seal(P.Key(secret, rid), P.DIR_READER, typ, nonce, ctr, body)


def test_session_accepts_hello_then_rejects_replay_and_stale():
    s = wire.ReaderSession.new("gate-01", "site-a", SECRET)
    with pytest.raises(P.ProtoError):
        s.seal(P.T_DELTA, P.delta_body(1, 1, 1, []))  # no session yet
    n1 = b"\x01" * 8
    hello = _reader_msg(P.T_HELLO, P.hello_body(0, 0, 0, 0, 0, 0, 0, "fw"), n1, 1)
    assert s.open(hello)[0] == P.T_HELLO and s.nonce == n1
    ack = _reader_msg(P.T_ACK, P.ack_body(3), n1, 2)
    assert s.open(ack)[:2] == (P.T_ACK, 2)
    with pytest.raises(P.ProtoError) as e:
        s.open(ack)
    assert e.value.reason == P.E_REPLAY
    n2 = b"\x02" * 8  # the next session: reader counters go on rising (boot << 32 | n)
    s.open(_reader_msg(P.T_HELLO, P.hello_body(0, 0, 0, 0, 0, 0, 0, "fw"), n2, 3))
    for old in (hello, _reader_msg(P.T_HELLO, P.hello_body(0, 0, 0, 0, 0, 0, 0, "fw"), b"\x03" * 8,
                                   3)):
        with pytest.raises(P.ProtoError) as e:  # an older session's HELLO replayed: not a session
            s.open(old)
        assert e.value.reason == P.E_SESSION and s.nonce == n2
    with pytest.raises(P.ProtoError) as e:
        s.open(_reader_msg(P.T_ACK, P.ack_body(4), n1, 9))
    assert e.value.reason == P.E_SESSION
    with pytest.raises(P.ProtoError) as e:  # another reader's secret
        s.open(_reader_msg(P.T_ACK, P.ack_body(4), n2, 9, secret=bytes(32)))
    assert e.value.reason == P.E_MAC
    m = s.seal(P.T_EVACK, P.evack_body(5))
    typ, nonce, ctr, body = P.unseal(P.Key(SECRET, "gate-01"), P.DIR_HOST, m)
    assert (typ, nonce, P.parse_evack(body)) == (P.T_EVACK, n2, 5)


def test_counters_increase_across_instances():
    a, b = wire.Counter(), wire.Counter()
    seq = [a.next(), a.next(), b.next(), a.next()]
    assert seq[0] < seq[1] < seq[3] and seq[2] >= seq[0]


def test_delta_bodies_whole_versions_latest_change_wins():
    rng = random.Random(1)
    recs = [make_record(rng) for _ in range(200)]
    changes = [(v, r[:8], r) for v, r in zip(range(11, 211), recs)]
    changes.insert(5, (15, recs[0][:8], None))  # card 0 removed at version 15 (after 11)
    out = wire.delta_bodies(210, 10, changes, max_entries=61)
    assert [f for f, _, _ in out][0] == 10 and out[-1][1] == 210
    for (f, t, body), nxt in zip(out, out[1:] + [None]):
        flags, head, frm, to, n = P.parse_delta(body)
        assert (frm, to, head) == (f, t, 210) and n <= 61
        if nxt:
            assert nxt[0] == t  # contiguous
    first = dict((bytes(k), r) for k, r in P.delta_entries(out[0][2], P.parse_delta(out[0][2])[4]))
    assert first[recs[0][:8]] is None  # the later change of the key won
    big = [(5, make_record(rng)[:8], None) for _ in range(70)]
    one = wire.delta_bodies(5, 4, big, max_entries=61)
    assert len(one) == 1 and P.parse_delta(one[0][2])[4] == 70  # a version is never split


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 700), st.integers(1, 9))
def test_snap_bodies_cover_every_record_once(count, window):
    rng = random.Random(count)
    recs = wire.records_sorted(make_record(rng) for _ in range(count))
    got = b""
    offset = 0
    while True:
        bodies = list(wire.snap_bodies(3, 3, recs, offset, window, n=64))
        assert bodies and bodies[-1][0] & P.F_ASK
        for body in bodies:
            flags, head, v, c, o, n, data = P.parse_snap(body)
            assert (v, c, o) == (3, count, offset)
            assert not flags & P.F_ZLIB and flags & P.F_P13  # flash records, never zlib
            got += unpack_chunk(P, flags, n, data)
            offset += n
        if offset >= count:
            break
    assert got == b"".join(kept(r) for r in recs)
    for body in bodies:
        assert len(body) + P.HDR + P.MAC_LEN <= P.MAX_MSG


def test_snap_chunks_carry_flash_records_and_fill_a_message_at_most():
    # a full chunk (SNAP_RECORDS, the most a message holds) fits MAX_MSG sealed; asking for more
    # records a chunk gets SNAP_MAX13, and every record comes exactly once, as the store keeps it
    rng = random.Random(7)
    recs = wire.records_sorted(make_record(rng) for _ in range(3 * P.SNAP_MAX13 + 5))
    assert wire.SNAP_RECORDS == P.SNAP_MAX13
    full = wire.snap_body(1, 1, recs, 0)
    assert len(full) + P.HDR + P.MAC_LEN <= P.MAX_MSG
    assert len(full) + P.HDR + P.MAC_LEN + P.P13 > P.MAX_MSG  # one more record would not fit
    bodies = list(wire.snap_bodies(1, 1, recs, 0, 9, n=1000))
    got = b""
    for body in bodies:
        flags, head, v, c, o, n, data = P.parse_snap(body)
        assert flags & P.F_P13 and not flags & P.F_ZLIB and n <= P.SNAP_MAX13
        assert o == len(got) // P.REC
        got += unpack_chunk(P, flags, n, data)
    assert got == b"".join(kept(r) for r in recs)
