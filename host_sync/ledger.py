"""Events from the readers and the staff ledger (personalliggare) built from them.

Events are stored once per (reader, numbering generation, sequence number): a re-sent batch
changes nothing, and a different event under a number already taken is kept aside and alarmed. A
granted passage of a registered card becomes a ledger entry at once, with the site's ID number
(from the tax agency), the contractor's name and organisation number and the person's name and
personal identity number as they are at that moment. Entries are never edited (the database
refuses an UPDATE); a correction is a new entry. A work shift is the entries sharing a shift id:
a passage opens a shift ("in"), the next passage within MAX_SHIFT closes it ("out"), and a
later one opens the next shift. Passages within DEBOUNCE of the previous entry (the same person
presenting the card again) are kept as events but add no entry.

A reader's word is checked against the registry (a copy of its secret can forge any event): a
grant the registry would not have given at that site at that time (the allowlist history says
the card was not active, not valid or not on the site) is still entered, since a genuine reader
with a stale allowlist did let the person in, but flagged, audit-logged and alarmed. An event
time in the future or before the reader was added is never a shift time: the passage is entered
as a flagged entry at its reception time, outside every shift (docs/ledger.md).
"""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import uuid
from typing import Any, Iterable, Sequence

from gv import events as evc

from gv.allowlist import record as rec_codec

from host_sync import alarms
from host_sync.db import Db
from host_sync.ids import InvalidInput
from host_sync.timeutil import UTC, days_since_2020, from_reader_seconds, iso, now, now_iso, parse_iso

MAX_SHIFT = dt.timedelta(hours=16)
DEBOUNCE = dt.timedelta(seconds=60)
RETENTION_YEARS = 2  # kept at least two years after the end of the calendar year
# A reader's clock set by the host runs within seconds of it; more than this ahead of reception
# (or before the reader was added) is no time a passage can have had.
CLOCK_SLACK = dt.timedelta(minutes=5)
REGISTRY_SLACK = dt.timedelta(seconds=60)
LEDGER_COLS = ("id", "shift_id", "kind", "site_id", "tax_site_id", "employer", "employer_org",
               "person_name", "pnr", "card_no", "at", "reader_id", "entered_at", "note", "flag")
_STATUS_NAMES = {rec_codec.ACTIVE: "active", rec_codec.INACTIVE: "inactive",
                 rec_codec.BLOCKED: "blocked", rec_codec.TERMINATED: "terminated",
                 rec_codec.SUSPENDED: "suspended"}


