"""Host bench: event ingest rate (SQLite), the fan-out of one block to 1,000 readers, and a
10,000-card import. Real SQLite, real mosquitto, the real sync engine; only the readers are
stood in for by sealed HELLOs published on their topics (what a reader sends on connect)."""
from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import host_sync  # noqa: F401
from gv import events as E
from gv.sync import protocol as P
from host_sync import ids
from host_sync.cli import main as cli
from host_sync.db import Db
from host_sync.registry import CardInput, Registry
from host_sync.store import RegistryData
from tools.bench import metric

N_EVENTS = 20_000
N_CARDS = 10_000
N_READERS = 1_000


def _cli(url: str, *argv: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    rc = cli(["--db", url, "-q", *argv], out=out, err=err)
    if rc != 0:
        raise RuntimeError("host-sync %s -> %d: %s%s" % (" ".join(argv), rc, out.getvalue(),
                                                         err.getvalue()))


def _pnr(i: int) -> str:
    nine = "850101%03d" % (i % 1000)
    return "19" + nine[:6] + "-" + nine[6:] + ids.luhn_digit(nine)


def bench_import(tmp: Path) -> float:
    url = "sqlite:///%s" % (tmp / "import.sqlite3")
    _cli(url, "sites", "add", "site-a", "--tax-id", "PL1")
    rows = ["card_number,uid,holder_name,personal_identity_number,employer,status,pin_required"]
    for i in range(N_CARDS):
        rows.append("BB-2405-%06d,04%012x,Person %d,%s,Bygg %d AB,active,%s"
                    % (i, i, i, _pnr(i), i % 40, "yes" if i % 4 == 0 else "no"))
    f = tmp / "cards.csv"
    f.write_text("\n".join(rows) + "\n")
    t0 = time.perf_counter()
    _cli(url, "cards", "import", str(f), "--site", "site-a", "--apply")
    dt = time.perf_counter() - t0
    db = Db(url)
    try:
        assert db.scalar("SELECT COUNT(*) FROM allowlist") == N_CARDS
    finally:
        db.close()
    return dt


def bench_ingest(tmp: Path) -> float:
    url = "sqlite:///%s" % (tmp / "events.sqlite3")
    _cli(url, "sites", "add", "site-a", "--tax-id", "PL1")
    db = Db(url)
    reg = Registry(db)
    uids = [bytes.fromhex("04%012x" % i) for i in range(200)]
    reg.add_cards([CardInput(card_no="BB-2405-%06d" % i, uid=u.hex(), holder="P %d" % i,
                             status="active", sites=("site-a",)) for i, u in enumerate(uids)])
    reg.add_reader("gate-01", "site-a")
    data = RegistryData(db)
    rng = random.Random(1)
    evs = []
    for seq in range(1, N_EVENTS + 1):
        uid = rng.choice(uids)
        grant = rng.random() < 0.9
        evs.append(E.pack(seq, E.K_DECISION, E.R_GRANT if grant else E.R_REFUSE,
                          E.OK if grant else E.BLOCKED, uid, len(uid), 200_000_000 + seq * 30,
                          E.F_CLOCK_SET))
    t0 = time.perf_counter()
    stored = 0
    for i in range(0, N_EVENTS, 20):  # 20 events per EVENTS message, as readers batch them
        stored += data.record_events("gate-01", evs[i:i + 20])
    dt = time.perf_counter() - t0
    db.close()
    assert stored == N_EVENTS
    return N_EVENTS / dt


def bench_fanout(tmp: Path) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from host_sync.serve import DEFAULT_POLL_S, CappedData, Service
    from host_sync.syncer import HostSync
    from tests.broker import Broker

    url = "sqlite:///%s" % (tmp / "fanout.sqlite3")
    _cli(url, "sites", "add", "site-a", "--tax-id", "PL1")
    db = Db(url)
    reg = Registry(db)
    reg.add_cards([CardInput(card_no="BB-2405-%06d" % i, uid="04%012x" % i, status="active",
                             sites=("site-a",)) for i in range(50)])
    rids = ["gate-%04d" % i for i in range(N_READERS)]
    with db.tx():
        for rid in rids:
            reg.add_reader(rid, "site-a")
    secrets = {rid: reg.reader_credentials(rid)[0] for rid in rids}
    head = reg.current_version("site-a")
    with Broker() as b:
        data = CappedData(RegistryData(db))
        eng = HostSync(data, "127.0.0.1", b.plain_port, user=b.host_user, password=b.host_password,
                       client_id="bench-host", share_group="bench")
        svc = Service(data, eng, "bench")
        svc.tick()  # first look at the site
        eng.start()
        stop = threading.Event()
        loop = threading.Thread(target=svc.run, args=(stop, DEFAULT_POLL_S), daemon=True)
        loop.start()

        got = {"n": 0, "t": 0.0}
        target = head + 1
        lock = threading.Lock()

        def on_msg(c, u, m):
            body = m.payload[P.HDR:-P.MAC_LEN]
            if m.payload[1] == P.T_DELTA and P.parse_delta(body)[3] == target:
                with lock:
                    got["n"] += 1
                    got["t"] = time.perf_counter()

        sim = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-readers")
        sim.username_pw_set(b.host_user, b.host_password)
        sim.on_message = on_msg
        sim.connect("127.0.0.1", b.plain_port)  # host account: the unbound loopback listener
        sim.loop_start()
        sim.subscribe("gv/site-a/+/in", qos=0)
        time.sleep(0.3)
        for rid in rids:  # each reader's HELLO, sealed with its own secret
            msg = P.seal(P.Key(secrets[rid], rid), P.DIR_READER, P.T_HELLO, os.urandom(8), 1,
                         P.hello_body(head, 0, 0, 10**6, 60_000, 0, 0, "bench"))
            sim.publish(P.topic("site-a", rid, "hello"), msg, qos=1)
        deadline = time.monotonic() + 60
        while sum(1 for st in eng.readers.values() if st.session.nonce) < N_READERS:
            if time.monotonic() > deadline:
                raise RuntimeError("sessions: %d" % len(eng.readers))
            time.sleep(0.05)
        time.sleep(0.5)
        t0 = time.perf_counter()
        _cli(url, "cards", "block", "BB-2405-000007")
        deadline = time.monotonic() + 60
        while got["n"] < N_READERS:
            if time.monotonic() > deadline:
                raise RuntimeError("only %d of %d deltas arrived" % (got["n"], N_READERS))
            time.sleep(0.001)
        ms = (got["t"] - t0) * 1000
        stop.set()
        loop.join(5)
        sim.loop_stop()
        sim.disconnect()
        eng.stop()
    db.close()
    return ms


def run() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="gv-bench-host-"))
    try:
        ingest = bench_ingest(tmp)
        imp = bench_import(tmp)
        fan = bench_fanout(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "host.events_ingest_per_s": metric(round(ingest), "events/s",
                                           "SQLite, 20-event batches, ledger entries included"),
        "host.block_fanout_ms_1000_readers": metric(round(fan, 1), "ms",
                                                    "block command (CLI) to its 1,000 deltas "
                                                    "received from the broker; serve polls the "
                                                    "registry every 100 ms"),
        "host.import_10k_cards_s": metric(round(imp, 2), "s",
                                          "10,000-row CSV, check + apply, SQLite"),
    }
