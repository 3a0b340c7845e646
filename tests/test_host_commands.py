"""Operators' remote commands (`host-sync readers command`) end to end: the CLI queues a row, a
real `host-sync serve` process sends it over a real mosquitto to a protocol-level reader, which
answers CMDRES; the outcome comes back to the CLI as its exit code. Readers not connected yet get
their commands when they connect; commands that cannot happen expire; with two serve instances
on one database each command is sent exactly once."""
from __future__ import annotations

import json
import time

import pytest

import host_sync  # noqa: F401
from gv.sync import protocol as P
from host_sync.commands import seconds_2020
from tests.broker import Broker
from tests.host_kit import Operator, ProtocolReader, database, pg_unavailable
from tests.test_host_serve import _secret, _serve, _setup, _stop, _wait_serving

READERS = [("gate-01", "site-a"), ("gate-02", "site-a"), ("gate-03", "site-a")]


def _reader(b: Broker, url: str, rid: str) -> ProtocolReader:
    r = ProtocolReader(b.port, rid, "site-a", b.password(rid), _secret(url, rid))
    r.wait(lambda x: x.version > 0, what="the first rebuild (the session is known to serve)")
    return r


def _rows(op: Operator, rid: str) -> list[dict]:
    return json.loads(op.ok("readers", "commands", rid, "--json"))


def _sent(op: Operator, r: ProtocolReader) -> list[tuple[int, int]]:
    """(cmd, arg) the reader received for the operators' commands, in order. The host's own
    clock corrections are left out: housekeeping gives every reader in session the time at its
    first tick, which comes before or after an operator's first command as the load has it."""
    mine = {row["counter"] for row in _rows(op, r.rid)}
    return [(c, a) for n, c, a in r.commands if n in mine]


def test_commands_reach_the_reader_and_the_outcome_comes_back(tmp_path):
    with database("sqlite", tmp_path) as url, Broker(readers=READERS) as b:
        op = _setup(url)
        srv = _serve(url, b, "one", tmp_path)
        readers: list[ProtocolReader] = []
        try:
            _wait_serving(srv, "one", tmp_path)
            r1 = _reader(b, url, "gate-01")
            readers.append(r1)

            assert op("readers", "command", "gate-01", "open", "--wait", "20") == 0, op.err
            assert "done" in op.out
            assert _sent(op, r1) == [(P.C_OPEN, 0)]
            row = _rows(op, "gate-01")[0]
            assert row["state"] == "done" and row["counter"] in [n for n, _, _ in r1.commands]
            assert row["requested_by"] == "tester" and row["instance"] == "one"

            # set-clock without a time sends the host's time when it is sent
            before = seconds_2020()
            op.ok("readers", "command", "gate-01", "set-clock", "--wait", "20")
            assert _sent(op, r1)[-1][0] == P.C_SET_CLOCK
            assert before <= _sent(op, r1)[-1][1] <= seconds_2020()
            op.ok("readers", "command", "gate-01", "set-clock", "2026-01-01T00:00:00Z",
                  "--wait", "20")
            assert _sent(op, r1)[-1] == (P.C_SET_CLOCK, 189_388_800)
            for name, code in (("clear-lockout", P.C_CLEAR_LOCKOUT), ("resync", P.C_RESYNC)):
                op.ok("readers", "command", "gate-01", name, "--wait", "20")
                assert _sent(op, r1)[-1] == (code, 0)

            # the reader's refusal is the operator's exit 3, with its reason
            r1.cmd_result[P.C_REBOOT] = P.CR_UNSUPPORTED
            assert op("readers", "command", "gate-01", "reboot", "--wait", "20") == 3
            assert "does not support" in op.err and _sent(op, r1)[-1][0] == P.C_REBOOT
            assert _rows(op, "gate-01")[0]["state"] == "failed"

            # a reader not connected yet: pending (exit 5), sent once it connects
            assert op("readers", "command", "gate-02", "clear-lockout", "--wait", "0.5") == 5
            assert "pending" in op.out
            r2 = _reader(b, url, "gate-02")
            readers.append(r2)
            r2.wait(lambda r: any(c == P.C_CLEAR_LOCKOUT for _, c, _ in r.commands),
                    what="the queued command")
            assert _sent(op, r2) == [(P.C_CLEAR_LOCKOUT, 0)]
            deadline = time.monotonic() + 10
            while _rows(op, "gate-02")[0]["state"] != "done":
                assert time.monotonic() < deadline, op.out
                time.sleep(0.1)

            # a reader that never connects: the command expires and says why
            assert op("readers", "command", "gate-03", "open", "--expire", "1",
                      "--wait", "20") == 3
            assert "not connected before the deadline" in op.err

            assert op("readers", "command", "gate-99", "open") == 4
            assert op("readers", "command", "gate-01", "open", "now") == 3  # open takes no arg
            assert op("readers", "command", "gate-01", "set-clock", "yesterday") == 3
            audit = op.ok("audit", "--subject", "gate-01", "--limit", "100")
            assert "command queued" in audit and "command done" in audit
            assert "command failed" in audit
            # nothing was sent twice: one CMD per accepted command, and besides them at most
            # housekeeping's clock
            counters = [n for n, _, _ in r1.commands]
            assert len(_sent(op, r1)) == 6 and len(set(counters)) == len(counters)
            mine = {x["counter"] for x in _rows(op, "gate-01")}
            extra = [(c, a) for n, c, a in r1.commands if n not in mine]
            assert len(extra) <= 1 and all(c == P.C_SET_CLOCK for c, _ in extra), extra
            assert r1.rejected == 0
        finally:
            for r in readers:
                r.close()
            _stop(srv)