def ingest(db: Db, reader_id: str, site_id: str, batch: Iterable[tuple[int, bytes]]) -> dict:
    """Store a reader's events; idempotent by (reader, generation, seq) and the event's bytes.
    Returns counts {"stored", "duplicate", "rejected", "ledger", "flagged", "conflict"} and
    "rejected_seqs" (undecodable events, which are logged by the caller and acknowledged so
    they do not block the queue). The same bytes again are a resend (a duplicate); different
    bytes under a number already stored are kept in event_conflicts and alarmed, never dropped.

    An event made while the reader's clock was not set is stored with its best estimate (the
    reader's lower bound, else the reception time, said in time_basis) and its ledger entry
    waits: the boot's "clock set" event, when it comes, dates every event of that boot exactly
    and their entries are made then; a new boot (or a gap in the numbers, where a boot could
    hide) makes the waiting entries with the estimate and a note saying so."""
    out = {"stored": 0, "duplicate": 0, "rejected": 0, "ledger": 0, "flagged": 0,
           "conflict": 0, "rejected_seqs": []}
    received = now()
    ctx = _Ctx(db, reader_id, site_id, reader_gen(db, reader_id))
    conflicts: list[int] = []
    with db.tx():
        site = db.one("SELECT tax_site_id FROM sites WHERE id = ?", (site_id,))
        ctx.tax = site[0] if site else ""
        added = db.scalar("SELECT created_at FROM readers WHERE id = ?", (reader_id,))
        ctx.added = parse_iso(added) if added else None
        for seq, raw in sorted(batch, key=lambda x: x[0]):
            try:
                d = evc.unpack(raw)
            except (ValueError, TypeError):
                out["rejected"] += 1
                out["rejected_seqs"].append(seq)
                continue
            if d["seq"] != seq:
                out["rejected"] += 1
                out["rejected_seqs"].append(seq)
                continue
            if d["clock_set"]:
                at, basis = from_reader_seconds(d["t"]), "reader"
            elif d["floor"]:
                at, basis = from_reader_seconds(d["t"]), "estimated"
            else:
                at, basis = received, "received"
            uid = d["uid"].hex()
            card = ctx.card(uid)
            grant = d["result"] == evc.R_GRANT and d["kind"] in (evc.K_DECISION, evc.K_ALARM)
            passage = bool(card and site and grant)
            time_flag = ctx.time_flag(at, basis, received)
            clock_flag = ""
            if d["kind"] == evc.K_CLOCK and d["clock_set"]:
                clock_flag = time_flag or _clock_refusal(ctx, seq, d)
            held = passage and basis != "reader" and not time_flag
            if time_flag:
                flag = time_flag
            elif passage and not held:
                flag = ctx.refusal(uid, at)
            elif grant and not card and uid:
                flag = "granted a card the registry does not know"
            else:
                flag = clock_flag
            cur = db.execute(
                "INSERT INTO events (reader_id, gen, seq, site_id, at, received_at, kind, result,"
                " reason, uid, card_no, aux, clock_set, raw, time_basis, held, flag)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (reader_id, gen, seq) DO NOTHING",
                (reader_id, ctx.gen, seq, site_id, iso(at), iso(received), d["kind"], d["result"],
                 d["reason"], uid, card[0] if card else None, d["aux"],
                 1 if d["clock_set"] else 0, raw.hex(), basis, 1 if held else 0, flag))
            if cur.rowcount == 0:
                had = db.scalar("SELECT raw FROM events WHERE reader_id = ? AND gen = ? AND seq = ?",
                                (reader_id, ctx.gen, seq))
                if had == raw.hex():
                    out["duplicate"] += 1  # the same bytes again: a resend
                    continue
                # a different event under a number already taken: one of the two was not made
                # by this board (a copy of its secret), so neither is dropped; this one is kept
                # aside, dates nothing, and a passage in it is entered flagged
                why = "another event #%d from %s differs (a copy of its secret may be in use)" % (
                    seq, reader_id)
                if passage and not time_flag and not flag:
                    flag = ctx.refusal(uid, at)
                cflag = why + ("; " + flag if flag else "")
                cur = db.execute(
                    "INSERT INTO event_conflicts (reader_id, gen, seq, site_id, at, received_at,"
                    " kind, result, reason, uid, card_no, raw, flag) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (reader_id, gen, seq, raw) DO NOTHING",
                    (reader_id, ctx.gen, seq, site_id, iso(at), iso(received), d["kind"],
                     d["result"], d["reason"], uid, card[0] if card else None, raw.hex(), cflag))
                if cur.rowcount == 0:
                    out["duplicate"] += 1  # that conflicting event again
                    continue
                out["conflict"] += 1
                conflicts.append(seq)
                if passage and time_flag:
                    out["ledger"] += _at_reception(ctx, card, at, received, cflag)
                elif passage:
                    out["ledger"] += _passage(db, site_id, ctx.tax, card, at, reader_id,
                                              _estimate_note(basis), cflag)
                continue
            out["stored"] += 1
            if flag:
                out["flagged"] += 1
                ctx.alarm(seq, flag, card[0] if card else ("UID " + uid if uid else ""), at)
            if d["kind"] == evc.K_BOOT:
                out["ledger"] += _release(ctx, seq)  # earlier boots can no longer be dated
            elif d["kind"] == evc.K_CLOCK and d["clock_set"]:
                if clock_flag:  # refused for dating: this boot's events keep their estimates
                    out["ledger"] += _release(ctx, seq)
                else:
                    out["ledger"] += _date_boot(ctx, seq, d["t"] - d["aux"])
            if passage and time_flag:
                out["ledger"] += _at_reception(ctx, card, at, received, flag)
            elif passage and not held:
                out["ledger"] += _passage(db, site_id, ctx.tax, card, at, reader_id, flag=flag)
        if conflicts:
            _conflict_alarm(ctx, conflicts)
    return out


