# PN532 card poller for the gate loop: one poll() = one InListPassiveTarget exchange.
#   pn = PN532(transport, rst=None, irq=None); pn.begin(); st = pn.poll()
# poll() never raises and allocates nothing: frames are pre-built, answers land in the
# transport's buffer, the UID is copied into a preallocated buffer (pn.uid, a memoryview).
# Failures are retried on the next poll; after `fail_reset` consecutive failures the chip is
# reset (RSTPD_N pulse if wired, else re-initialised over the bus) and reconfigured, one short
# step per poll so the asyncio loop never waits on the reset (docs/pn532.md, "Blocking").
from gv.compat import const, ticks_diff, ticks_ms
from gv.pn532 import frame
from gv.pn532.transport import READ_ACK, READ_FULL, READ_SHORT

try:
    from time import sleep_ms
except ImportError:  # CPython
    from time import sleep as _sleep

    def sleep_ms(ms):
        _sleep(ms / 1000)

# poll() results (gv.gate.core restates these numbers)
NO_CARD = const(0)
ONE_CARD = const(1)
MANY_CARDS = const(2)
ERROR = const(3)

# commands (UM0701-02 §7)
CMD_DIAGNOSE = const(0x00)
CMD_GET_FIRMWARE_VERSION = const(0x02)
CMD_SAM_CONFIGURATION = const(0x14)
CMD_POWER_DOWN = const(0x16)
CMD_RF_CONFIGURATION = const(0x32)
CMD_IN_LIST_PASSIVE_TARGET = const(0x4A)
CMD_IN_RELEASE = const(0x52)

RF_ITEM_FIELD = const(0x01)
RF_ITEM_MAX_RETRIES = const(0x05)
BR_106_TYPE_A = const(0x00)
MAX_TARGETS = const(2)
UID_MAX = const(10)

# last_error values
E_NONE = ""
E_TIMEOUT = "no answer"
E_NO_ACK = "no ack"
E_NACK = "nack"
E_CHECKSUM = "checksum"
E_FRAME = "bad frame"
E_BUS = "bus error"
E_CHIP = "chip error frame"
E_ANSWER = "bad answer"
E_EXCEPTION = "exception"
E_NO_CHIP = "no chip"

# internal result codes (negative; >= 0 is a packed frame position from frame.decode)
_R_TIMEOUT = const(-100)
_R_BUS = const(-101)
_R_NO_ACK = const(-102)
_R_NACK = const(-103)
_R_CHECKSUM = const(-104)
_R_FRAME = const(-105)
_R_CHIP = const(-106)
_R_ANSWER = const(-107)
_R_EXC = const(-108)

_ENODEV = const(19)  # machine.I2C's errno for an address NACK

# states
_READY = const(0)
_RST_LOW = const(1)
_BOOT = const(2)
_CONFIG = const(3)
_BACKOFF = const(4)
_ASLEEP = const(5)


def _err(code):
    if code == _R_TIMEOUT:
        return E_TIMEOUT
    if code == _R_BUS:
        return E_BUS
    if code == _R_NO_ACK:
        return E_NO_ACK
    if code == _R_NACK:
        return E_NACK
    if code == _R_CHECKSUM:
        return E_CHECKSUM
    if code == _R_CHIP:
        return E_CHIP
    if code == _R_ANSWER:
        return E_ANSWER
    if code == _R_EXC:
        return E_EXCEPTION
    return E_FRAME


