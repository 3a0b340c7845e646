"""Alarms that reach people (tables alarms, alarm_sinks, alarm_deliveries: migration 5).

`scan()` turns what the registry already knows into alarms:

  duress     a reader reported a duress PIN (event kind alarm): the door opened under threat
  lockouts   LOCKOUTS_N lockout events at one reader within LOCKOUTS_WINDOW_S
  lagging    a reader has not applied a blocking change (block, suspend, terminate) for longer
             than the lag limit: a card that should be refused may still open that gate
  offline    a reader that was seen has been offline for OFFLINE_AFTER_S (its will message or a
             missed keep-alive; a reboot is not an alarm)
  memory     a reader's health shows low memory or a full flash (host_sync.health's thresholds,
             the ones `readers list` warns by)
  takeover   a reader's session was replaced by another on its account TAKEOVER_N times within
             TAKEOVER_WINDOW_S (raised by serve as it sees the wills: RegistryData.reader_status):
             two clients hold its credentials
  ledger     raised by the ingest (host_sync.ledger), not the scan: a grant the registry would
             not have given, an event time that can be none, a refused "clock set"
  conflict   raised by the ingest: two different events under one number from a reader (a
             copy of its secret may be in use); both are kept

A condition alarm (lagging, offline, memory) is raised once while the condition lasts and
cleared when it ends; an event alarm (duress, lockouts) is cleared at once. Either stays on every
console page (the banner) until an operator acknowledges it, which is audit-logged.

Each new alarm gets one delivery row per enabled sink (an outbox); `deliver()` sends what is
due and retries failures with back-off (2, 4, 8 ... 300 s) up to MAX_ATTEMPTS, so every alarm
reaches every sink at least once while the sink can take it. Receivers deduplicate by the
alarm id. Sinks:

  webhook  POST of the alarm as JSON, signed: X-Grindvakt-Signature: sha256=HMAC-SHA256(secret,
           body) in hex; X-Grindvakt-Alarm: the alarm id
  smtp     an e-mail (smtplib; STARTTLS when options.starttls, login when options.user)
  mqtt     the JSON on a topic (paho-mqtt, QoS 1, retained off)

`Watcher` runs scan and deliver every second in a thread of `host-sync web` (one instance at a
time holds the lease "alarms", so several consoles on one PostgreSQL raise each alarm once).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import smtplib
import threading
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

from gv import events as evc

from host_sync.db import Db
from host_sync.ids import InvalidInput
from host_sync.timeutil import iso, now, now_iso, parse_iso

log = logging.getLogger("host_sync.alarms")

KINDS = ("duress", "lockouts", "lagging", "offline", "memory", "ledger", "conflict")
SINK_KINDS = ("webhook", "smtp", "mqtt")
LOCKOUTS_N = 3
LOCKOUTS_WINDOW_S = 600.0
OFFLINE_AFTER_S = 60.0  # a reboot or a short outage is not an alarm; a minute offline is
MAX_ATTEMPTS = 30
BACKOFF_MAX_S = 300.0
SEND_TIMEOUT_S = 10.0


# -- raising ------------------------------------------------------------------------------------
def event_key(reader_id: str, gen: int, seq: int) -> str:
    """An event's part of an alarm key: reader:seq, and the reader's numbering generation from
    the second on (a board added under a removed reader's id numbers from 1 again)."""
    return "%s:%d" % (reader_id, seq) if int(gen) <= 1 else "%s:g%d:%d" % (reader_id, gen, seq)


def _open(db: Db, key: str) -> int | None:
    return db.scalar("SELECT id FROM alarms WHERE key = ? AND cleared_at IS NULL", (key,))


def raise_alarm(db: Db, kind: str, key: str, message: str, site: str = "", reader: str = "",
                condition: bool = False, at: str | None = None) -> int | None:
    """Insert an alarm and its deliveries unless one with `key` is still open (a condition) or
    already raised (an event); returns the new id or None."""
    with db.tx():
        if condition:
            if _open(db, key) is not None:
                return None
        elif db.scalar("SELECT 1 FROM alarms WHERE key = ?", (key,)):
            return None
        t = at or now_iso()
        aid = int(db.scalar(
            "INSERT INTO alarms (kind, key, site_id, reader_id, at, message, cleared_at)"
            " VALUES (?,?,?,?,?,?,?) RETURNING id",
            (kind, key, site, reader, t, message, None if condition else t)))
        for (sid,) in db.all("SELECT id FROM alarm_sinks WHERE enabled = 1 ORDER BY id"):
            db.execute("INSERT INTO alarm_deliveries (alarm_id, sink_id, next_at) VALUES (?,?,?)",
                       (aid, sid, now_iso()))
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                   (now_iso(), "alarms", "alarm raised", reader or site or kind,
                    "#%d %s: %s" % (aid, kind, message)))
    log.warning("alarm #%d %s: %s", aid, kind, message)
    return aid


