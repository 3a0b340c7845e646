"""The host's sync engine over paho-mqtt: pushes deltas to readers, answers catch-up and rebuild
requests, ingests events idempotently and acknowledges them, tracks every reader's applied
version and liveness, runs remote commands. The registry is reached only through `SyncData`.

    eng = HostSync(data, "127.0.0.1", 1883, user="host", password=pw, share_group="serve")
    eng.start()                    # connects (and reconnects) in paho's thread
    eng.push(site)                 # after a registry change: live deltas to every reader there
    eng.command("gate-01", "open") # -> the command's counter; the result arrives via SyncData
    eng.stop()

With `share_group`, several instances divide the readers' requests and events between them
through `$share/<group>/...` (no double processing); every instance still sees every HELLO and
status (retained, unshared) so any of them can seal messages for any reader.
"""
from __future__ import annotations

import logging
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import host_sync  # noqa: F401 - puts firmware/ on sys.path
from gv import events as gv_events
from gv.sync import protocol as P
from gv.sync.protocol import ProtoError
from host_sync import wire
from host_sync.rejectlog import RejectLog
from host_sync.untrusted import clean

log = logging.getLogger("host_sync.syncer")

COMMANDS = {v: k for k, v in P.COMMANDS.items()}  # "open" -> C_OPEN ...
STATUS = {b"online": True, b"offline": False}  # the only status payloads believed
HELLO_AGAIN_S = 5.0  # at most one "say HELLO again" per reader this often
# what a malformed body is reported as (the refusal's reason names the type)
TYPE_NAMES = {P.T_HELLO: "HELLO", P.T_SYNC: "SYNC", P.T_ACK: "ACK", P.T_EVENTS: "EVENTS",
              P.T_REJECT: "REJECT", P.T_CMDRES: "CMDRES", P.T_HEALTH: "HEALTH"}


class _Malformed(Exception):
    """An authentic message whose body does not parse: a refusal, not a bug (no traceback)."""


class SyncData(Protocol):
    """What the sync engine needs from the registry (docs/protocol.md, "Host data interface")."""

    def current_version(self, site: str) -> int: ...

    def changes_since(self, site: str, version: int, limit: int
                      ) -> list[tuple[int, bytes, bytes | None]] | None: ...

    def snapshot(self, site: str) -> tuple[int, Sequence[bytes]]: ...

    def reader_secret(self, reader_id: str) -> bytes | None: ...

    def reader_site(self, reader_id: str) -> str | None: ...

    def record_events(self, reader_id: str, events: list[bytes]) -> int: ...

    def reader_applied(self, reader_id: str, version: int) -> None: ...

    def reader_hello(self, reader_id: str, info: dict) -> None: ...

    def reader_status(self, reader_id: str, online: bool) -> None: ...

    def reader_rejected(self, reader_id: str, reason: int, count: int) -> None: ...

    def command_result(self, reader_id: str, counter: int, cmd: int, result: int) -> None: ...

    # optional: def reader_health(self, reader_id: str, info: dict) -> None (HEALTH reports)


@dataclass
class ReaderState:
    session: wire.ReaderSession
    applied: int = -1  # last version the reader acknowledged (-1: unknown)
    online: bool = False
    hello: dict = field(default_factory=dict)
    rejected: dict = field(default_factory=dict)  # reason -> count reported
    clock_sent: bool = False  # the time was sent since the reader's last HELLO
    # time.monotonic() when the time was last sent; never is long ago (not 0.0: on a host up
    # less than CLOCK_EVERY_S that read as "just sent", and a new session waited an hour)
    clock_at: float = float("-inf")
    health: dict = field(default_factory=dict)  # the latest HEALTH report
    full_refusals: int = 0  # "flash full" refusals since the reader last succeeded
    hold_until: float = 0.0  # monotonic: the host's own hold of a reader that does not back off

    def backing_off(self) -> bool:
        """It says so itself (HEALTH, flash full): it asks again (SYNC) when it wants an update."""
        return bool(self.health.get("health", 0) & P.H_FULL)

    def held(self, now: float | None = None) -> bool:
        """No live deltas (and, for a reader that does not back off itself, no answers)."""
        return self.backing_off() or (time.monotonic() if now is None else now) < self.hold_until

    def release(self) -> None:
        self.hold_until = 0.0
    secret: bytes = b""  # what the session's key was made from (serve re-checks it: revoke)


