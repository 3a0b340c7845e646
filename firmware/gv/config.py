# The reader's own configuration (/config.json, written by provisioning) and its board file
# (/board.json, written by deploy). Secrets stay in the returned objects: never print them.
#
# problems(d) is the one validation of a reader config (gv/configcheck.py), run by the host CLI,
# tools.provision, the deploy and this firmware alike.
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


def _on_device():
    import sys

    return sys.platform == "esp32"


def problems(d, real=None):
    """Everything wrong with a reader config, one message per field (gv.configcheck.problems:
    `real` defaults to a real reader unless the config says "virtual": true). On a reader the
    checker's bytecode is dropped again afterwards: the running reader never needs it."""
    import sys

    from gv import configcheck

    try:
        return configcheck.problems(d, real)
    finally:
        if sys.implementation.name == "micropython":
            sys.modules.pop("gv.configcheck", None)
            import gv

            if hasattr(gv, "configcheck"):
                delattr(gv, "configcheck")


def _hex(d, key, size):
    v = d[key]
    if len(v) != 2 * size:
        raise ConfigError("%s must be %d bytes of hex" % (key, size))
    return bytes.fromhex(v)


class Config:
    """A validated reader config; `secret`, `card_key` and `pin_key` are bytes."""

    def __init__(self, d, real=None):
        errs = problems(d, _on_device() if real is None else real)
        if errs:
            raise ConfigError("; ".join(errs))
        # the parsed JSON is not kept whole: only the fields below live on (its hex keys and
        # top-level dict are garbage once decoded)
        self.reader_id = d["reader_id"]
        self.site = d["site"]
        self.secret = _hex(d, "secret", 32)
        keys = d["site_keys"]
        self.card_key = _hex(keys, "card", 16)
        self.pin_key = _hex(keys, "pin", 16)
        self.broker = dict(d.get("broker") or {})  # a copy: the sync engine drops its CA text
        self.wifi = d.get("wifi") or {}
        gate = dict(GATE_DEFAULTS)
        gate.update(d.get("gate") or {})
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
