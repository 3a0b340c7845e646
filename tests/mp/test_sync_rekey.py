# The reader's side of a re-key (gv.sync.rekey) and its boot number (gv.boot), in the unix port:
# the new pair is tried first and kept until a login with it succeeds; a refused login falls
# back to the other pair (a host that never switched costs nothing); the first login with the
# new pair writes it into the config and drops the old; the boot number counts up per boot and
# survives a lost file only by being lifted.
import json
import os

from gv.boot import BootCount
from gv.config import Config
from gv.sync.rekey import Credentials
from mpt import eq, tmpdir

OLD = "11" * 32
NEW = bytes(range(32))


def _cfg(d):
    raw = {"reader_id": "gate-01", "site": "site-a", "secret": OLD,
           "site_keys": {"card": "00" * 16, "pin": "22" * 16},
           "broker": {"host": "10.0.0.2", "port": 8883, "tls": False, "user": "gate-01",
                      "password": "old-password-0123"}}
    with open(d + "/config.json", "w") as f:
        json.dump(raw, f)
    return Config(raw)


def _dir(name):
    d = "%s/%s" % (tmpdir(), name)
    try:
        os.mkdir(d)
    except OSError:
        pass
    for f in ("rekey", "config.json"):
        try:
            os.remove(d + "/" + f)
        except OSError:
            pass
    return d


def test_new_pair_is_kept_until_a_login_with_it_succeeds():
    d = _dir("rk1")
    c = Credentials(_cfg(d), d + "/config.json", d + "/rekey")
    eq(c.choose(False), (bytes.fromhex(OLD), "old-password-0123"))
    c.store_next(NEW, "new-password-4567")
    eq(c.choose(False), (NEW, "new-password-4567"))  # the next attempt: the new pair
    eq(c.choose(True), (bytes.fromhex(OLD), "old-password-0123"))  # refused (host not switched): the old
    eq(c.choose(False), (bytes.fromhex(OLD), "old-password-0123"))  # a plain drop keeps what worked
    eq(c.choose(True), (NEW, "new-password-4567"))  # the old one refused now (switched): the new
    # a reboot before any login: the pending file brings the new pair back, tried first
    c2 = Credentials(_cfg(d), d + "/config.json", d + "/rekey")
    eq(c2.choose(False), (NEW, "new-password-4567"))
    c2.connected(True)
    with open(d + "/config.json") as f:
        raw = json.load(f)
    eq((raw["secret"], raw["broker"]["password"]), (NEW.hex(), "new-password-4567"))
    eq("rekey" in os.listdir(d), False)
    eq((c2.next, c2.promoted), (None, 1))
    eq(c2.choose(True), (NEW, "new-password-4567"))  # only one pair left: nothing to fall back to


def test_a_login_with_the_old_pair_promotes_nothing():
    d = _dir("rk2")
    c = Credentials(_cfg(d), d + "/config.json", d + "/rekey")
    c.store_next(NEW, "new-password-4567")
    c.choose(True)  # refused with the new: the old one next
    c.connected(False)
    eq((c.promoted, c.next is not None), (0, True))
    with open(d + "/config.json") as f:
        eq(json.load(f)["secret"], OLD)


def test_boot_number_counts_up_and_is_lifted_when_lost():
    p = "%s/bootcount" % tmpdir()
    try:
        os.remove(p)
    except OSError:
        pass
    eq(BootCount(p).n, 1)
    eq(BootCount(p).n, 2)
    b = BootCount(p)
    eq(b.n, 3)
    b.raise_to(2)  # never down
    eq(b.n, 3)
    b.raise_to(9)
    eq(BootCount(p).n, 10)
    with open(p, "w") as f:
        f.write("garbage")
    eq(BootCount(p).n, 1)  # unreadable: starts again; the host lifts it (CMD hello)
    eq(BootCount(None).n, 1)  # no file at all: RAM only
