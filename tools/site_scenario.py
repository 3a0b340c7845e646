"""The fleet scenario: many virtual readers on one site, an operator's block, and faults (the
broker killed, readers' networks cut, power cut during a rebuild and during an event upload, the
host service restarted mid-push). Returns what it measured; the end-to-end test asserts on the
behaviour (nothing lost, nothing doubled, no false grant, everyone converged) and `make bench`
reports the figures.
"""
from __future__ import annotations

import csv
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tools.site import AckMonitor, ReaderSpec, SiteSpec, VirtualSite, present

SITE = "site-a"
ANNA, ANNA_UID = "AB-2403-000101", "04a1b2c3d4e5f6"
BO, BO_UID = "AB-2403-000102", "00a1b2c3"


def _cards_csv(path: Path, extra: int) -> None:
    """Anna and Bo plus `extra` filler cards, so a rebuild takes many chunks."""
    rows = ["card_number,uid,holder_name,employer,status,sites",
            f"{ANNA},{ANNA_UID},Anna Berg,Berg Bygg AB,active,{SITE}",
            f"{BO},{BO_UID},Bo Ek,Berg Bygg AB,active,{SITE}"]
    for i in range(extra):
        rows.append(f"ZZ-2501-{i:06d},{0x05000000 + i:08x},Worker {i},Filler AB,active,{SITE}")
    path.write_text("\n".join(rows) + "\n")


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Fleet:
    def __init__(self, workdir: Path, n_readers: int, extra_cards: int, say: Callable[[str], None]):
        self.say = say
        self.ids = [f"gate-{i:02d}" for i in range(1, n_readers + 1)]
        self.spare = "gate-new"  # joins late: its first rebuild is cut by a power loss
        self.site = VirtualSite(workdir, [SiteSpec(SITE, "Fleet site", "BY-2026-009999", "never")],
                                [ReaderSpec(r, SITE) for r in self.ids + [self.spare]], say=say)
        self.extra_cards = extra_cards
        self.presented: dict[str, int] = {r: 0 for r in self.ids}  # decisions each reader must report
        self.false_grants = 0
        self.monitor: AckMonitor | None = None
        self.pool = ThreadPoolExecutor(16)

    # ---- plumbing ----
    def start(self) -> float:
        s = self.site
        s.provision()
        csv_path = s.dir / "cards.csv"
        _cards_csv(csv_path, self.extra_cards)
        s.import_cards(csv_path)
        s.start_broker()
        s.start_host()
        list(self.pool.map(s.start_reader, self.ids))
        t = s.wait_converged(300)
        self.monitor = AckMonitor(s)
        return t

    def board(self, rid: str):
        return self.site.readers[rid].board

    def present_all(self, uid: str, readers: list[str], expect_grant: bool | None = None) -> list[bool]:
        def one(rid: str) -> bool:
            r = present(self.board(rid), uid, timeout=20)
            self.presented[rid] += 1
            return r["granted"]
        res = list(self.pool.map(one, readers))
        if expect_grant is False:
            self.false_grants += sum(res)
        return res

    def head(self) -> int:
        return max(int(r["head"]) for r in self.site.readers_json())

    def wait_acked(self, version: int, readers: list[str], timeout: float = 120) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = {r: self.monitor.acked_at(r, version) for r in readers}
            if all(v is not None for v in got.values()):
                return got
            time.sleep(0.02)
        missing = [r for r in readers if self.monitor.acked_at(r, version) is None]
        raise TimeoutError(f"{len(missing)} reader(s) never acknowledged version {version}: {missing[:5]}")

    def host_events(self) -> list[dict]:
        out = self.site.cli("events", "export", "--site", SITE, "--from", "2000-01-01", "--to", "2100-01-01").stdout
        return list(csv.DictReader(io.StringIO(out)))

    def wait_events(self, timeout: float = 120) -> tuple[int, int]:
        """Wait until the host holds every decision the readers made; (lost, duplicated)."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.host_events()
            seen: dict[tuple[str, str], int] = {}
            decisions = {r: 0 for r in self.ids}
            for e in evs:
                seen[(e["reader"], e["seq"])] = seen.get((e["reader"], e["seq"]), 0) + 1
                if e["kind"] == "decision" and e["reader"] in decisions:
                    decisions[e["reader"]] += 1
            lost = sum(max(0, self.presented[r] - decisions[r]) for r in self.ids)
            dup = sum(n - 1 for n in seen.values() if n > 1)
            gaps = 0
            for r in self.ids:  # sequence numbers per reader must run 1..max without a hole
                seqs = sorted(int(s) for (rr, s) in seen if rr == r)
                if seqs and seqs != list(range(1, seqs[-1] + 1)):
                    gaps += len(range(1, seqs[-1] + 1)) - len(seqs)
            if (lost == 0 and gaps == 0) or time.monotonic() > deadline:
                return lost + gaps, dup
            time.sleep(0.5)

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.site.stop()


def run(workdir: Path, n_readers: int = 50, extra_cards: int = 1500,
        say: Callable[[str], None] = print) -> dict:
    """The whole scenario; returns its figures (see the module doc)."""
    f = Fleet(workdir, n_readers, extra_cards, say)
    m: dict = {"readers": n_readers}
    try:
        m["initial_converge_s"] = f.start()
        say(f"{n_readers} readers converged in {m['initial_converge_s']:.1f}s")
        ids = f.ids
        s = f.site

        # 1. the block: every reader refuses Anna's card
        grants = f.present_all(ANNA_UID, ids)
        m["grants_before_block"] = sum(grants)
        time.sleep(3.2)  # doors close
        t0 = time.monotonic()
        s.cli("cards", "block", ANNA, "--note", "fleet test")
        version = f.head()
        acked = f.wait_acked(version, ids)
        lat = [(t - t0) * 1000 for t in acked.values()]
        m["block_to_deny_ms"] = lat
        m["block_to_deny_p50_ms"] = _pct(lat, 50)
        m["block_to_deny_p99_ms"] = _pct(lat, 99)
        refused = f.present_all(ANNA_UID, ids, expect_grant=False)
        m["refused_after_block"] = refused.count(False)
        say(f"block applied by all {n_readers} readers: p50 {m['block_to_deny_p50_ms']:.0f} ms, "
            f"p99 {m['block_to_deny_p99_ms']:.0f} ms; {m['refused_after_block']} refusals")

        # 2. the broker killed and restarted while readers keep deciding
        s.stop_broker(kill=True)
        some = ids[:10]
        f.present_all(BO_UID, some)
        f.present_all(ANNA_UID, some, expect_grant=False)
        s.start_broker()
        s.wait_converged(120)
        say("broker killed and restarted: readers decided on, reconnected")

        # 3. readers' networks cut while the registry moves on
        cut = ids[10:13]
        for r in cut:
            s.readers[r].net.cut()
        s.cli("cards", "unblock", ANNA)
        f.present_all(ANNA_UID, cut, expect_grant=False)  # they can't know: still blocked there
        time.sleep(3.2)
        s.cli("cards", "block", ANNA, "--note", "again")
        time.sleep(5)
        t_restore = time.monotonic()
        for r in cut:
            s.readers[r].net.restore()
        s.wait_converged(180)
        m["converge_after_outage_s"] = time.monotonic() - t_restore
        say(f"network back after an outage: converged in {m['converge_after_outage_s']:.1f}s")

        # 4. power cut during a rebuild: a new reader joins (allowlist version 0, so a full
        #    rebuild follows its hello) and loses power part-way through it
        vb2 = s.start_reader(f.spare)
        vb2.wait_for(lambda e: "up;" in e.get("log", ""), 30)
        time.sleep(0.8)
        vb2.mark()
        vb2.send("reset")  # power cut mid-rebuild
        vb2.wait_for(lambda e: e.get("event") == "boot", 30)
        s.wait_converged(180, [f.spare])
        say("power cut during a rebuild: the new reader resumed and converged")

        # 5. power cut during an event upload
        up = ids[14]
        s.readers[up].net.cut()
        for _ in range(4):
            f.present_all(BO_UID, [up])
            time.sleep(3.2)  # the door closes before the next one (a grant while open shows no new pulse)
        s.readers[up].net.restore()
        vb = f.board(up)
        vb.mark()
        time.sleep(0.5)  # reconnected and uploading (the host acks batch by batch)
        vb.send("reset")
        vb.wait_for(lambda e: e.get("event") == "boot", 30)
        say("power cut during an event upload: the reader rebooted")

        # 6. the host service restarted mid-push
        s.cli("cards", "unblock", ANNA)
        s.stop_host(kill=True)
        s.start_host()
        s.wait_converged(180)
        say("host service killed mid-push and restarted: every reader converged")

        # the books
        lost, dup = f.wait_events(180)
        m["events_lost"] = lost
        m["events_duplicated"] = dup
        m["false_grants"] = f.false_grants
        rows = s.readers_json()
        m["readers_at_head"] = sum(1 for r in rows if r["applied_version"] == r["head"])
        final = f.present_all(ANNA_UID, ids[:5])
        m["grants_after_unblock"] = sum(final)
        say(f"events lost {lost}, duplicated {dup}, false grants {f.false_grants}, "
            f"{m['readers_at_head']}/{n_readers} readers at the registry's version")
        if m["block_to_deny_ms"]:
            m["block_to_deny_mean_ms"] = statistics.mean(m["block_to_deny_ms"])
        return m
    finally:
        f.stop()