def _clear(db: Db, key: str) -> None:
    db.execute("UPDATE alarms SET cleared_at = ? WHERE key = ? AND cleared_at IS NULL",
               (now_iso(), key))


def scan(db: Db, lag_limit_s: float = 60.0, offline_after_s: float = OFFLINE_AFTER_S) -> list[int]:
    """One pass over events (since the last pass) and reader states; returns new alarm ids."""
    new: list[int] = []
    t = now()
    cursor = db.scalar("SELECT value FROM settings WHERE name = 'alarm_event_cursor'")
    if cursor is None:  # the first scan: alarms from now on, not the whole history
        cursor = iso(t - dt.timedelta(minutes=10))
    rows = db.all("SELECT reader_id, seq, site_id, at, received_at, kind, reason, card_no, uid, gen"
                  " FROM events WHERE received_at >= ? AND kind IN (?, ?)"
                  " ORDER BY received_at LIMIT 5000", (cursor, evc.K_ALARM, evc.K_LOCKOUT))
    last = cursor
    for rid, seq, site, at, received, kind, reason, card_no, uid, gen in rows:
        last = max(last, received)
        if kind == evc.K_ALARM:
            who = card_no or ("UID %s" % uid if uid else "unknown card")
            aid = raise_alarm(db, "duress", "duress:%s" % event_key(rid, gen, seq),
                              "DURESS PIN at %s (site %s), card %s, %s UTC: the door was opened under"
                              " threat" % (rid, site, who, at[:19].replace("T", " ")),
                              site, rid, at=received)
            if aid:
                new.append(aid)
        elif kind == evc.K_LOCKOUT:
            since = iso(parse_iso(at) - dt.timedelta(seconds=LOCKOUTS_WINDOW_S))
            n = int(db.scalar("SELECT COUNT(*) FROM events WHERE reader_id = ? AND kind = ?"
                              " AND at > ? AND at <= ?", (rid, evc.K_LOCKOUT, since, at)) or 0)
            if n >= LOCKOUTS_N:
                recent = db.scalar("SELECT MAX(at) FROM alarms WHERE kind = 'lockouts' AND"
                                   " reader_id = ?", (rid,))
                if recent is None or parse_iso(recent) < t - dt.timedelta(seconds=LOCKOUTS_WINDOW_S):
                    aid = raise_alarm(db, "lockouts", "lockouts:%s" % event_key(rid, gen, seq),
                                      "%d lockouts at %s (site %s) within %d minutes: someone may"
                                      " be trying cards or PINs" % (n, rid, site,
                                                                    LOCKOUTS_WINDOW_S // 60),
                                      site, rid)
                    if aid:
                        new.append(aid)
    if last != cursor or not rows:
        db.execute("INSERT INTO settings (name, value) VALUES ('alarm_event_cursor', ?)"
                   " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                   (last if rows else max(cursor, iso(t - dt.timedelta(seconds=30))),))
    new += _conditions(db, t, lag_limit_s, offline_after_s)
    return new


def _conditions(db: Db, t: dt.datetime, lag_limit_s: float, offline_after_s: float) -> list[int]:
    new: list[int] = []
    lagging = {rid: (site, since) for rid, site, since in db.all(
        "SELECT r.id, r.site_id, MIN(c.at) FROM readers r JOIN changes c ON c.site_id = r.site_id"
        " AND c.version > r.applied_version AND c.blocking = 1 GROUP BY r.id, r.site_id")}
    open_keys = {k for (k,) in db.all("SELECT key FROM alarms WHERE cleared_at IS NULL AND kind IN"
                                      " ('lagging', 'offline', 'memory')")}
    want: dict[str, tuple[str, str, str, str]] = {}
    for rid, (site, since) in lagging.items():
        if (t - parse_iso(since)).total_seconds() > lag_limit_s:
            want["lagging:%s" % rid] = ("lagging", site, rid, (
                "%s (site %s) has not applied a block made %s UTC (over %d s): a blocked card may"
                " still open this gate" % (rid, site, since[:19].replace("T", " "), lag_limit_s)))
    for rid, site, online, last_seen, health in db.all(
            "SELECT id, site_id, online, last_seen, health FROM readers WHERE last_seen IS NOT NULL"):
        if not online and (t - parse_iso(last_seen)).total_seconds() >= offline_after_s:
            want["offline:%s" % rid] = ("offline", site, rid, "%s (site %s) is offline since %s UTC"
                                        % (rid, site, last_seen[:19].replace("T", " ")))
        try:
            h = json.loads(health) if health else {}
        except ValueError:
            h = {}
        low = _memory(h)
        if low:
            want["memory:%s" % rid] = ("memory", site, rid, "%s (site %s) is low on memory: %s"
                                       % (rid, site, "; ".join(low)))
    for key, (kind, site, rid, msg) in want.items():
        if key not in open_keys:
            aid = raise_alarm(db, kind, key, msg, site, rid, condition=True)
            if aid:
                new.append(aid)
    for key in open_keys - set(want):
        _clear(db, key)
    return new


def _memory(h: dict) -> list[str]:
    """What the reader's health says about its memory, in the words `readers list` uses
    (host_sync.health: one definition of the thresholds); a reader that sends no HEALTH
    report is judged by its HELLO's free heap."""
    from host_sync import health as hl
    out = hl.memory_warnings(h)
    att = hl.attention(h)
    if att:
        out.insert(0, att)
    heap = h.get("free_heap")
    if not h.get("mem") and isinstance(heap, int) and heap < hl.GC_FREE_MIN:
        out.append("GC heap low (%s free)" % hl.kib(heap))
    return out


# -- reading and acknowledging -----------------------------------------------------------------
COLS = ("id", "kind", "key", "site_id", "reader_id", "at", "message", "cleared_at", "acked_by",
        "acked_at", "ack_note")


def unacked(db: Db, sites: tuple[str, ...] = (), limit: int = 5) -> tuple[int, list[dict]]:
    """(how many, the newest `limit`) alarms nobody has acknowledged, of these sites (() = all)."""
    where, args = "acked_at IS NULL", []
    if sites:
        where += " AND site_id IN (%s)" % ",".join("?" * len(sites))
        args += list(sites)
    n = int(db.scalar("SELECT COUNT(*) FROM alarms WHERE " + where, args) or 0)
    rows = db.all("SELECT %s FROM alarms WHERE %s ORDER BY id DESC LIMIT %d"
                  % (", ".join(COLS), where, int(limit)), args)
    return n, [dict(zip(COLS, r)) for r in rows]


def recent(db: Db, sites: tuple[str, ...] = (), limit: int = 100) -> list[dict]:
    sql, args = "SELECT %s FROM alarms" % ", ".join(COLS), []
    if sites:
        sql += " WHERE site_id IN (%s)" % ",".join("?" * len(sites))
        args += list(sites)
    rows = [dict(zip(COLS, r)) for r in db.all(sql + " ORDER BY id DESC LIMIT %d" % int(limit), args)]
    for a in rows:
        a["deliveries"] = [dict(zip(("sink", "kind", "state", "attempts", "last_error"), d))
                           for d in db.all("SELECT s.target, s.kind, d.state, d.attempts,"
                                           " d.last_error FROM alarm_deliveries d JOIN alarm_sinks s"
                                           " ON s.id = d.sink_id WHERE d.alarm_id = ? ORDER BY s.id",
                                           (a["id"],))]
    return rows


def get(db: Db, aid: int) -> dict | None:
    row = db.one("SELECT %s FROM alarms WHERE id = ?" % ", ".join(COLS), (aid,))
    return dict(zip(COLS, row)) if row else None


def acknowledge(db: Db, aid: int, actor: str, note: str = "") -> None:
    with db.tx():
        a = get(db, aid)
        if a is None:
            raise LookupError("no alarm #%d" % aid)
        if a["acked_at"]:
            raise InvalidInput("alarm #%d was already acknowledged by %s at %s"
                               % (aid, a["acked_by"], a["acked_at"][:19]))
        db.execute("UPDATE alarms SET acked_by = ?, acked_at = ?, ack_note = ? WHERE id = ?"
                   " AND acked_at IS NULL", (actor, now_iso(), note.strip()[:500], aid))
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                   (now_iso(), actor, "alarm acknowledged", a["reader_id"] or a["site_id"] or a["kind"],
                    "#%d %s%s" % (aid, a["kind"], (": " + note.strip()) if note.strip() else "")))


# -- sinks --------------------------------------------------------------------------------------
def add_sink(db: Db, kind: str, target: str, secret: str = "", options: dict | None = None,
             actor: str = "admin") -> int:
    if kind not in SINK_KINDS:
        raise InvalidInput("sink kind must be one of %s" % ", ".join(SINK_KINDS))
    options = options or {}
    if kind == "webhook":
        if not target.startswith(("http://", "https://")):
            raise InvalidInput("a webhook target is an http:// or https:// URL")
        if len(secret) < 16:
            raise InvalidInput("a webhook needs a signing secret of at least 16 characters")
    elif kind == "smtp":
        if "@" not in target:
            raise InvalidInput("an smtp target is the recipient's e-mail address")
        if not options.get("host"):
            raise InvalidInput("an smtp sink needs the mail server (--smtp-host)")
    elif kind == "mqtt":
        if not target or "#" in target or "+" in target:
            raise InvalidInput("an mqtt target is a topic without wildcards")
        if not options.get("host"):
            raise InvalidInput("an mqtt sink needs the broker (--mqtt-host)")
    with db.tx():
        sid = int(db.scalar("INSERT INTO alarm_sinks (kind, target, secret, options, created_at)"
                            " VALUES (?,?,?,?,?) RETURNING id",
                            (kind, target, secret, json.dumps(options, sort_keys=True), now_iso())))
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                   (now_iso(), actor, "alarm sink added", "%s #%d" % (kind, sid), target))
    return sid


