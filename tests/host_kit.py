"""Helpers for the host tests (tests/test_host_*.py): a database per test on SQLite, or on
PostgreSQL when one is reachable (GV_PG_URL, else 127.0.0.1:5432 as user postgres), and the
CLI driven as an operator would, through main(argv)."""
from __future__ import annotations

import io
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("GV_PG_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
_pg_reason: list[str] = []


def pg_unavailable() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    if _pg_reason:
        return _pg_reason[0] or None
    try:
        import psycopg
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as c:
            c.execute("SELECT 1")
        _pg_reason.append("")
    except Exception as e:  # no server, no psycopg, no permission: the reason is shown
        _pg_reason.append("no PostgreSQL at %s (set GV_PG_URL): %s"
                          % (PG_ADMIN_URL.split("@")[-1], str(e).strip().splitlines()[0]))
    return _pg_reason[0] or None


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, uniquely named database, dropped afterwards; yields its URL."""
    import psycopg
    name = "gv_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
        c.execute("CREATE DATABASE %s" % name)
    base, _ = PG_ADMIN_URL.rsplit("/", 1)
    try:
        yield "%s/%s" % (base, name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


@contextmanager
def database(kind: str, tmp_path) -> Iterator[str]:
    if kind == "sqlite":
        yield "sqlite:///%s" % (tmp_path / "gv.sqlite3")
        return
    why = pg_unavailable()
    if why:
        pytest.skip(why)
    with pg_database() as url:
        yield url


class Operator:
    """Runs host-sync commands against one database and keeps what they printed."""

    def __init__(self, url: str):
        self.url = url
        self.out = self.err = ""

    def __call__(self, *argv: str, stdin: str | None = None) -> int:
        from host_sync.cli import main
        out, err = io.StringIO(), io.StringIO()
        old = None
        if stdin is not None:
            import sys
            old, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            rc = main(["--db", self.url, "--as", "tester", *argv], out=out, err=err)
        finally:
            if old is not None:
                import sys
                sys.stdin = old
        self.out, self.err = out.getvalue(), err.getvalue()
        return rc

    def ok(self, *argv: str, stdin: str | None = None) -> str:
        rc = self(*argv, stdin=stdin)
        assert rc == 0, "host-sync %s -> %d\n%s%s" % (" ".join(argv), rc, self.out, self.err)
        return self.out


def pnr_for(i: int) -> str:
    """A valid personal identity number (check digit right) for test person i."""
    from host_sync.ids import luhn_digit
    nine = "850101%03d" % (i % 1000)
    return "19" + nine[:6] + "-" + nine[6:] + luhn_digit(nine)


def org_for(i: int) -> str:
    from host_sync.ids import luhn_digit
    nine = "556%06d" % (i % 1000000)
    return nine[:6] + "-" + nine[6:] + luhn_digit(nine)


class ProtocolReader:
    """A reader's protocol side in CPython over a real MQTT connection (paho): HELLO on
    connect, applies DELTA/SNAP into a dict of records, ACKs, uploads events, keeps EVACKs.
    Used to drive `host-sync serve` from the outside; the firmware's own sync engine is tested
    by the sync tests."""

    def __init__(self, port: int, reader_id: str, site: str, password: str, secret: bytes,
                 user: str | None = None):
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        import host_sync  # noqa: F401
        from gv.sync import protocol as P
        self.P = P
        self.rid, self.site = reader_id, site
        self.key = P.Key(secret, reader_id)
        self.nonce = os.urandom(8)
        self.counter = 0
        self.host_counter = 0
        self.window: list[int] = []  # highest host counters accepted in this session
        self.version = 0
        self.records: dict[bytes, bytes] = Kept()
        self.snap: dict[bytes, bytes] = Kept()
        self.received: list[tuple[int, tuple]] = []  # (type, parsed header)
        self.evacks: list[int] = []
        self.rejected = 0
        self.commands: list[tuple[int, int, int]] = []  # (counter, cmd, arg) as received
        self.cmd_result: dict[int, int] = {}  # cmd -> CMDRES result to answer (default ok)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-" + reader_id)
        self.c.username_pw_set(user or reader_id, password)
        self.c.will_set(P.topic(site, reader_id, "status"), b"offline", qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.1, 1)  # back soon after a broker restart, as readers are
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()

    def _send(self, leaf: str, typ: int, body: bytes, retain: bool = False) -> None:
        self.counter += 1
        msg = self.P.seal(self.key, self.P.DIR_READER, typ, self.nonce, self.counter, body)
        self.c.publish(self.P.topic(self.site, self.rid, leaf), msg, qos=1, retain=retain)

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        P = self.P
        with self.lock:  # a new session on every connect, as the firmware does; and as there,
            # its own counter goes on rising (boot << 32 | n): the host refuses an older HELLO
            self.nonce, self.host_counter = os.urandom(8), 0
            self.window: list[int] = []
        client.subscribe(P.topic(self.site, self.rid, "in"), qos=1)
        client.publish(P.topic(self.site, self.rid, "status"), b"online", qos=1, retain=True)
        self._hello()

    def _hello(self) -> None:
        P = self.P
        self._send("hello", P.T_HELLO, P.hello_body(self.version, 0, 0, 1_000_000, 60_000, 0, 0,
                                                    "fake-1.0"), retain=True)

    def _on_message(self, client, userdata, msg) -> None:
        P = self.P
        try:
            typ, nonce, counter, body = P.unseal(self.key, P.DIR_HOST, msg.payload)
        except P.ProtoError:
            self.rejected += 1
            return
        with self.lock:
            # the firmware's anti-replay window (docs/protocol.md): the 32 highest counters
            # seen; a new one must be unseen and above their lowest (several host instances
            # interleave their counters)
            if nonce != self.nonce or counter in self.window or (
                    len(self.window) == 32 and counter <= min(self.window)):
                self.rejected += 1
                return
            self.window = sorted(self.window + [counter])[-32:]
            self.host_counter = max(self.host_counter, counter)
            if typ == P.T_DELTA:
                flags, head, frm, to, n = P.parse_delta(body)
                self.received.append((typ, (flags, head, frm, to, n)))
                if frm == self.version:
                    for k, r in P.delta_entries(body, n):
                        if r is None:
                            self.records.pop(bytes(k), None)
                        else:
                            self.records[bytes(k)] = bytes(r)
                    self.version = to
                    self._send("out", P.T_ACK, P.ack_body(to))
                elif to <= self.version:
                    self._send("out", P.T_ACK, P.ack_body(self.version))
                else:
                    self._send("out", P.T_SYNC, P.sync_body(self.version))
            elif typ == P.T_SNAP:
                flags, head, version, count, offset, n, data = P.parse_snap(body)
                self.received.append((typ, (flags, head, version, count, offset, n)))
                raw = unpack_chunk(P, flags, n, data)
                if offset == 0:
                    self.snap = Kept()
                for i in range(n):
                    r = raw[i * 16:(i + 1) * 16]
                    self.snap[r[:8]] = r
                if offset + n == count:
                    self.records, self.version = self.snap, version
                    self._send("out", P.T_ACK, P.ack_body(version))
            elif typ == P.T_CMD:
                cmd, arg = P.parse_cmd(body)
                self.commands.append((counter, cmd, arg))
                if cmd == P.C_HELLO:  # the host missed my HELLO or wants a higher boot number
                    self.counter = max(self.counter, arg << 32)
                    self._hello()
                    self.changed.notify_all()
                    return
                self._send("out", P.T_CMDRES,
                           P.cmdres_body(counter, cmd, self.cmd_result.get(cmd, P.CR_OK)))
            elif typ == P.T_EVACK:
                self.evacks.append(P.parse_evack(body))
            self.changed.notify_all()

    def send_events(self, events: list[bytes]) -> None:
        with self.lock:
            self._send("out", self.P.T_EVENTS, self.P.events_body(events))

    def upload(self, events: list[bytes], tries: int = 8) -> None:
        """As the reader does: one batch in flight, resent until its EVACK arrives."""
        from gv import events as E
        upto = max(E.unpack(e)["seq"] for e in events)
        for _ in range(tries):
            self.send_events(events)
            try:
                self.wait(lambda r: any(a >= upto for a in r.evacks), timeout=1.0)
                return
            except AssertionError:
                continue
        raise AssertionError("%s: no EVACK for %d after %d tries" % (self.rid, upto, tries))

    def wait(self, pred, timeout: float = 20.0, what: str = "condition") -> None:
        import time
        deadline = time.monotonic() + timeout
        with self.lock:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: timed out waiting for %s (version %d, %d msgs)"
                                         % (self.rid, what, self.version, len(self.received)))
                self.changed.wait(min(left, 0.2))

    def close(self, graceful: bool = True) -> None:
        if graceful:
            self.c.publish(self.P.topic(self.site, self.rid, "status"), b"offline", qos=1,
                           retain=True).wait_for_publish(5)
        self.c.disconnect()
        self.c.loop_stop()


def unpack_chunk(P, flags, n, data) -> bytes:
    """A SNAP chunk's records as 16-byte records (flash records are unpacked: the 52-bit key,
    the 20-bit verifier, what a reader keeps)."""
    if not flags & P.F_P13:
        return bytes(data)
    from gv.allowlist.layout import unpack13
    from gv.allowlist.pages import key_of13
    out = bytearray(16 * n)
    r = bytearray(16)
    for i in range(n):
        key_of13(data, i * P.P13, r)
        unpack13(data, i * P.P13, r)
        out[16 * i:16 * i + 16] = r
    return bytes(out)


def k52(key: bytes) -> bytes:
    """A card key as a reader's store knows it: its first 52 bits (the rest zero)."""
    k = bytes(key)
    return k[:6] + bytes([k[6] & 0xF0, 0])


