"""host_sync.broker's mosquitto configuration on a real mosquitto: per-reader accounts and ACLs
(a reader reaches only its own topics), hashed passwords, TLS with the generated CA, restarts."""
from __future__ import annotations

import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from host_sync.broker import (BrokerConfigError, HostAccount, ReaderAccount, acl_text,
                              hash_password, write_config)
from tests.broker import Broker


def _client(b: Broker, user: str, password: str, tls: bool, got: list | None = None):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}")
    c.username_pw_set(user, password)
    ok = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: ok.set() if not rc.is_failure else None
    if got is not None:
        c.on_message = lambda cl, u, m: got.append((m.topic, m.payload))
    if tls:
        c.tls_set(ca_certs=b.tls.cafile, cert_reqs=ssl.CERT_REQUIRED)
        c.connect("localhost", b.port)
    else:
        c.connect("127.0.0.1", b.plain_port)
    c.loop_start()
    return c, ok


def _wait(pred, t=5.0):
    end = time.monotonic() + t
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_readers_reach_only_their_own_topics_over_tls():
    with Broker(readers=[("gate-01", "site-a"), ("gate-02", "site-a")], tls=True) as b:
        got: list = []
        host, hok = _client(b, b.host_user, b.host_password, tls=False, got=got)
        assert hok.wait(5)
        host.subscribe("gv/#", 1)
        r2_got: list = []
        r1, ok1 = _client(b, "gate-01", b.password("gate-01"), tls=True)
        r2, ok2 = _client(b, "gate-02", b.password("gate-02"), tls=True, got=r2_got)
        assert ok1.wait(5) and ok2.wait(5)
        r2.subscribe("gv/site-a/gate-01/in", 1)  # not its inbox: the ACL hides it
        r2.subscribe("gv/site-a/gate-02/in", 1)
        time.sleep(0.3)
        r1.publish("gv/site-a/gate-01/out", b"mine", qos=1).wait_for_publish(5)
        r1.publish("gv/site-a/gate-02/out", b"forged", qos=1).wait_for_publish(5)
        r1.publish("gv/site-a/gate-02/in", b"forged-in", qos=1).wait_for_publish(5)
        host.publish("gv/site-a/gate-01/in", b"for-1", qos=1)
        host.publish("gv/site-a/gate-02/in", b"for-2", qos=1)
        assert _wait(lambda: ("gv/site-a/gate-02/in", b"for-2") in r2_got)
        time.sleep(0.3)
        assert ("gv/site-a/gate-01/out", b"mine") in got
        assert not [p for t, p in got if p.startswith(b"forged")]
        assert r2_got == [("gv/site-a/gate-02/in", b"for-2")]
        for c in (host, r1, r2):
            c.loop_stop()
            c.disconnect()


def test_wrong_password_and_untrusted_ca_are_refused(tmp_path):
    with Broker(readers=[("gate-01", "site-a")], tls=True) as b:
        bad, ok = _client(b, "gate-01", "not-the-password", tls=True)
        assert not ok.wait(1.0)
        bad.loop_stop()
        other = Broker(tls=True)  # another CA: the reader's pin must refuse this server
        c = mqtt.Client(CallbackAPIVersion.VERSION2)
        c.tls_set(ca_certs=other.tls.cafile, cert_reqs=ssl.CERT_REQUIRED)
        with pytest.raises(ssl.SSLError):
            c.connect("localhost", b.port)
        other.close()


def test_restart_keeps_ports_and_accounts():
    with Broker(readers=[("gate-01", "site-a")], tls=True) as b:
        port = b.port
        b.stop()
        b.start()
        c, ok = _client(b, "gate-01", b.password("gate-01"), tls=True)
        assert b.port == port and ok.wait(5)
        c.loop_stop()
        b.add_reader("gate-02", "site-a")  # SIGHUP reload
        c2, ok2 = _client(b, "gate-02", b.password("gate-02"), tls=True)
        assert ok2.wait(5)
        c2.loop_stop()


def test_config_files(tmp_path):
    readers = [ReaderAccount("gate-01", "site-a", "pw1")]
    files = write_config(tmp_path, readers, [HostAccount("host", "pw0")], port=8883)
    text = open(files.acl).read()
    assert "topic read gv/site-a/gate-01/in" in text and "topic write gv/site-a/gate-01/out" in text
    pw = open(files.passwd).read()
    assert "pw1" not in pw and pw.count("$7$101$") == 2
    assert (tmp_path / "passwd").stat().st_mode & 0o077 == 0
    assert hash_password("x", salt=b"\0" * 12) == hash_password("x", salt=b"\0" * 12)
    for bad in ([ReaderAccount("gate/01", "site-a", "p")], [ReaderAccount("g#", "s", "p")],
                [ReaderAccount("gate-01", "site-a", "")],
                [ReaderAccount("a", "s", "p"), ReaderAccount("a", "s", "q")]):
        with pytest.raises(BrokerConfigError):
            write_config(tmp_path / "x", bad, [])
    assert "user host" in acl_text([], [HostAccount("host", "p")])