def _at_reception(ctx: _Ctx, card: Sequence[str], at: dt.datetime, received: dt.datetime,
                  flag: str) -> int:
    """A passage whose time can be none: an entry at its reception, outside every shift (never
    on site), saying what the reader said."""
    _entry(ctx.db, uuid.uuid4().hex[:12], "flagged", ctx.site_id, ctx.tax, card[1:], card[0],
           received, ctx.reader_id, "the reader said %s UTC" % iso(at)[:19], flag)
    return 1


def _estimate_note(basis: str) -> str:
    """An entry's note for an event time the reader's clock did not give ("" when it did)."""
    if basis == "reader":
        return ""
    return "time estimated: the reader's clock was not set (%s)" % (
        "at least this late" if basis == "estimated" else "time received")


def _conflict_alarm(ctx: _Ctx, seqs: list[int]) -> None:
    """One alarm (and audit row) per upload that brought events under numbers already taken."""
    span = ("#%d" % seqs[0]) if len(seqs) == 1 else ("#%d..#%d (%d events)"
                                                     % (seqs[0], seqs[-1], len(seqs)))
    msg = ("two different events with one number from %s (site %s): %s; a copy of its secret"
           " may be in use. Both are kept (events export lists both)" % (ctx.reader_id,
                                                                          ctx.site_id, span))
    ctx.db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                   (now_iso(), "host-sync", "event conflict", ctx.reader_id, msg))
    alarms.raise_alarm(ctx.db, "conflict", "conflict:%s" % ctx.event_key(seqs[0]), msg,
                       ctx.site_id, ctx.reader_id)


class _Ctx:
    """What one ingest looks up more than once: the site's tax id, cards by UID."""

    def __init__(self, db: Db, reader_id: str, site_id: str, gen: int = 1):
        self.db, self.reader_id, self.site_id, self.gen = db, reader_id, site_id, gen
        self.tax = ""
        self.added: dt.datetime | None = None  # when the registry added the reader
        self._cards: dict[str, tuple | None] = {}  # uid -> (card_no, holder, pnr, employer, org)
        self._keys: dict[str, str] = {}  # uid -> the card's key at this site (hex)

    def time_flag(self, at: dt.datetime, basis: str, received: dt.datetime) -> str:
        """Why `at` can be no event's time ("" when it can): later than its reception, or
        before the reader was added (a reader has no events before it is provisioned)."""
        if basis == "received":
            return ""
        if at > received + CLOCK_SLACK:
            return "time in the future: %s UTC, received %s UTC" % (iso(at)[:19], iso(received)[:19])
        if self.added is not None and at < self.added - CLOCK_SLACK:
            return "time before the reader was added: %s UTC, added %s UTC" % (
                iso(at)[:19], iso(self.added)[:19])
        return ""

    def refusal(self, uid: str, at: dt.datetime) -> str:
        """Why the registry would not have let this card in at this site at `at` ("" when it
        would): the card's record in the site's allowlist as it stood then (the newest change
        made by then), its status and validity dates as a reader checks them. A record that
        allowed it within REGISTRY_SLACK either side counts (the reader's clock and the
        host's differ by seconds; a change reaches a connected reader within seconds)."""
        why = self._refusal(uid, at)
        if why and not (self._refusal(uid, at + REGISTRY_SLACK) == ""
                        or self._refusal(uid, at - REGISTRY_SLACK) == ""):
            return why
        return ""

    def _refusal(self, uid: str, at: dt.datetime) -> str:
        from host_sync.registry import Registry
        key = self._keys.get(uid)
        if key is None:
            try:
                key = self._keys[uid] = Registry(self.db).key8(self.site_id, uid).hex()
            except (LookupError, ValueError):
                return "not on site %s" % self.site_id
        row = self.db.one("SELECT r.rec FROM change_records r JOIN changes c ON c.site_id ="
                          " r.site_id AND c.version = r.version WHERE r.site_id = ? AND r.key8 = ?"
                          " AND c.at <= ? ORDER BY r.version DESC LIMIT 1",
                          (self.site_id, key, iso(at)))
        if row is None:
            # a site key rotation republished every record under a new card key: history from
            # before it is under the old key, which is gone, so it cannot be told
            first = self.db.one("SELECT c.action, c.at FROM change_records r JOIN changes c ON"
                                " c.site_id = r.site_id AND c.version = r.version WHERE"
                                " r.site_id = ? AND r.key8 = ? ORDER BY r.version LIMIT 1",
                                (self.site_id, key))
            if first and first[0] == "site keys rotated":
                return ""
        if row is None or row[0] is None:
            return "not on site %s at that time" % self.site_id
        _, status, _, vf, vu, _ = rec_codec.unpack(bytes.fromhex(row[0]))
        if status != rec_codec.ACTIVE:
            return "card %s at that time" % _STATUS_NAMES.get(status, "status %d" % status)
        day = days_since_2020(at.date())
        # a day's slack either side: the reader counts days in its own time zone
        if day + 1 < vf:
            return "card not yet valid at that time"
        if day - 1 > vu:
            return "card expired at that time"
        return ""

    def event_key(self, seq: int) -> str:
        """reader:seq, with the generation from the second on (alarm keys stay unique)."""
        return alarms.event_key(self.reader_id, self.gen, seq)

    def alarm(self, seq: int, flag: str, who: str, at: dt.datetime) -> None:
        """A flagged event: a log line, an audit row and an alarm (which logs and audits too)."""
        self.db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                        (now_iso(), "host-sync", "event flagged", self.reader_id,
                         "event #%d%s at %s UTC: %s" % (seq, (" card " + who) if who else "",
                                                        iso(at)[:19], flag)))
        alarms.raise_alarm(self.db, "ledger", "ledger:%s" % self.event_key(seq),
                           "%s (site %s), event #%d%s: %s; a copy of the reader's secret may be"
                           " in use, or the reader's allowlist or clock is wrong"
                           % (self.reader_id, self.site_id, seq,
                              (", card " + who) if who else "", flag),
                           self.site_id, self.reader_id)

    def card(self, uid: str) -> tuple | None:
        if not uid:
            return None
        if uid not in self._cards:
            self._cards[uid] = self.db.one("SELECT card_no, holder, pnr, employer, employer_org"
                                           " FROM cards WHERE uid = ?", (uid,))
        return self._cards[uid]


