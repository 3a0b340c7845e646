"""`make setup` on a host where npm cannot reach its registry: only the tests and the bench use the
32-bit MicroPython (npm), so the demo, build, firmware and deploy never run npm (setup-site), and a
failed npm ci is said once, remembered, and retried only by `make wasm`. tools/setup.sh runs in a
copy of the checkout with stand-ins for Debian's tools, node and a failing npm on PATH."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import wasm32

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def checkout(tmp_path):
    co = tmp_path / "co"
    (co / "tools" / "wasm").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "setup.sh", co / "tools" / "setup.sh")
    for f in ("requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / f, co / f)
    venv = co / ".venv" / "bin"
    venv.mkdir(parents=True)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "npm-calls"
    stand_ins = {name: "exit 0" for name in ("mosquitto", "socat", "chromium", "chromedriver", "node")}
    stand_ins["npm"] = ('echo "$@" >> %s; echo "npm ERR! network request to '
                        'https://registry.npmjs.org failed" >&2; exit 1' % calls)
    for name, body in stand_ins.items():
        (bin_ / name).write_text("#!/bin/sh\n%s\n" % body)
        (bin_ / name).chmod(0o755)
    for name in ("python", "micropython"):
        (venv / name).write_text("#!/bin/sh\nexit 0\n")
        (venv / name).chmod(0o755)
    (co / ".venv" / ".setup-done").touch()  # the pinned Python packages: there already
    env = dict(os.environ, PATH="%s:/usr/bin:/bin" % bin_)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(co / "tools" / "setup.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def npm_calls() -> int:
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    return run, npm_calls, co


def test_a_failed_npm_install_is_said_once_and_retried_only_by_make_wasm(checkout):
    run, npm_calls, co = checkout
    first = run()
    assert first.returncode == 0, first.stderr  # make test goes on: the heap32 checks skip
    assert npm_calls() == 1
    said = [ln for ln in first.stderr.splitlines() if "npm" in ln]
    assert len(said) == 1 and "make wasm" in said[0] and "test_heap32" in said[0], first.stderr
    assert "registry.npmjs.org" in (co / ".venv" / "wasm-npm-failed").read_text()  # npm's own words
    again = run()  # the next make test: no second wait on npm's registry, nothing said again
    assert again.returncode == 0 and npm_calls() == 1 and "npm" not in again.stderr + again.stdout
    retry = run("--retry-wasm")
    assert retry.returncode == 0 and npm_calls() == 2 and "make wasm" in retry.stderr


def test_setup_site_never_runs_npm_nor_asks_for_the_browser(checkout):
    run, npm_calls, _ = checkout
    r = run("--site")
    assert r.returncode == 0, r.stderr
    assert npm_calls() == 0 and "npm" not in r.stdout + r.stderr
    assert run("--bogus").returncode == 2


def test_only_the_tests_and_the_bench_set_up_the_wasm_package():
    deps = dict(re.findall(r"(?m)^([\w-]+): *([\w-]*)$", (ROOT / "Makefile").read_text()))
    for target in ("demo", "deploy", "build", "firmware"):
        assert deps[target] == "setup-site", target
    for target in ("test", "bench"):
        assert deps[target] == "setup", target
    make = (ROOT / "Makefile").read_text()
    assert "setup-site:\n\t@tools/setup.sh --site\n" in make
    assert "wasm:\n\t@tools/setup.sh --retry-wasm\n" in make


def test_the_heap32_skip_says_how_to_retry_a_failed_install(tmp_path, monkeypatch):
    monkeypatch.setattr(wasm32, "PKG", tmp_path / "missing")
    failed = tmp_path / ".venv" / "wasm-npm-failed"
    failed.parent.mkdir()
    failed.write_text("npm ERR! network\n")
    monkeypatch.setattr(wasm32, "NPM_FAILED", failed)
    monkeypatch.setattr(wasm32, "ROOT", tmp_path)
    why = wasm32.unavailable()
    if why and "Node" in why:
        pytest.skip(why)
    assert why is not None and "make wasm" in why and ".venv/wasm-npm-failed" in why
    assert wasm32.install() == why  # the bench does not wait on npm's registry again either