def kept(rec: bytes) -> bytes:
    """What a reader's store keeps of a 16-byte record: as_stored, the key cut to 52 bits."""
    from gv.allowlist import record
    r = record.as_stored(rec)
    return k52(r[:8]) + r[8:]


class Kept(dict):
    """A fake reader's records, by key as its store keeps them (52 bits): a rebuild's flash
    records carry no more of a key, so a lookup by a card's full key must find it as a reader's
    does."""

    def __getitem__(self, k):
        return super().__getitem__(k52(k))

    def __setitem__(self, k, v):
        super().__setitem__(k52(k), v)

    def __contains__(self, k):
        return super().__contains__(k52(k))

    def get(self, k, default=None):
        return super().get(k52(k), default)

    def pop(self, k, *default):
        return super().pop(k52(k), *default)


def backdate(db, when: str = "2026-01-01T00:00:00.000000Z") -> None:
    """Tests replay passages of a past day (a fixed date, never the wall clock): make the
    registry as old as that, readers added and cards' allowlist changes made on `when`, so the
    ingest's checks (host_sync/ledger.py: no event before its reader was added, a grant the
    allowlist history backs) see the history a real site would have had."""
    with db.tx():
        db.execute("UPDATE readers SET created_at = ?", (when,))
        db.execute("UPDATE changes SET at = ?", (when,))
