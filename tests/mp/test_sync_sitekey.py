# A site key rotation on the reader (gv.sync.sitekey, docs/protocol.md "SITEKEY"), through the sync
# engine on the real store: the next keys are kept pending while the old keys and the old store
# decide; the rebuild of their version switches keys and store in one step; a power cut at any
# point (mid-rebuild, between the store's switch and the config's) boots fully old or fully new.
import asyncio
import gc
import json
import os

import flashdev
from gv.allowlist.record import Keyer
from gv.allowlist.store import Allowlist
from gv.config import Config
from gv.sync import protocol as P
from gv.sync.engine import Sync
from gv.sync.sitekey import SiteKeys
from mpt import eq

HEAPSIZE = "512k"  # the engine and the store compiled from source, and the test's own 300-record snapshots
SECRET = bytes(range(32))
OLD = (b"\x00" * 16, b"\x11" * 16)
NEW = (bytes(range(16, 32)), bytes(range(32, 48)))
CFG = {"reader_id": "gate-01", "site": "site-a", "secret": SECRET.hex(),
       "site_keys": {"card": OLD[0].hex(), "pin": OLD[1].hex()}, "broker": {}}
HOST = P.Key(SECRET, "gate-01")
TOPIC = "gv/site-a/gate-01/in"
CONF = "/flash/config.json"
PEND = "/flash/sitekey"
N = 300  # cards: the rebuild takes 3 chunks of 100
GOOD, BAD = 7, 42  # card 42 is blocked


def uid(i):
    return bytes([0x04, i >> 8, i & 0xFF, 0x5A])


def records(keys):
    k = Keyer(*keys)
    recs = []
    for i in range(N):
        r = bytearray(16)
        k.uid_key(uid(i), 4, r)
        r[8] = 3 if i == BAD else 1
        r[11] = r[12] = 0xFF
        recs.append(bytes(r))
    recs.sort()
    return b"".join(recs)


class Link:  # the engine's view of an MQTT client, without a network
    connected = False

    def subscribe(self, t):
        pass


class Reader:
    """What app.Reader builds, minus the hardware: keys from the config and the pending file."""

    def __init__(self, dev=None):
        if dev is None:
            dev = flashdev.FlashDev(blocks=96)
            flashdev.format_and_mount(dev)
            with open(CONF, "w") as f:
                json.dump(CFG, f)
        else:
            flashdev.mount(dev)
        self.dev = dev
        with open(CONF) as f:
            cfg = Config(json.load(f))
        self.al = Allowlist("/flash/al", dev).open()
        self.keys = SiteKeys(cfg, CONF, PEND)
        self.keyer = Keyer(self.keys.card, self.keys.pin)
        self.keys.applied(self.al.version, self.keyer)
        self.s = Sync(cfg, self.al, client=Link(), sitekeys=self.keys, keyer=self.keyer)
        asyncio.run(self.s._on_connect())
        self.ctr = 100

    def send(self, typ, body=None, make=None):
        self.ctr += 1
        if make is not None:
            body = make(self.s.nonce, self.ctr)
        before = sum(self.s.rejected.values())
        self.s._on_message(TOPIC, P.seal(HOST, P.DIR_HOST, typ, self.s.nonce, self.ctr, body))
        return sum(self.s.rejected.values()) == before

    def snap(self, version, data, upto=N):
        o = self.s._state()[2] if self.s._state()[1] == version else 0
        while o < upto:
            n = min(100, N - o)
            assert self.send(P.T_SNAP, P.snap_body(version, version, N, o, n,
                                                   data[o * 16:(o + n) * 16])), self.s.rejected
            o += n

    def status(self, i):
        """The status the gate would decide on for card i (None: not on the list)."""
        k8 = bytearray(8)
        self.keyer.uid_key(uid(i), 4, k8)
        out = bytearray(16)
        return out[8] & 7 if self.al.lookup(k8, out) else None

    def reboot(self):
        dev = self.dev
        self.al = self.s = None
        gc.collect()
        flashdev.umount()
        self.__init__(dev)


