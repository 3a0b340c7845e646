"""A reader whose flash was filled, on the virtual site (issue 18.4/18.7): the real firmware on the
unix port, the real broker with TLS and per-reader accounts, the real host service. Asked for a
rebuild it cannot store, the reader refuses and backs off and the host holds it: a bounded number
of messages a minute, counted at the broker (it was 38-46 a second). The gate keeps deciding on
its last good version, `readers list` names the problem, and once the flash has room the rebuild
goes through and the problem is gone."""
from __future__ import annotations

import json
import os
import threading
import time

import paho.mqtt.client as mqtt

from tools.site import ReaderSpec, SiteSpec, VirtualSite, present
from tools.site_scenario import ANNA_UID, SITE, _cards_csv

READER = "gate-01"
NAMES = {1: "DELTA", 2: "SNAP", 3: "EVACK", 4: "CMD", 0x10: "HELLO", 0x11: "SYNC", 0x12: "ACK",
         0x13: "EVENTS", 0x14: "REJECT", 0x15: "CMDRES", 0x16: "HEALTH"}
WINDOW_S = 60  # messages are counted over one minute
# both directions, every topic of the reader, the gate's own events aside: with nothing freed the
# reader waits longer and longer without a word (the host holds it while it says it is full); a
# minute holds at most the REJECT count of the minute, a HEALTH, and perhaps one try (a SYNC and a
# chunk or two). 1 seen (the REJECT count); it was 38-46 a second.
MAX_PER_MIN = 8

FILL = """
import os
b = bytes(4096)
i = 0
for k in (64, 8, 1):  # whole files only: LittleFS drops a file whose close found no room
    while True:
        p = '/junk%d' % i
        try:
            with open(p, 'wb') as f:
                for _ in range(k):
                    f.write(b)
            i += 1
        except OSError:
            try:
                os.remove(p)
            except OSError:
                pass
            break
st = os.statvfs('/')
print('filled', i, st[0] * st[3] if st[3] <= st[2] else 0)
"""


class Counter:
    """Every message on the reader's topics, both directions, as the broker delivers them."""

    def __init__(self, site: VirtualSite):
        from host_sync.cli import host_broker_account
        from host_sync.db import open_db
        from host_sync.registry import Registry

        user, pw = host_broker_account(Registry(open_db(None, str(site.data)), actor="monitor"))
        self.seen: list[tuple[float, str]] = []  # (when, message type or topic leaf)
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"count-{os.getpid()}")
        c.username_pw_set(user, pw)
        c.tls_set(ca_certs=site.tls.cafile)
        c.on_connect = lambda cl, *a: cl.subscribe(f"gv/{SITE}/{READER}/#", qos=1)
        c.on_message = self._on_message
        c.connect("127.0.0.1", site.port)
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, msg) -> None:
        if not msg.retain:
            with self._lock:
                typ = msg.payload[1] if len(msg.payload) > 1 and msg.topic.endswith(("in", "out")) \
                    else 0
                self.seen.append((time.monotonic(), NAMES.get(typ, msg.topic.rsplit("/", 1)[1])))

    def between(self, t0: float, t1: float) -> list[str]:
        with self._lock:
            return [leaf for t, leaf in self.seen if t0 <= t < t1]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _row(site: VirtualSite) -> dict:
    return next(r for r in site.readers_json() if r["id"] == READER)


def _wait(what: str, pred, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    raise TimeoutError(what)


def test_full_flash_reader_backs_off_gate_decides_host_says_why(tmp_path):
    site = VirtualSite(tmp_path, [SiteSpec(SITE, "Full flash site", "BY-2026-000018", "never")],
                       [ReaderSpec(READER, SITE)])
    counter = None
    try:
        site.provision()
        cards = site.dir / "cards.csv"
        _cards_csv(cards, 1200)  # a rebuild of ~20 KB of shards: more than a filled flash has
        site.import_cards(cards)
        site.start_broker()
        site.start_host()
        vb = site.start_reader(READER)
        site.wait_converged(120)
        head = _row(site)["head"]

        # fill its flash (the REPL stops the app, as on a board), then power it up again
        out = vb.mpremote("exec", FILL, timeout=120)
        assert out.returncode == 0 and "filled" in out.stdout, out.stdout + out.stderr
        vb.mark()
        vb.send("reset")
        _wait("the reader back online", lambda: _row(site)["online"] and
              (_row(site)["health"].get("at") or {}).get("mem.now"))
        assert present(vb, ANNA_UID, timeout=20)["granted"]  # boots and decides on a full flash

        # the operator asks it for a rebuild it cannot store
        counter = Counter(site)
        site.cli("readers", "command", READER, "resync", "--wait", "30")
        try:
            att = _wait("readers list naming the full flash",
                        lambda: _row(site)["health"].get("attention"))
        except TimeoutError:
            raise AssertionError("no 'flash full' shown; messages seen: %s; health %s"
                                 % (counter.between(0, time.monotonic() + 1), _row(site)["health"]))
        assert att.startswith("flash full: an update needs"), att

        # no storm: count one minute of every message to and from it, at the broker
        t0 = time.monotonic()
        granted = []
        while time.monotonic() - t0 < WINDOW_S:
            granted.append(present(vb, ANNA_UID, timeout=20)["granted"])  # the gate keeps deciding
            time.sleep(5)
        msgs = counter.between(t0, t0 + WINDOW_S)
        by_type = {t: msgs.count(t) for t in sorted(set(msgs))}
        sync = [m for m in msgs if m not in ("EVENTS", "EVACK")]  # the gate's own events aside
        print("messages in %d s: %d, %d of them sync: %s" % (WINDOW_S, len(msgs), len(sync), by_type))
        assert len(sync) <= MAX_PER_MIN, by_type
        assert all(granted) and len(granted) >= 8
        row = _row(site)
        assert row["applied_version"] == head  # still on its last good version

        # the host says why, problems first
        table = site.cli("readers", "list").stdout
        line = next(x for x in table.splitlines() if x.startswith(READER))
        assert "NEEDS ATTENTION: flash full: an update needs" in line, table
        show = site.cli("readers", "show", READER).stdout
        assert "need_flash" in show and "MEMORY AT" in show, show
        h = row["health"]
        assert h["need_flash"] > h["free_flash"] and h["free_flash"] < h["flash_size"], h

        # room again (the junk removed at the REPL, powered up): the rebuild goes through
        out = vb.mpremote("exec", "import os\nfor n in os.listdir('/'):\n if n.startswith('junk'): os.remove('/' + n)\nprint('removed')", timeout=60)
        assert "removed" in out.stdout, out.stdout + out.stderr
        vb.send("reset")
        _wait("the reader back online", lambda: _row(site)["online"])
        site.cli("readers", "command", READER, "resync", "--wait", "30")
        _wait("the rebuild done and the problem gone",
              lambda: (lambda r: r["applied_version"] == head and not r["health"].get("attention")
                       and r["health"].get("need_flash") == 0)(_row(site)), timeout=120)
        assert present(vb, ANNA_UID, timeout=20)["granted"]
        assert "NEEDS ATTENTION" not in site.cli("readers", "list").stdout
        print(json.dumps(_row(site)["health"].get("mem"), sort_keys=True))
    finally:
        if counter is not None:
            counter.close()
        site.stop()
