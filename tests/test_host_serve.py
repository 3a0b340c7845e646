"""`host-sync serve` against a real mosquitto (tests/broker.py) and a real database: readers
are rebuilt and acknowledged, an operator's block reaches them as a live delta, events land in
the staff ledger once, laggards are flagged; two instances share the work without doing any of
it twice."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import host_sync  # noqa: F401
from gv import events as E
from gv.allowlist import record as R
from gv.sync import protocol as P
from host_sync.db import Db
from host_sync.registry import Registry
from host_sync.timeutil import from_reader_seconds
from tests.broker import Broker
from tests.host_kit import (Operator, ProtocolReader, backdate, database, pg_unavailable, pnr_for,
                            org_for)

pytest.importorskip("host_sync.syncer", reason="the sync engine (host_sync/syncer.py) is not here")
ROOT = Path(__file__).resolve().parent.parent
UIDS = [bytes.fromhex("04%012x" % i) for i in range(1, 6)]


def _setup(url: str) -> Operator:
    op = Operator(url)
    op.ok("sites", "add", "site-a", "--tax-id", "PL1234-5678")
    for i, uid in enumerate(UIDS, 1):
        op.ok("cards", "add", "BB-2401-%06d" % i, "--uid", uid.hex(), "--holder", "Person %d" % i,
              "--pnr", pnr_for(i), "--employer", "Bygg AB", "--org-no", org_for(1),
              "--site", "site-a")
        op.ok("cards", "activate", "BB-2401-%06d" % i)
    for r in ("gate-01", "gate-02", "gate-03"):
        op.ok("readers", "add", r, "--site", "site-a")
    return op


def _serve(url: str, b: Broker, name: str, tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, GV_BROKER_PASSWORD=b.host_password, PYTHONPATH=str(ROOT))
    log = open(tmp / ("serve-%s.log" % name), "w")
    return subprocess.Popen([sys.executable, "-m", "host_sync", "--db", url, "serve",
                             "--broker-port", str(b.plain_port), "--broker-user", b.host_user,
                             "--instance", name, "--poll", "0.05", "--lag-limit", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_serving(p: subprocess.Popen, name: str, tmp: Path) -> None:
    log = tmp / ("serve-%s.log" % name)
    deadline = time.monotonic() + 20
    while "host sync connected" not in log.read_text():
        assert p.poll() is None, "serve exited %s:\n%s" % (p.returncode, log.read_text())
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def _secret(url: str, rid: str) -> bytes:
    db = Db(url)
    try:
        return Registry(db).reader_credentials(rid)[0]
    finally:
        db.close()


def _key(url: str, uid: bytes) -> bytes:
    db = Db(url)
    try:
        return Registry(db).key8("site-a", uid.hex())
    finally:
        db.close()


def _ev(seq: int, uid: bytes, t: int) -> bytes:
    return E.pack(seq, E.K_DECISION, E.R_GRANT, E.OK, uid, len(uid), t, E.F_CLOCK_SET)


def test_serve_pushes_blocks_and_collects_events(tmp_path):
    with database("sqlite", tmp_path) as url, \
            Broker(readers=[("gate-01", "site-a"), ("gate-02", "site-a"),
                            ("gate-03", "site-a")]) as b:
        op = _setup(url)
        head = json.loads(op.ok("sites", "list", "--json"))[0]["version"]
        srv = _serve(url, b, "one", tmp_path)
        readers = []
        try:
            _wait_serving(srv, "one", tmp_path)
            r1 = ProtocolReader(b.port, "gate-01", "site-a", b.password("gate-01"),
                                _secret(url, "gate-01"))
            readers.append(r1)
            r1.wait(lambda r: r.version == head, what="rebuild to the registry's version")
            assert len(r1.records) == len(UIDS)
            k1 = _key(url, UIDS[0])
            assert R.status(r1.records[k1]) == R.ACTIVE
            # a reader whose secret is wrong gets nothing it accepts
            r2 = ProtocolReader(b.port, "gate-02", "site-a", b.password("gate-02"), b"\x01" * 32)
            readers.append(r2)

            op.ok("cards", "block", "BB-2401-000001")
            r1.wait(lambda r: r.version == head + 1, what="the block as a live delta")
            assert R.status(r1.records[k1]) == R.BLOCKED
            deltas = [h for t, h in r1.received if t == P.T_DELTA and h[3] == head + 1]
            assert deltas and deltas[0][2] == head and deltas[0][4] == 1
            deadline = time.monotonic() + 10
            while op("status", "site-a:%d" % (head + 1)) != 5 or "ok       gate-01" not in op.out:
                assert time.monotonic() < deadline, op.out
                time.sleep(0.1)
            assert "PENDING  gate-02" in op.out and "PENDING  gate-03" in op.out

            # events: stored once, acknowledged each time, in the ledger at once
            t0 = 200_000_000  # 2026-05-03 in reader time
            bd = Db(url)
            backdate(bd)  # the readers were put up before that day (no event before its reader)
            bd.close()
            evs = [_ev(1, UIDS[1], t0), _ev(2, UIDS[2], t0 + 60), _ev(3, UIDS[1], t0 + 8 * 3600)]
            r1.send_events(evs)
            r1.wait(lambda r: 3 in r.evacks, what="EVACK 3")
            r1.send_events(evs[1:])  # a resend after a lost EVACK
            r1.wait(lambda r: r.evacks.count(3) == 2, what="second EVACK 3")
            day = from_reader_seconds(t0).date().isoformat()
            op.ok("ledger", "show", "--site", "site-a", "--day", day, "--tz", "UTC")
            assert "Person 2" in op.out and "Person 3" in op.out and "2 shift(s)" in op.out
            db = Db(url)
            try:
                assert db.scalar("SELECT COUNT(*) FROM events WHERE reader_id = 'gate-01'") == 3
            finally:
                db.close()

            # gate-02 and gate-03 lag the block for more than --lag-limit 1 s: flagged
            deadline = time.monotonic() + 10
            while "reader lagging a block" not in op.ok("audit"):
                assert time.monotonic() < deadline, op.out
                time.sleep(0.2)
            rows = {r["id"]: r for r in json.loads(op.ok("readers", "list", "--json",
                                                         "--lag-limit", "1"))}
            assert rows["gate-01"]["online"] and rows["gate-01"]["lag"] == 0
            assert rows["gate-01"]["firmware"] == "fake-1.0"
            assert rows["gate-02"]["lagging_block"] and rows["gate-03"]["lagging_block"]
            assert r2.version == 0 and r2.received == []  # a forged HELLO gets no answer
            assert "rejected message from gate-02" in (tmp_path / "serve-one.log").read_text()

            # the broker restarts while the operator blocks another card: after reconnecting,
            # serve answers the reader's new HELLO with what it missed
            b.stop()
            op.ok("cards", "block", "BB-2401-000002")
            time.sleep(0.5)
            b.start()
            r1.wait(lambda r: r.version == head + 2, timeout=30, what="the block made offline")
            assert R.status(r1.records[_key(url, UIDS[1])]) == R.BLOCKED

            r1.close()  # goes offline
            deadline = time.monotonic() + 10
            while json.loads(op.ok("readers", "list", "--json"))[0]["online"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            for r in readers:
                r.close(graceful=False)
            _stop(srv)
        assert srv.returncode == 0, (tmp_path / "serve-one.log").read_text()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_two_instances_share_the_work_without_doing_it_twice(kind, tmp_path):
    if kind == "sqlite" and not pg_unavailable():
        pytest.skip("PostgreSQL is here: the two-instance test runs on it")
    with database(kind, tmp_path) as url, \
            Broker(readers=[("gate-01", "site-a"), ("gate-02", "site-a")]) as b:
        op = _setup(url)
        head = json.loads(op.ok("sites", "list", "--json"))[0]["version"]
        s1, s2 = _serve(url, b, "one", tmp_path), _serve(url, b, "two", tmp_path)
        readers = []
        try:
            _wait_serving(s1, "one", tmp_path)
            _wait_serving(s2, "two", tmp_path)
            rs = [ProtocolReader(b.port, rid, "site-a", b.password(rid), _secret(url, rid))
                  for rid in ("gate-01", "gate-02")]
            readers += rs
            for r in rs:
                r.wait(lambda r: r.version == head, what="rebuild")
            for i in range(1, 4):
                op.ok("cards", "block", "BB-2401-%06d" % i)
            for r in rs:
                r.wait(lambda r: r.version == head + 3, what="three blocks")
            time.sleep(0.5)  # anything doubled would have arrived by now
            for r in rs:  # live deltas (not answers to SYNC) never carry a version twice
                live = [h for t, h in r.received if t == P.T_DELTA and h[3] > head
                        and not h[0] & P.F_ASK]
                covered = [v for h in live for v in range(h[2] + 1, h[3] + 1)]
                assert len(covered) == len(set(covered)), live
            # events spread over both instances by the shared subscription, each stored once
            for n in range(1, 21):
                rs[n % 2].upload([_ev(n, UIDS[n % 5], 200_000_000 + n * 120)])
            db = Db(url)
            try:
                assert db.scalar("SELECT COUNT(*) FROM events") == 20
                leader = db.scalar("SELECT instance FROM leases WHERE name = 'push'")
            finally:
                db.close()
            # the pushing instance dies: the other takes the lease and pushes the next block
            (s1 if leader == "one" else s2).kill()
            op.ok("cards", "block", "BB-2401-000004")
            for r in rs:
                r.wait(lambda r: r.version == head + 4, timeout=30, what="block after failover")
        finally:
            for r in readers:
                r.close(graceful=False)
            _stop(s1)
            _stop(s2)
        logs = [(tmp_path / ("serve-%s.log" % n)).read_text() for n in ("one", "two")]
        assert all("Traceback" not in lg for lg in logs), logs
        # each version was pushed live once, by one instance or the other
        pushed = [v for lg in logs for a, b_ in re.findall(r"pushed site=site-a from=(\d+) to=(\d+)", lg)
                  for v in range(int(a) + 1, int(b_) + 1)]
        assert sorted(pushed) == list(range(head + 1, head + 5)), pushed
        survivor = logs[1] if leader == "one" else logs[0]
        stored = int(re.search(r"'events_stored': (\d+)", survivor).group(1))
        # the survivor took a share of the events, not all of them (each was stored once: above)
        assert 0 < stored < 20, stored


def test_the_real_reader_firmware_follows_the_registry(tmp_path):
    """The firmware's own sync engine and allowlist (MicroPython unix port) against serve."""
    from tests.sync_support import ReaderProc
    uid = bytes.fromhex("04010203")  # the card tests/mp/sync_reader.py logs its events for
    with database("sqlite", tmp_path) as url, Broker(readers=[("gate-01", "site-a")]) as b:
        op = Operator(url)
        op.ok("sites", "add", "site-a", "--tax-id", "PL1234-5678")
        op.ok("cards", "add", "BB-2401-000001", "--uid", uid.hex(), "--holder", "Anna Svensson",
              "--site", "site-a")
        op.ok("cards", "activate", "BB-2401-000001")
        op.ok("readers", "add", "gate-01", "--site", "site-a", "--config-out",
              str(tmp_path / "gate-01.json"), "--no-tls", "--virtual",
              "--broker-host", "127.0.0.1")
        cfg = json.loads((tmp_path / "gate-01.json").read_text())
        cfg["broker"] = b.reader_broker_config("gate-01")  # the test broker's account
        head = json.loads(op.ok("sites", "list", "--json"))[0]["version"]
        srv = _serve(url, b, "one", tmp_path)
        reader = None
        try:
            _wait_serving(srv, "one", tmp_path)
            reader = ReaderProc(tmp_path / "reader", cfg, events=3,
                                heapsize="512k")  # firmware from source, as the sync tests
            reader.wait(lambda s: s["version"] == head, what="rebuild")
            key = _key(url, uid)
            assert R.status(reader.lookup(key)) == R.ACTIVE
            op.ok("cards", "block", "BB-2401-000001")
            reader.wait(lambda s: s["version"] == head + 1, what="the block")
            assert R.status(reader.lookup(key)) == R.BLOCKED
            reader.wait(lambda s: s["acked"] >= 2, what="events acknowledged")
            deadline = time.monotonic() + 10
            while op("status", "site-a:%d" % (head + 1)) != 0:
                assert time.monotonic() < deadline, op.out
                time.sleep(0.1)
            db = Db(url)
            try:
                n = db.scalar("SELECT COUNT(*) FROM events WHERE card_no = 'BB-2401-000001'")
            finally:
                db.close()
            assert n == 3
        finally:
            if reader:
                reader.close()
            _stop(srv)