def _date_boot(ctx: _Ctx, clock_seq: int, offset: int) -> int:
    """A "clock set" event at clock_seq: wall = t + offset for this boot's earlier events made
    without a clock (their t and the event's aux share one time base). Only the boot's own boot
    event and those after it, with no number missing in between, are this boot's for sure."""
    db = ctx.db
    start = _boot_start(ctx, clock_seq)
    rows = db.all("SELECT seq, raw, held FROM events WHERE reader_id = ? AND gen = ? AND seq >= ?"
                  " AND seq < ? AND clock_set = 0 AND time_basis <> 'dated' ORDER BY seq",
                  (ctx.reader_id, ctx.gen, start, clock_seq))
    if not rows:
        return 0
    have = db.scalar("SELECT COUNT(*) FROM events WHERE reader_id = ? AND gen = ? AND seq >= ?"
                     " AND seq < ?", (ctx.reader_id, ctx.gen, start, clock_seq))
    if int(have or 0) != clock_seq - start:
        return _release(ctx, clock_seq)  # a gap could hide another boot: estimates stay
    n = 0
    for seq, raw, held in rows:
        d = evc.unpack(bytes.fromhex(raw))
        at = from_reader_seconds(d["t"] + offset)
        db.execute("UPDATE events SET at = ?, time_basis = 'dated', held = 0 WHERE reader_id = ?"
                   " AND gen = ? AND seq = ?", (iso(at), ctx.reader_id, ctx.gen, seq))
        card = ctx.card(d["uid"].hex())
        if held and card:
            n += _flagged_passage(ctx, seq, card, d["uid"].hex(), at)
    return n


def _boot_start(ctx: _Ctx, clock_seq: int) -> int:
    """The first number of the boot a "clock set" event at clock_seq belongs to: its boot
    event's (without one stored: only from seq 1 on)."""
    boot = ctx.db.scalar("SELECT MAX(seq) FROM events WHERE reader_id = ? AND gen = ? AND kind = ?"
                         " AND seq < ?", (ctx.reader_id, ctx.gen, evc.K_BOOT, clock_seq))
    return int(boot) if boot is not None else 1


