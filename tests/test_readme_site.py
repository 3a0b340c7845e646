"""README.md's "Set up a real site", run as written: its shell blocks are taken from the README
(so the doc and this test cannot drift), with the virtual board standing in for the ESP32 (the
README's own "try it on this host" settings, on a free loopback port). Where the host has no
systemd, the broker and the sync service are started as the units `host-sync site services`
wrote say (ExecStart, Environment=, WorkingDirectory=), as an operator would from the commands
it prints. Once as root (the broker then drops to the user mosquitto), once as a throwaway plain
user with the defaults of ~/.config and ~/.local/share. The gate decides a card before and after
its block; the day's ledger shows the shift."""
from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from host_sync import units
from tools.site import present
from tools.virtual_board.client import VirtualBoard

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
STEPS = ["install", "init", "services", "running", "reader", "cards", "block", "ledger"]
ANNA_UID = "04a1b2c3d4e5f6"  # Anna Berg's card in tools/demo_data/cards.csv
BLOCK_TIMEOUT = 300  # a step's own `until` loops end within this, or the step failed
INSTALL_TIMEOUT = 900  # a fresh clone's make setup: pip installs every pinned package
OFFLINE = ("Could not fetch URL", "Max retries exceeded", "Temporary failure in name resolution",
           "No matching distribution found", "Network is unreachable")


def readme_blocks() -> dict[str, str]:
    text = README.read_text()
    found = re.findall(r"<!-- real-site: ([\w -]+?) -->\s*```sh\n(.*?)```", text, re.S)
    return {name.strip(): body for name, body in found}


def test_the_readme_has_every_step_in_order():
    names = list(readme_blocks())
    assert names == ["settings", "virtual-settings"] + ["step " + s for s in STEPS]
    section = README.read_text().split("## Set up a real site", 1)[1].split("\n## ", 1)[0]
    for word in ("site init", "site services", "readers add", "make deploy", "cards import",
                 "cards block", "ledger show"):
        assert word in section


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """One shell user on a fresh host: runs the README's blocks, starts what systemd would."""

    def __init__(self, home: Path, user: pwd.struct_passwd | None, env: dict[str, str],
                 repo: Path = ROOT):
        self.home, self.user, self.repo = home, user, repo
        blocks = readme_blocks()
        port = free_port()
        settings = re.sub(r"(?m)^BROKER_PORT=.*$", "BROKER_PORT=%d" % port,
                          blocks["virtual-settings"])
        exports = "".join(ln + "\n" for ln in blocks["step install"].splitlines()
                          if ln.startswith("export "))
        self.prelude = settings + exports
        self.blocks = blocks
        self.port = port
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("GV_", "XDG_", "PYTEST", "DEPLOY_"))}
        self.env = dict(base, HOME=str(home), PYTHONUNBUFFERED="1",
                        # the deploy builds into the operator's own folder, not the checkout's
                        DEPLOY_ARGS="--build-dir %s" % (home / "build"), **env)
        if user is not None:
            self.env.update(USER=user.pw_name, LOGNAME=user.pw_name)
        self.procs: list[subprocess.Popen] = []
        self.transcript: list[str] = []

    def as_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["setpriv", "--reuid", str(self.user.pw_uid), "--regid", str(self.user.pw_gid),
                "--init-groups", "--"] + argv

    def step(self, name: str) -> str:
        script = self.prelude + self.blocks["step " + name]
        p = subprocess.run(self.as_user(["bash", "-euo", "pipefail", "-c", script]), cwd=self.repo,
                           env=self.env, capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT if name == "install" else BLOCK_TIMEOUT)
        if name == "install" and p.returncode and any(w in p.stdout + p.stderr for w in OFFLINE):
            pytest.skip("make setup could not reach the package registry: %s"
                        % (p.stdout + p.stderr).strip().splitlines()[-1])
        self.transcript.append("$ step %s\n%s%s" % (name, p.stdout, p.stderr))
        assert p.returncode == 0, "README step %s failed (%d):\n%s" % (
            name, p.returncode, "\n".join(self.transcript[-3:]))
        return p.stdout + p.stderr

    def start_units(self, unit_dir: Path) -> None:
        """What systemd would run: each unit's ExecStart with its Environment= and folder."""
        for name in (units.BROKER_UNIT, units.SERVE_UNIT):
            svc = units.parse((unit_dir / name).read_text())["Service"]
            env = dict(self.env)
            for e in svc.get("Environment", []):
                k, v = shlex.split(e)[0].split("=", 1)
                env[k] = v
            assert "EnvironmentFile" not in svc  # SQLite here: nothing secret to pass
            log = open(self.home / (name + ".log"), "ab")
            self.procs.append(subprocess.Popen(
                self.as_user(shlex.split(svc["ExecStart"][0])), env=env,
                cwd=svc.get("WorkingDirectory", ["/"])[0], stdout=log, stderr=subprocess.STDOUT))

    def board(self) -> VirtualBoard:
        board = re.search(r"(?m)^BOARD=(\S+)", self.prelude).group(1)  # the README's own
        vb = VirtualBoard(ROOT / board, self.home / "gate-01.img",
                          fresh=True, workdir=self.home)
        if self.user is not None:  # the board (its pty) is the operator's, run from their clone
            vb.args = self.as_user(["env", "-C", str(self.repo),
                                    str(self.repo / ".venv" / "bin" / "python")] + vb.args[1:])
        return vb

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def run_the_readme(op: Operator, unit_dir: Path) -> None:
    op.step("install")
    out = op.step("init")
    assert "created a new, empty registry" in out and "TLS on 127.0.0.1:%d" % op.port in out
    out = op.step("services")
    assert "systemd units written" in out
    if units.systemd_running() and op.user is None and "GV_UNIT_DIR" not in op.env:
        pytest.skip("systemd runs here: the units were enabled for real")
    op.start_units(unit_dir)
    op.step("running")
    vb = op.board()
    vb.start()
    try:
        vb.wait_for(lambda e: e.get("event") == "wdt-start", 60)
        out = op.step("reader")
        assert "the site's broker has its account" in out
        assert "hello from gate-01" in out, out
        op.step("cards")
        assert present(vb, ANNA_UID)["granted"], "Anna's card must open the gate"
        out = op.step("block")
        assert "applied by 1 of 1" in out
        assert not present(vb, ANNA_UID)["granted"], "a blocked card must be refused"
    finally:
        vb.stop()
    out = op.step("ledger")
    assert "Anna Berg" in out and "1 shift(s)" in out, out


