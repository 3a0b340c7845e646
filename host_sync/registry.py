"""The operators' card registry: sites, cards, readers, the audit log and the versioned
allowlist of every site.

Every change that alters what a gate should decide (a card added to a site, a status change,
a new PIN) bumps the site's allowlist version in the same transaction that changes the card,
and stores the delta: the 16-byte records (gv.allowlist.record, the one codec the readers use)
of the cards that changed. Records carry only the keyed hash of the UID, the status, flags,
validity dates and the PIN verifier: no name or personal identity number ever reaches a reader.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from gv.allowlist import record as rec_codec

from host_sync import ids, rules
from host_sync.db import Db
from host_sync.ids import InvalidInput
from host_sync.timeutil import add_years, days_since_2020, now, now_iso

STATUS_CODE = {rules.ACTIVE: rec_codec.ACTIVE, rules.INACTIVE: rec_codec.INACTIVE,
               rules.BLOCKED: rec_codec.BLOCKED, rules.TERMINATED: rec_codec.TERMINATED,
               rules.SUSPENDED: rec_codec.SUSPENDED}
# Changes that take access away: a reader still behind one of these is flagged when it lags.
BLOCKING = {"block", "terminate", "suspend"}
PIN_POLICIES = ("never", "card", "always")
# At most this many records per allowlist version, so every version fits one DELTA message
# (2048 bytes, docs/protocol.md); a bigger batch (an import) becomes several versions.
VERSION_MAX_RECORDS = 100

CARD_COLS = ("card_no", "uid", "holder", "pnr", "employer", "employer_org", "status",
             "pin_required", "valid_from", "valid_until", "created_at", "updated_at")
EDITABLE = ("holder", "pnr", "employer", "employer_org", "valid_from", "valid_until", "uid")
READER_COLS = ("id", "site_id", "firmware", "applied_version", "applied_at", "last_seen",
               "online", "health", "lag_since", "created_at")


class NotFound(LookupError):
    """No such card, site, reader or change (CLI exit code 4)."""


@dataclass
class CardInput:
    """One card as an operator or a card-portal export gives it (already validated)."""
    card_no: str
    uid: str
    holder: str = ""
    pnr: str = ""
    employer: str = ""
    employer_org: str = ""
    status: str = rules.INACTIVE
    pin_required: bool = False
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None
    sites: tuple[str, ...] = ()


class Registry:
    def __init__(self, db: Db, actor: str = "operator"):
        self.db = db
        self.actor = actor
        self._keyers: dict[str, rec_codec.Keyer] = {}

    # -- audit ------------------------------------------------------------------------------
    def audit(self, action: str, subject: str, detail: str = "") -> None:
        """Append-only: who, when, what. Never holds a PIN or a secret."""
        self.db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                        (now_iso(), self.actor, action, subject, detail))

    def audit_many(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Several entries at once: [(action, subject, detail)] (an import's per-card history)."""
        at = now_iso()
        self.db.executemany("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                            [(at, self.actor, a, s, d) for a, s, d in rows])

    def audit_log(self, subject: str | None = None, limit: int = 100) -> list[dict]:
        sql = "SELECT at, actor, action, subject, detail FROM audit"
        args: tuple = ()
        if subject:
            sql += " WHERE subject = ?"
            args = (subject,)
        rows = self.db.all(sql + " ORDER BY id DESC LIMIT %d" % int(limit), args)
        return [dict(zip(("at", "actor", "action", "subject", "detail"), r)) for r in rows]

    # -- sites ------------------------------------------------------------------------------
    def add_site(self, site_id: str, name: str, tax_site_id: str, pin_policy: str = "card",
                 tz: str = ids.DEFAULT_TZ) -> dict:
        site_id = ids.site_id(site_id)
        tz = ids.time_zone(tz)
        if pin_policy not in PIN_POLICIES:
            raise InvalidInput("PIN policy must be one of %s" % ", ".join(PIN_POLICIES))
        if not tax_site_id.strip():
            raise InvalidInput("a site needs the ID number the tax agency issued for it "
                               "(the staff ledger is kept under it)")
        with self.db.tx():
            if self.db.scalar("SELECT 1 FROM sites WHERE id = ?", (site_id,)):
                raise InvalidInput("site %s already exists" % site_id)
            self.db.execute(
                "INSERT INTO sites (id, name, tax_site_id, pin_policy, card_key, pin_key, version,"
                " created_at, tz) VALUES (?,?,?,?,?,?,0,?,?)",
                (site_id, name or site_id, tax_site_id.strip(), pin_policy,
                 secrets.token_hex(16), secrets.token_hex(16), now_iso(), tz))
            self.audit("site added", site_id, "name=%s tax_site_id=%s pin_policy=%s tz=%s"
                       % (name, tax_site_id.strip(), pin_policy, tz))
        return self.site(site_id)

    def site(self, site_id: str) -> dict:
        row = self.db.one("SELECT id, name, tax_site_id, pin_policy, version, created_at, tz FROM"
                          " sites WHERE id = ?", (site_id,))
        if not row:
            raise NotFound("no site %r (see 'host-sync sites list')" % site_id)
        return dict(zip(("id", "name", "tax_site_id", "pin_policy", "version", "created_at", "tz"),
                        row))

    def sites(self) -> list[dict]:
        rows = self.db.all("SELECT id, name, tax_site_id, pin_policy, version, tz FROM sites"
                           " ORDER BY id")
        out = []
        for r in rows:
            d = dict(zip(("id", "name", "tax_site_id", "pin_policy", "version", "tz"), r))
            d["cards"] = self.db.scalar("SELECT COUNT(*) FROM card_sites WHERE site_id = ?", (r[0],))
            d["readers"] = self.db.scalar("SELECT COUNT(*) FROM readers WHERE site_id = ?", (r[0],))
            out.append(d)
        return out

    def site_keys(self, site_id: str) -> tuple[bytes, bytes]:
        row = self.db.one("SELECT card_key, pin_key FROM sites WHERE id = ?", (site_id,))
        if not row:
            raise NotFound("no site %r" % site_id)
        return bytes.fromhex(row[0]), bytes.fromhex(row[1])

    def keyer(self, site_id: str) -> rec_codec.Keyer:
        k = self._keyers.get(site_id)
        if k is None:
            k = self._keyers[site_id] = rec_codec.Keyer(*self.site_keys(site_id))
        return k

    def current_version(self, site_id: str) -> int:
        v = self.db.scalar("SELECT version FROM sites WHERE id = ?", (site_id,))
        if v is None:
            raise NotFound("no site %r" % site_id)
        return int(v)

    # -- records ----------------------------------------------------------------------------
    def key8(self, site_id: str, uid_hex: str) -> bytes:
        uid = bytes.fromhex(uid_hex)
        out = bytearray(8)
        self.keyer(site_id).uid_key(uid, len(uid), out)
        return bytes(out)

    def _record(self, site_id: str, card: dict, verifier_hex: str | None) -> tuple[str, str]:
        key8 = self.key8(site_id, card["uid"])
        flags = rec_codec.F_PIN if card["pin_required"] else 0
        vf = days_since_2020(_day(card["valid_from"]))
        vu = days_since_2020(_day(card["valid_until"]))
        ver = bytes.fromhex(verifier_hex) if verifier_hex else None
        rec = rec_codec.pack(key8, STATUS_CODE[card["status"]], flags, vf, vu, ver)
        return key8.hex(), rec.hex()

    def _publish(self, site_id: str, action: str, subject: str,
                 records: Sequence[tuple[str, str, str]]) -> int:
        """Bump the site's version and store the delta (key8 hex, record hex, card number), in
        versions of at most VERSION_MAX_RECORDS records; returns the last version. Must run
        inside a transaction; the UPDATE's row lock serialises concurrent writers."""
        version = 0
        for i in range(0, max(1, len(records)), VERSION_MAX_RECORDS):
            version = self._publish1(site_id, action, subject, records[i:i + VERSION_MAX_RECORDS])
        return version

    def _publish1(self, site_id: str, action: str, subject: str,
                  records: Sequence[tuple[str, str, str]]) -> int:
        version = int(self.db.one("UPDATE sites SET version = version + 1 WHERE id = ?"
                                  " RETURNING version", (site_id,))[0])
        self.db.execute("INSERT INTO changes (site_id, version, at, actor, action, subject, blocking)"
                        " VALUES (?,?,?,?,?,?,?)",
                        (site_id, version, now_iso(), self.actor, action, subject,
                         1 if action in BLOCKING else 0))
        self.db.executemany("INSERT INTO change_records (site_id, version, key8, rec) VALUES (?,?,?,?)",
                            [(site_id, version, k, r) for k, r, _ in records])
        self.db.executemany(
            "INSERT INTO allowlist (site_id, key8, card_no, rec, version) VALUES (?,?,?,?,?)"
            " ON CONFLICT (site_id, key8) DO UPDATE SET rec = excluded.rec,"
            " card_no = excluded.card_no, version = excluded.version",
            [(site_id, k, c, r, version) for k, r, c in records if r is not None])
        gone = [(site_id, k) for k, r, _ in records if r is None]  # a removal (rec NULL in the delta)
        if gone:
            self.db.executemany("DELETE FROM allowlist WHERE site_id = ? AND key8 = ?", gone)
        return version

    def changes_since(self, site_id: str, from_version: int,
                      limit: int | None = None) -> list[tuple[int, list[tuple[bytes, bytes | None]]]]:
        """[(version, [(key8, rec16)])] for every version after from_version, in order."""
        sql = ("SELECT version, key8, rec FROM change_records WHERE site_id = ? AND version > ?"
               " ORDER BY version, key8")
        out: list[tuple[int, list]] = []
        for v, k, r in self.db.all(sql, (site_id, int(from_version))):
            if not out or out[-1][0] != v:
                if limit is not None and len(out) >= limit:
                    break
                out.append((int(v), []))
            out[-1][1].append((bytes.fromhex(k), bytes.fromhex(r) if r else None))
        return out

    def snapshot(self, site_id: str) -> tuple[int, list[tuple[bytes, bytes]]]:
        """(version, every record of the site sorted by key8), read in one transaction."""
        with self.db.tx():
            if self.db.dialect == "postgresql" and self.db._depth == 1:  # both reads, one moment
                self.db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            version = self.current_version(site_id)
            rows = self.db.all("SELECT key8, rec FROM allowlist WHERE site_id = ? ORDER BY key8",
                               (site_id,))
        return version, [(bytes.fromhex(k), bytes.fromhex(r)) for k, r in rows]

    # -- cards ------------------------------------------------------------------------------
    def card(self, card_no: str) -> dict:
        card_no = ids.card_no(card_no)
        row = self.db.one("SELECT %s FROM cards WHERE card_no = ?" % ", ".join(CARD_COLS), (card_no,))
        if not row:
            raise NotFound("no card %s in the registry" % card_no)
        c = dict(zip(CARD_COLS, row))
        c["pin_required"] = bool(c["pin_required"])
        sites = self.db.all("SELECT site_id, pin_verifier FROM card_sites WHERE card_no = ?"
                            " ORDER BY site_id", (card_no,))
        c["sites"] = [s for s, _ in sites]
        c["pin_set"] = {s: bool(v) for s, v in sites}
        c["expired"] = now().date() > _day(c["valid_until"])
        c["replaces"] = self.db.scalar("SELECT replaces FROM cards WHERE card_no = ?", (card_no,)) or ""
        c["replaced_by"] = self.db.scalar("SELECT card_no FROM cards WHERE replaces = ?", (card_no,)) or ""
        return c

    def cards(self, site: str | None = None, status: str | None = None,
              search: str | None = None) -> list[dict]:
        sql = "SELECT %s FROM cards c" % ", ".join("c." + x for x in CARD_COLS)
        where, args = [], []
        if site:
            sql += " JOIN card_sites s ON s.card_no = c.card_no"
            where.append("s.site_id = ?")
            args.append(site)
        if status:
            where.append("c.status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.all(sql + " ORDER BY c.card_no", args)
        out = [dict(zip(CARD_COLS, r)) for r in rows]
        if search:
            s = search.lower()
            out = [c for c in out if s in c["holder"].lower() or s in c["employer"].lower()
                   or s in c["card_no"].lower()]
        return out

    def refresh_search_terms(self, batch: int = 5000, most: int | None = None) -> int:
        """Re-index the words of the cards marked by the triggers of migration 7 (new cards,
        changed names), at most `most` of them; returns how many cards were indexed."""
        n = 0
        while most is None or n < most:
            with self.db.tx():
                marked = [r[0] for r in self.db.all(
                    "SELECT card_no FROM card_terms_dirty ORDER BY card_no LIMIT %d"
                    % int(batch if most is None else min(batch, most - n)))]
                if not marked:
                    return n
                marks = ",".join("?" * len(marked))
                rows = self.db.all("SELECT card_no, holder, employer FROM cards WHERE card_no IN"
                                   " (%s)" % marks, marked)
                self.db.execute("DELETE FROM card_terms WHERE card_no IN (%s)" % marks, marked)
                self.db.executemany(
                    "INSERT INTO card_terms (term, card_no) VALUES (?,?) ON CONFLICT DO NOTHING",
                    [(t, no) for no, holder, employer in rows
                     for t in set(search_words(holder) + search_words(employer))])
                self.db.execute("DELETE FROM card_terms_dirty WHERE card_no IN (%s)" % marks,
                                marked)
            n += len(marked)
        return n

    def search_cards(self, q: str = "", site: str | None = None, status: str | None = None,
                     after: str = "", limit: int = 50, sites: Sequence[str] = ()) -> list[dict]:
        """One page of cards (card-number order, after `after`) matching `q`: the leading part
        of a card number or UID, or words that begin words of the holder's or employer's name
        ("berg", "anna b", "bygg 77"). Each kind of match is its own query on its own index
        (primary key, the UID's unique index, card_terms driven by the rarest word), each
        bounded by `limit`, merged here: a planner never walks every card testing an OR."""
        q = q.strip()
        filters, fargs = [], []
        if status:
            filters.append("c.status = ?")
            fargs.append(status)
        if site:
            filters.append("EXISTS (SELECT 1 FROM card_sites s WHERE s.card_no = c.card_no"
                           " AND s.site_id = ?)")
            fargs.append(site)
        if sites:
            filters.append("EXISTS (SELECT 1 FROM card_sites s WHERE s.card_no = c.card_no"
                           " AND s.site_id IN (%s))" % ",".join("?" * len(sites)))
            fargs.extend(sites)
        if after:
            filters.append("c.card_no > ?")
            fargs.append(after)
        cols = ", ".join("c." + x for x in CARD_COLS)

        def page(frm: str, where: list[str], args: list) -> list[tuple]:
            w = where + filters
            sql = "SELECT %s FROM %s" % (cols, frm) + (" WHERE " + " AND ".join(w) if w else "")
            return self.db.all(sql + " ORDER BY c.card_no LIMIT %d" % int(limit), args + fargs)

        if not q:
            rows = page("cards c", [], [])
        else:
            # a few renamed cards are indexed here; after a big import the console's watcher
            # indexes the rest in the background (seconds), so a search never waits for it
            self.refresh_search_terms(most=2000)
            # byte order for prefix ranges (PostgreSQL has COLLATE "C" indexes for them)
            c8 = ' COLLATE "C"' if self.db.dialect == "postgresql" else ""
            up, hx = q.upper(), q.lower().replace(":", "").replace(" ", "")
            rows = page("cards c", ["c.card_no%s >= ?" % c8, "c.card_no%s < ?" % c8],
                        [up, up + _TOP])
            if hx and all(ch in "0123456789abcdef" for ch in hx):
                rows += page("cards c", ["c.uid%s >= ?" % c8, "c.uid%s < ?" % c8], [hx, hx + _TOP])
            words = search_words(q)
            if words:
                rng = "t.term%s >= ? AND t.term%s < ?" % (c8, c8)
                # the rarest word drives (a bounded count each); the others are checked per
                # card through card_terms' card_no index (a card has a handful of words)
                words.sort(key=lambda w: self.db.scalar(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM card_terms t WHERE %s LIMIT 20000) x"
                    % rng, (w, w + _TOP)))
                # the driver's cards first (an index range), then joined: never a walk of
                # every card in number order testing each one
                drive = ("(SELECT DISTINCT t.card_no FROM card_terms t WHERE %s) d JOIN cards c"
                         " ON c.card_no = d.card_no" % rng)
                where = ["EXISTS (SELECT 1 FROM card_terms t WHERE t.card_no = c.card_no AND"
                         " %s)" % rng for _ in words[1:]]
                rows += page(drive, where, [a for w in words for a in (w, w + _TOP)])
            rows = sorted({r[0]: r for r in rows}.values())[:int(limit)]
        return [dict(zip(CARD_COLS, r)) for r in rows]

    def find_uid(self, uid_hex: str) -> str | None:
        return self.db.scalar("SELECT card_no FROM cards WHERE uid = ?", (uid_hex,))

    def add_cards(self, cards: Sequence[CardInput], action: str = "card added",
                  progress: Any = None) -> dict[str, int]:
        """Insert new cards and add them to their sites, all in one transaction, one allowlist
        change per site touched (split into versions of at most VERSION_MAX_RECORDS). Returns
        {site: new version}."""
        with self.db.tx():
            per_site = self.insert_cards(cards, action, progress)
            subject = cards[0].card_no if len(cards) == 1 else "%d cards" % len(cards)
            return {s: self._publish(s, action, subject, recs) for s, recs in per_site.items()}

    def insert_cards(self, cards: Sequence[CardInput], action: str = "card added",
                     progress: Any = None) -> dict[str, list[tuple[bytes, bytes, str]]]:
        """add_cards without publishing: {site: [(key8, rec16, card_no)]} for the caller to put in
        its own allowlist change (an import publishes every change of a site together)."""
        ts = now_iso()
        today = now().date()
        for s in {s for c in cards for s in c.sites}:
            self.site(s)
        with self.db.tx():
            rows, links, per_site = [], [], {}
            for i, c in enumerate(cards):
                vf = c.valid_from or today
                vu = c.valid_until or add_years(vf, rules.DEFAULT_VALIDITY_YEARS)
                if vu < vf:
                    raise InvalidInput("card %s: valid until %s is before valid from %s"
                                       % (c.card_no, vu, vf))
                rows.append((c.card_no, c.uid, c.holder, c.pnr, c.employer, c.employer_org,
                             c.status, 1 if c.pin_required else 0, vf.isoformat(), vu.isoformat(),
                             ts, ts))
                card = dict(uid=c.uid, status=c.status, pin_required=c.pin_required,
                            valid_from=vf.isoformat(), valid_until=vu.isoformat())
                for s in c.sites:
                    links.append((c.card_no, s))
                    k, r = self._record(s, card, None)
                    per_site.setdefault(s, []).append((k, r, c.card_no))
                if progress and i % 500 == 0:
                    progress(i)
            self.db.executemany("INSERT INTO cards (%s) VALUES (%s)"
                                % (", ".join(CARD_COLS), ",".join("?" * len(CARD_COLS))), rows)
            self.db.executemany("INSERT INTO card_sites (card_no, site_id) VALUES (?,?)", links)
            if len(cards) == 1:
                c = cards[0]
                self.audit(action, c.card_no, "uid=%s status=%s sites=%s pin_required=%s"
                           % (c.uid, c.status, ",".join(c.sites) or "-", c.pin_required))
            else:
                self.audit(action, "%d cards" % len(cards),
                           "first=%s last=%s" % (cards[0].card_no, cards[-1].card_no))
            return per_site

    def add_card(self, c: CardInput) -> dict[str, int]:
        with self.db.tx():
            if self.db.scalar("SELECT 1 FROM cards WHERE card_no = ?", (c.card_no,)):
                raise InvalidInput("card %s is already in the registry" % c.card_no)
            other = self.find_uid(c.uid)
            if other:
                raise InvalidInput("UID %s already belongs to card %s" % (c.uid, other))
            return self.add_cards([c])

    def _lock_card(self, card_no: str) -> None:
        """PostgreSQL: hold the card's row until commit, so two operators changing one card at
        once are applied one after the other (SQLite's BEGIN IMMEDIATE already serialises)."""
        if self.db.dialect == "postgresql":
            self.db.execute("SELECT 1 FROM cards WHERE card_no = ? FOR UPDATE", (card_no,))

    def _republish(self, card_no: str, action: str, detail: str) -> dict[str, int]:
        """Push the card's current record to each of its sites (inside a transaction)."""
        card = self.card(card_no)
        versions = {}
        for s, ver in self.db.all("SELECT site_id, pin_verifier FROM card_sites WHERE card_no = ?"
                                  " ORDER BY site_id", (card_no,)):
            k, r = self._record(s, card, ver)
            versions[s] = self._publish(s, action, card_no, [(k, r, card_no)])
        self.audit(action, card_no, detail)
        return versions

    def change_status(self, card_no: str, command: str, note: str = "") -> tuple[str, str, dict]:
        """Apply a card-rule command (activate, block, ...). Returns (old, new, {site: version})."""
        card_no = ids.card_no(card_no)
        with self.db.tx():
            self._lock_card(card_no)
            card = self.card(card_no)
            new = rules.next_status(command, card["status"])
            if new == rules.ACTIVE and card["expired"]:
                raise rules.RuleRefused("card %s expired on %s; order a new card"
                                        % (card_no, card["valid_until"]))
            self.db.execute("UPDATE cards SET status = ?, updated_at = ? WHERE card_no = ?",
                            (new, now_iso(), card_no))
            detail = "%s -> %s" % (card["status"], new) + (" (%s)" % note if note else "")
            versions = self._republish(card_no, command, detail)
        return card["status"], new, versions

    def add_to_site(self, card_no: str, site_id: str) -> dict[str, int]:
        card_no = ids.card_no(card_no)
        with self.db.tx():
            self._lock_card(card_no)
            card = self.card(card_no)
            self.site(site_id)
            if site_id in card["sites"]:
                raise InvalidInput("card %s is already on site %s" % (card_no, site_id))
            self.db.execute("INSERT INTO card_sites (card_no, site_id) VALUES (?,?)",
                            (card_no, site_id))
            k, r = self._record(site_id, card, None)
            v = self._publish(site_id, "card added to site", card_no, [(k, r, card_no)])
            self.audit("card added to site", card_no, "site=%s" % site_id)
        return {site_id: v}

    def set_pin(self, card_no: str, pin: str, site: str | None = None) -> dict[str, int]:
        """Store only the PIN verifier (per site: each site has its own PIN key)."""
        card_no = ids.card_no(card_no)
        pin = ids.pin_digits(pin)
        with self.db.tx():
            self._lock_card(card_no)
            card = self.card(card_no)
            if card["status"] == rules.TERMINATED:
                raise rules.RuleRefused("card %s is terminated" % card_no)
            if site:
                self.site(site)  # an unknown site is not found (4), not "card not on it" (3)
            targets = [site] if site else card["sites"]
            if not targets:
                raise InvalidInput("card %s is on no site; add it to a site first" % card_no)
            uid = bytes.fromhex(card["uid"])
            versions = {}
            for s in targets:
                if s not in card["sites"]:
                    raise InvalidInput("card %s is not on site %s" % (card_no, s))
                ver = self.keyer(s).pin_verifier(uid, len(uid), pin).hex()
                self.db.execute("UPDATE card_sites SET pin_verifier = ? WHERE card_no = ? AND"
                                " site_id = ?", (ver, card_no, s))
                k, r = self._record(s, card, ver)
                versions[s] = self._publish(s, "PIN set", card_no, [(k, r, card_no)])
            self.audit("PIN set", card_no, "sites=%s" % ",".join(targets))
        return versions

    # -- readers ----------------------------------------------------------------------------
    def add_reader(self, reader_id: str, site_id: str) -> dict:
        reader_id = ids.reader_id(reader_id)
        with self.db.tx():
            self.site(site_id)
            if self.db.scalar("SELECT 1 FROM readers WHERE id = ?", (reader_id,)):
                raise InvalidInput("reader %s already exists" % reader_id)
            # a fresh board numbers its events from 1: under an id a removed reader had, it
            # starts a new generation so its numbers are not taken for the old board's
            from host_sync.ledger import next_gen
            gen = next_gen(self.db, reader_id)
            self.db.execute(
                "INSERT INTO readers (id, site_id, secret, broker_password, created_at, gen)"
                " VALUES (?,?,?,?,?,?)",
                (reader_id, site_id, secrets.token_hex(32), secrets.token_urlsafe(24), now_iso(),
                 gen))
            self.audit("reader added", reader_id, "site=%s (secret and broker account issued)%s"
                       % (site_id, "; event numbering generation %d" % gen if gen > 1 else ""))
        return self.reader(reader_id)

    def reader(self, reader_id: str) -> dict:
        row = self.db.one("SELECT %s FROM readers WHERE id = ?" % ", ".join(READER_COLS),
                          (reader_id,))
        if not row:
            raise NotFound("no reader %r (see 'host-sync readers list')" % reader_id)
        return _reader_dict(row)

    def reader_credentials(self, reader_id: str) -> tuple[bytes, str]:
        """(32-byte HMAC secret, broker password): for config files and the broker only."""
        row = self.db.one("SELECT secret, broker_password FROM readers WHERE id = ?", (reader_id,))
        if not row:
            raise NotFound("no reader %r" % reader_id)
        if not row[0]:
            raise InvalidInput("reader %s is revoked: it has no credentials (add it again under "
                               "a new name, or remove it)" % reader_id)
        return bytes.fromhex(row[0]), row[1]

    def revoked(self, reader_id: str) -> bool:
        """A revoked reader keeps its row (history, events) but has no secret and no broker
        account: the host refuses whatever is sealed with its old secret."""
        return self.db.scalar("SELECT secret FROM readers WHERE id = ?", (reader_id,)) == ""

    def revoke_reader(self, reader_id: str, reason: str) -> dict:
        """Cut a reader off (stolen, lost, decommissioned): its secret and broker password are
        deleted, its queued commands fail, the credentials generation moves (every serve drops
        its session within a second) and the audit log says who and why. The broker's account
        goes when its passwd/acl are rewritten from broker_accounts() and reloaded (the CLI)."""
        reason = (reason or "").strip()
        if not reason:
            raise InvalidInput("say why the reader is revoked (--reason): it goes in the audit log")
        with self.db.tx():
            r = self.reader(reader_id)
            if self.revoked(reader_id):
                raise InvalidInput("reader %s is already revoked" % reader_id)
            self.db.execute("UPDATE readers SET secret = '', broker_password = '', online = 0"
                            " WHERE id = ?", (reader_id,))
            self.db.execute("UPDATE commands SET state = 'failed', result = 'reader revoked',"
                            " finished_at = ? WHERE reader_id = ? AND state IN ('pending',"
                            " 'sending', 'sent')", (now_iso(), reader_id))
            self.bump_credentials()
            self.audit("reader revoked", reader_id, "site=%s reason=%s (secret and broker "
                       "account deleted)" % (r["site_id"], reason))
        return self.reader(reader_id)

    def remove_reader(self, reader_id: str, reason: str) -> None:
        """Delete a reader from the registry (revoking it first if it is not yet). Its events
        and ledger entries stay: they are the site's records."""
        with self.db.tx():
            if not self.revoked(reader_id):
                self.revoke_reader(reader_id, reason)
            self.db.execute("DELETE FROM commands WHERE reader_id = ?", (reader_id,))
            self.db.execute("DELETE FROM readers WHERE id = ?", (reader_id,))
            self.audit("reader removed", reader_id, "reason=%s (events kept)" % reason.strip())

    def bump_credentials(self) -> int:
        """Move the credentials generation: serve re-reads the secrets of the readers it holds."""
        g = int(self.db.scalar("SELECT value FROM settings WHERE name = 'credentials_gen'") or 0)
        self.db.execute("INSERT INTO settings (name, value) VALUES ('credentials_gen', ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (str(g + 1),))
        return g + 1

    def readers(self, site: str | None = None) -> list[dict]:
        sql = "SELECT %s FROM readers" % ", ".join(READER_COLS)
        rows = self.db.all(sql + (" WHERE site_id = ?" if site else "") + " ORDER BY id",
                           (site,) if site else ())
        return [_reader_dict(r) for r in rows]

    def broker_accounts(self) -> list[tuple[str, str, str]]:
        """[(reader id, site, broker password)] for the broker configuration (revoked readers
        have no account)."""
        return [tuple(r) for r in self.db.all(
            "SELECT id, site_id, broker_password FROM readers WHERE broker_password <> ''"
            " ORDER BY id")]

    # -- changes ----------------------------------------------------------------------------
    def change(self, site_id: str, version: int) -> dict:
        row = self.db.one("SELECT site_id, version, at, actor, action, subject, blocking FROM changes"
                          " WHERE site_id = ? AND version = ?", (site_id, int(version)))
        if not row:
            raise NotFound("no change %s:%s" % (site_id, version))
        return dict(zip(("site", "version", "at", "actor", "action", "subject", "blocking"), row))

    def changes(self, site_id: str | None = None, subject: str | None = None,
                limit: int = 20) -> list[dict]:
        where, args = [], []
        if site_id:
            where.append("site_id = ?")
            args.append(site_id)
        if subject:
            where.append("subject = ?")
            args.append(subject)
        sql = "SELECT site_id, version, at, actor, action, subject, blocking FROM changes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.all(sql + " ORDER BY at DESC, version DESC LIMIT %d" % int(limit), args)
        return [dict(zip(("site", "version", "at", "actor", "action", "subject", "blocking"), r))
                for r in rows]

    def reader_rows(self, site: str | None = None, lag_limit_s: float = 60.0,
                    limit: int | None = None, offset: int = 0,
                    sites: Sequence[str] = ()) -> list[dict]:
        """Readers with their lag: head (the site's version), lag (versions behind),
        block_pending_since (the oldest blocking change not applied) and lagging_block (pending
        longer than lag_limit_s). `limit`/`offset` page through them in id order; `sites`
        limits them to those sites (the CLI's `readers list` and the console's readers page)."""
        sql = ("SELECT %s, s.version FROM readers r JOIN sites s ON s.id = r.site_id"
               % ", ".join("r." + c for c in READER_COLS))
        where, args = [], []
        if site:
            where.append("r.site_id = ?")
            args.append(site)
        if sites:
            where.append("r.site_id IN (%s)" % ",".join("?" * len(sites)))
            args.extend(sites)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.id"
        if limit is not None:
            sql += " LIMIT %d OFFSET %d" % (int(limit), int(offset))
        rows = []
        t = now()
        for row in self.db.all(sql, args):
            r = _reader_dict(row[:-1])
            head = int(row[-1])
            lag = max(0, head - r["applied_version"])
            since = self.oldest_unapplied_block(r["site_id"], r["applied_version"]) if lag else None
            late = bool(since and (t - _parse(since)).total_seconds() > lag_limit_s)
            rows.append(dict(r, head=head, lag=lag, block_pending_since=since, lagging_block=late))
        return rows

    def change_report(self, site_id: str, version: int) -> dict:
        """Which readers of the site applied change site:version, which not (and since when:
        the change's time)."""
        ch = self.change(site_id, version)
        readers = self.readers(site_id)
        return {"change": ch, "applied": [r for r in readers if r["applied_version"] >= version],
                "pending": [r for r in readers if r["applied_version"] < version]}

    def oldest_unapplied_block(self, site_id: str, applied_version: int) -> str | None:
        """When the oldest blocking change this reader has not applied was made (or None)."""
        return self.db.scalar("SELECT MIN(at) FROM changes WHERE site_id = ? AND version > ?"
                              " AND blocking = 1", (site_id, int(applied_version)))


    # -- operators' everyday edits (CLI and web console alike) ------------------------------
    def remove_from_site(self, card_no: str, site_id: str) -> dict[str, int]:
        """The card may no longer enter the site: its record leaves that site's allowlist (a
        removal in the delta); its PIN verifier for the site goes too."""
        card_no = ids.card_no(card_no)
        with self.db.tx():
            self._lock_card(card_no)
            card = self.card(card_no)
            self.site(site_id)
            if site_id not in card["sites"]:
                raise InvalidInput("card %s is not on site %s" % (card_no, site_id))
            self.db.execute("DELETE FROM card_sites WHERE card_no = ? AND site_id = ?",
                            (card_no, site_id))
            key8 = self.key8(site_id, card["uid"]).hex()
            v = self._publish(site_id, "card removed from site", card_no, [(key8, None, card_no)])
            self.audit("card removed from site", card_no, "site=%s" % site_id)
        return {site_id: v}

    def edit_card(self, card_no: str, note: str = "", **changes: Any) -> tuple[dict, dict[str, int]]:
        """Change a card's holder, personal identity number, employer, validity dates or UID
        (a new chip under the same card number: the person, the card's sites and its ledger
        history stay). Returns ({field: (old, new)}, {site: version}). Values are validated
        here; dates are YYYY-MM-DD strings or dates. A new UID makes a new key at every site
        (the old one is removed in the same version) and clears the card's PINs, which are
        bound to the UID: they must be set again."""
        card_no = ids.card_no(card_no)
        unknown = set(changes) - set(EDITABLE)
        if unknown:
            raise InvalidInput("cannot edit %s (editable: %s)" % (", ".join(sorted(unknown)),
                                                                  ", ".join(EDITABLE)))
        new: dict[str, str] = {}
        for k, v in changes.items():
            if v is None:
                continue
            if k == "uid":
                v = ids.uid_hex(v)
            elif k == "pnr":
                v = ids.pnr(v)
            elif k == "employer_org":
                v = ids.org_no(v)
            elif k in ("valid_from", "valid_until"):
                try:
                    v = _day(v).isoformat()
                except ValueError:
                    raise InvalidInput("%s %r is not a date YYYY-MM-DD" % (k, v))
            else:
                v = str(v).strip()
            new[k] = v
        with self.db.tx():
            self._lock_card(card_no)
            card = self.card(card_no)
            diff = {k: (card[k], v) for k, v in new.items() if card[k] != v}
            if not diff:
                raise InvalidInput("card %s already has these values; nothing to change" % card_no)
            vf = _day(new.get("valid_from", card["valid_from"]))
            vu = _day(new.get("valid_until", card["valid_until"]))
            if vu < vf:
                raise InvalidInput("card %s: valid_until %s would be before valid_from %s"
                                   % (card_no, vu, vf))
            if "uid" in diff:
                if card["status"] == rules.TERMINATED:
                    raise rules.RuleRefused("card %s is terminated; it never comes back (give the "
                                            "person a new card: host-sync cards replace)" % card_no)
                other = self.find_uid(new["uid"])
                if other:
                    raise InvalidInput("UID %s already belongs to card %s" % (new["uid"], other))
            cols = sorted(diff)
            self.db.execute("UPDATE cards SET %s, updated_at = ? WHERE card_no = ?"
                            % ", ".join("%s = ?" % c for c in cols),
                            [diff[c][1] for c in cols] + [now_iso(), card_no])
            detail = "; ".join("%s changed" % c if c == "pnr" else "%s %s -> %s" % (c, o or "-", n)
                               for c, (o, n) in sorted(diff.items()))
            if note:
                detail += " (%s)" % note
            versions: dict[str, int] = {}
            if "uid" in diff:
                self.db.execute("UPDATE card_sites SET pin_verifier = NULL WHERE card_no = ?",
                                (card_no,))
                after = self.card(card_no)
                for s in after["sites"]:
                    old_key = self.key8(s, diff["uid"][0]).hex()
                    k, r = self._record(s, after, None)
                    versions[s] = self._publish(s, "card edited", card_no,
                                                [(old_key, None, card_no), (k, r, card_no)])
                self.audit("card edited", card_no, detail)
            elif {"valid_from", "valid_until"} & set(diff):
                versions = self._republish(card_no, "card edited", detail)
            else:  # holder, identity, employer: host-side only, no reader holds them
                self.audit("card edited", card_no, detail)
        return diff, versions

    def replace_card(self, old_no: str, new_no: str, uid: str, valid_from: dt.date | None = None,
                     valid_until: dt.date | None = None, note: str = "") -> dict[str, int]:
        """A replacement for a broken or lost card: a new card (inactive until activated, as
        every new card) for the same person, employer and sites, that remembers which card it
        replaces (its history follows in `cards show`); the old card is terminated at once."""
        old_no, new_no, uid = ids.card_no(old_no), ids.card_no(new_no), ids.uid_hex(uid)
        with self.db.tx():
            self._lock_card(old_no)
            old = self.card(old_no)
            if old["replaced_by"]:
                raise InvalidInput("card %s was already replaced by %s" % (old_no, old["replaced_by"]))
            if self.db.scalar("SELECT 1 FROM cards WHERE card_no = ?", (new_no,)):
                raise InvalidInput("card %s is already in the registry" % new_no)
            other = self.find_uid(uid)
            if other:
                raise InvalidInput("UID %s already belongs to card %s" % (uid, other))
            per_site = self.insert_cards([CardInput(
                card_no=new_no, uid=uid, holder=old["holder"], pnr=old["pnr"],
                employer=old["employer"], employer_org=old["employer_org"], status=rules.INACTIVE,
                pin_required=old["pin_required"], valid_from=valid_from, valid_until=valid_until,
                sites=tuple(old["sites"]))], action="replacement card added")
            self.db.execute("UPDATE cards SET replaces = ? WHERE card_no = ?", (old_no, new_no))
            versions = {s: self._publish(s, "replacement card added", new_no, recs)
                        for s, recs in per_site.items()}
            if old["status"] != rules.TERMINATED:
                self.db.execute("UPDATE cards SET status = ?, updated_at = ? WHERE card_no = ?",
                                (rules.TERMINATED, now_iso(), old_no))
                versions.update(self._republish(old_no, "terminate", "%s -> terminated (replaced "
                                                "by %s)%s" % (old["status"], new_no,
                                                              " (%s)" % note if note else "")))
            self.audit("card replaced", new_no, "replaces %s%s" % (old_no, " (%s)" % note if note else ""))
        return versions

    def card_history(self, card_no: str, limit: int = 50) -> list[dict]:
        """The card's audit entries, and those of the cards it replaced, latest first."""
        nos, no = [], ids.card_no(card_no)
        while no and no not in nos and len(nos) < 20:
            nos.append(no)
            no = self.db.scalar("SELECT replaces FROM cards WHERE card_no = ?", (no,)) or ""
        rows = self.db.all("SELECT at, actor, action, subject, detail FROM audit WHERE subject IN (%s)"
                           " ORDER BY id DESC LIMIT %d" % (",".join("?" * len(nos)), int(limit)), nos)
        return [dict(zip(("at", "actor", "action", "subject", "detail"), r)) for r in rows]

    def edit_site(self, site_id: str, name: str | None = None, tax_site_id: str | None = None,
                  tz: str | None = None) -> dict:
        """Rename a site (its name as people say it; the id stays, readers' topics use it), fix
        its tax agency ID number (new ledger entries use it; entries made keep theirs) or set
        its time zone."""
        site = self.site(site_id)
        new: dict[str, str] = {}
        if name is not None:
            if not name.strip():
                raise InvalidInput("a site's name cannot be empty")
            new["name"] = name.strip()
        if tax_site_id is not None:
            if not tax_site_id.strip():
                raise InvalidInput("a site needs the ID number the tax agency issued for it")
            new["tax_site_id"] = tax_site_id.strip()
        if tz is not None:
            new["tz"] = ids.time_zone(tz)
        diff = {k: (site[k], v) for k, v in new.items() if site[k] != v}
        if not diff:
            raise InvalidInput("site %s already has these values; nothing to change" % site_id)
        with self.db.tx():
            cols = sorted(diff)
            self.db.execute("UPDATE sites SET %s WHERE id = ?" % ", ".join("%s = ?" % c for c in cols),
                            [diff[c][1] for c in cols] + [site_id])
            self.audit("site edited", site_id, "; ".join("%s %s -> %s" % (c, o, n)
                                                         for c, (o, n) in sorted(diff.items())))
        return self.site(site_id)

    def remove_site(self, site_id: str) -> dict:
        """Remove a site that has no readers left. Its cards stay in the registry (only their
        link to the site goes), and its staff ledger and events stay: they are kept two years
        under the site's tax agency ID number whatever becomes of the site."""
        with self.db.tx():
            site = self.site(site_id)
            readers = [r["id"] for r in self.readers(site_id)]
            if readers:
                raise InvalidInput("site %s still has reader(s) %s: remove them first (host-sync "
                                   "readers remove)" % (site_id, ", ".join(readers)))
            cards = int(self.db.scalar("SELECT COUNT(*) FROM card_sites WHERE site_id = ?",
                                       (site_id,)) or 0)
            for sql in ("DELETE FROM card_sites WHERE site_id = ?",
                        "DELETE FROM allowlist WHERE site_id = ?",
                        "DELETE FROM change_records WHERE site_id = ?",
                        "DELETE FROM changes WHERE site_id = ?",
                        "DELETE FROM site_push WHERE site_id = ?",
                        "DELETE FROM sites WHERE id = ?"):
                self.db.execute(sql, (site_id,))
            self.audit("site removed", site_id, "name=%s tax_site_id=%s; %d card(s) no longer on "
                       "it; its ledger and events are kept" % (site["name"], site["tax_site_id"], cards))
        return {"site": site_id, "cards_unlinked": cards}

    def rename_reader(self, reader_id: str, new_id: str) -> dict:
        """Give a reader a new id. The id is its MQTT topics and its broker account, so the
        renamed reader gets a new secret and broker account (the old config stops working) and
        needs its new config deployed and the broker config rewritten. Its events and ledger
        entries keep the id they were made under; pending commands follow."""
        from host_sync.ledger import next_gen
        new_id = ids.reader_id(new_id)
        with self.db.tx():
            old = self.reader(reader_id)
            if self.db.scalar("SELECT 1 FROM readers WHERE id = ?", (new_id,)):
                raise InvalidInput("reader %s already exists" % new_id)
            self.db.execute(
                "INSERT INTO readers (id, site_id, secret, broker_password, firmware, applied_version,"
                " applied_at, last_seen, online, health, lag_since, created_at, gen)"
                " SELECT ?, site_id, ?, ?, firmware, applied_version, applied_at, last_seen, 0, health,"
                " lag_since, created_at, ? FROM readers WHERE id = ?",
                (new_id, secrets.token_hex(32), secrets.token_urlsafe(24),
                 next_gen(self.db, new_id), reader_id))
            self.db.execute("UPDATE commands SET reader_id = ? WHERE reader_id = ?", (new_id, reader_id))
            self.db.execute("DELETE FROM readers WHERE id = ?", (reader_id,))
            self.bump_credentials()  # serve drops the old id's session within a second
            self.audit("reader renamed", new_id, "was %s (site %s); new secret and broker account"
                       % (reader_id, old["site_id"]))
            self.audit("reader renamed", reader_id, "now %s" % new_id)
        return self.reader(new_id)


_TOP = "\U0010ffff"  # sorts after every character: prefix + _TOP ends a prefix range


def search_words(text: str) -> list[str]:
    """The lowercased words of a name as the card search indexes them ("Berg Bygg AB" ->
    ["berg", "bygg", "ab"])."""
    import re
    return [w for w in re.split(r"[\W_]+", (text or "").lower()) if w][:16]


def _reader_dict(row: Iterable) -> dict:
    d = dict(zip(READER_COLS, row))
    d["online"] = bool(d["online"])
    try:
        d["health"] = json.loads(d["health"]) if d["health"] else {}
    except ValueError:
        d["health"] = {"raw": d["health"]}
    return d


def _parse(ts: str) -> dt.datetime:
    from host_sync.timeutil import parse_iso
    return parse_iso(ts)


def _day(s: str | dt.date) -> dt.date:
    return s if isinstance(s, dt.date) else dt.date.fromisoformat(s)
