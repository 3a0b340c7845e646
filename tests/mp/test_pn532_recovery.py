# A chip that hangs after hours is recovered by RSTPD_N within a bounded number of polls while
# the reader's asyncio loop keeps running: the reset is a state the next polls continue, never a
# sleep inside poll(). Default (not shrunk) timings, so the bound is the one docs/pn532.md states.
import asyncio

from mpt import eq
from pn532_kit import rig
from gv.pn532.driver import ONE_CARD, ERROR
from gv.pn532 import driver

U = b"\x00\x00\x0a\x1b"
POLL_MS = 50  # the gate loop's poll period


def _bound(pn):
    # fail_reset failing polls, then one poll per reset step (low, high, configure), each step
    # waiting for its delay to pass at one poll per POLL_MS
    steps = 1 + (pn.rst_low_ms + POLL_MS - 1) // POLL_MS + (pn.boot_ms + POLL_MS - 1) // POLL_MS + 1
    return pn.fail_reset + steps + 1


async def _scenario(bus, rst):
    sim, pn = rig(bus, rst=rst)
    eq(pn.begin(), True)
    sim.enter(U)
    eq(pn.poll(), ONE_CARD)
    beats = [0]
    stop = [False]

    async def heartbeat():  # stands in for the keypad scan, the MQTT client, the watchdog feed
        while not stop[0]:
            beats[0] += 1
            await asyncio.sleep_ms(5)

    hb = asyncio.create_task(heartbeat())
    sim.pulses_before = sim.resets
    sim.fault("hang")
    results = []
    beats_per_poll = []
    for _ in range(_bound(pn) + 4):
        results.append(pn.poll())
        b0 = beats[0]
        await asyncio.sleep_ms(POLL_MS)
        beats_per_poll.append(beats[0] - b0)
        if results[-1] == ONE_CARD:
            break
    stop[0] = True
    await hb
    return sim, pn, results, beats_per_poll


def test_hang_recovered_by_reset_pin_while_loop_runs():
    for bus in ("i2c", "uart", "spi"):
        sim, pn, results, beats = asyncio.run(_scenario(bus, True))
        eq(results[-1], ONE_CARD, bus + " %r" % results)
        eq(len(results) <= _bound(pn), True, "%s took %d polls" % (bus, len(results)))
        eq(results[:-1], [ERROR] * (len(results) - 1))
        eq(pn.resets, 1)
        eq(sim.resets - sim.pulses_before, 1)  # RSTPD_N was pulsed once
        eq(pn.failures, 0)
        eq(min(beats) > 0, True, "the loop starved during a poll: %r" % beats)


def test_hang_without_reset_pin_reports_but_never_blocks():
    sim, pn, results, beats = asyncio.run(_scenario("i2c", False))
    eq(set(results), {ERROR})
    eq(pn.failures, len(results))
    eq(pn.last_error in (driver.E_NO_ACK, driver.E_TIMEOUT), True, pn.last_error)
    eq(pn.resets >= 1, True)
    eq(min(beats) > 0, True)
    sim.clear_faults()  # someone power-cycles the module: the driver finds it again by itself
    pn.backoff_ms = 0
    got = [pn.poll() for _ in range(pn.fail_reset + 3)]
    eq(ONE_CARD in got, True, "%r" % got)
