"""Events from readers and the staff ledger: idempotent ingest, one row per person and shift,
entries never edited (corrections are new entries), retention before purge, exports."""
from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

import host_sync  # noqa: F401
from gv import events as E
from host_sync import ledger
from host_sync.db import Db
from tests.host_kit import Operator, backdate, database, org_for, pnr_for

UID1, UID2 = bytes.fromhex("04a1b2c3d4e5f6"), bytes.fromhex("0badcafe")
T0 = dt.datetime(2026, 3, 2, 6, 55, tzinfo=dt.timezone.utc)  # 07:55 in Stockholm


def t(at: dt.datetime) -> int:
    return int((at - ledger.from_reader_seconds(0)).total_seconds())


def ev(seq: int, at: dt.datetime, uid: bytes, result: int = E.R_GRANT,
       reason: int = E.OK) -> bytes:
    return E.pack(seq, E.K_DECISION, result, reason, uid, len(uid), t(at), E.F_CLOCK_SET)


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request, tmp_path):
    with database(request.param, tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--name", "Kv. Hammaren", "--tax-id", "PL1234-5678")
        o.ok("cards", "add", "BB-2401-000001", "--uid", UID1.hex(), "--holder", "Anna Svensson",
             "--pnr", pnr_for(1), "--employer", "Bygg AB", "--org-no", org_for(1),
             "--site", "site-a", "--valid-from", "2026-01-01")
        o.ok("cards", "add", "BB-2401-000002", "--uid", UID2.hex(), "--holder", "Bo Ek",
             "--pnr", pnr_for(2), "--employer", "El & Rör HB", "--org-no", org_for(2),
             "--site", "site-a", "--valid-from", "2026-01-01")
        for r in ("gate-01", "gate-02"):
            o.ok("readers", "add", r, "--site", "site-a")
        for c in ("BB-2401-000001", "BB-2401-000002"):
            o.ok("cards", "activate", c)
        db = Db(url)
        backdate(db)
        try:
            yield o, db
        finally:
            db.close()


def test_events_become_shifts_once(site):
    op, db = site
    h = dt.timedelta(hours=1)
    g1 = [ev(1, T0, UID1), ev(2, T0 + 10 * h, UID1), ev(3, T0 + 24 * h, UID1),
          ev(4, T0 + 2 * h, UID2, E.R_REFUSE, E.BLOCKED), ev(5, T0 + 3 * h, UID2),
          ev(6, T0 + 3 * h + dt.timedelta(seconds=20), UID2),  # presented again: no new entry
          ev(7, T0, bytes.fromhex("deadbeef"))]  # an unknown card: an event, no ledger entry
    r = ledger.ingest(db, "gate-01", "site-a", [(E.unpack(e)["seq"], e) for e in g1])
    assert r["stored"] == 7 and r["ledger"] == 4 and r["duplicate"] == 0
    again = ledger.ingest(db, "gate-01", "site-a", [(E.unpack(e)["seq"], e) for e in g1[:5]])
    assert again["stored"] == 0 and again["duplicate"] == 5 and again["ledger"] == 0
    # Bo leaves through the other gate; a corrupted event is rejected, not stored
    bad = bytearray(ev(1, T0, UID2))
    bad[20] ^= 1
    r = ledger.ingest(db, "gate-02", "site-a", [(1, ev(1, T0 + 9 * h, UID2)), (2, bytes(bad))])
    assert r["stored"] == 1 and r["rejected_seqs"] == [2]
    assert db.scalar("SELECT COUNT(*) FROM events") == 8

    op.ok("ledger", "show", "--site", "site-a", "--day", "2026-03-02")
    out = op.out
    assert "PL1234-5678" in out and "Anna Svensson" in out and pnr_for(1) in out
    assert "07:55" in out and "17:55" in out  # Stockholm time
    assert "Bo Ek" in out and "El & Rör HB" in out and "gate-01 gate-02" in out
    assert "2 shift(s)" in out
    op.ok("ledger", "show", "--site", "site-a", "--day", "2026-03-03", "--tz", "UTC")
    assert "06:55" in op.out and "(on site)" in op.out and "1 person(s) on site now" in op.out

    op.ok("ledger", "export", "--site", "site-a", "--from", "2026-03-02", "--to", "2026-03-03")
    rows = list(csv.DictReader(io.StringIO(op.out)))
    assert len(rows) == 3
    anna = [r for r in rows if r["name"] == "Anna Svensson"]
    assert anna[0]["site_id_number"] == "PL1234-5678" and anna[0]["contractor_org_no"] == org_for(1)
    assert anna[0]["shift_start"] == "2026-03-02 07:55:00" and anna[0]["shift_end"] == "2026-03-02 17:55:00"
    op.ok("ledger", "export", "--site", "site-a", "--from", "2026-03-02", "--format", "html")
    assert op.out.startswith("<!doctype html>") and "El &amp; Rör HB" in op.out
    assert "@page" in op.out and "PL1234-5678" in op.out

    op.ok("events", "export", "--site", "site-a", "--from", "2026-03-02", "--to", "2026-03-03")
    evs = list(csv.DictReader(io.StringIO(op.out)))
    assert len(evs) == 8 and {e["reason"] for e in evs} >= {"blocked", "ok"}
    assert any(e["card_number"] == "" and e["uid"] == "deadbeef" for e in evs)


def test_entries_are_never_edited_and_corrections_are_new_entries(site):
    op, db = site
    ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, T0, UID1)),
                                            (2, ev(2, T0 + dt.timedelta(hours=8), UID1))])
    with pytest.raises(Exception, match="never edited"):
        with db.tx():
            db.execute("UPDATE ledger SET person_name = 'someone else'")
    op.ok("ledger", "export", "--site", "site-a", "--from", "2026-03-02")
    shift = list(csv.DictReader(io.StringIO(op.out)))[0]["shift"]
    before = db.all("SELECT * FROM ledger ORDER BY id")
    assert op("ledger", "correct", shift, "--end", "2026-03-02 16:30", "--note", "") == 3
    op.ok("ledger", "correct", shift, "--end", "2026-03-02 16:30", "--note", "left by the side gate")
    assert db.all("SELECT * FROM ledger ORDER BY id")[:len(before)] == before
    assert db.scalar("SELECT COUNT(*) FROM ledger") == len(before) + 1
    op.ok("ledger", "export", "--site", "site-a", "--from", "2026-03-02")
    row = list(csv.DictReader(io.StringIO(op.out)))[0]
    assert row["shift_end"] == "2026-03-02 16:30:00" and "side gate" in row["corrected"]
    assert op("ledger", "correct", "nosuchshift", "--end", "2026-03-02 16:30", "--note", "x") == 4


