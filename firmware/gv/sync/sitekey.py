# The site's card and PIN keys across a rotation (docs/protocol.md, "SITEKEY"). The host sends the
# next keys with the allowlist version they hold from; the reader keeps them in a pending file
# (temp file + atomic rename) and goes on deciding with the old keys and the old store. Only the
# rebuild of that version (a SNAP, switched in by the store in one atomic step) puts them in
# effect, in the same synchronous step, so no decision ever mixes old keys and new records.
# Which keys hold is a function of what is durable: pending keys hold once the store's version
# reaches theirs, so a power cut at any point boots fully old or fully new. Promotion (config
# rewritten, temp file + rename, then the pending file removed) is idempotent: redone at boot.
import json
import os

from gv.sync.rekey import _write_json


class SiteKeys:
    def __init__(self, cfg, config_path=None, pending_path=None):
        self.config_path = config_path
        self.pending_path = pending_path
        self.card, self.pin = bytes(cfg.card_key), bytes(cfg.pin_key)
        self.next = None  # (from_version, card, pin) not yet in effect
        self.switched = 0  # rotations put in effect in this boot
        if pending_path:
            try:
                with open(pending_path) as f:
                    d = json.load(f)
                k = (int(d["v"]), bytes.fromhex(d["card"]), bytes.fromhex(d["pin"]))
                if k[0] > 0 and len(k[1]) == 16 and len(k[2]) == 16:
                    self.next = k
            except (OSError, ValueError, KeyError, TypeError):
                self.next = None

    def store(self, from_version, card, pin):
        """Keep the next keys (durably, before the host is told); raises OSError."""
        if self.pending_path:
            _write_json(self.pending_path, {"v": from_version, "card": bytes(card).hex(),
                                            "pin": bytes(pin).hex()})
        self.next = (from_version, bytes(card), bytes(pin))

    def applied(self, version, keyer=None):
        """The store's version is now `version`: the pending keys take effect once it reaches
        theirs (keyer switched in place). True when they did."""
        n = self.next
        if n is None or version < n[0]:
            return False
        self.card, self.pin = n[1], n[2]
        if keyer is not None:
            keyer.set_keys(self.card, self.pin)
        self.next = None
        self.switched += 1
        self._promote()
        return True

    def _promote(self):
        if self.config_path:
            try:
                with open(self.config_path) as f:
                    raw = json.load(f)
                raw["site_keys"] = {"card": self.card.hex(), "pin": self.pin.hex()}
                _write_json(self.config_path, raw)
            except (OSError, ValueError):
                return  # the pending file stays: the next boot puts them in effect again
        if self.pending_path:
            try:
                os.remove(self.pending_path)
            except OSError:
                pass
