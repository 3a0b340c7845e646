"""The host's link to the broker, said out loud: why a connection fails (nothing listening, no
answer, TLS, a refused account), logged at once and then every LOUD_EVERY_S while it keeps
failing (paho retries on its own), and kept as a state that `host-sync serve` writes into the
registry for `host-sync status`. paho hands its connect-failure callback no exception, but
calls it inside its `except OSError:`, so sys.exc_info() has it.
"""
from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from typing import Any

log = logging.getLogger("host_sync.broker")

LOUD_EVERY_S = 30.0


def explain(exc: BaseException | None, host: str, port: int, ca_file: str | None) -> str:
    """One line naming the step that failed."""
    where = "%s:%d" % (host, port)
    if exc is None:
        return "connection to %s failed" % where
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("TLS: the broker at %s has a certificate the host does not trust (%s; trusted: %s)"
                % (where, exc.verify_message or exc.reason, ca_file or "the system's CAs"))
    if isinstance(exc, ssl.SSLError):
        return ("TLS handshake with %s failed (%s): is that port the broker's TLS listener?"
                % (where, exc.reason or exc))
    if isinstance(exc, ConnectionRefusedError):
        from host_sync import units  # the unit (system or user) or the command by hand
        return "nothing listens at %s (is the broker running? %s)" % (
            where, units.start_hint(units.BROKER_UNIT))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer from %s (wrong address or a firewall)" % where
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the broker's name %r: %s" % (host, exc)
    if isinstance(exc, ConnectionResetError):
        return ("%s closed the connection at once (a TLS listener spoken to in plain MQTT, or "
                "the reverse?)" % where)
    return "cannot connect to %s: %s: %s" % (where, type(exc).__name__, exc)


class BrokerLink:
    """State of one client's connection; thread-safe (paho calls from its own thread)."""

    def __init__(self, host: str, port: int, user: str | None, ca_file: str | None):
        self.host, self.port, self.user, self.ca_file = host, port, user, ca_file
        self._lock = threading.Lock()
        self.connected = False
        self.since = time.time()  # of the current state
        self.error: str | None = None
        self.failures = 0  # tries in the current failure streak
        self._loud_at = 0.0
        self.changed = threading.Event()  # set on every state change (serve records it)

    @property
    def where(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def _fail(self, why: str) -> None:
        with self._lock:
            first = self.connected or self.failures == 0
            if self.connected:
                self.since = time.time()
            new_reason = why != self.error
            self.connected = False
            self.failures += 1
            self.error = why
            now = time.monotonic()
            loud = first or new_reason or now >= self._loud_at
            if loud:
                self._loud_at = now + LOUD_EVERY_S
            n, since = self.failures, self.since
        if loud:
            if n == 1:
                log.error("broker %s: %s; retrying", self.where, why)
            else:
                log.error("broker %s still unreachable after %d tries over %.0f s: %s; retrying",
                          self.where, n, time.time() - since, why)
        self.changed.set()

    # -- paho callbacks call these --
    def connect_failed(self) -> None:
        exc = sys.exc_info()[1]
        self._fail(explain(exc, self.host, self.port, self.ca_file))

    def refused(self, reason: Any) -> None:
        text = str(reason)
        hint = ""
        if "password" in text.lower() or "not authori" in text.lower():
            hint = (" (account %r: its password is the one in the registry, written to the "
                    "broker by 'host-sync broker config')" % self.user)
        self._fail("the broker refused the host: %s%s" % (text, hint))

    def up(self) -> None:
        with self._lock:
            was_down = self.failures
            down_s = time.time() - self.since
            self.connected, self.error, self.failures = True, None, 0
            self.since = time.time()
        if was_down:
            log.warning("host sync connected to the broker %s after %d failed tries (%.0f s)",
                        self.where, was_down, down_s)
        else:
            log.info("host sync connected to the broker %s", self.where)
        self.changed.set()

    def down(self, reason: Any) -> None:
        with self._lock:
            if not self.connected:
                return
        self._fail("connection lost: %s" % reason)

    def state(self) -> dict:
        with self._lock:
            return {"broker": self.where, "connected": self.connected,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
                    "error": self.error, "failures": self.failures}
