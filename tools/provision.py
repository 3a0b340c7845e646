"""Per-reader config files (/config.json on the device): build, validate, store, find, show redacted.

The host's `host-sync readers add <id> --config-out FILE` issues the reader's secret and broker
account and writes this file (Python callers: `make_config(...)` + `write_config(...)`);
`python -m tools.deploy --reader <id or FILE>` finds it with `find_config` and writes it to the device. One file per reader, holding only that reader's own secret, stored with
mode 0600 in GV_READERS_DIR (default ~/.config/grindvakt/readers, outside any git checkout).
Secrets never reach a log or a terminal: errors name the field, never its value, and `redacted()`
is the only way the tools show a config.

    python -m tools.provision check <reader id | config.json>   validate, print the redacted config
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tools import mpy

if str(mpy.FIRMWARE) not in sys.path:
    sys.path.insert(0, str(mpy.FIRMWARE))  # the firmware's own config loader checks the same file

from gv import config as fwconfig  # noqa: E402
from gv.sync.protocol import valid_name  # noqa: E402  (ids go into MQTT topics)

SECRET_FIELDS = (("secret",), ("wifi", "password"), ("broker", "password"),
                 ("site_keys", "card"), ("site_keys", "pin"))
REDACTED = "<redacted>"


class ProvisionError(ValueError):
    """A config that can't go onto a reader; the message never contains a secret value."""


def readers_dir() -> Path:
    return Path(os.environ.get("GV_READERS_DIR") or "~/.config/grindvakt/readers").expanduser()


def config_path(reader_id: str, directory: Path | None = None) -> Path:
    if not valid_name(reader_id):
        raise ProvisionError(f"reader id {reader_id!r}: use 1-32 of A-Z a-z 0-9 - _")
    return (directory or readers_dir()) / f"{reader_id}.json"


def problems(d: object, real: bool | None = None) -> list[str]:
    """Everything wrong with a reader config (field names and allowed ranges, never values of
    secrets): the firmware's own gv.config.problems, so the host refuses exactly what the
    reader would. `real` as there: default, a real reader unless the config says "virtual"."""
    return fwconfig.problems(d, real)


def validate(d: object, real: bool | None = None) -> dict:
    errs = problems(d, real)
    if errs:
        raise ProvisionError("reader config refused: " + "; ".join(errs))
    return d  # type: ignore[return-value]


def redacted(d: dict) -> dict:
    """A deep copy with every secret replaced, for showing to people."""
    out = json.loads(json.dumps(d))
    for path in SECRET_FIELDS:
        node = out
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1]) not in (None, ""):
            node[path[-1]] = REDACTED
    return out


def make_config(reader_id: str, site: str, *, wifi_ssid: str, wifi_password: str, broker_host: str,
                broker_port: int, broker_password: str, secret_hex: str, card_key_hex: str, pin_key_hex: str,
                ca_pem: str | None = None, tls: bool = True, gate: dict | None = None,
                wifi_open: bool = False, virtual: bool = False) -> dict:
    """A reader config in the contract's shape, validated. `wifi_open`: a Wi-Fi network without
    a password (said explicitly, never assumed from an empty one); `virtual`: for a virtual
    board on this host (a loopback broker and no Wi-Fi are allowed; a real reader refuses it)."""
    wifi: dict = {"ssid": wifi_ssid, "password": wifi_password}
    if wifi_open:
        wifi["open"] = True
    d = {"reader_id": reader_id, "site": site, "wifi": wifi,
         "broker": {"host": broker_host, "port": broker_port, "tls": tls, "ca": ca_pem,
                    "user": reader_id, "password": broker_password},
         "secret": secret_hex, "site_keys": {"card": card_key_hex, "pin": pin_key_hex},
         "gate": dict(fwconfig.GATE_DEFAULTS, **(gate or {}))}
    if not tls:
        d["broker"].pop("ca")
    if virtual:
        d["virtual"] = True
        if not wifi_ssid:
            d.pop("wifi")
    return validate(d)


def encode(d: dict) -> bytes:
    """The exact bytes written to /config.json (stable, so a re-deploy can compare hashes)."""
    return (json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n").encode()


def write_config(d: dict, path: Path | None = None) -> Path:
    """Validate and store a reader's config (mode 0600, atomic replace); returns its path."""
    validate(d)
    p = path or config_path(d["reader_id"])
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode(d))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return p


def find_config(reader: str, directory: Path | None = None) -> Path:
    """A reader id (looked up in GV_READERS_DIR) or a path to a config file."""
    p = Path(reader)
    if p.suffix == ".json" or os.sep in reader:
        if not p.exists():
            raise ProvisionError(f"no reader config at {p}")
        return p
    p = config_path(reader, directory)
    if not p.exists():
        raise ProvisionError(f"no config for reader {reader!r} in {p.parent}: run "
                             f"`host-sync readers add {reader} ...` first (it issues the secret and account)")
    return p


def load_config(reader: str, directory: Path | None = None) -> dict:
    p = find_config(reader, directory)
    if p.stat().st_mode & 0o077:
        print(f"provision: warning: {p} is readable by other users; chmod 600 it", file=sys.stderr)
    try:
        d = json.loads(p.read_text())
    except ValueError:
        raise ProvisionError(f"{p}: not valid JSON") from None  # no excerpt: it may hold secrets
    return validate(d)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "check":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        d = load_config(args[1])
    except ProvisionError as e:
        print(f"provision: {e}", file=sys.stderr)
        return 1
    print(json.dumps(redacted(d), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
