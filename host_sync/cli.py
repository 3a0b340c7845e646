"""`host-sync`: the operators' command line for the card registry, the readers, the staff
ledger and the sync service. Exit codes (scripts may rely on them):

  0  done
  1  unexpected error (a bug: please report it with the log)
  2  the command line was wrong (see --help)
  3  refused: a card rule, a bad value or a bad CSV row (nothing was changed)
  4  not found: no such card, site, reader or change
  5  pending: some readers have not applied the change yet (status, readers list --check)
  6  the database cannot be opened or migrated
  7  done in part: some input rows were refused (each is named; `cards import` applied the
     rest with --apply, or would have)
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import host_sync  # noqa: F401 - puts firmware/ on sys.path for the shared codecs

from host_sync import ids, rules
from host_sync.db import Db, DbError, open_db, redact, resolve_url
from host_sync.ids import InvalidInput
from host_sync.registry import VERSION_MAX_RECORDS, CardInput, NotFound, Registry
from host_sync.timeutil import UTC, now, parse_iso
from host_sync.untrusted import clean

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_PENDING, EXIT_DB, EXIT_PARTIAL = range(8)
DEFAULT_TZ = "Europe/Stockholm"
DEFAULT_LAG_LIMIT_S = 60.0

log = logging.getLogger("host_sync")


class Ctx:
    """What every command gets: the open registry and where to write."""

    def __init__(self, args: argparse.Namespace, out: Any, err: Any):
        self.args, self.out, self.err = args, out, err
        self._db: Db | None = None
        self._reg: Registry | None = None

    @property
    def db(self) -> Db:
        if self._db is None:
            self._db = open_db(self.args.db, self.args.data_dir)
            if self._db.created:
                _new_registry_notice(self._db.url, self.err)
        return self._db

    @property
    def reg(self) -> Registry:
        if self._reg is None:
            self._reg = Registry(self.db, actor=self.args.actor)
        return self._reg

    def say(self, *lines: str) -> None:
        for line in lines:
            print(line, file=self.out)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _new_registry_notice(url: str, err: Any) -> None:
    """Said whenever a command made a new, empty registry: a wrong folder or a missing --db
    must not pass for an empty site."""
    print("notice: created a new, empty registry at %s (another registry? give --db URL, "
          "--data-dir DIR or set GV_DB)" % url.replace("sqlite:///", ""), file=err)
    legacy = Path("data") / "grindvakt.sqlite3"
    if legacy.exists() and str(legacy.resolve()) not in url:
        print("notice: a registry from an earlier version is in %s: use it with --data-dir %s"
              % (legacy.resolve(), legacy.parent.resolve()), file=err)


def _tz(name: str) -> dt.tzinfo:
    if name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo
    try:
        return ZoneInfo(name)
    except Exception:
        raise InvalidInput("unknown time zone %r (e.g. Europe/Stockholm or UTC)" % name)


def _site_tz(ctx: Ctx, site_id: str) -> tuple[dt.tzinfo, str]:
    """The time zone days and times are shown in: --tz when given, else the site's own."""
    name = getattr(ctx.args, "tz", None) or ctx.reg.site(site_id).get("tz") or DEFAULT_TZ
    return _tz(name), name


def _local(ts: str | None, tz: dt.tzinfo) -> str:
    """A stored UTC time as the site's local time."""
    if not ts:
        return "-"
    return parse_iso(ts).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _date_arg(option: str, value: str | None) -> dt.date | None:
    if not value:
        return None
    return ids.date(value, option)


