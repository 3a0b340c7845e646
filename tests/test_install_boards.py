"""Board files: the shipped ones validate; each wiring rule refuses what it should, and says why."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import boards

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "boards").glob("*.json"))
I2C = json.loads((ROOT / "boards" / "esp32-devkitc-i2c.json").read_text())
S3 = json.loads((ROOT / "boards" / "esp32s3-uart.json").read_text())
SPI = json.loads((ROOT / "boards" / "esp32-spi.json").read_text())


def test_shipped_boards_validate_and_cover_the_three_buses():
    loaded = [boards.load(p) for p in SHIPPED]
    assert {b.data["pn532"]["bus"] for b in loaded} >= {"i2c", "uart", "spi"}
    i2c = boards.load(ROOT / "boards" / "esp32-devkitc-i2c.json")
    assert i2c.data["pn532"]["rst"] is not None and i2c.data["pn532"]["irq"] is not None
    assert boards.load(ROOT / "boards" / "esp32s3-uart.json").chip == "esp32s3"
    assert all(b.arch == "xtensawin" and b.data["flash_mb"] for b in loaded)


def _with(base, path, value):
    d = copy.deepcopy(base)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


@pytest.mark.parametrize("base,path,value,why", [
    (I2C, ("buzzer", "pin"), 32, "already used by relay.pin"),                 # conflict
    (I2C, ("relay", "pin"), 34, "input-only"),                                 # input-only as output
    (I2C, ("keypad", "cols"), [26, 25, 36], "without a pull-up"),             # no pull-up on 34-39
    (I2C, ("relay", "pin"), 0, "door could pulse open"),                       # relay on a strap
    (I2C, ("relay", "pin"), 14, "door could pulse open"),                      # toggles at boot
    (I2C, ("pn532", "irq"), 12, "strapping pin"),                              # MTDI pulled high: 1.8 V flash
    (I2C, ("pn532", "i2c", "sda"), 2, "strapping pin"),                        # pull-up defeats download mode
    (I2C, ("leds", "red"), 20, "does not exist"),
    (I2C, ("leds", "red"), 7, "flash"),
    (I2C, ("buzzer", "pin"), 1, "REPL console"),
    (I2C, ("pn532", "i2c", "freq"), 1_000_000, "PN532 limit"),
    (I2C, ("chip",), "esp8266", "is not one of"),
    (I2C, ("flash_mb",), 3, "flash_mb"),
    (I2C, ("keypad", "keys"), "1234", "needs 12 keys"),
    (I2C, ("relay", "active_high"), None, "polarity"),
    (S3, ("pn532", "uart", "id"), 0, "UART0 is the REPL"),
    (S3, ("relay", "pin"), 46, "door could pulse open"),
    (S3, ("pn532", "uart", "rx"), 3, "strapping pin"),
    (S3, ("leds", "red"), 28, "flash"),
    (S3, ("leds", "red"), 22, "does not exist"),
    (S3, ("buzzer", "pin"), 19, "REPL console"),                              # USB D-
    (SPI, ("pn532", "spi", "miso"), 12, "strapping pin"),
    (SPI, ("pn532", "cs"), 34, "input-only"),
])
def test_validator_refuses(base, path, value, why):
    with pytest.raises(boards.BoardError) as e:
        boards.validate(_with(base, path, value))
    assert why in str(e.value)


def test_allowed_uses_of_strapping_pins():
    # outputs driven only after boot, and idle-high lines on straps that want high at reset
    boards.validate(_with(I2C, ("pn532", "irq"), 5))
    boards.validate(_with(_with(SPI, ("pn532", "cs"), 15), ("leds", "red"), 16))


def test_octal_psram_pins_refused_only_on_octal_modules():
    d = _with(S3, ("leds", "red"), 35)
    boards.validate(d)
    d["psram"] = "octal"
    with pytest.raises(boards.BoardError, match="flash/PSRAM"):
        boards.validate(d)


def test_check_cli_lists_every_problem_and_fails(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(_with(I2C, ("relay", "pin"), 35), ("leds", "red"), 35)))
    out = subprocess.run([sys.executable, "-m", "tools.boards", "check", str(bad), *map(str, SHIPPED)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert "REFUSED" in out.stdout and "input-only" in out.stdout and "already used by" in out.stdout
    assert out.stdout.count("\nok ") + out.stdout.startswith("ok ") == len(SHIPPED)


def test_each_board_says_which_firmware_and_stock_needs_psram():
    loaded = {p.stem: boards.load(p) for p in SHIPPED}
    assert {b.firmware for b in loaded.values()} == {"frozen", "stock"}
    assert all(b.psram_mb for b in loaded.values() if b.firmware == "stock")
    assert loaded["esp32-devkitc-i2c"].firmware == "frozen" and loaded["esp32-devkitc-i2c"].psram_mb == 0
    with pytest.raises(boards.BoardError, match='"stock" needs a board with PSRAM'):
        boards.validate(_with(I2C, ("firmware",), "stock"))
    assert all("firmware" in b.data for b in loaded.values())
    with pytest.raises(boards.BoardError, match="firmware: 'romfs' is not \"frozen\""):
        boards.validate(_with(I2C, ("firmware",), "romfs"))
    assert boards.validate({k: v for k, v in I2C.items() if k != "firmware"}).firmware == "frozen"
    wrover = json.loads((ROOT / "boards" / "esp32-wrover-i2c.json").read_text())
    with pytest.raises(boards.BoardError, match="GPIO16 is wired to the module's flash/PSRAM"):
        boards.validate(_with(wrover, ("buzzer", "pin"), 16))  # WROVER's PSRAM clock
    with pytest.raises(boards.BoardError, match="psram: 'octal' is not one of \\['quad'\\]"):
        boards.validate(_with(wrover, ("psram",), "octal"))
    with pytest.raises(boards.BoardError, match="psram_mb: 3"):
        boards.validate(_with(wrover, ("psram_mb",), 3))


def test_check_refuses_a_frozen_board_whose_flash_the_firmware_does_not_fit(tmp_path):
    small = tmp_path / "s3-4mb.json"
    small.write_text(json.dumps(_with(S3, ("flash_mb",), 4)))  # an ESP32-S3 N4: the S3 table needs 8 MB
    out = subprocess.run([sys.executable, "-m", "tools.boards", "check", str(small)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "the frozen firmware GRINDVAKT_ESP32S3: vfs ends at 0x800000, past the end of 4 MB" \
        in out.stdout, out.stdout + out.stderr
