"""The host's side of a refusing reader and of live health (issues 18.4, 18.5, 14.5), against the
registry on SQLite: HostSync is fed sealed reader messages directly (its broker client never
connects; what it would publish is counted), and the operators' CLI shows what it recorded."""
from __future__ import annotations

import json

import pytest

import host_sync  # noqa: F401
from gv.sync import protocol as P
from host_sync import health as hl
from host_sync.db import Db
from host_sync.store import RegistryData
from host_sync.syncer import HostSync
from tests.host_kit import Operator, org_for, pnr_for

NONCE = bytes(range(8))


class Reader:
    """Seals messages as the reader would."""

    def __init__(self, rid: str, secret: bytes):
        self.rid, self.key, self.ctr = rid, P.Key(secret, rid), 0

    def msg(self, typ: int, body: bytes) -> bytes:
        self.ctr += 1
        return P.seal(self.key, P.DIR_READER, typ, NONCE, self.ctr, body)


class Msg:
    def __init__(self, topic: str, payload: bytes, retain: bool = False):
        self.topic, self.payload, self.retain = topic, payload, retain


def health(bits=0, need=0, free=500_000, retry=0, mem=(), errors=0):
    return P.health_body(bits, 1, free, 2 * 1024 * 1024, need, 0, errors, 0, 60, retry,
                         [(P.M_NOW, 60_000, 30_000, P.UNKNOWN, P.UNKNOWN), *mem])


@pytest.fixture
def site(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "reg.db")
    op = Operator(url)
    op.ok("sites", "add", "site-a", "--name", "Kv. Hammaren", "--tax-id", "PL1234-5678")
    op.ok("readers", "add", "gate-01", "--site", "site-a")
    for i in range(3):
        op.ok("cards", "add", "BB-2401-%06d" % (i + 1), "--uid", "0%07x" % (i + 1), "--holder",
              "H %d" % i, "--pnr", pnr_for(i + 1), "--employer", "Bygg AB", "--org-no",
              org_for(1), "--site", "site-a")
    db = Db(url)
    data = RegistryData(db)
    secret, _ = data.reg.reader_credentials("gate-01")
    eng = HostSync(data, "127.0.0.1", 1, snap_records=1)  # 3 cards: a window of 3 chunks
    r = Reader("gate-01", bytes(secret))

    def send(leaf: str, typ: int, body: bytes, retain: bool = False) -> int:
        before = eng.stats["published"]
        eng._on_message(None, None, Msg("gv/site-a/gate-01/" + leaf, r.msg(typ, body), retain))
        return eng.stats["published"] - before

    yield op, eng, send
    db.close()


def test_a_reader_whose_flash_is_full_is_held_shown_and_resumed(site):
    op, eng, send = site
    # a reader with nothing asks: a rebuild
    assert send("hello", P.T_HELLO, P.hello_body(0, 0, 0, 8192, 60_000, P.H_ALLOWLIST, 0, "fw")) == 3
    # it refuses for want of room and says so
    assert send("out", P.T_REJECT, P.reject_body(P.E_FULL, P.T_SNAP, 1, 7)) == 0
    assert send("out", P.T_HEALTH, health(P.H_FULL | P.H_ALLOWLIST, need=212_992, free=8192,
                                          retry=15)) == 0
    st = eng.readers["gate-01"]
    assert st.held()
    # a live change: nothing goes to it while it says it backs off
    op.ok("cards", "activate", "BB-2401-000001")
    eng.pushed["site-a"] = 0
    assert eng.push("site-a") == 0
    # a HELLO that says it backs off (after a reconnect) asks for nothing
    assert send("hello", P.T_HELLO, P.hello_body(0, 0, 0, 8192, 60_000, P.H_FULL | P.H_ALLOWLIST,
                                                 0, "fw")) == 0

    # the operator sees why, problems first, in readers list / show / status
    rows = json.loads(op.ok("readers", "list", "--json"))
    att = rows[0]["health"]["attention"]
    assert att.startswith("flash full: an update needs 208 KB, 8 KB free"), att
    table = op.ok("readers", "list")
    col = table.splitlines()[1].split("fw", 1)[1].strip()
    assert col.startswith("NEEDS ATTENTION: flash full: an update needs 208 KB, 8 KB free"), col
    assert "allowlist needs a resend" in col
    show = op.ok("readers", "show", "gate-01")
    assert "NEEDS ATTENTION: flash full" in show
    assert any(line.startswith("need_flash") and "212992" in line and "s ago" in line
               for line in show.splitlines()), show
    assert "MEMORY AT" in show and "now" in show
    assert op("status", "BB-2401-000001") == 5  # pending at that reader
    assert "needs attention: flash full" in op.out, op.out

    # its own wait over, it asks again: one chunk to try, not a window to refuse
    assert send("out", P.T_SYNC, P.sync_body(0, 0, 0)) == 1
    assert eng.stats["held"] == 0
    # it says it has room: no longer held; its next SYNC is answered with a whole window
    assert send("out", P.T_HEALTH, health(P.H_ALLOWLIST, need=212_992, free=400_000)) == 0
    assert not st.held()
    assert send("out", P.T_SYNC, P.sync_body(0, 0, 0)) == 3
    # it succeeds: attention gone
    send("out", P.T_ACK, P.ack_body(eng.data.current_version("site-a")))
    send("out", P.T_HEALTH, health(0))
    rows = json.loads(op.ok("readers", "list", "--json"))
    assert "attention" not in rows[0]["health"]
    assert hl.problems(rows[0]["health"]) == []


