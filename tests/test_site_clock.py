"""A reader that boots without a clock gets the time from the host when it says hello, so its
events carry wall-clock times and its validity dates are checked (real firmware, broker, host)."""
import csv
import datetime as dt
import io
import time

from tools.site import ReaderSpec, SiteSpec, VirtualSite, present
from tools.site_scenario import _cards_csv, ANNA_UID, SITE

FUTURE_UID = "04f0f1f2f3f4f5"


def test_host_sets_the_clock_of_a_reader_that_has_none(tmp_path):
    with VirtualSite(tmp_path, [SiteSpec(SITE, "Clock site", "BY-1", "never")], [ReaderSpec("gate-01", SITE)]) as s:
        s.provision()
        cards = tmp_path / "cards.csv"
        _cards_csv(cards, 0)
        s.import_cards(cards)
        s.start_broker()
        s.start_host()
        vb = s.start_reader("gate-01")
        s.wait_converged(60)
        # The clock command follows the hello; under load a card can come first: that one is
        # logged without a clock (clock_set "no"), a later one must carry it.
        deadline = time.monotonic() + 60
        rows = []
        while time.monotonic() < deadline:
            assert present(vb, ANNA_UID)["granted"]
            out = s.cli("events", "export", "--site", SITE, "--from", "2000-01-01", "--to", "2100-01-01").stdout
            rows = [r for r in csv.DictReader(io.StringIO(out)) if r["kind"] == "decision"]
            if any(r["clock_set"] == "yes" for r in rows):
                break
            time.sleep(1)
        assert any(r["clock_set"] == "yes" for r in rows), rows


def _events(s, **match):
    out = s.cli("events", "export", "--site", SITE, "--from", "2000-01-01", "--to", "2100-01-01",
                "--tz", "UTC").stdout
    return [r for r in csv.DictReader(io.StringIO(out)) if all(r[k] == v for k, v in match.items())]


def _utc(text):
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)


def test_power_and_network_cut_dates_stay_checked_and_the_ledger_keeps_real_times(tmp_path):
    # The reader has the time; then its network and its power are cut (12 s off). Rebooted
    # without either, it still refuses a card whose validity starts in 30 days (its saved lower
    # bound of the clock) and grants Anna; her event carries that bound, 12+ s behind. When the
    # network is back the host gives the time, the reader logs it, and the staff ledger holds
    # the real time of Anna's passage, not the bound and not the time it arrived.
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    with VirtualSite(tmp_path, [SiteSpec(SITE, "Clock site", "BY-1", "never")], [ReaderSpec("gate-01", SITE)]) as s:
        s.provision()
        cards = tmp_path / "cards.csv"
        cards.write_text("card_number,uid,holder_name,employer,status,sites,valid_from\n"
                         f"AB-2403-000101,{ANNA_UID},Anna Berg,Berg Bygg AB,active,{SITE},\n"
                         f"FU-2612-000001,{FUTURE_UID},Fia Ung,Berg Bygg AB,active,{SITE},{future}\n")
        s.import_cards(cards)
        s.start_broker()
        s.start_host()
        vb = s.start_reader("gate-01")
        s.wait_converged(60)
        deadline = time.monotonic() + 60
        while not _events(s, kind="clock set") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _events(s, kind="clock set"), "the host never set the reader's clock"
        assert not present(vb, FUTURE_UID)["granted"]  # with the clock: not yet valid
        time.sleep(2)

        s.readers["gate-01"].net.cut()
        vb.stop()  # power off ...
        time.sleep(12)  # ... for 12 s: the saved bound now lags the real time by that much
        vb = s.start_reader("gate-01", fresh=False)
        vb.wait_for(lambda e: "up; allowlist" in e.get("log", ""), 30, from_start=True)
        time.sleep(1)  # the gate's first polls
        assert not present(vb, FUTURE_UID)["granted"]  # no clock, no network: the bound refuses
        time.sleep(2)  # the refusal's signal ends
        before = dt.datetime.now(dt.timezone.utc)
        assert present(vb, ANNA_UID)["granted"]
        after = dt.datetime.now(dt.timezone.utc)
        time.sleep(5)
        s.readers["gate-01"].net.restore()

        deadline = time.monotonic() + 90
        rows = []
        while time.monotonic() < deadline:
            rows = [r for r in _events(s, result="grant") if r["card_number"] == "AB-2403-000101"]
            if rows and rows[-1]["time_basis"] == "dated":
                break
            time.sleep(1)
        assert rows and rows[-1]["time_basis"] == "dated", rows
        at = _utc(rows[-1]["at"])
        assert before - dt.timedelta(seconds=3) <= at <= after + dt.timedelta(seconds=3), (at, before, after)
        assert _utc(rows[-1]["received_at"]) > after  # the reception time was not taken for it
        refused = [r for r in _events(s, reason="not yet valid")]
        assert len(refused) == 2 and {r["time_basis"] for r in refused} == {"reader", "dated"}
        day = before.strftime("%Y-%m-%d")
        out = s.cli("ledger", "show", "--site", SITE, "--day", day, "--tz", "UTC").stdout
        assert at.strftime("%H:%M:%S")[:5] in out and "Anna Berg" in out, out
