"""The console's reader page shows the same health as `readers show`: problems first, every figure
with when it was reported, the memory by stage (not the raw JSON the registry keeps)."""
from __future__ import annotations

import host_sync  # noqa: F401
from gv.sync import protocol as P
from host_sync.store import RegistryData
from tests.test_host_health import health
from tests.test_web_console import cheap_hashes, client, console, sign_in  # noqa: F401


def test_reader_page_shows_problems_figures_and_memory(console):  # noqa: F811
    o, db, app = console
    data = RegistryData(db)
    data.reader_hello("gate-01", P.parse_hello(P.hello_body(3, 0, 0, 8192, 60_000,
                                                            P.H_FULL, 0, "grindvakt-0.1")))
    data.reader_health("gate-01", P.parse_health(health(
        P.H_FULL, need=212_992, free=8192,
        mem=[(P.M_TLS, 30_000, 20_000, 41_000, 12_000)])))
    c = client(app)
    sign_in(c, "olle")
    page = c.get("/readers/gate-01").text
    assert "NEEDS ATTENTION: flash full: an update needs 208 KB, 8 KB free" in page
    assert "need_flash=212992" in page and "s ago" in page
    assert "Memory at tls" in page and "ESP-IDF 41000 B free, largest block 12000 B" in page
    assert "&#39;at&#39;" not in page and "{&#39;" not in page  # no raw dicts
