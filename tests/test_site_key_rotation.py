"""Rotating a site's card and PIN keys (issue 16 item 1), end to end: the registry and the broker
config written by the CLI, a real mosquitto started from that config, `host-sync serve` and two
firmware readers (unix port, TLS). `sites rotate-keys` republishes the site under a new card key;
each reader gets the keys (SITEKEY), keeps deciding with the old keys and the old store until the
new-key rebuild is in, then switches both; `status` shows the progress and the old keys leave the
registry only when every reader has applied the new generation. A power cut just after a reader
stored the new keys boots it fully old (the old keys still decide its old store), and it finishes
the rotation when the host is back."""
from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys

import host_sync  # noqa: F401
from gv.allowlist import record as R
from host_sync import sitekeys
from host_sync.db import Db
from host_sync.registry import Registry
from host_sync.broker import make_test_ca
from tests.broker import _listening, free_port, mosquitto_bin
from tests.sync_support import ReaderProc
from tests.test_host_revoke import _wait
from tests.test_host_serve import UIDS, _setup, _stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reg(url):
    return Registry(Db(url))


def _card(r: ReaderProc, uid: bytes):
    """The record the reader's gate finds for this UID with the keys it has in effect."""
    r.ctl("card " + uid.hex())
    import queue
    import time
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            line = r.q.get(timeout=0.2)
        except queue.Empty:
            continue
        if line.startswith("LOOKUP " + uid.hex()):
            v = line.split()[2]
            return None if v == "-" else bytes.fromhex(v)
    raise AssertionError("no LOOKUP answer")


def _decides(r: ReaderProc) -> tuple:
    """(status of the active card, of the blocked one, of a card not on the site)."""
    out = []
    for uid in (UIDS[0], UIDS[1], bytes.fromhex("04ffffffffffff")):
        rec = _card(r, uid)
        out.append(None if rec is None else R.status(rec))
    return tuple(out)