def _ago(ts: str | None) -> str:
    if not ts:
        return "never"
    s = (now() - parse_iso(ts)).total_seconds()
    if s < 120:
        return "%d s ago" % s
    if s < 7200:
        return "%d min ago" % (s // 60)
    if s < 172800:
        return "%.1f h ago" % (s / 3600)
    return "%d days ago" % (s // 86400)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in cells]


def _versions_line(ctx: Ctx, versions: dict[str, int]) -> list[str]:
    out = []
    for site, v in sorted(versions.items()):
        n = len(ctx.reg.readers(site))
        out.append("  site %s now at version %d (%d reader(s)); follow it: host-sync status %s:%d"
                   % (site, v, n, site, v))
    return out


# -- sites ------------------------------------------------------------------------------------
def cmd_sites_add(ctx: Ctx) -> int:
    a = ctx.args
    s = ctx.reg.add_site(a.site, a.name or a.site, a.tax_id, a.pin_policy, tz=a.tz or DEFAULT_TZ)
    ctx.say("site %s added (tax agency site ID %s, PIN policy %s)"
            % (s["id"], s["tax_site_id"], s["pin_policy"]))
    return EXIT_OK


def cmd_sites_list(ctx: Ctx) -> int:
    rows = ctx.reg.sites()
    if ctx.args.json:
        ctx.say(json.dumps(rows, indent=1))
        return EXIT_OK
    ctx.say(*_table([(s["id"], s["name"], s["tax_site_id"], s["pin_policy"], s["version"],
                      s["cards"], s["readers"], s["tz"]) for s in rows],
                    ("SITE", "NAME", "SITE-ID-NUMBER", "PIN", "VERSION", "CARDS", "READERS", "TZ")))
    return EXIT_OK


def cmd_sites_edit(ctx: Ctx) -> int:
    a = ctx.args
    name = a.name if a.cmd == "edit" else a.new_name
    before = ctx.reg.site(a.site)
    s = ctx.reg.edit_site(a.site, name=name, tax_site_id=getattr(a, "tax_id", None),
                          tz=getattr(a, "tz", None))
    for k in ("name", "tax_site_id", "tz"):
        if before[k] != s[k]:
            ctx.say("site %s: %s %s -> %s" % (s["id"], k, before[k], s[k]))
    if before["tax_site_id"] != s["tax_site_id"]:
        ctx.say("  new ledger entries use the new ID number; entries already made keep theirs")
    return EXIT_OK


def cmd_sites_remove(ctx: Ctx) -> int:
    a = ctx.args
    site = ctx.reg.site(a.site)
    n = len(ctx.reg.cards(site=a.site))
    if not a.apply:
        readers = ctx.reg.readers(a.site)
        if readers:
            raise InvalidInput("site %s still has reader(s) %s: remove them first (host-sync "
                               "readers remove)" % (a.site, ", ".join(r["id"] for r in readers)))
        ctx.say("would remove site %s (%s): %d card(s) would no longer be on it (they stay in the "
                "registry); its staff ledger and events are kept. Add --apply to remove it."
                % (site["id"], site["name"], n))
        return EXIT_OK
    res = ctx.reg.remove_site(a.site)
    ctx.say("site %s removed; %d card(s) no longer on it; its ledger and events are kept"
            % (a.site, res["cards_unlinked"]))
    return EXIT_OK


def cmd_sites_rotate_keys(ctx: Ctx) -> int:
    from host_sync import sitekeys
    a = ctx.args
    ctx.reg.site(a.site)
    if a.pin and not a.yes:
        n = sitekeys.pin_loss(ctx.reg, a.site)
        ctx.say("NOT ROTATED: a new PIN key cannot carry PINs over (the host keeps 10-bit "
                "verifiers, not PINs): it clears every PIN of site %s. %d card(s) that need a PIN "
                "would be refused ('no PIN on record') until 'cards set-pin' is run for each. Add "
                "--yes to rotate anyway, or leave out --pin to rotate the card key only."
                % (a.site, n))
        return EXIT_REFUSED
    res = sitekeys.rotate(ctx.reg, a.site, pin=a.pin)
    ctx.say("site %s: key generation %d (new card key%s), %d record(s) republished as version %d%s"
            % (a.site, res["gen"], " and PIN key" if a.pin else "", res["records"],
               res["version"], "" if res["version"] == res["from"] else
               " (from %d)" % res["from"]))
    if a.pin:
        ctx.say("  PINs cleared: %d card(s) need 'cards set-pin' again" % res["pins_cleared"])
    ctx.say("  each of the %d reader(s) gets the new keys and a rebuild when connected; the old "
            "keys are deleted once all have applied it (host-sync status shows the progress)"
            % res["readers"])
    return EXIT_OK


# -- cards ------------------------------------------------------------------------------------
def cmd_cards_add(ctx: Ctx) -> int:
    a = ctx.args
    no = ids.card_no(a.card_number)
    if a.visitor:
        raise InvalidInput("card %s refused: %s" % (no, rules.VISITOR_REFUSED))
    if not a.uid:
        raise InvalidInput("card %s: give the card's UID with --uid HEX (read it at the enrolment "
                           "desk with tools/enroll.py)" % no)
    sites = tuple(dict.fromkeys(ids.site_id(s) for s in (a.site or [])))
    c = CardInput(card_no=no, uid=ids.uid_hex(a.uid), holder=a.holder or "",
                  pnr=ids.pnr(a.pnr or ""), employer=a.employer or "",
                  employer_org=ids.org_no(a.org_no or ""), status=rules.INACTIVE,
                  pin_required=a.pin_required,
                  valid_from=_date_arg("--valid-from", a.valid_from),
                  valid_until=_date_arg("--valid-until", a.valid_until),
                  sites=sites)
    versions = ctx.reg.add_card(c)
    card = ctx.reg.card(no)
    ctx.say("card %s added (UID %s), inactive until activated ('host-sync cards activate %s'); "
            "valid %s to %s" % (no, c.uid, no, card["valid_from"], card["valid_until"]))
    ctx.say(*_versions_line(ctx, versions))
    return EXIT_OK


def _cmd_status(command: str) -> Callable[[Ctx], int]:
    def run(ctx: Ctx) -> int:
        old, new, versions = ctx.reg.change_status(ctx.args.card_number, command,
                                                   ctx.args.note or "")
        ctx.say("card %s %s (%s -> %s)" % (ids.card_no(ctx.args.card_number), rules.past(command),
                                           old, new))
        if not versions:
            ctx.say("  the card is on no site, so no reader is affected")
        ctx.say(*_versions_line(ctx, versions))
        return EXIT_OK
    return run


def cmd_cards_add_site(ctx: Ctx) -> int:
    versions = ctx.reg.add_to_site(ctx.args.card_number, ids.site_id(ctx.args.site))
    card = ctx.reg.card(ctx.args.card_number)
    ctx.say("card %s added to site %s" % (card["card_no"], ctx.args.site))
    if any(card["pin_set"].values()):
        ctx.say("  its PIN is not known at %s yet (each site has its own PIN key): "
                "host-sync cards set-pin %s --site %s" % (ctx.args.site, card["card_no"],
                                                         ctx.args.site))
    ctx.say(*_versions_line(ctx, versions))
    return EXIT_OK


def cmd_cards_show(ctx: Ctx) -> int:
    c = ctx.reg.card(ctx.args.card_number)
    if ctx.args.json:
        ctx.say(json.dumps(c, indent=1, default=str))
        return EXIT_OK
    status = c["status"] + (" (EXPIRED %s)" % c["valid_until"] if c["expired"] else "")
    ctx.say("card number   %s" % c["card_no"], "UID           %s" % c["uid"],
            "status        %s" % status,
            "holder        %s" % (c["holder"] or "-"),
            "personal id   %s" % (c["pnr"] or "-"),
            "employer      %s %s" % (c["employer"] or "-", c["employer_org"]),
            "valid         %s to %s" % (c["valid_from"], c["valid_until"]),
            "PIN           %s; set at: %s" % ("required" if c["pin_required"] else "not required",
                                              ", ".join(s for s, ok in c["pin_set"].items() if ok)
                                              or "no site"),
            "sites         %s" % (", ".join(c["sites"]) or "none"))
    if c["replaces"]:
        ctx.say("replaces      %s (its history is below)" % c["replaces"])
    if c["replaced_by"]:
        ctx.say("replaced by   %s" % c["replaced_by"])
    tz, tzname = _site_tz(ctx, c["sites"][0]) if c["sites"] else (_tz(DEFAULT_TZ), DEFAULT_TZ)
    ctx.say("changed       %s (%s)" % (_local(c["updated_at"], tz), tzname))
    hist = ctx.reg.card_history(c["card_no"], limit=ctx.args.history)
    if hist:
        ctx.say("history (latest first, %s):" % tzname)
        ctx.say(*("  %s %s: %s%s %s" % (_local(h["at"], tz), h["actor"], h["action"],
                                        "" if h["subject"] == c["card_no"] else " [%s]" % h["subject"],
                                        h["detail"]) for h in hist))
    return EXIT_OK


def cmd_cards_remove_site(ctx: Ctx) -> int:
    versions = ctx.reg.remove_from_site(ctx.args.card_number, ids.site_id(ctx.args.site))
    ctx.say("card %s removed from site %s (its readers drop it with the next change)"
            % (ids.card_no(ctx.args.card_number), ctx.args.site))
    ctx.say(*_versions_line(ctx, versions))
    return EXIT_OK


def cmd_cards_edit(ctx: Ctx) -> int:
    a = ctx.args
    no = ids.card_no(a.card_number)
    had_pin = [site for site, ok in ctx.reg.card(no)["pin_set"].items() if ok]
    diff, versions = ctx.reg.edit_card(
        no, note=a.note or "", holder=a.holder, pnr=a.pnr, employer=a.employer,
        employer_org=a.org_no, valid_from=a.valid_from, valid_until=a.valid_until, uid=a.uid)
    for k, (old, new) in sorted(diff.items()):
        ctx.say("card %s: %s %s" % (no, k, "changed" if k == "pnr" else "%s -> %s" % (old or "-", new)))
    if "uid" in diff:
        ctx.say("  a new chip for the same card: the person, the sites and the ledger history stay; "
                "the old UID no longer opens anything")
        if had_pin:
            ctx.say("  its PIN is bound to the UID: set it again (host-sync cards set-pin %s)" % no)
    if not versions and not {"uid", "valid_from", "valid_until"} & set(diff):
        ctx.say("  kept on this host only: no reader holds names or identity numbers")
    elif not versions:
        ctx.say("  the card is on no site, so no reader is affected")
    ctx.say(*_versions_line(ctx, versions))
    return EXIT_OK


def cmd_cards_replace(ctx: Ctx) -> int:
    a = ctx.args
    if not a.uid:
        raise InvalidInput("give the new card's UID with --uid HEX")
    versions = ctx.reg.replace_card(
        a.card_number, a.new_card_number, a.uid,
        valid_from=_date_arg("--valid-from", a.valid_from),
        valid_until=_date_arg("--valid-until", a.valid_until),
        note=a.note or "")
    old, new = ids.card_no(a.card_number), ids.card_no(a.new_card_number)
    ctx.say("card %s replaces %s for the same person and sites; %s is terminated" % (new, old, old),
            "  the new card is inactive until activated: host-sync cards activate %s" % new)
    ctx.say(*_versions_line(ctx, versions))
    return EXIT_OK


def cmd_cards_list(ctx: Ctx) -> int:
    a = ctx.args
    if a.status and a.status not in rules.STATUSES:
        raise InvalidInput("status must be one of %s" % ", ".join(rules.STATUSES))
    if a.site:
        ctx.reg.site(a.site)  # an unknown site is not found (exit 4), not an empty list
    rows = ctx.reg.cards(site=a.site, status=a.status, search=a.search)
    if a.json:
        ctx.say(json.dumps(rows, indent=1, default=str))
        return EXIT_OK
    ctx.say(*_table([(c["card_no"], c["status"], c["holder"], c["employer"], c["valid_until"],
                      "yes" if c["pin_required"] else "") for c in rows],
                    ("CARD", "STATUS", "HOLDER", "EMPLOYER", "VALID-UNTIL", "PIN")))
    ctx.say("%d card(s)" % len(rows))
    return EXIT_OK


def cmd_cards_set_pin(ctx: Ctx) -> int:
    a = ctx.args
    if a.pin_stdin:
        pin = sys.stdin.readline().strip()
    else:
        pin = getpass.getpass("New PIN for %s (4-6 digits): " % a.card_number)
        again = getpass.getpass("Repeat the PIN: ")
        if pin != again:
            raise InvalidInput("the two PINs differ; nothing was changed")
    versions = ctx.reg.set_pin(a.card_number, pin, a.site)
    ctx.say("PIN set for %s (only its verifier is kept)" % ids.card_no(a.card_number))
    ctx.say(*_versions_line(ctx, versions))
    return EXIT_OK


def cmd_cards_import(ctx: Ctx) -> int:
    from host_sync import importer
    from host_sync.progress import Progress
    a = ctx.args
    try:
        raw = Path(a.file).read_bytes()
    except OSError as e:
        raise InvalidInput("cannot read %s: %s" % (a.file, e.strerror or e))
    text = importer.decode(raw, a.file, a.encoding)
    mapping = importer.parse_mapping(a.map)
    n = max(0, text.count("\n") - 1)
    prog = Progress("checking %s" % Path(a.file).name, n, ctx.err, quiet=a.quiet)
    try:
        plan = importer.plan(ctx.reg, text, site=a.site, progress=prog, mapping=mapping)
    except importer.BadRows as e:
        for line, msg in e.errors[:50]:
            print("%s line %d: %s" % (a.file, line, msg), file=ctx.err)
        if len(e.errors) > 50:
            print("... and %d more bad rows" % (len(e.errors) - 50), file=ctx.err)
        print("%d bad row(s); nothing was applied" % len(e.errors), file=ctx.err)
        return EXIT_REFUSED
    prog.done()
    ctx.say(*importer.describe(plan, limit=1_000_000 if a.verbose else 20))
    refused = EXIT_PARTIAL if plan.visitors else EXIT_OK
    for line, no in plan.visitors:
        print("%s line %d: card %s refused: %s" % (a.file, line, no, rules.VISITOR_REFUSED),
              file=ctx.err)
    if not a.apply:
        if not plan.empty:
            ctx.say("dry run: nothing changed. Run again with --apply to make these changes.")
        return refused
    if plan.empty:
        ctx.say("nothing to apply")
        return refused
    prog = Progress("importing", len(plan.new), ctx.err, quiet=a.quiet)
    before = {s["id"]: s["version"] for s in ctx.reg.sites()}
    versions = importer.apply(ctx.reg, plan, Path(a.file).name, progress=prog)
    prog.done()
    ctx.say("applied." + (" %d row(s) refused (above): exit 7" % len(plan.visitors)
                          if plan.visitors else ""))
    for site, v in sorted(versions.items()):
        if v - before.get(site, 0) > 1:  # split so each version fits one DELTA (importer.py)
            ctx.say("  site %s: one change in %d versions (%d-%d) of at most %d cards each"
                    % (site, v - before[site], before[site] + 1, v, VERSION_MAX_RECORDS))
    ctx.say(*_versions_line(ctx, versions))
    return refused


# -- readers ----------------------------------------------------------------------------------
def _config_tools() -> Any:
    from tools import provision  # the one reader-config validation (firmware/gv/config.py)
    return provision


def _reader_config(ctx: Ctx, reader_id: str, site_id: str, secret_hex: str,
                   broker_pw: str) -> dict:
    """The reader's config.json from the command line's options (not yet validated)."""
    a = ctx.args
    site = ctx.reg.site(site_id)
    card_key, pin_key = ctx.reg.site_keys(site_id)
    site_conf = _site_conf()  # `site init` said where the broker is and which CA(s) to pin
    ca_path = a.ca or (str(site_conf.trust) if site_conf and not a.no_tls else None)
    host = (ids.broker_address(a.broker_host, "--broker-host") if a.broker_host
            else site_conf.reader_host if site_conf else "")
    port = a.broker_port or (site_conf.port if site_conf else 8883)
    ca = ""
    if ca_path:
        try:
            ca = Path(ca_path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInput("broker.ca: cannot read the CA certificate %s: %s" % (ca_path, e))
    wifi: dict[str, Any] = {"ssid": a.wifi_ssid or "",
                            "password": os.environ.get("GV_WIFI_PASSWORD", "")}
    if a.wifi_open:
        wifi["open"] = True
    cfg: dict[str, Any] = {
        "reader_id": reader_id, "site": site_id, "wifi": wifi,
        "broker": {"host": host, "port": port, "tls": not a.no_tls,
                   "ca": ca, "user": reader_id, "password": broker_pw},
        "secret": secret_hex,
        "site_keys": {"card": card_key.hex(), "pin": pin_key.hex()},
        "gate": {"hold_ms": a.hold_ms, "open_ms": a.open_ms, "pin_policy": site["pin_policy"]}}
    if a.no_tls:
        cfg["broker"].pop("ca")
    if a.virtual:
        cfg["virtual"] = True
        if not a.wifi_ssid:
            cfg.pop("wifi")
    return cfg


# The firmware's checks (gv.configcheck) speak of config.json's fields, for whoever edits the
# file; here the operator sets them with the CLI's options, so its hints name those.
_CLI_WORDS = (
    ('say "open": true for an open network',
     "set it in the environment variable GV_WIFI_PASSWORD, or give --wifi-open for an open "
     "network"),
    ('"open": true for a network without one',
     "--wifi-ssid, with the password in GV_WIFI_PASSWORD or --wifi-open for a network "
     "without one"),
    ("must be empty on an open network (wifi.open is true)",
     "must be empty with --wifi-open (unset GV_WIFI_PASSWORD)"),
    ("wifi.ssid: missing or longer than 32 bytes (1..32)",
     "wifi.ssid: missing or longer than 32 bytes (--wifi-ssid, 1..32)"),
)


def _cli_words(problem: str) -> str:
    for theirs, ours in _CLI_WORDS:
        problem = problem.replace(theirs, ours)
    return problem


def _check_reader_config(ctx: Ctx, cfg: dict, only: tuple[str, ...] | None = None) -> None:
    """Refuse (exit 3, before anything is written) a config the reader could not boot with."""
    errs = [_cli_words(e) for e in _config_tools().problems(cfg)]
    if only is not None:
        errs = [e for e in errs if e.startswith(only)]
    if errs:
        raise InvalidInput("reader config refused:\n  " + "\n  ".join(errs))


def _write_config_file(ctx: Ctx, reader_id: str, cfg: dict, path: str) -> None:
    _check_reader_config(ctx, cfg)
    try:
        _config_tools().write_config(cfg, Path(path))
    except OSError as e:
        raise InvalidInput("cannot write the config to %s: %s" % (path, e))
    ctx.reg.audit("reader config written", reader_id, "to %s" % Path(path).resolve())


def cmd_readers_add(ctx: Ctx) -> int:
    a = ctx.args
    site_id = ids.site_id(a.site)
    rid = ids.reader_id(a.reader_id)
    with ctx.reg.db.tx():  # a refused config or a failed write leaves no reader behind
        r = ctx.reg.add_reader(rid, site_id)
        secret, broker_pw = ctx.reg.reader_credentials(rid)
        cfg = _reader_config(ctx, rid, site_id, secret.hex(), broker_pw)
        if a.config_out:
            _write_config_file(ctx, rid, cfg, a.config_out)
        else:  # the settings given now are checked now, the rest when the config is written
            _check_reader_config(ctx, cfg, only=("gate.", "broker.port"))
    ctx.say("reader %s added to site %s; its secret and broker account are issued"
            % (r["id"], r["site_id"]))
    if a.config_out:
        ctx.say("config written to %s (mode 0600; it holds secrets: provision it, then delete it)"
                % a.config_out)
    else:
        ctx.say("write its config with: host-sync readers config %s --config-out FILE" % r["id"])
    return _broker_after_commit(ctx, "the broker needs the new account",
                                "the site's broker has its account: ")


def cmd_readers_config(ctx: Ctx) -> int:
    a = ctx.args
    r = ctx.reg.reader(a.reader_id)
    secret, broker_pw = ctx.reg.reader_credentials(r["id"])
    cfg = _reader_config(ctx, r["id"], r["site_id"], secret.hex(), broker_pw)
    _write_config_file(ctx, r["id"], cfg, a.config_out)
    ctx.say("config for %s written to %s (mode 0600)" % (a.reader_id, a.config_out))
    return EXIT_OK


def cmd_readers_rename(ctx: Ctx) -> int:
    a = ctx.args
    r = ctx.reg.rename_reader(a.reader_id, a.new_id)
    ctx.say("reader %s is now %s (site %s), with a new secret and broker account"
            % (a.reader_id, r["id"], r["site_id"]),
            "next: host-sync readers config %s --config-out FILE ..., then deploy it to the board"
            % r["id"])
    # the old account goes, the new one comes
    return _broker_after_commit(ctx, "the broker needs the change",
                                "the site's broker has the new account (the old one is gone): ")


def _broker_after_commit(ctx: Ctx, needs: str, has: str) -> int:
    """The site's broker told of an account change the registry has committed. Failing here
    cannot be exit 3 (that says nothing changed): a warning with the way to finish, exit 5."""
    try:
        done = refresh_site_broker(ctx)
    except InvalidInput as e:
        print("WARNING: the change is made, but %s: %s. Finish it: host-sync broker config, then "
              "reload mosquitto (SIGHUP)" % (needs, e), file=ctx.err)
        return EXIT_PENDING
    if done is None:
        ctx.say(needs + ": host-sync broker config --out DIR, then reload mosquitto (SIGHUP)")
    else:
        ctx.say(has + done)
    return EXIT_OK


def _setting(reg: Registry, name: str) -> str | None:
    return reg.db.scalar("SELECT value FROM settings WHERE name = ?", (name,))


def _broker_accounts_now(ctx: Ctx) -> str:
    """Rewrite the broker's passwd/acl from the registry and reload it, so a revoked account
    is refused at once; returns what was done (raises InvalidInput if it cannot be). The site's
    broker (`site init`) unless told another folder (--broker-dir, or `broker config --out`)."""
    from host_sync import broker
    a = ctx.args
    out = a.broker_dir or (None if a.broker_pid is None and a.reload_cmd is None and _site_conf()
                           else _setting(ctx.reg, "broker_dir"))
    if not out:
        done = refresh_site_broker(ctx)
        if done is None:
            raise InvalidInput("where is the broker's config? give --broker-dir (or set up the "
                               "site: host-sync site init)")
        if not (done.startswith("sent SIGHUP") or done.endswith("reloaded")):
            raise InvalidInput(done)
        return done
    readers, hosts = _accounts(ctx)
    try:
        broker.write_accounts(out, readers, hosts)
        done = broker.reload(a.broker_pid, a.reload_cmd or _setting(ctx.reg, "broker_reload"))
    except (broker.BrokerConfigError, OSError) as e:
        raise InvalidInput("the broker still has the old accounts: %s" % e)
    ctx.reg.audit("broker accounts reloaded", out, "%d reader account(s); %s" % (len(readers), done))
    return done


def cmd_readers_revoke(ctx: Ctx) -> int:
    a = ctx.args
    r = ctx.reg.revoke_reader(a.reader_id, a.reason)
    ctx.say("reader %s revoked: its secret and broker password are deleted; host-sync serve "
            "refuses its messages within a second" % r["id"])
    try:
        ctx.say("broker: account removed, %s" % _broker_accounts_now(ctx))
    except InvalidInput as e:
        print("WARNING: %s. Rewrite and reload it now: host-sync broker config --out DIR, then "
              "SIGHUP mosquitto" % e, file=ctx.err)
        return EXIT_PENDING
    return EXIT_OK


def cmd_readers_rotate(ctx: Ctx) -> int:
    from host_sync import rekey
    rekey.start(ctx.reg, ctx.args.reader_id)
    ctx.say("new secret and broker password issued for %s; host-sync serve sends them (sealed, "
            "encrypted) when it is connected, and switches the registry and the broker once the "
            "reader has stored them" % ctx.args.reader_id,
            "  follow it: host-sync audit --subject %s   (\"reader re-keyed\")" % ctx.args.reader_id)
    return EXIT_OK


def cmd_readers_remove(ctx: Ctx) -> int:
    a = ctx.args
    was_revoked = ctx.reg.revoked(a.reader_id) if ctx.reg.reader(a.reader_id) else False
    ctx.reg.remove_reader(a.reader_id, a.reason or ("revoked earlier" if was_revoked else ""))
    ctx.say("reader %s removed (its events and ledger entries stay)" % a.reader_id)
    if was_revoked:
        return EXIT_OK
    try:
        ctx.say("broker: account removed, %s" % _broker_accounts_now(ctx))
    except InvalidInput as e:
        print("WARNING: %s" % e, file=ctx.err)
        return EXIT_PENDING
    return EXIT_OK


def reader_rows(reg: Registry, site: str | None, lag_limit_s: float) -> list[dict]:
    from host_sync import rekey
    rows = reg.reader_rows(site, lag_limit_s)
    rotating = rekey.pending(reg)
    for r in rows:
        r["revoked"] = reg.revoked(r["id"])
        r["rekey_pending"] = r["id"] in rotating  # readers rotate: not yet stored by the reader
    return rows


def cmd_readers_list(ctx: Ctx) -> int:
    a = ctx.args
    if a.site:
        ctx.reg.site(a.site)  # an unknown site is not found (exit 4), not an empty list
    rows = reader_rows(ctx.reg, a.site, a.lag_limit)
    if a.json:
        ctx.say(json.dumps(rows, indent=1, default=str))
    else:
        from host_sync.health import summary as health  # problems first, then the figures
        # firmware is the reader's own text: rows stored before serve cleaned it may hold raw
        # newlines and terminal escapes, so the table shows it cleaned too
        ctx.say(*_table([(r["id"], r["site_id"], "REVOKED" if r["revoked"] else
                          ("online" if r["online"] else "OFFLINE")
                          + (" (re-key pending)" if r["rekey_pending"] else ""),
                          "%d/%d" % (r["applied_version"], r["head"]),
                          ("%d" % r["lag"]) + (" LAGGING A BLOCK since %s" % r["block_pending_since"]
                                               if r["lagging_block"] else ""),
                          _ago(r["last_seen"]), clean(r["firmware"]) or "-",
                          health(r["health"]))
                         for r in rows],
                        ("READER", "SITE", "ONLINE", "APPLIED", "LAG", "LAST-SEEN", "FIRMWARE",
                         "HEALTH")))
    if a.check and any(r["lagging_block"] or r["lag"] for r in rows):
        return EXIT_PENDING
    return EXIT_OK


def cmd_readers_show(ctx: Ctx) -> int:
    """One reader: its link, every health figure with when it was last reported, memory by stage."""
    from host_sync import health as hl
    a = ctx.args
    rows = [r for r in reader_rows(ctx.reg, None, a.lag_limit) if r["id"] == a.reader_id]
    if not rows:
        ctx.reg.reader(a.reader_id)  # exit 4 for an unknown reader
    r = rows[0]
    h = r["health"] or {}
    if a.json:
        ctx.say(json.dumps(dict(r, problems=hl.problems(h)), indent=1, default=str))
        return EXIT_OK
    at = h.get("at") or {}
    # firmware: the reader's own text, cleaned for the terminal (old rows may hold it raw)
    ctx.say("reader %s at site %s: %s, applied %d of %d, last seen %s, firmware %s"
            % (r["id"], r["site_id"], "online" if r["online"] else "OFFLINE", r["applied_version"],
               r["head"], _ago(r["last_seen"]), clean(r["firmware"]) or "-"))
    probs = hl.problems(h)
    ctx.say("problems: " + ("; ".join(probs) if probs else "none"))
    figs = [(k, h[k]) for k in ("free_flash", "flash_size", "need_flash", "free_heap",
                                "events_pending", "mem_errors", "tls_deferred", "uptime_s",
                                "retry_s", "snap_version", "snap_offset", "hello_version")
            if k in h]
    ctx.say(*_table([(k, v, _ago(at.get(k))) for k, v in figs], ("FIGURE", "VALUE", "REPORTED")))
    mem = h.get("mem") or {}
    if mem:
        def b(n: int) -> str:
            return "-" if n == hl.P.UNKNOWN else hl.kib(n)
        ctx.say(*_table([(st, b(m[0]), b(m[1]), b(m[2]), b(m[3]), _ago(at.get("mem." + st)))
                         for st in hl.STAGES if (m := mem.get(st))],
                        ("MEMORY AT", "GC FREE", "GC BLOCK", "IDF FREE", "IDF BLOCK", "REPORTED")))
    return EXIT_OK


def _clock_arg(text: str | None) -> int | None:
    """set-clock's time: seconds since 2020-01-01 UTC, or an ISO date-time (UTC unless it says
    otherwise); None = the host's time when serve sends it."""
    from host_sync.commands import seconds_2020
    if text is None:
        return None
    if text.isdigit():
        v = int(text)
    else:
        try:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput("set-clock takes a time like 2026-11-29T03:40:00Z or seconds since "
                               "2020-01-01 UTC, not %r" % text)
        v = seconds_2020(t if t.tzinfo else t.replace(tzinfo=UTC))
    if not 0 <= v < 2 ** 32:
        raise InvalidInput("set-clock: %r is outside the readers' clock (2020 to 2156)" % text)
    return v


def cmd_readers_command(ctx: Ctx) -> int:
    import time
    from host_sync import commands
    a = ctx.args
    ctx.reg.reader(a.reader_id)  # exit 4 for an unknown reader
    name = commands.NAMES[a.command]
    if a.arg is not None and name != "set_clock":
        raise InvalidInput("%s takes no argument" % a.command)
    if a.wait is not None and a.wait < 0 or a.expire is not None and a.expire <= 0:
        raise InvalidInput("--wait and --expire take a positive number of seconds")
    cid = commands.enqueue(ctx.db, a.reader_id, name, _clock_arg(a.arg), ctx.args.actor, a.expire)
    row = commands.get(ctx.db, cid)
    assert row is not None
    ctx.say("command #%d %s queued for %s (sent by host-sync serve; expires %s)"
            % (cid, a.command, a.reader_id, row["deadline_at"]))
    if a.wait is None:
        ctx.say("  follow it: host-sync readers commands %s" % a.reader_id)
        return EXIT_OK
    deadline = time.monotonic() + a.wait
    while row["state"] not in commands.FINAL and time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        row = commands.get(ctx.db, cid) or row
    if row["state"] == "done":
        ctx.say("command #%d %s on %s: done" % (cid, a.command, a.reader_id))
        return EXIT_OK
    if row["state"] == "failed":
        print("command #%d %s on %s failed: %s" % (cid, a.command, a.reader_id, row["result"]),
              file=ctx.err)
        return EXIT_REFUSED
    ctx.say("command #%d %s on %s still %s after %g s (%s)" % (
        cid, a.command, a.reader_id, row["state"], a.wait,
        "no answer from the reader yet" if row["state"] == "sent"
        else "the reader is not connected to serve yet, or no serve is running"))
    return EXIT_PENDING


def cmd_readers_commands(ctx: Ctx) -> int:
    from host_sync import commands
    a = ctx.args
    if a.reader_id:
        ctx.reg.reader(a.reader_id)
    rows = commands.recent(ctx.db, a.reader_id, a.limit)
    if a.json:
        ctx.say(json.dumps(rows, indent=1, default=str))
        return EXIT_OK
    ctx.say(*_table([("#%d" % r["id"], r["reader_id"], r["command"].replace("_", "-"),
                      "" if r["arg"] is None else r["arg"], r["state"].upper()
                      if r["state"] == "failed" else r["state"], r["requested_by"],
                      r["requested_at"], r["result"] or "-") for r in rows],
                    ("ID", "READER", "COMMAND", "ARG", "STATE", "BY", "QUEUED", "RESULT")))
    return EXIT_OK


# -- status of a change -----------------------------------------------------------------------
def _parse_change(ctx: Ctx, ref: str) -> tuple[str, int]:
    if ":" in ref:
        site, v = ref.rsplit(":", 1)
    else:
        site, v = ctx.args.site, ref
        if not site or not ref.isdigit():
            try:  # a card number: its latest change (at --site, if given)
                no = ids.card_no(ref)
            except InvalidInput:
                raise InvalidInput("say which change: SITE:VERSION, or VERSION with --site, or a "
                                   "card number for its latest change")
            ch = ctx.reg.changes(site_id=site, subject=no, limit=1)
            if not ch:
                raise NotFound("no change recorded for card %s%s" % (no, " at %s" % site if site
                                                                     else ""))
            return ch[0]["site"], ch[0]["version"]
    try:
        return site, int(v)
    except ValueError:
        raise InvalidInput("version %r is not a number" % v)


STALE_S = 20.0  # a serve instance silent this long is not running (it says every 5 s)


def cmd_service_status(ctx: Ctx) -> int:
    """`host-sync status` alone: is the sync service running and connected to the broker?"""
    from host_sync import serve
    rows = [r for r in serve.instances(ctx.db) if r["age_s"] < 7 * 86400]
    live = [r for r in rows if r.get("running") and r["age_s"] < STALE_S]
    readers = ctx.reg.readers()
    from host_sync import sitekeys
    for site in sitekeys.rotations(ctx.reg):
        sitekeys.finish(ctx.reg, site)  # a reader removed or revoked since may have been the last
    rot = {site: dict(zip(("on_new_keys", "readers"), sitekeys.progress(ctx.reg, site)),
                      generation=d["gen"], from_version=d["from"], started=d["at"])
           for site, d in sorted(sitekeys.rotations(ctx.reg).items())}
    if ctx.args.json:
        ctx.say(json.dumps({"instances": rows, "readers": len(readers),
                            "online": sum(1 for r in readers if r["online"]),
                            "key_rotations": rot}, indent=1))
    else:
        if not rows:
            ctx.say("sync service: NEVER RAN on this registry (start it: host-sync site services, "
                    "or host-sync serve)")
        from host_sync import units
        for r in rows:
            if not r.get("running") or r["age_s"] >= STALE_S:
                ctx.say("sync service %s: NOT RUNNING (last heard %s; %s)" % (
                    r["instance"], _ago(r["heartbeat"]), units.start_hint(units.SERVE_UNIT)))
            elif r["connected"]:
                ctx.say("sync service %s: running, connected to the broker %s since %s%s" % (
                    r["instance"], r["broker"], r["since"], ", pushing" if r.get("leader") else ""))
            else:
                ctx.say("sync service %s: running, NOT CONNECTED to the broker %s since %s "
                        "(%d tries): %s" % (r["instance"], r["broker"], r["since"], r["failures"],
                                            r["error"]))
        ctx.say("readers: %d of %d online" % (sum(1 for r in readers if r["online"]),
                                               len(readers)))
        for site, r in rot.items():
            ctx.say("site %s: key rotation to generation %d: %d of %d reader(s) on the new keys"
                    " (old keys kept until all are)" % (site, r["generation"], r["on_new_keys"],
                                                        r["readers"]))
    return EXIT_OK if any(r["connected"] for r in live) else EXIT_PENDING


def cmd_status(ctx: Ctx) -> int:
    if not ctx.args.change:
        return cmd_service_status(ctx)
    site, version = _parse_change(ctx, ctx.args.change)
    ch = ctx.reg.change(site, version)
    readers = ctx.reg.readers(site)
    done = [r for r in readers if r["applied_version"] >= version]
    todo = [r for r in readers if r["applied_version"] < version]
    if ctx.args.json:
        ctx.say(json.dumps({"change": ch, "applied": [r["id"] for r in done],
                            "pending": [{"reader": r["id"], "applied_version": r["applied_version"],
                                         "attention": (r["health"] or {}).get("attention"),
                                         "since": ch["at"], "online": r["online"],
                                         "last_seen": r["last_seen"]} for r in todo]},
                           indent=1, default=str))
        return EXIT_PENDING if todo else EXIT_OK
    tz, tzname = _site_tz(ctx, site)
    ctx.say("change %s:%d  %s %s  by %s at %s (%s)" % (site, version, ch["action"], ch["subject"],
                                                       ch["actor"], _local(ch["at"], tz), tzname))
    ctx.say("applied by %d of %d reader(s)" % (len(done), len(readers)))
    for r in done:
        ctx.say("  ok       %s (at version %d, %s)" % (r["id"], r["applied_version"],
                                                      _ago(r["applied_at"])))
    for r in todo:
        ctx.say("  PENDING  %s (at version %d) since %s (%s); %s, last seen %s"
                % (r["id"], r["applied_version"], _local(ch["at"], tz), _ago(ch["at"]).replace(" ago", ""),
                   "online" if r["online"] else "OFFLINE", _ago(r["last_seen"])))
        att = (r["health"] or {}).get("attention")
        if att:
            ctx.say("           needs attention: %s" % att)
    return EXIT_PENDING if todo else EXIT_OK


# -- events and ledger ------------------------------------------------------------------------
def _span(a: argparse.Namespace, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    f = _date_arg("--from", a.from_) or now().date()
    t = _date_arg("--to", a.to) or f
    if t < f:
        raise InvalidInput("--to is before --from")
    start = dt.datetime(f.year, f.month, f.day, tzinfo=tz)
    end = dt.datetime(t.year, t.month, t.day, tzinfo=tz) + dt.timedelta(days=1)
    return start, end


def _emit(ctx: Ctx, text: str) -> None:
    """An export holds names and personal identity numbers: only its owner may read the file
    (mode 0600, also when it replaces an existing file)."""
    if ctx.args.out and ctx.args.out != "-":
        try:
            fd = os.open(ctx.args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise InvalidInput("cannot write %s: %s" % (ctx.args.out, e.strerror))
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        print("written to %s (mode 0600)" % ctx.args.out, file=ctx.err)
    else:
        ctx.out.write(text)


def cmd_events_export(ctx: Ctx) -> int:
    from host_sync import ledger
    a = ctx.args
    tz, _ = _site_tz(ctx, a.site)
    start, end = _span(a, tz)
    rows = ledger.event_rows(ctx.db, a.site, start, end, tz)
    ctx.reg.audit("events exported", a.site, "%s to %s, %d row(s)" % (start.date(), end.date(), len(rows)))
    _emit(ctx, ledger.to_csv(ledger.EVENT_HEADER, rows))
    return EXIT_OK


def cmd_ledger_show(ctx: Ctx) -> int:
    from host_sync import ledger
    a = ctx.args
    tz, tzname = _site_tz(ctx, a.site)
    site = ctx.reg.site(a.site)
    day = (_date_arg("--day", a.day) if a.day and a.day != "today" else None) \
        or now().astimezone(tz).date()
    start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    rows = ledger.shifts(ctx.db, a.site, start, start + dt.timedelta(days=1))
    ctx.reg.audit("ledger shown", a.site, "day %s, %d shift(s)" % (day, len(rows)))
    ctx.say("Staff ledger (personalliggare), site %s (%s), site ID number %s, %s (%s)"
            % (site["id"], site["name"], site["tax_site_id"], day.isoformat(), tzname))
    table = ledger.shift_rows(rows, tz)
    def hm(t: str) -> str:  # the time, with the date when it is not the day shown
        if not t or not t[0].isdigit():
            return t
        return t[11:16] if t[:10] == day.isoformat() else t[5:16]
    ctx.say(*_table([[r[3], r[4], r[1], r[2], hm(r[6]), hm(r[7]), r[8],
                      "corrected" if r[9] else "", ("FLAGGED: " + r[10]) if r[10] else ""]
                     for r in table],
                    ("NAME", "PERSONAL-ID", "CONTRACTOR", "ORG-NO", "START", "END", "READERS", "",
                     "")))
    flagged = sum(1 for r in rows if r["flags"])
    ctx.say("%d shift(s); %d person(s) on site now%s" % (
        len(rows), sum(1 for r in rows if r["end"] is None),
        "; %d flagged: see the alarms (a reader's word the registry does not back)" % flagged
        if flagged else ""))
    return EXIT_OK


def cmd_ledger_export(ctx: Ctx) -> int:
    from host_sync import ledger
    a = ctx.args
    tz, tzname = _site_tz(ctx, a.site)
    site = ctx.reg.site(a.site)
    start, end = _span(a, tz)
    rows = ledger.shift_rows(ledger.shifts(ctx.db, a.site, start, end), tz)
    ctx.reg.audit("ledger exported", a.site, "%s to %s as %s, %d shift(s)"
                  % (start.date(), end.date(), a.format, len(rows)))
    if a.format == "csv":
        _emit(ctx, ledger.to_csv(ledger.SHIFT_HEADER, rows))
    else:
        title = "Personalliggare: %s (%s)" % (site["name"], site["id"])
        sub = "Site ID number %s. Shifts from %s to %s (%s)." % (
            site["tax_site_id"], start.date().isoformat(),
            (end - dt.timedelta(days=1)).date().isoformat(), tzname)
        _emit(ctx, ledger.to_html(title, sub, ledger.SHIFT_HEADER[:-1], [r[:-1] for r in rows]))
    return EXIT_OK


def cmd_ledger_correct(ctx: Ctx) -> int:
    from host_sync import ledger
    a = ctx.args
    shift_site = ctx.db.scalar("SELECT site_id FROM ledger WHERE shift_id = ?", (a.shift,))
    if shift_site is None:
        raise NotFound("no shift %r in the ledger" % a.shift)
    try:
        tz = _site_tz(ctx, shift_site)[0]
    except NotFound:  # a removed site: its ledger is kept
        tz = _tz(a.tz or DEFAULT_TZ)

    def t(s: str | None) -> dt.datetime | None:
        if not s:
            return None
        try:
            v = dt.datetime.fromisoformat(s)
        except ValueError:
            raise InvalidInput("times are 'YYYY-MM-DD HH:MM'")
        return v if v.tzinfo else v.replace(tzinfo=tz)
    try:
        ledger.correct(ctx.db, a.shift, t(a.start), t(a.end), a.note or "", ctx.args.actor)
    except LookupError as e:
        raise NotFound(str(e))
    ctx.say("correction entered for shift %s (the original entries stay as they were)" % a.shift)
    return EXIT_OK


def cmd_ledger_purge(ctx: Ctx) -> int:
    from host_sync import ledger
    before = _date_arg("--before", ctx.args.before)
    if before is None:
        raise InvalidInput("--before is YYYY-MM-DD")
    res = ledger.purge(ctx.db, before, ctx.args.actor, ctx.args.apply)
    verb = "purged" if res["applied"] else "would purge"
    ctx.say("%s %d ledger entr%s and %d event(s) from before %s%s"
            % (verb, res["ledger"], "y" if res["ledger"] == 1 else "ies", res["events"], before,
               "" if res["applied"] else " (dry run: add --apply to delete them)"))
    return EXIT_OK


def cmd_audit(ctx: Ctx) -> int:
    rows = ctx.reg.audit_log(subject=ctx.args.subject, limit=ctx.args.limit)
    # a detail may quote a reader (an "unprovisioned" reason stored raw before serve cleaned
    # it): shown without its control characters
    ctx.say(*_table([(r["at"], r["actor"], r["action"], r["subject"], clean(r["detail"], 500))
                     for r in rows],
                    ("WHEN", "WHO", "WHAT", "SUBJECT", "DETAIL")))
    return EXIT_OK


# -- broker and serve -------------------------------------------------------------------------
def host_broker_account(reg: Registry) -> tuple[str, str]:
    """The host service's own broker account (created once, kept in the database)."""
    import secrets as _secrets
    with reg.db.tx():
        pw = reg.db.scalar("SELECT value FROM settings WHERE name = 'broker_host_password'")
        if pw is None:
            pw = _secrets.token_urlsafe(24)
            reg.db.execute("INSERT INTO settings (name, value) VALUES ('broker_host_password', ?)",
                           (pw,))
    return "host", pw


def _accounts(ctx: Ctx) -> tuple[list, list]:
    return _accounts_of(ctx.reg)


def _accounts_of(reg: Registry) -> tuple[list, list]:
    from host_sync import broker
    user, pw = host_broker_account(reg)
    return ([broker.ReaderAccount(rid, site, bpw) for rid, site, bpw in reg.broker_accounts()],
            [broker.HostAccount(user, pw)])


def _site_conf(required: bool = False) -> Any:
    from host_sync import siteconf
    try:
        conf = siteconf.SiteConf.load()
    except siteconf.SiteError as e:
        raise InvalidInput(str(e))
    if conf is None and required:
        from host_sync.paths import config_dir
        raise NotFound("no site set up in %s: run 'host-sync site init' first (or set "
                       "GV_CONFIG_DIR)" % config_dir())
    return conf


def refresh_site_broker(ctx: Ctx) -> str | None:
    """After an account change: the site's broker files rewritten and the broker told. None when
    this host has no site set up (`broker config --out DIR` is then the way)."""
    from host_sync import broker, siteconf
    conf = _site_conf()
    if conf is None:
        return None
    readers, hosts = _accounts(ctx)
    try:
        siteconf.write_broker(conf, readers, hosts)
    except broker.BrokerConfigError as e:
        raise InvalidInput(str(e))
    except OSError as e:  # e.g. a plain user beside a broker folder root set up
        raise InvalidInput("cannot write the broker's files in %s: %s" % (conf.broker_dir, e))
    ctx.reg.audit("broker config written", str(conf.broker_dir), "%d reader account(s)" % len(readers))
    try:
        return siteconf.reload_broker(conf)
    except OSError as e:  # SIGHUP to a broker another user runs
        raise BrokerNotTold("the files are written but the running broker was not told: %s" % e)


class BrokerNotTold(InvalidInput):
    """The broker's files are rewritten, the broker did not take them: something did change."""


def cmd_broker_config(ctx: Ctx) -> int:
    from host_sync import broker
    a = ctx.args
    if a.out is None:
        conf = _site_conf(required=True)
        try:
            done = refresh_site_broker(ctx)
        except BrokerNotTold as e:
            print("WARNING: %s. Reload mosquitto (SIGHUP) as the user it runs as" % e,
                  file=ctx.err)
            return EXIT_PENDING
        ctx.say("broker accounts for %d reader(s) written to %s" % (len(ctx.reg.broker_accounts()),
                                                                   conf.broker_dir), "  " + str(done))
        return EXIT_OK
    readers, hosts = _accounts(ctx)
    tls = None
    if a.cafile or a.certfile or a.keyfile:
        if not (a.cafile and a.certfile and a.keyfile):
            raise InvalidInput("TLS needs --cafile, --certfile and --keyfile together")
        tls = broker.TlsFiles(*(str(Path(f).resolve()) for f in (a.cafile, a.certfile, a.keyfile)))
    try:
        files = broker.write_config(a.out, readers, hosts, port=a.port, tls=tls,
                                    plain_port=a.plain_port, bind=a.bind or "127.0.0.1",
                                    run_as=a.run_as)
    except broker.BrokerConfigError as e:
        raise InvalidInput(str(e))
    ctx.reg.audit("broker config written", a.out, "%d reader account(s)" % len(readers))
    with ctx.db.tx():  # where revoke/remove rewrite the accounts, and how they reload it
        for name, value in (("broker_dir", str(Path(a.out).resolve())),
                            ("broker_reload", a.reload_cmd)):
            if value:
                ctx.db.execute("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT"
                               " (name) DO UPDATE SET value = excluded.value", (name, value))
    ctx.say("mosquitto config for %d reader(s) and the host written to %s" % (len(readers), a.out),
            "run: mosquitto -c %s   (send it SIGHUP after adding readers)" % files.conf)
    return EXIT_OK


# -- this host's site set-up ------------------------------------------------------------------
def cmd_site_services(ctx: Ctx) -> int:
    from host_sync import paths, units
    a = ctx.args
    conf = _site_conf(required=True)
    db_url = ctx.args.db or os.environ.get("GV_DB") or None
    if not db_url and ctx.args.data_dir:
        db_url = ctx.db.url  # an explicit --data-dir: the service uses the same file
    unit_dir = Path(a.unit_dir) if a.unit_dir else paths.unit_dir()
    written = units.write(conf, unit_dir, db_url)
    ctx.reg.audit("services written", str(unit_dir), ", ".join(p.name for p in written))
    ctx.say("systemd units written: %s" % ", ".join(str(p) for p in written))
    run = [units.systemctl("daemon-reload"),
           units.systemctl("enable", "--now", units.BROKER_UNIT, units.SERVE_UNIT)]
    staged = a.unit_dir or os.environ.get("GV_UNIT_DIR")  # not where systemd looks: only say
    if staged or a.no_enable or not units.systemd_running():
        if not staged and not a.no_enable:
            ctx.say("systemd is not running here; on the site host run:")
        else:
            ctx.say("to start them now and at every boot:")
        ctx.say(*("  " + " ".join(c) for c in run))
        if not paths.is_root():
            ctx.say("  loginctl enable-linger %s   (user services start at boot, not at login)"
                    % _user())
        ctx.say("without systemd, start them yourself:",
                "  " + units.parse(units.units(conf, db_url)[0].text)["Service"]["ExecStart"][0],
                "  " + units.serve_shell(conf))
        return EXIT_OK
    for cmd, rc, out in units.enable():
        ctx.say("  %s: %s" % (" ".join(cmd), "ok" if rc == 0 else "FAILED (%d) %s" % (rc, out)))
        if rc:
            return EXIT_ERROR
    ctx.say("both services run now and at every boot; check them: host-sync status, "
            "journalctl -u %s -u %s" % (units.BROKER_UNIT, units.SERVE_UNIT))
    return EXIT_OK



def _broker_names(a: argparse.Namespace) -> None:
    """--address/--name checked by the one rule (ids.address_problem), naming the option, before
    anything is written: a typo like 192.168.10.300 would go into the certificate and every
    reader's config."""
    for option, values in (("--address", a.address), ("--name", a.name)):
        for v in values or []:
            ids.broker_address(v, option)


def cmd_site_init(ctx: Ctx) -> int:
    from host_sync import broker, pki, siteconf
    a = ctx.args
    _broker_names(a)
    if a.run_as:  # before anything is written (as root it was found missing only after)
        import pwd
        try:
            pwd.getpwnam(a.run_as)
        except KeyError:
            raise InvalidInput("--run-as %s: no such user on this host" % a.run_as) from None
    try:
        siteconf.mosquitto_bin()
        old = siteconf.SiteConf.load()
        conf = siteconf.init(a.name or [], a.address or [], a.bind, a.port, force=a.new_ca,
                             host_port=a.host_port or (old.host_port if old else None))
        if a.run_as is not None:
            conf.run_as = a.run_as or None
            conf.save()
        elif old is not None and old.run_as and old.run_as != conf.run_as:
            conf.run_as = old.run_as
            conf.save()
        readers, hosts = _accounts(ctx)
        files = siteconf.write_broker(conf, readers, hosts)
    except KeyError as e:  # pwd: str() of a KeyError is its message in quotes
        raise InvalidInput(str(e.args[0]) if e.args else "no such user") from None
    except (siteconf.SiteError, pki.PkiError, broker.BrokerConfigError) as e:
        # said as it is: stripping quotes off every message cut the opening one of "'gate host'"
        raise InvalidInput(str(e)) from None
    ca = conf.pki.info(conf.pki.ca_pem)
    srv = conf.pki.info(conf.pki.server_pem)
    ctx.reg.audit("site set up", str(conf.dir), "names %s, port %d" % (",".join(conf.names), conf.port))
    listen = ", ".join("%s:%d" % (b, conf.port) for b in conf.bind) if conf.bind else \
        "every address, port %d" % conf.port
    ctx.say("site set up in %s" % conf.dir,
            "  site CA        %s (%s, until %s)%s" % (conf.pki.ca_pem, ca.fingerprint[:16],
                                                      ca.not_after.date(),
                                                      " kept" if old and not a.new_ca else ""),
            "  broker cert    %s for %s (until %s)" % (conf.pki.server_pem, ", ".join(srv.names),
                                                        srv.not_after.date()),
            "  mosquitto      %s: TLS on %s, %d reader account(s); the host's own on "
            "127.0.0.1:%s" % (files.conf, listen, len(readers), conf.host_port),
            "                 runs as %s%s" % (conf.run_as or "root",
                                               " (its files are group %s)" % conf.run_as
                                               if conf.owner()[1] is not None else ""),
            "  registry       %s" % redact(ctx.db.url),
            "  readers get    broker %s:%d, CA %s" % (conf.reader_host, conf.port, conf.trust))
    if conf.run_as is None and siteconf.paths.is_root():
        ctx.say("  warning: there is no user 'mosquitto': the broker will run as root")
    ctx.say("next:",
            "  1. start the broker and the sync service at boot:  host-sync site services",
            "  2. add the site:     host-sync sites add SITE --name NAME --tax-id ID",
            "  3. add each reader:  GV_WIFI_PASSWORD=... host-sync readers add gate-01 --site SITE "
            "--wifi-ssid SSID --config-out gate-01.json",
            "  4. deploy it:        make deploy PORT=/dev/ttyUSB0 BOARD=boards/<board>.json "
            "READER=gate-01.json",
            "  5. import the cards: host-sync cards import cards.csv --site SITE --apply")
    return EXIT_OK


def cmd_site_show(ctx: Ctx) -> int:
    conf = _site_conf(required=True)
    p = conf.pki
    ca = p.info(p.ca_pem)
    srv = p.info(p.server_pem)
    ctx.say("site config     %s" % conf.dir,
            "site CA         %s, until %s (%d days), sha256 %s" % (ca.subject, ca.not_after.date(),
                                                                 ca.days_left(), ca.fingerprint),
            "readers trust   %s (%d CA(s)%s)" % (p.trust_pem, p.trust_count(),
                                                   ", a roll is under way" if p.rolling() else ""),
            "broker cert     %s, until %s (%d days)" % (", ".join(srv.names), srv.not_after.date(),
                                                        srv.days_left()),
            "broker          %s (%s:%d)" % (conf.conf_path, ",".join(conf.bind) if conf.bind
                                            else "all addresses", conf.port),
            "readers told    %s:%d" % (conf.reader_host, conf.port),
            "registry        %s" % redact(ctx.db.url))
    return EXIT_OK


def cmd_site_renew_cert(ctx: Ctx) -> int:
    from host_sync import pki, siteconf
    _broker_names(ctx.args)
    conf = _site_conf(required=True)
    names = list(dict.fromkeys((ctx.args.address or []) + (ctx.args.name or []))) or None
    try:
        info = conf.pki.issue_server(names)
        if names:
            conf.names = names
            conf.save()
        siteconf.write_broker(conf, *_accounts(ctx))
    except pki.PkiError as e:
        raise InvalidInput(str(e))
    ctx.reg.audit("broker certificate renewed", str(conf.pki.server_pem), ",".join(info.names))
    ctx.say("broker certificate renewed for %s, until %s" % (", ".join(info.names),
                                                            info.not_after.date()),
            "  " + siteconf.reload_broker(conf, restart=True),
            "  readers need nothing: they trust the site CA, not this certificate")
    return EXIT_OK


def cmd_site_roll_ca(ctx: Ctx) -> int:
    from host_sync import pki, siteconf
    conf = _site_conf(required=True)
    try:
        if ctx.args.finish:
            info = conf.pki.roll_finish()
            siteconf.write_broker(conf, *_accounts(ctx))
        else:
            info = conf.pki.roll_begin("grindvakt site CA (%s, rolled)" % conf.names[0])
            siteconf.write_broker(conf, *_accounts(ctx))
    except pki.PkiError as e:
        raise InvalidInput(str(e))
    if ctx.args.finish:
        ctx.reg.audit("site CA roll finished", str(conf.pki.ca_pem), info.fingerprint)
        ctx.say("the new CA (sha256 %s) now signs the broker's certificate; %s holds only it"
                % (info.fingerprint[:16], conf.trust),
                "  " + siteconf.reload_broker(conf, restart=True),
                "  readers deployed during the roll trust it already; redeploy the others")
    else:
        ctx.reg.audit("site CA roll begun", str(conf.pki.next_pem), info.fingerprint)
        ctx.say("next CA made (sha256 %s); %s now holds the old and the new CA"
                % (info.fingerprint[:16], conf.trust),
                "  1. give every reader the new trust file: host-sync readers config READER "
                "--config-out FILE, then deploy it",
                "  2. when all are done: host-sync site roll-ca --finish")
    return EXIT_OK


def cmd_serve(ctx: Ctx) -> int:
    try:
        from host_sync import serve
    except ImportError as e:
        print("serve is not available: %s" % e, file=ctx.err)
        return EXIT_ERROR
    return serve.run(ctx)


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="host-sync",
        description="grindvakt host: the card registry, the gate readers, the staff ledger and "
                    "the sync service that pushes card changes to every reader.",
        epilog="Exit codes: 0 done, 1 unexpected error, 2 bad command line, 3 refused (card rule "
               "or bad input; nothing changed), 4 not found, 5 readers still pending, "
               "6 database unavailable, 7 some rows refused (the rest done). The database is a SQLite file in --data-dir (default "
               "/var/lib/grindvakt as root, else ~/.local/share/grindvakt; env GV_DATA) or "
               "PostgreSQL given by --db postgresql://... (env GV_DB); a new, empty registry is "
               "announced when one is created.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help="database URL: postgresql://user@host/db or sqlite:///path "
                                "(env GV_DB)")
    p.add_argument("--data-dir", help="folder for the SQLite database (env GV_DATA; default "
                                      "/var/lib/grindvakt as root, ~/.local/share/grindvakt else)")
    p.add_argument("--as", dest="actor", default=os.environ.get("GV_OPERATOR") or _user(),
                   help="who is making the change, for the audit log (env GV_OPERATOR; default "
                        "your login name)")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail and debug logs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    top = p.add_subparsers(dest="area", metavar="AREA", required=True)

    # sites
    sp = top.add_parser("sites", help="construction sites").add_subparsers(dest="cmd", required=True)
    x = sp.add_parser("add", help="add a site; its card and PIN keys are generated")
    x.add_argument("site", help="short site id used everywhere, e.g. site-a")
    x.add_argument("--name", help="the site's name as people say it")
    x.add_argument("--tax-id", required=True,
                   help="the site's ID number from the tax agency (byggarbetsplats-ID); the "
                        "staff ledger is kept under it")
    x.add_argument("--pin-policy", default="card", choices=("never", "card", "always"),
                   help="when gates ask for a PIN: never, when the card says so (default), always")
    x.add_argument("--tz", help="the site's time zone for ledger days and every time shown "
                                "(default %s)" % DEFAULT_TZ)
    x.set_defaults(fn=cmd_sites_add)
    x = sp.add_parser("list", help="list sites")
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_sites_list)
    x = sp.add_parser("edit", help="change a site's name, tax agency ID number or time zone "
                                   "(its id stays: readers' topics use it)")
    x.add_argument("site")
    x.add_argument("--name")
    x.add_argument("--tax-id", help="new ledger entries use it; entries already made keep theirs")
    x.add_argument("--tz", help="e.g. Europe/Stockholm or UTC")
    x.set_defaults(fn=cmd_sites_edit)
    x = sp.add_parser("rename", help="give a site a new name (its id stays)")
    x.add_argument("site")
    x.add_argument("new_name")
    x.set_defaults(fn=cmd_sites_edit)
    x = sp.add_parser("remove", help="remove a site without readers (a dry run unless --apply); "
                                     "its cards stay in the registry, its ledger and events are kept")
    x.add_argument("site")
    x.add_argument("--apply", action="store_true", help="remove it (default: say what would happen)")
    x.set_defaults(fn=cmd_sites_remove)
    x = sp.add_parser("rotate-keys", help="give a site a new card key (and with --pin a new PIN "
                      "key): every reader is rebuilt under it, the old keys go once all applied it")
    x.add_argument("site")
    x.add_argument("--pin", action="store_true", help="the PIN key too: this clears every PIN "
                   "of the site (refused without --yes)")
    x.add_argument("--yes", action="store_true", help="with --pin: yes, clear the site's PINs")
    x.set_defaults(fn=cmd_sites_rotate_keys)

    # cards
    cp = top.add_parser("cards", help="staff cards: add, import, activate, block, ...")
    cs = cp.add_subparsers(dest="cmd", required=True)
    x = cs.add_parser("add", help="add one card (inactive until activated)")
    x.add_argument("card_number", help="BB-YYMM-NNNNNN as printed on the card")
    x.add_argument("--uid", help="the card's UID in hex as the reader sees it (leading zeros kept)")
    x.add_argument("--holder", help="the holder's name")
    x.add_argument("--pnr", help="the holder's personal identity number YYYYMMDD-NNNN")
    x.add_argument("--employer", help="the employer (contractor) name")
    x.add_argument("--org-no", help="the employer's organisation number NNNNNN-NNNN")
    x.add_argument("--site", action="append", help="a site the card may enter (repeatable)")
    x.add_argument("--pin-required", action="store_true", help="gates ask this card for its PIN")
    x.add_argument("--valid-from", help="YYYY-MM-DD (default today)")
    x.add_argument("--valid-until", help="YYYY-MM-DD (default five years after valid-from)")
    x.add_argument("--visitor", action="store_true",
                   help="a visitor card (refused: visitor cards carry no RFID)")
    x.set_defaults(fn=cmd_cards_add)
    for cmd, text in (("activate", "activate a new (inactive) card"),
                      ("block", "block an active card (it can be unblocked later)"),
                      ("unblock", "reactivate a blocked card"),
                      ("terminate", "terminate a card for good (it never comes back)"),
                      ("suspend", "suspend an active card while its card fee is unpaid"),
                      ("resume", "reactivate a suspended card once the fee is paid")):
        x = cs.add_parser(cmd, help=text, description=text + ". The change is pushed to every "
                          "reader of the card's sites; follow it with 'host-sync status'.")
        x.add_argument("card_number", help="BB-YYMM-NNNNNN")
        x.add_argument("--note", help="why (kept in the audit log)")
        x.set_defaults(fn=_cmd_status(cmd))
    x = cs.add_parser("add-site", help="let a card enter one more site")
    x.add_argument("card_number")
    x.add_argument("site")
    x.set_defaults(fn=cmd_cards_add_site)
    x = cs.add_parser("remove-site", help="the card may no longer enter a site")
    x.add_argument("card_number")
    x.add_argument("site")
    x.set_defaults(fn=cmd_cards_remove_site)
    x = cs.add_parser("edit", help="change a card's holder, identity number, employer, validity "
                                   "dates or UID (a new chip under the same card number)")
    x.add_argument("card_number")
    x.add_argument("--holder")
    x.add_argument("--pnr", help="YYYYMMDD-NNNN")
    x.add_argument("--employer")
    x.add_argument("--org-no", help="NNNNNN-NNNN")
    x.add_argument("--valid-from", help="YYYY-MM-DD")
    x.add_argument("--valid-until", help="YYYY-MM-DD")
    x.add_argument("--uid", help="the new chip's UID in hex (PINs must then be set again)")
    x.add_argument("--note", help="why (kept in the audit log)")
    x.set_defaults(fn=cmd_cards_edit)
    x = cs.add_parser("replace", help="a replacement card for a broken or lost one: same person, "
                                      "employer and sites; the old card is terminated")
    x.add_argument("card_number", help="the card being replaced")
    x.add_argument("new_card_number")
    x.add_argument("--uid", help="the new card's UID in hex")
    x.add_argument("--valid-from", help="YYYY-MM-DD (default today)")
    x.add_argument("--valid-until", help="YYYY-MM-DD (default five years after valid-from)")
    x.add_argument("--note", help="why (kept in the audit log)")
    x.set_defaults(fn=cmd_cards_replace)
    x = cs.add_parser("show", help="one card, its sites and its history")
    x.add_argument("card_number")
    x.add_argument("--json", action="store_true")
    x.add_argument("--history", type=int, default=20, help="history entries shown (default 20)")
    x.add_argument("--tz", help="time zone for times (default: the card's first site's)")
    x.set_defaults(fn=cmd_cards_show)
    x = cs.add_parser("list", help="list cards")
    x.add_argument("--site")
    x.add_argument("--status", help="only cards with this status")
    x.add_argument("--search", help="part of a name, employer or card number")
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_cards_list)
    x = cs.add_parser("set-pin", help="set a card's PIN (asked without echo; only a verifier is kept)")
    x.add_argument("card_number")
    x.add_argument("--site", help="only at this site (default: all the card's sites)")
    x.add_argument("--pin-stdin", action="store_true", help="read the PIN from standard input "
                   "(for scripts; never put a PIN on the command line)")
    x.set_defaults(fn=cmd_cards_set_pin)
    x = cs.add_parser("import", help="import a card-portal export (CSV); a dry run unless --apply",
                      description="Compare a CSV card list with the registry and show the "
                                  "difference; --apply makes it in one go. A bad row is "
                                  "reported with its line number and nothing is applied.",
                      epilog=_import_columns(), formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("file", help="the CSV file")
    x.add_argument("--site", help="add every card in the file to this site")
    x.add_argument("--apply", action="store_true", help="make the changes (default: dry run)")
    x.add_argument("--map", action="append", metavar="HEADER=COLUMN",
                   help="read the file's HEADER as COLUMN (repeatable, or comma-separated), e.g. "
                        "Kortnummer=card_number; HEADER=- ignores a column")
    x.add_argument("--encoding", help="the file's encoding when it is not UTF-8 (e.g. latin-1)")
    x.set_defaults(fn=cmd_cards_import)

    # readers
    rp = top.add_parser("readers", help="gate readers").add_subparsers(dest="cmd", required=True)

    def config_opts(x: argparse.ArgumentParser) -> None:
        from gv.configcheck import GATE_RANGES
        x.add_argument("--broker-host", help="the broker's address on the site network, as the "
                                             "reader reaches it (default: the one 'site init' "
                                             "recorded; required without a site)")
        x.add_argument("--broker-port", type=int, help="1..65535 (default: the site's, else 8883)")
        x.add_argument("--no-tls", action="store_true", help="plain MQTT (test benches only)")
        x.add_argument("--ca", help="the broker's CA certificate(s) (PEM) the reader pins "
                       "(default: the site's trust file)")
        x.add_argument("--wifi-ssid", help="Wi-Fi network (password from env GV_WIFI_PASSWORD)")
        x.add_argument("--wifi-open", action="store_true",
                       help="the Wi-Fi network has no password (never assumed from an empty one)")
        x.add_argument("--virtual", action="store_true",
                       help="for a virtual board on this host: a loopback broker and no Wi-Fi "
                            "are allowed (a real reader refuses such a config)")
        for opt, default, text in (("hold", 500, "how long a card must be held"),
                                   ("open", 3000, "how long the door stays open")):
            lo, hi, _ = GATE_RANGES[opt + "_ms"]
            x.add_argument("--%s-ms" % opt, type=int, default=default,
                           help="%s, %d..%d ms (default %d)" % (text, lo, hi, default))

    x = rp.add_parser("add", help="add a reader: issues its secret and broker account")
    x.add_argument("reader_id", help="e.g. gate-01")
    x.add_argument("--site", required=True)
    x.add_argument("--config-out", help="write the reader's config.json here (mode 0600)")
    config_opts(x)
    x.set_defaults(fn=cmd_readers_add)
    x = rp.add_parser("config", help="(re)write a reader's config.json")
    x.add_argument("reader_id")
    x.add_argument("--config-out", required=True)
    config_opts(x)
    x.set_defaults(fn=cmd_readers_config)
    x = rp.add_parser("rename", help="give a reader a new id (new secret and broker account: "
                                     "write and deploy its new config)")
    x.add_argument("reader_id")
    x.add_argument("new_id")
    x.set_defaults(fn=cmd_readers_rename)
    def broker_opts(x: argparse.ArgumentParser) -> None:
        x.add_argument("--broker-dir", help="the broker's config folder (default: where 'broker "
                                            "config --out' last wrote it)")
        x.add_argument("--broker-pid", type=int, help="reload mosquitto by SIGHUP to this pid")
        x.add_argument("--reload-cmd", help="reload mosquitto with this command (default: the "
                                            "one given to 'broker config')")

    x = rp.add_parser("revoke", help="cut a reader off at once (stolen, lost): secret and broker "
                                     "account deleted, its messages refused",
                      description="Revoke a reader: its secret and broker password are deleted "
                      "from the registry, the broker's passwd/acl are rewritten and mosquitto "
                      "reloaded (it disconnects the reader), every serve drops its session within "
                      "a second, its queued commands fail, and the audit log records who and why. "
                      "Exit 5 if the broker could not be reloaded (do it by hand).")
    x.add_argument("reader_id")
    x.add_argument("--reason", required=True, help="why (goes in the audit log)")
    broker_opts(x)
    x.set_defaults(fn=cmd_readers_revoke)
    x = rp.add_parser("rotate", help="give a reader a new secret and broker password (a signed "
                                     "command; the old pair stops working at the switch)")
    x.add_argument("reader_id")
    x.set_defaults(fn=cmd_readers_rotate)
    x = rp.add_parser("remove", help="delete a reader (revoked first if it is not); its events "
                                     "stay")
    x.add_argument("reader_id")
    x.add_argument("--reason", default="", help="why (required unless it is already revoked)")
    broker_opts(x)
    x.set_defaults(fn=cmd_readers_remove)
    x = rp.add_parser("list", help="readers: online, applied version, lag, last seen, health")
    x.add_argument("--site")
    x.add_argument("--lag-limit", type=float, default=DEFAULT_LAG_LIMIT_S,
                   help="seconds a reader may lag a block before it is flagged (default 60)")
    x.add_argument("--check", action="store_true", help="exit 5 when any reader lags")
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_readers_list)
    x = rp.add_parser("show", help="one reader: every health figure and when it was reported, "
                                   "memory at boot, Wi-Fi, TLS and the rebuild peak")
    x.add_argument("reader_id")
    x.add_argument("--lag-limit", type=float, default=DEFAULT_LAG_LIMIT_S, help=argparse.SUPPRESS)
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_readers_show)

    x = rp.add_parser("command", help="send a reader a remote command (via host-sync serve)",
                      description="Queue a remote command for one reader; 'host-sync serve' sends "
                      "it, authenticated like a card change, as soon as the reader is connected. "
                      "open: open the door once; clear-lockout: lift the reader's lockouts; "
                      "resync: drop its allowlist and rebuild it; set-clock [TIME]: set its "
                      "clock (default: the host's time when sent); reboot. Exit codes with "
                      "--wait: 0 done, 5 still pending, 3 failed or expired, 4 no such reader.")
    x.add_argument("reader_id")
    x.add_argument("command", choices=("open", "clear-lockout", "resync", "set-clock", "reboot"))
    x.add_argument("arg", nargs="?", help="set-clock only: 2026-11-29T03:40:00Z or seconds since "
                                          "2020-01-01 UTC")
    x.add_argument("--wait", type=float, metavar="SECONDS",
                   help="wait up to SECONDS for the reader's answer")
    x.add_argument("--expire", type=float, metavar="SECONDS",
                   help="give up if the reader is not reached within SECONDS (default 30 for "
                        "open, 300 for the others)")
    x.set_defaults(fn=cmd_readers_command)
    x = rp.add_parser("commands", help="recent remote commands and their outcome")
    x.add_argument("reader_id", nargs="?")
    x.add_argument("--limit", type=int, default=20)
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_readers_commands)

    x = top.add_parser("status", help="which readers applied a change, which not and since when; "
                                      "alone: is the sync service up and connected",
                       description="With a change: which readers applied it (exit 5 while any "
                       "has not). Alone: each sync service instance and its link to the broker, "
                       "with the reason when it cannot connect (exit 5 when no running instance "
                       "is connected).")
    x.add_argument("change", nargs="?", help="SITE:VERSION (printed by every change), VERSION "
                                             "with --site, or a card number for its latest change "
                                             "(at --site if given)")
    x.add_argument("--site")
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_status)

    ep = top.add_parser("events", help="the readers' access events").add_subparsers(dest="cmd",
                                                                                      required=True)
    x = ep.add_parser("export", help="export events as CSV")
    x.add_argument("--site", required=True)
    x.add_argument("--from", dest="from_", help="first day YYYY-MM-DD (default today)")
    x.add_argument("--to", help="last day YYYY-MM-DD (default = --from)")
    x.add_argument("--format", default="csv", choices=("csv",))
    x.add_argument("--tz", help="time zone for days and times (default: the site's)")
    x.add_argument("--out", help="file to write (default: standard output)")
    x.set_defaults(fn=cmd_events_export)

    lp = top.add_parser("ledger", help="the staff ledger (personalliggare)").add_subparsers(
        dest="cmd", required=True)
    x = lp.add_parser("show", help="one day's shifts on screen (for an inspection)")
    x.add_argument("--site", required=True)
    x.add_argument("--day", default="today", help="YYYY-MM-DD (default today)")
    x.add_argument("--tz", help="time zone (default: the site's, see sites edit --tz)")
    x.set_defaults(fn=cmd_ledger_show)
    x = lp.add_parser("export", help="shifts as CSV or a printable HTML page")
    x.add_argument("--site", required=True)
    x.add_argument("--from", dest="from_", help="first day YYYY-MM-DD (default today)")
    x.add_argument("--to", help="last day YYYY-MM-DD (default = --from)")
    x.add_argument("--format", default="csv", choices=("csv", "html"))
    x.add_argument("--tz", help="time zone (default: the site's, see sites edit --tz)")
    x.add_argument("--out", help="file to write (default: standard output)")
    x.set_defaults(fn=cmd_ledger_export)
    x = lp.add_parser("correct", help="correct a shift's start or end (a new entry; nothing is "
                                      "edited)")
    x.add_argument("shift", help="the shift id (last column of 'ledger export')")
    x.add_argument("--start", help="'YYYY-MM-DD HH:MM' local time")
    x.add_argument("--end", help="'YYYY-MM-DD HH:MM' local time")
    x.add_argument("--note", required=True, help="why")
    x.add_argument("--tz", help="time zone (default: the site's, see sites edit --tz)")
    x.set_defaults(fn=cmd_ledger_correct)
    x = lp.add_parser("purge", help="delete ledger entries and events older than the retention "
                                    "period (two years after the end of the calendar year)")
    x.add_argument("--before", required=True, help="YYYY-MM-DD; refused if rows still must be kept")
    x.add_argument("--apply", action="store_true", help="delete (default: count only)")
    x.set_defaults(fn=cmd_ledger_purge)

    x = top.add_parser("audit", help="the audit log: who changed what, when")
    x.add_argument("--subject", help="a card number, reader or site")
    x.add_argument("--limit", type=int, default=50)
    x.set_defaults(fn=cmd_audit)

    bp = top.add_parser("broker", help="the MQTT broker").add_subparsers(dest="cmd", required=True)
    x = bp.add_parser("config", help="write mosquitto's passwd and acl for every reader (and "
                                     "reload it)", description="Without --out: rewrite the "
                      "site's broker accounts (set up by 'host-sync site init') and make the "
                      "running broker reread them. With --out: a stand-alone config in DIR.")
    x.add_argument("--out", help="folder for a stand-alone config (default: the site's broker)")
    x.add_argument("--port", type=int, default=8883)
    x.add_argument("--bind", action="append", help="with --out: address to listen on "
                                                   "(repeatable; default 127.0.0.1)")
    x.add_argument("--plain-port", type=int, help="an extra plain listener (loopback host only)")
    x.add_argument("--run-as", help="with --out: the user mosquitto drops to when started as root")
    x.add_argument("--cafile")
    x.add_argument("--certfile")
    x.add_argument("--keyfile")
    x.add_argument("--reload-cmd", help="how revoke/remove reload mosquitto later, e.g. "
                                        "'systemctl reload mosquitto' (kept in the registry)")
    x.set_defaults(fn=cmd_broker_config)

    sp = top.add_parser("site", help="this host's set-up: site CA, broker certificate and "
                                     "config, services").add_subparsers(dest="cmd", required=True)
    x = sp.add_parser("init", help="create the site CA, the broker's certificate and its "
                                   "mosquitto config (run once per host)",
                      description="Creates the site CA and the broker's TLS certificate (for "
                      "the addresses and names readers use, plus localhost), and a mosquitto "
                      "config with absolute paths: TLS only, every registry account, files "
                      "readable by the user mosquitto runs as. Rerunning keeps the CA (readers "
                      "stay valid) and reissues the rest. Files go to GV_CONFIG_DIR, "
                      "/etc/grindvakt as root, ~/.config/grindvakt otherwise.")
    x.add_argument("--address", action="append", help="an IP address readers reach this host "
                   "at (repeatable; the first is written into readers' configs)")
    x.add_argument("--name", action="append", help="a DNS name readers reach this host by "
                   "(repeatable; default this host's name when no --address is given)")
    x.add_argument("--bind", action="append", help="listen only on this address (repeatable; "
                   "default every address); 127.0.0.1 is added for the host's own service")
    x.add_argument("--port", type=int, default=8883, help="the broker's TLS port (8883)")
    x.add_argument("--host-port", type=int, help="the host service's own listener on 127.0.0.1 "
                   "(default --port + 1): readers' client ids are bound to their accounts on "
                   "--port, host-side clients share the host account here")
    x.add_argument("--run-as", help="the user mosquitto runs as (default: 'mosquitto' as root, "
                   "else you)")
    x.add_argument("--new-ca", action="store_true", help="replace the site CA (every reader "
                   "must be redeployed; to change it without a cut use 'site roll-ca')")
    x.set_defaults(fn=cmd_site_init)
    x = sp.add_parser("services", help="systemd units for the broker and the sync service "
                                       "(started at boot, restarted on failure)",
                      description="Writes grindvakt-mosquitto.service and grindvakt-serve.service "
                      "(system units as root, user units otherwise), then daemon-reload and "
                      "enable --now them where systemd runs; elsewhere says what to run.")
    x.add_argument("--unit-dir", help="write the units here and only say what to run")
    x.add_argument("--no-enable", action="store_true", help="write the units, do not enable them")
    x.set_defaults(fn=cmd_site_services)
    x = sp.add_parser("show", help="the site's certificates, broker and registry")
    x.set_defaults(fn=cmd_site_show)
    x = sp.add_parser("renew-cert", help="a new broker certificate from the site CA")
    x.add_argument("--address", action="append", help="new addresses (default: the current ones)")
    x.add_argument("--name", action="append", help="new DNS names (default: the current ones)")
    x.set_defaults(fn=cmd_site_renew_cert)
    x = sp.add_parser("roll-ca", help="replace the site CA without cutting readers off (two steps)",
                      description="Step 1 (no option): make the next CA; the readers' trust file "
                      "then holds both, so redeploy every reader's config. Step 2 (--finish): "
                      "the new CA signs the broker's certificate and the old one is dropped.")
    x.add_argument("--finish", action="store_true", help="step 2, once every reader trusts both")
    x.set_defaults(fn=cmd_site_roll_ca)

    x = top.add_parser("serve", help="run the sync service: push changes, collect events")
    x.add_argument("--broker-host", default="127.0.0.1")
    x.add_argument("--broker-port", type=int, help="default: the site's ('site init'), else 8883")
    x.add_argument("--tls-ca", help="CA certificate(s) of the broker (TLS; default: the site's "
                                    "trust file); plain MQTT without it and without a site")
    x.add_argument("--plain", action="store_true", help="plain MQTT even when a site is set up")
    x.add_argument("--broker-user", default="host")
    x.add_argument("--broker-password-env", default="GV_BROKER_PASSWORD",
                   help="environment variable holding the broker password (default: "
                        "GV_BROKER_PASSWORD, else the one 'broker config' generated)")
    x.add_argument("--group", default="grindvakt",
                   help="shared-subscription group: instances in one group split the work")
    x.add_argument("--instance", help="this instance's name (default host name + pid)")
    x.add_argument("--lag-limit", type=float, default=DEFAULT_LAG_LIMIT_S,
                   help="seconds a reader may lag a block before it is flagged (default 60)")
    x.add_argument("--poll", type=float, default=0.1,  # serve.DEFAULT_POLL_S
                   help="seconds between looks for new registry versions (default 0.1)")
    x.set_defaults(fn=cmd_serve)

    from host_sync import webcli  # web, users, alarms: the console's commands
    webcli.add_parsers(top)
    return p