def test_a_restarted_serve_learns_where_connected_readers_are(tmp_path):
    """serve killed right after a push, the readers' ACKs lost: the next serve asks them."""
    with database("sqlite", tmp_path) as url, Broker(readers=[("gate-01", "site-a")]) as b:
        op = _setup(url)
        head = json.loads(op.ok("sites", "list", "--json"))[0]["version"]
        s1 = _serve(url, b, "one", tmp_path)
        r = None
        try:
            _wait_serving(s1, "one", tmp_path)
            r = ProtocolReader(b.port, "gate-01", "site-a", b.password("gate-01"),
                               _secret(url, "gate-01"))
            r.wait(lambda r: r.version == head, what="rebuild")
            op.ok("cards", "block", "BB-2401-000001")
            r.wait(lambda r: r.version == head + 1, what="the block")
            s1.kill()
            s1.wait(5)
            db = Db(url)
            try:  # as if the reader's ACK had gone to the dying instance
                db.execute("UPDATE readers SET applied_version = ? WHERE id = 'gate-01'", (head,))
            finally:
                db.close()
            assert op("status", "site-a:%d" % (head + 1)) == 5
            s2 = _serve(url, b, "two", tmp_path)
            try:
                _wait_serving(s2, "two", tmp_path)
                deadline = time.monotonic() + 20
                while "ok       gate-01" not in (op("status", "site-a:%d" % (head + 1)), op.out)[1]:
                    assert time.monotonic() < deadline, op.out
                    time.sleep(0.2)
            finally:
                _stop(s2)
            assert "nudged readers=1" in (tmp_path / "serve-two.log").read_text()
        finally:
            if r:
                r.close(graceful=False)
            if s1.poll() is None:
                _stop(s1)
