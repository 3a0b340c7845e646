# The reader application: builds the hardware from /board.json, the stores from flash and the
# reader's /config.json, then runs the gate, the sync link and the Wi-Fi supervisor as asyncio
# tasks. The gate never waits on the network: sync and Wi-Fi only ever await with timeouts.
import asyncio
import gc
import time

import machine

from gv import VERSION
from gv import config as C

AL_PATH = "/al"
EV_PATH = "/events"
LOCK_PATH = "/lockouts"
CLOCK_PATH = "/clock"  # the wall clock's lower bound (gv.gate.clock), kept through power cuts
BOOT_PATH = "/boot"  # the boot number (gv.boot): the top half of the sync link's counters
REKEY_PATH = "/rekey"  # a new secret and broker password, until the first login with them
SITEKEY_PATH = "/sitekey"  # the site's next keys, until the rebuild of their version is in
WDT_MS = 8000
REBOOT_DELAY_MS = 1500  # let the command's result reach the host first
FATAL_PAUSE_MS = 5000  # shorter than the watchdog (not started, or fed until here)
FATAL_PATH = "/fatal.json"  # fatal errors in a row, kept through the reboot that follows each
FATAL_LIMIT = 3  # then the reader stays in the safe state instead of rebooting again
HEALTHY_MS = 60000  # running this long clears the count

_wdt = None


def _relax_watchdog():
    # An ESP32 watchdog can't be stopped once started; give a person at the REPL an hour.
    if _wdt is not None:
        machine.WDT(timeout=3600000)


def _mkdir(path):
    import os

    try:
        os.mkdir(path)
    except OSError:
        pass


def _fw():
    # what HELLO says this reader runs: the version, and on a frozen build its build id, so the
    # host's `readers list` shows which build each gate runs (12 hex digits say it apart)
    from gv import profile
    bid = profile.build_id()
    return "grindvakt-" + VERSION + ("+" + bid[:12] if bid else "")