def _clock_refusal(ctx: _Ctx, clock_seq: int, d: dict) -> str:
    """Why a "clock set" event may not date its boot's events ("" when it may): its aux (what
    the clock read just before) is below the uptime of an event of the boot already stored, or
    it would move events made on the reader's lower bound back before that bound (the bound is
    a time that had passed: the real time is at least it)."""
    db = ctx.db
    start = _boot_start(ctx, clock_seq)
    offset = d["t"] - d["aux"]
    for seq, raw in db.all("SELECT seq, raw FROM events WHERE reader_id = ? AND gen = ? AND"
                           " seq >= ? AND seq < ? AND clock_set = 0 ORDER BY seq",
                           (ctx.reader_id, ctx.gen, start, clock_seq)):
        e = evc.unpack(bytes.fromhex(raw))
        if e["t"] > d["aux"]:
            return ("clock set refused: it says the clock read %d before, below event #%d's %d"
                    % (d["aux"], seq, e["t"]))
        if e["floor"] and offset < -CLOCK_SLACK.total_seconds():
            return ("clock set refused: it would move event #%d %d s before the reader's lower"
                    " bound" % (seq, -offset))
    return ""


def _flagged_passage(ctx: _Ctx, seq: int, card: Sequence[str], uid: str, at: dt.datetime,
                     note: str = "") -> int:
    """A passage whose time is now known: checked against the registry as at that time (a
    flag, its audit row and alarm when the registry would not have let the card in)."""
    flag = ctx.refusal(uid, at)
    if flag:
        ctx.db.execute("UPDATE events SET flag = ? WHERE reader_id = ? AND gen = ? AND seq = ?",
                       (flag, ctx.reader_id, ctx.gen, seq))
        ctx.alarm(seq, flag, card[0], at)
    return _passage(ctx.db, ctx.site_id, ctx.tax, card, at, ctx.reader_id, note, flag)


def _release(ctx: _Ctx, before_seq: int) -> int:
    """Make the waiting entries of events before before_seq with their estimated times."""
    db = ctx.db
    rows = db.all("SELECT seq, at, uid, time_basis FROM events WHERE reader_id = ? AND gen = ?"
                  " AND held = 1 AND seq < ? ORDER BY seq", (ctx.reader_id, ctx.gen, before_seq))
    n = 0
    for seq, at, uid, basis in rows:
        db.execute("UPDATE events SET held = 0 WHERE reader_id = ? AND gen = ? AND seq = ?",
                   (ctx.reader_id, ctx.gen, seq))
        card = ctx.card(uid)
        if card:
            n += _flagged_passage(ctx, seq, card, uid, parse_iso(at), _estimate_note(basis))
    return n


def release_stale(db: Db, older_than: dt.timedelta = dt.timedelta(hours=1)) -> int:
    """Entries still waiting for a clock an hour after their events arrived (the reader's
    "clock set" event never came: it rebooted offline, or its flash refused the event) are made
    with the estimate. serve calls this now and then."""
    cutoff = iso(now() - older_than)
    n = 0
    with db.tx():
        for reader_id, gen, site_id, top in db.all(
                "SELECT reader_id, gen, site_id, MAX(seq) FROM events WHERE held = 1 AND"
                " received_at < ? GROUP BY reader_id, gen, site_id", (cutoff,)):
            ctx = _Ctx(db, reader_id, site_id, int(gen))
            site = db.one("SELECT tax_site_id FROM sites WHERE id = ?", (site_id,))
            ctx.tax = site[0] if site else ""
            n += _release(ctx, int(top) + 1)
    return n


def events_lost(db: Db, reader_id: str) -> int:
    """Events the reader lost to ring overflow, in all: its 'events dropped' events carry the
    running total (docs/events-format.md), so the largest one seen is the answer, and a note
    lost with the events it counted is made good by the next one. The reader's present board
    only (its generation): a board added under a removed reader's id counts from nothing."""
    return int(db.scalar("SELECT MAX(aux) FROM events WHERE reader_id = ? AND gen = ? AND kind = ?",
                         (reader_id, reader_gen(db, reader_id), evc.K_DROPPED)) or 0)


def reader_gen(db: Db, reader_id: str) -> int:
    """The reader's numbering generation (migration 11): its events are keyed by it."""
    return int(db.scalar("SELECT gen FROM readers WHERE id = ?", (reader_id,)) or 1)


