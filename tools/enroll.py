"""Desk enrolment: read a card on a PN532 plugged into the office PC over a USB-serial adapter
(the PN532's HSU/UART at 115200), with adafruit's PN532 driver, and print its UID; or register
it in the card registry.

    python -m tools.enroll --port /dev/ttyUSB0
    python -m tools.enroll --port /dev/ttyUSB0 --register BB-2611-000123 --holder "Ann Berg"
    python -m tools.enroll --port /dev/ttyUSB0 --register BB-2611-000123 --site site-a --site site-b

The UID is printed in hex with every byte as two digits, so leading zero bytes are kept
(00000a1b, never a1b). --register runs the operators' own command,
`host-sync cards add <number> --uid <hex> [--holder NAME] [--site S]...` (as `python -m host_sync`, or the
command given with --host-sync), so the registry's rules and messages apply unchanged; its
database is chosen the usual way (GV_DB / GV_DATA, or --db passed through).

Exit codes: 0 read (and registered), 1 no card within --wait, 2 usage, 3 reader problem,
4 registration refused (host-sync's message is shown).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Sequence

os.environ.setdefault("BLINKA_OS_AGNOSTIC", "1")  # adafruit's driver on a PC: no board module

CARD_NO = re.compile(r"^[A-Z]{2}-\d{4}-\d{6}$")


def open_reader(port: str, baud: int):
    """adafruit's PN532_UART on a pyserial port (it wants write, read(n), in_waiting,
    reset_input_buffer: pyserial has them)."""
    import serial
    from adafruit_pn532.uart import PN532_UART

    ser = serial.Serial(port, baudrate=baud, timeout=0.1)
    return ser, PN532_UART(ser)


def read_uid(pn, wait_s: float) -> bytes | None:
    """The UID of the card held on the reader, or None if none came within wait_s."""
    pn.SAM_configuration()
    deadline = time.monotonic() + wait_s
    while True:
        uid = pn.read_passive_target(timeout=0.5)
        if uid is not None:
            return bytes(uid)
        if time.monotonic() >= deadline:
            return None


def host_sync_cmd(custom: str | None) -> list[str]:
    return shlex.split(custom) if custom else [sys.executable, "-m", "host_sync"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.enroll", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", required=True, help="the USB-serial port the PN532 is on, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, default=115200, help="PN532 HSU speed (default 115200)")
    p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for a card (default 15)")
    p.add_argument("--register", metavar="BB-YYMM-NNNNNN", help="register the card under this number")
    p.add_argument("--holder", help="the holder's name (with --register)")
    p.add_argument("--site", action="append", help="a site the card may enter (with --register; "
                                                   "repeatable): its gates get it once it is activated")
    p.add_argument("--db", help="passed to host-sync (database URL)")
    p.add_argument("--host-sync", dest="host_sync", help="command that runs host-sync "
                   "(default: this Python's `-m host_sync`)")
    a = p.parse_args(argv)
    number = None
    if a.register:
        number = a.register.strip().upper()
        if not CARD_NO.match(number):
            print("card number %r is not BB-YYMM-NNNNNN" % a.register, file=sys.stderr)
            return 2
    elif a.holder or a.site:
        print("--holder and --site only go with --register", file=sys.stderr)
        return 2
    try:
        ser, pn = open_reader(a.port, a.baud)
    except Exception as e:  # no port, no chip answering, wrong speed
        print("no PN532 on %s: %s" % (a.port, e), file=sys.stderr)
        return 3
    try:
        print("hold the card on the reader ...", file=sys.stderr, flush=True)
        try:
            uid = read_uid(pn, a.wait)
        except RuntimeError as e:  # adafruit refuses UIDs over 7 bytes and garbled answers
            print("card not read: %s" % e, file=sys.stderr)
            return 3
    finally:
        ser.close()
    if uid is None:
        print("no card within %g s" % a.wait, file=sys.stderr)
        return 1
    hexuid = uid.hex()
    print("UID %s" % hexuid, flush=True)
    if number is None:
        return 0
    cmd = host_sync_cmd(a.host_sync)
    if a.db:
        cmd += ["--db", a.db]
    cmd += ["cards", "add", number, "--uid", hexuid]
    if a.holder:
        cmd += ["--holder", a.holder]
    for site in a.site or []:
        cmd += ["--site", site]
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return 0 if r.returncode == 0 else 4


if __name__ == "__main__":
    sys.exit(main())
