"""Template filters: times in the site's zone, "3 min ago", event codes in words."""
from __future__ import annotations

from typing import Any

from gv import events as evc

from host_sync.timeutil import now, parse_iso


def ago(ts: str | None) -> str:
    if not ts:
        return "never"
    s = (now() - parse_iso(ts)).total_seconds()
    if s < 120:
        return "%d s ago" % max(0, s)
    if s < 7200:
        return "%d min ago" % (s // 60)
    if s < 172800:
        return "%.1f h ago" % (s / 3600)
    return "%d days ago" % (s // 86400)


def install(env: Any, cfg: Any) -> None:
    from host_sync.cli import _tz
    tz = _tz(cfg.tz)

    def local(ts: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        if not ts:
            return ""
        t = parse_iso(ts) if isinstance(ts, str) else ts
        return t.astimezone(tz).strftime(fmt)

    env.filters["ago"] = ago
    env.filters["local"] = local
    env.filters["kind"] = lambda k: evc.KINDS.get(k, str(k))
    env.filters["result"] = lambda r: evc.RESULTS.get(r, str(r))
    env.filters["reason"] = lambda r: evc.REASONS.get(r, str(r))
    from host_sync import health
    env.filters["health"] = health.summary  # the words of `readers list`
    env.globals["tz_name"] = cfg.tz
    from host_sync import importer
    env.globals["import_encodings"] = importer.OFFERED_ENCODINGS
