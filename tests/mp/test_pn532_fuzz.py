# Seeded fuzz: >= 10,000 polls of a driver whose simulated chip answers with garbage, truncated,
# corrupted, prefixed, NACKed, unacknowledged or hung frames while cards come and go (two at a
# time, some leaving mid-command). Nothing escapes poll(), every result is one of the four, and
# no card is ever reported that was not in the field when the poll began. Plus 10,000 raw
# buffers through frame.decode.
from mpt import eq
from pn532_kit import rig
from gv.pn532.driver import NO_CARD, ONE_CARD, MANY_CARDS, ERROR
from gv.pn532 import frame

TIMEOUT = 300
POOL = [b"\x00\x00\x0a\x1b", b"\x04\x11\x22\x33", b"\x00\x04\xa1\xb2\xc3\xd4\x00",
        b"\x04\x00\x00\x00\x00\x00\x01", bytes(range(10)), b"\x08\xde\xad\x01"]
ATTR = {}  # uid -> (atqa, sak)
for _i, _u in enumerate(POOL):
    ATTR[_u] = (0x0004 + 0x40 * (len(_u) // 7), (0x08, 0x00, 0x20)[_i % 3])
# faults the PN532's checks must catch (a single corrupted byte, truncation, random bytes),
# plus protocol faults; insertions/deletions are left out: docs/pn532.md "Limits"
FAULTS = ("checksum", "flip", "truncate", "prefix", "garbage", "nack", "no_ack", "stretch", "hang")


class Rng:
    def __init__(self, seed):
        self.x = seed or 1

    def next(self, n):
        x = self.x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.x = x
        return x % n


def _run(bus, seed, cases):
    rng = Rng(seed)
    sim, pn = rig(bus, fast=True, seed=seed, stretch_ms=1)
    pn.begin()
    counts = [0, 0, 0, 0]
    for _ in range(cases):
        a = rng.next(10)
        if a < 2 and len(sim.cards) < 2:
            u = POOL[rng.next(len(POOL))]
            at, sk = ATTR[u]
            sim.enter(u, atqa=at, sak=sk)
        elif a < 4 and sim.cards:
            sim.leave(sim.cards[rng.next(len(sim.cards))].uid)
        elif a == 4 and sim.cards:
            sim.leave_mid_command(sim.cards[rng.next(len(sim.cards))].uid)
        clean = rng.next(3) == 0
        if not clean and not sim._faults_pending():
            k = FAULTS[rng.next(len(FAULTS))]
            if k != "hang" or rng.next(20) == 0:  # hangs are rarer, else the chip is mostly down
                sim.fault(k, 1 + rng.next(2))
        before = {}
        for c in sim.cards:
            before[c.uid] = (c.atqa, c.sak)
        leaving = len(sim._leaving)
        was_ready = pn.ready and not sim.hung and not sim._faults_pending()
        r = pn.poll()
        counts[r] += 1
        if r == ONE_CARD:
            uid = bytes(pn.uid[:pn.uid_len])
            if uid not in before:
                raise AssertionError("reported %s, field %r" % (uid, list(before)))
            eq((pn.atqa, pn.sak), before[uid])
        elif r == MANY_CARDS:
            eq(len(before) >= 2, True, "two cards reported, field %r" % list(before))
        elif r == NO_CARD:
            # with a healthy chip, no pending faults and nobody leaving, an occupied field is seen
            if was_ready and not leaving and before:
                raise AssertionError("missed %r" % list(before))
        else:
            eq(r, ERROR)
    return counts, pn


def _check(bus, seed, cases):
    counts, pn = _run(bus, seed, cases)
    eq(sum(counts), cases)
    # every outcome happened, and the chip recovered from its hangs each time
    for r in (NO_CARD, ONE_CARD, MANY_CARDS, ERROR):
        eq(counts[r] > 0, True, "%s never returned %d: %r" % (bus, r, counts))
    eq(pn.resets > 0, True)
    print(bus, "results", counts, "resets", pn.resets, "retransmits", pn.retransmits)


def test_fuzz_i2c_6000():
    _check("i2c", 1234, 6000)


def test_fuzz_uart_2000():
    _check("uart", 99, 2000)


def test_fuzz_spi_2000():
    _check("spi", 7, 2000)


def test_fuzz_decode_10000():
    rng = Rng(4242)
    good = frame.frame(b"\xd5\x4b\x01\x01\x00\x04\x08\x04\x00\x0a\x1b\x2c")
    buf = bytearray(64)
    valid = 0
    for i in range(10000):
        kind = rng.next(4)
        n = len(good)
        for j in range(n):
            buf[j] = good[j]
        if kind == 0:  # random bytes
            n = rng.next(64)
            for j in range(n):
                buf[j] = rng.next(256)
        elif kind == 1:  # truncated
            n = rng.next(len(good))
        elif kind == 2:  # one byte changed
            j = rng.next(n)
            buf[j] ^= 1 + rng.next(255)
        r = frame.decode(buf, 0, n)
        eq(-8 <= r, True)
        if r >= 0:
            d, ln = r >> 16, r & 0xFFFF
            eq(d + ln + 2 <= n, True)
            if kind != 3 and buf[d:d + ln] != good[5:5 + ln]:
                # a single changed byte can only pass if it was outside the checked bytes
                eq(kind == 2, True)
                raise AssertionError("corrupted frame accepted: %r" % bytes(buf[:n]))
            valid += 1
    eq(valid > 2000, True)
