"""`readers add` / `readers config` refuse every setting a reader could not boot with, naming the
field and the allowed range, and then change nothing: no reader registered, no file written, no
audit entry (exit 3 means nothing changed). The checks are the firmware's own (gv.config)."""
from __future__ import annotations

import json

import pytest

from tests.host_kit import Operator, database

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def op(tmp_path, monkeypatch):
    monkeypatch.setenv("GV_WIFI_PASSWORD", "site-a-wifi-pass")
    with database("sqlite", tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--tax-id", "PL1234-5678")
        (tmp_path / "ca.pem").write_text(CA)
        yield o


def _good(tmp_path):
    return ["--config-out", str(tmp_path / "out" / "gate-01.json"), "--ca", str(tmp_path / "ca.pem"),
            "--broker-host", "10.0.0.5", "--wifi-ssid", "gates"]


BAD = [
    (["--hold-ms", "-5"], "gate.hold_ms: -5 is outside 100..10000"),
    (["--open-ms", "0"], "gate.open_ms: 0 is outside 500..60000"),
    (["--open-ms", "999999999"], "gate.open_ms: 999999999 is outside 500..60000"),
    (["--broker-port", "99999"], "--broker-port 99999 is outside 1-65535"),
    (["--broker-host", "127.0.0.1"], "broker.host: 127.0.0.1 is the reader itself"),
    (["--broker-host", ""], "broker.host: missing"),
    # digits and dots are an IPv4 address or a typo, never a host name (ids.address_problem)
    (["--broker-host", "10.0.0.256"], "--broker-host 10.0.0.256: not a valid IPv4 address"),
    (["--broker-host", "gate host"], "--broker-host gate host: neither an IP address nor a host"),
    (["--ca", "/nope.pem"], "broker.ca: cannot read the CA certificate /nope.pem"),
    (["--wifi-ssid", ""], "wifi.ssid: missing or longer than 32 bytes (--wifi-ssid, 1..32)"),
]


@pytest.mark.parametrize("args,why", BAD, ids=[a[0][0] + "=" + a[0][1] for a in BAD])
def test_readers_add_refuses_a_bad_value_and_changes_nothing(op, tmp_path, args, why):
    audit = op.ok("audit")
    assert op("readers", "add", "gate-01", "--site", "site-a", *_good(tmp_path), *args) == 3
    assert why in op.err, op.err
    assert json.loads(op.ok("readers", "list", "--json")) == []  # not registered
    assert not (tmp_path / "out" / "gate-01.json").exists()
    assert op.ok("audit") == audit
    op.ok("readers", "add", "gate-01", "--site", "site-a", *_good(tmp_path))  # the id is still free


def test_missing_ca_and_empty_wifi_password_are_refused_unless_said(op, tmp_path, monkeypatch):
    base = ["readers", "add", "gate-01", "--site", "site-a", "--broker-host", "10.0.0.5",
            "--wifi-ssid", "gates", "--config-out", str(tmp_path / "gate-01.json")]
    assert op(*base) == 3 and "broker.ca: missing; TLS needs the site CA" in op.err
    monkeypatch.setenv("GV_WIFI_PASSWORD", "")
    assert op(*base, "--ca", str(tmp_path / "ca.pem")) == 3
    assert "wifi.password: missing (8..63 characters" in op.err
    # the CLI's own ways, not config.json's field ("open": true) the operator never edits
    assert ("set it in the environment variable GV_WIFI_PASSWORD, or give --wifi-open for an "
            "open network") in op.err, op.err
    assert '"open"' not in op.err
    monkeypatch.setenv("GV_WIFI_PASSWORD", "site-a-wifi-pass")
    assert op(*base, "--ca", str(tmp_path / "ca.pem"), "--wifi-open") == 3
    assert "wifi.password: must be empty with --wifi-open (unset GV_WIFI_PASSWORD)" in op.err
    monkeypatch.setenv("GV_WIFI_PASSWORD", "")
    op.ok(*base, "--ca", str(tmp_path / "ca.pem"), "--wifi-open")
    cfg = json.loads((tmp_path / "gate-01.json").read_text())
    assert cfg["wifi"] == {"ssid": "gates", "password": "", "open": True}


def test_without_a_config_the_given_settings_are_still_checked(op):
    assert op("readers", "add", "gate-01", "--site", "site-a", "--hold-ms", "-5") == 3
    assert "gate.hold_ms" in op.err and json.loads(op.ok("readers", "list", "--json")) == []
    op.ok("readers", "add", "gate-01", "--site", "site-a")  # the rest is checked when written


def test_readers_config_refuses_and_keeps_the_old_file(op, tmp_path):
    out = tmp_path / "gate-01.json"
    op.ok("readers", "add", "gate-01", "--site", "site-a", "--config-out", str(out),
          "--ca", str(tmp_path / "ca.pem"), "--broker-host", "10.0.0.5", "--wifi-ssid", "gates")
    before = out.read_bytes()
    assert op("readers", "config", "gate-01", "--config-out", str(out), "--ca", str(tmp_path / "ca.pem"),
              "--broker-host", "10.0.0.5", "--wifi-ssid", "gates", "--open-ms", "0") == 3
    assert "gate.open_ms" in op.err and out.read_bytes() == before
    assert op("readers", "config", "gate-01", "--config-out", str(out), "--ca", str(tmp_path / "ca.pem"),
              "--broker-host", "192.168.10.300", "--wifi-ssid", "gates") == 3
    assert "--broker-host 192.168.10.300: not a valid IPv4 address" in op.err
    assert out.read_bytes() == before
    # a virtual board on this host: loopback broker and no Wi-Fi, said explicitly
    op.ok("readers", "config", "gate-01", "--config-out", str(out), "--no-tls", "--virtual",
          "--broker-host", "127.0.0.1")
    cfg = json.loads(out.read_text())
    assert cfg["virtual"] is True and "wifi" not in cfg and cfg["broker"]["host"] == "127.0.0.1"


def test_ids_the_readers_topics_could_not_carry_are_refused_up_front(op):
    assert op("sites", "add", "s" * 33, "--tax-id", "PL1") == 3 and "max 32" in op.err
    op.ok("sites", "add", "s" * 32, "--tax-id", "PL1")
    assert op("readers", "add", "g" * 33, "--site", "site-a") == 3 and "max 32" in op.err
    assert op("cards", "add", "BB-2401-000001", "--uid", "04a1b2c3", "--valid-from", "31-12-2026") == 3
    assert "--valid-from '31-12-2026' is not a date YYYY-MM-DD" in op.err
