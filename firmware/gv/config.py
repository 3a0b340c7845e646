# The reader's own configuration (/config.json, written by provisioning) and its board file
# (/board.json, written by deploy). Secrets stay in the returned objects: never print them.
import json

CONFIG_PATH = "/config.json"
BOARD_PATH = "/board.json"

GATE_DEFAULTS = {
    "hold_ms": 500,
    "open_ms": 3000,
    "pin_policy": "card",  # never | card | always
}


class ConfigError(ValueError):
    pass


def _hex(d, key, size):
    v = d.get(key)
    if not isinstance(v, str):
        raise ConfigError("%s missing" % key)
    try:
        b = bytes.fromhex(v)
    except ValueError:
        raise ConfigError("%s is not hex" % key)
    if len(b) != size:
        raise ConfigError("%s must be %d bytes" % (key, size))
    return b


class Config:
    """A validated reader config; `secret`, `card_key` and `pin_key` are bytes."""

    def __init__(self, d):
        if not isinstance(d, dict):
            raise ConfigError("config is not an object")
        self.raw = d
        self.reader_id = d.get("reader_id")
        self.site = d.get("site")
        if not self.reader_id or not self.site:
            raise ConfigError("reader_id and site are required")
        self.secret = _hex(d, "secret", 32)
        keys = d.get("site_keys") or {}
        self.card_key = _hex(keys, "card", 16)
        self.pin_key = _hex(keys, "pin", 16)
        self.broker = d.get("broker") or {}
        self.wifi = d.get("wifi") or {}
        gate = dict(GATE_DEFAULTS)
        gate.update(d.get("gate") or {})
        if gate["pin_policy"] not in ("never", "card", "always"):
            raise ConfigError("gate.pin_policy must be never, card or always")
        self.gate = gate

    def __repr__(self):  # never show secrets, even by accident at the REPL
        return "<Config reader=%s site=%s>" % (self.reader_id, self.site)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def load(path=CONFIG_PATH):
    """The reader's Config, or raises ConfigError (missing, unreadable or invalid)."""
    try:
        d = _read_json(path)
    except OSError:
        raise ConfigError("no %s: this reader is not provisioned" % path)
    except ValueError:
        raise ConfigError("%s is not valid JSON" % path)
    return Config(d)


def load_board(path=BOARD_PATH):
    try:
        return _read_json(path)
    except (OSError, ValueError):
        raise ConfigError("no valid %s: deploy the board file" % path)
