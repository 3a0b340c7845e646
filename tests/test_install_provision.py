"""Reader configs: the contract's shape, validated the way the device validates, never showing a secret."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tools import provision

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"secret": "a1" * 32, "card": "b2" * 16, "pin": "c3" * 16, "wifi": "wifi-pass-d4d4", "mqtt": "e5" * 12}


def make(**over):
    kw = dict(wifi_ssid="site-a-gates", wifi_password=SECRETS["wifi"], broker_host="10.0.0.2",
              broker_port=8883, broker_password=SECRETS["mqtt"], secret_hex=SECRETS["secret"],
              card_key_hex=SECRETS["card"], pin_key_hex=SECRETS["pin"],
              ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    kw.update(over)
    return provision.make_config("gate-01", "site-a", **kw)


def _leaks(text):
    return [k for k, v in SECRETS.items() if v in text]


def test_config_has_the_contract_shape_and_loads_on_the_device_loader():
    d = make()
    assert set(d) == {"reader_id", "site", "wifi", "broker", "secret", "site_keys", "gate"}
    assert d["broker"]["user"] == "gate-01" and d["broker"]["tls"] is True
    from gv import config as fw  # the firmware's own loader accepts it
    c = fw.Config(json.loads(provision.encode(d)))
    assert c.secret == bytes.fromhex(SECRETS["secret"]) and c.gate["pin_policy"] == "card"


CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
BROKER = {"host": "10.0.0.2", "port": 8883, "tls": True, "ca": CA, "user": "gate-01", "password": "x" * 20}


def _with(d, path, value):
    node = d
    for k in path[:-1]:
        node = node[k]
    if value is DELETE:
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return d


DELETE = object()
# (where, bad value, what the message must say): every kind of setting a reader could not use
BAD = [
    (("secret",), "ab" * 16, "secret: must be 32 bytes"),
    (("secret",), "zz" * 32, "secret: is not hex"),
    (("secret",), DELETE, "secret: missing"),
    (("site_keys", "card"), "00" * 8, "site_keys.card: must be 16 bytes"),
    (("site_keys", "pin"), DELETE, "site_keys.pin: missing"),
    (("reader_id",), "gate 01", "reader_id: missing or not 1..32"),
    (("site",), "x" * 33, "site: missing or not 1..32"),
    (("broker", "port"), 70000, "broker.port: 70000 is outside 1..65535"),
    (("broker", "port"), 0, "broker.port: 0 is outside 1..65535"),
    (("broker", "port"), "8883", "broker.port: must be a whole number 1..65535"),
    (("broker", "port"), DELETE, "broker.port: missing"),
    (("broker", "host"), DELETE, "broker.host: missing"),
    (("broker", "host"), "127.0.0.1", "broker.host: 127.0.0.1 is the reader itself"),
    (("broker", "host"), "localhost", "broker.host: localhost is the reader itself"),
    (("broker", "ca"), DELETE, "broker.ca: missing; TLS needs the site CA"),
    (("broker", "ca"), "not a pem", "broker.ca: missing; TLS needs the site CA"),
    (("broker", "tls"), "yes", "broker.tls: must be true or false"),
    (("broker", "user"), "gate-02", "broker.user: must be the reader's own account"),
    (("broker", "password"), "short", "broker.password: missing or shorter than 16"),
    (("broker", "keepalive"), 0, "broker.keepalive: 0 is outside 1..3600"),
    (("wifi", "ssid"), "", "wifi.ssid: missing"),
    (("wifi", "ssid"), "s" * 33, "wifi.ssid: missing or longer than 32 bytes"),
    (("wifi", "password"), "", "wifi.password: missing (8..63 characters; say \"open\": true"),
    (("wifi", "password"), DELETE, "wifi.password: missing"),
    (("wifi", "password"), "short", "wifi.password: 5 characters, WPA2 takes 8..63"),
    (("wifi",), DELETE, "wifi: missing"),
    (("gate", "hold_ms"), -5, "gate.hold_ms: -5 is outside 100..10000"),
    (("gate", "hold_ms"), 1.5, "gate.hold_ms: must be a whole number 100..10000"),
    (("gate", "hold_ms"), True, "gate.hold_ms: must be a whole number"),
    (("gate", "open_ms"), 0, "gate.open_ms: 0 is outside 500..60000"),
    (("gate", "open_ms"), 999999999, "gate.open_ms: 999999999 is outside 500..60000"),
    (("gate", "pin_policy"), "sometimes", "gate.pin_policy: must be never, card or always"),
    (("gate", "pin_tries"), 0, "gate.pin_tries: 0 is outside 1..20"),
    (("gate", "lock_cap_ms"), 2 ** 31, "gate.lock_cap_ms: 2147483648 is outside 1000..86400000"),
    (("gate", "hold_msec"), 500, "gate.hold_msec: unknown setting"),
    (("gate", "pin_min"), 6, "gate.pin_min: 6 is more than gate.pin_max"),
    (("virtual",), "yes", "virtual: must be true or false"),
]


def _good():
    d = make(gate={"pin_max": 5})
    d["broker"] = dict(BROKER)
    return d


@pytest.mark.parametrize("path,value,why", BAD, ids=lambda v: ".".join(v) if isinstance(v, tuple) else None)
def test_refused_configs_name_the_field_and_the_range_never_a_secret(path, value, why):
    d = _with(_good(), path, value)
    errs = provision.problems(d)
    assert errs[0].startswith(why) and len(errs) <= 2, errs  # a bad reader_id also fails broker.user
    with pytest.raises(provision.ProvisionError) as e:
        provision.validate(d)
    assert why in str(e.value) and not _leaks(str(e.value))
    from gv import config as fw  # the reader refuses it with the same words (as an ESP32 would)
    with pytest.raises(fw.ConfigError) as e:
        fw.Config(json.loads(provision.encode(d)), real=True)
    assert why in str(e.value)


def test_open_wifi_is_said_explicitly_and_a_virtual_config_is_for_a_virtual_board_only():
    d = make(wifi_password="", wifi_open=True)
    assert d["wifi"] == {"ssid": "site-a-gates", "password": "", "open": True}
    assert provision.problems(_with(make(wifi_password="", wifi_open=True), ("wifi", "password"),
                                    "pw-on-open")) == [
        "wifi.password: must be empty on an open network (wifi.open is true)"]
    v = make(broker_host="127.0.0.1", wifi_ssid="", virtual=True)
    assert "wifi" not in v and v["virtual"] is True  # a virtual board: loopback broker, no Wi-Fi
    assert provision.problems(v) == []
    assert provision.problems(v, real=True)[0].startswith("virtual: this config is for a virtual board")
    from gv import config as fw
    fw.Config(v, real=False)  # the unix port (virtual board) boots it


def test_write_is_private_and_check_cli_shows_it_redacted(tmp_path):
    p = provision.write_config(make(), provision.config_path("gate-01", tmp_path))
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and provision.load_config(str(p)) == make()
    env = dict(os.environ, GV_READERS_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "tools.provision", "check", "gate-01"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["reader_id"] == "gate-01" and shown["secret"] == provision.REDACTED
    assert not _leaks(out.stdout + out.stderr)
    missing = subprocess.run([sys.executable, "-m", "tools.provision", "check", "gate-09"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "readers add gate-09" in missing.stderr


def test_the_host_cli_config_is_accepted_as_written(tmp_path):
    """`host-sync readers add --config-out` writes the file deploy reads: the two agree on its shape."""
    env = dict(os.environ, GV_DATA=str(tmp_path / "d"), GV_WIFI_PASSWORD=SECRETS["wifi"])
    host = [sys.executable, "-m", "host_sync"]
    for args in (["sites", "add", "site-a", "--tax-id", "5560001111"],
                 ["readers", "add", "gate-01", "--site", "site-a", "--no-tls", "--wifi-ssid", "gates",
                  "--broker-port", "1883", "--broker-host", "10.0.0.2", "--config-out", str(tmp_path / "gate-01.json")]):
        p = subprocess.run(host + args, cwd=ROOT, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    d = provision.load_config(str(tmp_path / "gate-01.json"))
    assert d["reader_id"] == "gate-01" and d["broker"]["user"] == "gate-01" and len(d["secret"]) == 64
    assert stat.S_IMODE((tmp_path / "gate-01.json").stat().st_mode) == 0o600