def test_a_reader_that_never_backs_off_is_held_by_the_host(site):
    op, eng, send = site
    eng.hold_s = (60.0, 600.0)
    send("hello", P.T_HELLO, P.hello_body(0, 0, 0, 8192, 60_000, P.H_ALLOWLIST, 0, "fw"))
    answered = 0
    for _ in range(50):  # old firmware: asks again at once after every refusal
        send("out", P.T_REJECT, P.reject_body(P.E_STORE, P.T_SNAP, 8, 7))  # as it calls it
        answered += send("out", P.T_SYNC, P.sync_body(0, 0, 0)) > 0
    assert answered == 0
    assert eng.readers["gate-01"].held()


def test_memory_figures_shown_and_warned_below_thresholds(site):
    op, eng, send = site
    send("hello", P.T_HELLO, P.hello_body(0, 0, 0, 8192, 60_000, 0, 0, "fw"))
    send("out", P.T_HEALTH, health(P.H_MEMORY, errors=2, mem=[
        (P.M_BOOT, 70_000, 40_000, 90_000, 60_000),
        (P.M_TLS, 30_000, 20_000, 41_000, 12_000),  # ESP-IDF heap too cut up for a handshake
        (P.M_REBUILD, 9_000, 4_000, 40_000, 30_000)]))  # GC heap nearly gone mid-rebuild
    h = json.loads(op.ok("readers", "list", "--json"))[0]["health"]
    assert h["mem"]["boot"] == [70_000, 40_000, 90_000, 60_000]
    assert set(h["at"]) >= {"mem.now", "mem.boot", "mem.tls", "mem.rebuild", "free_flash"}
    probs = hl.problems(h)
    assert probs[0].startswith("ESP-IDF heap low at tls"), probs
    assert any(p.startswith("GC heap low at rebuild") for p in probs)
    assert "2 MemoryError(s) since provisioning" in probs
    show = op.ok("readers", "show", "gate-01")
    assert "ESP-IDF heap low at tls" in show
    line = [x for x in show.splitlines() if x.startswith("boot")][0]
    assert "68 KB" in line and "59 KB" in line and "s ago" in line
    # the unix port's unknown ESP-IDF heap is shown as unknown, not as 4 GB
    now = [x for x in show.splitlines() if x.startswith("now ")][0]
    assert "4194304" not in now and " - " in now


def test_free_flash_from_a_wrapped_count_never_reaches_the_registry_as_4_gb():
    # the reader clamps (tests/mp/test_sync_health.py); the registry shows what it is told
    h = hl.merge({}, P.parse_health(health(need=8192, free=0)), "health", "2026-12-01T00:00:00Z")
    assert hl.summary(h).startswith("NEEDS ATTENTION: flash full: an update needs 8 KB, 0 B free")


def test_a_reader_in_session_gets_the_time_at_the_first_look_and_then_hourly(site, monkeypatch):
    """Housekeeping's clock correction, on a host that booted minutes ago (time.monotonic() is
    the host's uptime): a reader never given the time gets it at the first look, then not again
    until the interval has passed."""
    import host_sync.syncer as syncer
    _, eng, send = site
    now = [300.0]
    monkeypatch.setattr(syncer.time, "monotonic", lambda: now[0])
    eng._on_message(None, None, Msg("gv/site-a/gate-01/status", b"online", True))
    # its clock is set (no H_CLOCK): the HELLO gives it no time of its own
    assert send("hello", P.T_HELLO, P.hello_body(0, 0, 0, 400_000, 60_000, 0, 0, "fw")) == 3
    before = eng.stats["published"]
    assert eng.correct_clocks(3600.0) == 1
    assert eng.stats["published"] == before + 1
    now[0] += 3599.0
    assert eng.correct_clocks(3600.0) == 0
    now[0] += 1.0
    assert eng.correct_clocks(3600.0) == 1
    # offline readers are left alone
    eng._on_message(None, None, Msg("gv/site-a/gate-01/status", b"offline", True))
    now[0] += 7200.0
    assert eng.correct_clocks(3600.0) == 0


def test_a_reader_whose_connection_is_taken_over_again_and_again_raises_an_alarm(site, monkeypatch):
    """Two clients on one reader's account replace each other's session: each time the old
    one's will says offline. Five within a minute is an alarm naming the reader; a link that
    drops now and then is not."""
    import host_sync.store as store
    op, eng, _ = site
    t = [1000.0]
    monkeypatch.setattr(store.time, "monotonic", lambda: t[0])

    def flip(n, every):
        for _ in range(n):
            eng._on_message(None, None, Msg("gv/site-a/gate-01/status", b"online"))
            eng._on_message(None, None, Msg("gv/site-a/gate-01/status", b"offline"))
            t[0] += every

    def takeovers():
        return eng.data.db.all("SELECT reader_id, site_id, message FROM alarms"
                               " WHERE kind = 'takeover'")
    flip(4, 2.0)
    t[0] += 120.0
    flip(4, 20.0)  # 8 drops, never 5 within a minute
    assert takeovers() == []
    flip(5, 2.0)
    (rid, site_id, msg), = takeovers()
    assert (rid, site_id) == ("gate-01", "site-a") and "taken over 5 times" in msg, msg
    assert "readers revoke" in msg
    assert "alarm raised" in op.ok("audit", "--subject", "gate-01")
