"""A reader that boots without a clock gets the time from the host when it says hello, so its
events carry wall-clock times and its validity dates are checked (real firmware, broker, host)."""
import csv
import io
import time

from tools.site import ReaderSpec, SiteSpec, VirtualSite, present
from tools.site_scenario import _cards_csv, ANNA_UID, SITE


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
