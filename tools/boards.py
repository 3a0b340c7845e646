"""Board files (boards/*.json): load them and refuse wirings that can't work on the chip.

    python -m tools.boards check boards/*.json

A board file names the pins of the PN532 bus, keypad, relay, LEDs and buzzer (contract in the team
brief, rules and sources in docs/install.md). The validator refuses:
  - pins the chip does not have, and pins wired to the module's SPI flash/PSRAM or the REPL console;
  - the same pin used twice;
  - an input-only pin (ESP32 GPIO 34-39) used as an output, or as a keypad column (no pull-up there);
  - a strapping pin used in a way that can change how the chip boots, and the door relay on any
    strapping pin or pin that toggles during boot (a reset must never pulse the door open);
  - bus ids and speeds the chip or the PN532 does not support.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# What each chip has. Sources: ESP32 and ESP32-S3 datasheets (Espressif, "Pin definitions" and
# "Strapping pins" sections), ESP32-WROOM-32 / ESP32-S3-WROOM-1 module datasheets (pins wired to the
# flash and PSRAM), MicroPython's esp32 quickref (REPL on UART0; 34-39 input only, no pull-ups).
CHIPS: dict[str, dict] = {
    "esp32": {
        "arch": "xtensawin",
        "gpio": set(range(0, 20)) | {21, 22, 23, 25, 26, 27} | set(range(32, 40)),
        "flash": set(range(6, 12)),          # SPI flash of every ESP32-WROOM/WROVER module
        "quad_psram": {16, 17},              # PSRAM clock/CS on ESP32-WROVER modules
        "console": {1, 3},                   # UART0 TX/RX: the REPL that mpremote talks to
        "input_only": set(range(34, 40)),    # no output driver, no internal pull-up/down
        # strap -> level the chip needs at reset for a normal boot from flash
        "strapping": {0: "high", 2: "low", 5: "high", 12: "low", 15: "high"},
        "boot_glitch": {1, 3, 5, 14, 15},    # toggle or output a signal while the ROM boots
        "uart_ids": {1, 2}, "i2c_ids": {0, 1}, "spi_ids": {1, 2},
        "flash_mb": {4, 8, 16},
    },
    "esp32s3": {
        "arch": "xtensawin",
        "gpio": set(range(0, 22)) | set(range(26, 49)),
        "flash": set(range(26, 33)),         # SPI flash + quad PSRAM of ESP32-S3-WROOM-1/-2
        "quad_psram": set(),                 # quad PSRAM shares the flash pins above
        "octal_psram": set(range(33, 38)),   # also taken on modules with octal PSRAM (N8R8, N16R8)
        "console": {43, 44, 19, 20},         # UART0 TX/RX, and USB D-/D+ (USB-serial/JTAG REPL)
        "input_only": set(),
        "strapping": {0: "high", 3: "float", 45: "low", 46: "low"},
        "boot_glitch": {43, 44},
        "uart_ids": {1, 2}, "i2c_ids": {0, 1}, "spi_ids": {1, 2},
        "flash_mb": {4, 8, 16, 32},
    },
}

# How a pin is driven, by role: "out" (the MCU drives it after boot), "in" (an external device or
# pull-up may drive it, also during reset), "od" (open-drain bus with external pull-ups: both).
# Idle level of "in"/"od" lines at reset, for strapping pins whose required level it may match.
IDLE_HIGH = {"i2c.scl", "i2c.sda", "uart.rx", "irq"}

PN532_LIMITS = {"i2c_freq": 400_000, "spi_baud": 5_000_000,
                "uart_baud": {9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600}}


class BoardError(ValueError):
    """A board file that can't work; the message lists every problem found."""


@dataclass
class Board:
    path: Path
    data: dict
    pins: dict[str, tuple[int, str]] = field(default_factory=dict)  # role -> (gpio, direction)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def chip(self) -> str:
        return self.data["chip"]

    @property
    def arch(self) -> str:
        return CHIPS[self.chip]["arch"]

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def firmware(self) -> str:
        """"frozen": the grindvakt firmware with the reader frozen in (make firmware); "stock":
        stock MicroPython with the reader as .mpy files on LittleFS (PSRAM boards only)."""
        return self.data.get("firmware") or ("stock" if self.data.get("psram") else "frozen")

    @property
    def psram_mb(self) -> int:
        return self.data.get("psram_mb", 0) if self.data.get("psram") else 0


