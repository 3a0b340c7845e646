"""`cards import`: the card list an operator already has (a card-portal export, CSV) compared
with the registry. A dry run prints the difference; --apply makes it, all in one transaction, so a
bad row means nothing is applied at all. Every allowlist change an import makes at a site (new
cards, status and validity changes, cards added to the site) is published together: one version
per site, split into consecutive versions of at most 100 records (registry.VERSION_MAX_RECORDS)
only because a reader applies a version from one DELTA message (2048 bytes) and a bigger one
would cost every reader of the site a full rebuild. 600 new cards: 6 versions.

Columns (header row required; comma or semicolon separated; UTF-8, a BOM is fine):
  card_number            BB-YYMM-NNNNNN (required)
  uid                    card UID in hex, leading zeros kept (required unless a visitor card)
  card_type              standard | visitor (default standard; visitor cards have no RFID)
  holder_name            the holder's name
  personal_identity_number  YYYYMMDD-NNNN
  employer               the employer's (contractor's) name
  employer_org_no        NNNNNN-NNNN
  status                 inactive | active | blocked | suspended | terminated (default inactive)
  valid_from, valid_until  YYYY-MM-DD (default today and five years on)
  pin_required           yes/no (default no)
  sites                  site ids separated by '|' (optional; --site adds one to every row)

An export with other headers (a portal's Swedish ones, say) is read with a column mapping:
`--map "Kortnummer=card_number" --map "Namn=holder_name"`, and `--map "Telefon=-"` ignores a
column. A file that is not UTF-8 (Excel's "CSV" is Windows-1252) is refused with the line of the
first byte that is not, and what to do: save it as "CSV UTF-8", or give --encoding latin-1.
Rows refused for what they are (visitor cards carry no RFID) are listed and make the exit code 7:
with --apply the rest is applied.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from host_sync import ids, rules
from host_sync.ids import InvalidInput
from host_sync.registry import CardInput, NotFound, Registry
from host_sync.timeutil import add_years, now, now_iso

COLUMNS = ("card_number", "uid", "card_type", "holder_name", "personal_identity_number",
           "employer", "employer_org_no", "status", "valid_from", "valid_until", "pin_required",
           "sites")
REQUIRED = ("card_number",)
_YES = {"yes", "y", "true", "1", "ja", "j", "x"}
_NO = {"no", "n", "false", "0", "nej", ""}


class BadRows(InvalidInput):
    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        super().__init__("%d bad row(s); nothing was applied" % len(errors))


@dataclass
class Plan:
    new: list[CardInput] = field(default_factory=list)
    status: list[tuple[str, str, str, list[str]]] = field(default_factory=list)  # card, old, new, path
    details: list[tuple[str, dict]] = field(default_factory=list)  # card, {column: new value}
    new_links: list[tuple[str, str]] = field(default_factory=list)  # card, site
    visitors: list[tuple[int, str]] = field(default_factory=list)  # line, card
    unchanged: int = 0
    rows: int = 0

    @property
    def empty(self) -> bool:
        return not (self.new or self.status or self.details or self.new_links)


def _status_path(old: str, new: str) -> list[str] | None:
    """The commands that take a card from old to new under the card rules (shortest), or None."""
    if old == new:
        return []
    seen, queue = {old}, deque([(old, [])])
    while queue:
        s, path = queue.popleft()
        for cmd, moves in rules.TRANSITIONS.items():
            t = moves.get(s)
            if t and t not in seen:
                if t == new:
                    return path + [cmd]
                seen.add(t)
                queue.append((t, path + [cmd]))
    return None


def _date(v: str, col: str) -> dt.date | None:
    v = v.strip()
    if not v:
        return None
    return ids.date(v, col)


IGNORE = "-"  # a mapping to this drops the column


def _norm(h: str) -> str:
    return h.strip().lower().replace(" ", "_")


def parse_mapping(items: list[str] | None, what: str = "--map") -> dict[str, str]:
    """`--map FROM=TO` (repeatable, or comma-separated) as {normalised header: column}. what:
    how the operator gave it, for the error (the web console's field is not --map)."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.replace("\n", ",").split(","):
            if not part.strip():
                continue
            src, eq, dst = part.partition("=")
            dst = _norm(dst)
            if not eq or not src.strip() or not dst:
                raise InvalidInput("%s %r: use HEADER=COLUMN, e.g. Kortnummer=card_number "
                                   "(COLUMN - ignores it)" % (what, part.strip()))
            if dst != IGNORE and dst not in COLUMNS:
                raise InvalidInput("%s %r: %s is not a column; the columns are %s"
                                   % (what, part.strip(), dst, ", ".join(COLUMNS)))
            out[_norm(src)] = dst
    return out


# the encodings the web console's import form offers ("": UTF-8, a BOM or not); Excel's "CSV"
OFFERED_ENCODINGS = {"": "UTF-8", "cp1252": "Windows-1252 (Excel \"CSV\")", "latin-1": "Latin-1"}


def decode(raw: bytes, name: str, encoding: str | None = None,
           other: str = "give --encoding latin-1") -> str:
    """The file's text: UTF-8 (a BOM is fine) unless told otherwise. A file in another encoding
    is refused with where and what to do (a Latin-1 name read as UTF-8 would be stored garbled
    on every card and ledger entry). other: how to say it is in another encoding, where asked."""
    if encoding:
        try:
            return raw.decode(encoding)
        except LookupError:
            raise InvalidInput("unknown encoding %r (e.g. utf-8, latin-1, cp1252)" % encoding)
        except UnicodeDecodeError as e:
            raise InvalidInput("%s is not %s: line %d" % (name, encoding, raw[:e.start].count(b"\n") + 1))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        start = raw.rfind(b"\n", 0, e.start) + 1
        end = raw.find(b"\n", e.start)
        shown = raw[start:end if end >= 0 else len(raw)].decode("cp1252", "replace").strip()
        raise InvalidInput("%s is not UTF-8 (line %d: %r looks like Latin-1/Windows-1252, as Excel "
                           "saves \"CSV\"): save it as \"CSV UTF-8\" and import it again, or %s"
                           % (name, line, shown[:60], other))


class MapWords(NamedTuple):
    """How the operator gives the column names, for the errors: the CLI's --map or a form's field."""
    name: str
    hint: str


CLI_MAP = MapWords("--map", "--map HEADER=COLUMN, --map HEADER=- to ignore one")
WEB_MAP = MapWords("column names", "name them under Column names as HEADER=COLUMN, HEADER=- to "
                   "leave one out")


def read_rows(text: str, mapping: dict[str, str] | None = None,
              words: MapWords = CLI_MAP) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row)]). Raises InvalidInput when the header is unusable.
    `mapping`: {normalised header in the file: column} (parse_mapping)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    first = text.split("\n", 1)[0]
    delim = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        return _read(reader, mapping or {}, words)
    except csv.Error as e:
        raise InvalidInput("line %d: not readable as CSV: %s" % (reader.line_num or 1, e))


