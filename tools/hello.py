"""After a deploy's reset: did the reader come up on the site network, and if not, which step
failed? The reader's first authenticated HELLO is seen through the registry (what `host-sync
serve` recorded: no broker password to dig out), and its console (the serial port the deploy
already holds) tells why it is missing: Wi-Fi, the broker's address, TLS or its account.

    tap = ConsoleTap(serial_port_object); tap.start()
    w = RegistryHelloWaiter(config, db_url=None); w.start(); w.wait(60)   # NoHello says why
"""
from __future__ import annotations

import collections
import json
import os
import re
import threading
import time
from typing import Any, Iterable

LINES = 200  # console lines kept


class NoHelloError(Exception):
    """Raised as tools.deploy.NoHello (exit 5) by the deploy."""


class ConsoleTap:
    """Reads the board's console (a pyserial port already open) in a thread, line by line."""

    def __init__(self, serial: Any, skip: bytes = b""):
        self.serial = serial
        self._skip = skip  # what the stream starts with and is not the board's (the raw REPL's OK)
        try:
            serial.timeout = 0.2  # stop() is then never more than a read away
        except Exception:  # noqa: BLE001 - not a pyserial port (tests): keep its own
            pass
        self.lines: collections.deque[str] = collections.deque(maxlen=LINES)
        self._stop = threading.Event()
        self._buf = b""
        self._thread = threading.Thread(target=self._run, daemon=True, name="console-tap")

    def start(self) -> "ConsoleTap":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.serial.read(256)
            except Exception:  # noqa: BLE001 - the port went away (board unplugged): stop reading
                return
            if not chunk:
                continue
            self._buf += chunk
            if self._skip:
                if len(self._buf) < len(self._skip) and self._skip.startswith(self._buf):
                    continue
                if self._buf.startswith(self._skip):
                    self._buf = self._buf[len(self._skip):]
                self._skip = b""
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace").strip()
                if text:
                    self.lines.append(text)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        try:
            self.serial.close()
        except Exception:  # noqa: BLE001
            pass


_ERRNO_ADDR = ("ECONNREFUSED", "EHOSTUNREACH", "ETIMEDOUT", "ENETUNREACH", "ECONNRESET",
               "Errno 111", "Errno 113", "Errno 110", "Errno 104", "Errno 118", "Errno 116",
               "Errno -2", "Errno -202", "Errno -3", "timeout", "TimeoutError")
_TLS = ("mbedtls", "ssl", "tls", "x509", "cert", "handshake")  # matched in lower case


def diagnose(lines: Iterable[str], config: dict, hello_seen_by: str) -> str:
    """The step that failed, from what the reader printed (docs/host.md, "The site set-up")."""
    lines = list(lines)
    b = config.get("broker") or {}
    where = "%s:%s" % (b.get("host"), b.get("port"))
    ssid = (config.get("wifi") or {}).get("ssid")
    last = {k: None for k in ("wifi_bad", "wifi_ok", "mqtt_err", "mqtt_ok", "fatal")}
    for ln in lines:
        if ln.startswith("wifi: cannot join"):
            last["wifi_bad"] = ln
        elif ln.startswith("wifi: joined"):
            last["wifi_ok"] = ln
        elif ln.startswith("mqtt: connected"):
            last["mqtt_ok"] = ln
            last["mqtt_err"] = None
        elif ln.startswith("mqtt: "):
            last["mqtt_err"] = ln
        elif ln.startswith("grindvakt") and ("fatal" in ln or "unprovisioned" in ln or
                                              "config" in ln and "refused" in ln):
            last["fatal"] = ln
    if last["fatal"]:
        return "the reader did not start its network: it printed %r" % last["fatal"]
    if last["wifi_bad"] and not last["wifi_ok"] and not last["mqtt_ok"]:
        return ("step Wi-Fi failed: the reader cannot join %r (it printed %r): check the SSID and "
                "password in its config (host-sync readers config --wifi-ssid, GV_WIFI_PASSWORD) "
                "and the signal at the gate" % (ssid, last["wifi_bad"]))
    err = last["mqtt_err"]
    if err and not last["mqtt_ok"]:
        if "code 4" in err or "code 5" in err:
            return ("step credentials failed: the broker at %s refused the reader's account "
                    "(%r): the broker needs its account (host-sync broker config) and the "
                    "config must be the registry's current one (host-sync readers config)"
                    % (where, err))
        if any(t in err.lower() for t in _TLS):
            return ("step TLS failed: the reader reached %s but TLS did not go through (%r): the "
                    "config's CA must be the site's (host-sync site show), and the broker's "
                    "certificate must name %s (host-sync site renew-cert --address ...)"
                    % (where, err, b.get("host")))
        if any(t in err for t in _ERRNO_ADDR):
            return ("step broker address failed: the reader is on the network but cannot reach "
                    "the broker at %s (%r): check broker.host/port in its config and that the "
                    "broker listens on the site network (host-sync site show)" % (where, err))
        return "the reader cannot connect to the broker at %s: it printed %r" % (where, err)
    if last["mqtt_ok"]:
        return ("the reader is connected to the broker (%r) but %s: is the sync service running "
                "and connected (host-sync status)? Is this config the registry's current one "
                "(host-sync readers config)?" % (last["mqtt_ok"], hello_seen_by))
    tail = " | ".join(lines[-3:]) or "nothing"
    return ("the reader printed nothing about its network (last lines: %s): is it running its "
            "app? Look at its console (mpremote connect PORT repl)" % tail)


