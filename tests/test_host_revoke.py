"""Revoking and removing a stolen reader (issue 16 item 1), end to end: the registry and the
broker config written by the CLI, a real mosquitto started from that config, `host-sync serve`
and readers speaking the protocol over real connections. After `readers revoke` the broker
refuses the reader's account and cuts its connection, serve refuses whatever is sealed with its
old secret, the audit log says who and why, and the other readers carry on."""
from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import host_sync  # noqa: F401
from gv.allowlist import record as R
from gv.sync import protocol as P
from host_sync.db import Db
from host_sync.registry import Registry
from tests.broker import _listening, free_port, mosquitto_bin
from tests.host_kit import Operator, ProtocolReader
from tests.test_host_serve import UIDS, _key, _setup, _stop

ROOT = Path(__file__).resolve().parent.parent


def _creds(url: str, rid: str) -> tuple[bytes, str]:
    db = Db(url)
    try:
        return Registry(db).reader_credentials(rid)
    finally:
        db.close()


def _wait(pred, t=10.0, what="condition"):
    end = time.monotonic() + t
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def _connects(port: int, user: str, password: str) -> str:
    """Whether the broker takes this account now: the CONNACK's reason."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user)
    c.username_pw_set(user, password)
    got: list[str] = []
    c.on_connect = lambda cl, u, f, rc, p: got.append(str(rc))
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        _wait(lambda: got, 5, "CONNACK")
    finally:
        c.loop_stop()
        c.disconnect()
    return got[0]


def test_revoke_cuts_a_stolen_reader_off_and_remove_deletes_it(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    op = _setup(url)
    port, host_port = free_port(), free_port()
    bdir = tmp_path / "broker"
    op.ok("broker", "config", "--out", str(bdir), "--port", str(port), "--plain-port",
          str(host_port))
    conf = bdir / "mosquitto.conf"
    if os.geteuid() == 0:  # root's mosquitto drops to "mosquitto", who can't read 0600 files
        conf.write_text(conf.read_text() + "user %s\n" % getpass.getuser())
    log = open(tmp_path / "mosquitto.log", "wb")
    mosq = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=log, stderr=log)
    serve_log = tmp_path / "serve.log"
    srv = subprocess.Popen([sys.executable, "-m", "host_sync", "--db", url, "serve",
                            "--broker-port", str(host_port), "--instance", "one", "--poll", "0.05"],
                           cwd=ROOT, stdout=open(serve_log, "w"), stderr=subprocess.STDOUT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    readers = []
    try:
        _wait(lambda: _listening(port) and _listening(host_port), what="broker")
        _wait(lambda: "host sync connected" in serve_log.read_text(), 20, "serve")
        s1, pw1 = _creds(url, "gate-01")
        s2, pw2 = _creds(url, "gate-02")
        r1 = ProtocolReader(port, "gate-01", "site-a", pw1, s1)
        r2 = ProtocolReader(port, "gate-02", "site-a", pw2, s2)
        readers += [r1, r2]
        for r in (r1, r2):
            r.wait(lambda r: r.version > 0 and len(r.records) == len(UIDS), what="rebuild")
        v1 = r1.version

        # gate-01 is stolen: the operator revokes it
        op.ok("readers", "revoke", "gate-01", "--reason", "stolen from the east gate",
              "--broker-pid", str(mosq.pid))
        assert "account removed" in op.out
        # the broker: its connection is cut and its password no longer works
        _wait(lambda: not r1.c.is_connected(), what="the stolen reader disconnected")
        assert _connects(port, "gate-01", pw1) == "Not authorized"
        # serve: anything sealed with the old secret is refused (here from a host account, as
        # if the thief still had a path to the broker)
        spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy")
        user, hpw = "host", Registry(Db(url)).db.scalar(
            "SELECT value FROM settings WHERE name = 'broker_host_password'")
        spy.username_pw_set(user, hpw)
        spy.connect("127.0.0.1", host_port)
        spy.loop_start()
        time.sleep(1.2)  # serve rechecks credentials every second
        forged = P.seal(P.Key(s1, "gate-01"), P.DIR_READER, P.T_HELLO, os.urandom(8), 9 << 32,
                        P.hello_body(0, 0, 0, 0, 0, 0, 0, "thief"))
        spy.publish(P.topic("site-a", "gate-01", "hello"), forged, qos=1).wait_for_publish(5)
        _wait(lambda: "unknown or revoked reader" in serve_log.read_text(), what="refused")
        spy.loop_stop()
        spy.disconnect()
        # the other readers carry on: a block reaches gate-02, not the revoked one
        op.ok("cards", "block", "BB-2401-000001")
        r2.wait(lambda r: R.status(r.records[_key(url, UIDS[0])]) == R.BLOCKED, what="block")
        assert r1.version == v1
        # the audit log: who and why
        op.ok("audit", "--subject", "gate-01")
        assert "reader revoked" in op.out and "stolen from the east gate" in op.out
        assert "tester" in op.out
        op.ok("readers", "list")
        assert "REVOKED" in op.out
        # a rotation waits for its reader (gate-03 never connected): shown as pending
        assert op("readers", "rotate", "gate-01") == 3  # revoked: nothing to rotate
        op.ok("readers", "rotate", "gate-03")
        op.ok("readers", "list")
        assert [ln for ln in op.out.splitlines() if ln.startswith("gate-03")][0].count(
            "(re-key pending)") == 1
        assert op("readers", "config", "gate-01", "--config-out", str(tmp_path / "x.json")) == 3
        assert op("readers", "revoke", "gate-01", "--reason", "again") == 3
        # remove: gone from the registry; gate-02 still has its account
        op.ok("readers", "remove", "gate-01")
        assert op("readers", "list") == 0 and "gate-01" not in op.out
        assert op("readers", "remove", "gate-01") == 4
        assert _connects(port, "gate-02", pw2) == "Success"
    finally:
        for r in readers:
            r.close(graceful=False)
        _stop(srv)
        mosq.terminate()
        mosq.wait(5)


def test_the_counter_mark_in_the_registry_only_rises_and_outlives_the_service(tmp_path):
    from host_sync import wire
    from host_sync.db import open_db
    from host_sync.store import RegistryData

    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    db = open_db(url, None)
    data = RegistryData(db)
    assert data.counter_floor() == 0
    assert data.counter_reserve(500) == 500 and data.counter_reserve(300) == 500
    t = [2_000_000_000 * 10**9]
    first = wire.Counter(data, clock=lambda: t[0])
    issued = max(first.next() for _ in range(100))
    db.close()
    t[0] -= 86400 * 10**9  # a day back: the host's clock was wrong, then "fixed"
    again = wire.Counter(RegistryData(open_db(url, None)), clock=lambda: t[0])
    assert again.next() > issued


def test_refusals_are_counted_per_interval_with_bounded_memory():
    from host_sync.rejectlog import RejectLog

    now = [0.0]
    got: list = []
    rl = RejectLog(lambda *a: got.append(a), interval_s=10, clock=lambda: now[0], max_keys=4)
    for i in range(1000):
        rl.add("gate-%d" % (i % 50), "host", "bad MAC")
    assert len(got) <= 5 and rl.total == 1000  # first of each of 4 keys, then folded into "?"
    assert sum(n for _, _, _, n in got) + sum(rl.pending.values()) == 1000
    assert len(rl.pending) <= 5
    now[0] = 11
    rl.flush()
    assert sum(n for _, _, _, n in got) == 1000 and not rl.pending


def test_rotate_gives_a_reader_a_new_secret_and_password_and_the_old_pair_stops_working(tmp_path):
    """The firmware's reader (unix port, TLS) against serve and a real mosquitto: a signed,
    encrypted REKEY, stored by the reader, then the registry and the broker switch; the old
    password is refused from then on and the reader works on (and after a reboot) with the new."""
    import json

    from host_sync.broker import make_test_ca
    from tests.sync_support import ReaderProc

    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    op = _setup(url)
    tls = make_test_ca(tmp_path / "tls")
    port, host_port = free_port(), free_port()
    bdir = tmp_path / "broker"
    bargs = ["broker", "config", "--out", str(bdir), "--port", str(port), "--plain-port",
             str(host_port), "--cafile", tls.cafile, "--certfile", tls.certfile, "--keyfile",
             tls.keyfile]
    op.ok(*bargs)
    conf = bdir / "mosquitto.conf"
    if os.geteuid() == 0:
        conf.write_text(conf.read_text() + "user %s\n" % getpass.getuser())
    mosq = subprocess.Popen([mosquitto_bin(), "-c", str(conf)],
                            stdout=open(tmp_path / "mosquitto.log", "wb"), stderr=subprocess.STDOUT)
    Db(url).execute("INSERT INTO settings (name, value) VALUES ('broker_reload', ?)",
                    ("kill -HUP %d" % mosq.pid,))
    serve_log = tmp_path / "serve.log"
    srv = subprocess.Popen([sys.executable, "-m", "host_sync", "--db", url, "serve",
                            "--broker-port", str(host_port), "--instance", "one", "--poll", "0.05"],
                           cwd=ROOT, stdout=open(serve_log, "w"), stderr=subprocess.STDOUT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    cfg_file = tmp_path / "gate-01.json"
    op.ok("readers", "config", "gate-01", "--config-out", str(cfg_file), "--broker-host",
          "127.0.0.1", "--broker-port", str(port), "--ca", tls.cafile, "--virtual")
    image = str(tmp_path / "flash.img")
    readers = []
    try:
        _wait(lambda: _listening(port) and _listening(host_port), what="broker")
        _wait(lambda: "host sync connected" in serve_log.read_text(), 20, "serve")
        old_secret, old_pw = _creds(url, "gate-01")
        r = ReaderProc(tmp_path / "r1", json.loads(cfg_file.read_text()), heapsize="512k",
                       image=image)
        readers.append(r)
        head = Registry(Db(url)).current_version("site-a")
        r.wait(lambda s: s["version"] == head, timeout=60, what="rebuild")

        op.ok("readers", "rotate", "gate-01")
        s = r.wait(lambda s: s["rekeyed"] == 1 and s["connected"], timeout=40, what="re-keyed")
        new_secret, new_pw = _creds(url, "gate-01")
        assert (new_secret, new_pw) != (old_secret, old_pw) and s["connects"] >= 2
        disk = json.loads((tmp_path / "r1" / "config.json").read_text())
        assert disk["secret"] == new_secret.hex() and disk["broker"]["password"] == new_pw
        op.ok("audit", "--subject", "gate-01")
        assert "reader re-key started" in op.out and "reader re-keyed" in op.out
        rows = {x["id"]: x for x in json.loads(op.ok("readers", "list", "--json"))}
        assert rows["gate-01"]["rekey_pending"] is False
        # the old password no longer logs in; the reader works on with the new pair
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="thief")
        c.username_pw_set("gate-01", old_pw)
        c.tls_set(ca_certs=tls.cafile)
        got: list[str] = []
        c.on_connect = lambda cl, u, f, rc, p: got.append(str(rc))
        c.connect("127.0.0.1", port)
        c.loop_start()
        _wait(lambda: got, what="CONNACK")
        c.loop_stop()
        c.disconnect()
        assert got[0] == "Not authorized"
        op.ok("cards", "block", "BB-2401-000001")
        key = _key(url, UIDS[0])
        _wait(lambda: (lambda rec: rec and R.status(rec) == R.BLOCKED)(r.lookup(key)), 30,
              "the block under the new secret")
        # and after a reboot it logs in with what it wrote to its config
        r.ctl("quit")
        r.proc.wait(10)
        r = ReaderProc(tmp_path / "r1", disk, heapsize="512k", image=image)
        readers.append(r)
        op.ok("cards", "block", "BB-2401-000002")
        key2 = _key(url, UIDS[1])
        _wait(lambda: (lambda rec: rec and R.status(rec) == R.BLOCKED)(r.lookup(key2)), 30,
              "a block after the reboot")
        s = r.wait(lambda s: s["connected"], what="connected after the reboot")
        assert s["rekey_pending"] is False and s["rekeyed"] == 0  # nothing left to switch
    finally:
        for x in readers:
            x.close()
        _stop(srv)
        mosq.terminate()
        mosq.wait(5)
