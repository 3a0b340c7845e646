"""PN532 figures: bus bytes per poll (our driver over I2C on the simulator, empty field and one
card; adafruit's driver on the same simulator and card), heap allocated per poll on the unix port
(128 KB heap), and polls per second on a 400 kHz I2C bus computed from those bytes plus the
ISO/IEC 14443-3 air timings of a card activation (docs/pn532.md "Poll rate").

Bytes count what crosses the bus: data bytes both ways plus one address byte per I2C transfer,
status polls included (the simulator answers 'busy' to the first status read after each command,
as the chip does while it works)."""
from __future__ import annotations

import json
import os
import sys

from tools import mpy
from tools.bench import metric

N = 200
CARD = "00000a1b"

_MP = r"""
import gc, json
from pn532_sim import PN532Sim
from pn532_kit import taped_rig
from gv.pn532.driver import PN532
from gv.pn532 import transport
N = %d
out = {}
sim = PN532Sim()
pn = PN532(transport.I2CTransport(sim.i2c()))
pn.begin()
def bus():
    return sim.bytes_in + sim.bytes_out + sim.transfers
def per_poll(want):
    b0, t0 = bus(), sim.transfers
    for _ in range(N):
        r = pn.poll()
        assert r == want, r
    return (bus() - b0) / N, (sim.transfers - t0) / N
out["empty"] = per_poll(0)
sim.enter(bytes.fromhex("%s"))
out["card"] = per_poll(1)
print("RESULT " + json.dumps(out))
""" % (N, CARD)

# heap: a recorded session replayed through the driver (the simulator itself allocates); its own
# process so the tape has the 128 KB heap to itself
_MP_HEAP = r"""
import gc, json
from pn532_kit import taped_rig
out = {}
M = 40
sim2, pn2, tapes = taped_rig("i2c")
sim2.enter(bytes.fromhex("%s"))
for i in range(M):
    if i == M // 2:
        sim2.clear()
    pn2.poll()
assert pn2.errors == 0, pn2.last_error
for t in tapes:
    t.replay()
def measure(pn, m):  # locals only: a new global would itself allocate (the globals dict grows)
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    for _ in range(m):
        pn.poll()
    a1 = gc.mem_alloc()
    gc.enable()
    return a1 - a0
out["heap_per_poll"] = measure(pn2, M) / M
out["errors"] = pn2.errors
print("RESULT " + json.dumps(out))
""" % CARD

# ISO/IEC 14443-3 type A at 106 kbit/s: one elementary time unit (etu) = 128/fc
_FC = 13.56e6
_ETU = 128 / _FC
_FDT = 1236 / _FC  # frame delay time PCD->PICC->PCD for the short frames here (n = 9)


def _frame_etu(nbytes: int) -> float:
    return nbytes * 9 + 2  # 8 data bits + parity each, start and end of communication


def activation_s(uid_len: int) -> float:
    """Air time of REQA/ATQA and one ANTICOLLISION+SELECT per cascade level (no ATS)."""
    t = (9 + _frame_etu(2)) * _ETU + 2 * _FDT  # REQA (7 bits) and ATQA
    levels = {4: 1, 7: 2, 10: 3}[uid_len]
    per_level = (_frame_etu(2) + _frame_etu(5) + _frame_etu(9) + _frame_etu(3)) * _ETU + 4 * _FDT
    return t + levels * per_level


# The PN532's own processing between receiving a frame and starting the RF work, and between the
# RF answer and its host frame, is not given in UM0701-02; 1 ms per command is an assumption to
# replace with a measurement on the first real reader (docs/pn532.md).
CHIP_OVERHEAD_S = 0.001


def i2c_s(nbytes: float, transfers: float, hz: int = 400_000) -> float:
    # every byte is 9 clocks (ACK bit); each transfer adds START, STOP and bus-free time (~3 clocks)
    return (nbytes * 9 + transfers * 3) / hz


def _adafruit_card_bytes() -> float:
    os.environ.setdefault("BLINKA_OS_AGNOSTIC", "1")
    for p in (mpy.ROOT / "tools" / "sim",):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    from adafruit_pn532.i2c import PN532_I2C
    from pn532_sim import PN532Sim

    sim = PN532Sim()
    pn = PN532_I2C(sim.i2c())
    pn.SAM_configuration()
    sim.enter(bytes.fromhex(CARD))
    n = 20
    b0 = sim.bytes_in + sim.bytes_out + sim.transfers
    for _ in range(n):
        assert bytes(pn.read_passive_target(timeout=0.5)) == bytes.fromhex(CARD)
    return (sim.bytes_in + sim.bytes_out + sim.transfers - b0) / n


def _mp(code: str, heap: str = "128k") -> dict:
    r = mpy.run_snippet(code, heapsize=heap, timeout=120)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        raise RuntimeError("pn532 bench failed: %s %s" % (r.stdout, r.stderr))
    return json.loads(line[0][7:])


def run() -> dict:
    res = _mp(_MP)
    res.update(_mp(_MP_HEAP, heap="256k"))  # room for the tape; the figure is a delta
    if res["errors"]:
        raise RuntimeError("pn532 bench: the replayed polls failed")
    empty_b, empty_t = res["empty"]
    card_b, card_t = res["card"]
    cycle = i2c_s(card_b, card_t) + activation_s(4) + 2 * CHIP_OVERHEAD_S
    return {
        "pn532.poll_bytes_empty": metric(round(empty_b, 1), "bytes/poll", "as few as possible"),
        "pn532.poll_bytes_card": metric(round(card_b, 1), "bytes/poll", "<= adafruit's"),
        "pn532.adafruit_poll_bytes_card": metric(round(_adafruit_card_bytes(), 1), "bytes/poll",
                                                 "reference"),
        "pn532.poll_heap_bytes": metric(res["heap_per_poll"], "bytes/poll", "0"),
        "pn532.polls_per_s_i2c400k": metric(round(1 / cycle, 1), "polls/s",
                                            "computed: bus bytes + ISO14443-3 air time + 1 ms chip (assumed)"),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