class RegistryHelloWaiter:
    """Waits until the registry records a HELLO from the reader after start() (host-sync serve
    records every authenticated HELLO with its time)."""

    def __init__(self, config: dict, db_url: str | None = None):
        from host_sync.db import Db, DbError, resolve_url

        self.cfg = config
        self.reader = config["reader_id"]
        url = resolve_url(db_url, None)
        if url.startswith("sqlite:///") and not os.path.exists(url[len("sqlite:///"):]):
            raise NoHelloError(
                "no registry at %s to watch for the hello: give --db URL (or GV_DB/GV_DATA), or "
                "--mqtt HOST:PORT with GV_MQTT_USER/GV_MQTT_PASSWORD, or --no-hello"
                % url[len("sqlite:///"):])
        try:
            self.db = Db(url)
        except DbError as e:
            raise NoHelloError("cannot open the registry to watch for the hello: %s" % e) from None
        if self.db.one("SELECT 1 FROM readers WHERE id = ?", (self.reader,)) is None:
            self.db.close()
            raise NoHelloError("reader %s is not in the registry (%s): add it with host-sync "
                               "readers add, or give --db" % (self.reader, url.split("@")[-1]))
        self.topic = "the registry (host-sync serve)"
        self.t0 = ""
        self.result: dict | None = None

    def start(self) -> None:
        from host_sync.timeutil import now_iso
        self.t0 = now_iso()

    def _seen(self) -> dict | None:
        row = self.db.one("SELECT firmware, health FROM readers WHERE id = ?", (self.reader,))
        if not row or not row[1]:
            return None
        try:
            h = json.loads(row[1])
        except ValueError:
            return None
        # a live HELLO only: a retained one (the last session's, seen again when serve
        # reconnects) must not pass for the reader just deployed
        at = (h.get("at") or {}).get("live_hello")
        if at and at > self.t0:
            return {"fw": row[0], "al_version": h.get("hello_version"), "at": at}
        return None

    def serve_up(self) -> bool:
        from host_sync import serve
        return any(r.get("running") and r["age_s"] < 20 and r["connected"]
                   for r in serve.instances(self.db))

    def serve_state(self) -> str:
        from host_sync import serve
        live = [r for r in serve.instances(self.db) if r.get("running") and r["age_s"] < 20]
        if not live:
            return "no sync service is running on this registry (host-sync site services)"
        if not any(r["connected"] for r in live):
            return "the sync service cannot reach the broker: %s" % live[0].get("error")
        return "the sync service saw no hello from it"

    def wait(self, timeout: float, console: ConsoleTap | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self._seen()
            if got:
                self.result = got
                return got
            time.sleep(0.3)
        raise NoHelloError("no hello from %s within %g s: %s; the files are deployed and "
                           "verified" % (self.reader, timeout,
                                         diagnose(console.lines if console else [], self.cfg,
                                                  self.serve_state())))

    def stop(self) -> None:
        self.db.close()


_STEP = re.compile(r"^step (\S+(?: \S+)?) failed")


def step_of(message: str) -> str | None:
    """'Wi-Fi', 'broker address', 'TLS', 'credentials' from a diagnosis (tests, reports)."""
    m = _STEP.search(message.split(": ", 1)[-1]) or re.search(r"step ([\w -]+?) failed", message)
    return m.group(1) if m else None
