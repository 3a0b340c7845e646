"""The remote-command queue (table `commands`, migration 4) between the operators' CLI and
`serve`. A command goes pending -> sending (claimed by one serve instance) -> sent (with the
message counter its CMDRES will carry) -> done | failed. Several serve instances share the
queue: a row is claimed with a compare-and-set on its state, so exactly one of them sends it.

    cid = enqueue(db, "gate-01", "open", None, actor="anna")      # the CLI
    send_due(db, engine, instance)                                # serve, every poll
    result(db, "gate-01", counter, cmd, res)                      # serve, on CMDRES
    state(db, cid)                                                # the CLI's --wait
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from host_sync.db import Db
from host_sync.timeutil import iso, now, now_iso, parse_iso

log = logging.getLogger("host_sync.commands")

# operators' words -> the protocol's names (gv.sync.protocol.COMMANDS)
NAMES = {"open": "open", "clear-lockout": "clear_lockout", "resync": "resync",
         "set-clock": "set_clock", "reboot": "reboot"}
# How long a command may wait for its reader to be connected. An `open` that reaches a gate
# minutes later, when nobody is standing there, is worse than none: it expires quickly.
EXPIRE_S = {"open": 30.0, "clear_lockout": 300.0, "resync": 300.0, "set_clock": 300.0,
            "reboot": 300.0}
ANSWER_S = 30.0  # a sent command without CMDRES after this long (and past its deadline) failed
RESULTS = {0: ("done", "ok"), 1: ("failed", "the reader could not do it"),
           2: ("failed", "the reader's firmware does not support it")}
FINAL = ("done", "failed")
EPOCH_2020 = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def seconds_2020(t: dt.datetime | None = None) -> int:
    """The readers' clock: seconds since 2020-01-01 UTC."""
    return int(((t or now()) - EPOCH_2020).total_seconds())


def enqueue(db: Db, reader_id: str, command: str, arg: int | None, actor: str,
            expire_s: float | None = None) -> int:
    """Queue `command` (a protocol name) for `reader_id`; returns its id. Audit-logged."""
    t = now()
    deadline = t + dt.timedelta(seconds=EXPIRE_S[command] if expire_s is None else expire_s)
    with db.tx():
        cid = db.scalar("INSERT INTO commands (reader_id, command, arg, requested_by, requested_at,"
                        " deadline_at) VALUES (?,?,?,?,?,?) RETURNING id",
                        (reader_id, command, arg, actor, iso(t), iso(deadline)))
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                    (iso(t), actor, "command queued", reader_id,
                     "#%d %s%s" % (cid, command, "" if arg is None else " %d" % arg)))
    return int(cid)


COLS = ("id", "reader_id", "command", "arg", "state", "requested_by", "requested_at",
        "deadline_at", "instance", "counter", "sent_at", "finished_at", "result")


def get(db: Db, cid: int) -> dict[str, Any] | None:
    row = db.one("SELECT %s FROM commands WHERE id = ?" % ", ".join(COLS), (cid,))
    return dict(zip(COLS, row)) if row else None


def recent(db: Db, reader_id: str | None, limit: int = 20) -> list[dict[str, Any]]:
    sql, args = "SELECT %s FROM commands" % ", ".join(COLS), ()
    if reader_id:
        sql, args = sql + " WHERE reader_id = ?", (reader_id,)
    return [dict(zip(COLS, r)) for r in db.all(sql + " ORDER BY id DESC LIMIT %d" % int(limit),
                                                args)]


def _finish(db: Db, cid: int, from_state: str, state: str, why: str, actor: str) -> bool:
    with db.tx():
        cur = db.execute("UPDATE commands SET state = ?, result = ?, finished_at = ? WHERE id = ?"
                         " AND state = ?", (state, why, now_iso(), cid, from_state))
        if cur.rowcount != 1:
            return False
        rid = db.scalar("SELECT reader_id FROM commands WHERE id = ?", (cid,))
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                    (now_iso(), actor, "command " + state, rid, "#%d %s" % (cid, why)))
    log.info("command #%d %s: %s", cid, state, why)
    return True


def send_due(db: Db, engine: Any, instance: str) -> int:
    """Send every pending command whose reader has a session; returns how many were sent.
    A reader without a session keeps its commands pending (retried on the next poll)."""
    sent = 0
    rows = db.all("SELECT id, reader_id, command, arg FROM commands WHERE state = 'pending'"
                  " ORDER BY id")
    for cid, rid, command, arg in rows:
        st = engine.readers.get(rid)
        if st is None or st.session.nonce is None:
            continue  # not connected (yet): next poll
        cur = db.execute("UPDATE commands SET state = 'sending', instance = ? WHERE id = ? AND"
                         " state = 'pending'", (instance, cid))
        if cur.rowcount != 1:
            continue  # another serve instance took it
        if arg is None:
            arg = seconds_2020() if command == "set_clock" else 0
        # the engine's lock holds back this instance's CMDRES handling until the row says sent
        with engine._lock:
            counter = engine.command(rid, command, int(arg))
            if counter:
                db.execute("UPDATE commands SET state = 'sent', counter = ?, arg = ?, sent_at = ?"
                           " WHERE id = ? AND state = 'sending'",
                           (counter, int(arg), now_iso(), cid))
            else:  # the session went away between the look and the send
                db.execute("UPDATE commands SET state = 'pending', instance = NULL WHERE id = ?"
                           " AND state = 'sending'", (cid,))
                continue
        sent += 1
        log.info("command #%d %s sent to %s counter=%d instance=%s", cid, command, rid, counter,
                 instance)
    return sent


def result(db: Db, reader_id: str, counter: int, cmd: int, res: int) -> bool:
    """A CMDRES from a reader: settle its command. False when no sent command matches (one the
    engine sent by itself, e.g. set_clock after a clockless HELLO, or one another instance is
    still marking sent: expire() settles those from the audit log)."""
    row = db.one("SELECT id FROM commands WHERE reader_id = ? AND counter = ? AND state = 'sent'",
                 (reader_id, int(counter)))
    if row is None:
        return False
    state, why = RESULTS.get(int(res), ("failed", "result %d" % res))
    return _finish(db, int(row[0]), "sent", state, why, "reader")


def expire(db: Db, actor: str) -> int:
    """Fail what can no longer happen: pending (or claimed by an instance that died) past the
    deadline, sent without an answer. Returns the number of rows settled."""
    n = 0
    t = now()
    for cid, st, rid, counter, deadline, sent_at in db.all(
            "SELECT id, state, reader_id, counter, deadline_at, sent_at FROM commands"
            " WHERE state IN ('pending', 'sending', 'sent')"):
        if st == "sent":
            # its CMDRES may have reached another instance before this row said 'sent'
            res = db.scalar("SELECT detail FROM audit WHERE subject = ? AND action ="
                            " 'command result' AND detail LIKE ?",
                            (rid, "cmd=%% counter=%d result=%%" % int(counter)))
            if res is not None:
                code = int(str(res).rsplit("=", 1)[1])
                state, why = RESULTS.get(code, ("failed", "result %d" % code))
                n += _finish(db, cid, "sent", state, why, "reader")
                continue
            late = max(parse_iso(deadline), parse_iso(sent_at) + dt.timedelta(seconds=ANSWER_S))
            if t > late:
                n += _finish(db, cid, "sent", "failed", "no answer from the reader", actor)
        elif t > parse_iso(deadline):
            n += _finish(db, cid, st, "failed", "the reader was not connected before the deadline"
                         if st == "pending" else "the sending serve instance stopped", actor)
    return n