def _read(reader: csv.DictReader, mapping: dict[str, str],
          words: MapWords) -> tuple[list[str], list[tuple[int, dict]]]:
    header = [mapping.get(_norm(h), _norm(h)) for h in (reader.fieldnames or [])]
    if not header:
        raise InvalidInput("the file is empty; expected a header row with " + ", ".join(COLUMNS))
    dup = sorted({h for h in header if h != IGNORE and header.count(h) > 1})
    if dup:
        raise InvalidInput("line 1: column(s) %s given twice (check %s)" % (", ".join(dup), words.name))
    unmapped = [src for src in mapping if src not in {_norm(h) for h in reader.fieldnames or []}]
    if unmapped:
        raise InvalidInput("line 1: %s name header(s) %s that the file does not have; its "
                           "headers are %s" % (words.name, ", ".join(unmapped),
                                               ", ".join(reader.fieldnames or [])))
    missing = [c for c in REQUIRED if c not in header]
    unknown = [h for h in header if h not in COLUMNS and h != IGNORE]
    if missing or unknown:
        raise InvalidInput("line 1: %s; the columns are %s%s" % (
            "; ".join(x for x in ("missing column(s) %s" % ", ".join(missing) if missing else "",
                                  "unknown column(s) %s" % ", ".join(unknown) if unknown else "")
                      if x),
            ", ".join(COLUMNS),
            " (an export with other headers: %s)" % words.hint if unknown else ""))
    reader.fieldnames = header
    rows = []
    for row in reader:
        if None in row:
            raise InvalidInput("line %d: more fields than the header has" % reader.line_num)
        rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()
                                       if k != IGNORE}))
    return [h for h in header if h != IGNORE], rows


