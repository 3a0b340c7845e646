"""The console's pages. Each reads and changes the registry through the same functions as the
CLI (host_sync.registry, importer, commands, ledger, alarms, accounts), so a card rule, an audit
entry and a push are one code path whichever way an operator works. Lists are paged (keyset or
a bounded OFFSET) and every query has an index (migrations 1 and 5)."""
from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import Any

from gv import events as evc
from starlette.responses import RedirectResponse, Response

from host_sync import accounts, alarms, commands, ids, importer, ledger, rules
from host_sync.ids import InvalidInput
from host_sync.registry import NotFound
from host_sync.timeutil import iso, now
from host_sync.web import exports
from host_sync.web.app import Page, page, refused

PAGE = 50
STATUS_COMMANDS = ("activate", "block", "unblock", "suspend", "resume", "terminate")
WEB_COMMANDS = {"open": "open the door once", "clear-lockout": "lift the reader's lockouts",
                "resync": "drop its allowlist and rebuild it"}
UPLOAD_TTL_S = 1800.0


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _int(v: Any, default: int = 0) -> int:
    try:
        return max(0, int(v))
    except (TypeError, ValueError):
        return default


def _sites(p: Page) -> list[dict]:
    """The sites for a page's filter (no per-site counts: those scan tables)."""
    return [{"id": i, "name": n} for i, n in p.db.all("SELECT id, name FROM sites ORDER BY id")
            if p.user.sees(i)]


def _tz(p: Page, name: str | None = None) -> dt.tzinfo:
    """The site's own time zone when it has one (`sites add --tz`), else the console's."""
    from host_sync.cli import _tz as tz
    return tz(name or p.state.cfg.tz)


@page("/")
def home(p: Page) -> Response:
    return _redirect("/readers")


# -- alarms banner ------------------------------------------------------------------------------
@page("/fragments/banner")
def banner(p: Page) -> Response:
    n, latest = alarms.unacked(p.db, p.user.sites)
    return p.fragment("_banner.html", alarm_count=n, alarm_latest=latest)


@page("/alarms")
def alarms_page(p: Page) -> Response:
    return p.render("alarms.html", rows=alarms.recent(p.db, p.user.sites, 200),
                    sinks=alarms.sinks(p.db) if p.user.can("admin") else [])


@page("/alarms/{aid:int}/ack", role="operator", methods=("POST",))
def alarm_ack(p: Page) -> Response:
    aid = p.request.path_params["aid"]
    a = alarms.get(p.db, aid)
    if a is None:
        raise NotFound("no alarm #%d" % aid)
    if a["site_id"]:
        p.site_allowed(a["site_id"])
    try:
        alarms.acknowledge(p.db, aid, p.actor, str(p.form.get("note") or ""))
    except InvalidInput as e:
        return p.render("error.html", code=409, title="Alarm", message=refused(e))
    return _redirect(str(p.form.get("back") or "/alarms"))


# -- readers --------------------------------------------------------------------------------------
def _reader_ctx(p: Page) -> dict:
    site = p.q.get("site") or None
    if site:
        p.site_allowed(site)
    pg = _int(p.q.get("page"), 0)
    rows = p.reg.reader_rows(site, p.state.cfg.lag_limit_s, limit=PAGE + 1, offset=pg * PAGE,
                             sites=p.user.sites)
    return {"rows": rows[:PAGE], "more": len(rows) > PAGE, "pg": pg, "site": site or ""}


@page("/readers")
def readers(p: Page) -> Response:
    return p.render("readers.html", sites=_sites(p), **_reader_ctx(p))


@page("/fragments/readers")
def readers_fragment(p: Page) -> Response:
    return p.fragment("_readers_table.html", **_reader_ctx(p))


@page("/readers/{rid}")
def reader(p: Page) -> Response:
    rid = p.request.path_params["rid"]
    r = p.reg.reader(rid)
    p.site_allowed(r["site_id"])
    row = p.reg.reader_rows(r["site_id"], p.state.cfg.lag_limit_s)
    row = next((x for x in row if x["id"] == rid), r)
    return p.render("reader.html", r=row, cmds=commands.recent(p.db, rid, 20),
                    web_commands=WEB_COMMANDS, message=p.q.get("msg", ""))


