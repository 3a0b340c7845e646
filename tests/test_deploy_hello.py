"""A deploy that sees no hello says which step failed, from what the reader printed on its console:
Wi-Fi, the broker's address, TLS or its account. The firmware prints those lines; a real reader
(the virtual board running the real firmware) against a real mosquitto shows each."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.broker import Broker, free_port
from tools import provision
from tools.hello import ConsoleTap, RegistryHelloWaiter, NoHelloError, diagnose, step_of
from tools.virtual_board.client import VirtualBoard

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "boards" / "esp32-devkitc-i2c.json"
CFG = {"reader_id": "gate-01", "wifi": {"ssid": "site-a"},
       "broker": {"host": "10.1.2.3", "port": 8883}}


@pytest.mark.parametrize("lines, step", [
    (["wifi: cannot join 'site-a' (status 201)"] * 3, "Wi-Fi"),
    (["wifi: joined 'site-a' as 10.1.2.50", "mqtt: 10.1.2.3:8883: OSError: [Errno 113] EHOSTUNREACH"],
     "broker address"),
    (["mqtt: 10.1.2.3:8883: OSError: [Errno 111] ECONNREFUSED"], "broker address"),
    (["mqtt: 10.1.2.3:8883: OSError: (-9984, 'MBEDTLS_ERR_X509_CERT_VERIFY_FAILED')"], "TLS"),
    (["mqtt: 10.1.2.3:8883: MQTTError: connection refused, code 5"], "credentials"),
])
def test_each_step_is_named_from_the_console(lines, step):
    msg = diagnose(["grindvakt 1.0: reader gate-01 at site-a up; allowlist v3"] + lines, CFG, "x")
    assert step_of(msg) == step, msg
    assert lines[-1] in msg  # the reader's own words are quoted


def test_connected_but_unseen_points_at_the_host_side():
    msg = diagnose(["mqtt: connected to 10.1.2.3:8883"], CFG, "no sync service is running")
    assert step_of(msg) is None and "no sync service is running" in msg and "host-sync status" in msg
    assert "printed nothing" in diagnose([], CFG, "x")


def _tapped(writes: list[bytes], lines: int, **kw) -> list[str]:
    """What a ConsoleTap on a pty took of `writes` (each written after a pause, as a board's
    output arrives in pieces), once it has `lines` lines or 5 s have passed."""
    import serial  # pyserial, what mpremote's transport holds

    master, slave = os.openpty()
    port = serial.Serial(os.ttyname(slave), 115200, timeout=5)
    tap = ConsoleTap(port, **kw).start()
    for i, w in enumerate(writes):
        if i:
            time.sleep(0.3)
        os.write(master, w)
    deadline = time.monotonic() + 5
    while len(tap.lines) < lines and time.monotonic() < deadline:
        time.sleep(0.05)
    tap.stop()
    os.close(master)
    os.close(slave)
    return list(tap.lines)


def test_console_tap_reads_what_the_board_prints():
    assert _tapped([b"boot\r\nwifi: joined 'x' as 10.0.0.2\r\npartial"], 2) == [
        "boot", "wifi: joined 'x' as 10.0.0.2"]


def test_console_tap_drops_the_raw_repls_ok_before_the_boards_first_line():
    # the OK split across reads, then the board booting
    got = _tapped([b"O", b"Kets Jun  8 2016\r\nmqtt: 10.1.2.3:8883: OSError: [Errno 111] "
                         b"ECONNREFUSED\r\n"], 2, skip=b"OK")
    assert got == ["ets Jun  8 2016", "mqtt: 10.1.2.3:8883: OSError: [Errno 111] ECONNREFUSED"]


def test_no_registry_is_said_not_created(tmp_path):
    with pytest.raises(NoHelloError, match="no registry at"):
        RegistryHelloWaiter({"reader_id": "gate-01"}, "sqlite:///%s" % (tmp_path / "none.sqlite3"))
    assert not (tmp_path / "none.sqlite3").exists()


@pytest.fixture(scope="module")
def broker():
    with Broker(readers=[("gate-01", "site-a")], tls=True) as b:
        yield b


def _config(b: Broker, **broker_over) -> dict:
    bc = dict(b.reader_broker_config("gate-01"), **broker_over)
    return provision.make_config("gate-01", "site-a", wifi_ssid="", wifi_password="",
                                 broker_host=bc["host"], broker_port=bc["port"],
                                 broker_password=bc["password"], ca_pem=bc["ca"],
                                 secret_hex=os.urandom(32).hex(), card_key_hex=os.urandom(16).hex(),
                                 pin_key_hex=os.urandom(16).hex(), virtual=True)


def _other_ca(tmp: Path) -> str:
    from host_sync.broker import make_test_ca
    return Path(make_test_ca(tmp / "other").cafile).read_text()


@pytest.mark.parametrize("case, step", [("port", "broker address"), ("password", "credentials"),
                                        ("ca", "TLS")])
def test_a_real_reader_says_which_step_failed(broker, tmp_path, case, step):
    over = {"port": {"port": free_port()}, "password": {"password": "not-its-password"},
            "ca": {"ca": _other_ca(tmp_path)}}[case]
    cfg = tmp_path / "config.json"
    provision.write_config(_config(broker, **over), cfg)
    with VirtualBoard(BOARD, tmp_path / "flash.img", config=cfg, fresh=True) as vb:
        vb.wait_for(lambda e: str(e.get("log", "")).startswith("mqtt: "), 60)
        lines = vb.logs()
    msg = diagnose(lines, _config(broker, **over), "x")
    assert step_of(msg) == step, (msg, lines[-5:])


def test_the_registry_waiter_takes_only_a_live_hello_after_it_started(tmp_path):
    """What serve records: a retained HELLO (the reader's last session, seen again when serve
    reconnects) must not pass for the reader just deployed; a live one after start() does."""
    from host_sync.db import Db
    from host_sync.store import RegistryData
    from gv.sync import protocol as P

    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    data = RegistryData(Db(url))
    data.reg.add_site("site-a", "Site A", "PL1")
    data.reg.add_reader("gate-01", "site-a")
    hello = P.parse_hello(P.hello_body(4, 0, 0, 8192, 60_000, 0, 0, "grindvakt-x"))
    data.reader_hello("gate-01", dict(hello, retained=False))  # before the deploy's reset
    w = RegistryHelloWaiter({"reader_id": "gate-01"}, url)
    time.sleep(0.01)
    w.start()
    time.sleep(0.01)
    data.reader_hello("gate-01", dict(hello, retained=True))
    with pytest.raises(NoHelloError, match="no hello from gate-01 within"):
        w.wait(0.5)
    data.reader_hello("gate-01", dict(hello, retained=False))
    got = w.wait(5)
    w.stop()
    assert got["fw"] == "grindvakt-x" and got["al_version"] == 4


def test_a_deploy_names_the_broker_failure_the_reader_printed_once_right_after_the_reset(tmp_path):
    """The reader says "mqtt: HOST:PORT: ... ECONNREFUSED" on its first try and then only every
    10th failure: the deploy must have read the console from the reset on to name the step (the
    reset's own read used to swallow the first seconds: "the reader printed nothing")."""
    from tests.test_install_hello import BOARD as STOCK_BOARD, config_for
    from tools import deploy

    with Broker(readers=[("gate-01", "site-a")]) as b, \
            VirtualBoard(STOCK_BOARD, tmp_path / "flash.img") as vb:
        vb.wait_for(lambda e: e.get("event") == "wdt-start", 30)
        cfg = config_for(b)
        cfg["broker"] = dict(cfg["broker"], port=free_port())  # nobody listens there
        with pytest.raises(deploy.NoHello) as e:
            deploy.deploy(vb.pty, STOCK_BOARD, config=cfg, hello_timeout=15,
                          mqtt="127.0.0.1:%d" % b.port, mqtt_user=b.host_user,
                          mqtt_password=b.host_password, progress=deploy.Progress(quiet=True),
                          build_root=tmp_path / "build")
        refused = [ln for ln in vb.logs() if "ECONNREFUSED" in ln]
    assert len(refused) == 1, refused  # printed once, right after the reset
    assert step_of(str(e.value)) == "broker address", str(e.value)
    assert refused[0] in str(e.value)
