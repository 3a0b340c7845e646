"""A stolen reader's credentials (its secret: the MACs verify) against the host engine, fed
sealed messages directly as in tests/test_host_health.py: implausible boot numbers, and
authentic but malformed or hostile contents. Each is refused or cleaned, counted and reported
through the RejectLog, and never costs a traceback."""
from __future__ import annotations

import logging

import pytest

import host_sync  # noqa: F401
from gv.sync import protocol as P
from tests.test_host_health import Msg, site  # noqa: F401 - the fixture

HELLO = P.hello_body(0, 0, 0, 8192, 60_000, 0, 0, "fw")
TOPIC = "gv/site-a/gate-01/"


def _seal(eng, typ: int, nonce: bytes, counter: int, body: bytes) -> bytes:
    key = P.Key(eng.data.reader_secret("gate-01"), "gate-01")
    return P.seal(key, P.DIR_READER, typ, nonce, counter, body)


def _feed(eng, leaf: str, msg: bytes, retain: bool = False) -> int:
    before = eng.stats["published"]
    eng._on_message(None, None, Msg(TOPIC + leaf, msg, retain))
    return eng.stats["published"] - before


def _refusals(eng) -> list[str]:
    return [a["detail"] for a in eng.data.reg.audit_log("gate-01")
            if a["action"] == "messages refused"]


def _tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


def test_a_hello_with_the_last_boot_number_no_longer_locks_the_reader_out(site, caplog):
    op, eng, _ = site
    caplog.set_level(logging.INFO)
    real = bytes(range(8))
    assert _feed(eng, "hello", _seal(eng, P.T_HELLO, real, 5 << 32 | 1, HELLO)) > 0
    ses = eng.readers["gate-01"].session
    floor = ses.floor
    # the copy: an authentic HELLO with boot number 0xFFFFFFFF, then seven more in 40 s
    for i in range(8):
        forged = _seal(eng, P.T_HELLO, bytes([9] * 8), (0xFFFFFFFF - i) << 32 | 0xFFFFFF81, HELLO)
        assert _feed(eng, "hello", forged) == 0
    assert ses.floor == floor and ses.nonce == real  # the floor and the session stay
    assert eng.stats["rejected_in"] == 8
    # one report for the burst (throttled by its constant reason), naming the numbers
    refused = _refusals(eng)
    assert len(refused) == 1, refused
    assert refused[0].startswith("1 x boot number jumped from 5 to 4294967295: a copy of this "
                                 "reader's secret may be in use; see docs/security.md"), refused
    assert eng.rejects.pending[("gate-01", "host", "boot number jumped")] == 7
    # the real reader reboots: its HELLO is a new session, answered as usual
    again = bytes(range(1, 9))
    assert _feed(eng, "hello", _seal(eng, P.T_HELLO, again, 6 << 32 | 1, HELLO)) > 0
    assert ses.nonce == again and ses.floor >> 32 == 6
    assert _tracebacks(caplog) == []


def test_a_first_hello_in_the_top_range_is_refused_and_the_real_one_taken(site, caplog):
    op, eng, _ = site
    # a host that just started has no floor for the reader: the copy's retained HELLO is first
    forged = _seal(eng, P.T_HELLO, bytes([9] * 8), (1 << 31) << 32 | 1, HELLO)
    assert _feed(eng, "hello", forged, retain=True) == 0
    ses = eng.readers["gate-01"].session
    assert ses.floor == 0 and ses.nonce is None
    assert any("boot number 2147483648 in a first message is implausibly high" in d
               for d in _refusals(eng))
    real = bytes(range(8))
    assert _feed(eng, "hello", _seal(eng, P.T_HELLO, real, 3 << 32 | 1, HELLO)) > 0
    assert ses.nonce == real
    # a plausible climb is a reader that rebooted while the host did not hear it: taken
    assert _feed(eng, "hello", _seal(eng, P.T_HELLO, real, (3 + (1 << 16)) << 32 | 1,
                                     HELLO)) > 0
    assert ses.floor >> 32 == 3 + (1 << 16)
    assert _tracebacks(caplog) == []


def test_a_session_message_cannot_push_the_floor_to_the_top_either(site, caplog):
    op, eng, _ = site
    real = bytes(range(8))
    assert _feed(eng, "hello", _seal(eng, P.T_HELLO, real, 5 << 32 | 1, HELLO)) > 0
    ses = eng.readers["gate-01"].session
    # the copy knows the session's nonce (the retained HELLO): a SYNC with the last counter
    assert _feed(eng, "out", _seal(eng, P.T_SYNC, real, (1 << 64) - 1, P.sync_body(0))) == 0
    assert ses.floor == 5 << 32 | 1 and ses.rx_counter == 5 << 32 | 1
    assert _feed(eng, "out", _seal(eng, P.T_SYNC, real, 5 << 32 | 2, P.sync_body(0))) > 0
    assert _tracebacks(caplog) == []


def test_no_traceback_when_no_boot_number_is_left_to_ask_for(site, caplog):
    op, eng, _ = site
    real = bytes(range(8))
    assert _feed(eng, "hello", _seal(eng, P.T_HELLO, real, 5 << 32 | 1, HELLO)) > 0
    ses = eng.readers["gate-01"].session
    ses.floor = 0xFFFFFFFF << 32 | 0xFFFFFFFF  # however a floor got there
    assert _feed(eng, "hello", _seal(eng, P.T_HELLO, bytes([7] * 8), 6 << 32 | 1, HELLO)) == 0
    assert any(d.startswith("1 x no boot number above 4294967295 to ask for") for d in
               _refusals(eng)), _refusals(eng)
    assert _tracebacks(caplog) == []
