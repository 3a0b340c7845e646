"""The web console over HTTP (Starlette's test client, no browser): sign-in, lockout and rate
limit, CSRF, roles and site limits, card actions through the registry (refusals worded as the
CLI words them, audited under the signed-in user), search, change status, CSV import preview
with line numbers, ledger exports (CSV and a real PDF), alarms raised from a duress event,
delivered to a webhook with an HMAC-signed body (retried while it fails) and acknowledged.
The browser flow on a virtual reader is tests/test_web_browser.py."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re

import pytest
from starlette.testclient import TestClient

import host_sync  # noqa: F401
from gv import events as E
from host_sync import accounts, alarms, ledger
from host_sync.db import Db
from host_sync.web.app import Config, create_app
from tests.host_kit import Operator, backdate, database, org_for, pnr_for
from tests.web_kit import Receiver

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ANNA, BO, CARL = "AB-2403-000101", "AB-2403-000102", "CD-2311-004711"
PW = "correct horse battery"


BOTH = pytest.mark.parametrize("console", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch):
    """argon2id at its lowest cost: the tests sign in dozens of times (production keeps the
    library's defaults, ~64 MiB and 3 passes per hash)."""
    from argon2 import PasswordHasher
    ph = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(accounts, "_ph", ph)
    monkeypatch.setattr(accounts, "_DUMMY", ph.hash("dummy"))


@pytest.fixture
def console(request, tmp_path):
    with database(getattr(request, "param", "sqlite"), tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--name", "Kv. Hammaren", "--tax-id", "PL1234-5678")
        o.ok("sites", "add", "site-b", "--name", "Hamnen", "--tax-id", "PL9999-0000")
        for no, uid, who, sites in ((ANNA, "04a1b2c3d4e5f6", "Anna Berg", ("site-a",)),
                                    (BO, "00a1b2c3", "Bo Ek", ("site-a", "site-b")),
                                    (CARL, "04c0ffee112233", "Carl Dahl", ("site-b",))):
            o.ok("cards", "add", no, "--uid", uid, "--holder", who, "--pnr", pnr_for(len(who)),
                 "--employer", "Berg Bygg AB", "--org-no", org_for(1),
                 *[a for s in sites for a in ("--site", s)])
        o.ok("cards", "activate", ANNA)
        o.ok("cards", "activate", BO)
        o.ok("readers", "add", "gate-01", "--site", "site-a")
        o.ok("readers", "add", "gate-02", "--site", "site-b")
        o.ok("users", "add", "olle", "--role", "operator", "--password-stdin", stdin=PW + "\n")
        o.ok("users", "add", "vera", "--role", "viewer", "--password-stdin", stdin=PW + "\n")
        o.ok("users", "add", "amir", "--role", "operator", "--sites", "site-a",
             "--password-stdin", stdin=PW + "\n")
        db = Db(url)
        app = create_app(Config(db_url=url, alarm_watcher=False, tz="UTC"), db)
        try:
            yield o, db, app
        finally:
            db.close()


def client(app) -> TestClient:
    return TestClient(app, base_url="http://testserver")


def sign_in(c: TestClient, user: str, pw: str = PW):
    page = c.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return c.post("/login", data={"username": user, "password": pw, "csrf": token},
                  follow_redirects=False)


def csrf_of(c: TestClient, url: str = "/readers") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', c.get(url).text).group(1)


@BOTH
def test_sign_in_sessions_are_httponly_strict_and_audited(console):
    o, db, app = console
    c = client(app)
    assert c.get("/cards", follow_redirects=False).headers["location"].startswith("/login")
    r = sign_in(c, "olle")
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "gv_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    token = r.cookies.get("gv_session") or c.cookies.get("gv_session")
    # only a hash of the token is in the database
    assert db.scalar("SELECT COUNT(*) FROM web_sessions WHERE token_hash = ?", (token,)) == 0
    page = c.get("/cards")
    assert page.status_code == 200 and ANNA in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    o.ok("audit")
    assert "web:olle" in o.out and "signed in" in o.out
    c.post("/logout", data={"csrf": csrf_of(c)})
    assert c.get("/cards", follow_redirects=False).status_code == 303


def test_wrong_passwords_lock_the_account_and_the_rate_limit_holds(console):
    o, db, app = console
    c = client(app)
    for _ in range(accounts.LOCK_AFTER):
        assert sign_in(c, "vera", "wrong password!").status_code == 401
    r = sign_in(c, "vera")  # the right password, but locked now
    assert r.status_code == 401 and "locked" in r.text
    assert db.scalar("SELECT locked_until FROM users WHERE username = 'vera'")
    codes = [sign_in(c, "nobody", "x" * 12).status_code for _ in range(10)]
    assert 429 in codes  # per-address limit: ten a minute
    o.ok("users", "passwd", "vera", "--password-stdin", stdin=PW + "x\n")  # an admin lifts it
    app.app.state.gv.logins.clear()  # a minute later
    assert sign_in(client(app), "vera", PW + "x").status_code == 303


def test_every_change_needs_the_csrf_token(console):
    o, db, app = console
    c = client(app)
    sign_in(c, "olle")
    r = c.post("/cards/%s/block" % ANNA, data={"reason": "lost", "confirm": "yes"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post("/cards/%s/block" % ANNA, data={"reason": "lost", "confirm": "yes",
                                              "csrf": csrf_of(c)},
               headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert db.scalar("SELECT status FROM cards WHERE card_no = ?", (ANNA,)) == "active"


@BOTH
def test_block_goes_through_the_registry_and_is_audited_under_the_user(console):
    o, db, app = console
    c = client(app)
    sign_in(c, "olle")
    assert "Block card" in c.get("/cards/%s/block" % ANNA).text  # the confirmation page
    t = csrf_of(c)
    r = c.post("/cards/%s/block" % ANNA, data={"csrf": t, "reason": "stolen"})
    assert r.status_code == 400 and "confirmation" in r.text  # no tick, no change
    r = c.post("/cards/%s/block" % ANNA, data={"csrf": t, "reason": "stolen", "confirm": "yes"})
    assert r.status_code == 200 and "blocked (active -&gt; blocked)" in r.text
    assert "PENDING" in r.text and "gate-01" in r.text  # the change's status page
    o.ok("cards", "show", ANNA)
    assert "blocked" in o.out and "web:olle: block active -> blocked (stolen)" in o.out
    assert o("status", ANNA) == 5  # pending at gate-01: the same version the CLI follows
    assert "PENDING  gate-01" in o.out  # the same allowlist version the CLI follows
    # a refusal of the card rules, worded as the CLI words it
    r = c.post("/cards/%s/block" % ANNA, data={"csrf": t, "reason": "again", "confirm": "yes"})
    rc = o("cards", "block", ANNA)
    assert rc == 3 and r.status_code == 409
    assert o.err.strip() in r.text.replace("&#39;", "'")


def test_roles_and_site_limits(console):
    o, db, app = console
    v = client(app)
    sign_in(v, "vera")
    assert v.get("/cards/%s/block" % ANNA).status_code == 403  # a viewer changes nothing
    assert v.post("/readers/gate-01/command", data={"csrf": csrf_of(v), "command": "open"}
                  ).status_code == 403
    a = client(app)
    sign_in(a, "amir")  # operator limited to site-a
    listing = a.get("/cards").text
    assert ANNA in listing and CARL not in listing
    assert a.get("/cards/%s" % CARL).status_code == 404
    assert a.get("/readers").text.count("gate-02") == 0
    r = a.get("/cards/%s/block" % BO)  # also on site-b: not his to change
    assert r.status_code == 403 and "site-b" in r.text
    assert a.get("/admin/users").status_code == 403


@BOTH
def test_card_search_by_number_uid_holder_employer_and_pages(console):
    o, db, app = console
    c = client(app)
    sign_in(c, "vera")
    for q, want, not_want in ((ANNA, ANNA, BO), ("AB-2403", BO, CARL), ("00a1b2", BO, ANNA),
                              ("carl", CARL, ANNA), ("berg bygg", CARL, None)):
        page = c.get("/cards", params={"q": q}).text
        assert want in page, q
        if not_want:
            assert not_want not in page, q
    rows = o.ok("cards", "list")
    assert "3 card(s)" in rows


def test_import_preview_names_bad_lines_and_applies(console, tmp_path):
    o, db, app = console
    c = client(app)
    sign_in(c, "olle")
    bad = ("card_number,uid,holder_name,status,sites\n"
           "AB-2405-000201,04aa0000000001,Ny Person,active,site-a\n"
           "AB-2405-00020X,04aa0000000002,Fel Nummer,active,site-a\n")
    r = c.post("/import", data={"csrf": csrf_of(c, "/import")},
               files={"file": ("cards.csv", bad.encode(), "text/csv")})
    assert "line 3:" in r.text and "nothing was applied" in r.text
    assert db.scalar("SELECT COUNT(*) FROM cards") == 3
    good = bad.splitlines()[0] + "\n" + bad.splitlines()[1] + "\n"
    r = c.post("/import", data={"csrf": csrf_of(c, "/import")},
               files={"file": ("cards.csv", good.encode(), "text/csv")})
    assert "Dry run" in r.text and "AB-2405-000201" in r.text
    assert db.scalar("SELECT COUNT(*) FROM cards") == 3  # a preview changes nothing
    token = re.search(r'name="token" value="([^"]+)"', r.text).group(1)
    r = c.post("/import", data={"csrf": csrf_of(c, "/import"), "token": token, "apply": "yes"})
    assert "applied" in r.text
    assert db.scalar("SELECT status FROM cards WHERE card_no = 'AB-2405-000201'") == "active"


def _event(seq: int, kind: int, result: int, reason: int, uid: bytes, at: dt.datetime) -> bytes:
    t = int((at - ledger.from_reader_seconds(0)).total_seconds())
    return E.pack(seq, kind, result, reason, uid, len(uid), t, E.F_CLOCK_SET)


def test_ledger_day_on_site_now_and_exports(console):
    o, db, app = console
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=5)
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    backdate(db, ledger.iso(at - dt.timedelta(days=1)))  # readers and cards older than the passage
    ledger.ingest(db, "gate-01", "site-a", [(1, _event(1, E.K_DECISION, E.R_GRANT, E.OK, uid, at))])
    c = client(app)
    sign_in(c, "vera")
    page = c.get("/ledger", params={"site": "site-a"}).text
    assert "On site now: 1" in page and "Anna Berg" in page and "PL1234-5678" in page
    from zoneinfo import ZoneInfo
    day = at.astimezone(ZoneInfo("Europe/Stockholm")).date().isoformat()  # the site's day
    csv_ = c.get("/ledger/export.csv", params={"site": "site-a", "day": day})
    assert csv_.headers["content-type"].startswith("text/csv")
    assert "Anna Berg" in csv_.text and "PL1234-5678" in csv_.text
    pdf = c.get("/ledger/export.pdf", params={"site": "site-a", "day": day})
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF-")
    o.ok("audit")
    assert "ledger exported" in o.out and "web:vera" in o.out


def test_a_flagged_passage_shows_its_reason_on_the_ledger_page_and_in_the_export(console):
    # a grant for a card blocked before the passage (a stale allowlist, or a forged event):
    # entered, on site, and flagged with why, on the page and in the CSV
    o, db, app = console
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=5)
    o.ok("cards", "block", ANNA)
    backdate(db, ledger.iso(at - dt.timedelta(days=1)))
    ledger.ingest(db, "gate-01", "site-a", [(1, _event(1, E.K_DECISION, E.R_GRANT, E.OK,
                                                        bytes.fromhex("04a1b2c3d4e5f6"), at))])
    c = client(app)
    sign_in(c, "vera")
    page = c.get("/ledger", params={"site": "site-a"}).text
    assert "On site now: 1" in page and "flagged: card blocked at that time" in page
    assert '<td class="flag">card blocked at that time</td>' in page
    from zoneinfo import ZoneInfo
    day = at.astimezone(ZoneInfo("Europe/Stockholm")).date().isoformat()
    csv_ = c.get("/ledger/export.csv", params={"site": "site-a", "day": day}).text
    assert "card blocked at that time" in csv_ and "flagged" in csv_.splitlines()[0]


def test_on_site_now_is_the_same_whichever_day_the_page_shows(console):
    # a shift begun 10 hours ago (maybe yesterday) and still open: on site now on today's page,
    # on yesterday's and on a day a week ago, as the ledger's own 'on site' query says
    o, db, app = console
    t = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    backdate(db, ledger.iso(t - dt.timedelta(days=2)))  # readers and cards older than the shift
    ledger.ingest(db, "gate-01", "site-a", [(1, _event(1, E.K_DECISION, E.R_GRANT, E.OK, uid,
                                                        t - dt.timedelta(hours=10)))])
    c = client(app)
    sign_in(c, "vera")
    from zoneinfo import ZoneInfo
    today = t.astimezone(ZoneInfo("Europe/Stockholm")).date()
    for day in (today, today - dt.timedelta(days=1), today - dt.timedelta(days=7)):
        page = c.get("/ledger", params={"site": "site-a", "day": day.isoformat()}).text
        assert "On site now: 1" in page, day


@BOTH
def test_duress_alarm_reaches_a_signed_webhook_with_retries_and_is_acknowledged(console,
                                                                                  monkeypatch):
    o, db, app = console
    rx = Receiver(fail=1)
    try:
        monkeypatch.setenv("HOOK_SECRET", "s3cret-for-the-hook-1234")
        o.ok("alarms", "sink-add", "webhook", rx.url, "--secret-env", "HOOK_SECRET")
        alarms.scan(db)  # the first scan sets the cursor
        at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        ledger.ingest(db, "gate-02", "site-b",
                      [(7, _event(7, E.K_ALARM, E.R_GRANT, E.DURESS, bytes.fromhex("00a1b2c3"), at))])
        new = alarms.scan(db)
        assert len(new) == 1 and alarms.scan(db) == []  # raised once
        assert alarms.deliver(db) == 0  # the receiver refuses the first try ...
        db.execute("UPDATE alarm_deliveries SET next_at = ?", ("2000-01-01T00:00:00Z",))
        assert alarms.deliver(db) == 1  # ... and the retry gets through
        headers, body, _ = rx.got[0]
        sig = hmac.new(b"s3cret-for-the-hook-1234", body, hashlib.sha256).hexdigest()
        assert headers["X-Grindvakt-Signature"] == "sha256=" + sig
        msg = json.loads(body)
        assert msg["kind"] == "duress" and msg["reader"] == "gate-02" and BO in msg["message"]
        c = client(app)
        sign_in(c, "olle")
        page = c.get("/cards").text  # the banner is on every page
        assert "alarm-banner" in page and "DURESS" in page
        assert "DURESS" in c.get("/fragments/banner").text
        a = client(app)
        sign_in(a, "amir")  # limited to site-a: not his alarm
        assert "DURESS" not in a.get("/cards").text
        r = c.post("/alarms/%d/ack" % new[0], data={"csrf": csrf_of(c), "note": "guard sent"})
        assert r.status_code == 200
        assert "alarm-banner" not in c.get("/cards").text
        o.ok("audit")
        assert "alarm acknowledged" in o.out and "web:olle" in o.out and "guard sent" in o.out
        o.ok("alarms", "list")
        assert "webhook:done" in o.out
    finally:
        rx.close()


def test_condition_alarms_raise_once_and_clear(console):
    o, db, app = console
    db.execute("UPDATE readers SET online = 0, last_seen = ?, health = ? WHERE id = 'gate-01'",
               ("2026-01-01T00:00:00Z", json.dumps({"free_heap": 4000})))
    o.ok("cards", "block", ANNA)
    db.execute("UPDATE changes SET at = '2026-01-01T00:00:00Z'")  # the block is long pending
    kinds = sorted(alarms.get(db, a)["kind"] for a in alarms.scan(db, lag_limit_s=60))
    assert kinds == ["lagging", "memory", "offline"]
    assert alarms.scan(db, lag_limit_s=60) == []
    db.execute("UPDATE readers SET online = 1, health = '{}', applied_version = 99")
    alarms.scan(db, lag_limit_s=60)
    assert db.scalar("SELECT COUNT(*) FROM alarms WHERE cleared_at IS NULL") == 0


def test_readers_page_and_remote_command(console):
    o, db, app = console
    c = client(app)
    sign_in(c, "olle")
    page = c.get("/readers").text
    assert "gate-01" in page and 'data-poll="/fragments/readers' in page
    assert "gate-02" in c.get("/fragments/readers").text
    r = c.post("/readers/gate-01/command", data={"csrf": csrf_of(c), "command": "clear-lockout"})
    assert r.status_code == 200 and "queued" in r.text
    o.ok("readers", "commands", "gate-01")
    assert "clear-lockout" in o.out and "web:olle" in o.out


@BOTH
def test_name_search_is_indexed_and_follows_every_name_change(console):
    o, db, app = console
    from host_sync.registry import Registry
    reg = Registry(db)
    found = lambda q: [c["card_no"] for c in reg.search_cards(q)]  # noqa: E731
    assert found("anna berg") == [ANNA] and found("ber") == [ANNA, BO, CARL]  # word beginnings (employer Berg Bygg AB)
    assert found("erg") == []  # not the middle of a word: that would need a scan of every card
    # a name changed by any code path (here plain SQL): the trigger marks it for re-indexing
    db.execute("UPDATE cards SET holder = 'Anna Öberg-Lind' WHERE card_no = ?", (ANNA,))
    assert found("öberg") == [ANNA] and found("lind anna") == [ANNA]
    assert found("anna ek") == [] and found("bo ek") == [BO]
    assert db.scalar("SELECT COUNT(*) FROM card_terms_dirty") == 0


def test_repeated_lockouts_at_one_gate_raise_one_alarm(console):
    o, db, app = console
    alarms.scan(db)
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    uid = bytes.fromhex("00a1b2c3")
    batch = [(i, _event(i, E.K_LOCKOUT, E.R_INFO, E.LOCKED_CARD, uid,
                        at - dt.timedelta(minutes=5 - i))) for i in range(1, 3)]
    ledger.ingest(db, "gate-01", "site-a", batch)
    assert alarms.scan(db) == []  # two lockouts: not yet
    ledger.ingest(db, "gate-01", "site-a",
                  [(i, _event(i, E.K_LOCKOUT, E.R_INFO, E.LOCKED_READER, b"", at)) for i in (3, 4)])
    new = alarms.scan(db)
    assert len(new) == 1 and alarms.get(db, new[0])["kind"] == "lockouts"
    assert "lockouts at gate-01" in alarms.get(db, new[0])["message"]


def test_admin_manages_accounts_in_the_console(console):
    o, db, app = console
    o.ok("users", "add", "root-admin", "--role", "admin", "--password-stdin", stdin=PW + "\n")
    c = client(app)
    sign_in(c, "root-admin")
    t = csrf_of(c, "/admin/users")
    r = c.post("/admin/users", data={"csrf": t, "action": "add", "username": "nils",
                                     "password": "short", "role": "viewer"})
    assert "refused: a password needs at least 10 characters" in r.text
    c.post("/admin/users", data={"csrf": t, "action": "add", "username": "nils",
                                 "password": PW, "role": "viewer", "sites": "site-b"})
    c.post("/admin/users", data={"csrf": t, "action": "disable", "username": "vera"})
    o.ok("users", "list")
    assert re.search(r"nils +viewer +site-b +active", o.out)
    assert re.search(r"vera +viewer +all +disabled", o.out)
    assert sign_in(client(app), "vera").status_code == 401  # a disabled account signs in no more
    o.ok("audit")
    assert "web:root-admin  user added" in o.out or "user added" in o.out


def test_events_page_filters_and_pages(console):
    o, db, app = console
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    evs = [(i, _event(i, E.K_DECISION, E.R_GRANT if i % 3 else E.R_REFUSE,
                      E.OK if i % 3 else E.BLOCKED, uid, at + dt.timedelta(seconds=i)))
           for i in range(1, 61)]
    evs.append((61, _event(61, E.K_ALARM, E.R_GRANT, E.DURESS, uid, at + dt.timedelta(seconds=61))))
    ledger.ingest(db, "gate-01", "site-a", evs)
    c = client(app)
    sign_in(c, "vera")
    page = c.get("/events", params={"site": "site-a"}).text
    assert page.count("<tr class=") == 50 and "older" in page  # 50 a page
    older = re.search(r'href="\?([^"]*before=[^"]+)"', page).group(1).replace("&amp;", "&")
    assert c.get("/events?" + older).text.count("<tr class=") == 11
    refusals = c.get("/events", params={"what": "refusals"}).text
    assert refusals.count("<tr class=") == 20 and "blocked" in refusals
    alarm = c.get("/events", params={"what": "alarms", "card": ANNA}).text
    assert alarm.count("<tr class=") == 1 and "duress PIN" in alarm
    a = client(app)
    sign_in(a, "amir")
    assert c.get("/events", params={"site": "site-b"}).text.count("<tr class=") == 0
    assert a.get("/events", params={"site": "site-b"}).status_code == 403  # not his site


def test_a_site_limited_operator_cannot_import_changes_to_other_sites(console):
    o, db, app = console
    a = client(app)
    sign_in(a, "amir")  # operator of site-a only
    csv_ = "card_number,uid,status\n%s,04c0ffee112233,terminated\n" % CARL  # Carl is on site-b
    r = a.post("/import", data={"csrf": csrf_of(a, "/import")},
               files={"file": ("cards.csv", csv_.encode(), "text/csv")})
    assert "touches sites outside your account" in r.text and 'name="token"' not in r.text


def test_import_reads_excels_csv_and_other_headers_as_the_cli_does(console):
    # A Swedish export saved by Excel as "CSV": Windows-1252, its own headers. Read as UTF-8 it
    # is refused with the way out; with the encoding and the column names it previews and
    # applies with the names intact.
    o, db, app = console
    c = client(app)
    sign_in(c, "olle")
    raw = ("Kortnummer;UID;Namn;Status;Arbetsplats;Anteckning\n"
           "AB-2405-000301;04aa0000000301;Åsa Öberg;active;site-a;x\n").replace(";", ",")
    raw = raw.encode("cp1252")
    r = c.post("/import", data={"csrf": csrf_of(c, "/import")},
               files={"file": ("export.csv", raw, "text/csv")})
    err = r.text.split('id="import-errors"')[1].split("</div>")[0]
    assert "is not UTF-8" in err and "choose Windows-1252 under Encoding" in err, r.text
    assert "--encoding" not in err and "line 2" in err
    r = c.post("/import", data={"csrf": csrf_of(c, "/import"), "encoding": "cp1252",
                                "map": "Kortnummer=card_number, Namn=holder_name"},
               files={"file": ("export.csv", raw, "text/csv")})
    # headers still unknown: named, with this form's way to map them (not the CLI's --map)
    assert "Dry run" not in r.text and "unknown column(s) arbetsplats, anteckning" in r.text, r.text
    err = r.text.split('id="import-errors"')[1].split("</div>")[0]
    assert "name them under Column names" in err and "--map" not in err, err
    mapping = ("Kortnummer=card_number, UID=uid, Namn=holder_name, Status=status, "
               "Arbetsplats=sites, Anteckning=-")
    r = c.post("/import", data={"csrf": csrf_of(c, "/import"), "encoding": "bogus", "map": mapping},
               files={"file": ("export.csv", raw, "text/csv")})
    assert "unknown encoding" in r.text
    r = c.post("/import", data={"csrf": csrf_of(c, "/import"), "encoding": "cp1252",
                                "map": "Kortnummer=kortnr"},
               files={"file": ("export.csv", raw, "text/csv")})
    assert "column names" in r.text and "kortnr is not a column" in r.text, r.text
    r = c.post("/import", data={"csrf": csrf_of(c, "/import"), "encoding": "cp1252", "map": mapping},
               files={"file": ("export.csv", raw, "text/csv")})
    assert "Dry run" in r.text and "AB-2405-000301" in r.text, r.text
    token = re.search(r'name="token" value="([^"]+)"', r.text).group(1)
    r = c.post("/import", data={"csrf": csrf_of(c, "/import"), "token": token, "apply": "yes"})
    assert "applied" in r.text
    assert db.scalar("SELECT holder FROM cards WHERE card_no = 'AB-2405-000301'") == "Åsa Öberg"
    assert 'id="encoding"' in c.get("/import").text


def test_an_import_for_a_site_that_is_not_there_is_said_on_the_form(console):
    # importer.plan says "not found" (CLI exit 4) for an unknown site: the form shows it, no 404
    o, db, app = console
    c = client(app)
    sign_in(c, "olle")
    csv_ = "card_number,uid,status\nAB-2405-000401,04aa0000000401,active\n"
    r = c.post("/import", data={"csrf": csrf_of(c, "/import"), "site": "site-zz"},
               files={"file": ("cards.csv", csv_.encode(), "text/csv")})
    assert r.status_code == 200, r.text
    err = r.text.split('id="import-errors"')[1].split("</div>")[0]
    assert "no site &#39;site-zz&#39;" in err or "no site 'site-zz'" in err, err
    assert 'name="token"' not in r.text
    assert db.scalar("SELECT COUNT(*) FROM cards WHERE card_no = 'AB-2405-000401'") == 0


def test_accounts_for_a_site_that_is_not_there_are_not_found_and_not_made(console):
    o, db, app = console
    assert o("users", "add", "nils", "--role", "viewer", "--sites", "site-zz",
             "--password-stdin", stdin=PW + "\n") == 4
    assert "not found: no site 'site-zz'" in o.err, o.err
    assert db.scalar("SELECT COUNT(*) FROM users WHERE username = 'nils'") == 0
    # a role limited to a site that is not there was set (exit 0)
    assert o("users", "role", "amir", "--role", "operator", "--sites", "site-zz") == 4
    assert "not found: no site 'site-zz'" in o.err, o.err
    assert db.scalar("SELECT sites FROM users WHERE username = 'amir'") == "site-a"


def test_a_ledger_day_that_is_no_day_is_refused_not_shown_as_today(console):
    o, db, app = console
    c = client(app)
    sign_in(c, "vera")
    for bad, why in (("2026-12-32", "day is out of range for month"), ("yesterday", "YYYY-MM-DD")):
        for path in ("/ledger", "/ledger/export.csv"):
            r = c.get(path, params={"site": "site-a", "day": bad})
            assert r.status_code == 400, (path, bad, r.status_code)
            assert "refused: day" in r.text and why in r.text, r.text
    assert c.get("/ledger", params={"site": "site-a", "day": "2026-11-30"}).status_code == 200
