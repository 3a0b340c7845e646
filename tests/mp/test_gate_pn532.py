# The gate runner on the real PN532 driver talking I2C to the PN532 simulator, with the real
# allowlist store, event ring and lockouts on the flash stand-in: a card held steadily opens the
# relay, a waved card locks the reader, bus faults and a hung chip never open it.
import time
import mpt
from gv.allowlist import store  # noqa: F401 - compiled first, while the heap is in one piece
from gate_kit import Kit
from gate_hw import FakePin, FakeWDT
from gv.allowlist import record as R
from gv import events as E
from gv.drivers.outputs import Buzzer, Leds, Relay
from gv.gate.runner import GateRunner
from gv.pn532.driver import PN532
from gv.pn532.transport import I2CTransport
from pn532_sim import PN532Sim

HEAPSIZE = "320k"  # the reader's code is compiled from source into this heap, the kit beside it
TIMEOUT = 300
A = b"\x04\xa1\xb2\xc3"
B = b"\x00\x0a\x1b\x2c\x3d\x4e\x5f"  # 7-byte UID with a leading zero


class Rig:
    def __init__(self, cfg):
        self.kit = Kit(cfg)
        al = self.kit.real_allowlist([(A, R.ACTIVE, 0, None), (B, R.BLOCKED, 0, None)])
        self.sim = PN532Sim()
        self.pn = PN532(I2CTransport(self.sim.i2c()), rst=self.sim.reset_pin())
        assert self.pn.begin()
        self.relay_pin = FakePin()
        self.wdt = FakeWDT()
        k = self.kit
        self.runner = GateRunner(cfg, self.pn, al, k.keyer, k.ev, k.lk, Relay(self.relay_pin),
                                 Leds(FakePin(), FakePin()), Buzzer(FakePin()), None, self.wdt,
                                 k.clock, log=lambda s: None)
        self.runner.boot(k.now)
        self.opened = 0

    def run(self, ms, step=10, real=True):
        for _ in range(ms // step):
            if real:  # the driver times its chip recovery on the real clock: keep pace with it
                time.sleep_ms(step)
            self.kit.advance(step)
            self.runner.step(self.kit.now)
            if self.relay_pin.v:
                self.opened += 1

    def decisions(self):
        return [(d["kind"], d["result"], d["reason"], d["uid"]) for d in self.kit.events()
                if d["kind"] != E.K_BOOT]


def test_held_card_opens_blocked_and_waved_do_not():
    rig = Rig({"hold_ms": 500, "open_ms": 1000, "wave_count": 3, "wave_lock_ms": 2000})
    rig.sim.enter(A)
    rig.run(700)
    assert rig.opened, rig.decisions()
    rig.sim.clear()
    rig.run(1500)
    rig.opened = 0
    rig.sim.enter(B)
    rig.run(700)
    rig.sim.clear()
    rig.run(300)
    mpt.eq(rig.opened, 0)
    mpt.eq(rig.decisions()[-1], (E.K_DECISION, E.R_REFUSE, E.BLOCKED, B))  # leading zero kept
    for _ in range(3):  # waved
        rig.sim.enter(A)
        rig.run(150)
        rig.sim.clear()
        rig.run(300)
    mpt.eq(rig.decisions()[-1][:3], (E.K_LOCKOUT, E.R_REFUSE, E.LOCKED_WAVE))
    rig.sim.enter(A)
    rig.run(700)
    mpt.eq(rig.opened, 0)
    rig.sim.clear()
    rig.run(2000)
    rig.sim.enter(A)
    rig.run(700)
    assert rig.opened


def test_bus_faults_and_a_hung_chip_never_open():
    rig = Rig({"hold_ms": 500, "open_ms": 1000, "burst_count": 50})  # (no burst lock here)
    for kind in ("garbage", "checksum", "truncate", "flip", "prefix", "nack", "no_ack"):
        rig.sim.fault(kind, 3)
        rig.sim.enter(B)  # a blocked card in the field while the bus misbehaves
        rig.run(800)
        rig.sim.clear()
        rig.run(300)
    mpt.eq(rig.opened, 0)
    refusals = [d for d in rig.decisions() if d[1] == E.R_REFUSE]
    assert refusals and all(d[2] == E.BLOCKED and d[3] == B for d in refusals), refusals
    rig.sim.fault("hang")
    rig.sim.enter(A)
    rig.run(300)
    mpt.eq(rig.opened, 0)
    assert rig.wdt.feeds > 0 and rig.runner.faults == 0
    rig.sim.clear()
    rig.run(2500)  # the driver resets the chip in the background
    rig.sim.enter(A)
    rig.run(1500)
    assert rig.opened, (rig.pn.last_error, rig.pn.resets, rig.sim._faults)