class Reader:
    """Everything one reader runs; attributes are there to inspect at the REPL."""

    def __init__(self, board, cfg):
        global _wdt
        from gv.allowlist.record import Keyer
        from gv.allowlist.store import Allowlist
        from gv.drivers.keypad import Keypad
        from gv.drivers.outputs import Buzzer, Leds, Relay
        from gv.events import EventLog
        from gv.gate import clock as CK
        from gv.gate.lockout import Lockouts
        from gv.gate.runner import GateRunner

        from gv import memory

        memory.load()  # MemoryErrors before this boot: reported in HEALTH
        self.board = board
        self.cfg = cfg
        # outputs first, so the door is driven shut before anything else can fail
        relay = board["relay"]
        self.relay = Relay(relay["pin"], relay.get("active_high", True))
        leds = board.get("leds") or {}
        self.leds = Leds(leds.get("green"), leds.get("red"))
        self.buzzer = Buzzer((board.get("buzzer") or {}).get("pin"))
        kp = board.get("keypad")
        self.keypad = Keypad(kp["rows"], kp["cols"], kp["keys"]) if kp else None
        self.pn532 = self._pn532(board)
        _mkdir(AL_PATH)
        _mkdir(EV_PATH)
        from gv.profile import store_in_place

        self.allowlist = Allowlist(AL_PATH, in_place=store_in_place())  # off on encrypted flash
        self.allowlist.open()
        if self.allowlist.health != "ok":
            print("allowlist: %s (version %d)" % (self.allowlist.health, self.allowlist.version))
        from gv.sync.sitekey import SiteKeys

        # the keys the store's records are under: a rotation's keys once its rebuild is in
        self.sitekeys = SiteKeys(cfg, C.CONFIG_PATH, SITEKEY_PATH)
        self.keyer = Keyer(self.sitekeys.card, self.sitekeys.pin)
        self.sitekeys.applied(self.allowlist.version, self.keyer)
        self.events = EventLog(EV_PATH)
        self.lockouts = Lockouts(LOCK_PATH)
        self.clock = CK.Clock()
        self.clock.restore(CK.load_bound(CLOCK_PATH))  # dates stay checked through a power cut
        gc.collect()
        _wdt = self.wdt = machine.WDT(timeout=WDT_MS)
        self.gate = GateRunner(cfg.gate, self.pn532, self.allowlist, self.keyer, self.events,
                               self.lockouts, self.relay, self.leds, self.buzzer, self.keypad,
                               wdt=self.wdt, clock=self.clock)
        self.sync = None
        self.wifi = None
        if cfg.broker.get("host"):
            from gv.sync.engine import Sync
            from gv.sync.wifi import WiFi

            self.wifi = WiFi(cfg.wifi.get("ssid"), cfg.wifi.get("password"), cfg.reader_id)
            from gv.boot import BootCount
            from gv.sync.rekey import Credentials

            self.sync = Sync(cfg, self.allowlist, events=self.events, on_command=self.command,
                             health=self.health, fw=_fw(),
                             boot=BootCount(BOOT_PATH),
                             creds=Credentials(cfg, C.CONFIG_PATH, REKEY_PATH),
                             sitekeys=self.sitekeys, keyer=self.keyer)
        gc.collect()
        from gv.sync.protocol import M_BOOT

        memory.record(M_BOOT, collect=False)  # the heaps with the reader's objects built

    @staticmethod
    def _pn532(board):
        from gv.board import pn532_transport
        from gv.pn532.driver import PN532

        transport, rst = pn532_transport(board)
        irq = (board.get("pn532") or {}).get("irq")
        pn = PN532(transport, rst=rst, irq=None if irq is None else machine.Pin(irq, machine.Pin.IN))
        if not pn.begin():  # never raises; the poll loop recovers the chip, the door stays shut
            print("pn532: not answering at start-up (%s); will keep trying" % (pn.last_error,))
        return pn

    # ---- what the host may ask (already authenticated by the sync layer) ----
    def command(self, name, arg):
        if name == "open":
            return self.gate.open_once()
        if name == "clear_lockout":
            self.gate.clear_lockouts()
            return True
        if name == "set_clock":
            return self.gate.set_clock(arg, CLOCK_PATH)
        if name == "reboot":
            asyncio.create_task(self._reboot())
            return True
        return None

    async def _keep_clock(self):
        # Move the saved lower bound forward while running, so a power cut loses at most
        # SAVE_EVERY_S of it (one 8-byte file write every 10 minutes).
        from gv.gate import clock as CK

        while True:
            await asyncio.sleep_ms(CK.SAVE_EVERY_S * 1000)
            try:
                CK.save_bound(CLOCK_PATH, self.clock.bound(time.ticks_ms()))
            except OSError as e:  # a full flash: the bound stays where it was (older: safe)
                print("clock: bound not saved: %r" % (e,))

    async def _reboot(self):
        await asyncio.sleep_ms(REBOOT_DELAY_MS)
        machine.reset()

    def health(self):
        from gv.sync import protocol as P

        bits = 0
        if self.allowlist.need_resync:
            bits |= P.H_ALLOWLIST
        if getattr(self.pn532, "failures", 0) >= 3:
            bits |= P.H_PN532
        if self.events.dropped:
            bits |= P.H_EVENTS
        if not self.gate.clock.is_set():
            bits |= P.H_CLOCK
        return bits

    async def run(self):
        print("grindvakt %s: reader %s at %s up; allowlist v%d" % (
            VERSION, self.cfg.reader_id, self.cfg.site, self.allowlist.version))
        tasks = [asyncio.create_task(self.gate.run()), asyncio.create_task(self._keep_clock()),
                 asyncio.create_task(_healthy_after(HEALTHY_MS))]
        if self.sync is not None:
            tasks.append(asyncio.create_task(self.wifi.run()))
            tasks.append(asyncio.create_task(self.sync.run()))
        await asyncio.gather(*tasks)


async def _healthy_after(ms):
    await asyncio.sleep_ms(ms)
    if _fatal_count()[0]:
        _set_fatal(0, "")


def _fatal_count():
    import json

    try:
        with open(FATAL_PATH) as f:
            d = json.load(f)
        return int(d.get("n", 0)), str(d.get("last", ""))
    except Exception:  # noqa: BLE001 - none yet, or unreadable: count from zero
        return 0, ""


def _set_fatal(n, last):
    import json
    import os

    try:
        if n:
            with open(FATAL_PATH, "w") as f:
                json.dump({"n": n, "last": last[:200]}, f)
        else:
            os.remove(FATAL_PATH)
    except Exception:  # noqa: BLE001 - a full or failing flash: reboot as before
        pass


def _door_shut(board):
    relay = (board or {}).get("relay") or {}
    if relay.get("pin") is not None:
        try:
            machine.Pin(relay["pin"], machine.Pin.OUT, value=0 if relay.get("active_high", True) else 1)
        except Exception:  # noqa: BLE001 - no heap even for this: the pin keeps its last state
            pass


