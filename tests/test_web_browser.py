"""The console in a real browser on a real virtual site: Debian's Chromium (headless, driven by
Selenium through Debian's chromedriver) signs in to `host-sync web`, which runs beside the real
broker, `host-sync serve` and a virtual reader running the real firmware. In one browser
session: sign in; block a card and watch the change page show the reader apply it, then the
reader refuses that card (the card rules' refusal wording is tested in test_web_console.py); a
duress PIN typed at the reader reaches a webhook receiver this test runs (HMAC-signed) and the
banner of the open page, and is acknowledged; a CSV with a bad row is refused with its line
named; the day's staff ledger is exported. Screenshots of the main pages go to
docs/screenshots/ (the README shows one)."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from tests.web_kit import Receiver, browser_missing, chromium, wait_until
from tools.demo import pin_entry
from tools.site import ReaderSpec, SiteSpec, VirtualSite, present

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
ANNA, ANNA_UID = "AB-2403-000101", "04a1b2c3d4e5f6"
BO, BO_UID, BO_PIN = "AB-2403-000102", "00a1b2c3", "4711"
SECRET = "webhook-secret-for-the-test"
PW = "a long test password"
CARDS = (
    "card_number,uid,holder_name,personal_identity_number,employer,employer_org_no,status,"
    "pin_required,sites\n"
    "AB-2403-000101,04a1b2c3d4e5f6,Anna Berg,19850312-2387,Berg Bygg AB,556677-8899,active,no,site-a\n"
    "AB-2403-000102,00a1b2c3,Bo Ek,19790101-1234,Berg Bygg AB,556677-8899,active,yes,site-a\n"
    "CD-2311-004711,04c0ffee112233,Carl Dahl,19920704-4414,Dahl El HB,969612-3455,inactive,no,site-a\n")
BAD_CSV = ("card_number,uid,holder_name,status,sites\n"
           "AB-2406-000301,04aa0000000301,Ny Person,active,site-a\n"
           "AB-2406-000302,04aa0000000302,Fel Status,kanske,site-a\n")


@pytest.fixture
def site(tmp_path):
    why = browser_missing()
    if why:
        pytest.skip(why)
    s = VirtualSite(tmp_path / "site", [SiteSpec("site-a", "Kvarteret Bävern", "BY-2026-000101",
                                                 "card")], [ReaderSpec("gate-01", "site-a")])
    rx = Receiver()
    try:
        s.provision()
        cards = tmp_path / "cards.csv"
        cards.write_text(CARDS)
        s.import_cards(cards)
        s.cli("cards", "set-pin", BO, "--pin-stdin", input=BO_PIN + "\n")
        s.cli("alarms", "sink-add", "webhook", rx.url, "--secret-env", "GV_HOOK_SECRET",
              env={"GV_HOOK_SECRET": SECRET})
        s.start_broker()
        s.start_host()
        s.start_reader("gate-01")
        s.start_web("ops", PW)
        s.wait_converged(120)
        yield s, rx
    finally:
        rx.close()
        s.stop()


def _text(b) -> str:
    return b.find_element("tag name", "body").text


def _shot(b, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    b.save_screenshot(str(SHOTS / ("%s.png" % name)))


def test_operator_flow_in_chromium(site, tmp_path):
    s, rx = site
    t_start = time.monotonic()

    def step(what: str) -> None:
        print("[%5.1f s] %s" % (time.monotonic() - t_start, what), flush=True)
    url = s.web_url
    gate = s.readers["gate-01"].board
    assert present(gate, ANNA_UID)["granted"]  # Anna's card opens the gate before the block
    downloads = tmp_path / "downloads"
    with chromium(tmp_path / "profile", downloads) as b:
        step("chromium up")
        # sign in
        b.get(url + "/cards")
        assert "/login" in b.current_url
        b.find_element("id", "username").send_keys("ops")
        b.find_element("id", "password").send_keys(PW)
        b.find_element("id", "signin").click()
        wait_until(lambda: "Cards" in b.title, 20, "the cards page after sign-in")
        assert "gv_session" not in b.execute_script("return document.cookie")  # HttpOnly

        step("signed in")
        b.get(url + "/readers")
        wait_until(lambda: "online" in b.find_element("css selector", "tr[data-reader=gate-01]").text,
                   30, "gate-01 online on the readers page")
        _shot(b, "readers")

        step("readers page")
        # block Anna's card, with a reason and the confirmation
        b.get(url + "/cards?q=anna")
        _shot(b, "cards")
        b.find_element("link text", ANNA).click()
        b.find_element("id", "do-block").click()
        b.find_element("id", "reason").send_keys("badge reported stolen")
        b.find_element("id", "confirm").click()
        b.find_element("id", "submit").click()
        wait_until(lambda: "blocked (active -> blocked)" in _text(b), 20, "the block confirmed")
        step("block submitted")
        # the change page follows the reader live (polling, no reload)
        wait_until(lambda: "applied by 1 of 1" in b.find_element("id", "applied-count").text, 60,
                   "gate-01 to apply the block, shown without a reload")
        _shot(b, "change")
        assert not present(gate, ANNA_UID)["granted"]  # the reader refuses the blocked card

        step("reader refused the card")
        # a duress PIN at the gate: the webhook and the banner of the open page
        b.get(url + "/readers")
        duress = BO_PIN[:-1] + str((int(BO_PIN[-1]) + 1) % 10)
        t0 = time.monotonic()
        assert pin_entry(gate, BO_UID, duress + "#")["granted"]  # the door opens, silently
        wait_until(lambda: rx.got, 30, "the duress alarm at the webhook receiver")
        headers, body, t_hook = rx.got[0]
        assert headers["X-Grindvakt-Signature"] == "sha256=" + hmac.new(
            SECRET.encode(), body, hashlib.sha256).hexdigest()
        alarm = json.loads(body)
        assert alarm["kind"] == "duress" and alarm["reader"] == "gate-01" and BO in alarm["message"]
        wait_until(lambda: "DURESS" in b.find_element("id", "banner").text, 30,
                   "the duress alarm in the banner of the open page")
        t_banner = time.monotonic()
        print("duress PIN -> webhook %.1f s, -> banner %.1f s" % (t_hook - t0, t_banner - t0))
        _shot(b, "alarm")
        step("banner shown")
        b.find_element("css selector", "#banner button.ack").click()
        wait_until(lambda: "DURESS" not in b.find_element("id", "banner").text, 20,
                   "the banner cleared after the acknowledgement")
        audit = s.cli("audit", "--limit", "20").stdout
        assert "alarm acknowledged" in audit and "web:ops" in audit
        assert "web:ops  block" in audit or "web:ops block" in " ".join(audit.split())

        step("alarm acknowledged")
        # a CSV with a bad row: the line is named and nothing is applied
        bad = tmp_path / "new-cards.csv"
        bad.write_text(BAD_CSV)
        b.get(url + "/import")
        b.find_element("id", "file").send_keys(str(bad))
        b.find_element("id", "preview-btn").click()
        errors = wait_until(lambda: b.find_element("id", "import-errors").text, 20, "import errors")
        assert "line 3:" in errors and "kanske" in errors and "nothing was applied" in errors
        _shot(b, "import")
        assert "AB-2406-000301" not in s.cli("cards", "list").stdout

        step("import refused")
        # the day's staff ledger and its export
        b.get(url + "/ledger?site=site-a")
        page = _text(b)
        assert "Anna Berg" in page and "Bo Ek" in page and "BY-2026-000101" in page
        _shot(b, "ledger")
        step("ledger shown")
        b.find_element("id", "export-csv").click()
        got = wait_until(lambda: [p for p in downloads.glob("personalliggare-site-a-*.csv")], 30,
                         "the ledger CSV download")
        text = got[0].read_text()
        assert text.startswith("site_id_number,") and "Anna Berg" in text and "Bo Ek" in text
        step("ledger exported")
