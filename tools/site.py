"""A virtual site on real parts: a mosquitto with generated per-reader accounts, ACLs and TLS, the
host service (`host-sync serve`) on SQLite, and virtual readers running the real firmware, each
behind its own cuttable network path. The demo and the end-to-end tests both stand on this.

Everything an operator does goes through the operators' CLI (`python -m host_sync ...`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tools import mpy
from tools.netcut import NetCut
from tools.virtual_board.client import VirtualBoard

ROOT = mpy.ROOT
DEFAULT_BOARD = ROOT / "boards" / "esp32-devkitc-i2c.json"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_bin() -> str:
    for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.path.exists(p):
            return p
    raise RuntimeError("mosquitto not found: run `make setup`")


@dataclass
class SiteSpec:
    site_id: str
    name: str
    tax_id: str
    pin_policy: str = "never"


@dataclass
class ReaderSpec:
    reader_id: str
    site: str
    hold_ms: int = 500
    open_ms: int = 3000


@dataclass
class Reader:
    spec: ReaderSpec
    config: Path
    net: NetCut
    board: VirtualBoard | None = None
    extra: dict = field(default_factory=dict)


class VirtualSite:
    def __init__(self, workdir: Path, sites: list[SiteSpec], readers: list[ReaderSpec], *,
                 board: Path = DEFAULT_BOARD, heapsize: str | None = None, say: Callable[[str], None] | None = None,
                 romfs: bool = False):
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self.sites = sites
        self.specs = readers
        self.board_file = Path(board).resolve()
        self.heapsize = heapsize
        self.romfs = romfs  # readers run the frozen firmware's modules from a ROMFS image
        self.say = say or (lambda s: None)
        self.port = free_port()
        self.host_port = free_port()  # the host side's own loopback listener (serve, the monitor)
        self.broker: subprocess.Popen | None = None
        self.host: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.web_url = ""
        self.readers: dict[str, Reader] = {}
        self.tls = None

    # ---- the operators' CLI ----
    @property
    def env(self) -> dict:
        """This site's host: its own config folder (CA, broker) and registry, not the machine's."""
        return {"GV_CONFIG_DIR": str(self.dir / "host"), "GV_DATA": str(self.data), "GV_DB": ""}

    def cli(self, *args: str, check: bool = True, input: str | None = None,
            env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "host_sync", "--data-dir", str(self.data), "--as", "site-manager", *args]
        e = dict(os.environ, **self.env, **(env or {}))
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, input=input, env=e,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"host-sync {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    # ---- set-up ----
    def provision(self) -> None:
        """The host's site set-up (CA, broker certificate and config), sites, readers (secrets
        and broker accounts): all through the operators' CLI, as on a real host."""
        from host_sync.broker import TlsFiles
        from host_sync.pki import SitePki

        # as root, mosquitto drops to the user named here: the test's own (pytest's folders
        # are private to it); a real site keeps the default, the user "mosquitto"
        import getpass

        self.cli("site", "init", "--address", "127.0.0.1", "--bind", "127.0.0.1",
                 "--port", str(self.port), "--host-port", str(self.host_port),
                 "--run-as", getpass.getuser())
        pki = SitePki(self.dir / "host")
        self.tls = TlsFiles(str(pki.trust_pem), str(pki.server_pem), str(pki.server_key))
        for s in self.sites:
            self.cli("sites", "add", s.site_id, "--name", s.name, "--tax-id", s.tax_id,
                     "--pin-policy", s.pin_policy)
        cfg_dir = self.dir / "readers"
        cfg_dir.mkdir(exist_ok=True)
        for spec in self.specs:
            net = NetCut(self.port)  # the reader's own network path to the broker
            cfg = cfg_dir / f"{spec.reader_id}.json"
            self.cli("readers", "add", spec.reader_id, "--site", spec.site, "--config-out", str(cfg),
                     "--broker-port", str(net.port), "--virtual", "--hold-ms", str(spec.hold_ms),
                     "--open-ms", str(spec.open_ms))
            self.readers[spec.reader_id] = Reader(spec, cfg, net)

    def start_broker(self) -> None:
        conf = self.dir / "host" / "broker" / "mosquitto.conf"
        log = open(self.dir / "mosquitto.log", "ab")
        self.broker = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=log, stderr=log)
        _wait_port(self.port, 10)

    def stop_broker(self, kill: bool = True) -> None:
        if self.broker is not None:
            self.broker.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.broker.wait(10)
            self.broker = None

    def start_host(self) -> None:
        log = open(self.dir / "host.log", "ab")
        cmd = [sys.executable, "-m", "host_sync", "--data-dir", str(self.data), "serve"]
        self.host = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                     env=dict(os.environ, **self.env))

    def stop_host(self, kill: bool = False) -> None:
        if self.host is not None:
            self.host.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.host.wait(15)
            except subprocess.TimeoutExpired:
                self.host.kill()
                self.host.wait()
            self.host = None

    def start_web(self, user: str, password: str, role: str = "admin", port: int | None = None,
                  env: dict | None = None) -> str:
        """The operators' web console (`host-sync web`) on a local port, with one account;
        returns its address."""
        self.cli("users", "add", user, "--role", role, "--password-stdin", input=password + "\n")
        port = port or free_port()
        log = open(self.dir / "web.log", "ab")
        cmd = [sys.executable, "-m", "host_sync", "--data-dir", str(self.data), "web", "--host",
               "127.0.0.1", "--port", str(port), "--lag-limit", "30"]
        self.web = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                    env=dict(os.environ, **(env or {})))
        _wait_port(port, 30)
        self.web_url = f"http://127.0.0.1:{port}"
        return self.web_url

    def start_reader(self, reader_id: str, fresh: bool = True) -> VirtualBoard:
        r = self.readers[reader_id]
        vb = VirtualBoard(self.board_file, self.dir / "readers" / f"{reader_id}.img", config=r.config,
                          fresh=fresh, heapsize=self.heapsize, romfs=self.romfs)
        vb.start()
        r.board = vb
        return vb

    def start(self, cards_csv: Path | None = None) -> None:
        self.provision()
        if cards_csv is not None:
            self.import_cards(cards_csv)
        self.start_broker()
        self.start_host()
        for rid in self.readers:
            self.start_reader(rid)

    def import_cards(self, csv: Path, site: str | None = None) -> str:
        args = ["cards", "import", str(csv), "--apply"] + (["--site", site] if site else [])
        return self.cli(*args).stdout

    def stop(self) -> None:
        for r in self.readers.values():
            if r.board is not None:
                r.board.stop()
                r.board = None
            r.net.close()
        if self.web is not None:
            self.web.terminate()
            try:
                self.web.wait(15)
            except subprocess.TimeoutExpired:
                self.web.kill()
            self.web = None
        self.stop_host()
        self.stop_broker(kill=False)

    # ---- what the site looks like ----
    def readers_json(self) -> list[dict]:
        return json.loads(self.cli("readers", "list", "--json").stdout)

    def wait_converged(self, timeout: float = 60, readers: list[str] | None = None) -> float:
        """Wait until every (named) reader has applied its site's current version; returns seconds."""
        t0 = time.monotonic()
        want = set(readers or [rid for rid, r in self.readers.items() if r.board is not None])
        while True:
            rows = {r["id"]: r for r in self.readers_json()}
            if all(rid in rows and rows[rid]["applied_version"] == rows[rid]["head"]
                   and rows[rid]["head"] > 0 for rid in want):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                lag = {rid: (rows.get(rid) or {}).get("applied_version") for rid in want}
                raise TimeoutError(f"readers not converged after {timeout}s: {lag}")
            time.sleep(0.2)

    def __enter__(self) -> "VirtualSite":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def decided(e: dict) -> bool:
    """A report that shows a decision: the relay pulsing (grant) or the red LED (refusal)."""
    return (e.get("dev") == "relay" and e.get("on")) or (e.get("dev") == "led" and e.get("color") == "red"
                                                         and e.get("on"))