def _reachable_config():
    # The config as it is on flash, when the parts that reach the host (ids, Wi-Fi, broker) are
    # sound even though the config as a whole was refused: then the reader can say why it is
    # not running. None otherwise.
    try:
        d = C._read_json(C.CONFIG_PATH)
    except Exception:  # noqa: BLE001 - no file, no JSON: nothing to reach the host with
        return None
    for p in C.problems(d, C._on_device()):
        if p.split(":")[0].split(".")[0] in ("config", "reader_id", "site", "wifi", "broker"):
            return None
    return d if (d.get("broker") or {}).get("host") else None


async def _report(d, why):
    # Tell the host (retained, on the reader's own status topic) why this reader is not
    # deciding cards; the next good boot's "online" replaces it. Once it is acknowledged the
    # link is closed: an unprovisioned reader keeps no connection.
    from gv.sync.mqtt import MQTTClient, tls_context
    from gv.sync.protocol import topic
    from gv.sync.wifi import WiFi

    rid = d["reader_id"]
    w = d.get("wifi") or {}
    asyncio.create_task(WiFi(w.get("ssid"), w.get("password"), rid).run())
    b = d["broker"]
    c = MQTTClient(rid, b["host"], b.get("port", 8883), b.get("user", rid), b.get("password"),
                   ssl=tls_context(b["ca"]) if b.get("tls", True) else None,
                   server_hostname=b.get("server_name") or b["host"],
                   connect_timeout_ms=b.get("connect_timeout_ms", 5000), backoff_ms=(2000, 300000))
    asyncio.create_task(c.run())
    t = topic(d["site"], rid, "status")
    if await c.publish(t, ("unprovisioned: " + why)[:480].encode(), qos=1, retain=True):
        print("grindvakt: reported to the host on %s" % t)
    c.stop()


async def _unprovisioned(board, why, reach=None):
    # No usable config: nothing can be decided, so the door stays shut; blink red, keep the
    # REPL, and tell the host why if the config still says how to reach it.
    global _wdt
    print("grindvakt %s: %s" % (VERSION, why))
    if reach is not None:
        asyncio.create_task(_report(reach, why))
    red = None
    leds = (board or {}).get("leds") or {}
    if leds.get("red") is not None:
        red = machine.Pin(leds["red"], machine.Pin.OUT, value=0)
    _door_shut(board)
    _wdt = machine.WDT(timeout=WDT_MS)
    on = 0
    while True:
        _wdt.feed()
        if red is not None:
            on ^= 1
            red.value(on)
        await asyncio.sleep_ms(1000)


def main():
    board = None
    try:
        board = C.load_board()
        cfg = C.load()
    except C.ConfigError as e:
        try:
            asyncio.run(_unprovisioned(board, str(e), _reachable_config()))
        except KeyboardInterrupt:
            _relax_watchdog()
            print("grindvakt: stopped by Ctrl-C; watchdog relaxed to 1 h")
        return
    try:
        reader = Reader(board, cfg)
        asyncio.run(reader.run())
    except KeyboardInterrupt:
        _relax_watchdog()
        print("grindvakt: stopped by Ctrl-C; watchdog relaxed to 1 h")
    except Exception as e:  # noqa: BLE001 - fail secure: a reboot beats a half-working gate
        import sys

        _door_shut(board)  # whatever failed, the relay is driven off before anything else
        if isinstance(e, MemoryError):
            from gv import memory

            memory.note_error("app")  # counted across the reboot, reported in HEALTH
        sys.print_exception(e)
        n = _fatal_count()[0] + 1
        last = "%s: %s" % (type(e).__name__, e)
        _set_fatal(n, last)
        if n >= FATAL_LIMIT:  # it fails the same way every boot: no reboot loop, wait for a person
            reader = None
            gc.collect()
            asyncio.new_event_loop()  # the failed reader's tasks go with the old loop
            why = ("stopped after %d fatal errors in a row (last: %s); the door stays shut. Fix the "
                   "cause (deploy again), then reset the board" % (n, last))
            try:
                asyncio.run(_unprovisioned(board, why, _reachable_config()))
            except KeyboardInterrupt:
                _relax_watchdog()
                print("grindvakt: stopped by Ctrl-C; watchdog relaxed to 1 h")
            return
        print("grindvakt: fatal error, rebooting in %d s (%d of %d before it stops trying)"
              % (FATAL_PAUSE_MS // 1000, n, FATAL_LIMIT))
        time.sleep_ms(FATAL_PAUSE_MS)  # no hot reboot loop; the door stays shut meanwhile
        machine.reset()
