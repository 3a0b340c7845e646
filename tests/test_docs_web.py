"""docs/web.md's HTTPS examples use the files `host-sync site init` writes (host_sync/pki.py), and
the service that reads them as they are runs as the user that may read the key."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from host_sync.pki import SitePki

ROOT = Path(__file__).resolve().parent.parent
WEB_MD = (ROOT / "docs" / "web.md").read_text()


def test_every_site_file_the_console_is_given_is_one_site_init_writes(tmp_path):
    SitePki(tmp_path).init(["192.168.10.5"], "grindvakt test CA")
    given = set(re.findall(r"--(?:certfile|keyfile) (/etc/grindvakt/\S+)", WEB_MD))
    given |= set(re.findall(r"LoadCredential=[\w.]+:(/etc/grindvakt/\S+)", WEB_MD))
    assert given, "docs/web.md gives the console no site certificate"
    for path in sorted(given):
        assert (tmp_path / path[len("/etc/grindvakt/"):]).is_file(), path


def test_a_service_reading_the_key_in_place_runs_as_root_else_gets_it_from_systemd():
    units = re.findall(r"```ini\n(.*?)```", WEB_MD, re.S)
    for unit in units:
        if "--keyfile" not in unit:
            continue
        reads_in_place = re.search(r"--keyfile /etc/grindvakt/", unit)
        if re.search(r"(?m)^User=(?!root$)", unit):  # the key is root:mosquitto 0640
            assert not reads_in_place and "LoadCredential=server.key:" in unit, unit
        else:
            assert reads_in_place, unit


def test_the_cli_help_names_the_same_files():
    out = subprocess.run([sys.executable, "-m", "host_sync", "web", "--help"], capture_output=True,
                         text=True, check=True).stdout
    flat = " ".join(out.split())
    assert "CONFIG/broker/server.pem" in flat and "CONFIG/broker/server.key" in flat
