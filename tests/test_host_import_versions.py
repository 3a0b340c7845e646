"""How many allowlist versions an import makes (issue 18.6): every change of a site in one import
is one change, split only where a DELTA message demands it (at most 100 records a version, so a
reader applies each from one message instead of rebuilding). 600 new cards: 6 versions, not more;
new cards, blocks and cards added to the site in one import share them."""
from __future__ import annotations

import host_sync  # noqa: F401
from host_sync.db import Db
from host_sync.registry import VERSION_MAX_RECORDS, Registry
from host_sync.wire import delta_bodies
from tests.host_kit import Operator
from tests.test_host_import import HEADER, row


def _changes(url: str, site: str) -> list[dict]:
    db = Db(url)
    try:
        reg = Registry(db)
        return sorted(reg.changes(site, limit=1000), key=lambda c: c["version"])
    finally:
        db.close()


def test_an_import_is_one_change_per_site_in_the_fewest_versions_a_delta_allows(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    op = Operator(url)
    op.ok("sites", "add", "site-a", "--tax-id", "PL1")
    op.ok("sites", "add", "site-b", "--tax-id", "PL2")
    f = tmp_path / "export.csv"
    f.write_text(HEADER + "".join(row(i, sites="site-a|site-b" if i <= 30 else "site-a")
                                  for i in range(1, 601)))
    out = op.ok("cards", "import", str(f), "--apply")
    a, b = _changes(url, "site-a"), _changes(url, "site-b")
    assert [c["version"] for c in a] == [1, 2, 3, 4, 5, 6]  # 600 records / 100
    assert [c["version"] for c in b] == [1]  # 30 records
    assert {(c["action"], c["subject"]) for c in a + b} == {("cards imported", "import export.csv")}
    assert "site site-a: one change in 6 versions (1-6) of at most 100 cards each" in out
    assert "site-b: one change" not in out and "site site-b now at version 1" in out

    # every one of those versions reaches a reader as one DELTA (no rebuild)
    db = Db(url)
    try:
        reg = Registry(db)
        ch = [(v, bytes.fromhex(k) if isinstance(k, str) else k,
               bytes.fromhex(r) if isinstance(r, str) else r)
              for v, recs in reg.changes_since("site-a", 0) for k, r in recs]
    finally:
        db.close()
    per_version = [sum(1 for c in ch if c[0] == v) for v in range(1, 7)]
    assert per_version == [VERSION_MAX_RECORDS] * 6
    assert len(delta_bodies(6, 0, ch)) == 6

    # a second import: 50 new cards, 150 blocked, 20 cards added to site-b, all at once:
    # site-a gets 200 records in 2 versions (not one set for the new cards and one for the rest)
    text = HEADER + "".join(row(i, status="blocked" if i <= 150 else "active",
                                sites="site-a|site-b" if 31 <= i <= 50 else
                                ("site-a|site-b" if i <= 30 else "site-a"))
                            for i in range(1, 651))
    f.write_text(text)
    op.ok("cards", "import", str(f), "--apply")
    a = _changes(url, "site-a")
    assert [c["version"] for c in a][6:] == [7, 8], a[6:]
    assert {c["action"] for c in a[6:]} == {"block"}  # the blocks make the change a blocking one
    b = _changes(url, "site-b")
    assert [c["version"] for c in b] == [1, 2]  # 30 blocked + 20 added: 50 records, one version
