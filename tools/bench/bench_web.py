"""Web console bench: the readers page, a card search, a staff-ledger day and an events page at
fleet size, on SQLite and on PostgreSQL (when one is reachable, as in the tests).

The fleet: 10 sites, 100,000 cards, 1,000 readers (5% lagging a block), 500 allowlist changes,
a year of access events (2,000,000: about 5,500 a day) and a year of staff ledger (300 people a
day at the measured site, 100 a day at the nine others: 876,000 entries). Rows are bulk-loaded
(executemany / COPY) past the registry, which is not what is measured; then `ANALYZE`.

Each figure is the 95th percentile of whole HTTP requests through the console's ASGI app
(Starlette's test client in-process: session check, alarm banner, queries, template rendering),
signed in as an admin, with varied pages, search terms and days."""
from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import host_sync  # noqa: F401
from host_sync.db import Db
from host_sync.timeutil import iso
from tools.bench import metric

N_CARDS = 100_000
N_READERS = 1_000
N_SITES = 10
N_EVENTS = 2_000_000
DAYS = 365
LEDGER_PEOPLE = (300, 100)  # a day at the measured site, at each other site
TARGET = "p95 <= 200 ms"
FIRST = ("Anna", "Bo", "Carl", "Dana", "Erik", "Frida", "Gustav", "Hanna", "Ivar", "Jenny",
         "Karl", "Lena", "Mats", "Nina", "Olle", "Petra", "Rune", "Sara", "Tor", "Ulla")
LAST = ("Andersson", "Berg", "Dahl", "Ek", "Fors", "Gran", "Holm", "Ivarsson", "Jonsson", "Karlsson",
        "Lind", "Moberg", "Nilsson", "Olsson", "Persson", "Qvist", "Ström", "Svensson", "Wik", "Öberg")


def _bulk(db: Db, table: str, cols: tuple[str, ...], rows: Iterator[tuple], chunk: int = 50_000) -> int:
    n = 0
    if db.dialect == "postgresql":
        with db._conn.cursor() as cur:
            with cur.copy("COPY %s (%s) FROM STDIN" % (table, ", ".join(cols))) as cp:
                for r in rows:
                    cp.write_row(r)
                    n += 1
        return n
    sql = "INSERT INTO %s (%s) VALUES (%s)" % (table, ", ".join(cols), ",".join("?" * len(cols)))
    buf: list[tuple] = []
    for r in rows:  # one transaction per chunk: the WAL is checkpointed as it goes
        buf.append(r)
        if len(buf) >= chunk:
            with db.tx():
                db._conn.executemany(sql, buf)
            n += len(buf)
            buf = []
    if buf:
        with db.tx():
            db._conn.executemany(sql, buf)
        n += len(buf)
    return n


def _site(i: int) -> str:
    return "site-%02d" % i


