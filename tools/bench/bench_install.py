"""Installer figures: build footprint per board, and deploys onto the virtual board with the real
mpremote (files copied by a first, a repeated and a one-change deploy; their times; throughput)."""
import shutil
import tempfile
import time
from pathlib import Path

from tools import build, deploy, provision
from tools.bench import metric
from tools.virtual_board.client import VirtualBoard

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "boards" / "esp32-wrover-i2c.json"  # stock MicroPython + .mpy files (PSRAM)
FROZEN = ROOT / "boards" / "esp32-devkitc-i2c.json"  # the grindvakt firmware, reader frozen in


def _config():
    import os
    return provision.make_config("gate-01", "site-a", wifi_ssid="s", wifi_password="wifi-secret", broker_host="127.0.0.1",
                                 broker_port=1883, broker_password="p" * 20, secret_hex=os.urandom(32).hex(),
                                 card_key_hex=os.urandom(16).hex(), pin_key_hex=os.urandom(16).hex(), tls=False,
                                 virtual=True)


def run() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for b in sorted((ROOT / "boards").glob("*.json")):
            m = build.build(b, tmp / "b")
            out[f"install.footprint_bytes.{b.stem}"] = metric(m["footprint_bytes"], "bytes",
                                                              "fits the 2 MiB LittleFS partition")
            out[f"install.footprint_blocks.{b.stem}"] = metric(m["footprint_blocks"], "4 KiB blocks", "of 512")
        src = tmp / "fw"
        shutil.copytree(build.FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
        kw = dict(config=_config(), hello_timeout=None, progress=deploy.Progress(quiet=True),
                  build_root=tmp / "build", src=src, reset=False)
        with VirtualBoard(BOARD, tmp / "flash.img", blank=True) as vb:
            vb.wait_for(lambda e: e.get("event") == "boot", 30)
            t0 = time.monotonic()
            first = deploy.deploy(vb.pty, BOARD, **kw)
            t1 = time.monotonic()
            second = deploy.deploy(vb.pty, BOARD, **kw)
            t2 = time.monotonic()
            app = src / "gv" / "app.py"
            app.write_text(app.read_text() + "\n_BENCH = 1\n")
            t3 = time.monotonic()
            third = deploy.deploy(vb.pty, BOARD, **kw)
            t4 = time.monotonic()
        # a frozen-firmware board (the virtual board with --romfs): board.json and the config only
        fkw = dict(kw, build_root=tmp / "build-frozen")
        with VirtualBoard(FROZEN, tmp / "frozen.img", blank=True, romfs=True) as vb:
            vb.wait_for(lambda e: e.get("event") == "boot", 30)
            t5 = time.monotonic()
            frozen = deploy.deploy(vb.pty, FROZEN, **fkw)
            t6 = time.monotonic()
        out["install.frozen_first_deploy_files_copied"] = metric(len(frozen.copied), "files",
                                                                 "board.json only (the code is in the firmware)")
        out["install.frozen_first_deploy_wire_bytes"] = metric(frozen.wire_bytes, "bytes",
                                                               "build id check, board.json, config, verify")
        out["install.frozen_first_deploy_s"] = metric(round(t6 - t5, 2), "s", "no flashing (esptool not run here)")
        out["install.first_deploy_files_copied"] = metric(len(first.copied), "files", "every file, onto a blank board")
        out["install.first_deploy_bytes"] = metric(first.bytes_copied, "bytes", "")
        out["install.first_deploy_s"] = metric(round(t1 - t0, 2), "s", "includes build, hash, copy, verify")
        out["install.first_deploy_bytes_per_s"] = metric(int(first.bytes_copied / (t1 - t0)), "bytes/s",
                                                         "virtual board pty, no 115200-baud limit")
        out["install.first_deploy_wire_bytes"] = metric(first.wire_bytes, "bytes",
                                                        "sent over the serial line (raw-paste, escaped)")
        out["install.first_deploy_s_at_115200_baud"] = metric(round(first.wire_bytes / 11520, 1), "s",
                                                              "estimate for a real UART: wire bytes / 11520 B/s")
        out["install.second_deploy_wire_bytes"] = metric(second.wire_bytes, "bytes", "hash check only")
        out["install.second_deploy_files_copied"] = metric(len(second.copied), "files", "0")
        out["install.second_deploy_s"] = metric(round(t2 - t1, 2), "s", "hash check only")
        out["install.one_change_files_copied"] = metric(len(third.copied), "files", "1")
        out["install.one_change_deploy_s"] = metric(round(t4 - t3, 2), "s", "")
    return out
