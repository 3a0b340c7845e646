"""The console's plumbing: the Starlette application, sign-in, sessions, CSRF, roles, the page
decorator every page goes through, and security headers. The pages are in pages.py.

Every page handler is a plain function `(Page) -> Response` run in a worker thread (the
registry is synchronous); `@page(path, role)` does, in order: find the session (cookie
`gv_session`, HttpOnly, SameSite=Strict, Secure under HTTPS), refuse when the role is too low,
check the CSRF token on every POST (form field `csrf` or header X-CSRF-Token, compared in
constant time, plus the Origin header when a browser sends one), then call the handler with a
Registry whose actor is "web:<user>", so every change lands in the audit log under the person
who made it, through the same registry code as the CLI.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from host_sync import accounts, alarms
from host_sync.accounts import User
from host_sync.db import Db
from host_sync.ids import InvalidInput
from host_sync.registry import NotFound, Registry

log = logging.getLogger("host_sync.web")

HERE = Path(__file__).resolve().parent
COOKIE = "gv_session"
LOGIN_COOKIE = "gv_login_csrf"
LOGIN_PER_MIN = 10  # sign-in attempts per client address per minute


@dataclass
class Config:
    db_url: str
    lag_limit_s: float = 60.0
    secure_cookies: bool = False  # HTTPS in front (built in or a reverse proxy)
    alarm_watcher: bool = True
    tz: str = "Europe/Stockholm"
    instance: str = "web"


@dataclass
class State:
    db: Db
    cfg: Config
    templates: Jinja2Templates
    uploads: dict[str, dict] = field(default_factory=dict)  # import previews awaiting apply
    logins: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    lock: threading.Lock = field(default_factory=threading.Lock)
    watcher: Any = None


class Page:
    """What a handler gets: the request, the signed-in user, the parsed form, the registry."""

    def __init__(self, request: Request, user: User, csrf: str, form: dict[str, Any],
                 state: State):
        self.request, self.user, self.csrf, self.form, self.state = request, user, csrf, form, state
        self.db = state.db
        self.reg = Registry(state.db, actor=self.actor)
        self.q = request.query_params

    @property
    def actor(self) -> str:
        return "web:" + self.user.username

    def render(self, template: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        n, latest = alarms.unacked(self.db, self.user.sites)
        ctx.update(user=self.user, csrf=self.csrf, request=self.request, alarm_count=n,
                   alarm_latest=latest, path=self.request.url.path)
        return self.state.templates.TemplateResponse(self.request, template, ctx, status_code=code)

    def fragment(self, name: str, **ctx: Any) -> HTMLResponse:
        ctx.update(user=self.user, csrf=self.csrf, request=self.request)
        return self.state.templates.TemplateResponse(self.request, name, ctx)

    def site_allowed(self, site: str) -> None:
        if not self.user.sees(site):
            raise Forbidden("your account is limited to site(s) %s" % ", ".join(self.user.sites))

    def need(self, role: str) -> None:
        if not self.user.can(role):
            raise Forbidden("this needs the %s role; you are %s" % (role, self.user.role))


class Forbidden(Exception):
    pass


ROUTES: list[Route] = []


def page(path: str, role: str = "viewer", methods: tuple[str, ...] = ("GET",)) -> Callable:
    def deco(fn: Callable[[Page], Response]) -> Callable:
        async def endpoint(request: Request) -> Response:
            st: State = request.app.state.gv
            found = await run_in_threadpool(accounts.session, st.db, request.cookies.get(COOKIE))
            if found is None:
                if request.headers.get("x-requested-with") == "poll":
                    return PlainTextResponse("signed out", status_code=401)
                nxt = request.url.path + ("?" + request.url.query if request.url.query else "")
                return RedirectResponse("/login?next=" + quote(nxt, safe=""), status_code=303)
            user, csrf = found
            form: dict[str, Any] = {}
            if request.method == "POST":
                if not _same_origin(request):
                    return PlainTextResponse("refused: cross-site request", status_code=403)
                raw = await request.form(max_part_size=64 * 1024 * 1024)
                form = {k: raw.get(k) for k in raw.keys()}
                token = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
                if not hmac.compare_digest(token.encode(), csrf.encode()):
                    return PlainTextResponse("refused: the form's CSRF token is missing or stale;"
                                             " reload the page and try again", status_code=403)
                for k, v in list(form.items()):  # uploaded files: read them here (async)
                    if hasattr(v, "read"):
                        form[k] = (v.filename or "upload.csv", await v.read())
            p = Page(request, user, csrf, form, st)
            try:
                if not user.can(role):
                    raise Forbidden("this page needs the %s role; you are %s" % (role, user.role))
                return await run_in_threadpool(fn, p)
            except Forbidden as e:
                return await run_in_threadpool(
                    lambda: p.render("error.html", code=403, title="Not allowed", message=str(e)))
            except NotFound as e:
                return await run_in_threadpool(
                    lambda: p.render("error.html", code=404, title="Not found",
                                     message="not found: %s" % e))
            except InvalidInput as e:  # a bad value in the address or a form no page handled
                return await run_in_threadpool(
                    lambda: p.render("error.html", code=400, title="Refused", message=refused(e)))
        ROUTES.append(Route(path, endpoint, methods=list(methods)))
        return fn
    return deco


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


# -- sign-in ----------------------------------------------------------------------------------
async def login(request: Request) -> Response:
    st: State = request.app.state.gv
    nxt = request.query_params.get("next", "/")
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = "/"
    if request.method == "GET":
        return _login_page(st, request, nxt, "")
    form = await request.form()
    token = request.cookies.get(LOGIN_COOKIE, "")
    if not token or not hmac.compare_digest(token.encode(), str(form.get("csrf", "")).encode()):
        return _login_page(st, request, nxt, "the sign-in form was stale; please try again", 403)
    client = _client(request)
    with st.lock:
        q = st.logins[client]
        t = time.monotonic()
        while q and t - q[0] > 60:
            q.popleft()
        if len(q) >= LOGIN_PER_MIN:
            wait = int(60 - (t - q[0])) + 1
            return _login_page(st, request, nxt, "too many sign-in attempts from your address; "
                               "wait %d s" % wait, 429)
        q.append(t)
    try:
        user, session, _csrf = await run_in_threadpool(
            accounts.sign_in, st.db, str(form.get("username", "")), str(form.get("password", "")),
            client)
    except accounts.SignInRefused as e:
        return _login_page(st, request, nxt, str(e), 401)
    r = RedirectResponse(nxt, status_code=303)
    r.set_cookie(COOKIE, session, max_age=int(accounts.SESSION_S), httponly=True,
                 samesite="strict", secure=st.cfg.secure_cookies, path="/")
    r.delete_cookie(LOGIN_COOKIE, path="/login")
    return r


def _login_page(st: State, request: Request, nxt: str, error: str, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    r = st.templates.TemplateResponse(request, "login.html",
                                      {"csrf": token, "next": nxt, "error": error, "user": None},
                                      status_code=status)
    r.set_cookie(LOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                 secure=st.cfg.secure_cookies, path="/login")
    return r


async def logout(request: Request) -> Response:
    st: State = request.app.state.gv
    token = request.cookies.get(COOKIE)
    found = await run_in_threadpool(accounts.session, st.db, token)
    if found is not None:
        form = await request.form()
        if not _same_origin(request) or not hmac.compare_digest(
                str(form.get("csrf", "")).encode(), found[1].encode()):
            return PlainTextResponse("refused: stale form", status_code=403)
        await run_in_threadpool(accounts.sign_out, st.db, token, found[0].username)
    r = RedirectResponse("/login", status_code=303)
    r.delete_cookie(COOKIE, path="/")
    return r


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


class SecurityHeaders:
    """Pure ASGI middleware: no framing, no sniffing, scripts and styles from this origin only."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
               (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"same-origin"), (b"cache-control", b"no-store")]

    def __init__(self, app: Any, hsts: bool):
        self.app, self.hsts = app, hsts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send2(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                hdrs = list(msg.get("headers", []))
                names = {h[0].lower() for h in hdrs}
                hdrs += [h for h in self.HEADERS if h[0] not in names]
                if self.hsts:
                    hdrs.append((b"strict-transport-security", b"max-age=31536000"))
                msg = dict(msg, headers=hdrs)
            await send(msg)
        await self.app(scope, receive, send2)


def create_app(cfg: Config, db: Db | None = None) -> Any:
    from host_sync.db import Db as _Db
    from host_sync.web import pages  # noqa: F401 - registers the pages
    from host_sync.web import filters

    db = db or _Db(cfg.db_url)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    filters.install(templates.env, cfg)
    st = State(db=db, cfg=cfg, templates=templates)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if cfg.alarm_watcher:
            st.watcher = alarms.Watcher(db, cfg.instance, cfg.lag_limit_s)
            st.watcher.start()
        try:
            yield
        finally:
            if st.watcher:
                st.watcher.stop()

    routes = [Route("/login", login, methods=["GET", "POST"]),
              Route("/logout", logout, methods=["POST"]),
              Route("/healthz", health),
              Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
              *ROUTES]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gv = st
    return SecurityHeaders(app, hsts=cfg.secure_cookies)


def refused(e: InvalidInput) -> str:
    """A refusal worded exactly as the CLI prints it."""
    return "refused: %s" % e
