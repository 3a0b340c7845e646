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


@pytest.mark.parametrize("field,value,why", [
    ("secret", "ab" * 16, "secret must be 32 bytes"),
    ("secret", "zz" * 32, "secret is not hex"),
    ("reader_id", "gate 01", "reader_id"),
    ("site", "x" * 33, "site: use 1-32"),
    ("broker", {"host": "h", "port": 70000, "tls": True, "user": "gate-01", "password": "x" * 20}, "broker.port"),
    ("broker", {"host": "h", "port": 8883, "tls": True, "user": "gate-01", "password": "x" * 20}, "broker.ca"),
    ("broker", {"host": "h", "port": 1883, "tls": False, "user": "gate-02", "password": "x" * 20}, "own account"),
    ("wifi", {"ssid": ""}, "wifi.ssid"),
    ("gate", {"pin_policy": "sometimes"}, "pin_policy"),
])
def test_refused_configs_name_the_field_never_a_secret(field, value, why):
    d = make()
    d[field] = value
    with pytest.raises(provision.ProvisionError) as e:
        provision.validate(d)
    assert why in str(e.value) and not _leaks(str(e.value))


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
                  "--broker-port", "1883", "--config-out", str(tmp_path / "gate-01.json")]):
        p = subprocess.run(host + args, cwd=ROOT, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    d = provision.load_config(str(tmp_path / "gate-01.json"))
    assert d["reader_id"] == "gate-01" and d["broker"]["user"] == "gate-01" and len(d["secret"]) == 64
    assert stat.S_IMODE((tmp_path / "gate-01.json").stat().st_mode) == 0o600
