"""The holes of issue 16 (items 3, 4 and 7), each reproduced against the real mosquitto (config
from host_sync.broker), the real host engine and the firmware's reader in the unix port:
replayed HELLOs, client-id takeover, status forgery, oversized publishes, junk floods, a CA
roll, host counters after a clock step back."""
from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gv.sync import protocol as P
from host_sync import wire
from host_sync.broker import make_test_ca
from host_sync.syncer import HostSync
from tests.broker import Broker
from tests.sync_support import MemData, make_record
from tests.test_sync_e2e import SITE, Site


class HwmData(MemData):
    """MemData plus the registry's counter high-water mark and refused-message accounting."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.hwm = 0
        self.refused: list[tuple[str, str, int]] = []

    def counter_reserve(self, value):
        with self.lock:
            self.hwm = max(self.hwm, value)
            return self.hwm

    def counter_floor(self):
        return self.hwm

    def host_rejected(self, rid, reason, count):
        self.refused.append((rid, reason, count))


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


def _wait(pred, t=10.0, what="condition"):
    end = time.monotonic() + t
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def _client(b: Broker, user: str, password: str, client_id: str, tls: bool = True):
    """A paho client; .events records connects and disconnects."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.username_pw_set(user, password)
    c.events = []
    c.got = []
    up = threading.Event()

    def on_connect(cl, u, f, rc, p):
        c.events.append(("connect", str(rc)))
        if not rc.is_failure:
            up.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda cl, u, f, rc, p: c.events.append(("disconnect", str(rc)))
    c.on_message = lambda cl, u, m: c.got.append((m.topic, bytes(m.payload)))
    c.reconnect_delay_set(5, 5)
    if tls:
        c.tls_set(ca_certs=b.tls.cafile, cert_reqs=ssl.CERT_REQUIRED)
        c.connect("localhost", b.port)
    else:
        c.connect("127.0.0.1", b.plain_port)
    c.loop_start()
    assert up.wait(5), c.events
    return c


def _stop(*cs):
    for c in cs:
        c.disconnect()
        c.loop_stop()


# ---- item 4: broker identities --------------------------------------------------------------
def test_a_reader_account_can_no_longer_disconnect_another_reader_or_the_host():
    with Broker(readers=[("gate-a", SITE), ("gate-b", SITE)], tls=True) as b:
        host = _client(b, b.host_user, b.host_password, "gv-host-x-0123456789abcdef", tls=False)
        gb = _client(b, "gate-b", b.password("gate-b"), "gate-b")
        # gate-a's stolen credentials, claiming gate-b's id and then the host's (over TLS, the
        # readers' listener): the broker names the client after its account instead, so the
        # only session such a connect can replace is gate-a's own
        thief = [_client(b, "gate-a", b.password("gate-a"), cid)
                 for cid in ("gate-b", "gv-host-x-0123456789abcdef")]
        time.sleep(1.0)
        assert gb.events == [("connect", "Success")], gb.events
        assert host.events == [("connect", "Success")], host.events
        gb.subscribe(P.topic(SITE, "gate-b", "in"), 1)
        time.sleep(0.2)
        host.publish(P.topic(SITE, "gate-b", "in"), b"still here", qos=1).wait_for_publish(5)
        _wait(lambda: gb.got, what="gate-b still gets its inbox")
        assert "as gate-a" in b.log() or "gate-a" in b.log()
        _stop(host, gb, *thief)


def test_status_is_believed_only_from_the_readers_account_and_in_its_two_words(tmp_path):
    with Broker(readers=[("gate-a", SITE), ("gate-b", SITE)], tls=True) as b:
        data = HwmData({"gate-a": (SITE, b"a" * 32), "gate-b": (SITE, b"b" * 32)})
        eng = HostSync(data, "127.0.0.1", b.plain_port, b.host_user, b.host_password,
                       reject_interval_s=60)
        eng.start()
        try:
            ga = _client(b, "gate-a", b.password("gate-a"), "gate-a")
            ga.publish(P.topic(SITE, "gate-a", "status"), b"online", qos=1).wait_for_publish(5)
            _wait(lambda: data.status.get("gate-a") is True, what="online")
            # another reader's status: the ACL drops it; junk on its own: refused by the host
            ga.publish(P.topic(SITE, "gate-b", "status"), b"offline", qos=1).wait_for_publish(5)
            ga.publish(P.topic(SITE, "gate-a", "status"), b"offline\0", qos=1).wait_for_publish(5)
            ga.publish(P.topic(SITE, "gate-a", "status"), b"0", qos=1).wait_for_publish(5)
            _wait(lambda: eng.rejects.total >= 2, what="junk status refused")
            assert data.status == {"gate-a": True}
            assert ("gate-a", "bad status payload") in [(r, why) for r, why, _ in data.refused]
            _stop(ga)
        finally:
            eng.stop()