def test_purge_keeps_two_years_after_the_calendar_year(site):
    op, db = site
    today = dt.date.today()
    old = dt.datetime(today.year - 3, 6, 1, 7, tzinfo=dt.timezone.utc)
    kept = dt.datetime(today.year - 2, 12, 31, 7, tzinfo=dt.timezone.utc)
    backdate(db, ledger.iso(old - dt.timedelta(days=1)))  # a site three years old
    ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, old, UID1)), (2, ev(2, kept, UID1))])
    ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, old, UID2))])  # kept aside: a conflict
    assert db.scalar("SELECT COUNT(*) FROM event_conflicts") == 1
    assert db.scalar("SELECT COUNT(*) FROM ledger") == 3
    limit = dt.date(today.year - 2, 1, 1)
    assert op("ledger", "purge", "--before", (limit + dt.timedelta(days=1)).isoformat(),
              "--apply") == 3
    assert "at least 2 years" in op.err
    op.ok("ledger", "purge", "--before", limit.isoformat())
    assert "would purge 2 ledger entries and 2 event(s)" in op.out
    assert db.scalar("SELECT COUNT(*) FROM ledger") == 3
    op.ok("ledger", "purge", "--before", limit.isoformat(), "--apply")
    assert db.scalar("SELECT COUNT(*) FROM ledger") == 1
    assert db.scalar("SELECT COUNT(*) FROM events") == 1
    assert db.scalar("SELECT COUNT(*) FROM event_conflicts") == 0
    assert "ledger purged" in op.ok("audit")


