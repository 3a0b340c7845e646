"""`host-sync site services`: systemd units for the broker and `serve` (boot, restart on
failure) that systemd itself accepts; `serve` says loudly why it cannot reach the broker
(nothing listening, a refused account, an untrusted certificate), keeps trying, and
`host-sync status` tells the same; the broker comes up from the unit's own ExecStart."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_sync import paths, units

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = dict(os.environ, GV_CONFIG_DIR=str(tmp / "etc"), GV_DATA=str(tmp / "var"),
                        GV_DB="", PYTHONUNBUFFERED="1")
        self.procs: list[subprocess.Popen] = []

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "host_sync", *args], cwd=self.tmp,
                              capture_output=True, text=True, env=dict(self.env, **(env or {})),
                              timeout=120)

    def ok(self, *args: str) -> str:
        p = self.run(*args)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(argv, cwd=self.tmp, env=dict(self.env, **(env or {})),
                             stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("not within %g s: %s" % (timeout, what))


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    yield h
    h.close()


def test_units_are_what_systemd_accepts(host, tmp_path, monkeypatch):
    host.ok("site", "init", "--address", "127.0.0.1", "--bind", "127.0.0.1", "--port", "18883")
    out = host.ok("site", "services", "--unit-dir", str(tmp_path / "units"))
    assert "systemctl" in out and "enable --now" in out
    files = sorted((tmp_path / "units").glob("*.service"))
    assert [f.name for f in files] == ["grindvakt-mosquitto.service", "grindvakt-serve.service"]
    broker, serve = (units.parse(f.read_text()) for f in files)
    assert broker["Service"]["Restart"] == ["on-failure"] and serve["Service"]["Restart"] == ["always"]
    assert broker["Install"]["WantedBy"] == serve["Install"]["WantedBy"] == (
        ["multi-user.target"] if paths.is_root() else ["default.target"])
    argv = shlex.split(broker["Service"]["ExecStart"][0])
    assert argv[1:] == ["-c", str(tmp_path / "etc" / "broker" / "mosquitto.conf")]
    assert os.path.isabs(argv[0]) and os.path.isabs(shlex.split(serve["Service"]["ExecStart"][0])[0])
    assert "grindvakt-mosquitto.service" in serve["Unit"]["After"][0]
    verify = shutil.which("systemd-analyze")
    if verify:
        p = subprocess.run([verify, "verify", *map(str, files)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    # a plain user's units: user services, no system-only targets
    monkeypatch.setattr(paths, "is_root", lambda: False)
    monkeypatch.setenv("GV_CONFIG_DIR", str(tmp_path / "etc"))
    from host_sync.siteconf import SiteConf
    for u in units.units(SiteConf.load()):
        parsed = units.parse(u.text)
        assert parsed["Install"]["WantedBy"] == ["default.target"]
        assert "network-online.target" not in u.text


def test_a_database_url_stays_out_of_the_world_readable_unit(host, tmp_path):
    host.ok("site", "init", "--address", "127.0.0.1", "--port", "18883")
    url = "postgresql://gv:s3cret@127.0.0.1/gv"
    from host_sync.siteconf import SiteConf
    conf = SiteConf.load(tmp_path / "etc")
    written = units.write(conf, tmp_path / "units", url)
    assert all("s3cret" not in p.read_text() for p in written)
    env = tmp_path / "etc" / "serve.env"
    assert env.read_text() == "GV_DB=%s\n" % url and (env.stat().st_mode & 0o077) == 0


def test_serve_says_why_it_cannot_reach_the_broker_and_keeps_trying(host, tmp_path):
    readers_port, port = free_port(), free_port()  # serve uses the host side's own listener
    host.ok("site", "init", "--address", "127.0.0.1", "--bind", "127.0.0.1", "--port",
            str(readers_port), "--host-port", str(port), "--run-as", _me())
    host.ok("site", "services", "--unit-dir", str(tmp_path / "units"))
    unit = {f.name: units.parse(f.read_text()) for f in (tmp_path / "units").glob("*.service")}
    serve_argv = shlex.split(unit["grindvakt-serve.service"]["Service"]["ExecStart"][0])
    log = tmp_path / "serve.log"
    host.start(serve_argv, log)
    # no broker yet: said at once, in the log and in status (exit 5), and tried again
    wait_for(lambda: "nothing listens at 127.0.0.1:%d" % port in log.read_text(), 30, "serve's log")
    st = wait_for(lambda: (lambda p: p if "NOT CONNECTED" in p.stdout else None)(host.run("status")),
                  30, "status")
    assert st.returncode == 5 and "nothing listens" in st.stdout
    # the broker from the unit's own command line: serve finds it by itself
    broker_argv = shlex.split(unit["grindvakt-mosquitto.service"]["Service"]["ExecStart"][0])
    host.start(broker_argv, tmp_path / "mosquitto.log")
    wait_for(lambda: host.run("status").returncode == 0, 60, "serve connected")
    assert "connected to the broker 127.0.0.1:%d" % port in host.run("status").stdout
    assert "host sync connected to the broker 127.0.0.1:%d after" % port in log.read_text()
    # stopped: status says so (exit 5) rather than showing the last good state
    serve_proc = host.procs[0]
    serve_proc.terminate()
    serve_proc.wait(15)
    st = host.run("status")
    assert st.returncode == 5 and "NOT RUNNING" in st.stdout, st.stdout


def test_a_refused_account_and_an_untrusted_certificate_are_named(host, tmp_path):
    port = free_port()
    host.ok("site", "init", "--address", "127.0.0.1", "--bind", "127.0.0.1", "--port", str(port),
            "--host-port", str(free_port()), "--run-as", _me())
    host.start(["mosquitto", "-c", str(tmp_path / "etc" / "broker" / "mosquitto.conf")],
               tmp_path / "mosquitto.log")
    bad_pw = tmp_path / "bad-pw.log"
    host.start([sys.executable, "-m", "host_sync", "serve", "--instance", "badpw"], bad_pw,
               env={"GV_BROKER_PASSWORD": "not-the-password"})
    from host_sync.pki import make_ca
    from cryptography.hazmat.primitives import serialization
    other_ca, _ = make_ca("some other CA")
    (tmp_path / "other.pem").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    bad_tls = tmp_path / "bad-tls.log"
    host.start([sys.executable, "-m", "host_sync", "serve", "--instance", "badtls", "--tls-ca",
                str(tmp_path / "other.pem")], bad_tls)
    wait_for(lambda: "refused the host" in bad_pw.read_text(), 30, "the refusal in the log")
    assert "password" in bad_pw.read_text().lower()
    wait_for(lambda: "TLS" in bad_tls.read_text() and "not trust" in bad_tls.read_text(), 30,
             "the TLS failure in the log")

    def both():
        out = host.run("status").stdout
        return out if out.count("NOT CONNECTED") == 2 else None
    out = wait_for(both, 30, "status naming both")
    assert "refused the host" in out and "does not trust" in out
    assert host.run("status").returncode == 5


def _me() -> str:
    import getpass
    return getpass.getuser()


def test_where_systemd_runs_the_units_are_enabled_and_started(host, tmp_path, monkeypatch):
    """daemon-reload, then enable --now both units (--user for a plain user), with systemctl
    itself stood in for by a script that notes what it was asked."""
    host.ok("site", "init", "--address", "127.0.0.1", "--port", "18883")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text('#!/bin/sh\necho "$@" >> %s\n' % calls)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ["PATH"]))
    for k, v in host.env.items():
        if k.startswith("GV_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("GV_UNIT_DIR", raising=False)
    monkeypatch.setattr(units, "systemd_running", lambda: True)
    monkeypatch.setattr(paths, "unit_dir", lambda: tmp_path / "system")
    import io
    from host_sync import cli
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["site", "services"], out, err) == 0, out.getvalue() + err.getvalue()
    user = [] if paths.is_root() else ["--user"]
    assert calls.read_text().splitlines() == [
        " ".join(user + ["daemon-reload"]),
        " ".join(user + ["enable", "--now", "grindvakt-mosquitto.service", "grindvakt-serve.service"])]
    assert (tmp_path / "system" / "grindvakt-serve.service").exists()
    assert "both services run now and at every boot" in out.getvalue()


@pytest.mark.parametrize("root", [False, True], ids=["plain-user", "root"])
def test_a_broker_or_service_down_is_told_how_to_start_it_on_this_host(host, tmp_path,
                                                                       monkeypatch, root):
    """The hint names the unit as `site services` wrote it (a user unit for a plain user), and
    where systemd does not run, the command that starts it by hand."""
    import io
    import json as _json

    from host_sync import brokerlink, serve, siteconf
    from host_sync.cli import main
    from host_sync.db import Db
    host.ok("site", "init", "--address", "127.0.0.1", "--port", "18883")
    monkeypatch.setenv("GV_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("GV_DATA", str(tmp_path / "var"))
    monkeypatch.setattr(paths, "is_root", lambda: root)
    ctl = "systemctl" if root else "systemctl --user"
    url = "sqlite:///%s" % (tmp_path / "var" / "grindvakt.sqlite3")
    import datetime as dt
    heard = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    db = Db(url)  # a serve instance that said it stopped 3 min ago (what status reads)
    db.execute("INSERT INTO settings (name, value) VALUES (?, ?)", (
        serve.STATUS_PREFIX + "gate-host-1", _json.dumps({
            "instance": "gate-host-1", "running": False, "heartbeat": heard,
            "connected": False, "broker": "127.0.0.1:18884", "since": "2026-01-01T00:00:00Z",
            "failures": 0, "error": None})))
    db.close()

    def status() -> str:
        out = io.StringIO()
        assert main(["--db", url, "status"], out=out, err=io.StringIO()) == 5
        return out.getvalue()

    refused = ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(siteconf, "systemd_running", lambda: True)
    why = brokerlink.explain(refused, "127.0.0.1", 18884, None)
    assert ("nothing listens at 127.0.0.1:18884 (is the broker running? %s status "
            "grindvakt-mosquitto.service; start it: %s start grindvakt-mosquitto.service)"
            % (ctl, ctl)) == why
    import re
    assert re.search(r"sync service gate-host-1: NOT RUNNING \(last heard [^;]+ ago; %s status "
                     r"grindvakt-serve\.service; start it: %s start grindvakt-serve\.service\)"
                     % (ctl, ctl), status()), status()
    # no systemd: the commands by hand, with this site's config
    monkeypatch.setattr(siteconf, "systemd_running", lambda: False)
    conf = siteconf.SiteConf.load()
    why = brokerlink.explain(refused, "127.0.0.1", 18884, None)
    assert why == ("nothing listens at 127.0.0.1:18884 (is the broker running? systemd does not "
                   "run here; start it by hand: %s)" % shlex.join(siteconf.broker_command(conf)))
    st = status()
    assert "systemd does not run here; start it by hand: GV_CONFIG_DIR=" in st, st
    assert "-m host_sync serve)" in st and "systemctl" not in st
