"""The virtual board boots the firmware into its main loop and the real mpremote works on it."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tools.virtual_board.client import VirtualBoard

BOARD = {"name": "test board", "chip": "esp32", "flash_mb": 4,
         "pn532": {"bus": "i2c", "i2c": {"id": 0, "scl": 22, "sda": 21, "freq": 400000}, "rst": 4, "irq": None},
         "keypad": {"rows": [13, 12, 14, 27], "cols": [26, 25, 33], "keys": "123456789*0#"},
         "relay": {"pin": 32, "active_high": False}, "leds": {"green": 2, "red": 15}, "buzzer": {"pin": 23}}


@pytest.fixture
def vb(tmp_path):
    board = tmp_path / "board.json"
    board.write_text(json.dumps(BOARD))
    with VirtualBoard(board, tmp_path / "flash.img") as b:
        b.wait_for(lambda e: e.get("event") == "wdt-start", 30)  # the firmware's main loop is running
        yield b


def test_boots_into_the_main_loop_and_mpremote_exec_ls_cp(vb, tmp_path):
    assert vb.wait_for(lambda e: e.get("event") == "boot")["cause"] == "power-on"
    out = vb.mpremote("exec", "import os, sys; print(sorted(os.listdir('/')), sys.implementation.name)")
    assert out.returncode == 0, out.stderr
    assert "['board.json', 'boot.py', 'gv', 'main.py'] micropython" in out.stdout
    # the Ctrl-C that mpremote sent stopped main.py the way it stops it on a board
    assert any("stopped by Ctrl-C" in line for line in vb.logs())
    ls = vb.mpremote("fs", "ls", ":/gv")
    assert ls.returncode == 0 and "app.mpy" in ls.stdout, ls.stdout + ls.stderr
    src = tmp_path / "note.txt"
    src.write_text("gate 7\n")
    cp = vb.mpremote("fs", "cp", str(src), ":note.txt")
    assert cp.returncode == 0, cp.stderr
    back = vb.mpremote("exec", "print(open('note.txt').read())")
    assert "gate 7" in back.stdout


def test_soft_reset_restarts_the_interpreter_and_flash_persists(vb, tmp_path):
    vb.mpremote("exec", "f = open('kept.txt', 'w'); f.write('kept'); f.close()")
    vb.mark()
    out = vb.mpremote("soft-reset", "exec", "print(open('kept.txt').read())", resume=True)
    assert out.returncode == 0 and "kept" in out.stdout, out.stdout + out.stderr
    assert vb.wait_for(lambda e: e.get("event") == "boot")["cause"] == "soft"


def test_power_cycle_runs_main_again(vb):
    vb.mark()
    vb.send("reset")
    assert vb.wait_for(lambda e: e.get("event") == "boot")["cause"] == "power-on"
    vb.wait_for(lambda e: "not provisioned" in e.get("log", ""))  # main.py ran again


def test_outputs_are_reported_with_polarity_and_duration(vb):
    vb.mark()
    code = ("import machine, time\n"
            "r = machine.Pin(32, machine.Pin.OUT, value=1)\n"  # active-low relay: 1 is off
            "g = machine.Pin(2, machine.Pin.OUT)\n"
            "g.value(1); r.value(0); time.sleep_ms(120); r.value(1); g.value(0)\n")
    assert vb.mpremote("exec", code).returncode == 0
    on = vb.wait_for(lambda e: e.get("dev") == "relay" and e["on"])
    off = vb.wait_for(lambda e: e.get("dev") == "relay" and not e["on"] and "ms" in e)
    assert on["t"] <= off["t"] and 100 <= off["ms"] < 2000
    vb.wait_for(lambda e: e.get("dev") == "led" and e.get("color") == "green" and e["on"])


def test_key_matrix_reads_the_pressed_key(vb):
    code = ("import machine, time\n"
            "rows = [machine.Pin(p, machine.Pin.OUT, value=1) for p in (13, 12, 14, 27)]\n"
            "cols = [machine.Pin(p, machine.Pin.IN, machine.Pin.PULL_UP) for p in (26, 25, 33)]\n"
            "seen = ''\n"
            "print('SCAN')\n"
            "for _ in range(400):\n"
            "  for r, rp in enumerate(rows):\n"
            "    rp.value(0)\n"
            "    for c, cp in enumerate(cols):\n"
            "      if cp.value() == 0 and '123456789*0#'[r*3+c] not in seen: seen += '123456789*0#'[r*3+c]\n"
            "    rp.value(1)\n"
            "  time.sleep_ms(5)\n"
            "print('KEYS', seen)\n")
    vb.mark()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(vb.mpremote, "exec", code)
        vb.wait_for(lambda e: e.get("log", "").endswith("SCAN"))
        vb.send("key 5")
        out = run.result()
    assert "KEYS 5" in out.stdout, out.stdout + out.stderr


def test_a_starved_watchdog_reboots_the_board(vb):
    vb.mark()
    # stop main.py, then start a watchdog nobody feeds
    assert vb.mpremote("exec", "import machine; machine.WDT(timeout=300)").returncode == 0
    vb.wait_for(lambda e: e.get("event") == "wdt-reset", 20)
    assert vb.wait_for(lambda e: e.get("event") == "boot")["cause"] == "wdt"


def test_a_half_deployed_board_does_not_start_the_app(vb):
    code = "f = open('deploy.json', 'w'); f.write('{\"state\": \"in-progress\"}'); f.close()"
    assert vb.mpremote("exec", code).returncode == 0
    vb.mark()
    vb.send("reset")
    vb.wait_for(lambda e: "deploy was cut off" in e.get("log", ""), 30)
    assert not any(e.get("event") == "wdt-start" for e in vb.events()[vb._seen:])  # the app never ran


def test_secrets_printed_at_the_repl_stay_out_of_the_log(vb, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"reader_id": "gate-09", "secret": "5ec7e75ec7e75ec7e7"}\n')
    assert vb.mpremote("fs", "cp", str(cfg), ":c.json").returncode == 0
    out = vb.mpremote("fs", "cat", ":c.json")
    assert "5ec7e75ec7e75ec7e7" in out.stdout  # the operator at the serial port sees it ...
    assert not any("5ec7e75ec7e7" in line for line in vb.logs())  # ... the log file does not
