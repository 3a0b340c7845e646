"""Rate-limited accounting of refused messages: junk costs the host a counter increment, not a
log line and an audit row each. Counts are kept per (reader, what, reason) and reported once
per interval as one log line and one `report(reader, what, reason, count)` call each (the
registry turns that into one audit row).

    rl = RejectLog(report, interval_s=10.0)
    rl.add("gate-01", "host", "bad MAC")      # cheap; reports the first one at once
    rl.flush()                                # what is due (serve calls it every tick)

The first refusal of a key is reported at once (an operator sees an attack start), the rest
of that interval together when it ends. A reason that names numbers from the message (a boot
number) is added as a constant `reason` plus its `detail`: the constant is what is counted and
throttled (an attacker varying the numbers still costs one report per interval), the latest
detail is what the report says.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from host_sync.untrusted import clean

log = logging.getLogger("host_sync.rejects")

Key = tuple[str, str, str]  # (reader or "?", who refused it: "host"/"reader", reason)


class RejectLog:
    def __init__(self, report: Callable[[str, str, str, int], None] | None = None,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024):
        self.report = report
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys  # bounded memory whatever names a flood uses
        self.pending: dict[Key, int] = {}
        self.last: dict[Key, float] = {}  # when each key was last reported
        self.detail: dict[Key, str] = {}  # the latest detail of a pending key
        self.total = 0
        self.reported = 0  # log lines / reports made
        self._lock = threading.Lock()

    def add(self, reader: str, who: str, reason: str, count: int = 1,
            detail: str | None = None) -> None:
        key = (reader, who, reason)
        now = self.clock()
        with self._lock:
            self.total += count
            if key not in self.last and key not in self.pending and len(self.last) >= self.max_keys:
                key = ("?", who, reason)  # too many distinct names: fold them together
            self.pending[key] = self.pending.get(key, 0) + count
            if detail is not None:
                self.detail[key] = detail
            due = now - self.last.get(key, -1e18) >= self.interval_s
        if due:
            self.flush(key)

    def flush(self, only: Key | None = None) -> int:
        """Report every key whose interval has passed (or `only`); returns reports made."""
        now = self.clock()
        out = []
        with self._lock:
            for key in [only] if only is not None else list(self.pending):
                n = self.pending.get(key)
                if not n or now - self.last.get(key, -1e18) < self.interval_s:
                    continue
                del self.pending[key]
                self.last[key] = now
                out.append((key[:2] + (self.detail.pop(key, key[2]),), n))
            if len(self.last) > self.max_keys:  # forget the quiet ones
                for k in [k for k, t in self.last.items() if now - t > self.interval_s][:256]:
                    del self.last[k]
        for (reader, who, reason), n in out:
            # a reader id from a topic, a reason naming a message's numbers: reader-supplied
            reader, reason = clean(reader, 64), clean(reason)
            self.reported += 1
            if who == "host":
                log.warning("rejected message from %s: %d x %s", reader, n, reason)
            else:
                log.warning("reader %s rejected %d message(s): %s", reader, n, reason)
            if self.report is not None:
                try:
                    self.report(reader, who, reason, n)
                except Exception:  # noqa: BLE001 - accounting never breaks the service
                    log.exception("recording refused messages")
        return len(out)
