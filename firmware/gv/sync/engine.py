# The reader's sync engine: keeps the allowlist at the host's version over MQTT (live deltas in
# order, catch-up after a gap, resumable rebuilds), uploads access events until the host has
# them, runs authenticated remote commands and reports what it rejected. Rules: docs/protocol.md.
#
#   sync = Sync(cfg, allowlist, events=log, on_command=hook, health=fn)
#   asyncio.create_task(sync.run())
#
# Incoming messages are handled inside the MQTT receive task without awaiting (flash work only);
# replies go out from the sender task, events from the uploader task: the three never wait on
# each other, and none of them waits on the network for longer than a bounded timeout.
import asyncio
import gc
import os

from gv import memory
from gv.compat import ticks_add, ticks_diff, ticks_ms
from gv.allowlist.layout import FREC, BadData, LogFull
from gv.allowlist.snapshot import check_records
from gv.sync import protocol as P
from gv.sync.mqtt import MQTTClient, tls_context

FW = "grindvakt-0.1"
_ANSWER_MS = 5000  # no answer to HELLO/SYNC (or progress) for this long: ask again
_EVACK_MS = 5000  # an EVENTS batch without EVACK for this long is sent again
_REPORT_MS = 60000  # a reason's first REJECT goes at once, then its count once a minute
_HEALTH_MS = P.HEALTH_S * 1000  # a HEALTH report at least this often
_ROOM_MS = 10000  # while backing off, look this often whether the flash has room again
_EV_BATCH = 30  # 30 x 32-byte events: ~1 KiB messages
_SEEN = 32  # anti-replay window: host counters remembered per session


