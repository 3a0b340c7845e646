"""The virtual board as a frozen-firmware board: the reader's bytecode runs in place from a ROMFS
image of exactly what `make firmware` freezes (vfs.VfsRom), the flash holds only board.json and
the config, and the reader syncs its allowlist and decides cards."""
from pathlib import Path

from tools import firmware
from tools.site import ReaderSpec, SiteSpec, VirtualSite, present

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "tools" / "demo_data" / "cards.csv"
ANNA, CARL = "04a1b2c3d4e5f6", "04c0ffee112233"  # active; never activated


def test_a_reader_booted_from_romfs_syncs_and_decides_cards(tmp_path):
    with VirtualSite(tmp_path / "site", [SiteSpec("site-a", "Kvarteret Bavern", "BY-2026-000101"),
                                         SiteSpec("site-b", "Hamnen etapp 2", "BY-2026-000202")],
                     [ReaderSpec("gate-01", "site-a")], romfs=True) as site:
        site.start(CARDS)
        site.wait_converged(120)
        vb = site.readers["gate-01"].board
        assert present(vb, ANNA)["granted"]
        assert not present(vb, CARL)["granted"]
        heap = vb.heap()
        fw = {r["id"]: r["firmware"] for r in site.readers_json()}
        out = vb.mpremote("exec", "import os, sys, gv.app, gv_build\n"
                                  "print(sorted(os.listdir('/')), gv.app.__file__, gv_build.ID)")
    assert out.returncode == 0, out.stdout + out.stderr
    bid = firmware.build_id(firmware.def_dir("esp32"))
    # nothing of the reader's code on LittleFS: it came from the image, with the firmware's build id
    # and its HELLO says so: the operators see which build each gate runs
    assert fw["gate-01"] == "grindvakt-0.1.0+" + bid[:12], fw
    assert f"/rom/gv/app.mpy {bid}" in out.stdout and "'gv'" not in out.stdout and "main.py" not in out.stdout
    assert "'board.json'" in out.stdout and "'config.json'" in out.stdout
    assert heap["rom_bytes"] > 50_000 and 0 < heap["alloc"] < heap["total"]
