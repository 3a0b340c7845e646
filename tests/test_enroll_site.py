"""Desk enrolment straight onto a site: `tools.enroll --register ... --site S` registers the card
with its sites, through the operators' own `cards add` (an unknown site is refused, nothing added)."""
import json
import os
import subprocess
import sys

from tests.test_pn532_enroll import ROOT, _enroll, reader  # noqa: F401  (the simulated desk reader)


def test_register_onto_sites(reader, tmp_path):
    env = {"GV_DATA": str(tmp_path / "data"), "GV_DB": "", "GV_OPERATOR": "desk"}
    host = [sys.executable, "-m", "host_sync"]

    def cli(*args):
        return subprocess.run(host + list(args), cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=60)
    for s in ("site-a", "site-b"):
        assert cli("sites", "add", s, "--tax-id", "PL1").returncode == 0
    with reader.lock:
        reader.sim.enter(bytes.fromhex("04a1b2c3"), atqa=0x0004, sak=0x08)
    r = _enroll(["--port", reader.path, "--wait", "5", "--register", "BB-2611-000123", "--site", "site-b",
                 "--site", "site-a"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    card = json.loads(cli("cards", "show", "BB-2611-000123", "--json").stdout)
    assert card["sites"] == ["site-a", "site-b"] and card["uid"] == "04a1b2c3"
    with reader.lock:
        reader.sim.leave(bytes.fromhex("04a1b2c3"))
        reader.sim.enter(bytes.fromhex("04d4c3b2"), atqa=0x0004, sak=0x08)  # the next card
    r = _enroll(["--port", reader.path, "--wait", "5", "--register", "BB-2611-000124", "--site", "site-x"],
                env=env)
    assert r.returncode == 4 and "no site 'site-x'" in r.stderr, r.stderr
    assert cli("cards", "show", "BB-2611-000124").returncode == 4  # nothing added
    assert _enroll(["--port", reader.path, "--site", "site-a"]).returncode == 2