@page("/readers/{rid}/command", role="operator", methods=("POST",))
def reader_command(p: Page) -> Response:
    rid = p.request.path_params["rid"]
    r = p.reg.reader(rid)
    p.site_allowed(r["site_id"])
    cmd = str(p.form.get("command") or "")
    if cmd not in WEB_COMMANDS:
        return p.render("error.html", code=400, title="Command",
                        message="refused: unknown command %r" % cmd)
    cid = commands.enqueue(p.db, rid, commands.NAMES[cmd], None, p.actor)
    return _redirect("/readers/%s?msg=%s" % (rid, "command+%%23%d+%s+queued" % (cid, cmd)))


@page("/fragments/commands/{rid}")
def commands_fragment(p: Page) -> Response:
    rid = p.request.path_params["rid"]
    p.site_allowed(p.reg.reader(rid)["site_id"])
    return p.fragment("_commands_table.html", cmds=commands.recent(p.db, rid, 20))


# -- cards ----------------------------------------------------------------------------------------
@page("/cards")
def cards(p: Page) -> Response:
    q = (p.q.get("q") or "").strip()
    site = p.q.get("site") or None
    status = p.q.get("status") or None
    if site:
        p.site_allowed(site)
    if status and status not in rules.STATUSES:
        status = None
    after = p.q.get("after") or ""
    rows = p.reg.search_cards(q, site, status, after, PAGE + 1, sites=p.user.sites)
    return p.render("cards.html", rows=rows[:PAGE], more=len(rows) > PAGE,
                    next_after=rows[PAGE - 1]["card_no"] if len(rows) > PAGE else "",
                    q=q, site=site or "", status=status or "", statuses=rules.STATUSES,
                    sites=_sites(p), after=after)


def _card(p: Page) -> dict:
    try:
        c = p.reg.card(p.request.path_params["no"])
    except InvalidInput as e:
        raise NotFound(str(e))
    if c["sites"] and not p.user.sees_all(c["sites"]) and not any(
            p.user.sees(s) for s in c["sites"]):
        raise NotFound("no card %s among your sites" % c["card_no"])
    if not c["sites"] and p.user.sites:
        raise NotFound("no card %s among your sites" % c["card_no"])
    return c


@page("/cards/{no}")
def card(p: Page) -> Response:
    c = _card(p)
    return p.render("card.html", c=c, history=p.reg.audit_log(subject=c["card_no"], limit=50),
                    changes=p.reg.changes(subject=c["card_no"], limit=20),
                    commands=STATUS_COMMANDS, message=p.q.get("msg", ""),
                    error=p.q.get("err", ""))


@page("/cards/{no}/{cmd}", role="operator", methods=("GET", "POST"))
def card_status(p: Page) -> Response:
    c = _card(p)
    cmd = p.request.path_params["cmd"]
    if cmd not in STATUS_COMMANDS:
        raise NotFound("no such card action %r" % cmd)
    if not p.user.sees_all(c["sites"]):
        return p.render("error.html", code=403, title="Not allowed",
                        message="card %s is also on site(s) outside your account (%s): ask an "
                        "operator of every site" % (c["card_no"], ", ".join(c["sites"])))
    if p.request.method == "GET":
        return p.render("confirm.html", c=c, cmd=cmd, error="")
    note = str(p.form.get("reason") or "").strip()
    if not note:
        return p.render("confirm.html", c=c, cmd=cmd, code=400,
                        error="give a reason (it is kept in the audit log)")
    if p.form.get("confirm") != "yes":
        return p.render("confirm.html", c=c, cmd=cmd, code=400, error="tick the confirmation")
    try:
        old, new, versions = p.reg.change_status(c["card_no"], cmd, note)
    except InvalidInput as e:  # the card rules' refusal, worded as the CLI words it
        return p.render("confirm.html", c=c, cmd=cmd, code=409, error=refused(e))
    msg = "card %s %s (%s -> %s)" % (c["card_no"], rules.past(cmd), old, new)
    if versions:
        site, v = sorted(versions.items())[0]
        return _redirect("/changes/%s/%d?msg=%s" % (site, v, _q(msg)))
    return _redirect("/cards/%s?msg=%s" % (c["card_no"], _q(msg + "; the card is on no site, so "
                                                              "no reader is affected")))


