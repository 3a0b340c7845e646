# Memory in the field: the figures the reader reports in its HEALTH message (docs/protocol.md)
# and the MemoryError count that survives a reboot.
#
# A plain ESP32 has two heaps: MicroPython's GC heap (~112 KB) and the ESP-IDF heap beside it,
# where Wi-Fi (~28 KB) and every TLS link (16-20 KB, ~15 KB more during the handshake, its
# 16 KB record buffer in one piece) live. A reader that runs out of either fails in the field
# only, so it says how much of each it had at boot, after Wi-Fi, after TLS and at the lowest
# point of a rebuild, and refuses to start a TLS handshake that cannot fit.
import gc

from gv.compat import const

try:
    import esp32

    _idf_info = getattr(esp32, "idf_heap_info", None)  # absent on the unix port's esp32 shim
    _HEAP_DATA = getattr(esp32, "HEAP_DATA", 4)
except ImportError:
    _idf_info = None
    _HEAP_DATA = 4

UNKNOWN = 0xFFFFFFFF  # as protocol.UNKNOWN: a figure this port cannot know
# A TLS handshake needs mbedTLS's 16 KB input record buffer in one piece and ~35 KB in all
# (brief: 16-20 KB per link + ~15 KB during the handshake). Below either, connecting would fail
# with ENOMEM inside the handshake (or worse, starve Wi-Fi): wait and report instead.
TLS_BLOCK = const(17408)
TLS_FREE = const(36864)
ERR_PATH = "/memerr"  # the app's; None (tests, tools) keeps the count in RAM only
_path = None
_STEP = const(256)  # resolution of the largest-block probe

stages = {}  # protocol.M_* -> (stage, gc_free, gc_largest, idf_free, idf_largest)
errors = 0  # MemoryErrors since provisioning (loaded from ERR_PATH by load())
last_error = ""  # where the latest one happened
tls_deferred = 0  # TLS connects put off this boot for want of ESP-IDF heap


def gc_largest():
    """The largest block the GC heap can allocate now, to 256 bytes; UNKNOWN on an ESP32.
    MicroPython has no call that returns it (mem_info() only prints it), so it is found by
    trying: ~9 allocations, freed at once. Not on a port with an ESP-IDF heap: there a failed
    allocation grows the GC heap from the ESP-IDF heap (MICROPY_GC_SPLIT_HEAP_AUTO), which is
    the memory Wi-Fi and TLS need; its idf() figures are what decide whether a handshake fits.
    Not for a hot path; a failed try is this probe's own and is not counted as an error."""
    if _idf_info is not None:
        return UNKNOWN
    lo, hi = 0, gc.mem_free() + _STEP
    while hi - lo > _STEP:
        mid = (lo + hi) // 2
        try:
            b = bytearray(mid)
        except MemoryError:
            hi = mid
            continue
        b = None  # noqa: F841 - freed before the next, larger try
        lo = mid
    return lo


def idf():
    """(free, largest free block) of the ESP-IDF data heap; (UNKNOWN, UNKNOWN) where there is none."""
    if _idf_info is None:
        return UNKNOWN, UNKNOWN
    try:
        regions = _idf_info(_HEAP_DATA)  # [(total, free, largest free, min free), ...]
    except Exception:  # noqa: BLE001 - a port that has the name but not the call
        return UNKNOWN, UNKNOWN
    free = big = 0
    for r in regions:
        free += r[1]
        if r[2] > big:
            big = r[2]
    return free, big


def figures(stage, collect=True):
    """(stage, gc_free, gc_largest, idf_free, idf_largest) now."""
    if collect:
        gc.collect()
    f, b = idf()
    return (stage, gc.mem_free(), gc_largest(), f, b)


def record(stage, collect=True):
    """Keep the figures of a stage (boot, after Wi-Fi, after TLS) for the health report."""
    try:
        stages[stage] = figures(stage, collect)
    except MemoryError:  # the figures are not worth a crash
        note_error("memory figures")
    return stages.get(stage)


def low_water(stage):
    """Collect and keep the stage's figures if the GC heap has less free than its last record (the
    rebuild peak: the lowest point seen, not the garbage that happened to be there). The caller
    bounds how often (a collect costs a few ms on an ESP32's heap)."""
    gc.collect()
    free = gc.mem_free()
    s = stages.get(stage)
    if s is not None and free >= s[1]:
        return
    f, b = idf()
    stages[stage] = (stage, free, gc_largest(), f, b)


def tls_room():
    """True when a TLS handshake fits the ESP-IDF heap (always where it cannot be known). Collects
    the GC heap first: on ports where the GC heap and the ESP-IDF heap share memory, garbage held
    there is memory the handshake cannot have."""
    global tls_deferred
    gc.collect()
    f, b = idf()
    if f == UNKNOWN or (b >= TLS_BLOCK and f >= TLS_FREE):
        return True
    tls_deferred += 1
    return False


def load(path=ERR_PATH):
    """The MemoryError count kept across reboots (first line: count, second: where); later
    errors are kept in path."""
    global errors, last_error, _path
    _path = path
    try:
        with open(path) as f:
            errors = int(f.readline().strip() or 0)
            last_error = f.readline().strip()
    except (OSError, ValueError):
        pass
    return errors


def note_error(where, persist=True):
    """Count a MemoryError and keep the count on flash (a reboot usually follows; persist=False
    in a storm of them spares the flash). Never raises."""
    global errors, last_error
    errors += 1
    last_error = where
    path = _path
    if not persist or path is None:
        return
    try:
        gc.collect()
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n%s\n" % (errors, where[:48]))
        import os

        os.rename(tmp, path)
    except Exception:  # noqa: BLE001 - a full flash or no heap: the count stays in RAM
        pass