def test_events_lost_is_the_newest_running_total(site):
    # Drop notes carry the reader's running total (docs/events-format.md): the host takes the
    # largest, so a note lost with the events it counted does not shrink the figure, and the
    # figure equals the sequence numbers that never arrived.
    _, db = site
    note = lambda seq, total: E.pack(seq, E.K_DROPPED, E.R_INFO, E.OK, b"", 0, t(T0), E.F_CLOCK_SET, total)  # noqa: E731
    got = [ev(s, T0, UID1) for s in (1, 2)] + [note(11, 8)] + [ev(s, T0, UID1) for s in (12, 13)]
    got += [ev(s, T0, UID1) for s in (30, 31)] + [note(32, 24)]  # the note at seq ~20 was lost too
    ledger.ingest(db, "gate-01", "site-a", [(E.unpack(e)["seq"], e) for e in got])
    seqs = {E.unpack(e)["seq"] for e in got}
    assert ledger.events_lost(db, "gate-01") == 32 - len(seqs) == 24
    assert ledger.events_lost(db, "gate-02") == 0


def _raw(seq: int, kind: int, t_: int, flags: int, uid: bytes = b"", result: int = E.R_INFO,
         aux: int = 0) -> bytes:
    return E.pack(seq, kind, result, E.OK, uid, len(uid), t_, flags, aux)


def _ledger_at(db: Db, card_no: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in db.all("SELECT at, note FROM ledger WHERE card_no = ? ORDER BY id",
                                         (card_no,))]


def test_events_without_a_clock_are_dated_by_the_boots_clock_event(site):
    # A reader rebooted offline: its lower bound is 40 minutes behind the real time. Anna's
    # passage is made on that bound; when the network is back the host sets the clock and the
    # reader logs it (t = the real time, aux = what its clock read). The ledger entry waits and
    # is made at the real time of the passage, not at the bound and not at reception.
    _, db = site
    real = T0  # when Anna really passed
    lag = 40 * 60  # the bound is this far behind
    bound = t(real) - lag - 5  # booted 5 s before the passage
    evs = [_raw(20, E.K_BOOT, bound, E.F_FLOOR),
           _raw(21, E.K_DECISION, bound + 5, E.F_FLOOR, UID1, E.R_GRANT),
           _raw(22, E.K_DECISION, bound + 65, E.F_FLOOR, UID2, E.R_GRANT)]
    r = ledger.ingest(db, "gate-01", "site-a", [(E.unpack(e)["seq"], e) for e in evs])
    assert r["stored"] == 3 and r["ledger"] == 0  # waiting for the clock
    assert _ledger_at(db, "BB-2401-000001") == []
    # 10 minutes after the passage the clock is set (a later upload)
    clk = _raw(23, E.K_CLOCK, t(real) + 600, E.F_CLOCK_SET, aux=bound + 5 + 600)
    r = ledger.ingest(db, "gate-01", "site-a", [(23, clk)])
    assert r["ledger"] == 2
    assert _ledger_at(db, "BB-2401-000001") == [(ledger.iso(real), "")]
    got = db.all("SELECT seq, at, time_basis FROM events WHERE reader_id = 'gate-01' ORDER BY seq")
    assert [(s, b) for s, _, b in got] == [(20, "dated"), (21, "dated"), (22, "dated"), (23, "reader")]
    assert got[2][1] == ledger.iso(real + dt.timedelta(seconds=60))