def remove_sink(db: Db, sid: int, actor: str) -> None:
    with db.tx():
        cur = db.execute("UPDATE alarm_sinks SET enabled = 0 WHERE id = ? AND enabled = 1", (sid,))
        if cur.rowcount != 1:
            raise LookupError("no enabled alarm sink #%d" % sid)
        db.execute("UPDATE alarm_deliveries SET state = 'cancelled' WHERE sink_id = ? AND"
                   " state = 'pending'", (sid,))
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                   (now_iso(), actor, "alarm sink removed", "#%d" % sid, ""))


def sinks(db: Db) -> list[dict]:
    cols = ("id", "kind", "target", "options", "enabled", "created_at")
    out = []
    for r in db.all("SELECT %s FROM alarm_sinks ORDER BY id" % ", ".join(cols)):
        d = dict(zip(cols, r))
        d["options"] = {k: v for k, v in json.loads(d["options"] or "{}").items()
                        if k != "password"}
        out.append(d)
    return out


def payload(a: dict) -> bytes:
    body = {"alarm": a["id"], "kind": a["kind"], "site": a["site_id"], "reader": a["reader_id"],
            "at": a["at"], "message": a["message"], "source": "grindvakt"}
    return json.dumps(body, sort_keys=True).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _send(kind: str, target: str, secret: str, options: dict, a: dict) -> None:
    body = payload(a)
    if kind == "webhook":
        req = urllib.request.Request(target, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "grindvakt-alarms",
            "X-Grindvakt-Signature": sign(secret, body), "X-Grindvakt-Alarm": str(a["id"])})
        with urllib.request.urlopen(req, timeout=SEND_TIMEOUT_S) as r:
            if not 200 <= r.status < 300:
                raise OSError("HTTP %d" % r.status)
    elif kind == "smtp":
        m = EmailMessage()
        m["Subject"] = "[grindvakt] %s alarm: %s" % (a["kind"], a["reader_id"] or a["site_id"])
        m["From"] = options.get("from") or "grindvakt@localhost"
        m["To"] = target
        m["X-Grindvakt-Alarm"] = str(a["id"])
        m.set_content("%s\n\nAlarm #%d (%s) at %s UTC.\nAcknowledge it in the grindvakt console.\n"
                      % (a["message"], a["id"], a["kind"], a["at"][:19].replace("T", " ")))
        with smtplib.SMTP(options["host"], int(options.get("port", 25)),
                          timeout=SEND_TIMEOUT_S) as s:
            if options.get("starttls"):
                s.starttls()
            if options.get("user"):
                s.login(options["user"], options.get("password", ""))
            s.send_message(m)
    elif kind == "mqtt":
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gv-alarms-%d" % a["id"])
        if options.get("user"):
            c.username_pw_set(options["user"], options.get("password", ""))
        if options.get("ca"):
            c.tls_set(ca_certs=options["ca"])
        c.connect(options["host"], int(options.get("port", 1883)), 30)
        c.loop_start()
        try:
            info = c.publish(target, body, qos=1)
            info.wait_for_publish(SEND_TIMEOUT_S)
            if not info.is_published():
                raise OSError("the broker did not acknowledge the publish")
        finally:
            c.disconnect()
            c.loop_stop()
    else:
        raise InvalidInput("unknown sink kind %r" % kind)


