"""A reader's health as the host keeps it: the figures of its HELLO and HEALTH reports merged into
one record (the registry's readers.health, JSON), each figure with the time it was last reported,
and what needs an operator's attention, worst first (`readers list`, `readers show`, `status`).

Memory thresholds: a plain ESP32 gives MicroPython ~112 KB of GC heap; the reader warns the
operator before the heap is too cut up to take a rebuild's buffers or the ESP-IDF heap too small
for a TLS handshake (docs/protocol.md, HEALTH).
"""
from __future__ import annotations

from typing import Any

import host_sync  # noqa: F401 - puts firmware/ on sys.path
from gv.sync import protocol as P

HEALTH_BITS = {P.H_ALLOWLIST: "allowlist needs a resend", P.H_PN532: "PN532 failing",
               P.H_FLASH: "flash write failed", P.H_EVENTS: "events dropped",
               P.H_CLOCK: "clock not set", P.H_FULL: "flash full",
               P.H_MEMORY: "memory errors"}
GC_FREE_MIN = 16 * 1024  # GC heap free below this: warn
GC_BLOCK_MIN = 8 * 1024  # largest GC block below this: a rebuild's 4 KB buffers may not fit
IDF_BLOCK_MIN = 17 * 1024  # largest ESP-IDF block below this: no TLS handshake (gv.memory.TLS_BLOCK)
STAGES = ("now", "boot", "wifi", "tls", "rebuild")
_HELLO_KEYS = ("free_flash", "free_heap", "events_pending", "snap_version", "snap_offset")
_HEALTH_KEYS = ("free_flash", "flash_size", "need_flash", "events_pending", "mem_errors",
                "tls_deferred", "uptime_s", "retry_s")


def merge(old: dict[str, Any] | None, report: dict[str, Any], kind: str, at: str) -> dict[str, Any]:
    """The stored health after a HELLO (kind "hello") or a HEALTH report (kind "health")."""
    h = {k: v for k, v in (old or {}).items() if k != "raw"}
    stamps = dict(h.get("at") or {})
    keys = _HELLO_KEYS if kind == "hello" else _HEALTH_KEYS
    for k in keys:
        if k in report:
            h[k] = report[k]
            stamps[k] = at
    if kind == "hello":
        h["hello_version"] = report.get("al_version", report.get("version"))
        stamps["hello_version"] = at
        if not report.get("retained"):
            stamps["live_hello"] = at  # the reader said it now: what a deploy waits for
    else:
        h["al_version"] = report.get("al_version")
        mem = dict(h.get("mem") or {})
        for stage, figs in (report.get("mem") or {}).items():
            mem[stage] = list(figs)
            stamps["mem." + stage] = at
        h["mem"] = mem
    bits = int(report.get("health", 0) or 0)
    h["bits"] = bits
    stamps["bits"] = at
    h["problems"] = ",".join(n for b, n in HEALTH_BITS.items() if bits & b) or "none"
    stamps["problems"] = at
    if kind == "health" and not report.get("need_flash") and not bits & P.H_FULL:
        h.pop("attention", None)  # the update went through (or nothing was refused)
    att = attention(h)
    if att:
        h["attention"] = att
    h["at"] = stamps
    return h


def attention(h: dict[str, Any]) -> str | None:
    """'flash full: ...' while the reader says its flash has no room for an update."""
    bits = int(h.get("bits", 0) or 0)
    need = int(h.get("need_flash", 0) or 0)
    if not bits & P.H_FULL and not need:
        return None
    free = int(h.get("free_flash", 0) or 0)
    txt = "flash full"
    if need:
        txt += ": an update needs %s, %s free" % (kib(need), kib(free))
    return txt


def kib(n: int) -> str:
    return "%d KB" % round(n / 1024) if n >= 1024 else "%d B" % n


def memory_warnings(h: dict[str, Any]) -> list[str]:
    out = []
    for stage in STAGES:
        figs = (h.get("mem") or {}).get(stage)
        if not figs:
            continue
        gc_free, gc_big, idf_free, idf_big = figs
        if gc_free < GC_FREE_MIN or (gc_big != P.UNKNOWN and gc_big < GC_BLOCK_MIN):
            out.append("GC heap low at %s (%s free%s)" % (
                stage, kib(gc_free), "" if gc_big == P.UNKNOWN else
                ", largest block %s" % kib(gc_big)))
        if idf_big != P.UNKNOWN and idf_big < IDF_BLOCK_MIN:
            out.append("ESP-IDF heap low at %s (%s free, largest block %s: no TLS handshake)"
                       % (stage, kib(idf_free), kib(idf_big)))
    if h.get("mem_errors"):
        out.append("%d MemoryError(s) since provisioning" % int(h["mem_errors"]))
    if h.get("tls_deferred"):
        out.append("%d TLS connect(s) put off for want of ESP-IDF heap" % int(h["tls_deferred"]))
    return out


def problems(h: dict[str, Any] | None) -> list[str]:
    """What needs attention, worst first: a refused update, memory, then the reader's own bits."""
    h = h or {}
    out = []
    att = h.get("attention")
    if att:
        out.append("NEEDS ATTENTION: " + att)
    out += memory_warnings(h)
    for name in (h.get("problems") or "none").split(","):
        if name and name != "none" and not (att and name == "flash full") \
                and not (name == "memory errors" and h.get("mem_errors")):
            out.append(name)
    return out


def summary(h: dict[str, Any] | None) -> str:
    """The HEALTH column of `readers list`: problems first, then the main figures."""
    h = h or {}
    figs = []
    if "free_flash" in h:
        figs.append("flash %s free" % kib(int(h["free_flash"])))
    now = (h.get("mem") or {}).get("now")
    if now:
        figs.append("heap %s" % kib(now[0]) + ("" if now[1] == P.UNKNOWN
                                                else " (block %s)" % kib(now[1])))
        if now[3] != P.UNKNOWN:
            figs.append("idf %s (block %s)" % (kib(now[2]), kib(now[3])))
    elif "free_heap" in h:
        figs.append("heap %s" % kib(int(h["free_heap"])))
    parts = problems(h) or ["ok"]
    return "; ".join(parts + figs) if h else "-"
