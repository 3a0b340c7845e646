"""`cards import` of exports as operators have them: other (Swedish) headers through a column
mapping, a Latin-1 file told to be saved as UTF-8 (or read with --encoding), refused rows giving
exit 7, and every imported change in the card's own history."""
from __future__ import annotations

import json

import pytest

from tests.host_kit import Operator, database, org_for, pnr_for

SV_HEADER = "Kortnummer;Kort-UID;Namn;Personnummer;Arbetsgivare;Org.nr;Status;Giltig till;Telefon\n"
MAP = ["Kortnummer=card_number,Kort-UID=uid,Namn=holder_name", "Personnummer=personal_identity_number",
       "Arbetsgivare=employer", "Org.nr=employer_org_no", "Status=status", "Giltig till=valid_until",
       "Telefon=-"]


def sv_row(i, name="Åsa Öberg", status="active"):
    return "BB-2403-%06d;04%012x;%s;%s;Bygg & Rör AB;%s;%s;2030-12-31;070-1234567\n" % (
        i, i, name, pnr_for(i), org_for(1), status)


@pytest.fixture(params=["sqlite", "postgresql"])
def op(request, tmp_path):
    with database(request.param, tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--tax-id", "PL1")
        yield o


def _map():
    return [x for m in MAP for x in ("--map", m)]


def test_swedish_headers_through_a_mapping(op, tmp_path):
    f = tmp_path / "export.csv"
    f.write_text(SV_HEADER + sv_row(1) + sv_row(2, "Jörgen Ek"), encoding="utf-8")
    assert op("cards", "import", str(f), "--site", "site-a") == 3
    assert "unknown column(s) kortnummer" in op.err and "--map HEADER=COLUMN" in op.err
    op.ok("cards", "import", str(f), "--site", "site-a", "--apply", *_map())
    c = json.loads(op.ok("cards", "show", "BB-2403-000001", "--json"))
    assert (c["holder"], c["employer"], c["status"], c["valid_until"], c["sites"]) == \
        ("Åsa Öberg", "Bygg & Rör AB", "active", "2030-12-31", ["site-a"])
    assert "070-1234567" not in json.dumps(c)  # the ignored column
    for bad, why in ((["--map", "Kortnummer"], "use HEADER=COLUMN"),
                     (["--map", "Kortnummer=kortnr"], "kortnr is not a column"),
                     (["--map", "Fax=-"], "the file does not have"),
                     (_map() + ["--map", "Namn=employer"], "given twice")):
        assert op("cards", "import", str(f), *bad) == 3 and why in op.err, (bad, op.err)


def test_latin1_file_is_told_to_be_saved_as_utf8(op, tmp_path):
    f = tmp_path / "excel.csv"
    f.write_bytes((SV_HEADER + sv_row(1) + sv_row(2, "Jörgen Ek")).encode("cp1252"))
    assert op("cards", "import", str(f), *_map()) == 3
    assert "is not UTF-8 (line 2:" in op.err and "Åsa Öberg" in op.err
    assert 'save it as "CSV UTF-8"' in op.err and "--encoding latin-1" in op.err
    assert json.loads(op.ok("cards", "list", "--json")) == []
    op.ok("cards", "import", str(f), *_map(), "--encoding", "cp1252", "--apply")
    assert json.loads(op.ok("cards", "show", "BB-2403-000002", "--json"))["holder"] == "Jörgen Ek"
    assert op("cards", "import", str(f), "--encoding", "klingon") == 3 and "unknown encoding" in op.err


def test_refused_rows_exit_7_and_imports_are_in_each_cards_history(op, tmp_path):
    f = tmp_path / "export.csv"
    f.write_text("card_number,uid,card_type,holder_name,status,sites\n"
                 "BB-2403-000001,04000000000001,standard,Anna,active,site-a\n"
                 "BB-2403-000002,,visitor,Guest,active,site-a\n")
    assert op("cards", "import", str(f), "--apply") == 7
    assert "line 3: card BB-2403-000002 refused" in op.err and "exit 7" in op.out
    assert len(json.loads(op.ok("cards", "list", "--json"))) == 1
    f.write_text("card_number,uid,holder_name,status,valid_until\n"
                 "BB-2403-000001,04000000000001,Anna Berg,blocked,2029-01-31\n")
    op.ok("cards", "import", str(f), "--apply")
    hist = op.ok("cards", "show", "BB-2403-000001")
    assert "card imported from export.csv: uid=04000000000001 status=active sites=site-a" in hist
    assert "status imported from export.csv: active -> blocked" in hist
    assert "details imported from export.csv: holder -> Anna Berg, valid_until -> 2029-01-31" in hist