def _shared_tmp() -> Path:
    # the broker's user (mosquitto) and the plain user must reach it: not pytest's 0700 folders
    d = Path(tempfile.mkdtemp(prefix="gv-readme-"))
    os.chmod(d, 0o755)
    return d


@pytest.mark.skipif(os.geteuid() != 0, reason="the root variant needs root (this run is a plain user)")
def test_the_readme_as_root():
    tmp = _shared_tmp()
    home = tmp / "root-home"
    home.mkdir()
    # root's /etc/grindvakt, /var/lib/grindvakt and /etc/systemd/system are this machine's own:
    # the same defaults, moved into the test's folder
    env = {"GV_CONFIG_DIR": str(tmp / "etc"), "GV_DATA": str(tmp / "var"),
           "GV_UNIT_DIR": str(tmp / "units")}
    op = Operator(home, None, env)
    try:
        run_the_readme(op, tmp / "units")
        conf = (tmp / "etc" / "broker" / "mosquitto.conf").read_text()
        assert "\nuser mosquitto\n" in conf
        broker_pid = op.procs[0].pid
        owner = Path("/proc/%d/status" % broker_pid).read_text()
        assert re.search(r"Uid:\s+%d\b" % pwd.getpwnam("mosquitto").pw_uid, owner), \
            "mosquitto started as root runs as the user mosquitto"
    finally:
        op.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_readme_as_a_plain_user():
    """A throwaway user with a fresh clone of this checkout of their own, from `make setup` on
    (its own .venv: another user's may sit on an interpreter it cannot run)."""
    tmp = _shared_tmp()
    user = None
    made = None
    try:
        home = tmp / "home"
        repo = ROOT
        if os.geteuid() == 0:
            if not shutil.which("useradd") or not shutil.which("setpriv"):
                pytest.skip("no useradd/setpriv to make a plain user")
            made = "gvreadme%d" % (os.getpid() % 100000)
            subprocess.run(["useradd", "--create-home", "--home-dir", str(home),
                            "--shell", "/bin/bash", made], check=True, capture_output=True)
            user = pwd.getpwnam(made)
            repo = home / "grindvakt"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True,
                           capture_output=True)
            subprocess.run(["chown", "-R", "%s:%s" % (made, made), str(repo)], check=True)
        else:
            home.mkdir()
        op = Operator(home, user, {}, repo=repo)
        try:
            run_the_readme(op, home / ".config" / "systemd" / "user")
            # the plain user's defaults, found from the README's folder and from anywhere
            assert (home / ".local/share/grindvakt/grindvakt.sqlite3").exists()
            assert (home / ".config/grindvakt/broker/mosquitto.conf").exists()
        finally:
            op.close()
    finally:
        if made:
            subprocess.run(["userdel", made], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