def deliver(db: Db) -> int:
    """Send every delivery that is due; returns how many succeeded."""
    ok = 0
    t = now_iso()
    rows = db.all("SELECT d.id, d.attempts, s.kind, s.target, s.secret, s.options, d.alarm_id"
                  " FROM alarm_deliveries d JOIN alarm_sinks s ON s.id = d.sink_id"
                  " WHERE d.state = 'pending' AND d.next_at <= ? ORDER BY d.id LIMIT 50", (t,))
    for did, attempts, kind, target, secret, options, aid in rows:
        a = get(db, aid)
        if a is None:
            continue
        try:
            _send(kind, target, secret, json.loads(options or "{}"), a)
        except (OSError, smtplib.SMTPException, urllib.error.URLError, ValueError) as e:
            n = int(attempts) + 1
            wait = min(BACKOFF_MAX_S, 2.0 ** n)
            state = "failed" if n >= MAX_ATTEMPTS else "pending"
            db.execute("UPDATE alarm_deliveries SET attempts = ?, state = ?, next_at = ?,"
                       " last_error = ? WHERE id = ?",
                       (n, state, iso(now() + dt.timedelta(seconds=wait)), str(e)[:300], did))
            log.warning("alarm #%d to %s %s: attempt %d failed: %s%s", aid, kind, target, n, e,
                        "; giving up" if state == "failed" else "; retry in %.0f s" % wait)
            continue
        db.execute("UPDATE alarm_deliveries SET attempts = attempts + 1, state = 'done',"
                   " delivered_at = ?, last_error = '' WHERE id = ?", (now_iso(), did))
        log.info("alarm #%d delivered to %s %s", aid, kind, target)
        ok += 1
    return ok


class Watcher:
    """scan() and deliver() every `every_s` in a daemon thread, while this process holds the
    lease "alarms" (so several console instances raise and send each alarm once)."""

    LEASE_TTL_S = 5.0

    def __init__(self, db: Db, instance: str, lag_limit_s: float = 60.0, every_s: float = 1.0):
        self.db, self.instance, self.lag_limit_s, self.every_s = db, instance, lag_limit_s, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alarms", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(15)
        try:
            self.db.execute("DELETE FROM leases WHERE name = 'alarms' AND instance = ?",
                            (self.instance,))
        except Exception:  # noqa: BLE001 - closing anyway
            pass

    def _lease(self) -> bool:
        from host_sync.store import RegistryData
        return RegistryData(self.db).hold_lease("alarms", self.instance, self.LEASE_TTL_S)

    def once(self) -> None:
        if self._lease():
            scan(self.db, self.lag_limit_s)
            deliver(self.db)
            # the card search's name index, kept fresh off the request path (migration 7)
            from host_sync.registry import Registry
            Registry(self.db, actor="web").refresh_search_terms()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.once()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the watcher
                log.exception("alarm watcher")
            self._stop.wait(max(0.05, self.every_s - (time.monotonic() - t0)))