class Sync:
    def __init__(self, cfg, allowlist, events=None, on_command=None, health=None, fw=FW,
                 client=None, boot=None, creds=None, sitekeys=None, keyer=None):
        try:
            # the store loads its update code on first use; load it now, while the heap is
            # young, rather than compile it mid-rebuild in a fragmented heap
            from gv.allowlist import snapshot, update  # noqa: F401
        except ImportError:
            pass
        self.cfg = cfg
        self.al = allowlist
        self.log = events
        self.on_command = on_command  # on_command(name, arg) -> True/False (None: unsupported)
        self.health = health  # () -> health bits (protocol.H_*) the app knows about
        self.fw = fw
        # the boot number (gv.boot.BootCount; without one, a RAM count the host lifts at the
        # first connect) is the top half of my counter: it never goes backwards, so the host
        # can refuse an old HELLO replayed to reset my session
        if boot is None:
            from gv.boot import BootCount
            boot = BootCount()
        self.boot = boot
        self.key = P.Key(cfg.secret, cfg.reader_id)
        site, rid = cfg.site, cfg.reader_id
        self.t_in = P.topic(site, rid, "in")
        self.t_out = P.topic(site, rid, "out")
        self.t_hello = P.topic(site, rid, "hello")
        self.t_status = P.topic(site, rid, "status")
        # back-off after the flash refused an update for want of room: first wait, longest wait
        # (ms; doubled per refusal, jittered over its upper half); tests shorten it
        self.retry_ms = (15000, 900000)
        if client is None:
            b = cfg.broker
            ctx = tls_context(b["ca"]) if b.get("tls", True) else None
            # the context holds the parsed CA (mbedtls, outside the GC heap on an ESP32) and is
            # reused for every reconnect: the PEM text (~1.1-1.9 KB) need not stay in the config
            b.pop("ca", None)
            client = MQTTClient(rid, b.get("host", "127.0.0.1"), b.get("port", 8883),
                                b.get("user", rid), b.get("password"), ssl=ctx,
                                server_hostname=b.get("server_name") or b.get("host"),
                                keepalive=b.get("keepalive", 30),
                                connect_timeout_ms=b.get("connect_timeout_ms", 5000))
        client.will = (self.t_status, b"offline", True)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.subscribe(self.t_in)
        # credentials that a signed REKEY can replace (gv.sync.rekey.Credentials); without
        # them a REKEY is refused as a bad type
        self.creds = creds
        self._attempt = None  # (key, used the new pair) of the connection being attempted
        # the site keys a signed SITEKEY can rotate (gv.sync.sitekey.SiteKeys) and the keyer the
        # gate decides with; without them a SITEKEY is refused as a bad type
        self.sitekeys = sitekeys
        self.keyer = keyer
        if creds is not None:
            client.on_attempt = self._on_attempt
        if hasattr(client, "before_tls"):
            client.before_tls = memory.tls_room  # no handshake that cannot fit the ESP-IDF heap
        self.client = client
        # session
        self.nonce = None
        self._ctr = boot.n << 32  # my counter: boot number << 32 | messages sent this boot
        self._seen = []  # the highest host counters accepted in this session (_fresh)
        self.head = 0  # the host's version, as last heard
        # what the sender owes the host
        self._work = asyncio.Event()
        self._want_hello = False
        self._want_ack = False
        self._want_sync = False
        self._asked = None  # ticks of the last HELLO/SYNC or answer progress; None: not waiting
        self._force_rebuild = False
        # a delta waited for the log to be folded (LogFull): the compactor folds it, then asks
        self._fold_wait = False
        self._cmdres = []
        self._rej = {}  # reason -> [count, type, counter]
        self._rej_at = {}
        # events
        self._ev_sent = 0  # highest seq in the batch in flight
        self._evack = asyncio.Event()
        self._snap_open = None  # snapshot version begun in this boot
        self._snap_done = 0  # records of it handed to the store
        self._snap_count = 0  # records of the rebuild being received
        # counters for tests, health and the REPL
        self.deltas = 0
        self.chunks = 0
        self.rebuilds = 0
        self.commands = 0
        self.rejected = {}  # reason -> count
        self.events_sent = 0
        self.last_error = None
        # back-off (flash full) and health reports
        self.refusals = 0  # consecutive updates the flash refused for want of room
        self.need_flash = 0  # bytes the refused update still needs (0: nothing refused)
        self._retry_at = None  # ticks when to ask again; None: not backing off
        self._room_at = 0  # ticks of the last look for room while backing off
        self._free_at = 0  # free flash just after the refusal
        self._h_sent = None  # (health bits, backing off) of the last HEALTH sent
        self._h_at = 0  # ticks of the last HEALTH sent
        self._t0 = ticks_ms()
        self._up_s = 0
        self.health_sent = 0

    # ---- tasks ----
    async def run(self):
        """Start the MQTT link, the sender and the event uploader; returns when stopped."""
        tasks = [asyncio.create_task(self.client.run()), asyncio.create_task(self._sender())]
        if self.log is not None:
            tasks.append(asyncio.create_task(self._uploader()))
        if hasattr(self.al, "compact_step"):
            self.al.fold_inline = False  # _compactor folds the log, a step at a time
            tasks.append(asyncio.create_task(self._compactor()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    def stop(self):
        self.client.stop()

    def kick(self):
        """Something to send (the app may call this after logging an event)."""
        self._work.set()

    async def _on_connect(self):
        memory.record(P.M_TLS)  # the heaps with the broker link (and its TLS) up
        if self._attempt is not None:  # the pair that logged in seals this session
            self.key, used_next = self._attempt
            self.creds.connected(used_next)
        # a fresh session: everything sealed for an older one is now stale
        self.nonce = os.urandom(P.NONCE_LEN)
        self._seen = []
        self._want_hello = True
        self._want_sync = False
        self._asked = None
        self._work.set()

    def _seal(self, typ, body):
        self._ctr += 1
        return P.seal(self.key, P.DIR_READER, typ, self.nonce, self._ctr, body)

    async def _pub(self, topic, typ, body, retain=False):
        return await self.client.publish(topic, self._seal(typ, body), qos=1, retain=retain,
                                         retry=False)

    async def _sender(self):
        while True:
            try:
                await asyncio.wait_for_ms(self._work.wait(), 500)
            except asyncio.TimeoutError:
                pass
            self._work.clear()
            self._uptime()
            if not self.client.connected:
                continue
            try:
                await self._send_owed()
            except Exception as e:  # noqa: BLE001 - the sender never dies
                if isinstance(e, MemoryError):
                    memory.note_error("sync sender")
                self.last_error = "sender: %s" % e

    def _uptime(self):
        # whole seconds since boot, wrap-safe (called at least every 500 ms, far below the
        # ticks period), a small int on 32-bit for 34 years
        d = ticks_diff(ticks_ms(), self._t0) // 1000
        if d > 0:
            self._up_s += d
            self._t0 = ticks_add(self._t0, d * 1000)

    async def _send_owed(self):
        now = ticks_ms()
        if self._want_hello:
            if not await self.client.publish(self.t_status, b"online", qos=1, retain=True,
                                             retry=False):
                return
            if not await self._pub(self.t_hello, P.T_HELLO, self._hello_body(), retain=True):
                return
            self._want_hello = False
            # backing off, the HELLO asks for nothing: no "no answer" re-HELLO either
            self._asked = ticks_ms() if self._retry_at is None else None
            self._h_sent = None  # a new session: tell this host the health at once
        self._back_off_due(now)
        if self._want_ack:
            self._want_ack = False
            v, sv, so = self._state()
            if not await self._pub(self.t_out, P.T_ACK, P.ack_body(v, sv, so)):
                self._want_ack = True
                return
        if self._asked is not None and ticks_diff(now, self._asked) > _ANSWER_MS:
            # No answer: ask again with a HELLO rather than a SYNC. A host that missed this
            # session's HELLO (and so rejects everything in it as a stale session) learns the
            # session from it; a host that has it answers a HELLO exactly as it answers a SYNC.
            self._asked = None
            self._want_hello = True
            return await self._send_owed()
        if self._want_sync:
            self._want_sync = False
            v, sv, so = self._state()
            self._asked = ticks_ms()
            if not await self._pub(self.t_out, P.T_SYNC, P.sync_body(v, sv, so)):
                self._want_sync = True
                return
        while self._cmdres:
            ctr, cmd, res = self._cmdres[0]
            if not await self._pub(self.t_out, P.T_CMDRES, P.cmdres_body(ctr, cmd, res)):
                return
            self._cmdres.pop(0)
        for reason in list(self._rej):
            at = self._rej_at.get(reason)
            if at is not None and ticks_diff(now, at) < _REPORT_MS:
                continue
            count, typ, ctr = self._rej.pop(reason)
            self._rej_at[reason] = now
            await self._pub(self.t_out, P.T_REJECT, P.reject_body(reason, typ, count, ctr))
        h = (self._health_bits(), self._retry_at is not None)
        if h != self._h_sent or ticks_diff(now, self._h_at) >= _HEALTH_MS:
            if await self._pub(self.t_out, P.T_HEALTH, self._health_body(h[0])):
                self._h_sent = h
                self._h_at = now
                self.health_sent += 1

    # ---- back-off ----
    def _refused(self, count):
        """The flash refused an update for want of room (count: the rebuild's records, 0 for a
        delta): wait before asking again (exponential, bounded, jittered), and say why in the
        next HEALTH."""
        self.refusals += 1
        self._wait()
        need = 2 * 4096  # a delta: its file (or the manifest's block) and LittleFS's copy
        if count and hasattr(self.al, "snapshot_flash_need"):
            p = self.al.snapshot_progress()  # what is durably on flash is kept for the next try
            need = self.al.snapshot_flash_need(count, p[2] if p and p[1] == count else 0)
        self.need_flash = need
        self._free_at = _flash(self.al)[0]
        self._room_at = ticks_ms()
        self._want_sync = False
        self._asked = None
        self._snap_open = None  # the next try resumes from what is durably on flash

    def _delay(self):
        # the refusals-th wait: lo doubled per refusal up to hi
        lo, hi = self.retry_ms
        return min(lo << min(self.refusals - 1, 16), hi)

    def _wait(self):
        d = self._delay()
        self._retry_at = ticks_add(ticks_ms(), d // 2 + _rand(d // 2))  # jitter: its upper half

    def _back_off_due(self, now):
        # While backing off: look for room every _ROOM_MS and ask at once when there is enough.
        # When the wait is over and nothing was freed, the same update would fail the same way:
        # wait longer without a word to the host (it holds a reader that says it is full); at
        # the longest wait ask anyway (the host's version may have shrunk, the estimate be off).
        if self._retry_at is None:
            return
        if ticks_diff(now, self._retry_at) < 0:
            if ticks_diff(now, self._room_at) < _ROOM_MS:
                return
            self._room_at = now
            if _flash(self.al)[0] < self.need_flash:
                return
        else:
            self._room_at = now
            if _flash(self.al)[0] <= self._free_at and self._delay() < self.retry_ms[1]:
                self.refusals += 1
                self._wait()
                return
        self._retry_at = None
        self._want_sync = True

    def _done_update(self):
        self.refusals = 0
        self.need_flash = 0

    async def _uploader(self):
        log = self.log
        more = False
        while True:
            # a backlog drains batch after batch; idle, look every 200 ms (pending_count is cheap)
            await asyncio.sleep_ms(0 if more else 200)
            more = False
            if not self.client.connected or self._want_hello or not self._pending():
                continue
            try:
                if getattr(log, "dropped", 0):
                    log.note_lost()  # the loss total as it stands now, ahead of the upload
                batch = log.pending(_EV_BATCH)
            except Exception as e:  # noqa: BLE001 - a flash read error: try again later
                self.last_error = "events: %s" % e
                continue
            if not batch:
                continue
            last = batch[-1][0]
            self._ev_sent = last
            self._evack.clear()
            body = P.events_body([ev for _, ev in batch])
            batch = None
            if not await self._pub(self.t_out, P.T_EVENTS, body):
                continue
            self.events_sent += 1
            t0 = ticks_ms()
            while log.acked < last and ticks_diff(ticks_ms(), t0) < _EVACK_MS:
                try:
                    await asyncio.wait_for_ms(self._evack.wait(), 500)
                except asyncio.TimeoutError:
                    pass
                self._evack.clear()
            more = log.acked >= last

    async def _compactor(self):
        # deltas pile up in the store's log; fold them in a few ms at a time between decisions
        al = self.al
        while True:
            await asyncio.sleep_ms(1000)
            try:
                while al.compaction_due() and al.compact_step():
                    await asyncio.sleep_ms(20)
            except Exception as e:  # noqa: BLE001 - the store reports it in .health
                self.last_error = "compact: %s" % e
            if self._fold_wait:
                self._fold_wait = False
                if al.compaction_due() and str(getattr(al, "health", "")).startswith("full"):
                    # the fold needs more flash than is free: back off as for any update the
                    # flash refused for room (asking again now would only fold and fail again)
                    self._refused(0)
                    self._reject(P.E_FULL, P.T_DELTA, 0)
                else:
                    # folded (or failed otherwise: .health says why, the SYNC's answer meets
                    # it): now ask for the delta that waited
                    self._want_sync = True
                self._work.set()

    def _pending(self):
        pc = getattr(self.log, "pending_count", None)
        return pc() if pc is not None else 1

    # ---- state ----
    def _progress(self, p=None):
        """(snapshot version, records done) of a rebuild in progress, else (0, 0). p: what
        snapshot_progress() just said, when the caller has it."""
        if p is None:
            p = self.al.snapshot_progress()  # (version, count, durably received) or None
        if not p:
            return 0, 0
        # records already handed to the store in this boot count too (the store makes them
        # durable a shard at a time; after a power cut only the durable count is left)
        return p[0], (self._snap_done if self._snap_open == p[0] else p[2])

    def _state(self):
        sv, so = self._progress()
        # version 0 asks the host for a rebuild: after a resync command, or when the store
        # itself says it needs one (corrupt, or an update the flash refused)
        v = 0 if self._rebuild_wanted() or getattr(self.al, "need_resync", False) else self.al.version
        return v, sv, so

    def _health_bits(self):
        health = self.health() if self.health is not None else 0
        ah = getattr(self.al, "health", "ok")
        if ah not in ("ok", "empty"):
            health |= P.H_ALLOWLIST
            if ah.startswith("write"):
                health |= P.H_FLASH
        if self._retry_at is not None:
            health |= P.H_FULL  # backing off: the flash had no room for an update
        if self.log is not None and getattr(self.log, "dropped", 0):
            health |= P.H_EVENTS
        if memory.errors or memory.tls_deferred:
            health |= P.H_MEMORY
        return health

    def _hello_body(self):
        v, sv, so = self._state()
        pending = self._pending() if self.log is not None else 0
        gc.collect()  # report the heap that is really free, not what garbage happens to hold (a HELLO is rare)
        return P.hello_body(v, sv, so, _flash(self.al)[0], gc.mem_free(), self._health_bits(),
                            pending, self.fw)

    def _health_body(self, bits):
        free, size = _flash(self.al)
        mem = [memory.figures(P.M_NOW)]
        for k in (P.M_BOOT, P.M_WIFI, P.M_TLS, P.M_REBUILD):
            m = memory.stages.get(k)
            if m is not None:
                mem.append(m)
        now = ticks_ms()
        retry = 0 if self._retry_at is None else max(0, ticks_diff(self._retry_at, now)) // 1000
        return P.health_body(bits, self.al.version, free, size, self.need_flash,
                             self._pending() if self.log is not None else 0, memory.errors,
                             memory.tls_deferred, self._up_s, retry, mem)

    # ---- incoming ----
    def _reject(self, reason, typ, ctr):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        r = self._rej.get(reason)
        if r is None:
            self._rej[reason] = [1, typ, ctr]
        else:
            r[0] += 1
            r[1] = typ
            r[2] = ctr
        self._work.set()

    def _on_message(self, topic, msg):
        typ = msg[1] if len(msg) > 1 else 0
        if topic != self.t_in:
            self._reject(P.E_TYPE, typ, 0)
            return
        try:
            typ, nonce, ctr, body = P.unseal(self.key, P.DIR_HOST, msg)
        except P.ProtoError as e:
            self._reject(e.reason, typ, 0)
            return
        if self.nonce is None or nonce != self.nonce:
            self._reject(P.E_SESSION, typ, ctr)
            return
        if not self._fresh(ctr):
            self._reject(P.E_REPLAY, typ, ctr)
            return
        try:
            if typ == P.T_DELTA:
                self._on_delta(body)
            elif typ == P.T_SNAP:
                self._on_snap(body)
            elif typ == P.T_EVACK:
                self._on_evack(body)
            elif typ == P.T_CMD:
                self._on_cmd(ctr, body)
            elif typ == P.T_REKEY and self.creds is not None:
                self._on_rekey(nonce, ctr, body)
            elif typ == P.T_SITEKEY and self.sitekeys is not None:
                self._on_sitekey(nonce, ctr, body)
            else:
                self._reject(P.E_TYPE, typ, ctr)
        except P.ProtoError as e:
            self._reject(e.reason, typ, ctr)
            if e.reason == P.E_ORDER and self._asked is None:
                self._want_sync = True
        except LogFull:
            # the delta fits once the log is folded: the compactor does that a page at a time
            # between decisions and then asks for it; no SYNC before (its answer would wait too)
            self._reject(P.E_BUSY, typ, ctr)
            self._fold_wait = True
            self._want_sync = False
            self._asked = None
        except MemoryError:
            memory.note_error("sync apply")
            self._reject(P.E_BUSY, typ, ctr)
            self._want_sync = True
        except Exception as e:  # noqa: BLE001 - the store refused it; the gate goes on
            self.last_error = "apply: %s" % e
            if isinstance(e, BadData):
                # what the host sent cannot be (a bad record, an absurd header, records out of
                # order): malformed
                self._reject(P.E_MALFORMED, typ, ctr)
                self._want_sync = True
            elif _no_room(e) or str(getattr(self.al, "health", "")).startswith("full"):
                self._refused(self._snap_count if typ == P.T_SNAP else 0)
                self._reject(P.E_FULL, typ, ctr)
            else:  # the flash failed or the store's capacity refused it
                self._reject(P.E_STORE, typ, ctr)
                self._want_sync = True

    def _fresh(self, ctr):
        # Anti-replay window: keep the highest _SEEN counters accepted in this session; accept a
        # counter not among them and above the lowest of them. A single host sends increasing
        # counters; several host instances interleave theirs (each unique), and a message that
        # overtook another is still taken. Anything seen, or older than the window, is a replay.
        seen = self._seen
        if ctr in seen:
            return False
        if len(seen) >= _SEEN:
            low = min(seen)
            if ctr <= low:
                return False
            seen.remove(low)
        seen.append(ctr)
        return True

    def _answered(self, flags):
        if self._asked is not None:
            self._asked = ticks_ms()  # progress: restart the answer timeout
        if flags & P.F_ASK:
            v, sv, so = self._state()
            if sv or v < self.head:
                self._want_sync = True
            else:
                self._asked = None
            self._work.set()

    def _on_delta(self, body):
        flags, head, frm, to, n = P.parse_delta(body)
        self.head = head
        v = self.al.version
        if self._fold_wait:
            # the log is being folded: the compactor asks for this, and what follows, after; an
            # answer set aside is no reason to ask again with a HELLO every _ANSWER_MS meanwhile
            self._asked = None
            return
        if self._progress()[0] or self._rebuild_wanted():
            pass  # a rebuild is under way: it brings this change, or catch-up will
        elif frm == v and to > v:
            if self._retry_at is not None:
                raise P.ProtoError(P.E_FULL)  # backing off: not before the wait is over
            # the entries as they came (16-byte records, a removal is key8 + 8 zero bytes, as the
            # store takes them), not delta_entries' two memoryviews and a tuple each (~3 KB a
            # 61-card message on 32-bit); the store checks them as delta_entries would
            ents = memoryview(body)[P.DELTA_HDR:P.DELTA_HDR + n * P.REC]
            if not self.al.apply_delta(frm, to, ents):
                raise OSError("flash refused the delta: " + str(self.al.health))
            self.deltas += 1
            self._done_update()
            self._want_ack = True
        elif to <= v:
            self._want_ack = True  # already have it (or "you are current"): say where we are
            if n:
                # a duplicate (e.g. two host instances both answered a HELLO): its F_ASK
                # would only double the next answer as well
                self._work.set()
                return
        elif self._asked is None:
            self._want_sync = True  # a gap: ask for what we missed
        self._answered(flags)
        self._work.set()

    def _on_snap(self, body):
        self._in_store = False
        try:
            self._snap_msg(body)
        except (P.ProtoError, BadData):
            raise  # refused before the store changed: the rebuild stands where it was
        except BaseException:  # noqa: B036
            if self._in_store:  # failed part-way, the store dropped its rebuild back to what is durable
                self._snap_open = None
            raise

    def _snap_msg(self, body):
        flags, head, version, count, offset, n, data = P.parse_snap(body)
        self.head = head
        if not version:  # version 0 is "none yet", never a snapshot's
            raise P.ProtoError(P.E_MALFORMED)
        self._snap_count = count  # what a refusal says it needs
        if self._retry_at is not None:
            # backing off: the rest of a window sent before the host knew; the flash is not
            # tried again before the wait is over (each try rewrites blocks for nothing)
            raise P.ProtoError(P.E_FULL)
        # the records first, checked whole (in the message itself: no copy): a chunk that
        # cannot be neither begins a rebuild nor drops the one in progress
        size = FREC if flags & P.F_P13 else P.REC  # P13 on the wire is the store's FREC
        if n:
            check_records(data, None, size)
        p = self.al.snapshot_progress()
        sv, done = self._progress(p)
        if p and sv == version and count != p[1]:
            raise P.ProtoError(P.E_MALFORMED)  # one version, one snapshot: its count cannot change
        self._in_store = True
        if offset == 0 and sv != version:
            self.al.begin_snapshot(version, count)  # a new rebuild (any older one is dropped)
            self._snap_open = version
            self._snap_done = 0
            self._force_rebuild = False
            self.rebuilds += 1
            sv, done = version, 0
        if sv == version and offset + n <= done and n:
            return  # a chunk we already have (a duplicate answer): nothing to do, no F_ASK
        if sv != version or offset != done:
            raise P.ProtoError(P.E_ORDER)
        if self._snap_open != version:
            # resuming a rebuild this boot has not touched yet (after a power cut)
            if self.al.begin_snapshot(version, count) != offset:
                raise P.ProtoError(P.E_ORDER)
            self._snap_open = version
            self._snap_done = offset
        if n:
            self.al.snapshot_chunk(data, size)
            self._snap_done = offset + n
            self.chunks += 1
        if self.chunks & 15 == 1:  # the heap with a chunk applied, every 16th (a collect each)
            memory.low_water(P.M_REBUILD)
        if offset + n >= count:
            self.al.end_snapshot()
            if self.sitekeys is not None:
                # no await between the store's switch and the keys': the gate sees both or neither
                self.sitekeys.applied(self.al.version, self.keyer)
            self._snap_open = None
            self._want_ack = True
            self._done_update()
            memory.low_water(P.M_REBUILD)  # just after the switch, the new index built
        self._answered(flags)
        self._work.set()

    def _on_evack(self, body):
        upto = P.parse_evack(body)
        if self.log is None or upto > self._ev_sent:
            raise P.ProtoError(P.E_ORDER)  # never acknowledge what was not sent
        self.log.ack(upto)
        self._evack.set()

    def _on_attempt(self):
        secret, password = self.creds.choose(self.client.auth_refused)
        self.client.password = password
        self._attempt = (P.Key(secret, self.cfg.reader_id),
                         self.creds.use_next and self.creds.next is not None)

    def _on_rekey(self, nonce, ctr, body):
        # stored before it is acknowledged: the host switches only once this reader has it
        secret, password = P.parse_rekey(self.key, nonce, ctr, body)
        try:
            self.creds.store_next(secret, password)
            res = P.CR_OK
        except OSError as e:
            self.last_error = "rekey: %s" % e
            res = P.CR_FAILED
        self._result(ctr, P.C_REKEY, res)

    def _result(self, ctr, cmd, res):
        # a command's outcome, for the sender's next CMDRES (a bounded queue), and wake it
        if len(self._cmdres) < 8:
            self._cmdres.append((ctr, cmd, res))
        self._work.set()

    def _rebuild_wanted(self):
        # after a resync command, and while rotated site keys wait for their rebuild (no delta
        # is applied then: its records could be under either key)
        return self._force_rebuild or (self.sitekeys is not None and self.sitekeys.next is not None)

    def _on_sitekey(self, nonce, ctr, body):
        v, card, pin = P.parse_sitekey(self.key, nonce, ctr, body)
        if v <= self.al.version:
            # keys for records this store already has under the old ones: never mix them
            raise P.ProtoError(P.E_ORDER)
        try:
            self.sitekeys.store(v, card, pin)
            res = P.CR_OK
            self._want_sync = True  # ask for the rebuild that brings them into effect
        except OSError as e:
            self.last_error = "sitekey: %s" % e
            res = P.CR_FAILED
        self._result(ctr, P.C_SITEKEY, res)

    def _on_cmd(self, ctr, body):
        cmd, arg = P.parse_cmd(body)
        self.commands += 1
        name = P.COMMANDS.get(cmd)
        if cmd == P.C_HELLO:
            # the host missed this session's HELLO, or holds a newer boot than mine (my count
            # was lost): say HELLO again, above what it has seen. No result: it is the link's.
            if arg > self.boot.n:
                self.boot.raise_to(arg)
                if self._ctr < arg << 32:
                    self._ctr = arg << 32
            self._want_hello = True
            self._work.set()
            return
        if cmd == P.C_RESYNC:
            self._force_rebuild = True
            self._want_sync = True
            res = P.CR_OK
        elif name is None or self.on_command is None:
            res = P.CR_UNSUPPORTED
        else:
            try:
                r = self.on_command(name, arg)
                res = P.CR_UNSUPPORTED if r is None else (P.CR_OK if r else P.CR_FAILED)
            except Exception as e:  # noqa: BLE001
                self.last_error = "command %s: %s" % (name, e)
                res = P.CR_FAILED
        self._result(ctr, cmd, res)


def _flash(al):
    """(free, size) in bytes of the filesystem holding the allowlist. LittleFS counts blocks in
    use by walking the filesystem and can count more than there are on a full flash: its free
    count then wraps (2^32-20 blocks was seen on a 2 MiB partition). Clamped to the partition."""
    try:
        st = os.statvfs(getattr(al, "root", "/"))
    except (OSError, AttributeError):
        return 0, 0
    size = st[1] * st[2]
    free = st[0] * st[4] if st[4] <= st[2] else 0  # wrapped: more in use than there is
    return min(free, size), size


def _no_room(e):
    return isinstance(e, OSError) and bool(e.args) and e.args[0] == 28  # ENOSPC


def _rand(n):
    # jitter up to n ms (n may exceed 16 bits: waits run to minutes)
    return int.from_bytes(os.urandom(3), "big") % (n + 1) if n > 0 else 0