def test_rotate_site_keys_rebuilds_every_reader_and_drops_the_old_keys(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "gv.sqlite3")
    op = _setup(url)
    op.ok("cards", "block", "BB-2401-000002")
    tls = make_test_ca(tmp_path / "tls")
    port, host_port = free_port(), free_port()
    bdir = tmp_path / "broker"
    op.ok("broker", "config", "--out", str(bdir), "--port", str(port), "--plain-port",
          str(host_port), "--cafile", tls.cafile, "--certfile", tls.certfile, "--keyfile",
          tls.keyfile)
    op("readers", "revoke", "gate-03", "--reason", "spare, never installed")  # not counted
    conf = bdir / "mosquitto.conf"
    if os.geteuid() == 0:
        conf.write_text(conf.read_text() + "user %s\n" % getpass.getuser())
    mosq = subprocess.Popen([mosquitto_bin(), "-c", str(conf)],
                            stdout=open(tmp_path / "mosquitto.log", "wb"), stderr=subprocess.STDOUT)
    serve_log = tmp_path / "serve.log"

    def serve():
        return subprocess.Popen([sys.executable, "-m", "host_sync", "--db", url, "serve",
                                 "--broker-port", str(host_port), "--instance", "one", "--poll",
                                 "0.05"], cwd=ROOT, stdout=open(serve_log, "a"),
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ROOT))

    srv = serve()
    cfgs = {}
    for rid in ("gate-01", "gate-02"):
        f = tmp_path / (rid + ".json")
        op.ok("readers", "config", rid, "--config-out", str(f), "--broker-host", "127.0.0.1",
              "--broker-port", str(port), "--ca", tls.cafile, "--virtual")
        cfgs[rid] = json.loads(f.read_text())
    images = {rid: str(tmp_path / (rid + ".img")) for rid in cfgs}
    procs: list[ReaderProc] = []

    def boot(rid, **kw):
        p = ReaderProc(tmp_path / rid, cfgs[rid], heapsize="512k", image=images[rid], **kw)
        procs.append(p)
        return p

    try:
        _wait(lambda: _listening(port) and _listening(host_port), what="broker")
        _wait(lambda: "host sync connected" in serve_log.read_text(), 20, "serve")
        old_card, old_pin = _reg(url).site_keys("site-a")
        head = _reg(url).current_version("site-a")
        r1, r2 = boot("gate-01"), boot("gate-02")
        for r in (r1, r2):
            r.wait(lambda s: s["version"] == head, timeout=60, what="first rebuild")
            assert _decides(r) == (R.ACTIVE, R.BLOCKED, None)
        r2.ctl("quit")  # gate-02 is switched off for a while
        r2.proc.wait(10)

        # a PIN key rotation clears PINs: refused, nothing changed, unless --yes
        assert op("sites", "rotate-keys", "site-a", "--pin") == 3
        assert "NOT ROTATED" in op.out and "--yes" in op.out
        assert _reg(url).site_keys("site-a") == (old_card, old_pin)
        assert _reg(url).current_version("site-a") == head

        op.ok("sites", "rotate-keys", "site-a")
        reg = _reg(url)
        new_card, new_pin = reg.site_keys("site-a")
        assert new_card != old_card and new_pin == old_pin  # the card key only, PINs kept
        rot = sitekeys.get(reg, "site-a")
        assert rot["old"] == [old_card.hex(), old_pin.hex()] and rot["from"] == head + 1
        head2 = reg.current_version("site-a")

        # gate-01 gets the keys and the rebuild, and decides as before under the new keys
        s = r1.wait(lambda s: s["sitekeys_switched"] == 1 and s["version"] == head2, timeout=60,
                    what="gate-01 on the new keys")
        assert not s["sitekey_pending"]
        assert _decides(r1) == (R.ACTIVE, R.BLOCKED, None)
        disk = json.loads((tmp_path / "gate-01" / "config.json").read_text())
        assert disk["site_keys"]["card"] == new_card.hex()
        _wait(lambda: sitekeys.progress(_reg(url), "site-a") == (1, 2), 20, "gate-01's ACK")
        op.ok("status")
        assert "key rotation to generation 2: 1 of 2 reader(s) on the new keys" in op.out
        assert sitekeys.get(_reg(url), "site-a") is not None  # gate-02 still has the old keys

        # gate-02 comes back: the power fails just after it stored the new keys
        os.environ["GV_SYNC_CUT"] = "sitekey"
        try:
            r2 = boot("gate-02")
        finally:
            del os.environ["GV_SYNC_CUT"]
        _wait(lambda: r2.proc.poll() is not None, 60, "gate-02's power cut")
        assert any("CUT after sitekey" in x for x in r2.lines), r2.lines[-20:]
        _stop(srv)  # and the host is away when it boots again
        r2 = boot("gate-02")
        s = r2.wait(lambda s: s["connected"], timeout=40, what="gate-02 reconnected")
        assert s["sitekey_pending"] and s["version"] == head and s["sitekeys_switched"] == 0
        assert _decides(r2) == (R.ACTIVE, R.BLOCKED, None)  # fully old: old keys, old store
        disk = json.loads((tmp_path / "gate-02" / "config.json").read_text())
        assert disk["site_keys"]["card"] == old_card.hex()

        srv = serve()
        s = r2.wait(lambda s: s["sitekeys_switched"] == 1 and s["version"] == head2, timeout=60,
                    what="gate-02 on the new keys")
        assert _decides(r2) == (R.ACTIVE, R.BLOCKED, None)
        _wait(lambda: sitekeys.get(_reg(url), "site-a") is None, 20, "old keys dropped")
        op.ok("audit", "--subject", "site-a")
        assert "site keys rotated" in op.out and "old site keys dropped" in op.out
        op.ok("status")
        assert "key rotation" not in op.out
        # and a block made now reaches both under the new keys
        op.ok("cards", "block", "BB-2401-000001")
        for r in (r1, r2):
            _wait(lambda: (lambda rec: rec and R.status(rec) == R.BLOCKED)(_card(r, UIDS[0])),
                  30, "a block after the rotation")
    finally:
        for x in procs:
            x.close()
        _stop(srv)
        mosq.terminate()
        mosq.wait(5)