def test_events_of_a_boot_that_never_got_the_time_keep_their_estimate_and_say_so(site):
    _, db = site
    bound = t(T0)
    evs = [_raw(1, E.K_BOOT, bound, E.F_FLOOR),
           _raw(2, E.K_DECISION, bound + 30, E.F_FLOOR, UID1, E.R_GRANT),
           _raw(3, E.K_BOOT, 12, 0),  # rebooted again, no bound this time, never got the time
           _raw(4, E.K_DECISION, 40, 0, UID2, E.R_GRANT)]
    r = ledger.ingest(db, "gate-02", "site-a", [(E.unpack(e)["seq"], e) for e in evs])
    assert r["ledger"] == 1  # Anna's, released by the next boot with the bound's time
    (at, note), = _ledger_at(db, "BB-2401-000001")
    assert at == ledger.iso(T0 + dt.timedelta(seconds=30)) and "estimated" in note
    assert _ledger_at(db, "BB-2401-000002") == []  # Bo's waits (its boot may still get the time)
    # a gap in the numbers before the clock event: the boot is not certain, estimates stay
    clk = _raw(9, E.K_CLOCK, bound + 3600, E.F_CLOCK_SET, aux=100)
    ledger.ingest(db, "gate-02", "site-a", [(9, clk)])
    (at, note), = _ledger_at(db, "BB-2401-000002")
    assert "time received" in note
    basis = db.scalar("SELECT time_basis FROM events WHERE reader_id = 'gate-02' AND seq = 4")
    assert basis == "received"
    assert ledger.release_stale(db) == 0  # nothing left waiting


def test_a_day_of_the_right_form_but_not_in_the_calendar_is_said_to_be_no_date(site):
    op, _ = site
    # the form is right: the message says which date is not one and why, not "YYYY-MM-DD"
    for argv, said in ((["ledger", "show", "--site", "site-a", "--day", "2026-12-32"],
                        "--day 2026-12-32 is not a date: day is out of range for month"),
                       (["ledger", "export", "--site", "site-a", "--from", "2026-02-30"],
                        "--from 2026-02-30 is not a date: day is out of range for month"),
                       (["events", "export", "--site", "site-a", "--from", "2026-03-01",
                         "--to", "2026-13-01"], "--to 2026-13-01 is not a date: month must be"),
                       (["ledger", "purge", "--before", "2026-04-31"],
                        "--before 2026-04-31 is not a date: day is out of range for month")):
        assert op(*argv) == 3 and said in op.err, (argv, op.err)
    # a wrong form is still said to be one
    assert op("ledger", "show", "--site", "site-a", "--day", "31-12-2026") == 3
    assert "--day '31-12-2026' is not a date YYYY-MM-DD" in op.err, op.err


UID3, UID4, UID5, UID6 = (bytes.fromhex(h) for h in ("04000003", "04000004", "04000005", "04000006"))


def _flags(db: Db) -> dict[str, tuple[str, str]]:
    return {r[0]: (r[1], r[2]) for r in db.all("SELECT card_no, kind, flag FROM ledger ORDER BY id")}