def _pin_roles(d: dict, problems: list[str]) -> list[tuple[str, object, str]]:
    """(role, pin, direction) for every wired pin in the board file."""
    roles: list[tuple[str, object, str]] = []
    pn = d.get("pn532")
    if not isinstance(pn, dict):
        problems.append("pn532: missing")
        pn = {}
    bus = pn.get("bus")
    if bus == "i2c":
        c = pn.get("i2c") or {}
        roles += [("pn532.i2c.scl", c.get("scl"), "od"), ("pn532.i2c.sda", c.get("sda"), "od")]
    elif bus == "uart":
        c = pn.get("uart") or {}
        roles += [("pn532.uart.tx", c.get("tx"), "out"), ("pn532.uart.rx", c.get("rx"), "in")]
    elif bus == "spi":
        c = pn.get("spi") or {}
        roles += [("pn532.spi.sck", c.get("sck"), "out"), ("pn532.spi.mosi", c.get("mosi"), "out"),
                  ("pn532.spi.miso", c.get("miso"), "in"), ("pn532.cs", pn.get("cs"), "out")]
    elif bus is not None:
        problems.append(f"pn532.bus: {bus!r} is not i2c, uart or spi")
    else:
        problems.append("pn532.bus: missing")
    for opt, direction in (("rst", "out"), ("irq", "in")):
        if pn.get(opt) is not None:
            roles.append((f"pn532.{opt}", pn[opt], direction))
    kp = d.get("keypad") or {}
    rows, cols = kp.get("rows") or [], kp.get("cols") or []
    if not rows or not cols:
        problems.append("keypad: rows and cols are required")
    elif len(kp.get("keys", "")) != len(rows) * len(cols):
        problems.append(f"keypad.keys: {len(rows)}x{len(cols)} keypad needs {len(rows) * len(cols)} keys")
    roles += [(f"keypad.rows[{i}]", p, "out") for i, p in enumerate(rows)]
    roles += [(f"keypad.cols[{i}]", p, "in") for i, p in enumerate(cols)]
    relay = d.get("relay") or {}
    if relay.get("pin") is None:
        problems.append("relay.pin: missing")
    else:
        roles.append(("relay.pin", relay["pin"], "out"))
    if not isinstance(relay.get("active_high"), bool):
        problems.append("relay.active_high: must be true or false (the relay's polarity)")
    for color, p in sorted((d.get("leds") or {}).items()):
        if p is not None:
            roles.append((f"leds.{color}", p, "out"))
    buz = d.get("buzzer") or {}
    if buz.get("pin") is not None:
        roles.append(("buzzer.pin", buz["pin"], "out"))
    return roles


def _check_buses(d: dict, chip: dict, problems: list[str]) -> None:
    pn = d.get("pn532") or {}
    bus = pn.get("bus")
    c = pn.get(bus) if isinstance(bus, str) else None
    if not isinstance(c, dict):
        if bus in ("i2c", "uart", "spi"):
            problems.append(f"pn532.{bus}: missing")
        return
    ids = chip.get(f"{bus}_ids", set())
    if c.get("id") not in ids:
        why = " (UART0 is the REPL)" if bus == "uart" and c.get("id") == 0 else ""
        problems.append(f"pn532.{bus}.id: {c.get('id')!r} is not one of {sorted(ids)}{why}")
    if bus == "i2c" and not 10_000 <= c.get("freq", 400_000) <= PN532_LIMITS["i2c_freq"]:
        problems.append(f"pn532.i2c.freq: {c.get('freq')} Hz outside 10 kHz..400 kHz (PN532 limit)")
    if bus == "spi" and not 100_000 <= c.get("baud", 1_000_000) <= PN532_LIMITS["spi_baud"]:
        problems.append(f"pn532.spi.baud: {c.get('baud')} outside 100 kHz..5 MHz (PN532 limit)")
    if bus == "uart" and c.get("baud", 115200) not in PN532_LIMITS["uart_baud"]:
        problems.append(f"pn532.uart.baud: {c.get('baud')} is not a PN532 HSU rate")


