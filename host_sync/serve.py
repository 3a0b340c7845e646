"""`host-sync serve`: the sync service. The sync engine (host_sync/syncer.py, paho-mqtt,
reconnecting) talks to the readers; this module connects it to the registry database and
watches the registry for new allowlist versions (written by any `host-sync` command, in any
process), pushing each new version live exactly once across all serve instances, and flags
readers that lag a blocking change for longer than --lag-limit.

Several instances may share one PostgreSQL: the readers' requests, acknowledgements and events
reach one instance each through the MQTT shared subscription `$share/<group>/gv/+/+/out`; live
pushes come from the one instance holding the push lease (so each reader gets them in order,
over one connection; another instance takes over within seconds when it lapses), and each
version is claimed with a compare-and-set (RegistryData.claim_push) so even two instances that
both think they lead never push it twice; events are stored once per (reader, sequence number)
whatever happens.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from typing import Any

from host_sync import commands, ledger
from host_sync.store import RegistryData
from host_sync.timeutil import now_iso

log = logging.getLogger("host_sync.serve")

DEFAULT_POLL_S = 0.1  # how often the registry is checked for new versions (one tiny query)
STATUS_PREFIX = "serve:"  # settings rows: one per instance, its link to the broker (status)
STATUS_KEEP_S = 86400.0  # rows of instances silent this long are dropped at start


class CappedData:
    """The registry as the engine sees it, with a site's head held at the version this
    instance claimed while it pushes, so it publishes exactly the claimed range even when the
    registry has moved on (the next claim, maybe by another instance, publishes the rest)."""

    def __init__(self, data: RegistryData):
        self._data = data
        self.cap: dict[str, int] = {}

    def current_version(self, site: str) -> int:
        v = self._data.current_version(site)
        cap = self.cap.get(site)
        return v if cap is None else min(v, cap)

    def changes_since(self, site: str, version: int, limit: int | None = None):
        out = self._data.changes_since(site, version, limit)
        cap = self.cap.get(site)
        if out is None or cap is None:
            return out
        return [c for c in out if c[0] <= cap]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


class Service:
    """The watch loop around one HostSync engine. tick() is one pass (tests call it directly)."""

    def __init__(self, data: CappedData, engine: Any, instance: str, lag_limit_s: float = 60.0,
                 lag_check_s: float = 1.0):
        self.data, self.engine, self.instance = data, engine, instance
        self.lag_limit_s, self.lag_check_s = lag_limit_s, lag_check_s
        self.seen: dict[str, int] = {}
        self.pushes = 0  # versions this instance pushed
        self.flagged: list[tuple[str, str, int, str]] = []
        self._next_lag_check = 0.0
        self._leader = False
        self._lease_check = 0.0
        self._nudge_at: float | None = None
        self._nudges: list[float] = []
        self.commands_sent = 0
        self._next_expire = 0.0
        self._next_clock = 0.0
        self._cred_check = 0.0
        self._rekey_check = 0.0
        self._rekey_sent: dict[str, float] = {}
        self._cred_gen = -1

    LEASE = "push"
    LEASE_TTL_S = 3.0
    # after taking the lease (the retained HELLOs teach the sessions meanwhile, slowly on a
    # loaded host), then every NUDGE_EVERY_S while leading: a stuck reader is asked again
    NUDGE_AFTER_S = (2.0, 3.0, 5.0)
    NUDGE_EVERY_S = 30.0
    CLOCK_EVERY_S = 3600.0  # each reader gets the time this often (drift), besides after HELLO
    HOUSEKEEP_S = 60.0  # how often clocks and ledger entries waiting for one are looked at

    def nudge(self) -> int:
        """Ask every reader not recorded at its site's version where it is: an empty DELTA
        head->head. A reader at head ACKs (its ACK may have been lost while no instance was
        subscribed, e.g. the previous one died mid-push); one behind sees the gap and SYNCs."""
        from gv.sync import protocol as P
        n = 0
        eng = self.engine
        with eng._lock:
            for rid, head in self.data.readers_in_doubt():
                st = eng.readers.get(rid)
                if st is not None and st.session.nonce is not None:
                    n += eng._send(st, P.T_DELTA, P.delta_body(head, head, head, [], P.F_ASK))
        if n:
            log.info("nudged readers=%d instance=%s", n, self.instance)
        return n

    def leader(self) -> bool:
        """Whether this instance pushes: it holds the lease (renewed every second)."""
        now = time.monotonic()
        if now >= self._lease_check:
            was = self._leader
            self._leader = self.data.hold_lease(self.LEASE, self.instance, self.LEASE_TTL_S)
            self._lease_check = now + (1.0 if self._leader else self.LEASE_TTL_S / 3)
            if self._leader and not was:
                self._nudges = list(self.NUDGE_AFTER_S)
                self._nudge_at = now + self._nudges.pop(0)
            if self._leader != was:
                log.info("instance=%s %s the push lease", self.instance,
                         "holds" if self._leader else "does not hold")
        return self._leader

    def close(self) -> None:
        if self._leader:
            self.data.release_lease(self.LEASE, self.instance)
            self._leader = False

    def tick(self) -> int:
        """Push every site whose version moved, send queued operator commands; returns the
        messages published."""
        n = self.run_commands()
        self.engine.housekeeping()  # refused-message counts, the shared counter mark
        self.check_credentials()
        self.send_rekeys()
        if not self.leader():
            self.seen.clear()  # look again at everything once we lead
            self._nudge_at = None
            return 0
        for site, head in self.data.site_versions().items():
            if self.seen.get(site) == head:
                continue
            self.seen[site] = head
            before = self.data.claim_push(site, head, self.instance)
            with self.engine._lock:  # the engine's handlers wait while we push
                if before is None:  # pushed by another instance, or first look: nothing to send
                    self.engine.pushed[site] = max(head, self.engine.pushed.get(site, 0))
                    continue
                self.engine.pushed[site] = before
                self.data.cap[site] = head
                try:
                    sent = self.engine.push(site)
                finally:
                    del self.data.cap[site]
            self.pushes += 1
            n += sent
            log.info("pushed site=%s from=%d to=%d messages=%d instance=%s", site, before, head,
                     sent, self.instance)
        now = time.monotonic()
        if self._nudge_at is not None and now >= self._nudge_at and self.engine.connected.is_set():
            self._nudge_at = now + (self._nudges.pop(0) if self._nudges else self.NUDGE_EVERY_S)
            self.nudge()
        if now >= self._next_clock and self.engine.connected.is_set():
            self._next_clock = now + self.HOUSEKEEP_S
            self.engine.correct_clocks(self.CLOCK_EVERY_S)
            released = ledger.release_stale(self.data.db)
            if released:
                log.warning("ledger entries made with estimated times=%d (reader clock never set)",
                            released)
        if now >= self._next_lag_check:
            self._next_lag_check = now + self.lag_check_s
            for rid, site, applied, since in self.data.lagging_blocks(self.lag_limit_s):
                self.flagged.append((rid, site, applied, since))
                log.warning("reader=%s site=%s lags a block: at version %d, block pending since %s "
                            "(over %.0f s)", rid, site, applied, since, self.lag_limit_s)
                self.data.reg.audit("reader lagging a block", rid,
                                    "site=%s applied=%d pending since %s" % (site, applied, since))
        return n

    def send_rekeys(self) -> None:
        """Once a second: a pending re-key (readers rotate) goes to its reader while it is
        connected, again every rekey.RESEND_S until the reader has answered."""
        from host_sync import rekey
        now = time.monotonic()
        if now < self._rekey_check:
            return
        self._rekey_check = now + 1.0
        for rid, d in rekey.pending(self.data.reg).items():
            if now - self._rekey_sent.get(rid, -1e9) < rekey.RESEND_S:
                continue
            with self.engine._lock:  # its answer waits until the counter is recorded
                ctr = self.engine.rekey(rid, bytes.fromhex(d["secret"]), d["password"])
                if ctr:
                    rekey.mark_sent(self.data.reg, rid, ctr)
            if ctr:
                self._rekey_sent[rid] = now
                log.info("re-key sent to %s counter=%d instance=%s", rid, ctr, self.instance)

    def check_credentials(self) -> None:
        """Once a second: if a reader was revoked or re-keyed (in any process), drop the
        sessions made with its old secret, so nothing sealed with it is taken any more."""
        now = time.monotonic()
        if now < self._cred_check:
            return
        self._cred_check = now + 1.0
        gen = self.data.credentials_gen()
        if gen != self._cred_gen:
            self._cred_gen = gen
            self.engine.recheck_credentials()

    def run_commands(self) -> int:
        """Every instance sends queued commands (each claims a row before sending it, so one
        instance sends each), and once a second settles the ones that can no longer happen."""
        sent = commands.send_due(self.data.db, self.engine, self.instance)
        self.commands_sent += sent
        now = time.monotonic()
        if now >= self._next_expire:
            self._next_expire = now + 1.0
            commands.expire(self.data.db, "serve:%s" % self.instance)
        return sent

    STATUS_EVERY_S = 5.0

    def record_status(self, running: bool = True) -> None:
        """This instance's link to the broker, for `host-sync status` (a heartbeat every
        STATUS_EVERY_S, and at once when the link changes)."""
        link = getattr(self.engine, "link", None)
        if link is None:
            return
        link.changed.clear()
        state = dict(link.state(), instance=self.instance, pid=os.getpid(), running=running,
                     heartbeat=now_iso(), leader=self._leader)
        self.data.db.execute(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
            "SET value = excluded.value", (STATUS_PREFIX + self.instance, json.dumps(state)))

    def run(self, stop: threading.Event, poll_s: float) -> None:
        status_at = 0.0
        while not stop.is_set():
            try:
                self.tick()
                link = getattr(self.engine, "link", None)
                if time.monotonic() >= status_at or (link is not None and link.changed.is_set()):
                    status_at = time.monotonic() + self.STATUS_EVERY_S
                    self.record_status()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the service
                log.exception("watch loop")
                stop.wait(1.0)
            stop.wait(poll_s)


def run(ctx: Any) -> int:
    from host_sync.cli import EXIT_OK, host_broker_account
    from host_sync.db import redact
    from host_sync.syncer import HostSync

    a = ctx.args
    from host_sync import ids
    from host_sync.cli import _site_conf
    a.broker_host = ids.broker_address(a.broker_host, "--broker-host")  # exit 3, not a retry loop
    site = _site_conf()  # `site init` recorded the broker's port and the CA to trust
    if a.broker_port is None:
        # the site's host listener (loopback, ids not bound: instances share the account)
        a.broker_port = (site.host_port or site.port) if site else 8883
    if a.tls_ca is None and site is not None and not a.plain:
        a.tls_ca = str(site.trust)
    instance = a.instance or "%s-%d" % (socket.gethostname(), os.getpid())
    data = CappedData(RegistryData(ctx.db, actor="serve:%s" % instance))
    password = os.environ.get(a.broker_password_env) or host_broker_account(ctx.reg)[1]
    # a client id nobody can guess: where ids are not bound to accounts (the host's loopback
    # listener) a known id would let any account that reaches it take the host's place
    client_id = "gv-host-%s-%s" % (instance, secrets.token_hex(8))
    engine = HostSync(data, a.broker_host, a.broker_port, user=a.broker_user, password=password,
                      client_id=client_id, ca_file=a.tls_ca, share_group=a.group)
    svc = Service(data, engine, instance, lag_limit_s=a.lag_limit)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("serving: instance %s, broker %s:%d%s, database %s, group %s" % (
        instance, a.broker_host, a.broker_port, " (TLS)" if a.tls_ca else "",
        redact(ctx.db.url), a.group), file=ctx.err, flush=True)
    forget_silent_instances(ctx.db)
    engine.start(wait=None)  # connects and reconnects in paho's thread
    try:
        svc.run(stop, a.poll)
    finally:
        svc.close()
        engine.stop()
        try:
            svc.record_status(running=False)
        except Exception:  # noqa: BLE001 - the database may be what failed
            log.exception("recording the stop")
        print("stopped: %d push(es), %s" % (svc.pushes, engine.stats), file=ctx.err, flush=True)
    return EXIT_OK


def instances(db: Any) -> list[dict]:
    """What each serve instance last said about its link to the broker (newest first), with
    `age_s`: seconds since its heartbeat."""
    from host_sync.timeutil import now, parse_iso
    out = []
    for name, value in db.all("SELECT name, value FROM settings WHERE name LIKE ?",
                              (STATUS_PREFIX + "%",)):
        try:
            st = json.loads(value)
            st["age_s"] = (now() - parse_iso(st["heartbeat"])).total_seconds()
        except (ValueError, KeyError, TypeError):
            continue
        out.append(st)
    return sorted(out, key=lambda st: st["age_s"])


def forget_silent_instances(db: Any) -> None:
    for st in instances(db):
        if st["age_s"] > STATUS_KEEP_S:
            db.execute("DELETE FROM settings WHERE name = ?", (STATUS_PREFIX + st["instance"],))