def test_grants_the_registry_would_not_have_given_are_entered_flagged_and_alarmed(site):
    # A stolen reader secret seals "grant" events for cards the registry never let in at that
    # time and site. The people may really have passed (a reader with a stale allowlist), so
    # each is entered, but flagged with why, audit-logged and alarmed.
    op, db = site
    op.ok("sites", "add", "site-b", "--name", "Kv. Städet", "--tax-id", "PL9999-0000")
    for n, uid, where in ((3, UID3, "site-a"), (4, UID4, "site-a"), (5, UID5, "site-b"),
                          (6, UID6, "site-a")):
        op.ok("cards", "add", "BB-2401-00000%d" % n, "--uid", uid.hex(), "--holder", "P%d" % n,
              "--pnr", pnr_for(n), "--employer", "Bygg AB", "--org-no", org_for(1), "--site", where,
              "--valid-from", "2026-01-01")
    for c, cmds in (("BB-2401-000003", ("activate", "terminate")), ("BB-2401-000005", ("activate",)),
                    ("BB-2401-000006", ("activate", "suspend"))):
        for cmd in cmds:
            op.ok("cards", cmd, c)
    backdate(db)  # all of it was so before the day replayed
    op.ok("cards", "block", "BB-2401-000001")  # blocked after the day: that grant was right
    m = dt.timedelta(minutes=1)
    duress = E.pack(5, E.K_ALARM, E.R_GRANT, E.DURESS, UID6, len(UID6), t(T0 + 4 * m), E.F_CLOCK_SET)
    evs = [ev(1, T0, UID3), ev(2, T0 + m, UID4), ev(3, T0 + 2 * m, UID5), duress,
           ev(6, T0 + 5 * m, UID1)]
    r = ledger.ingest(db, "gate-01", "site-a", [(E.unpack(e)["seq"], e) for e in evs])
    assert r["stored"] == 5 and r["ledger"] == 5 and r["flagged"] == 4
    f = _flags(db)
    assert f["BB-2401-000003"] == ("in", "card terminated at that time")
    assert f["BB-2401-000004"] == ("in", "card inactive at that time")
    assert f["BB-2401-000005"] == ("in", "not on site site-a at that time")
    assert f["BB-2401-000006"] == ("in", "card suspended at that time")
    assert f["BB-2401-000001"] == ("in", "")  # active then: no flag
    assert db.scalar("SELECT COUNT(*) FROM alarms WHERE kind = 'ledger'") == 4
    assert db.scalar("SELECT COUNT(*) FROM audit WHERE action = 'event flagged'") == 4
    assert db.scalar("SELECT COUNT(*) FROM events WHERE flag <> ''") == 4
    op.ok("ledger", "show", "--site", "site-a", "--day", "2026-03-02")
    assert op.out.count("FLAGGED") == 4 and "card terminated at that time" in op.out
    assert "4 flagged" in op.out
    op.ok("ledger", "export", "--site", "site-a", "--from", "2026-03-02")
    rows = {r["card_number"]: r for r in csv.DictReader(io.StringIO(op.out))}
    assert rows["BB-2401-000005"]["flagged"] == "not on site site-a at that time"
    assert rows["BB-2401-000001"]["flagged"] == ""
    op.ok("events", "export", "--site", "site-a", "--from", "2026-03-02", "--to", "2026-03-03")
    assert {e["seq"]: e["flag"] for e in csv.DictReader(io.StringIO(op.out))}["1"] \
        == "card terminated at that time"


def test_event_times_that_can_be_none_are_no_shift_times_and_a_bad_clock_set_dates_nothing(site):
    op, db = site
    old = dt.datetime(2020, 1, 2, 8, tzinfo=dt.timezone.utc)  # before gate-01 was added
    future = dt.datetime(2039, 6, 1, 8, tzinfo=dt.timezone.utc)
    r = ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, old, UID1)), (2, ev(2, future, UID2))])
    assert r["flagged"] == 2
    # no shift at either time: a flagged entry at reception, outside every shift
    assert db.scalar("SELECT COUNT(*) FROM ledger WHERE kind IN ('in', 'out')") == 0
    kinds = db.all("SELECT kind, flag, note FROM ledger ORDER BY id")
    assert [k for k, _, _ in kinds] == ["flagged", "flagged"]
    assert "before the reader was added" in kinds[0][1] and "2020-01-02T08:00:00" in kinds[0][2]
    assert "in the future" in kinds[1][1]
    got = dict(db.all("SELECT seq, flag FROM events WHERE reader_id = 'gate-01'"))
    assert "before the reader was added" in got[1] and "in the future" in got[2]
    assert db.scalar("SELECT COUNT(*) FROM alarms WHERE kind = 'ledger'") == 2
    op.ok("ledger", "show", "--site", "site-a", "--day", "2039-06-01", "--tz", "UTC")
    assert "0 shift(s); 0 person(s) on site now" in op.out
    today = ledger.now().date().isoformat()
    op.ok("ledger", "show", "--site", "site-a", "--day", today, "--tz", "UTC")
    assert "0 person(s) on site now" in op.out and "time not used" in op.out
    assert "(on site)" not in op.out

    # a "clock set" whose aux is below the uptime of an event of its boot already stored
    # would move the boot's events (here 3 days back): refused, estimates kept, alarmed
    bound = t(T0)
    evs = [_raw(10, E.K_BOOT, bound, E.F_FLOOR),
           _raw(11, E.K_DECISION, bound + 5000, E.F_FLOOR, UID1, E.R_GRANT)]
    ledger.ingest(db, "gate-02", "site-a", [(E.unpack(e)["seq"], e) for e in evs])
    clk = _raw(12, E.K_CLOCK, bound - 3 * 86400 + 6000, E.F_CLOCK_SET, aux=100)
    r = ledger.ingest(db, "gate-02", "site-a", [(12, clk)])
    assert r["flagged"] == 1
    got = db.all("SELECT seq, time_basis, flag FROM events WHERE reader_id = 'gate-02' ORDER BY seq")
    assert [(s, b) for s, b, _ in got] == [(10, "estimated"), (11, "estimated"), (12, "reader")]
    assert "clock set refused" in got[2][2]
    (at, note), = _ledger_at(db, "BB-2401-000001")[-1:]
    assert at == ledger.iso(T0 + dt.timedelta(seconds=5000)) and "estimated" in note
    assert db.scalar("SELECT COUNT(*) FROM alarms WHERE kind = 'ledger'") == 3


