"""Rolling the site CA without cutting a reader off: a reader given the trust file during the roll
(old and new CA) stays connected across `site roll-ca --finish`, when the broker's certificate
comes from the new CA. A real reader (the virtual board, the real firmware's TLS) on the real
mosquitto started from the site's config."""
from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import gv.sync.mqtt as fw_mqtt  # noqa: E402  (firmware/ on sys.path via conftest)
from tools.virtual_board.client import VirtualBoard

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "boards" / "esp32-wrover-i2c.json"

pytestmark = pytest.mark.skipif(
    not hasattr(fw_mqtt, "pem_certs"),
    reason="the firmware pins only the first CA of its config (gv.sync.mqtt.pem_to_der): a reader "
           "cannot trust old and new during a roll until it loads every CA in the file")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_reader_given_both_cas_stays_connected_across_the_roll(tmp_path):
    env = dict(os.environ, GV_CONFIG_DIR=str(tmp_path / "etc"), GV_DATA=str(tmp_path / "var"),
               GV_DB="")

    def cli(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "host_sync", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    port = free_port()
    cli("site", "init", "--address", "127.0.0.1", "--bind", "127.0.0.1", "--port", str(port),
        "--run-as", getpass.getuser())
    cli("sites", "add", "site-a", "--tax-id", "PL1")
    cli("site", "roll-ca")  # step 1: trust.pem holds old and new
    cfg = tmp_path / "gate-01.json"
    cli("readers", "add", "gate-01", "--site", "site-a", "--virtual", "--config-out", str(cfg))
    assert json.loads(cfg.read_text())["broker"]["ca"].count("BEGIN CERTIFICATE") == 2
    conf = str(tmp_path / "etc" / "broker" / "mosquitto.conf")

    def broker() -> subprocess.Popen:
        return subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    mq = broker()
    try:
        with VirtualBoard(BOARD, tmp_path / "flash.img", config=cfg, fresh=True) as vb:
            vb.wait_for(lambda e: str(e.get("log", "")).startswith("mqtt: connected"), 60)
            cli("site", "roll-ca", "--finish")  # the broker's certificate: from the new CA
            mq.send_signal(signal.SIGTERM)
            mq.wait(10)
            vb.mark()
            mq = broker()
            got = vb.wait_for(lambda e: str(e.get("log", "")).startswith("mqtt: "), 90)
            assert got["log"].startswith("mqtt: connected"), vb.logs()[-5:]
    finally:
        if mq.poll() is None:
            mq.terminate()
            mq.wait(10)