def _q(s: str) -> str:
    from urllib.parse import quote
    return quote(s, safe="")


# -- changes and their status --------------------------------------------------------------------
@page("/changes")
def changes(p: Page) -> Response:
    site = p.q.get("site") or None
    if site:
        p.site_allowed(site)
    rows = [c for c in p.reg.changes(site_id=site, limit=100) if p.user.sees(c["site"])]
    return p.render("changes.html", rows=rows, sites=_sites(p), site=site or "")


def _change_ctx(p: Page) -> dict:
    site, v = p.request.path_params["site"], p.request.path_params["version"]
    p.site_allowed(site)
    rep = p.reg.change_report(site, v)
    rep["site"], rep["version"] = site, v
    return rep


@page("/changes/{site}/{version:int}")
def change(p: Page) -> Response:
    return p.render("change.html", message=p.q.get("msg", ""), **_change_ctx(p))


@page("/fragments/changes/{site}/{version:int}")
def change_fragment(p: Page) -> Response:
    return p.fragment("_change_table.html", **_change_ctx(p))


# -- CSV import -----------------------------------------------------------------------------------
@page("/import", role="operator", methods=("GET", "POST"))
def import_page(p: Page) -> Response:
    sites = _sites(p)
    if p.request.method == "GET":
        return p.render("import.html", sites=sites, plan=None, errors=[], token="", lines=[])
    st = p.state
    with st.lock:  # forget stale previews
        for k in [k for k, u in st.uploads.items() if u["expires"] < time.monotonic()]:
            del st.uploads[k]
    token = str(p.form.get("token") or "")
    if token:  # apply a previewed file
        up = st.uploads.get(token)
        if not up or up["user"] != p.user.username:
            return p.render("import.html", sites=sites, plan=None, token="", lines=[],
                            errors=[(0, "this preview has expired; upload the file again")])
        text, site, name, mapping = up["text"], up["site"], up["name"], up["mapping"]
    else:
        upload = p.form.get("file")
        if not isinstance(upload, tuple) or not upload[1]:
            return p.render("import.html", sites=sites, plan=None, token="", lines=[],
                            errors=[(0, "choose a CSV file")])
        name, raw = upload
        encoding = str(p.form.get("encoding") or "")
        if encoding not in importer.OFFERED_ENCODINGS:
            return p.render("import.html", sites=sites, plan=None, token="", lines=[],
                            errors=[(0, "unknown encoding %r" % encoding)])
        try:  # the CLI's own reading of a file and of --map, worded for this form
            text = importer.decode(raw, name, encoding or None,
                                   other="choose Windows-1252 under Encoding")
            mapping = importer.parse_mapping([str(p.form.get("map") or "")],
                                             what=importer.WEB_MAP.name)
        except InvalidInput as e:
            return p.render("import.html", sites=sites, plan=None, token="", lines=[], name=name,
                            errors=[(0, str(e))])
        site = str(p.form.get("site") or "") or None
    if site:
        p.site_allowed(site)
    try:
        plan = importer.plan(p.reg, text, site=site, mapping=mapping, words=importer.WEB_MAP)
    except importer.BadRows as e:
        return p.render("import.html", sites=sites, plan=None, token="", lines=[], name=name,
                        errors=e.errors[:200], more_errors=max(0, len(e.errors) - 200))
    except (InvalidInput, NotFound) as e:  # an unknown site too: said on the form, not a 404
        return p.render("import.html", sites=sites, plan=None, token="", lines=[], name=name,
                        errors=[(0, str(e))])
    touched = {s for c in plan.new for s in c.sites} | {s for _, s in plan.new_links}
    for no in {x[0] for x in plan.status} | {x[0] for x in plan.details}:
        touched |= set(p.reg.card(no)["sites"]) or {"(no site)"}
    if p.user.sites and not all(p.user.sees(s) for s in touched):
        return p.render("import.html", sites=sites, plan=None, token="", lines=[], name=name,
                        errors=[(0, "the file touches sites outside your account")])
    if token and p.form.get("apply") == "yes":
        with st.lock:
            st.uploads.pop(token, None)
        versions = importer.apply(p.reg, plan, "%s (web)" % name)
        return p.render("import.html", sites=sites, plan=plan, token="", name=name, errors=[],
                        lines=importer.describe(plan, limit=50), applied=versions)
    token = secrets.token_urlsafe(16)
    with st.lock:
        st.uploads[token] = {"user": p.user.username, "text": text, "site": site, "name": name,
                             "mapping": mapping, "expires": time.monotonic() + UPLOAD_TTL_S}
    return p.render("import.html", sites=sites, plan=plan, token=token, name=name, errors=[],
                    lines=importer.describe(plan, limit=50))


