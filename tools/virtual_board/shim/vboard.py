# Virtual-board link (MicroPython side): the line to the launcher that carries what the
# hardware does (outputs, watchdog) out and what the world does (cards, keys) in.
# Part of the board-support shim; never deployed to a real board.
import json
import os
import socket
import time

BOARD = {}
CHIP = "esp32"
FLASH_DEV = None  # the FlashDev under the root filesystem (set by board_boot)
ROM_BYTES = 0  # the ROMFS image held in the heap (set by board_boot; flash on a real board)
_sock = None
_buf = b""
_last_poll = 0
_handlers = []  # callables taking one command line (str)
POLL_MS = 10


def _load_board():
    global BOARD, CHIP
    path = os.getenv("GV_VB_BOARD")
    if path:
        with open(path) as f:
            BOARD = json.load(f)
        CHIP = BOARD.get("chip", "esp32")


def _connect():
    global _sock
    port = os.getenv("GV_VB_HW")
    if not port:
        return
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", int(port))[0][-1])
    s.setblocking(False)
    _sock = s


def send(obj):
    """Report one hardware event to the launcher (a JSON line); silent when run standalone."""
    if _sock is None:
        return
    data = (json.dumps(obj) + "\n").encode()
    while data:
        try:
            n = _sock.send(data)
        except OSError:
            time.sleep_ms(1)
            continue
        data = data[n:]


def on_command(fn):
    _handlers.append(fn)


def poll(force=False):
    """Take in commands from the launcher; rate-limited because drivers call it on every access."""
    global _buf, _last_poll
    if _sock is None:
        return
    now = time.ticks_ms()
    if not force and time.ticks_diff(now, _last_poll) < POLL_MS:
        return
    _last_poll = now
    try:
        chunk = _sock.recv(512)
    except OSError:
        return
    if not chunk:
        return
    _buf += chunk
    while b"\n" in _buf:
        line, _buf = _buf.split(b"\n", 1)
        line = line.decode().strip()
        for fn in _handlers:
            fn(line)


def heap_report():
    """The heap as the board would report it: the live heap after a collection, without the
    ROMFS image (flash on a real board). Taken wherever the firmware last polled the launcher,
    i.e. inside its running loop; the shim and the PN532 simulator (~41 KB) are in it."""
    import gc

    gc.collect()
    send({"event": "heap", "alloc": gc.mem_alloc() - ROM_BYTES, "free": gc.mem_free(),
          "total": gc.mem_alloc() + gc.mem_free() - ROM_BYTES, "rom_bytes": ROM_BYTES})


def _on_line(line):
    if line == "heap":
        heap_report()


def reset_cause():
    return os.getenv("GV_VB_RESET") or "power-on"


def reboot(cause):
    """The launcher ends this interpreter and starts a new one, as a board reboots; nothing
    after the reset may run, so wait here for the end (an exception could be caught)."""
    send({"event": "reset-request", "cause": cause})
    while True:
        time.sleep_ms(100)


_load_board()
_connect()
_handlers.append(_on_line)
