"""The registry as the sync engine's data source (host_sync/syncer.py `SyncData`, documented
in docs/protocol.md "Host data interface"). Every method is one short transaction, safe to call
from paho's network thread; several `serve` instances may share one PostgreSQL."""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

from gv import events as evc

from host_sync import commands, health as hl, ledger
from host_sync.db import Db
from host_sync.registry import Registry
from host_sync.timeutil import now_iso
from host_sync.untrusted import clean

log = logging.getLogger("host_sync.store")

HEALTH_BITS = hl.HEALTH_BITS
REJECT_REASONS = {1: "malformed", 2: "protocol version", 3: "bad MAC", 4: "stale session",
                  5: "replayed", 6: "bad type", 7: "out of order", 8: "store error", 9: "busy",
                  10: "flash full"}


class RegistryData:
    def __init__(self, db: Db, actor: str = "serve"):
        self.db = db
        self.reg = Registry(db, actor=actor)
        self._site_of: dict[str, str] = {}
        self._offline_at: dict[str, deque[float]] = {}  # monotonic times of "offline", a reader

    # A reader's session ends in "offline" (its will) when the broker replaces it with another
    # on the same account (use_username_as_clientid): TAKEOVER_N of those within
    # TAKEOVER_WINDOW_S is two clients fighting over one reader's credentials, not a bad link
    # (a flapping link reconnects every few seconds at most: the reader's back-off). An alarm,
    # at most one a minute.
    TAKEOVER_N = 5
    TAKEOVER_WINDOW_S = 60.0

    # -- allowlist --------------------------------------------------------------------------
    def current_version(self, site: str) -> int:
        try:
            return self.reg.current_version(site)
        except LookupError:
            return 0

    def changes_since(self, site: str, version: int,
                      limit: int | None = None) -> list[tuple[int, bytes, bytes | None]] | None:
        """Entries of every version after `version`, in order, whole versions only (at least
        one version even if larger than limit). None when a rebuild is the better answer: the
        reader is ahead of the registry, or the backlog is larger than the whole allowlist."""
        head = self.current_version(site)
        if version > head or version < 0:
            return None
        if version == head:
            return []
        backlog = int(self.db.scalar("SELECT COUNT(*) FROM change_records WHERE site_id = ? AND"
                                     " version > ?", (site, version)) or 0)
        size = int(self.db.scalar("SELECT COUNT(*) FROM allowlist WHERE site_id = ?",
                                  (site,)) or 0)
        if backlog > max(size, 64) and backlog > (limit or 0):
            return None  # more history than the allowlist itself: a rebuild is cheaper
        out: list[tuple[int, bytes, bytes | None]] = []
        for v, recs in self.reg.changes_since(site, version):
            if limit is not None and out and len(out) + len(recs) > limit:
                break
            out.extend((v, k, r) for k, r in recs)
        return out

    def snapshot(self, site: str) -> tuple[int, list[bytes]]:
        version, recs = self.reg.snapshot(site)
        return version, [r for _, r in recs]

    # -- readers ----------------------------------------------------------------------------
    def reader_secret(self, reader_id: str) -> bytes | None:
        row = self.db.one("SELECT secret FROM readers WHERE id = ?", (reader_id,))
        return bytes.fromhex(row[0]) if row and row[0] else None  # '' = revoked

    def credentials_gen(self) -> int:
        """Moves whenever a reader is revoked, removed or re-keyed (Registry.bump_credentials)."""
        return int(self.db.scalar("SELECT value FROM settings WHERE name = 'credentials_gen'")
                   or 0)

    def reader_site(self, reader_id: str) -> str | None:
        s = self._site_of.get(reader_id)
        if s is None:
            s = self.db.scalar("SELECT site_id FROM readers WHERE id = ?", (reader_id,))
            if s is not None:
                self._site_of[reader_id] = s
        return s

    def record_events(self, reader_id: str, events: list[bytes]) -> int:
        site = self.reader_site(reader_id)
        if site is None:
            return 0
        batch = []
        for e in events:
            try:
                batch.append((evc.unpack(e)["seq"], bytes(e)))
            except (ValueError, TypeError):
                log.warning("reader %s sent an undecodable event (%d bytes); dropped",
                            reader_id, len(e))
        res = ledger.ingest(self.db, reader_id, site, batch)
        if res["duplicate"]:
            log.info("reader %s resent %d stored event(s)", reader_id, res["duplicate"])
        if res["conflict"]:  # kept aside and alarmed by the ingest; said here too
            log.warning("reader %s sent %d event(s) under numbers other events have: a copy of"
                        " its secret may be in use", reader_id, res["conflict"])
        self.db.execute("UPDATE readers SET last_seen = ? WHERE id = ?", (now_iso(), reader_id))
        return res["stored"]

    def reader_applied(self, reader_id: str, version: int) -> None:
        with self.db.tx():
            self.db.execute("UPDATE readers SET applied_version = ?, applied_at = ?, last_seen = ?,"
                            " online = 1 WHERE id = ?", (int(version), now_iso(), now_iso(),
                                                         reader_id))
            site = self.reader_site(reader_id)
            if site and int(version) >= self.current_version(site):
                self.db.execute("UPDATE readers SET lag_since = NULL WHERE id = ?", (reader_id,))
        if site:
            from host_sync import sitekeys
            if sitekeys.get(self.reg, site) is not None:
                sitekeys.finish(self.reg, site)  # the old keys go once every reader has the new

    def site_rotation(self, site: str):
        """A key rotation under way for the site (host_sync/sitekeys.py), else None."""
        from host_sync import sitekeys
        return sitekeys.keys_for(self.reg, site)

    def sitekey_sent(self, site: str, reader_id: str, counter: int) -> None:
        from host_sync import sitekeys
        sitekeys.mark_sent(self.reg, site, reader_id, counter)

    def reader_sitekeyed(self, reader_id: str, counter: int, ok: bool) -> bool:
        from host_sync import sitekeys
        site = self.reader_site(reader_id)
        return bool(site) and sitekeys.acked(self.reg, site, reader_id, counter, ok)

    def _health(self, reader_id: str) -> dict[str, Any]:
        raw = self.db.scalar("SELECT health FROM readers WHERE id = ?", (reader_id,))
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def reader_hello(self, reader_id: str, info: dict[str, Any]) -> None:
        # the reader's own text: escaped and capped before the registry (and a terminal) has it
        fw = clean(info.get("fw") or info.get("firmware") or "", 64)
        # The applied version comes from ACKs only: a HELLO may be the retained one from the
        # reader's last connect (stale), seen again when this host subscribes.
        with self.db.tx():
            old = self._health(reader_id)
            health = hl.merge(old, info, "hello", now_iso())
            self.db.execute("UPDATE readers SET firmware = ?, health = ?, last_seen = ?, online = 1"
                            " WHERE id = ?", (fw, json.dumps(health, sort_keys=True),
                                              now_iso(), reader_id))
        self._say_problems(reader_id, old, health)

    def reader_health(self, reader_id: str, info: dict[str, Any]) -> None:
        """A HEALTH report (docs/protocol.md): merged into the reader's health, figure by figure."""
        with self.db.tx():
            old = self._health(reader_id)
            health = hl.merge(old, info, "health", now_iso())
            self.db.execute("UPDATE readers SET health = ?, last_seen = ? WHERE id = ?",
                            (json.dumps(health, sort_keys=True), now_iso(), reader_id))
        self._say_problems(reader_id, old, health)

    def _say_problems(self, reader_id: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        # one log line when what needs attention changes, not one per report
        was, now = hl.problems(old), hl.problems(new)
        if [p.split(" (")[0].split(":")[0] for p in now] != \
                [p.split(" (")[0].split(":")[0] for p in was]:
            if now:
                log.warning("reader %s reports: %s", reader_id, "; ".join(now))
            else:
                log.info("reader %s: healthy again", reader_id)

    def reader_status(self, reader_id: str, online: bool) -> None:
        self.db.execute("UPDATE readers SET online = ?, last_seen = ? WHERE id = ?",
                        (1 if online else 0, now_iso(), reader_id))
        if not online:
            log.warning("reader %s went offline", reader_id)
            self._count_takeover(reader_id)

    def _count_takeover(self, reader_id: str) -> None:
        t = time.monotonic()
        q = self._offline_at.setdefault(reader_id, deque(maxlen=self.TAKEOVER_N))
        q.append(t)
        if len(q) < self.TAKEOVER_N or t - q[0] > self.TAKEOVER_WINDOW_S:
            return
        q.clear()  # the next alarm needs TAKEOVER_N more
        from host_sync import alarms
        site = self.db.scalar("SELECT site_id FROM readers WHERE id = ?", (reader_id,)) or ""
        alarms.raise_alarm(
            self.db, "takeover", "takeover:%s:%d" % (reader_id, int(time.time() // 60)),
            "reader %s's connection was taken over %d times within %d s: two clients use its "
            "credentials (a copy of its config may be in use: docs/security.md, readers revoke)"
            % (reader_id, self.TAKEOVER_N, self.TAKEOVER_WINDOW_S), site, reader_id)

    def reader_unprovisioned(self, reader_id: str, why: str) -> None:
        """The reader refused the config on its flash and sits unprovisioned (door shut): said
        loudly, and kept in the audit log once per distinct reason. `why` is the reader's
        own text: escaped and capped here, before a log line or the audit has it."""
        why = clean(why)
        log.error("reader %s is NOT RUNNING: it refused its config: %s (write a good config with "
                  "host-sync readers config and deploy it)", reader_id, why)
        last = self.db.scalar("SELECT detail FROM audit WHERE subject = ? AND action = ?"
                              " ORDER BY id DESC LIMIT 1", (reader_id, "reader unprovisioned"))
        if last != why:
            self.db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                            (now_iso(), "reader", "reader unprovisioned", reader_id, why))

    def reader_offline(self, reader_id: str) -> None:
        self.reader_status(reader_id, False)

    def reader_rejected(self, reader_id: str, reason: int, count: int) -> None:
        why = REJECT_REASONS.get(reason, "reason %d" % reason)
        log.warning("reader %s rejected %d message(s): %s", reader_id, count, why)
        self.db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                        (now_iso(), "reader", "messages rejected", reader_id,
                         "%d x %s" % (count, why)))

    def host_rejected(self, reader_id: str, who_reason: str, count: int) -> None:
        """Messages this host refused (bad MAC, stale session, unknown reader, too large, ...),
        added up per interval by the engine's RejectLog: one audit row per burst."""
        self.db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                        (now_iso(), "serve", "messages refused", reader_id,
                         "%d x %s" % (count, who_reason)))

    # -- host counters' high-water mark (wire.Counter) --------------------------------------
    def counter_reserve(self, value: int) -> int:
        """Raise the stored mark to `value` (never lower it); returns the stored mark. One
        statement, so concurrent instances each keep the higher of the two."""
        with self.db.tx():
            self.db.execute(
                "INSERT INTO settings (name, value) VALUES ('host_counter', ?) ON CONFLICT (name)"
                " DO UPDATE SET value = excluded.value"
                " WHERE CAST(settings.value AS BIGINT) < CAST(excluded.value AS BIGINT)",
                (str(int(value)),))
            return self.counter_floor()

    def counter_floor(self) -> int:
        v = self.db.scalar("SELECT value FROM settings WHERE name = 'host_counter'")
        return int(v) if v is not None else 0

    def reader_rekeyed(self, reader_id: str, counter: int, ok: bool) -> bool:
        """The reader stored the pair sent in REKEY `counter`: switch (host_sync/rekey.py)."""
        from host_sync import rekey
        return bool(rekey.on_answer(self.reg, reader_id, counter, ok))

    def command_result(self, reader_id: str, counter: int, cmd: int, result: int) -> None:
        self.db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                        (now_iso(), "reader", "command result", reader_id,
                         "cmd=%d counter=%d result=%d" % (cmd, counter, result)))
        # the operator's queued command, if it is one (host_sync/commands.py)
        commands.result(self.db, reader_id, counter, cmd, result)

    # -- what serve watches ---
    def claim_push(self, site: str, head: int, instance: str) -> int | None:
        """Claim the live push of `site` up to `head`: returns the version pushed before (push
        from there), or None when another instance has pushed it or this is the first look at
        the site (readers behind catch up through HELLO/SYNC). A compare-and-set on site_push
        makes exactly one of several serve instances push each version."""
        row = self.db.one("SELECT version FROM site_push WHERE site_id = ?", (site,))
        if row is None:
            self.db.execute("INSERT INTO site_push (site_id, version, at, instance) VALUES"
                            " (?,?,?,?) ON CONFLICT (site_id) DO NOTHING",
                            (site, head, now_iso(), instance))
            return None
        before = int(row[0])
        if before >= head:
            return None
        cur = self.db.execute("UPDATE site_push SET version = ?, at = ?, instance = ?"
                              " WHERE site_id = ? AND version = ?",
                              (head, now_iso(), instance, site, before))
        return before if cur.rowcount == 1 else None

    def hold_lease(self, name: str, instance: str, ttl_s: float) -> bool:
        """Take or renew the lease `name` for ttl_s seconds; True while this instance holds it."""
        import datetime as dt
        from host_sync.timeutil import iso, now
        t = now()
        with self.db.tx():
            self.db.execute("INSERT INTO leases (name, instance, until_at) VALUES (?,?,?)"
                            " ON CONFLICT (name) DO NOTHING", (name, instance, iso(t)))
            cur = self.db.execute("UPDATE leases SET instance = ?, until_at = ? WHERE name = ? AND"
                                  " (instance = ? OR until_at < ?)",
                                  (instance, iso(t + dt.timedelta(seconds=ttl_s)), name, instance,
                                   iso(t)))
            return cur.rowcount == 1

    def release_lease(self, name: str, instance: str) -> None:
        self.db.execute("DELETE FROM leases WHERE name = ? AND instance = ?", (name, instance))

    def readers_in_doubt(self) -> list[tuple[str, int]]:
        """[(reader, head)] for readers not recorded at their site's version."""
        return [(r, int(v)) for r, v in self.db.all(
            "SELECT r.id, s.version FROM readers r JOIN sites s ON s.id = r.site_id"
            " WHERE r.applied_version < s.version")]

    def site_versions_pushed(self) -> dict[str, int]:
        return {s: int(v) for s, v in self.db.all("SELECT site_id, version FROM site_push")}
    def site_versions(self) -> dict[str, int]:
        return {s: int(v) for s, v in self.db.all("SELECT id, version FROM sites")}

    def readers_of(self, site: str) -> list[str]:
        return [r for (r,) in self.db.all("SELECT id FROM readers WHERE site_id = ? ORDER BY id",
                                          (site,))]

    def lagging_blocks(self, limit_s: float) -> list[tuple[str, str, int, str]]:
        """[(reader, site, applied version, oldest unapplied block time)] lagging > limit_s,
        not yet flagged; flags them (readers.lag_since) so each is reported once."""
        from host_sync.timeutil import now, parse_iso
        out = []
        rows = self.db.all("SELECT r.id, r.site_id, r.applied_version, MIN(c.at) FROM readers r"
                           " JOIN changes c ON c.site_id = r.site_id AND c.version > r.applied_version"
                           " AND c.blocking = 1 WHERE r.lag_since IS NULL"
                           " GROUP BY r.id, r.site_id, r.applied_version")
        t = now()
        for rid, site, applied, since in rows:
            if (t - parse_iso(since)).total_seconds() > limit_s:
                self.db.execute("UPDATE readers SET lag_since = ? WHERE id = ? AND lag_since IS NULL",
                                (since, rid))
                out.append((rid, site, int(applied), since))
        return out