class PN532:
    # Timings in ms (docs/pn532.md). Instance attributes so tests can shrink them.
    ack_ms = 10  # the chip ACKs within ~1 ms of a complete frame
    resp_ms = 40  # InListPassiveTarget with MxRtyPassiveActivation=max_retries, no card
    cfg_ms = 30  # SAM/RF configuration, firmware version
    fail_reset = 3  # consecutive failed polls before a reset
    rst_low_ms = 10  # RSTPD_N held low
    boot_ms = 20  # after RSTPD_N goes high, before the first frame
    backoff_ms = 1000  # after a failed recovery, before the next one (a dead chip costs nothing)

    def __init__(self, transport, rst=None, irq=None, max_retries=1):
        self.t = transport
        self.rst = rst
        self.irq = irq
        self._uid = bytearray(UID_MAX)
        self.uid = memoryview(self._uid)
        self.uid_len = 0
        self.atqa = 0
        self.sak = 0
        self.targets = 0  # targets in the last answer (0, 1 or 2)
        self.firmware = bytearray(4)  # IC, Ver, Rev, Support from GetFirmwareVersion
        self.failures = 0  # consecutive polls that returned ERROR
        self.errors = 0  # all failed exchanges since start
        self.resets = 0  # recoveries started (RSTPD_N pulses or bus re-inits)
        self.naks = 0  # status reads the bus refused (I2C NACK while busy)
        self.retransmits = 0  # answers re-requested with a NACK after a checksum error
        self.long_reads = 0  # answers longer than RESP_SHORT, re-read in full
        self.aborts = 0  # failed exchanges aborted with an ACK frame
        self.polls = 0
        self.last_error = E_NONE
        self._state = _CONFIG
        self._mark = ticks_ms()
        h = frame.TFI_HOST
        self._f_list = frame.frame(bytes((h, CMD_IN_LIST_PASSIVE_TARGET, MAX_TARGETS, BR_106_TYPE_A)))
        self._f_fw = frame.frame(bytes((h, CMD_GET_FIRMWARE_VERSION)))
        # normal mode, virtual-card timeout 1 s (unused), use the IRQ line
        self._f_sam = frame.frame(bytes((h, CMD_SAM_CONFIGURATION, 0x01, 0x14, 0x01)))
        # MxRtyATR (default 0xFF), MxRtyPSL (default 1), MxRtyPassiveActivation: bounded
        self._f_rf = frame.frame(bytes((h, CMD_RF_CONFIGURATION, RF_ITEM_MAX_RETRIES, 0xFF, 0x01,
                                         max_retries & 0xFF)))
        self._f_release = frame.frame(bytes((h, CMD_IN_RELEASE, 0x00)))
        self._f_down = frame.frame(bytes((h, CMD_POWER_DOWN, 0xB0)))  # wake on I2C, SPI or HSU
        for f in (self._f_list, self._f_fw, self._f_sam, self._f_rf, self._f_release, self._f_down,
                  frame.ACK, frame.NACK):
            transport.prepare(len(f))

    # ---------------- start-up (may block for tens of ms; called once) ----------------
    def begin(self):
        """Reset (if RSTPD_N is wired), wake, configure; True when the chip answered. Never
        raises: a missing chip leaves poll() returning ERROR and retrying in the background."""
        try:
            if self.rst is not None:
                self.rst.value(0)
                sleep_ms(self.rst_low_ms)
                self.rst.value(1)
                sleep_ms(self.boot_ms)
            for _ in range(3):
                if self._configure():
                    self._state = _READY
                    self.failures = 0
                    return True
        except Exception:
            self.last_error = E_EXCEPTION
        self._state = _BACKOFF
        self._mark = ticks_ms()
        if self.last_error == E_TIMEOUT or self.last_error == E_NO_ACK:
            self.last_error = E_NO_CHIP
        return False

    def _configure(self):
        t = self.t
        t.wake()
        r = self._exchange(self._f_sam, CMD_SAM_CONFIGURATION, self.cfg_ms)
        if r < 0:
            self.last_error = _err(r)
            return False
        r = self._exchange(self._f_fw, CMD_GET_FIRMWARE_VERSION, self.cfg_ms)
        if r < 0 or (r & 0xFFFF) != 6 or t.buf[(r >> 16) + 2] != 0x32:
            self.last_error = _err(r) if r < 0 else E_ANSWER
            return False
        d = (r >> 16) + 2
        for i in range(4):
            self.firmware[i] = t.buf[d + i]
        r = self._exchange(self._f_rf, CMD_RF_CONFIGURATION, self.cfg_ms)
        if r < 0:
            self.last_error = _err(r)
            return False
        return True

    # ---------------- the poll ----------------
    def poll(self):
        """NO_CARD, ONE_CARD (uid/uid_len/atqa/sak set), MANY_CARDS or ERROR. Never raises."""
        self.polls += 1
        try:
            st = self._state
            if st == _READY:
                return self._poll_ready()
            if st == _ASLEEP:
                return NO_CARD
            self._recover()
            return self._failed(0)
        except Exception:  # a bus driver raising something odd must not stop the gate loop
            return self._failed(_R_EXC)

    def _failed(self, code):
        self.uid_len = 0
        self.targets = 0
        self.failures += 1
        if code:
            self.errors += 1
            self.last_error = _err(code)
            if self._state == _READY and self.failures >= self.fail_reset:
                self._start_recovery()
        return ERROR

    def _start_recovery(self):
        self.resets += 1
        self._mark = ticks_ms()
        if self.rst is not None:
            self.rst.value(0)
            self._state = _RST_LOW
        else:
            self._state = _CONFIG

    def _recover(self):
        # one step per poll; only the _CONFIG step talks to the chip (bounded by 3 exchanges)
        el = ticks_diff(ticks_ms(), self._mark)
        st = self._state
        if st == _RST_LOW and el >= self.rst_low_ms:
            self.rst.value(1)
            self._state = _BOOT
            self._mark = ticks_ms()
        elif st == _BOOT and el >= self.boot_ms:
            self._state = _CONFIG
        elif st == _CONFIG:
            if self._configure():
                self._state = _READY
                self.failures = 0
            else:
                self._state = _BACKOFF
                self._mark = ticks_ms()
        elif st == _BACKOFF and el >= self.backoff_ms:
            self._start_recovery()

    def _poll_ready(self):
        t = self.t
        r = self._exchange(self._f_list, CMD_IN_LIST_PASSIVE_TARGET, self.resp_ms)
        if r < 0:
            return self._failed(r)
        buf = t.buf
        d = r >> 16
        e = d + (r & 0xFFFF)
        if e - d < 3:
            return self._failed(_R_ANSWER)
        nb = buf[d + 2]
        if nb > MAX_TARGETS:
            return self._failed(_R_ANSWER)
        p = d + 3
        first = 0
        for k in range(nb):
            if p + 5 > e or buf[p] != k + 1:
                return self._failed(_R_ANSWER)
            ln = buf[p + 4]
            if (ln != 4 and ln != 7 and ln != 10) or p + 5 + ln > e or buf[p + 5] == 0x88:
                return self._failed(_R_ANSWER)  # 0x88 is the cascade tag, never a UID's first byte
            if k == 0:
                first = p
            sak = buf[p + 3]
            p += 5 + ln
            if sak & 0x20:  # ISO14443-4 card: the PN532 appends the ATS (first byte counts itself)
                if p >= e or buf[p] == 0 or p + buf[p] > e:
                    return self._failed(_R_ANSWER)
                p += buf[p]
        if p != e:
            return self._failed(_R_ANSWER)
        self.failures = 0
        self.targets = nb
        if nb == 0:
            self.uid_len = 0
            return NO_CARD
        if nb > 1:
            self.uid_len = 0
            return MANY_CARDS
        self.atqa = (buf[first + 1] << 8) | buf[first + 2]
        self.sak = buf[first + 3]
        ln = buf[first + 4]
        u = self._uid
        for i in range(ln):
            u[i] = buf[first + 5 + i]
        for i in range(ln, UID_MAX):
            u[i] = 0
        self.uid_len = ln
        return ONE_CARD

    # ---------------- one command/answer exchange ----------------
    def _exchange(self, tx, cmd, resp_ms):
        """Send a pre-built frame, take the ACK, take the answer (asking once for a
        retransmission if it arrives corrupted). Returns frame.decode's packed position of the
        answer (TFI at offset) or a negative _R_ code. A failed exchange is aborted with an ACK
        frame (UM0701-02 §6.2.1.3): an answer that comes late must never be taken as the answer
        to a later command whose frame the chip lost."""
        r = self._exchange1(tx, cmd, resp_ms)
        if r < 0:
            self.aborts += 1
            try:
                self.t.send(frame.ACK)
                self.t.flush()
            except OSError:
                pass
        return r

    def _exchange1(self, tx, cmd, resp_ms):
        t = self.t
        try:
            t.flush()
            t.send(tx)
        except OSError:
            return _R_BUS
        r = self._answer(READ_ACK, self.ack_ms)
        if r != frame.IS_ACK:
            if r == frame.IS_NACK:
                return _R_NACK
            if r == _R_BUS:
                return r
            return _R_NO_ACK
        r = self._answer(READ_SHORT, resp_ms)
        if r == frame.INCOMPLETE and t.fixed:
            # longer than the usual answer (two cards, 10-byte UID, long ATS): the chip resends
            # its last answer on NACK, this time read in full
            self.long_reads += 1
            r = self._resend(READ_FULL, resp_ms)
        if r < 0 and r != _R_TIMEOUT and r != _R_BUS and r != frame.IS_ERROR:
            self.retransmits += 1  # corrupted on the wire: ask once more
            r = self._resend(READ_FULL, resp_ms)
        if r >= 0:
            d = r >> 16
            if (r & 0xFFFF) < 2 or t.buf[d] != frame.TFI_CHIP or t.buf[d + 1] != cmd + 1:
                return _R_ANSWER
            return r
        if r == frame.IS_ERROR:
            return _R_CHIP
        if r == frame.BAD_DCS or r == frame.BAD_LCS:
            return _R_CHECKSUM
        if r == _R_TIMEOUT or r == _R_BUS:
            return r
        return _R_FRAME

    def _resend(self, size, ms):
        try:
            self.t.send(frame.NACK)
        except OSError:
            return _R_BUS
        return self._answer(size, ms)

    def _answer(self, size, ms):
        t = self.t
        irq = self.irq
        t.restart()
        t0 = ticks_ms()
        spins = 0
        r = _R_TIMEOUT
        while True:
            rdy = False
            try:
                rdy = irq.value() == 0 if irq is not None else t.ready()
            except OSError as e:
                if e.args and e.args[0] != _ENODEV:
                    return _R_BUS  # SCL held past the bus timeout, or worse: give up this poll
                self.naks += 1  # I2C: the chip NACKs its address while busy (straight after a command)
            if rdy:
                try:
                    end = t.pull(size)
                except OSError:
                    return _R_BUS
                if end > t.off:
                    r = frame.decode(t.buf, t.off, end)
                    if t.fixed:
                        return r
                    if r != frame.INCOMPLETE and r != frame.NO_FRAME:
                        return r
                    if end >= len(t.buf):
                        return r
            if ticks_diff(ticks_ms(), t0) >= ms:
                return _R_TIMEOUT if r == _R_TIMEOUT or r == frame.NO_FRAME else r
            spins += 1
            if spins > 4:
                sleep_ms(1)

    # ---------------- other commands (not in the hot path) ----------------
    def release(self):
        """InRelease all targets (the card returns to IDLE). True on success."""
        if self._state != _READY:
            return False
        try:
            r = self._exchange(self._f_release, CMD_IN_RELEASE, self.cfg_ms)
        except Exception:
            return False
        return r >= 0 and (r & 0xFFFF) >= 3 and self.t.buf[(r >> 16) + 2] & 0x3F == 0

    def power_down(self):
        """PowerDown, waking on I2C/SPI/HSU; poll() answers NO_CARD without bus traffic until
        wake(). With RSTPD_N wired, holding it low is the deeper hard power-down (not done here)."""
        try:
            r = self._exchange(self._f_down, CMD_POWER_DOWN, self.cfg_ms)
        except Exception:
            return False
        if r >= 0 and (r & 0xFFFF) >= 3 and self.t.buf[(r >> 16) + 2] & 0x3F == 0:
            self._state = _ASLEEP
            return True
        return False

    def wake(self):
        """Leave power-down: wake the bus, reconfigure. True when the chip answers."""
        try:
            if self._configure():
                self._state = _READY
                self.failures = 0
                return True
        except Exception:
            self.last_error = E_EXCEPTION
        self._state = _BACKOFF
        self._mark = ticks_ms()
        return False

    @property
    def ready(self):
        """True when the chip is configured and polling (not recovering, not asleep)."""
        return self._state == _READY