def load(db: Db, start: dt.datetime) -> dict:
    rng = random.Random(17)
    ts = iso(start)
    _bulk(db, "sites", ("id", "name", "tax_site_id", "pin_policy", "card_key", "pin_key", "version",
                        "created_at"),
          ((_site(i), "Site %d" % i, "BY-2026-%06d" % i, "card", "00" * 16, "11" * 16, 50, ts)
           for i in range(N_SITES)))

    def card(i: int) -> tuple:
        holder = "%s %s" % (FIRST[i % 20], LAST[(i // 20) % 20])
        return ("BB-2405-%06d" % i, "04%012x" % (i * 7919), holder, "19850101-%04d" % (i % 10000),
                "Bygg %d AB" % (i % 500), "556%03d-%04d" % (i % 500, i % 10000),
                "blocked" if i % 97 == 0 else "active", 1 if i % 4 == 0 else 0, "2025-01-01",
                "2030-01-01", ts, ts)
    _bulk(db, "cards", ("card_no", "uid", "holder", "pnr", "employer", "employer_org", "status",
                        "pin_required", "valid_from", "valid_until", "created_at", "updated_at"),
          (card(i) for i in range(N_CARDS)))
    _bulk(db, "card_sites", ("card_no", "site_id"),
          (("BB-2405-%06d" % i, _site(i % N_SITES)) for i in range(N_CARDS)))
    now = start + dt.timedelta(days=DAYS)
    _bulk(db, "changes", ("site_id", "version", "at", "actor", "action", "subject", "blocking"),
          ((_site(s), v, iso(now - dt.timedelta(hours=50 - v)), "bench",
            "block" if v % 5 == 0 else "activate", "BB-2405-%06d" % (v * 11), 1 if v % 5 == 0 else 0)
           for s in range(N_SITES) for v in range(1, 51)))
    health = json.dumps({"free_heap": 48_000, "free_flash": 1_200_000, "problems": "none"})

    def reader(i: int) -> tuple:
        lag = i % 20 == 0
        return ("gate-%04d" % i, _site(i % N_SITES), "ab" * 32, "pw", "grindvakt-0.1.0",
                45 if lag else 50, iso(now), iso(now), 1, health, ts)
    _bulk(db, "readers", ("id", "site_id", "secret", "broker_password", "firmware",
                          "applied_version", "applied_at", "last_seen", "online", "health",
                          "created_at"), (reader(i) for i in range(N_READERS)))
    raw = "e1" + "00" * 31
    seqs = [0] * N_READERS

    def event(n: int) -> tuple:
        r = rng.randrange(N_READERS)
        seqs[r] += 1
        c = rng.randrange(N_CARDS // N_SITES) * N_SITES + r % N_SITES
        at = start + dt.timedelta(seconds=n * (DAYS * 86400 / N_EVENTS))
        grant = rng.random() < 0.93
        return ("gate-%04d" % r, seqs[r], _site(r % N_SITES), iso(at), iso(at), 1,
                1 if grant else 2, 0 if grant else 3, "04%012x" % (c * 7919), "BB-2405-%06d" % c,
                0, 1, raw)
    t0 = time.perf_counter()
    n_ev = _bulk(db, "events", ("reader_id", "seq", "site_id", "at", "received_at", "kind",
                                "result", "reason", "uid", "card_no", "aux", "clock_set", "raw"),
                 (event(n) for n in range(N_EVENTS)))
    ev_s = time.perf_counter() - t0

    def ledger_rows() -> Iterator[tuple]:
        for s in range(N_SITES):
            people = LEDGER_PEOPLE[0] if s == 0 else LEDGER_PEOPLE[1]
            for d in range(DAYS):
                day = start + dt.timedelta(days=d)
                for p in range(people):
                    i = p * N_SITES + s
                    shift = "%02d%03d%05d" % (s, d, p)
                    t_in = day + dt.timedelta(hours=6, minutes=(p * 7) % 120)
                    t_out = t_in + dt.timedelta(hours=8, minutes=(p * 13) % 90)
                    base = (_site(s), "BY-2026-%06d" % s, "Bygg %d AB" % (i % 500), "556000-0000",
                            "%s %s" % (FIRST[i % 20], LAST[(i // 20) % 20]),
                            "19850101-%04d" % (i % 10000), "BB-2405-%06d" % i)
                    yield (shift, "in") + base + (iso(t_in), "gate-%04d" % s, iso(t_in), "")
                    if d < DAYS - 1:
                        yield (shift, "out") + base + (iso(t_out), "gate-%04d" % s, iso(t_out), "")
    n_led = _bulk(db, "ledger", ("shift_id", "kind", "site_id", "tax_site_id", "employer",
                                 "employer_org", "person_name", "pnr", "card_no", "at", "reader_id",
                                 "entered_at", "note"), ledger_rows())
    from host_sync.registry import Registry
    t0 = time.perf_counter()
    indexed = Registry(db).refresh_search_terms()  # what the console's watcher does after an import
    terms_s = time.perf_counter() - t0
    assert indexed == N_CARDS
    db.execute("ANALYZE")
    return {"n_events": n_ev, "n_ledger": n_led, "events_load_s": ev_s, "terms_s": terms_s}


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def measure(url: str, start: dt.datetime) -> dict[str, float]:
    from starlette.testclient import TestClient

    from host_sync import accounts
    from host_sync.web.app import Config, create_app
    db = Db(url)
    try:
        info = load(db, start)
        accounts.add_user(db, "bench", "bench password 1", "admin", actor="bench")
        app = create_app(Config(db_url=url, alarm_watcher=False, tz="UTC"), db)
        c = TestClient(app)
        import re
        tok = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
        r = c.post("/login", data={"username": "bench", "password": "bench password 1",
                                   "csrf": tok}, follow_redirects=False)
        assert r.status_code == 303, r.text
        rng = random.Random(5)

        def timed(path: str, params: dict, expect: str) -> float:
            t0 = time.perf_counter()
            r = c.get(path, params=params)
            ms = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200 and expect in r.text, (path, params, r.status_code)
            return ms

        for _ in range(3):  # warm the caches as a running console would be
            timed("/readers", {}, "gate-0000")
        readers = [timed("/readers", rng.choice(({}, {"page": rng.randrange(20)},
                                                  {"site": _site(rng.randrange(N_SITES))})),
                         "gate-") for _ in range(60)]
        terms = []
        for i in range(60):
            k = rng.randrange(N_CARDS)
            terms.append(rng.choice(("BB-2405-%06d" % k, "BB-2405-%03d" % (k // 1000),
                                     "04%012x" % (k * 7919), ("04%012x" % (k * 7919))[:8],
                                     LAST[k % 20].lower(), "%s %s" % (FIRST[k % 20], LAST[(k // 20) % 20]),
                                     "Bygg %d AB" % (k % 500), "zz-no-such-name")))
        cards = [timed("/cards", {"q": q}, "Cards") for q in terms]
        days = [start + dt.timedelta(days=rng.randrange(1, DAYS - 1)) for _ in range(40)]
        ledger = [timed("/ledger", {"site": "site-00", "day": d.date().isoformat()}, "Shifts on")
                  for d in days]
        events = [timed("/events", rng.choice(({"site": _site(rng.randrange(N_SITES))},
                                                {"reader": "gate-%04d" % rng.randrange(N_READERS)},
                                                {"what": "refusals"})), "Access events")
                  for _ in range(30)]
        return {"readers": p95(readers), "cards": p95(cards), "ledger": p95(ledger),
                "events": p95(events), "ledger_p50": sorted(ledger)[len(ledger) // 2], **info}
    finally:
        db.close()


@contextmanager
def _pg() -> Iterator[str | None]:
    from tests.host_kit import pg_database, pg_unavailable
    if pg_unavailable():
        yield None
        return
    with pg_database() as url:
        yield url


def run() -> dict:
    start = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) \
        - dt.timedelta(days=DAYS)
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="gv-bench-web-"))
    try:
        runs = [("sqlite", "sqlite:///%s" % (tmp / "web.sqlite3"))]
        with _pg() as pg:
            if pg:
                runs.append(("postgresql", pg))
            for name, url in runs:
                t0 = time.perf_counter()
                m = measure(url, start)
                sfx = "" if name == "sqlite" else "_pg"
                what = ("%s; %d cards, %d readers, %d events, %d ledger entries"
                        % (name, N_CARDS, N_READERS, m["n_events"], m["n_ledger"]))
                out["web.readers_page_p95_ms" + sfx] = metric(
                    round(m["readers"], 1), "ms", TARGET + " (" + what + "; 50 a page)")
                out["web.card_search_p95_ms" + sfx] = metric(
                    round(m["cards"], 1), "ms", TARGET + " (number, UID, name, employer; "
                    + name + ")")
                out["web.ledger_day_p95_ms" + sfx] = metric(
                    round(m["ledger"], 1), "ms", TARGET + " (300 people a day at the site; "
                    + name + ")")
                out["web.ledger_day_p50_ms" + sfx] = metric(
                    round(m["ledger_p50"], 1), "ms", "(the median: how far the p95 is the"
                    " machine's load; " + name + ")")
                out["web.card_name_index_100k_s" + sfx] = metric(
                    round(m["terms_s"], 2), "s", "indexing the name words of 100,000 new cards"
                    " (background, after an import; " + name + ")")
                out["web.events_page_p95_ms" + sfx] = metric(
                    round(m["events"], 1), "ms", "(by site, reader or refusals; " + name + ")")
                print("bench web: %s done in %.0f s" % (name, time.perf_counter() - t0), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