class HostSync:
    def __init__(self, data: SyncData, host: str, port: int, user: str | None = None,
                 password: str | None = None, client_id: str | None = None,
                 ca_file: str | None = None, share_group: str | None = None,
                 window: int = 8, snap_records: int = wire.SNAP_RECORDS,
                 keepalive: int = 30, reject_interval_s: float = 10.0):
        self.data = data
        self.window = window
        self.snap_records = snap_records
        self.share_group = share_group
        self.readers: dict[str, ReaderState] = {}
        # with a registry behind it, counters keep a high-water mark there (wire.Counter)
        self.counter = wire.Counter(store=data if hasattr(data, "counter_reserve") else None)
        self.rejects = RejectLog(self._report_rejects, reject_interval_s)
        self._hello_asked: dict[str, float] = {}  # reader -> when it was last asked
        # reader -> (when its "unprovisioned" reason was last passed on, a newer one held back)
        self._unprov: dict[str, tuple[float, str | None]] = {}
        self._sync_at = 0.0
        self.pushed: dict[str, int] = {}  # site -> version last pushed live
        self._snaps: dict[str, tuple[int, list[bytes]]] = {}  # site -> cached snapshot
        self._lock = threading.RLock()
        self.stats = {"events_stored": 0, "events_dup": 0, "rejected_in": 0, "published": 0,
                      "held": 0}
        self.hold_s = (5.0, 300.0)  # hold after a "flash full": first, longest (doubled per refusal)
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  clean_session=True)
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        from host_sync.brokerlink import BrokerLink
        self.link = BrokerLink(host, port, user, ca_file)  # why it fails, said out loud
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda client, userdata: self.link.connect_failed()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 5)
        self._host, self._port, self._keepalive = host, port, keepalive

    # ---- lifecycle ----
    def start(self, wait: float | None = 10.0) -> None:
        self.client.connect_async(self._host, self._port, self._keepalive)
        self.client.loop_start()
        if wait and not self.connected.wait(wait):
            raise ConnectionError(f"broker {self._host}:{self._port} not reachable")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.link.refused(reason_code)
            return
        out = "gv/+/+/out"
        if self.share_group:
            out = f"$share/{self.share_group}/{out}"
        client.subscribe([("gv/+/+/hello", 1), ("gv/+/+/status", 1), (out, 1)])
        self.connected.set()
        self.link.up()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.link.down(reason_code)

    # ---- operator side ----
    def push(self, site: str) -> int:
        """Publish the changes since the last push to every reader of `site` with a session;
        returns the number of messages published. Readers that were behind see a gap and ask."""
        with self._lock:
            head = self.data.current_version(site)
            since = self.pushed.get(site)
            self.pushed[site] = head
            if since is None or head <= since:  # no reader answered yet: they ask on connect
                return 0
            changes = self.data.changes_since(site, since, 10_000)
            if changes is None:
                return 0  # history gone: readers will ask and get a rebuild
            try:
                bodies = [b for _, _, b in wire.delta_bodies(head, since, changes)]
            except ValueError:  # one version too big for a message: tell them to ask
                log.info("site %s: version too big for a live delta; readers will rebuild", site)
                bodies = [P.delta_body(head, since, since, [], P.F_ASK)]
            n = 0
            rot = self._rotation(site)
            for st in self._site_readers(site):
                if rot is not None and (st.applied is None or st.applied < rot[0]):
                    # no delta across a key rotation: it asks, and gets the keys and a rebuild
                    n += self._send(st, P.T_DELTA, P.delta_body(head, since, since, [], P.F_ASK))
                    continue
                for body in bodies:
                    n += self._send(st, P.T_DELTA, body)
            return n

    def command(self, reader_id: str, name: str, arg: int = 0) -> int:
        """Send a remote command; returns its counter (CMDRES reports it), 0 if the reader has
        no session (never connected since this host started and no retained HELLO)."""
        cmd = COMMANDS[name]
        with self._lock:
            st = self.readers.get(reader_id)
            if st is None or st.session.nonce is None:
                return 0
            msg = st.session.seal(P.T_CMD, P.cmd_body(cmd, arg))
            self._publish(st, msg)
            return P.peek(msg)[2]

    def rekey(self, reader_id: str, secret: bytes, password: str) -> int:
        """Send a reader its new secret and broker password (host_sync/rekey.py); returns the
        message's counter (its CMDRES names it), 0 if the reader has no session."""
        with self._lock:
            st = self.readers.get(reader_id)
            if st is None or st.session.nonce is None:
                return 0
            ctr, msg = st.session.seal_rekey(secret, password)
            self._publish(st, msg)
            return ctr

    def forget(self, reader_id: str) -> None:
        """Drop what this engine knows of a reader (revoked, removed or re-keyed): its next
        message is judged against the registry's credentials again."""
        with self._lock:
            self.readers.pop(reader_id, None)

    def recheck_credentials(self) -> list[str]:
        """Forget every reader whose secret in the registry is gone (revoked, removed) or
        changed; returns their ids. serve calls it when the credentials generation moves."""
        with self._lock:
            gone = [rid for rid, st in self.readers.items()
                    if self.data.reader_secret(rid) != st.secret]
            for rid in gone:
                del self.readers[rid]
        for rid in gone:
            log.warning("reader %s: credentials revoked or changed; its session is dropped", rid)
        return gone

    def housekeeping(self) -> None:
        """serve calls this every tick: refused-message counts that are due, and (once a second)
        the counter high-water mark shared with other instances."""
        self.rejects.flush()
        now = time.monotonic()
        with self._lock:
            for rid, (_, why) in list(self._unprov.items()):
                if why is not None:
                    self._note_unprovisioned(rid, why, now)
        if now >= self._sync_at:
            self._sync_at = now + 1.0
            self.counter.sync()

    def _report_rejects(self, reader: str, who: str, reason: str, count: int) -> None:
        rec = getattr(self.data, "host_rejected", None)
        if rec is not None:
            rec(reader, reason, count)

    def _note_unprovisioned(self, rid: str, why: str, now: float | None = None) -> None:
        """Pass a reader's "unprovisioned: why" to the registry (an ERROR line, an audit row
        when the reason changed) at most once per reject interval: a copy of its broker
        account publishing a new reason per message costs a dict entry, not a log line each.
        The latest reason held back is passed on when the interval ends (housekeeping)."""
        note = getattr(self.data, "reader_unprovisioned", None)
        if note is None:
            return
        now = time.monotonic() if now is None else now
        last, _ = self._unprov.get(rid, (float("-inf"), None))
        if now - last < self.rejects.interval_s:
            self._unprov[rid] = (last, why)
            return
        self._unprov[rid] = (now, None)
        note(rid, why)

    def _refuse(self, reader: str, reason: str, detail: str | None = None) -> None:
        self.stats["rejected_in"] += 1
        self.rejects.add(reader, "host", reason, detail=detail)

    def _site_readers(self, site: str) -> list[ReaderState]:
        # a reader held for a full flash gets no live deltas: it catches up when it asks again
        return [st for st in self.readers.values()
                if st.session.site == site and st.session.nonce is not None and not st.held()]

    # ---- incoming ----
    def _state(self, site: str, reader_id: str) -> ReaderState | None:
        st = self.readers.get(reader_id)
        if st is not None and st.session.site == site:
            return st
        secret = self.data.reader_secret(reader_id)
        known_site = self.data.reader_site(reader_id)
        if secret is None or known_site != site:
            return None
        st = ReaderState(wire.ReaderSession.new(reader_id, site, bytes(secret), self.counter),
                         secret=bytes(secret))
        self.readers[reader_id] = st
        return st

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4 or parts[0] != "gv":
            return
        _, site, reader_id, leaf = parts
        try:
            with self._lock:
                if len(msg.payload) > P.MAX_MSG:  # the broker's limit too: never parsed
                    self._refuse(reader_id, "too large (%d bytes)" % len(msg.payload))
                    return
                st = self._state(site, reader_id)
                if st is None:
                    self._refuse(reader_id, "unknown or revoked reader")
                    return
                if leaf == "status":
                    if not msg.payload:
                        return  # a cleared retained message
                    unprov = msg.payload.startswith(b"unprovisioned:")  # gv.app: why it is not running
                    online = False if unprov else STATUS.get(bytes(msg.payload))
                    if online is None:  # only the reader's account (ACL) and only these forms
                        self._refuse(reader_id, "bad status payload")
                        return
                    st.online = online
                    self.data.reader_status(reader_id, st.online)
                    if unprov:
                        # the reader's own words: the registry cleans them (no forged log
                        # lines, no terminal escapes); said at most once per interval
                        why = bytes(msg.payload[14:500]).decode("utf-8", "replace").strip()
                        self._note_unprovisioned(reader_id, why)
                    return
                if not msg.payload:
                    return  # a cleared retained message
                try:
                    typ, counter, body = st.session.open(msg.payload)
                except wire.BootRefused as e:
                    # no "say HELLO again" either: it would be sealed for the copy's session
                    self._refuse(reader_id, e.kind, str(e))
                    return
                except ProtoError as e:
                    if msg.retain and leaf == "hello" and e.reason == P.E_REPLAY:
                        return  # the retained HELLO again, after our own reconnect
                    self._refuse(reader_id, str(e))
                    if e.reason == P.E_SESSION:
                        self._hello_again(st, msg.payload, leaf)
                    return
                try:
                    self._dispatch(st, leaf, typ, counter, body, bool(msg.retain))
                except _Malformed as e:
                    # authentic but unparseable: counted and reported like every refusal
                    self._refuse(reader_id, str(e))
        except Exception:  # noqa: BLE001 - one bad message never stops the service
            log.exception("handling %s", clean(msg.topic))  # a topic is the sender's text

    def _hello_again(self, st: ReaderState, msg: bytes, leaf: str) -> None:
        """An authentic message from a session this host does not hold. A HELLO at or below the
        reader's highest counter is an old one (replayed, or a reader that lost its boot count):
        it never becomes the session; a message above it is from a session this host missed.
        Either way ask that session for a HELLO (above the floor): a real reader answers, a
        replayed one's session is gone and the reader drops the request as stale."""
        _, nonce, counter = P.peek(msg)
        ses = st.session
        if leaf != "hello" and counter <= ses.floor:
            return  # an old message replayed: nothing to ask
        rid = ses.reader_id
        now = time.monotonic()
        if now - self._hello_asked.get(rid, -1e9) < HELLO_AGAIN_S:
            return
        boot = (ses.floor >> 32) + 1 if leaf == "hello" else 0
        if boot > wire.BOOT_LAST:
            # the floor's boot number is the last a u32 holds: no HELLO can rise above it, so
            # there is nothing to ask for (open() refuses the jumps that could get it there)
            self._refuse(rid, "no boot number above the highest seen",
                         "no boot number above %d to ask for: a copy of this reader's secret "
                         "may be in use; see docs/security.md, readers revoke" % (boot - 1))
            return
        self._hello_asked[rid] = now
        self._publish(st, ses.seal_for(nonce, P.T_CMD, P.cmd_body(P.C_HELLO, boot)))

    def _give_clock(self, st: ReaderState) -> None:
        # A reader that booted without a clock decides validity dates only once it has one, and
        # stamps its events with uptime: give it the time once per HELLO.
        if st.hello and st.hello["health"] & P.H_CLOCK and not st.clock_sent:
            st.clock_sent = True
            self._send_clock(st)

    def _send_clock(self, st: ReaderState) -> None:
        st.clock_at = time.monotonic()
        self._publish(st, st.session.seal(P.T_CMD, P.cmd_body(P.C_SET_CLOCK, _now_2020())))

    def correct_clocks(self, every_s: float) -> int:
        """Send the time to each reader in session that had it last more than every_s ago: a
        reader's crystal drifts seconds a day, and the ledger is dated by its clock."""
        now, n = time.monotonic(), 0
        with self._lock:
            for st in self.readers.values():
                if st.online and st.session.nonce is not None and now - st.clock_at >= every_s:
                    self._send_clock(st)
                    n += 1
        return n

    def _dispatch(self, st: ReaderState, leaf: str, typ: int, counter: int, body,
                  retained: bool = False) -> None:
        rid = st.session.reader_id
        if leaf == "hello" and typ == P.T_HELLO:
            info = _parse(P.parse_hello, typ, body)
            st.hello = info
            st.clock_sent = False
            st.health = dict(st.health, health=info["health"])  # the same bits: does it back off
            # "retained": the reader's last session, seen again when this host (re)subscribed
            self.data.reader_hello(rid, dict(info, retained=retained))
            if info["health"] & P.H_FULL:
                # backing off for a full flash: this HELLO asks for nothing (the reader SYNCs
                # when its wait is over); a rebuild window now would only be refused
                if not retained:
                    st.online = True
                    self._give_clock(st)
                return
            if not retained:
                st.release()  # it (re)connected and does not say it backs off: answer it
                # a live HELLO: the reader just connected and waits for an answer. A retained
                # one (this host just subscribed) only teaches us the session: that reader may
                # be offline, and if it is waiting it asks again (SYNC) within seconds.
                st.online = True
                self._answer(st, info["al_version"], info["snap_version"], info["snap_offset"])
                self._give_clock(st)
        elif leaf != "out":
            return
        elif typ == P.T_SYNC:
            if not st.backing_off() and st.held():
                # a reader that does not back off itself, asking again within the host's hold
                self.stats["held"] += 1
                return
            self._answer(st, *_parse(P.parse_sync, typ, body))
            # a HELLO this host only saw retained (it subscribed after the reader said it) was
            # not answered with the time: the reader's first SYNC is
            self._give_clock(st)
        elif typ == P.T_ACK:
            v, sv, _ = _parse(P.parse_ack, typ, body)
            st.full_refusals = 0
            st.release()
            if not sv:
                st.applied = v
                self.data.reader_applied(rid, v)
        elif typ == P.T_EVENTS:
            evs = [e for e in _parse(P.parse_events, typ, body) if gv_events.valid(e)]
            if evs:
                stored = self.data.record_events(rid, evs)
                self.stats["events_stored"] += stored
                self.stats["events_dup"] += len(evs) - stored
                upto = max(gv_events.unpack(e)["seq"] for e in evs)
                self._send(st, P.T_EVACK, P.evack_body(upto))
        elif typ == P.T_REJECT:
            reason, rtyp, count, _ = _parse(P.parse_reject, typ, body)
            st.rejected[reason] = st.rejected.get(reason, 0) + count
            # the reader reports a reason's count at most once a minute; the registry logs it
            if reason in (P.E_FULL, P.E_STORE) and not st.backing_off():
                # refusing updates without backing off itself (a failing flash, or firmware that
                # calls a full flash a store error): the host's own hold
                self._hold(st)
            self.data.reader_rejected(rid, reason, count)
        elif typ == P.T_HEALTH:
            info = _parse(P.parse_health, typ, body)
            was = st.backing_off()
            st.health = info
            if st.backing_off():
                # held (no live deltas) for as long as it says so; it asks when it wants more
                st.release()
                if not was:
                    st.full_refusals += 1
                    log.warning("reader %s: flash full, backing off; no updates until it asks",
                                rid)
            rh = getattr(self.data, "reader_health", None)
            if rh is not None:
                rh(rid, info)
        elif typ == P.T_CMDRES:
            ctr, cmd, res = _parse(P.parse_cmdres, typ, body)
            if cmd == P.C_SITEKEY:
                done = getattr(self.data, "reader_sitekeyed", None)
                if done is not None:
                    done(rid, ctr, res == P.CR_OK)
                return
            if cmd == P.C_REKEY:
                done = getattr(self.data, "reader_rekeyed", None)
                if done is not None and done(rid, ctr, res == P.CR_OK):
                    # the registry holds the new secret now: the next session is made with it
                    self.readers.pop(rid, None)
                return
            self.data.command_result(rid, ctr, cmd, res)

    def _hold(self, st: ReaderState, wait: float | None = None) -> None:
        """No answers or live deltas to a reader whose flash refused an update: for `wait` (the
        reader's own back-off) or a while that doubles per refusal; it ends early when the reader
        says it has room or succeeds."""
        st.full_refusals += 1
        if wait is None:
            lo, hi = self.hold_s
            wait = min(lo * 2 ** min(st.full_refusals - 1, 16), hi)
        st.hold_until = time.monotonic() + wait
        log.warning("reader %s refuses updates: holding them for %.0f s (refusal %d)",
                    st.session.reader_id, wait, st.full_refusals)

    # ---- answers ----
    def _answer(self, st: ReaderState, v: int, sv: int, so: int) -> None:
        """Reply to a HELLO/SYNC: a window of SNAP chunks, catch-up DELTAs or 'current'."""
        site = st.session.site
        head = self.data.current_version(site)
        self.pushed.setdefault(site, head)
        rot = self._rotation(site)
        if rot is not None and v < rot[0] and sv < rot[0]:
            # below the site's key rotation: its keys first (SITEKEY), then only a rebuild at the
            # head. A reader that stored them asks with version 0 until its rebuild is in.
            if st.session.reader_id not in rot[3] or v:
                self._send_keys(st, rot)
                return
            sv = 0  # a rebuild begun under the old keys is not resumed: the head's, from 0
        if sv:
            snap_v, recs = self._snapshot(site, head)
            self._send_snap(st, head, snap_v, recs, so if snap_v == sv else 0)
            return
        if v == head:
            self._send(st, P.T_DELTA, P.delta_body(head, head, head, [], P.F_ASK))
            return
        changes = None
        if 0 < v < head:
            changes = self.data.changes_since(site, v, self.window * wire.DELTA_MAX_ENTRIES)
        if not changes:
            snap_v, recs = self._snapshot(site, head)
            self._send_snap(st, head, snap_v, recs, 0)
            return
        try:
            bodies = wire.delta_bodies(head, v, changes)[: self.window]
        except ValueError:  # a version too big for one message: rebuild instead
            snap_v, recs = self._snapshot(site, head)
            self._send_snap(st, head, snap_v, recs, 0)
            return
        for i, (_, _, body) in enumerate(bodies):
            if i == len(bodies) - 1:
                body = wire.set_flags(body, P.F_ASK)
            self._send(st, P.T_DELTA, body)

    def _rotation(self, site: str):
        f = getattr(self.data, "site_rotation", None)
        return f(site) if f is not None else None

    def _send_keys(self, st: ReaderState, rot) -> None:
        ctr, msg = st.session.seal_sitekey(rot[0], rot[1], rot[2])
        self._publish(st, msg)
        sent = getattr(self.data, "sitekey_sent", None)
        if sent is not None:
            sent(st.session.site, st.session.reader_id, ctr)

    def _snapshot(self, site: str, head: int) -> tuple[int, list[bytes]]:
        cached = self._snaps.get(site)
        if cached is None or cached[0] != head:
            version, recs = self.data.snapshot(site)
            cached = (version, wire.records_sorted(recs))
            self._snaps[site] = cached
        return cached

    def _send_snap(self, st, head, version, recs, offset) -> None:
        # a reader whose flash last said it has no room gets one chunk, not a window: a probe
        # it can store or refuse without the rest of a window to refuse as well
        h = st.health
        probe = st.full_refusals and h.get("need_flash", 0) > h.get("free_flash", 0)
        for body in wire.snap_bodies(head, version, recs, offset, 1 if probe else self.window,
                                     self.snap_records):
            self._send(st, P.T_SNAP, body)

    def _send(self, st: ReaderState, typ: int, body: bytes) -> int:
        if st.session.nonce is None:
            return 0
        self._publish(st, st.session.seal(typ, body))
        return 1

    def _publish(self, st: ReaderState, msg: bytes) -> None:
        self.client.publish(P.topic(st.session.site, st.session.reader_id, "in"), msg, qos=1)
        self.stats["published"] += 1


def _parse(fn: Callable[[Any], Any], typ: int, body: Any) -> Any:
    """fn(body), or _Malformed naming the type: what a parser raises on a bad body is the
    reader's fault (or a copy of its secret's), never this host's."""
    try:
        return fn(body)
    except (ProtoError, ValueError, struct.error) as e:
        raise _Malformed("malformed %s body" % TYPE_NAMES.get(typ, "type 0x%02x" % typ)) from e


def _now_2020() -> int:
    """Seconds since 2020-01-01 UTC: the readers' wall clock (gv.gate.clock)."""
    import time as _time
    return int(_time.time()) - 1577836800