def _sitekey(v, keys):
    return lambda nonce, ctr: P.sitekey_body(HOST, nonce, ctr, v, keys[0], keys[1])


def _conf_keys():
    with open(CONF) as f:
        k = json.load(f)["site_keys"]
    return bytes.fromhex(k["card"]), bytes.fromhex(k["pin"])


def test_rotation_keeps_old_keys_until_the_rebuild_then_switches_both():
    r = Reader()
    try:
        r.snap(5, records(OLD))
        eq((r.al.version, r.status(GOOD), r.status(BAD)), (5, 1, 3))
        assert r.send(P.T_SITEKEY, make=_sitekey(6, NEW))
        eq(r.s._cmdres[-1][1:], (P.C_SITEKEY, P.CR_OK))
        eq((r.keys.next[0], _conf_keys()), (6, OLD))  # pending, not in effect
        eq((r.status(GOOD), r.status(BAD)), (1, 3))  # the old keys and the old store decide
        eq(r.s._state()[0], 0)  # it asks for the rebuild
        # a delta across the rotation is never applied to the old-key store
        assert r.send(P.T_DELTA, P.delta_body(6, 5, 6, [(bytes(8), bytes(16))]))
        eq(r.al.version, 5)
        # the new-key rebuild, two chunks of three, then a power cut
        new = records(NEW)
        r.snap(6, new, upto=200)
        eq((r.status(GOOD), r.status(BAD), r.keys.card), (1, 3, OLD[0]))
        r.reboot()
        eq((r.al.version, r.keys.card, r.keys.next[0]), (5, OLD[0], 6))  # fully old
        eq((r.status(GOOD), r.status(BAD)), (1, 3))
        r.snap(6, new)  # resumed where it stood; its last chunk switches store and keys
        eq((r.al.version, r.keys.card, r.keys.pin, r.keys.next), (6, NEW[0], NEW[1], None))
        eq((r.status(GOOD), r.status(BAD), r.status(N + 5)), (1, 3, None))
        eq(_conf_keys(), NEW)
        eq("sitekey" in os.listdir("/flash"), False)
        eq(r.s._state()[0], 6)  # deltas again from here
        r.reboot()
        eq((r.al.version, r.keys.card, r.status(GOOD), r.status(BAD)), (6, NEW[0], 1, 3))
    finally:
        flashdev.umount()


def test_power_cut_between_the_store_switch_and_the_config_boots_new():
    r = Reader()
    try:
        r.snap(5, records(OLD))
        assert r.send(P.T_SITEKEY, make=_sitekey(6, NEW))
        new = records(NEW)
        r.keys.config_path = None  # the config write "never happens": cut before it
        r.keys.pending_path = None  # (and so the pending file is not removed either)
        r.snap(6, new)
        eq((_conf_keys(), "sitekey" in os.listdir("/flash")), (OLD, True))
        r.reboot()  # store at 6, config old, keys pending for 6: the new keys decide
        eq((r.al.version, r.keys.card, r.keys.pin), (6, NEW[0], NEW[1]))
        eq((r.status(GOOD), r.status(BAD)), (1, 3))
        eq((_conf_keys(), "sitekey" in os.listdir("/flash")), (NEW, False))  # promoted at boot
    finally:
        flashdev.umount()


def test_keys_for_a_version_the_store_has_or_garbled_are_refused():
    r = Reader()
    try:
        r.snap(5, records(OLD))
        assert not r.send(P.T_SITEKEY, make=_sitekey(5, NEW))
        eq((r.s.rejected, r.keys.next), ({P.E_ORDER: 1}, None))
        assert not r.send(P.T_SITEKEY, make=lambda n, c: _sitekey(6, NEW)(n, c)[:35])
        eq((r.s.rejected.get(P.E_MALFORMED), r.keys.next), (1, None))
        eq("sitekey" in os.listdir("/flash"), False)
        eq((r.status(GOOD), r.status(BAD)), (1, 3))
    finally:
        flashdev.umount()