# ---- item 7: message size, rate-limited refusals ------------------------------------------
def test_the_broker_drops_oversized_publishes_and_the_host_never_sees_them():
    with Broker(readers=[("gate-a", SITE)], tls=True) as b:
        host = _client(b, b.host_user, b.host_password, "gv-host-size", tls=False)
        host.subscribe("gv/#", 1)
        time.sleep(0.2)
        ga = _client(b, "gate-a", b.password("gate-a"), "gate-a")
        out = P.topic(SITE, "gate-a", "out")
        ga.publish(out, b"x" * (P.MAX_MSG + 1), qos=1)  # over the payload limit: not forwarded
        ga.publish(out, b"ok", qos=1).wait_for_publish(5)
        _wait(lambda: (out, b"ok") in host.got, what="the small one")
        ga.publish(out, b"y" * (8 << 20), qos=0)  # 8 MiB: over the packet limit, disconnected
        _wait(lambda: ("disconnect", "Unspecified error") in ga.events
              or any(e[0] == "disconnect" for e in ga.events), what="the big sender cut off")
        time.sleep(0.5)
        assert [len(p) for t, p in host.got if t == out] == [2]
        _stop(host, ga)


def test_junk_costs_one_report_per_interval_not_one_per_message(site):
    r = site.reader()
    r.wait(lambda s: s["version"] == 1, what="first rebuild")
    site.host.stop()
    data = HwmData(site.data.readers)
    data.version, data.records, data.history = site.data.version, site.data.records, \
        site.data.history
    b = site.broker
    site.host = HostSync(data, "127.0.0.1", b.plain_port, b.host_user, b.host_password,
                         reject_interval_s=3600)
    site.host.start()
    spy = _client(b, b.host_user, b.host_password, "gv-spy", tls=False)
    for i in range(300):  # forged messages on the reader's out topic
        spy.publish(P.topic(SITE, "gate-01", "out"), bytes([1, P.T_SYNC]) + bytes(40 + i % 7),
                    qos=0)
    _wait(lambda: site.host.rejects.total >= 300, what="all 300 refused")
    site.host.housekeeping()
    # the first of the burst at once (an attack shows), the rest when the interval ends
    assert data.refused == [("gate-01", "bad MAC", 1)]
    assert site.host.rejects.pending[("gate-01", "host", "bad MAC")] == 299
    site.host.rejects.interval_s = 0
    site.host.housekeeping()
    assert data.refused[-1] == ("gate-01", "bad MAC", 299) and len(data.refused) == 2
    # and the reader is still served
    v = data.change(SITE, [make_record(site.rng)])
    site.host.pushed[SITE] = v - 1
    site.host.push(SITE)
    r.wait(lambda s: s["version"] == v, what="delta after the flood")
    _stop(spy)


def test_reader_trusts_every_ca_in_its_ca_file(site, tmp_path):
    """A site rolling its CA hands readers a file with the new CA and the old one: the reader
    must trust the broker's certificate whichever of them signed it (it used only the first)."""
    other = Path(make_test_ca(tmp_path / "new-ca").cafile).read_text()
    r = site.reader(ca=other + site.broker.ca_pem)  # the broker's CA second
    s = r.wait(lambda s: s["version"] == 1, what="rebuild over TLS via the second CA")
    assert s["connects"] == 1


# ---- item 7: host counters never go backwards -----------------------------------------------
def test_counter_high_water_mark_survives_a_restart_with_the_clock_stepped_back():
    store = HwmData({})
    now = [1_800_000_000 * 10**9]
    a = wire.Counter(store, clock=lambda: now[0])
    issued = [a.next() for _ in range(1000)]
    assert issued == sorted(set(issued))
    now[0] -= 3600 * 10**9  # the host's clock is set back an hour; the service restarts
    b = wire.Counter(store, clock=lambda: now[0])
    assert b.next() > max(issued)
    # a second instance whose clock is an hour behind catches up within a sync
    c = wire.Counter(HwmData({}), clock=lambda: now[0])
    c._store = store
    c.sync()
    assert c.next() > max(issued) - wire.COUNTER_LEAD