def plan(reg: Registry, text: str, site: str | None = None,
         progress: Callable[[int], None] | None = None,
         mapping: dict[str, str] | None = None, words: MapWords = CLI_MAP) -> Plan:
    header, rows = read_rows(text, mapping, words)
    known_sites = {s["id"] for s in reg.sites()}
    if site and site not in known_sites:  # exit 4 as every command's unknown --site
        raise NotFound("no site %r (add it with 'host-sync sites add')" % site)
    existing = {c["card_no"]: c for c in reg.cards()}
    links = {(c, s) for c, s in reg.db.all("SELECT card_no, site_id FROM card_sites")}
    uids = {c["uid"]: c["card_no"] for c in existing.values()}
    p = Plan(rows=len(rows))
    errors: list[tuple[int, str]] = []
    seen_no: dict[str, int] = {}
    seen_uid: dict[str, int] = {}
    today = now().date()
    for i, (line, row) in enumerate(rows):
        if progress and i % 500 == 0:
            progress(i)
        try:
            no = ids.card_no(row.get("card_number", ""))
            if no in seen_no:
                raise InvalidInput("card %s is also on line %d" % (no, seen_no[no]))
            seen_no[no] = line
            ctype = (row.get("card_type") or "standard").lower()
            if ctype not in ("standard", "visitor"):
                raise InvalidInput("card_type %r is not standard or visitor" % ctype)
            if ctype == "visitor":
                p.visitors.append((line, no))
                continue
            if not row.get("uid"):
                raise InvalidInput("card %s has no UID (a standard card needs the UID its RFID "
                                   "chip reports)" % no)
            uid = ids.uid_hex(row["uid"])
            if uid in seen_uid:
                raise InvalidInput("UID %s is also on line %d" % (uid, seen_uid[uid]))
            seen_uid[uid] = line
            status = (row.get("status") or rules.INACTIVE).lower()
            if status not in rules.STATUSES:
                raise InvalidInput("status %r is not one of %s" % (status, ", ".join(rules.STATUSES)))
            pin = (row.get("pin_required") or "").lower()
            if pin not in _YES and pin not in _NO:
                raise InvalidInput("pin_required %r is not yes or no" % pin)
            vf = _date(row.get("valid_from", ""), "valid_from")
            vu = _date(row.get("valid_until", ""), "valid_until")
            if vf and vu and vu < vf:
                raise InvalidInput("valid_until %s is before valid_from %s" % (vu, vf))
            sites = [s for s in (row.get("sites") or "").replace(",", "|").split("|") if s.strip()]
            sites = [ids.site_id(s) for s in sites]
            if site and site not in sites:
                sites.append(site)
            for s in sites:
                if s not in known_sites:
                    raise InvalidInput("no site %r (add it with 'host-sync sites add')" % s)
            c = CardInput(card_no=no, uid=uid, holder=row.get("holder_name", ""),
                          pnr=ids.pnr(row.get("personal_identity_number", "")),
                          employer=row.get("employer", ""),
                          employer_org=ids.org_no(row.get("employer_org_no", "")),
                          status=status, pin_required=pin in _YES, valid_from=vf, valid_until=vu,
                          sites=tuple(dict.fromkeys(sites)))
            old = existing.get(no)
            if old is None:
                if uid in uids:
                    raise InvalidInput("UID %s already belongs to card %s" % (uid, uids[uid]))
                p.new.append(c)
                continue
            if old["uid"] != uid:
                raise InvalidInput("card %s has UID %s in the registry, %s in the file; a card's "
                                   "UID never changes" % (no, old["uid"], uid))
            changed = False
            if old["status"] != status:
                path = _status_path(old["status"], status)
                if path is None:
                    why = ("a terminated card never comes back; order a new card"
                           if old["status"] == rules.TERMINATED else "the card rules do not allow it")
                    raise InvalidInput("card %s: %s -> %s refused: %s"
                                       % (no, old["status"], status, why))
                if status == rules.ACTIVE and (vu or dt.date.fromisoformat(old["valid_until"])) < today:
                    raise InvalidInput("card %s expired; it cannot be activated" % no)
                p.status.append((no, old["status"], status, path))
                changed = True
            upd: dict[str, Any] = {}
            for col, key, val in (("holder_name", "holder", c.holder),
                                  ("personal_identity_number", "pnr", c.pnr),
                                  ("employer", "employer", c.employer),
                                  ("employer_org_no", "employer_org", c.employer_org)):
                if col in header and old[key] != val:
                    upd[key] = val
            if "pin_required" in header and bool(old["pin_required"]) != c.pin_required:
                upd["pin_required"] = 1 if c.pin_required else 0
            if vf and vf.isoformat() != old["valid_from"]:
                upd["valid_from"] = vf.isoformat()
            if vu and vu.isoformat() != old["valid_until"]:
                upd["valid_until"] = vu.isoformat()
            if upd:
                p.details.append((no, upd))
                changed = True
            for s in c.sites:
                if (no, s) not in links:
                    p.new_links.append((no, s))
                    changed = True
            if not changed:
                p.unchanged += 1
        except InvalidInput as e:
            errors.append((line, str(e)))
    if errors:
        raise BadRows(errors)
    return p


