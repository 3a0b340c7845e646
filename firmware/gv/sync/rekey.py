# A reader's link credentials (its MAC secret and broker password) and a re-key in progress
# (docs/protocol.md, "REKEY"): the host sends the new pair sealed and encrypted under the old
# secret; the reader keeps it in a pending file (temp file + atomic rename) and acknowledges.
# The host then switches the registry and the broker's account; the broker drops the old
# connection, and from then on only the new pair logs in. Until a connection with the new pair
# succeeds the old one is kept, so a lost acknowledgement or a switch that never came costs
# nothing: a refused login (CONNACK 4/5) makes the next attempt use the other pair. The first
# connection made with the new pair writes it into /config.json and drops the old one.
import json
import os


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


class Credentials:
    def __init__(self, cfg, config_path=None, pending_path=None):
        self.config_path = config_path
        self.pending_path = pending_path
        self.current = (bytes(cfg.secret), (cfg.broker or {}).get("password"))
        self.next = None
        self.use_next = False
        self.promoted = 0  # re-keys completed in this boot
        if pending_path:
            try:
                with open(pending_path) as f:
                    d = json.load(f)
                self.next = (bytes.fromhex(d["secret"]), d["password"])
                self.use_next = True
            except (OSError, ValueError, KeyError, TypeError):
                self.next = None

    def store_next(self, secret, password):
        """Keep the new pair (durably, before the host is told); raises OSError."""
        if self.pending_path:
            _write_json(self.pending_path, {"secret": bytes(secret).hex(), "password": password})
        self.next = (bytes(secret), password)
        self.use_next = True

    def choose(self, refused):
        """(secret, password) for the next connection attempt."""
        if self.next is not None and refused:
            self.use_next = not self.use_next  # that pair was refused: the other one
        return self.next if (self.use_next and self.next is not None) else self.current

    def connected(self, used_next):
        """A connection with the pair chosen last succeeded: the new pair becomes the only one."""
        if not used_next or self.next is None:
            return
        secret, password = self.next
        if self.config_path:
            try:
                with open(self.config_path) as f:
                    raw = json.load(f)
                raw["secret"] = secret.hex()
                raw.setdefault("broker", {})["password"] = password
                _write_json(self.config_path, raw)
            except (OSError, ValueError):
                return  # keep both: the next boot tries the new pair first again
        if self.pending_path:
            try:
                os.remove(self.pending_path)
            except OSError:
                pass
        self.current, self.next, self.use_next = self.next, None, False
        self.promoted += 1
