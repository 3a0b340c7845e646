"""Drive a virtual board from Python (tests, the demo): start it, steer it, read its reports."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tools import mpy


class VirtualBoard:
    def __init__(self, board: str | Path, flash: str | Path, *, config: str | Path | None = None,
                 fresh: bool = False, blank: bool = False, heapsize: str | None = None,
                 workdir: str | Path | None = None, romfs: bool | str | Path = False):
        self.flash = Path(flash)
        self.workdir = Path(workdir or self.flash.parent)
        self.events_path = self.workdir / (self.flash.name + ".events.jsonl")
        self.args = [sys.executable, "-m", "tools.virtual_board", "--board", str(board), "--flash", str(flash),
                     "--events", str(self.events_path)] + (["--heapsize", heapsize] if heapsize else [])
        if config:
            self.args += ["--config", str(config)]
        if fresh:
            self.args.append("--fresh")
        if blank:
            self.args.append("--blank")
        if romfs is True:
            self.args.append("--romfs")
        elif romfs:
            self.args += ["--romfs-image", str(romfs)]
        self.ready: dict = {}
        self.proc: subprocess.Popen | None = None
        self.ctl: socket.socket | None = None
        self.pty = ""
        self._seen = 0

    def start(self, timeout: float = 60) -> "VirtualBoard":
        self.events_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.args, cwd=mpy.ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.workdir / "vb.stderr", "ab"))
        ready = self.wait_for(lambda e: e.get("event") == "ready", timeout, from_start=True)
        self.pty = ready["pty"]
        self.ready = ready
        self.ctl = socket.create_connection(("127.0.0.1", ready["control"]))
        return self

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out

    def mark(self) -> int:
        """Remember how far the reports go; wait_for(..., since_mark) looks only after it."""
        self._seen = len(self.events())
        return self._seen

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = 20, from_start: bool = False) -> dict:
        deadline = time.monotonic() + timeout
        start = 0 if from_start else self._seen
        while time.monotonic() < deadline:
            evs = self.events()
            for e in evs[start:]:
                if pred(e):
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"virtual board exited with {self.proc.returncode}")
            time.sleep(0.02)
        tail = "\n".join(json.dumps(e) for e in self.events()[-25:])
        raise TimeoutError(f"no matching report within {timeout}s; last reports:\n{tail}")

    def send(self, command: str) -> None:
        assert self.ctl is not None, "not started"
        self.ctl.sendall((command + "\n").encode())

    def heap(self, timeout: float = 20) -> dict:
        """The live heap as the firmware sees it at its next poll of the launcher (ROMFS image left out)."""
        self.mark()
        self.send("heap")
        return self.wait_for(lambda e: e.get("event") == "heap", timeout)

    def logs(self) -> list[str]:
        return [e["log"] for e in self.events() if "log" in e]

    def mpremote(self, *args: str, timeout: float = 60, resume: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "mpremote"), "connect", self.pty]
        if resume:
            cmd.append("resume")
        for attempt in range(3):
            p = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)
            # a board still booting (just reset by a deploy or a cut) does not take the raw REPL
            # yet; an installer at a real board tries again too
            if p.returncode == 0 or "could not enter raw repl" not in p.stderr or attempt == 2:
                return p
            time.sleep(1)
        return p

    def stop(self) -> None:
        if self.ctl is not None:
            try:
                self.send("quit")
            except OSError:
                pass
            self.ctl.close()
            self.ctl = None
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> "VirtualBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