_ALLOWLIST_FIELDS = {"pin_required", "valid_from", "valid_until"}


def apply(reg: Registry, p: Plan, source: str,
          progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Make the planned changes in one transaction; returns {site: new version}."""
    if p.empty:
        return {}
    with reg.db.tx():
        versions: dict[str, int] = {}
        per_site: dict[str, list] = {}
        if p.new:
            per_site = reg.insert_cards(p.new, action="cards imported", progress=progress)
        touched: set[str] = set()
        ts = now_iso()
        for no, _old, new, _path in p.status:
            reg.db.execute("UPDATE cards SET status = ?, updated_at = ? WHERE card_no = ?",
                           (new, ts, no))
            touched.add(no)
        for no, upd in p.details:
            cols = sorted(upd)
            reg.db.execute("UPDATE cards SET %s, updated_at = ? WHERE card_no = ?"
                           % ", ".join("%s = ?" % c for c in cols), [upd[c] for c in cols] + [ts, no])
            if _ALLOWLIST_FIELDS & set(upd):
                touched.add(no)
        if p.new_links:
            reg.db.executemany("INSERT INTO card_sites (card_no, site_id) VALUES (?,?)", p.new_links)
            touched.update(no for no, _ in p.new_links)
        for no in sorted(touched):
            card = reg.card(no)
            for s, ver in reg.db.all("SELECT site_id, pin_verifier FROM card_sites WHERE card_no = ?",
                                     (no,)):
                k, r = reg._record(s, card, ver)
                per_site.setdefault(s, []).append((k, r, no))
        blocking = any(new in (rules.BLOCKED, rules.TERMINATED, rules.SUSPENDED)
                       for _, _, new, _ in p.status)
        for s, recs in per_site.items():
            action = "block" if blocking else "cards imported"
            versions[s] = reg._publish(s, action, "import %s" % source, recs)
        reg.audit("cards imported", source, "new=%d status=%d details=%d sites=%d unchanged=%d"
                  % (len(p.new), len(p.status), len(p.details), len(p.new_links), p.unchanged))
        # and each card's own history (cards show), as a change made by hand would be
        src = "from %s: " % source
        rows = [("card imported", c.card_no, src + "uid=%s status=%s sites=%s pin_required=%s"
                 % (c.uid, c.status, ",".join(c.sites) or "-", c.pin_required)) for c in p.new]
        rows += [("status imported", no, src + "%s -> %s%s" % (old, new, " (via %s)" % ", ".join(path)
                                                              if len(path) > 1 else ""))
                 for no, old, new, path in p.status]
        rows += [("details imported", no, src + ", ".join(sorted("%s changed" % k if k == "pnr" else
                                                                 "%s -> %s" % (k, v)
                                                                 for k, v in upd.items())))
                 for no, upd in p.details]
        rows += [("card added to site", no, src + "site=%s" % s) for no, s in p.new_links]
        reg.audit_many(rows)
    return versions


def describe(p: Plan, limit: int = 20) -> list[str]:
    out = ["%d row(s): %d new card(s), %d status change(s), %d detail change(s), "
           "%d site addition(s), %d unchanged, %d visitor card(s) refused"
           % (p.rows, len(p.new), len(p.status), len(p.details), len(p.new_links), p.unchanged,
              len(p.visitors))]

    def section(items: list, fmt: Callable[[Any], str]) -> None:
        for it in items[:limit]:
            out.append(fmt(it))
        if len(items) > limit:
            out.append("  ... and %d more" % (len(items) - limit))

    section(p.new, lambda c: "  + %s %s %s [%s]%s" % (c.card_no, c.status, c.holder or "-",
                                                     c.employer or "-",
                                                     " sites=" + ",".join(c.sites) if c.sites else ""))
    section(p.status, lambda s: "  ~ %s %s -> %s%s" % (s[0], s[1], s[2],
                                                       " (via %s)" % ", ".join(s[3])
                                                       if len(s[3]) > 1 else ""))
    section(p.details, lambda d: "  ~ %s %s" % (d[0], ", ".join(sorted(d[1]))))
    section(p.new_links, lambda l: "  ~ %s added to site %s" % l)
    section(p.visitors, lambda v: "  ! line %d: %s refused: %s" % (v[0], v[1], rules.VISITOR_REFUSED))
    return out