def next_gen(db: Db, reader_id: str) -> int:
    """The generation a reader added under this id starts: one past any its events had, so a
    fresh board's numbers never meet a removed board's."""
    g = db.scalar("SELECT MAX(g) FROM (SELECT MAX(gen) AS g FROM events WHERE reader_id = ?"
                  " UNION ALL SELECT MAX(gen) AS g FROM event_conflicts WHERE reader_id = ?) x",
                  (reader_id, reader_id))
    return int(g or 0) + 1


def _passage(db: Db, site_id: str, tax_site_id: str, card: Sequence[str], at: dt.datetime,
             reader_id: str, note: str = "", flag: str = "") -> int:
    card_no = card[0]
    last = db.one("SELECT shift_id, kind, at FROM ledger WHERE card_no = ? AND site_id = ?"
                  " AND kind IN ('in', 'out') AND at <= ? ORDER BY at DESC, id DESC LIMIT 1",
                  (card_no, site_id, iso(at)))
    if last and at - parse_iso(last[2]) < DEBOUNCE:
        return 0
    if last and last[1] == "in" and at - parse_iso(last[2]) <= MAX_SHIFT:
        shift_id, kind = last[0], "out"
    else:
        shift_id, kind = uuid.uuid4().hex[:12], "in"
    _entry(db, shift_id, kind, site_id, tax_site_id, card[1:], card_no, at, reader_id, note, flag)
    return 1


def _entry(db: Db, shift_id: str, kind: str, site_id: str, tax_site_id: str,
           card: Sequence[str], card_no: str, at: dt.datetime, reader_id: str, note: str,
           flag: str = "") -> None:
    holder, pnr, employer, employer_org = card
    db.execute("INSERT INTO ledger (shift_id, kind, site_id, tax_site_id, employer, employer_org,"
               " person_name, pnr, card_no, at, reader_id, entered_at, note, flag)"
               " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               (shift_id, kind, site_id, tax_site_id, employer, employer_org, holder, pnr,
                card_no, iso(at), reader_id, now_iso(), note, flag))


def correct(db: Db, shift_id: str, start: dt.datetime | None, end: dt.datetime | None,
            note: str, actor: str) -> None:
    """A correction is a new entry ("correct-start"/"correct-end") that the shift view prefers
    over the readers' entries; nothing already entered changes."""
    if not note.strip():
        raise InvalidInput("a correction needs a note saying why")
    if start is None and end is None:
        raise InvalidInput("give --start and/or --end")
    with db.tx():
        row = db.one("SELECT site_id, tax_site_id, person_name, pnr, employer, employer_org,"
                     " card_no FROM ledger WHERE shift_id = ? AND kind = 'in'", (shift_id,))
        if not row:
            raise LookupError("no shift %r in the ledger" % shift_id)
        site_id, tax, name, pnr, emp, org, card_no = row
        now_shift = _shift([dict(zip(LEDGER_COLS, r)) for r in db.all(
            "SELECT %s FROM ledger WHERE shift_id = ? ORDER BY id" % ", ".join(LEDGER_COLS),
            (shift_id,))])
        assert now_shift is not None  # it has its "in" entry
        new_start = start or now_shift["start"]
        new_end = end or now_shift["end"]
        if new_end is not None and new_end < new_start:
            raise InvalidInput("the shift would end (%s) before it starts (%s); nothing was "
                               "entered" % (iso(new_end), iso(new_start)))
        for kind, t in (("correct-start", start), ("correct-end", end)):
            if t is not None:
                _entry(db, shift_id, kind, site_id, tax, (name, pnr, emp, org), card_no, t,
                       "-", "%s (by %s)" % (note.strip(), actor))
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                   (now_iso(), actor, "ledger corrected", shift_id, note.strip()))


def shifts(db: Db, site_id: str, t_from: dt.datetime, t_to: dt.datetime) -> list[dict]:
    """One row per person and work shift overlapping [t_from, t_to)."""
    # every entry of the shifts with an entry near the span, in one query on ledger_site_at
    # and ledger_shift
    rows = db.all("SELECT %s FROM ledger WHERE shift_id IN (SELECT DISTINCT shift_id FROM ledger"
                  " WHERE site_id = ? AND at >= ? AND at < ?) ORDER BY id" % ", ".join(LEDGER_COLS),
                  (site_id, iso(t_from - MAX_SHIFT), iso(t_to + MAX_SHIFT)))
    by: dict[str, list[dict]] = {}
    for r in rows:
        d = dict(zip(LEDGER_COLS, r))
        by.setdefault(d["shift_id"], []).append(d)
    out = []
    for entries in by.values():
        s = _shift(entries)
        if s and s["start"] < t_to and (s["end"] is None or s["end"] >= t_from):
            out.append(s)
    out.sort(key=lambda s: (s["start"], s["person_name"]))
    return out