def _import_columns() -> str:
    from host_sync import importer
    return "CSV columns:\n" + importer.__doc__.split("Columns", 1)[1].split("\n", 1)[1]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


_GLOBAL_WITH_VALUE = ("--db", "--data-dir", "--as")
# every TCP port option of every command (dest: option), checked once in main() before the
# command runs: out of range, uvicorn and paho fail with a traceback or retry forever
PORT_OPTIONS = {"port": "--port", "host_port": "--host-port", "plain_port": "--plain-port",
                "broker_port": "--broker-port", "smtp_port": "--smtp-port",
                "mqtt_port": "--mqtt-port"}


def check_ports(args: argparse.Namespace) -> None:
    for dest, option in PORT_OPTIONS.items():
        v = getattr(args, dest, None)
        if v is not None and not 0 < v < 65536:
            raise InvalidInput("%s %d is outside 1-65535" % (option, v))


def _globals_first(argv: Sequence[str]) -> list[str]:
    """Let `--db/--data-dir/--as` also come after the command (`host-sync cards list --db X`)."""
    front: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        name = a.split("=", 1)[0]
        if name in _GLOBAL_WITH_VALUE:
            front.append(a)
            if "=" not in a:
                nxt = next(it, None)
                if nxt is not None:
                    front.append(nxt)
        elif a == "--":
            rest.append(a)
            rest.extend(it)
        else:
            rest.append(a)
    return front + rest


def main(argv: Sequence[str] | None = None, out: Any = None, err: Any = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(_globals_first(sys.argv[1:] if argv is None else list(argv)))
    except SystemExit as e:
        return int(e.code or 0)
    level = logging.DEBUG if args.verbose else (logging.INFO if args.area == "serve"
                                                else logging.WARNING)
    logging.basicConfig(level=level, stream=err,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ctx = Ctx(args, out, err)
    try:
        check_ports(args)
        return int(args.fn(ctx))
    except NotFound as e:
        print("not found: %s" % e, file=err)
        return EXIT_NOT_FOUND
    except InvalidInput as e:
        print("refused: %s" % e, file=err)
        return EXIT_REFUSED
    except DbError as e:
        print("database: %s" % e, file=err)
        return EXIT_DB
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug: say so plainly, with the traceback in the log
        log.exception("unexpected error")
        print("error: %s: %s (database %s)" % (type(e).__name__, e,
                                                redact(resolve_url(args.db, args.data_dir))),
              file=err)
        return EXIT_ERROR
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
