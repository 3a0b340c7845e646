"""`host-sync site init` and friends: the site CA and the broker's certificate (cryptography), a
mosquitto config with absolute paths, TLS only, bound where it was told, files the broker's user
can read; renewing the certificate, rolling the CA; the registry found the same from any folder."""
from __future__ import annotations

import json
import re
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from host_sync import paths
from host_sync.pki import SitePki

ROOT = Path(__file__).resolve().parent.parent


def host_sync(tmp: Path, *args: str, cwd: Path | None = None, env: dict | None = None):
    e = dict(os.environ, GV_CONFIG_DIR=str(tmp / "etc"), GV_DATA=str(tmp / "var"), GV_DB="",
             **(env or {}))
    return subprocess.run([sys.executable, "-m", "host_sync", *args], cwd=cwd or tmp,
                          capture_output=True, text=True, env=e, timeout=120)


def ok(tmp: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    p = host_sync(tmp, *args, **kw)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def conf_lines(tmp: Path) -> list[str]:
    return (tmp / "etc" / "broker" / "mosquitto.conf").read_text().splitlines()


def test_init_makes_a_ca_a_server_cert_and_a_tls_only_config(tmp_path):
    p = ok(tmp_path, "site", "init", "--address", "10.20.0.5", "--name", "gate-host.example")
    assert "next:" in p.stdout and "host-sync site services" in p.stdout
    assert "created a new, empty registry" in p.stderr
    pki = SitePki(tmp_path / "etc")
    ca = x509.load_pem_x509_certificate(pki.ca_pem.read_bytes())
    srv = x509.load_pem_x509_certificate(pki.server_pem.read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(map(str, san.get_values_for_type(x509.IPAddress))) == {"10.20.0.5", "127.0.0.1"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"gate-host.example", "localhost"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(pki.ca_key.stat().st_mode) == 0o600
    lines = conf_lines(tmp_path)
    # default: every address, TLS, no plain listener; every path absolute; the host side's own
    # listener (loopback, client ids not bound to accounts: docs/security.md) next to it
    assert [ln for ln in lines if ln.startswith("listener")] == ["listener 8883",
                                                                  "listener 8884 127.0.0.1"]
    for key in ("password_file", "acl_file", "cafile", "certfile", "keyfile", "persistence_location"):
        vals = [ln.split(" ", 1)[1] for ln in lines if ln.startswith(key + " ")]
        assert vals and all(os.path.isabs(v) and os.path.exists(v) for v in vals), (key, vals)
    assert "allow_anonymous false" in lines
    site = json.loads((tmp_path / "etc" / "site.json").read_text())
    assert site["reader_host"] == "10.20.0.5" and site["port"] == 8883


def test_bind_addresses_and_the_broker_user(tmp_path):
    ok(tmp_path, "site", "init", "--address", "10.20.0.5", "--bind", "10.20.0.5", "--port", "18883")
    lines = conf_lines(tmp_path)
    assert [ln for ln in lines if ln.startswith("listener")] == [
        "listener 18883 10.20.0.5", "listener 18883 127.0.0.1", "listener 18884 127.0.0.1"]
    assert lines.count("tls_version tlsv1.2") == 3  # TLS on each listener
    broker = tmp_path / "etc" / "broker"
    if paths.is_root():
        import grp
        import pwd
        try:
            pwd.getpwnam("mosquitto")
        except KeyError:
            pytest.skip("no user 'mosquitto' on this host")
        assert "user mosquitto" in lines
        gid = grp.getgrnam("mosquitto").gr_gid
        for f in ("passwd", "acl", "server.key"):
            st = (broker / f).stat()
            assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o640, f
        assert (tmp_path / "var" / "broker").stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
    else:
        import getpass
        assert "user %s" % getpass.getuser() in lines
        assert stat.S_IMODE((broker / "passwd").stat().st_mode) == 0o600


def test_bad_values_are_refused_by_name_and_change_nothing(tmp_path):
    p = host_sync(tmp_path, "site", "init", "--bind", "gate.example")
    assert p.returncode == 3 and "gate.example" in p.stderr and "not an IP address" in p.stderr
    p = host_sync(tmp_path, "site", "init", "--address", "bad name!")
    assert p.returncode == 3 and "bad name!" in p.stderr
    # digits and dots must be an IPv4 address: a typo never reaches the certificate or readers
    for bad in ("192.168.10.300", "10.0.0.256", "10.0.5"):
        p = host_sync(tmp_path, "site", "init", "--address", bad, "--bind", "127.0.0.1",
                      "--port", "8883")
        assert p.returncode == 3, p.stdout + p.stderr
        assert "--address %s: not a valid IPv4 address" % bad in p.stderr, p.stderr
    p = host_sync(tmp_path, "site", "init", "--name=-gate.example")
    assert p.returncode == 3 and "--name -gate.example: neither an IP address nor a host name" \
        in p.stderr, p.stderr
    p = host_sync(tmp_path, "site", "init", "--address", "fe80::zz")
    assert p.returncode == 3 and "--address fe80::zz: not an IPv6 address" in p.stderr
    p = host_sync(tmp_path, "site", "init", "--port", "99999")
    assert p.returncode == 3 and "--port" in p.stderr
    # the whole name, quotes and all, as the operator typed it
    p = host_sync(tmp_path, "site", "init", "--address", "gate host")
    assert p.returncode == 3, p.stdout + p.stderr
    assert "refused: --address gate host: neither an IP address nor a host name" in p.stderr
    assert "'gate host' is not one)" in p.stderr, p.stderr
    p = host_sync(tmp_path, "site", "init", "--address", "10.20.0.5", "--run-as", "no-such-user-x")
    assert p.returncode == 3, p.stdout + p.stderr
    assert "refused: --run-as no-such-user-x: no such user on this host\n" in p.stderr, p.stderr
    assert not (tmp_path / "etc").exists() and not (tmp_path / "var").exists()


def test_rerun_keeps_the_ca_renew_reissues_the_server_cert(tmp_path):
    ok(tmp_path, "site", "init", "--address", "10.20.0.5")
    pki = SitePki(tmp_path / "etc")
    ca1 = pki.ca_pem.read_bytes()
    s1 = x509.load_pem_x509_certificate(pki.server_pem.read_bytes())
    ok(tmp_path, "site", "init", "--address", "10.20.0.5")
    assert pki.ca_pem.read_bytes() == ca1  # a second init does not cut off every reader
    before = pki.server_pem.read_bytes()
    p = host_sync(tmp_path, "site", "renew-cert", "--address", "10.20.0.256")
    assert p.returncode == 3 and "--address 10.20.0.256: not a valid IPv4 address" in p.stderr
    assert pki.server_pem.read_bytes() == before
    p = ok(tmp_path, "site", "renew-cert")
    assert "renewed" in p.stdout
    s2 = x509.load_pem_x509_certificate(pki.server_pem.read_bytes())
    assert s2.serial_number != s1.serial_number and s2.public_key() != s1.public_key()
    assert set(pki.server_names()) == {"10.20.0.5", "localhost", "127.0.0.1"}
    s2.verify_directly_issued_by(x509.load_pem_x509_certificate(ca1))
    assert "10.20.0.5" in ok(tmp_path, "site", "show").stdout


def test_rolling_the_ca_trusts_both_then_the_new_one(tmp_path):
    ok(tmp_path, "site", "init", "--address", "10.20.0.5")
    pki = SitePki(tmp_path / "etc")
    old = x509.load_pem_x509_certificate(pki.ca_pem.read_bytes())
    assert host_sync(tmp_path, "site", "roll-ca", "--finish").returncode == 3  # none under way
    ok(tmp_path, "site", "roll-ca")
    trust = x509.load_pem_x509_certificates(pki.trust_pem.read_bytes())
    assert len(trust) == 2 and trust[0] == old
    new = trust[1]
    # readers given trust.pem now accept the server as it is (old CA) and as it will be (new)
    x509.load_pem_x509_certificate(pki.server_pem.read_bytes()).verify_directly_issued_by(old)
    assert host_sync(tmp_path, "site", "roll-ca").returncode == 3  # one roll at a time
    ok(tmp_path, "site", "roll-ca", "--finish")
    srv = x509.load_pem_x509_certificate(pki.server_pem.read_bytes())
    srv.verify_directly_issued_by(new)
    assert x509.load_pem_x509_certificates(pki.trust_pem.read_bytes()) == [new]
    assert x509.load_pem_x509_certificate(pki.ca_pem.read_bytes()) == new


def test_readers_get_the_sites_broker_and_ca(tmp_path):
    ok(tmp_path, "site", "init", "--address", "10.20.0.5", "--port", "18883")
    ok(tmp_path, "sites", "add", "site-a", "--tax-id", "X1")
    p = ok(tmp_path, "readers", "add", "gate-01", "--site", "site-a", "--wifi-ssid", "site-a",
           "--config-out", str(tmp_path / "g.json"), env={"GV_WIFI_PASSWORD": "correct horse"})
    assert "the site's broker has its account" in p.stdout
    cfg = json.loads((tmp_path / "g.json").read_text())
    b = cfg["broker"]
    assert (b["host"], b["port"], b["tls"]) == ("10.20.0.5", 18883, True)
    assert b["ca"] == (tmp_path / "etc" / "ca" / "trust.pem").read_text()
    assert "user gate-01" in (tmp_path / "etc" / "broker" / "acl").read_text()
    assert (tmp_path / "etc" / "broker" / "passwd").read_text().startswith("host:$7$")


def test_the_registry_is_found_from_any_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = ok(tmp_path, "sites", "add", "site-a", "--tax-id", "X1")
    assert "created a new, empty registry at %s" % (tmp_path / "var" / "grindvakt.sqlite3") in p.stderr
    p = ok(tmp_path, "sites", "list", "--json", cwd=elsewhere)
    assert [s["id"] for s in json.loads(p.stdout)] == ["site-a"] and "notice" not in p.stderr
    assert not (elsewhere / "data").exists()


def test_default_locations(monkeypatch, tmp_path):
    monkeypatch.delenv("GV_DATA", raising=False)
    monkeypatch.delenv("GV_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(paths, "is_root", lambda: False)
    assert paths.data_dir() == tmp_path / ".local/share/grindvakt"
    assert paths.config_dir() == tmp_path / ".config/grindvakt"
    assert paths.unit_dir() == tmp_path / ".config/systemd/user"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert paths.data_dir() == tmp_path / "x" / "grindvakt"
    monkeypatch.setattr(paths, "is_root", lambda: True)
    assert paths.data_dir() == Path("/var/lib/grindvakt")
    assert paths.config_dir() == Path("/etc/grindvakt")
    assert paths.unit_dir() == Path("/etc/systemd/system")
    from host_sync.db import resolve_url
    assert resolve_url(None, None) == "sqlite:////var/lib/grindvakt/grindvakt.sqlite3"


@pytest.mark.skipif(not paths.is_root(), reason="started by root and by the user mosquitto: needs root")
def test_the_broker_starts_whoever_starts_it():
    """A root site's files are root:mosquitto: mosquitto started by root (it drops to the user
    mosquitto) and started directly as the user mosquitto (User= in a unit) both read them."""
    import pwd
    import shutil
    import socket
    import tempfile
    import time

    try:
        mq = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no user 'mosquitto' on this host")
    tmp = Path(tempfile.mkdtemp(prefix="gv-owner-"))
    os.chmod(tmp, 0o755)  # the user mosquitto must reach the files (pytest's folders are 0700)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ok(tmp, "site", "init", "--address", "127.0.0.1", "--bind", "127.0.0.1", "--port", str(port))
        conf = str(tmp / "etc" / "broker" / "mosquitto.conf")
        for how in ([], ["setpriv", "--reuid", str(mq.pw_uid), "--regid", str(mq.pw_gid),
                         "--init-groups", "--"]):
            p = subprocess.Popen(how + [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 10
                while True:
                    assert p.poll() is None, (how, p.stderr.read().decode())
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        assert time.monotonic() < deadline, "mosquitto did not listen"
                        time.sleep(0.05)
                status = Path("/proc/%d/status" % p.pid).read_text()
                assert re.search(r"Uid:\s+%d\b" % mq.pw_uid, status), status  # runs as mosquitto
            finally:
                p.terminate()
                p.wait(10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_an_account_change_the_broker_could_not_take_is_made_and_says_so(tmp_path):
    # The registry commits the reader first; a broker folder it then cannot write is a warning
    # and exit 5 ("done, something left to do"), never exit 3, which says nothing changed.
    ok(tmp_path, "site", "init", "--address", "10.20.0.5")
    ok(tmp_path, "sites", "add", "site-a", "--tax-id", "X1")
    passwd = tmp_path / "etc" / "broker" / "passwd"
    passwd.unlink()
    passwd.mkdir()  # unwritable as a file, for root too
    for args in (("readers", "add", "gate-01", "--site", "site-a"),
                 ("readers", "rename", "gate-01", "gate-02")):
        p = host_sync(tmp_path, *args)
        assert p.returncode == 5, (args, p.returncode, p.stdout, p.stderr)
        assert "WARNING: the change is made" in p.stderr and "passwd" in p.stderr, p.stderr
    p = ok(tmp_path, "readers", "list", "--json")
    assert [r["id"] for r in json.loads(p.stdout)] == ["gate-02"]
    p = host_sync(tmp_path, "broker", "config")
    assert p.returncode == 3 and "cannot write the broker's files" in p.stderr, p.stderr
    passwd.rmdir()
    p = ok(tmp_path, "broker", "config")
    assert "user gate-02" in (tmp_path / "etc" / "broker" / "acl").read_text()