def present(vb: VirtualBoard, uid: str, hold_ms: int = 900, timeout: float = 10) -> dict:
    """Hold a card on a reader and return what the reader did: {"granted": bool, "t": s, ...}."""
    door_closed(vb, timeout)  # a grant while the door is still open shows no new relay pulse
    vb.mark()
    t0 = time.monotonic()
    vb.send(f"hold {uid} {hold_ms}")
    ev = vb.wait_for(decided, timeout)
    # the card is taken away after hold_ms; a reader reads nothing new until it has left
    time.sleep(max(0.0, hold_ms / 1000 - (time.monotonic() - t0)) + 0.25)
    return {"granted": ev.get("dev") == "relay", "t": ev["t"]}


def door_closed(vb: VirtualBoard, timeout: float = 10) -> None:
    """Wait until the reader's relay is off (it may still be open from the last grant)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        relay = [e for e in vb.events() if e.get("dev") == "relay"]
        if not relay or not relay[-1]["on"]:
            return
        time.sleep(0.05)
    raise TimeoutError("the door did not close")


def _wait_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


class AckMonitor:
    """Watches every reader's reports on the broker (with the host's account) and notes when each
    reader acknowledged each allowlist version: the moment a block is in force at that gate."""

    def __init__(self, site: VirtualSite):
        import struct
        import paho.mqtt.client as mqtt

        import host_sync  # noqa: F401 - firmware/ on sys.path
        from gv.sync import protocol as P
        from host_sync.cli import host_broker_account
        from host_sync.db import open_db
        from host_sync.registry import Registry

        db = open_db(None, str(site.data))
        user, pw = host_broker_account(Registry(db, actor="monitor"))
        self.acks: dict[str, dict[int, float]] = {}  # reader -> version -> monotonic time
        self._P, self._struct = P, struct
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"monitor-{os.getpid()}")
        c.username_pw_set(user, pw)
        c.on_message = self._on_message
        c.on_connect = lambda cl, *a: cl.subscribe("gv/+/+/out", qos=1)
        c.tls_set(ca_certs=site.tls.cafile)
        c.connect("127.0.0.1", site.host_port)  # ids there are free: serve shares the account
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, msg) -> None:
        P = self._P
        try:
            typ, _, _ = P.peek(msg.payload)
        except P.ProtoError:
            return
        if typ != P.T_ACK:
            return
        reader = msg.topic.split("/")[2]
        version = self._struct.unpack_from(">I", msg.payload, P.HDR)[0]
        self.acks.setdefault(reader, {}).setdefault(version, time.monotonic())

    def acked_at(self, reader: str, version: int) -> float | None:
        """When the reader first acknowledged `version` or a later one."""
        times = [t for v, t in self.acks.get(reader, {}).items() if v >= version]
        return min(times) if times else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
