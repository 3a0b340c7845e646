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


# ---- reader-supplied text and malformed bodies ----------------------------------------------
FORGED = b"unprovisioned: \x1b[31mFAKE\n2026-12-01 ERROR host_sync forged line"


def _raw(caplog) -> list[str]:
    """Log lines (as the handler gets them) that hold a newline or a control character."""
    return [m for m in (r.getMessage() for r in caplog.records)
            if any(ord(c) < 32 or c == "\x7f" for c in m)]


def test_a_status_reason_reaches_log_and_audit_escaped_and_throttled(site, caplog):
    op, eng, _ = site
    caplog.set_level(logging.INFO)
    eng._on_message(None, None, Msg(TOPIC + "status", FORGED, True))
    assert _raw(caplog) == []
    said = [r.getMessage() for r in caplog.records if "NOT RUNNING" in r.getMessage()]
    assert len(said) == 1 and "\\x1b[31mFAKE\\n2026-12-01 ERROR" in said[0], said
    audit = [a["detail"] for a in eng.data.reg.audit_log("gate-01")
             if a["action"] == "reader unprovisioned"]
    assert audit == ["\\x1b[31mFAKE\\n2026-12-01 ERROR host_sync forged line"]
    # a copy of its account varies the reason per message: one line and row per interval
    for i in range(50):
        eng._on_message(None, None, Msg(TOPIC + "status", b"unprovisioned: %d" % i))
    assert len([r for r in caplog.records if "NOT RUNNING" in r.getMessage()]) == 1
    eng.rejects.interval_s = 0  # the interval ends: the latest reason is said
    eng.housekeeping()
    said = [r.getMessage() for r in caplog.records if "NOT RUNNING" in r.getMessage()]
    assert len(said) == 2 and ": 49 (" in said[1], said
    assert _tracebacks(caplog) == []


def test_a_firmware_string_of_terminal_escapes_is_listed_harmless(site):
    op, eng, send = site
    send("hello", P.T_HELLO, P.hello_body(0, 0, 0, 8192, 60_000, 0, 0, "\x1b[2J\n" * 50))
    for out in (op.ok("readers", "list"), op.ok("readers", "show", "gate-01")):
        assert "\x1b" not in out and "\\x1b[2J\\n" in out, out
    stored = eng.data.db.scalar("SELECT firmware FROM readers WHERE id = 'gate-01'")
    assert "\x1b" not in stored and "\n" not in stored and len(stored) <= 64 + 20, stored
    # a row stored raw before (an older serve): the listings clean it as they show it
    eng.data.db.execute("UPDATE readers SET firmware = ? WHERE id = 'gate-01'", ("\x1b[2J\n" * 9,))
    for out in (op.ok("readers", "list"), op.ok("readers", "show", "gate-01")):
        assert "\x1b" not in out and "\\x1b[2J\\n" in out, out


@pytest.mark.parametrize("typ, name", [(P.T_SYNC, "SYNC"), (P.T_ACK, "ACK"),
                                       (P.T_EVENTS, "EVENTS"), (P.T_REJECT, "REJECT"),
                                       (P.T_CMDRES, "CMDRES"), (P.T_HEALTH, "HEALTH")])
def test_an_authentic_malformed_body_is_a_counted_refusal_not_a_traceback(site, caplog, typ,
                                                                          name):
    op, eng, send = site
    assert send("hello", P.T_HELLO, HELLO) > 0
    for i in range(45):
        assert send("out", typ, bytes([0xEE]) * (3 + i % 5)) == 0
    assert _tracebacks(caplog) == []
    assert eng.stats["rejected_in"] == 45
    assert _refusals(eng) == ["1 x malformed %s body" % name]  # the rest: when 10 s are up
    assert eng.rejects.pending[("gate-01", "host", "malformed %s body" % name)] == 44
    # the reader is still served
    assert send("out", P.T_SYNC, P.sync_body(0)) > 0


def test_a_malformed_hello_is_a_counted_refusal(site, caplog):
    op, eng, send = site
    assert send("hello", P.T_HELLO, HELLO[:-1]) == 0  # fw_len says 2, one byte follows
    assert _tracebacks(caplog) == []
    assert _refusals(eng) == ["1 x malformed HELLO body"]