def _shift(entries: list[dict]) -> dict | None:
    first = next((e for e in entries if e["kind"] == "in"), None)
    if first is None:
        first = next((e for e in entries if e["kind"] == "flagged"), None)
        if first is None:
            return None
        # a passage whose time was no time: a row of its own at reception, never on site
        t = parse_iso(first["at"])
        return {"shift": first["shift_id"], "site_id": first["site_id"],
                "tax_site_id": first["tax_site_id"], "employer": first["employer"],
                "employer_org": first["employer_org"], "person_name": first["person_name"],
                "pnr": first["pnr"], "card_no": first["card_no"], "start": t, "end": t,
                "readers": [first["reader_id"]], "corrected": False, "notes": "",
                "flags": "time not used (%s; %s)" % (first["flag"], first["note"])}
    start = parse_iso(first["at"])
    outs = [parse_iso(e["at"]) for e in entries if e["kind"] == "out"]
    end = max(outs) if outs else None
    flags = list(dict.fromkeys(e["flag"] for e in entries if e.get("flag")))
    corrections = [e for e in entries if e["kind"].startswith("correct-")]
    for e in corrections:  # in entry order: the latest correction wins
        if e["kind"] == "correct-start":
            start = parse_iso(e["at"])
        else:
            end = parse_iso(e["at"])
    readers = sorted({e["reader_id"] for e in entries if e["reader_id"] != "-"})
    return {"shift": first["shift_id"], "site_id": first["site_id"],
            "tax_site_id": first["tax_site_id"], "employer": first["employer"],
            "employer_org": first["employer_org"], "person_name": first["person_name"],
            "pnr": first["pnr"], "card_no": first["card_no"], "start": start, "end": end,
            "readers": readers, "corrected": bool(corrections),
            "notes": "; ".join(e["note"] for e in corrections), "flags": "; ".join(flags)}


SHIFT_HEADER = ("site_id_number", "contractor", "contractor_org_no", "name",
                "personal_identity_number", "card_number", "shift_start", "shift_end", "readers",
                "corrected", "flagged", "shift")