def test_a_different_event_under_a_taken_number_is_kept_and_alarmed_not_dropped(site):
    # A thief with gate-01's secret pre-fills seq 4..33 with fake refusals; the real gate-01's
    # 4..6 (Anna's passage among them) come later. Same bytes would be a resend; these differ.
    op, db = site
    ledger.ingest(db, "gate-01", "site-a", [(s, ev(s, T0 - dt.timedelta(hours=1), UID2,
                                               E.R_REFUSE, E.BLOCKED)) for s in (1, 2, 3)])
    fake = [(s, ev(s, T0, UID2, E.R_REFUSE, E.BLOCKED)) for s in range(4, 34)]
    assert ledger.ingest(db, "gate-01", "site-a", fake)["stored"] == 30
    real = [(4, ev(4, T0, UID1)), (5, ev(5, T0 + dt.timedelta(minutes=2), UID2, E.R_REFUSE,
                                          E.BLOCKED)), (6, ev(6, T0 + dt.timedelta(hours=8), UID1))]
    r = ledger.ingest(db, "gate-01", "site-a", real)
    assert r["conflict"] == 3 and r["duplicate"] == 0 and r["stored"] == 0 and r["ledger"] == 2
    assert db.scalar("SELECT COUNT(*) FROM event_conflicts WHERE reader_id = 'gate-01'") == 3
    (msg,), = db.all("SELECT message FROM alarms WHERE kind = 'conflict'")
    assert "two different events with one number from gate-01" in msg and "#4..#6" in msg
    assert "secret may be in use" in msg
    assert db.scalar("SELECT COUNT(*) FROM audit WHERE action = 'event conflict'") == 1
    # Anna's real passage is in the ledger, flagged
    got = db.all("SELECT kind, flag FROM ledger WHERE card_no = 'BB-2401-000001' ORDER BY id")
    assert [k for k, _ in got] == ["in", "out"]
    assert got[0][1].startswith("another event #4 from gate-01 differs")
    assert got[1][1].startswith("another event #6 from gate-01 differs")
    op.ok("ledger", "show", "--site", "site-a", "--day", "2026-03-02")
    assert "Anna Svensson" in op.out and "FLAGGED: another event #4 from gate-01 differs" in op.out
    # the same bytes again, of either, are resends: nothing new, no new alarm
    r = ledger.ingest(db, "gate-01", "site-a", real + fake[:3])
    assert r["duplicate"] == 6 and r["conflict"] == 0 and r["ledger"] == 0
    assert db.scalar("SELECT COUNT(*) FROM alarms WHERE kind = 'conflict'") == 1
    op.ok("events", "export", "--site", "site-a", "--from", "2026-03-02", "--to", "2026-03-03")
    seq4 = [e for e in csv.DictReader(io.StringIO(op.out)) if e["seq"] == "4"]
    assert sorted(e["time_basis"] for e in seq4) == ["conflict", "reader"]