def check_pins(d: dict, problems: list[str]) -> dict[str, tuple[int, str]]:
    chip_name = d.get("chip")
    chip = CHIPS.get(chip_name)
    if chip is None:
        problems.append(f"chip: {chip_name!r} is not one of {sorted(CHIPS)}")
        return {}
    if d.get("flash_mb") not in chip["flash_mb"]:
        problems.append(f"flash_mb: {d.get('flash_mb')!r} is not one of {sorted(chip['flash_mb'])}")
    _check_buses(d, chip, problems)
    roles = _pin_roles(d, problems)
    taken: dict[int, str] = {}
    out: dict[str, tuple[int, str]] = {}
    psram = d.get("psram")
    flash = set(chip["flash"]) | (chip.get("octal_psram", set()) if psram == "octal" else set()) \
        | (chip["quad_psram"] if psram == "quad" else set())
    for role, pin, direction in roles:
        if isinstance(pin, bool) or not isinstance(pin, int):
            problems.append(f"{role}: {pin!r} is not a GPIO number")
            continue
        out[role] = (pin, direction)
        where = f"{role}: GPIO{pin}"
        if pin not in chip["gpio"]:
            problems.append(f"{where} does not exist on {chip_name}")
            continue
        if pin in flash:
            problems.append(f"{where} is wired to the module's flash/PSRAM")
        if pin in chip["console"]:
            problems.append(f"{where} is the REPL console (UART0/USB) that deploys go through")
        if pin in taken:
            problems.append(f"{where} is already used by {taken[pin]}")
        taken.setdefault(pin, role)
        if pin in chip["input_only"]:
            if direction != "in":
                problems.append(f"{where} is input-only and can't drive an output")
            elif role.startswith("keypad.cols"):
                problems.append(f"{where} is input-only without a pull-up: a keypad column needs one")
        strap = chip["strapping"].get(pin)
        if role == "relay.pin" and (strap or pin in chip["boot_glitch"]):
            problems.append(f"{where} is a strapping/boot-signal pin: the door could pulse open on reset")
        elif strap and direction != "out":
            kind = role.split(".", 1)[1] if role.startswith("pn532.") else role
            idle_high = any(kind.startswith(k) for k in IDLE_HIGH)
            if not (strap == "high" and idle_high):
                problems.append(f"{where} is a strapping pin (needs {strap} at reset) that an external "
                                f"device or pull-up would drive during reset")
    return out


PSRAM_KINDS = {"esp32": {"quad"}, "esp32s3": {"quad", "octal"}}
FIRMWARES = ("frozen", "stock")


def check_firmware(d: dict, problems: list[str]) -> None:
    """Which firmware the board runs, and the PSRAM that stock MicroPython with .mpy files needs:
    loaded from .mpy the reader takes ~158 KB of GC heap (32-bit), a plain ESP32 gives ~112 KB."""
    psram, fw = d.get("psram"), d.get("firmware")
    if psram is not None:
        kinds = PSRAM_KINDS.get(d.get("chip"), set())
        if psram not in kinds:
            problems.append(f"psram: {psram!r} is not one of {sorted(kinds)} (or leave it out: no PSRAM)")
        mb = d.get("psram_mb")
        if isinstance(mb, bool) or mb not in (2, 4, 8, 16):
            problems.append(f"psram_mb: {mb!r} is not 2, 4, 8 or 16 (the module's PSRAM in MB)")
    if fw is None:
        return  # not said: frozen without PSRAM, stock with it (the shipped files all say it)
    if fw not in FIRMWARES:
        problems.append(f'firmware: {fw!r} is not "frozen" (the reader frozen into the firmware: make firmware) '
                        f'or "stock" (stock MicroPython with .mpy files, PSRAM boards only)')
    elif fw == "stock" and psram is None:
        problems.append('firmware: "stock" needs a board with PSRAM (the reader loaded from .mpy files does not '
                        'fit a plain ESP32\'s heap): use "frozen", or give "psram" and "psram_mb"')


def validate(d: dict, path: Path | str = "<board>") -> Board:
    problems: list[str] = []
    if not isinstance(d, dict):
        raise BoardError(f"{path}: not a JSON object")
    if not isinstance(d.get("name"), str) or not d.get("name"):
        problems.append("name: missing")
    check_firmware(d, problems)
    pins = check_pins(d, problems)
    if problems:
        raise BoardError(f"{path}: " + "; ".join(problems))
    return Board(Path(path), d, pins)


def load(path: str | Path) -> Board:
    """The validated board file, or raises BoardError saying everything wrong with it."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except OSError as e:
        raise BoardError(f"{p}: can't read: {e.strerror}") from None
    except ValueError as e:
        raise BoardError(f"{p}: not valid JSON: {e}") from None
    return validate(d, p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.boards", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="validate board files")
    chk.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    bad = 0
    for f in args.files:
        try:
            b = load(f)
        except BoardError as e:
            bad += 1
            print(f"REFUSED {e}")
            continue
        if b.firmware == "frozen":  # the firmware's partition table must fit this module's flash
            from tools import firmware
            d = firmware.def_dir(b.chip)
            fit = firmware.check_partitions(d / "partitions.csv", b.data["flash_mb"])
            if fit:
                bad += 1
                print(f"REFUSED {f}: the frozen firmware {d.name}: " + "; ".join(fit))
                continue
        ram = f", {b.psram_mb} MB PSRAM" if b.psram_mb else ""
        print(f"ok {f}: {b.name} ({b.chip}, {len(b.pins)} pins, {b.data['flash_mb']} MB flash{ram}, "
              f"{b.firmware} firmware)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
