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


def problems(d: object) -> list[str]:
    """Everything wrong with a reader config (field names only, never values)."""
    if not isinstance(d, dict):
        return ["config is not a JSON object"]
    out: list[str] = []
    try:
        fwconfig.Config(d)  # the device's own checks: ids, secret and site keys, gate section
    except fwconfig.ConfigError as e:
        out.append(str(e))
    for k in ("reader_id", "site"):
        if isinstance(d.get(k), str) and not valid_name(d[k]):
            out.append(f"{k}: use 1-32 of A-Z a-z 0-9 - _ (it is part of the reader's MQTT topics)")
    wifi = d.get("wifi")
    if not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str) or not wifi.get("ssid"):
        out.append("wifi.ssid missing")
    elif not isinstance(wifi.get("password"), str):
        out.append("wifi.password missing (use \"\" for an open network)")
    b = d.get("broker")
    if not isinstance(b, dict):
        out.append("broker missing")
    else:
        if not isinstance(b.get("host"), str) or not b.get("host"):
            out.append("broker.host missing")
        port = b.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            out.append("broker.port must be 1..65535")
        if not isinstance(b.get("tls"), bool):
            out.append("broker.tls must be true or false")
        elif b["tls"] and "-----BEGIN CERTIFICATE-----" not in str(b.get("ca") or ""):
            out.append("broker.ca: TLS needs the site CA certificate (PEM)")
        if b.get("user") != d.get("reader_id"):
            out.append("broker.user must be the reader's own account (its reader_id)")
        if not isinstance(b.get("password"), str) or len(b.get("password") or "") < 16:
            out.append("broker.password missing or shorter than 16 characters")
    return out


def validate(d: object) -> dict:
    errs = problems(d)
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
                ca_pem: str | None = None, tls: bool = True, gate: dict | None = None) -> dict:
    """A reader config in the contract's shape, validated."""
    d = {"reader_id": reader_id, "site": site,
         "wifi": {"ssid": wifi_ssid, "password": wifi_password},
         "broker": {"host": broker_host, "port": broker_port, "tls": tls, "ca": ca_pem,
                    "user": reader_id, "password": broker_password},
         "secret": secret_hex, "site_keys": {"card": card_key_hex, "pin": pin_key_hex},
         "gate": dict(fwconfig.GATE_DEFAULTS, **(gate or {}))}
    if not tls:
        d["broker"].pop("ca")
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