def test_two_serve_instances_send_each_command_once(tmp_path):
    kind = "sqlite" if pg_unavailable() else "postgresql"
    with database(kind, tmp_path) as url, Broker(readers=READERS) as b:
        op = _setup(url)
        s1, s2 = _serve(url, b, "one", tmp_path), _serve(url, b, "two", tmp_path)
        r1 = None
        try:
            _wait_serving(s1, "one", tmp_path)
            _wait_serving(s2, "two", tmp_path)
            r1 = _reader(b, url, "gate-01")
            n = 8
            for _ in range(n):
                op.ok("readers", "command", "gate-01", "clear-lockout")
            deadline = time.monotonic() + 20
            while any(r["state"] != "done" for r in _rows(op, "gate-01")):
                assert time.monotonic() < deadline, (
                    [(r["state"], r["instance"], r["counter"]) for r in _rows(op, "gate-01")],
                    r1.commands, r1.rejected)
                time.sleep(0.1)
            time.sleep(0.5)  # a second send, if there were one, would arrive by now
            rows = _rows(op, "gate-01")
            assert len(rows) == n
            # each instance's housekeeping may give the reader the time too: those aside, one CMD
            # per command
            cmds = [(c, x) for c, x, _ in r1.commands if x != P.C_SET_CLOCK]
            assert len(cmds) == n and all(x == P.C_CLEAR_LOCKOUT for _, x in cmds), r1.commands
            assert sorted(c for c, _ in cmds) == sorted(r["counter"] for r in rows)
            assert len(r1.commands) - n <= 2, r1.commands
            assert {r["instance"] for r in rows} <= {"one", "two"}
        finally:
            if r1 is not None:
                r1.close()
            _stop(s1)
            _stop(s2)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_queue_claims_each_row_once_and_settles_late_answers(kind, tmp_path, monkeypatch):
    """The queue itself, two engines (not connected: paho keeps what they publish) on two
    connections to one database: a race to send gives each command to one of them; a CMDRES
    handled by the other instance before the sender marked the row sent is settled from the
    audit log; what cannot happen any more fails with its reason."""
    import threading

    from host_sync import commands as C
    from host_sync.db import Db
    from host_sync.store import RegistryData
    from host_sync.syncer import HostSync

    with database(kind, tmp_path) as url:
        op = _setup(url)
        datas = [RegistryData(Db(url), actor="serve:%d" % i) for i in (1, 2)]
        engines = [HostSync(d, "127.0.0.1", 1) for d in datas]
        try:
            for e in engines:
                e._state("site-a", "gate-01").session.nonce = b"N" * 8  # as after a HELLO
            db = datas[0].db
            ids = [C.enqueue(db, "gate-01", "clear_lockout", None, "tester") for _ in range(6)]
            go = threading.Barrier(2)
            sent = [0, 0]

            def race(i: int) -> None:
                go.wait()
                sent[i] = C.send_due(datas[i].db, engines[i], "inst%d" % i)

            ts = [threading.Thread(target=race, args=(i,)) for i in (0, 1)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            rows = [C.get(db, i) for i in ids]
            assert sum(sent) == 6 and all(r["state"] == "sent" for r in rows), (sent, rows)
            assert sum(e.stats["published"] for e in engines) == 6
            assert len({r["counter"] for r in rows}) == 6

            # the CMDRES reaches instance 2 while instance 1 still has the row as 'sending'
            r0 = rows[0]
            db.execute("UPDATE commands SET state = 'sending' WHERE id = ?", (r0["id"],))
            datas[1].command_result("gate-01", r0["counter"], P.C_CLEAR_LOCKOUT, P.CR_OK)
            assert C.get(db, r0["id"])["state"] == "sending"
            db.execute("UPDATE commands SET state = 'sent' WHERE id = ?", (r0["id"],))
            assert C.expire(db, "serve:1") == 1
            assert C.get(db, r0["id"])["state"] == "done"
            # the usual path: the answer finds its row; a failure says why
            datas[1].command_result("gate-01", rows[1]["counter"], P.C_CLEAR_LOCKOUT, P.CR_FAILED)
            assert C.get(db, ids[1])["result"] == "the reader could not do it"
            # an answer to a command the engine sent by itself (no row) changes nothing
            datas[1].command_result("gate-01", 12345, P.C_SET_CLOCK, P.CR_OK)

            # a reader without a session: pending, then failed at its deadline
            late = C.enqueue(db, "gate-02", "open", None, "tester", expire_s=0.05)
            assert C.send_due(db, engines[0], "inst0") == 0
            assert C.get(db, late)["state"] == "pending"
            time.sleep(0.1)
            monkeypatch.setattr(C, "ANSWER_S", 0.0)
            # the 4 unanswered sent rows wait for their deadline (300 s) too
            assert C.expire(db, "serve:1") == 1
            assert C.get(db, late)["state"] == "failed"
            assert "not connected before the deadline" in C.get(db, late)["result"]
            db.execute("UPDATE commands SET deadline_at = sent_at WHERE state = 'sent'")
            assert C.expire(db, "serve:1") == 4
            assert {C.get(db, i)["result"] for i in ids[2:]} == {"no answer from the reader"}
            assert "command failed" in op.ok("audit", "--subject", "gate-02")
        finally:
            for d in datas:
                d.db.close()