def _fmt_t(t: dt.datetime | None, tz: dt.tzinfo) -> str:
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def shift_rows(rows: list[dict], tz: dt.tzinfo) -> list[list[str]]:
    return [[s["tax_site_id"], s["employer"], s["employer_org"], s["person_name"], s["pnr"],
             s["card_no"], _fmt_t(s["start"], tz), _fmt_t(s["end"], tz) or "(on site)",
             " ".join(s["readers"]), ("yes: " + s["notes"]) if s["corrected"] else "",
             s["flags"], s["shift"]]
            for s in rows]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(v: Any) -> Any:
    """A cell a spreadsheet will not run as a formula (OWASP "CSV injection"): text starting
    with = + - @, a tab or a carriage return gets a leading apostrophe, which spreadsheets show
    as text. A holder's name or an imported field is operator- or portal-supplied text; numbers
    stay numbers."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        try:
            float(v)
            return v  # a plain negative number (never a formula)
        except ValueError:
            return "'" + v
    return v


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO(newline="")
    # CRLF rows (RFC 4180): the csv module then quotes a cell holding a CR or LF, so text with
    # a line break stays one cell (with "\n" rows a bare CR went out unquoted)
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows([safe_cell(c) for c in r] for r in rows)
    return buf.getvalue()


def to_html(title: str, subtitle: str, header: Sequence[str], rows: list[list[str]]) -> str:
    """A printable page (A4 landscape); print to PDF from any browser."""
    th = "".join("<th>%s</th>" % html.escape(h.replace("_", " ")) for h in header)
    body = "\n".join("<tr>%s</tr>" % "".join("<td>%s</td>" % html.escape(str(c)) for c in r)
                     for r in rows)
    return ("<!doctype html>\n<html lang=\"sv\"><head><meta charset=\"utf-8\"><title>%s</title>\n"
            "<style>@page{size:A4 landscape;margin:12mm}body{font:10pt sans-serif}"
            "table{border-collapse:collapse;width:100%%}th,td{border:1px solid #888;padding:2px 4px;"
            "text-align:left}th{background:#eee}tr{page-break-inside:avoid}</style></head>\n"
            "<body><h1>%s</h1><p>%s</p>\n<table><thead><tr>%s</tr></thead><tbody>\n%s\n"
            "</tbody></table><p>%d row(s). Printed %s.</p></body></html>\n"
            % (html.escape(title), html.escape(title), html.escape(subtitle), th, body, len(rows),
               html.escape(now().strftime("%Y-%m-%d %H:%M UTC"))))


def earliest_purge_cutoff(today: dt.date | None = None) -> dt.date:
    """The latest --before a purge may use: rows of year Y are kept to the end of Y+2."""
    today = today or now().date()
    return dt.date(today.year - RETENTION_YEARS, 1, 1)


def purge(db: Db, before: dt.date, actor: str, apply: bool) -> dict:
    limit = earliest_purge_cutoff()
    if before > limit:
        raise InvalidInput("refused: the staff ledger is kept for at least %d years after the end "
                           "of the calendar year; the latest allowed --before today is %s"
                           % (RETENTION_YEARS, limit.isoformat()))
    cut = iso(dt.datetime(before.year, before.month, before.day, tzinfo=UTC))
    n_ledger = int(db.scalar("SELECT COUNT(*) FROM ledger WHERE at < ?", (cut,)) or 0)
    n_events = int(db.scalar("SELECT COUNT(*) FROM events WHERE at < ?", (cut,)) or 0)
    n_events += int(db.scalar("SELECT COUNT(*) FROM event_conflicts WHERE at < ?", (cut,)) or 0)
    if apply:
        with db.tx():
            db.execute("DELETE FROM ledger WHERE at < ?", (cut,))
            db.execute("DELETE FROM events WHERE at < ?", (cut,))
            db.execute("DELETE FROM event_conflicts WHERE at < ?", (cut,))
            db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                       (now_iso(), actor, "ledger purged", "before %s" % before.isoformat(),
                        "ledger=%d events=%d" % (n_ledger, n_events)))
    return {"ledger": n_ledger, "events": n_events, "applied": apply}


EVENT_HEADER = ("at", "reader", "seq", "kind", "result", "reason", "card_number", "holder",
                "uid", "aux", "clock_set", "time_basis", "received_at", "flag")


def event_rows(db: Db, site_id: str, t_from: dt.datetime, t_to: dt.datetime,
               tz: dt.tzinfo) -> list[list[Any]]:
    # events kept aside under a number another event had (event_conflicts) are listed too, with
    # time_basis "conflict" and their flag
    rows = db.all("SELECT e.at, e.reader_id, e.seq, e.kind, e.result, e.reason, e.card_no,"
                  " c.holder, e.uid, e.aux, e.clock_set, e.time_basis, e.received_at, e.flag"
                  " FROM events e LEFT JOIN cards c ON c.card_no = e.card_no"
                  " WHERE e.site_id = ? AND e.at >= ? AND e.at < ?"
                  " UNION ALL SELECT e.at, e.reader_id, e.seq, e.kind, e.result, e.reason,"
                  " e.card_no, c.holder, e.uid, 0, 0, 'conflict', e.received_at, e.flag"
                  " FROM event_conflicts e LEFT JOIN cards c ON c.card_no = e.card_no"
                  " WHERE e.site_id = ? AND e.at >= ? AND e.at < ? ORDER BY 1, 2, 3",
                  (site_id, iso(t_from), iso(t_to), site_id, iso(t_from), iso(t_to)))
    return [[_fmt_t(parse_iso(r[0]), tz), r[1], r[2], evc.KINDS.get(r[3], r[3]),
             evc.RESULTS.get(r[4], r[4]), evc.REASONS.get(r[5], r[5]), r[6] or "", r[7] or "",
             r[8], r[9], "yes" if r[10] else "no", r[11], _fmt_t(parse_iso(r[12]), tz), r[13]]
            for r in rows]