def test_reader_takes_a_restarted_host_whose_clock_went_back(site):
    r = site.reader()
    r.wait(lambda s: s["version"] == 1, what="first rebuild")
    site.host.stop()
    data = HwmData(site.data.readers)
    data.version, data.records, data.history = site.data.version, site.data.records, \
        site.data.history
    b = site.broker
    host = site.host = HostSync(data, "127.0.0.1", b.plain_port, b.host_user, b.host_password)
    host.start()
    _wait(lambda: "gate-01" in host.readers and host.readers["gate-01"].session.nonce,
          what="session from the retained HELLO")
    st = host.readers["gate-01"]
    head = data.current_version(SITE)
    for _ in range(40):  # more than the reader's 32-counter window
        host._send(st, P.T_DELTA, P.delta_body(head, head, head, []))
    r.wait(lambda s: s["acked"] >= 0 and s["deltas"] == 0, what="settled")
    time.sleep(1.0)
    host.stop()
    # the same host comes back with its clock an hour behind
    behind = lambda: time.time_ns() - 3600 * 10**9  # noqa: E731
    host = site.host = HostSync(data, "127.0.0.1", b.plain_port, b.host_user, b.host_password)
    host.counter = wire.Counter(data, clock=behind)
    host.start()
    _wait(lambda: "gate-01" in host.readers and host.readers["gate-01"].session.nonce,
          what="session again")
    v = data.change(SITE, [make_record(site.rng)])
    host.pushed[SITE] = v - 1
    assert host.push(SITE) == 1
    s = r.wait(lambda s: s["version"] == v, what="the delta from the host behind")
    assert str(P.E_REPLAY) not in s["rejected"], s["rejected"]


# ---- item 3: fresh sessions -----------------------------------------------------------------
def _hellos(b: Broker, rid: str) -> tuple[mqtt.Client, list[bytes]]:
    spy = _client(b, b.host_user, b.host_password, "gv-spy-" + rid, tls=False)
    got: list[bytes] = []
    spy.on_message = lambda c, u, m: got.append(bytes(m.payload)) if m.payload else None
    spy.subscribe(P.topic(SITE, rid, "hello"), 1)
    return spy, got


def test_a_replayed_hello_no_longer_cuts_the_reader_off_from_blocks(site, tmp_path):
    image = str(tmp_path / "flash.img")
    spy, hellos = _hellos(site.broker, "gate-01")
    r = site.reader(image=image)
    r.wait(lambda s: s["version"] == 1, what="first rebuild")
    _wait(lambda: hellos, what="the first boot's HELLO")
    old = hellos[-1]
    r.ctl("quit")
    r.proc.wait(10)
    r = site.reader(image=image)  # it reboots: a new boot number, a new session
    s = r.wait(lambda s: s["connected"] and s["boot"] == 2, what="second boot")
    _wait(lambda: len(hellos) >= 2 and hellos[-1] != old, what="the second boot's HELLO")
    time.sleep(0.5)
    new = hellos[-1]
    # an attacker republishes the first boot's HELLO (authentic, a fresh-looking nonce)
    spy.publish(P.topic(SITE, "gate-01", "hello"), old, qos=1).wait_for_publish(5)
    _wait(lambda: site.host.stats["rejected_in"] >= 1, what="the old HELLO refused")
    assert site.host.readers["gate-01"].session.nonce == P.peek(new)[1]
    # an operator blocks a card: the reader applies it as it normally would (one live delta)
    blocked = bytearray(site.records[9])
    blocked[8] = (blocked[8] & ~7) | 3
    v = site.data.change(SITE, [bytes(blocked)])
    assert site.host.push(SITE) == 1
    s = r.wait(lambda s: s["version"] == v, timeout=10, what="the block after the replay")
    # (the one stale message it saw is the host asking the replayed HELLO's dead session for
    # a new HELLO: dropped, as every message sealed for an old session is)
    assert s["deltas"] >= 1 and s["rejected"].get(str(P.E_SESSION), 0) <= 1, s
    _stop(spy)


def test_a_reader_that_lost_its_boot_count_is_lifted_above_the_old_one(site, tmp_path):
    image = str(tmp_path / "flash.img")
    r = site.reader(image=image)
    r.wait(lambda s: s["version"] == 1, what="boot 1")
    r.ctl("quit")
    r.proc.wait(10)
    r = site.reader(image=image)
    r.wait(lambda s: s["boot"] == 2 and s["connected"], what="boot 2")
    r.ctl("quit")
    r.proc.wait(10)
    # a new flash (say, a replaced board with the same config): boot 1 again, below what the
    # host has seen; the host asks it for a higher one and it syncs as usual
    r = site.reader(image=str(tmp_path / "fresh.img"))
    s = r.wait(lambda s: s["version"] == 1, timeout=30, what="rebuild after the lost count")
    assert s["boot"] >= 3, s