# -- events ---------------------------------------------------------------------------------------
EVENT_FILTERS = {"": "all", "refusals": "refusals", "lockouts": "lockouts", "alarms": "alarms"}


@page("/events")
def events(p: Page) -> Response:
    q = p.q
    where, args = [], []
    site, rid, card_no, what = q.get("site") or "", q.get("reader") or "", q.get("card") or "", \
        q.get("what") or ""
    if site:
        p.site_allowed(site)
        where.append("e.site_id = ?")
        args.append(site)
    elif p.user.sites:
        where.append("e.site_id IN (%s)" % ",".join("?" * len(p.user.sites)))
        args += list(p.user.sites)
    if rid:
        where.append("e.reader_id = ?")
        args.append(rid)
    if card_no:
        where.append("e.card_no = ?")
        args.append(card_no.strip().upper())
    if what == "refusals":
        where.append("e.result = ?")
        args.append(evc.R_REFUSE)
    elif what == "lockouts":
        where.append("e.kind = ?")
        args.append(evc.K_LOCKOUT)
    elif what == "alarms":
        where.append("e.kind = ?")
        args.append(evc.K_ALARM)
    before = q.get("before") or ""
    if before.count("|") == 2:
        b_at, b_r, b_seq = before.split("|")
        where.append("(e.at < ? OR (e.at = ? AND (e.reader_id < ? OR (e.reader_id = ? AND"
                     " e.seq < ?))))")
        args += [b_at, b_at, b_r, b_r, _int(b_seq)]
    else:
        # a bounded window by default, so the query is a range on (site, at)
        days = min(_int(q.get("days"), 7) or 7, 366)
        where.append("e.at >= ?")
        args.append(iso(now() - dt.timedelta(days=days)))
    sql = ("SELECT e.at, e.reader_id, e.seq, e.site_id, e.kind, e.result, e.reason, e.card_no,"
           " e.uid, e.aux FROM events e")
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = p.db.all(sql + " ORDER BY e.at DESC, e.reader_id DESC, e.seq DESC LIMIT %d"
                    % (PAGE + 1), args)
    cols = ("at", "reader_id", "seq", "site_id", "kind", "result", "reason", "card_no", "uid", "aux")
    rows = [dict(zip(cols, r)) for r in rows]
    nxt = ""
    if len(rows) > PAGE:
        last = rows[PAGE - 1]
        nxt = "%s|%s|%d" % (last["at"], last["reader_id"], last["seq"])
    return p.render("events.html", rows=rows[:PAGE], next_before=nxt, site=site, reader=rid,
                    card=card_no, what=what, filters=EVENT_FILTERS, sites=_sites(p))


# -- staff ledger ---------------------------------------------------------------------------------
def _ledger_day(p: Page) -> tuple[dict, dt.date, list[dict], dt.tzinfo]:
    sites = _sites(p)
    site_id = p.q.get("site") or (sites[0]["id"] if sites else "")
    if not site_id:
        raise NotFound("no site yet")
    p.site_allowed(site_id)
    site = p.reg.site(site_id)
    tz = _tz(p, site.get("tz"))
    # a day that is none is refused with why (it showed today: a ledger export of the wrong day)
    day = ids.date(p.q["day"], "day") if p.q.get("day") else now().astimezone(tz).date()
    start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    rows = ledger.shifts(p.db, site_id, start, start + dt.timedelta(days=1))
    return site, day, rows, tz


