"""`make demo`: a gate day on a virtual site, narrated.

A local mosquitto (generated config, TLS, one account per reader), the host service on SQLite and
two virtual readers running the real firmware (gate-01 at site A; gate-02 at site B, which asks
every card for a PIN). A sample card list is imported, then: a held card opens the gate; cards
that are not activated, unpaid or terminated are refused; a waved card locks the reader, which
recovers; a PIN entry and a duress PIN; the operator blocks a card and the block-to-refusal time
is shown; a reader loses its network and keeps deciding, then its buffered events arrive; the
day's staff ledger is printed. The web console (`host-sync web`) runs beside it on a local port
with a demo account (address and sign-in printed). `--keep` leaves the site running for exploring
by hand.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tools.site import AckMonitor, ReaderSpec, SiteSpec, VirtualSite, decided, door_closed, present

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "tools" / "demo_data" / "cards.csv"
ANNA, ANNA_UID, ANNA_PIN = "AB-2403-000101", "04a1b2c3d4e5f6", "1234"
BO, BO_UID, BO_PIN = "AB-2403-000102", "00a1b2c3", "4711"  # a UID with a leading zero byte
CARL_UID, DANA_UID, ERIK_UID = "04c0ffee112233", "04d00d1e223344", "04ee0000556677"

_t0 = time.monotonic()


def say(text: str = "", indent: int = 0) -> None:
    stamp = f"[{time.monotonic() - _t0:6.1f}s] " if text else ""
    print(stamp + "  " * indent + text, flush=True)


def step(n: int, title: str) -> None:
    print(flush=True)
    say(f"== {n}. {title}")


def outcome(r: dict) -> str:
    return "GRANTED (relay pulsed)" if r["granted"] else "refused (red LED)"


def wait_pin_prompt(vb, timeout: float = 10) -> None:
    vb.wait_for(lambda e: e.get("dev") == "led" and e.get("color") == "green" and e.get("on"), timeout)


def pin_entry(vb, uid: str, keys: str, timeout: float = 15) -> dict:
    """Card held against the reader, the PIN typed on the pad; what the gate did."""
    door_closed(vb)
    vb.mark()
    vb.send(f"card {uid}")
    wait_pin_prompt(vb)
    vb.mark()
    vb.send(f"key {keys}")
    ev = vb.wait_for(decided, timeout)
    time.sleep(0.3)
    vb.send(f"leave {uid}")
    return {"granted": ev.get("dev") == "relay", "t": ev["t"]}


WEB_USER, WEB_PASSWORD = "demo", "demo-console-password"


def run(workdir: Path, keep: bool, web_port: int | None = None) -> int:
    # said first: the day takes minutes, and whoever started it should know how it ends
    if keep:
        say("--keep: after the gate day the site keeps running to explore by hand; "
            "Ctrl-C here stops everything, at any time")
    else:
        say("the gate day runs to its end by itself, then stops the site (Ctrl-C stops it sooner)")
    if workdir.exists():
        shutil.rmtree(workdir)
    site = VirtualSite(workdir,
                       [SiteSpec("site-a", "Kvarteret Bavern", "BY-2026-000101", "never"),
                        SiteSpec("site-b", "Hamnen etapp 2", "BY-2026-000202", "always")],
                       [ReaderSpec("gate-01", "site-a"), ReaderSpec("gate-02", "site-b")], say=say)
    monitor = None
    try:
        step(1, "Setting up the site: sites, readers, broker accounts, TLS")
        site.provision()
        say(f"work folder: {workdir}")
        say("host-sync cards import (dry run first):")
        dry = site.cli("cards", "import", str(CARDS))
        for line in dry.stdout.strip().splitlines()[:8]:
            say(line, 1)
        site.import_cards(CARDS)
        site.cli("cards", "set-pin", ANNA, "--pin-stdin", input=ANNA_PIN + "\n")
        site.cli("cards", "set-pin", BO, "--pin-stdin", input=BO_PIN + "\n")
        visitor = site.cli("cards", "add", "VB-2611-000001", "--visitor", "--holder", "Vera Besok", check=False)
        say("a visitor card: " + (visitor.stdout + visitor.stderr).strip().splitlines()[-1])
        say("starting mosquitto, host-sync serve and two virtual readers ...")
        site.start_broker()
        site.start_host()
        for rid in site.readers:
            site.start_reader(rid)
        web = site.start_web(WEB_USER, WEB_PASSWORD, port=web_port)
        say(f"the web console: {web}/  (sign in as {WEB_USER} / {WEB_PASSWORD})")
        secs = site.wait_converged(120)
        say(f"both readers received their allowlists in {secs:.1f}s:")
        for line in site.cli("readers", "list").stdout.strip().splitlines():
            say(line, 1)
        monitor = AckMonitor(site)
        g1 = site.readers["gate-01"].board
        g2 = site.readers["gate-02"].board

        step(2, "Anna holds her card steadily on gate-01")
        say("-> " + outcome(present(g1, ANNA_UID)), 1)
        time.sleep(3.5)
        for who, uid, why in (("Carl", CARL_UID, "never activated"), ("Dana", DANA_UID, "card fee unpaid"),
                              ("Erik", ERIK_UID, "terminated")):
            say(f"{who} ({why}) -> " + outcome(present(g1, uid)), 1)
            time.sleep(2)

        step(3, "Someone waves Anna's card past gate-01, three times")
        g1.mark()
        for _ in range(3):
            g1.send(f"wave {ANNA_UID}")
            time.sleep(0.6)
        g1.wait_for(lambda e: "locked" in e.get("log", ""), 10)
        say("the reader locks: red and green alternate until it recovers", 1)
        say("Anna now holds the card properly while it is locked -> " + outcome(present(g1, ANNA_UID)), 1)
        g1.mark()
        say("waiting for the lock to run out ...", 1)
        time.sleep(11)
        say("after the lock -> " + outcome(present(g1, ANNA_UID)), 1)
        time.sleep(3.5)

        step(4, "Gate-02 at site B asks every card for its PIN")
        say(f"Anna holds her card, types {ANNA_PIN}# -> " + outcome(pin_entry(g2, ANNA_UID, ANNA_PIN + "#")), 1)
        time.sleep(3.5)
        duress = BO_PIN[:-1] + str((int(BO_PIN[-1]) + 1) % 10)
        say(f"Bo is forced to open: he types the duress PIN {duress}# -> "
            + outcome(pin_entry(g2, BO_UID, duress + "#")) + "; a silent alarm goes to the host", 1)
        time.sleep(3.5)
        say("Someone tries Bo's card with guessed PINs:", 1)
        for guess in ("0000", "1111", "2222"):
            say(f"  {guess}# -> " + outcome(pin_entry(g2, BO_UID, guess + "#")), 1)
            time.sleep(2.5)
        say("three wrong PINs: Bo's card is locked at this gate. Gate-02 loses power and reboots ...", 1)
        g2.mark()
        g2.send("reset")
        g2.wait_for(lambda e: "up;" in e.get("log", ""), 30)
        say("after the reboot Bo holds his card -> " + outcome(present(g2, BO_UID))
            + " (the lock is kept on flash: a power cycle buys no extra guesses)", 1)
        alarms = [line for line in site.cli("events", "export", "--site", "site-b").stdout.splitlines()
                  if "alarm" in line]
        for line in alarms[:1]:
            say("the host's record of the duress: " + line, 1)
        deadline = time.monotonic() + 15
        raised = ""
        while time.monotonic() < deadline and "duress" not in raised:
            raised = site.cli("alarms", "list", "--open").stdout
            time.sleep(0.5)
        say("the console raised the alarm (its banner shows it on every page until acknowledged): "
            + next((x.strip() for x in raised.splitlines() if "duress" in x), "not yet"), 1)
        time.sleep(2)

        step(5, "The operator blocks Anna's card")
        t0 = time.monotonic()
        out = site.cli("cards", "block", ANNA, "--note", "badge reported stolen")
        change = out.stdout.strip().splitlines()[-1]
        say("host-sync cards block: " + change, 1)
        version = max(int(r["head"]) for r in site.readers_json() if r["site_id"] == "site-a")
        deadline = time.monotonic() + 20
        while monitor.acked_at("gate-01", version) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        acked = monitor.acked_at("gate-01", version)
        r = present(g1, ANNA_UID)
        say(f"gate-01 applied the block {((acked or time.monotonic()) - t0) * 1000:.0f} ms after the command;"
            f" Anna's next presentation -> {outcome(r)}", 1)

        step(6, "Gate-01 loses its network and keeps deciding")
        site.readers["gate-01"].net.cut()
        say("network cut; Bo holds his card -> " + outcome(present(g1, BO_UID)), 1)
        time.sleep(3.5)
        say("Carl tries too -> " + outcome(present(g1, CARL_UID)), 1)
        time.sleep(2)
        say("events are kept on the reader's flash until the host acknowledges them; network back ...", 1)
        site.readers["gate-01"].net.restore()
        deadline = time.monotonic() + 60
        found = False
        while time.monotonic() < deadline and not found:
            csv = site.cli("events", "export", "--site", "site-a").stdout
            found = BO_UID in csv and "grant" in csv
            time.sleep(0.5)
        say("the buffered events reached the host" if found else "buffered events have not arrived yet", 1)

        step(7, "The day's check-in record")
        for line in site.cli("events", "export", "--site", "site-a").stdout.strip().splitlines():
            say(line, 1)
        for s in ("site-a", "site-b"):
            say(f"host-sync ledger show --site {s}:")
            for line in site.cli("ledger", "show", "--site", s).stdout.strip().splitlines():
                say(line, 1)
        say("host-sync readers list:")
        for line in site.cli("readers", "list").stdout.strip().splitlines():
            say(line, 1)

        if keep:
            print()
            say("The site keeps running. Explore it by hand (Ctrl-C here stops everything):")
            cli = f"GV_CONFIG_DIR={site.env['GV_CONFIG_DIR']} {sys.executable} -m host_sync --data-dir {site.data}"
            say(f"  {cli} cards list", 1)
            say(f"  {cli} readers list", 1)
            say(f"  the web console: {site.web_url}/  (sign in as {WEB_USER} / {WEB_PASSWORD})", 1)
            for rid, rd in site.readers.items():
                say(f"  {rid}: steer with `nc 127.0.0.1 <control port>` (see {rd.board.events_path});"
                    f" REPL: mpremote connect {rd.board.pty} resume repl", 1)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        print()
        say("demo done; stopping the site")
        return 0
    finally:
        if monitor is not None:
            monitor.close()
        site.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(ROOT / "demo-site"), help="work folder (recreated)")
    ap.add_argument("--keep", action="store_true", help="leave the site running afterwards")
    ap.add_argument("--web-port", type=int, help="the web console's port (default: a free one)")
    args = ap.parse_args(argv)
    try:
        return run(Path(args.dir), args.keep, args.web_port)
    except KeyboardInterrupt:  # run() has stopped the site on its way out: no traceback for it
        print(flush=True)
        say("demo stopped by Ctrl-C; the site is stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
