# Wi-Fi supervisor for real boards: joins the configured network and rejoins it whenever the
# link drops, with backoff, never blocking (WLAN.connect returns at once; we poll). On a port
# without `network` (the unix port) it does nothing: the host's network is already up.
import asyncio

try:
    import network
except ImportError:
    network = None

_POLL_MS = 500
_JOIN_MS = 20000  # give one join attempt this long before starting over


class WiFi:
    def __init__(self, ssid, password, hostname=None):
        self.ssid = ssid
        self.password = password
        self.hostname = hostname
        self.joins = 0  # successful joins
        self.drops = 0
        self.wlan = None

    @property
    def available(self):
        return network is not None and bool(self.ssid)

    def isconnected(self):
        return True if self.wlan is None else self.wlan.isconnected()

    async def run(self):
        if not self.available:
            return  # unix port, or no Wi-Fi configured (e.g. Ethernet): nothing to supervise
        self.wlan = wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if self.hostname:
            try:
                network.hostname(self.hostname)
            except Exception:  # noqa: BLE001 - older firmware: keep the default name
                pass
        backoff = 1000
        while True:
            if not wlan.isconnected():
                try:
                    wlan.disconnect()
                except OSError:
                    pass
                wlan.connect(self.ssid, self.password)
                waited = 0
                while not wlan.isconnected() and waited < _JOIN_MS:
                    await asyncio.sleep_ms(_POLL_MS)
                    waited += _POLL_MS
                if wlan.isconnected():
                    self.joins += 1
                    from gv import memory
                    from gv.sync.protocol import M_WIFI

                    memory.record(M_WIFI)  # the heaps with Wi-Fi up
                    backoff = 1000
                    print("wifi: joined %r as %s" % (self.ssid, wlan.ifconfig()[0]))
                else:  # on the console: what the installer (and the deploy) sees
                    print("wifi: cannot join %r (status %s)" % (self.ssid, wlan.status()))
                    await asyncio.sleep_ms(backoff)
                    backoff = min(backoff * 2, 60000)
                    continue
            await asyncio.sleep_ms(_POLL_MS * 4)
            if not wlan.isconnected():
                self.drops += 1
