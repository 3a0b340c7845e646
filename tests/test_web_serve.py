"""`host-sync web` as an operator starts it (HTTPS with the site's certificate: Secure cookies,
HSTS, a first-admin hint), and the alarm sinks other than the webhook on real parts: an MQTT
topic on a real mosquitto, and e-mail to an SMTP server on 127.0.0.1 that refuses the first try."""
from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import host_sync  # noqa: F401
from host_sync import alarms
from host_sync.broker import make_test_ca
from host_sync.db import Db
from tests.host_kit import Operator

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_over_https_with_the_sites_certificate(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    Operator(url).ok("sites", "add", "site-a", "--tax-id", "PL1")
    tls = make_test_ca(tmp_path / "tls", ("127.0.0.1",))
    port = _free_port()
    log = open(tmp_path / "web.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "host_sync", "--db", url, "web", "--port",
                          str(port), "--certfile", tls.certfile, "--keyfile", tls.keyfile,
                          "--no-alarms"], cwd=ROOT, stdout=log, stderr=log)
    try:
        ctx = ssl.create_default_context(cafile=tls.cafile)
        deadline = time.monotonic() + 30
        while True:
            try:
                r = urllib.request.urlopen("https://127.0.0.1:%d/login" % port, context=ctx,
                                           timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or p.poll() is not None:
                    log.seek(0)
                    raise AssertionError("web did not come up:\n" + log.read())
                time.sleep(0.2)
        r.close()
        assert r.status == 200
        cookie = r.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        assert r.headers["strict-transport-security"].startswith("max-age=")
        log.seek(0)
        assert "no admin account yet: host-sync users add" in log.read()
    finally:
        p.terminate()
        p.wait(15)


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: the first connection is refused with 421."""
    server: "socketserver.ThreadingTCPServer"

    def handle(self):
        srv = self.server
        if srv.refuse > 0:  # type: ignore[attr-defined]
            srv.refuse -= 1  # type: ignore[attr-defined]
            self.wfile.write(b"421 busy, try later\r\n")
            return
        self.wfile.write(b"220 test ESMTP\r\n")
        data, lines = False, []
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if data:
                if line == ".":
                    srv.mails.append("\n".join(lines))  # type: ignore[attr-defined]
                    data = False
                    self.wfile.write(b"250 queued\r\n")
                else:
                    lines.append(line)
                continue
            cmd = line[:4].upper()
            if cmd in ("EHLO", "HELO"):
                self.wfile.write(b"250 test\r\n")
            elif cmd == "DATA":
                data = True
                self.wfile.write(b"354 go on\r\n")
            elif cmd == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_alarms_reach_an_mqtt_topic_and_an_smtp_server_with_retries(tmp_path):
    from tests.broker import Broker

    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    o = Operator(url)
    o.ok("sites", "add", "site-a", "--tax-id", "PL1")
    o.ok("readers", "add", "gate-01", "--site", "site-a")
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    smtp.refuse, smtp.mails = 1, []  # type: ignore[attr-defined]
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    db = Db(url)
    try:
        with Broker() as b:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
            got: list[bytes] = []
            sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alarm-monitor")
            sub.username_pw_set(b.host_user, b.host_password)
            sub.on_message = lambda c, u, m: got.append(m.payload)
            # host-side clients sharing the host account: the loopback listener, where client ids
            # are not bound to accounts (on b.port both would be "host" and replace each other)
            sub.connect("127.0.0.1", b.plain_port)
            sub.subscribe("gv/monitor/alarms", qos=1)
            sub.loop_start()
            env = {"GV_MQTT_PW": b.host_password}
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                o.ok("alarms", "sink-add", "mqtt", "gv/monitor/alarms", "--mqtt-host", "127.0.0.1",
                     "--mqtt-port", str(b.plain_port), "--mqtt-user", b.host_user,
                     "--password-env", "GV_MQTT_PW")
            finally:
                for k, v in old.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            o.ok("alarms", "sink-add", "smtp", "guard@example.com", "--smtp-host", "127.0.0.1",
                 "--smtp-port", str(smtp.server_address[1]))
            o.ok("alarms", "sink-list")
            assert "password" not in o.out and b.host_password not in o.out  # never shown
            db.execute("UPDATE readers SET online = 0, last_seen = '2026-01-01T00:00:00Z'")
            (aid,) = alarms.scan(db)
            assert alarms.deliver(db) == 1  # MQTT took it; the mail server said 421
            db.execute("UPDATE alarm_deliveries SET next_at = '2000-01-01T00:00:00Z'")
            assert alarms.deliver(db) == 1  # the retry reaches the mail server
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
            sub.loop_stop()
            sub.disconnect()
        msg = json.loads(got[0])
        assert msg["alarm"] == aid and msg["kind"] == "offline" and msg["reader"] == "gate-01"
        mail = smtp.mails[0]  # type: ignore[attr-defined]
        assert "To: guard@example.com" in mail and re.search(r"Subject: .*offline.*gate-01", mail)
        o.ok("alarms", "list")
        assert "mqtt:done" in o.out and "smtp:done" in o.out
    finally:
        smtp.shutdown()
        smtp.server_close()
        db.close()


def test_alarms_watch_alone_sends_a_duress_alarm(tmp_path):
    """A site without a console: `host-sync alarms watch` beside serve raises and sends."""
    import datetime as dt

    from gv import events as E
    from host_sync import ledger
    from tests.web_kit import Receiver
    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    o = Operator(url)
    o.ok("sites", "add", "site-a", "--tax-id", "PL1")
    o.ok("readers", "add", "gate-01", "--site", "site-a")
    rx = Receiver()
    os.environ["GV_TEST_HOOK"] = "a-long-enough-secret"
    try:
        o.ok("alarms", "sink-add", "webhook", rx.url, "--secret-env", "GV_TEST_HOOK")
    finally:
        del os.environ["GV_TEST_HOOK"]
    p = subprocess.Popen([sys.executable, "-m", "host_sync", "--db", url, "alarms", "watch"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = Db(url)
    try:
        time.sleep(1.5)  # its first scan sets the cursor
        at = dt.datetime.now(dt.timezone.utc)
        t = int((at - ledger.from_reader_seconds(0)).total_seconds())
        ledger.ingest(db, "gate-01", "site-a",
                      [(1, E.pack(1, E.K_ALARM, E.R_GRANT, E.DURESS, b"\x01\x02\x03\x04", 4, t,
                                  E.F_CLOCK_SET))])
        # the ingest's own alarm (a grant of a card the registry does not know) comes too
        def kinds() -> set:
            return {json.loads(g[1])["kind"] for g in list(rx.got)}
        deadline = time.monotonic() + 30
        while "duress" not in kinds() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "duress" in kinds()
    finally:
        p.terminate()
        p.wait(20)
        rx.close()
        db.close()


def test_every_port_option_outside_1_65535_is_refused_before_anything_runs(tmp_path,
                                                                          monkeypatch):
    """`web --port 99999` was a uvicorn traceback (exit 1); every port option says it as
    `site init` does, exit 3, and nothing is started or written."""
    monkeypatch.setenv("GV_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("GV_DATA", str(tmp_path / "var"))
    op = Operator("sqlite:///%s" % (tmp_path / "r.sqlite3"))
    op.ok("sites", "add", "site-a", "--tax-id", "PL1234-5678")
    for argv, option, value in (
            (["web", "--port", "99999"], "--port", "99999"),
            (["serve", "--broker-port", "70000"], "--broker-port", "70000"),
            (["broker", "config", "--out", str(tmp_path / "b"), "--port", "65536"], "--port", "65536"),
            (["broker", "config", "--out", str(tmp_path / "b"), "--plain-port", "-1"],
             "--plain-port", "-1"),
            (["site", "init", "--host-port", "99999"], "--host-port", "99999"),
            (["readers", "add", "gate-01", "--site", "site-a", "--broker-port", "99999"],
             "--broker-port", "99999"),
            (["alarms", "sink-add", "smtp", "a@b.c", "--smtp-port", "99999"], "--smtp-port", "99999"),
            (["alarms", "sink-add", "mqtt", "t", "--mqtt-port", "0"], "--mqtt-port", "0"),
            (["web", "--port", "0"], "--port", "0")):
        assert op(*argv) == 3, (argv, op.out, op.err)
        assert "refused: %s %s is outside 1-65535" % (option, value) in op.err, op.err
        assert "Traceback" not in op.err
    assert not (tmp_path / "b").exists() and not (tmp_path / "etc").exists()
    assert op.ok("readers", "list").count("gate-01") == 0