@page("/ledger")
def ledger_page(p: Page) -> Response:
    site, day, rows, tz = _ledger_day(p)
    t = now()
    start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    end = start + dt.timedelta(days=1)
    if start <= t < end:
        # today: the day's shifts already hold everyone on site now, unless the day began less
        # than MAX_SHIFT ago (one more read for the hours before it)
        near = rows if start <= t - ledger.MAX_SHIFT else _merge_shifts(
            rows, ledger.shifts(p.db, site["id"], t - ledger.MAX_SHIFT, start))
    else:
        near = ledger.shifts(p.db, site["id"], t - ledger.MAX_SHIFT, t)
    # as ledger.shifts(t - MAX_SHIFT, t) would: open, begun before now, its entry in that window
    on_site = [s for s in near if s["end"] is None and t - 2 * ledger.MAX_SHIFT <= s["start"] < t]
    p.reg.audit("ledger shown", site["id"], "day %s, %d shift(s) (web)" % (day, len(rows)))
    return p.render("ledger.html", site=site, day=day, rows=rows, on_site=on_site, tz=tz,
                    sites=_sites(p), prev_day=day - dt.timedelta(days=1),
                    next_day=day + dt.timedelta(days=1))


def _merge_shifts(a: list[dict], b: list[dict]) -> list[dict]:
    seen = {s["shift"] for s in a}
    return a + [s for s in b if s["shift"] not in seen]


@page("/ledger/export.{fmt}")
def ledger_export(p: Page) -> Response:
    fmt = p.request.path_params["fmt"]
    if fmt not in ("csv", "pdf"):
        raise NotFound("no export format %r (csv or pdf)" % fmt)
    site, day, rows, tz = _ledger_day(p)
    table = ledger.shift_rows(rows, tz)
    p.reg.audit("ledger exported", site["id"], "%s to %s as %s, %d shift(s) (web)"
                % (day, day, fmt, len(table)))
    name = "personalliggare-%s-%s.%s" % (site["id"], day.isoformat(), fmt)
    hdrs = {"Content-Disposition": 'attachment; filename="%s"' % name}
    if fmt == "csv":
        return Response(ledger.to_csv(ledger.SHIFT_HEADER, table), media_type="text/csv",
                        headers=hdrs)
    pdf = exports.ledger_pdf(site, day, site.get("tz") or p.state.cfg.tz, table)
    return Response(pdf, media_type="application/pdf", headers=hdrs)


# -- audit log ------------------------------------------------------------------------------------
@page("/audit")
def audit(p: Page) -> Response:
    before = _int(p.q.get("before"), 0)
    subject = (p.q.get("subject") or "").strip()
    where, args = [], []
    if before:
        where.append("id < ?")
        args.append(before)
    if subject:
        where.append("subject = ?")
        args.append(subject)
    sql = "SELECT id, at, actor, action, subject, detail FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = p.db.all(sql + " ORDER BY id DESC LIMIT %d" % (PAGE + 1), args)
    rows = [dict(zip(("id", "at", "actor", "action", "subject", "detail"), r)) for r in rows]
    return p.render("audit.html", rows=rows[:PAGE], subject=subject,
                    next_before=rows[PAGE - 1]["id"] if len(rows) > PAGE else 0)


# -- accounts (admin) -----------------------------------------------------------------------------
@page("/admin/users", role="admin", methods=("GET", "POST"))
def users(p: Page) -> Response:
    msg, err = "", ""
    if p.request.method == "POST":
        f = p.form
        sites = tuple(s.strip() for s in str(f.get("sites") or "").split(",") if s.strip())
        try:
            if f.get("action") == "add":
                accounts.add_user(p.db, str(f.get("username") or ""), str(f.get("password") or ""),
                                  str(f.get("role") or ""), sites, actor=p.actor)
                msg = "user %s added" % str(f.get("username")).strip().lower()
            elif f.get("action") == "role":
                accounts.set_role(p.db, str(f.get("username") or ""), str(f.get("role") or ""),
                                  sites, actor=p.actor)
                msg = "role of %s set" % f.get("username")
            elif f.get("action") in ("disable", "enable"):
                accounts.disable(p.db, str(f.get("username") or ""), p.actor,
                                 f.get("action") == "disable")
                msg = "user %s %sd" % (f.get("username"), f.get("action"))
        except (InvalidInput, LookupError) as e:
            err = "refused: %s" % e
    return p.render("users.html", rows=accounts.users(p.db), roles=accounts.ROLES, msg=msg,
                    err=err)