def test_a_reader_added_again_after_removal_numbers_a_new_generation(site):
    # gate-01 is removed (stolen) and added again with a fresh board, which numbers from 1:
    # its 1..3 are new events, not resends of the old board's 1..3.
    op, db = site
    old = [(1, ev(1, T0, UID1)), (2, ev(2, T0 + dt.timedelta(hours=8), UID1)),
           (3, ev(3, T0, UID2))]
    assert ledger.ingest(db, "gate-01", "site-a", old)["stored"] == 3
    assert op("readers", "remove", "gate-01", "--reason", "stolen") in (0, 5)
    assert op("readers", "add", "gate-01", "--site", "site-a") in (0, 5)
    backdate(db, "2026-03-03T00:00:00.000000Z")  # the new board was put up that night
    day2 = T0 + dt.timedelta(days=1)
    new = [(1, ev(1, day2, UID1)), (2, ev(2, day2 + dt.timedelta(hours=8), UID1)),
           (3, ev(3, day2, UID2))]
    r = ledger.ingest(db, "gate-01", "site-a", new)
    assert r["stored"] == 3 and r["duplicate"] == 0 and r["conflict"] == 0 and r["ledger"] == 3
    assert ledger.reader_gen(db, "gate-01") == 2
    assert db.all("SELECT gen, COUNT(*) FROM events WHERE reader_id = 'gate-01' GROUP BY gen"
                  " ORDER BY gen") == [(1, 3), (2, 3)]
    assert ledger.ingest(db, "gate-01", "site-a", new)["duplicate"] == 3
    op.ok("ledger", "show", "--site", "site-a", "--day", "2026-03-03", "--tz", "UTC")
    assert "06:55" in op.out and "14:55" in op.out and "Bo Ek" in op.out


def test_migration_11_keeps_the_events_under_the_first_generation(tmp_path, monkeypatch):
    # a registry of migration 10 with an event: after 11 it is generation 1, and a resend of it
    # is still a resend
    from host_sync import db as dbm
    for kind in ("sqlite", "postgresql"):
        with database(kind, tmp_path / kind) as url:
            monkeypatch.setattr(dbm, "MIGRATIONS", dbm.MIGRATIONS[:10])
            d = Db(url)
            d.execute("INSERT INTO events (reader_id, seq, site_id, at, received_at, kind, result,"
                      " reason, raw) VALUES ('gate-01', 7, 'site-a', 'x', 'x', 1, 2, 3, ?)",
                      (ev(7, T0, UID1).hex(),))
            d.close()
            monkeypatch.undo()
            d = Db(url)
            try:
                assert d.schema_version() >= 11
                assert d.all("SELECT reader_id, gen, seq FROM events") == [("gate-01", 1, 7)]
                with pytest.raises(Exception):
                    with d.tx():
                        d.execute("INSERT INTO events (reader_id, gen, seq, site_id, at,"
                                  " received_at, kind, result, reason, raw) VALUES"
                                  " ('gate-01', 1, 7, 's', 'x', 'x', 1, 2, 3, '')")
            finally:
                d.close()


def test_a_passage_from_before_a_site_key_rotation_is_not_flagged_for_want_of_history(site):
    # a rotation republishes every record under a new card key; the history before it is
    # under the old key, so a late upload of a passage from before is not "not on the site"
    _, db = site
    from host_sync import sitekeys
    from host_sync.registry import Registry
    sitekeys.rotate(Registry(db), "site-a")
    r = ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, T0, UID1))])
    assert r["ledger"] == 1 and r["flagged"] == 0
    assert _flags(db)["BB-2401-000001"] == ("in", "")
