"""The CLI's console commands: `host-sync web` (serve the console), `host-sync users ...`
(accounts; the first admin is made here) and `host-sync alarms ...` (list, acknowledge, sinks).
Registered by cli.build_parser; exit codes as in host_sync/cli.py."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from typing import Any

from host_sync.ids import InvalidInput


def _password(ctx: Any, prompt: str) -> str:
    if ctx.args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass(prompt)
    if getpass.getpass("Repeat it: ") != pw:
        raise InvalidInput("the two passwords differ; nothing was changed")
    return pw


def _sites(text: str | None) -> tuple[str, ...]:
    from host_sync import ids
    return tuple(ids.site_id(s.strip()) for s in (text or "").split(",") if s.strip())


def cmd_users_add(ctx: Any) -> int:
    from host_sync import accounts
    a = ctx.args
    u = accounts.add_user(ctx.db, a.username, _password(ctx, "Password for %s: " % a.username),
                          a.role, _sites(a.sites), actor=a.actor)
    ctx.say("user %s added (%s%s); sign in at the console (host-sync web)"
            % (u.username, u.role, ", sites " + ",".join(u.sites) if u.sites else ", every site"))
    return 0


def cmd_users_list(ctx: Any) -> int:
    from host_sync import accounts
    from host_sync.cli import _table
    rows = accounts.users(ctx.db)
    if ctx.args.json:
        ctx.say(json.dumps(rows, indent=1))
        return 0
    ctx.say(*_table([(u["username"], u["role"], u["sites"] or "all",
                      "disabled" if u["disabled"] else ("locked until %s" % u["locked_until"]
                                                        if u["locked_until"] else "active"))
                     for u in rows], ("USER", "ROLE", "SITES", "STATE")))
    return 0


def cmd_users_passwd(ctx: Any) -> int:
    from host_sync import accounts
    from host_sync.registry import NotFound
    try:
        accounts.set_password(ctx.db, ctx.args.username,
                              _password(ctx, "New password for %s: " % ctx.args.username),
                              ctx.args.actor)
    except LookupError as e:
        raise NotFound(str(e))
    ctx.say("password of %s changed; its sessions are ended" % ctx.args.username)
    return 0


def cmd_users_role(ctx: Any) -> int:
    from host_sync import accounts
    from host_sync.registry import NotFound
    try:
        accounts.set_role(ctx.db, ctx.args.username, ctx.args.role, _sites(ctx.args.sites),
                          ctx.args.actor)
    except LookupError as e:
        raise NotFound(str(e))
    ctx.say("%s is now %s (%s)" % (ctx.args.username, ctx.args.role, ctx.args.sites or "every site"))
    return 0


def cmd_users_disable(ctx: Any) -> int:
    from host_sync import accounts
    from host_sync.registry import NotFound
    try:
        accounts.disable(ctx.db, ctx.args.username, ctx.args.actor, not ctx.args.enable)
    except LookupError as e:
        raise NotFound(str(e))
    ctx.say("%s %s" % (ctx.args.username, "enabled" if ctx.args.enable else "disabled"))
    return 0


def cmd_alarms_list(ctx: Any) -> int:
    from host_sync import alarms
    from host_sync.cli import _table
    rows = alarms.recent(ctx.db, (), ctx.args.limit)
    if ctx.args.open:
        rows = [a for a in rows if not a["acked_at"]]
    if ctx.args.json:
        ctx.say(json.dumps(rows, indent=1))
        return 0
    ctx.say(*_table([("#%d" % a["id"], a["kind"], a["at"][:19], a["message"],
                      ("%s %s" % (a["acked_by"], a["acked_at"][:19])) if a["acked_at"] else "OPEN",
                      " ".join("%s:%s" % (d["kind"], d["state"]) for d in a["deliveries"]) or "-")
                     for a in rows], ("ID", "KIND", "AT", "MESSAGE", "ACKNOWLEDGED", "DELIVERED")))
    return 0


def cmd_alarms_ack(ctx: Any) -> int:
    from host_sync import alarms
    from host_sync.registry import NotFound
    try:
        alarms.acknowledge(ctx.db, ctx.args.alarm, ctx.args.actor, ctx.args.note or "")
    except LookupError as e:
        raise NotFound(str(e))
    ctx.say("alarm #%d acknowledged" % ctx.args.alarm)
    return 0


def cmd_alarms_sink_add(ctx: Any) -> int:
    from host_sync import alarms
    a = ctx.args
    opts: dict[str, Any] = {}
    secret = ""
    if a.kind == "webhook":
        secret = os.environ.get(a.secret_env or "", "") if a.secret_env else ""
        if not secret:
            raise InvalidInput("a webhook's signing secret comes from the environment variable "
                               "named by --secret-env (never on the command line)")
    elif a.kind == "smtp":
        opts = {"host": a.smtp_host, "port": a.smtp_port, "from": a.mail_from,
                "starttls": a.starttls}
        if a.smtp_user:
            opts.update(user=a.smtp_user, password=os.environ.get(a.password_env or "", ""))
    else:
        opts = {"host": a.mqtt_host, "port": a.mqtt_port}
        if a.mqtt_user:
            opts.update(user=a.mqtt_user, password=os.environ.get(a.password_env or "", ""))
        if a.mqtt_ca:
            opts["ca"] = os.path.abspath(a.mqtt_ca)
    sid = alarms.add_sink(ctx.db, a.kind, a.target, secret, opts, actor=a.actor)
    ctx.say("alarm sink #%d added: %s %s" % (sid, a.kind, a.target))
    return 0


def cmd_alarms_sink_list(ctx: Any) -> int:
    from host_sync import alarms
    from host_sync.cli import _table
    ctx.say(*_table([("#%d" % s["id"], s["kind"], s["target"], json.dumps(s["options"]),
                      "yes" if s["enabled"] else "no") for s in alarms.sinks(ctx.db)],
                    ("ID", "KIND", "TARGET", "OPTIONS", "ENABLED")))
    return 0


def cmd_alarms_sink_remove(ctx: Any) -> int:
    from host_sync import alarms
    from host_sync.registry import NotFound
    try:
        alarms.remove_sink(ctx.db, ctx.args.sink, ctx.args.actor)
    except LookupError as e:
        raise NotFound(str(e))
    ctx.say("alarm sink #%d removed (pending deliveries to it cancelled)" % ctx.args.sink)
    return 0


def cmd_alarms_watch(ctx: Any) -> int:
    """The alarm watcher alone, for a site that runs no console (systemd, beside serve)."""
    import signal
    import threading

    from host_sync import alarms
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    w = alarms.Watcher(ctx.db, "alarms-%s-%d" % (socket.gethostname(), os.getpid()),
                       ctx.args.lag_limit)
    print("watching for alarms (lag limit %.0f s); sinks: %d" % (
        ctx.args.lag_limit, len([s for s in alarms.sinks(ctx.db) if s["enabled"]])),
        file=ctx.err, flush=True)
    w.start()
    stop.wait()
    w.stop()
    return 0


def cmd_web(ctx: Any) -> int:
    import logging

    import uvicorn

    from host_sync.web.app import Config, create_app
    a = ctx.args
    if bool(a.certfile) != bool(a.keyfile):
        raise InvalidInput("HTTPS needs both --certfile and --keyfile")
    for f in (a.certfile, a.keyfile):
        if f and not os.path.isfile(f):
            raise InvalidInput("cannot read %s" % f)
    tls = bool(a.certfile)
    cfg = Config(db_url=ctx.db.url, lag_limit_s=a.lag_limit, secure_cookies=tls or a.behind_proxy,
                 alarm_watcher=not a.no_alarms, tz=a.tz,
                 instance="web-%s-%d" % (socket.gethostname(), os.getpid()))
    from host_sync.cli import _tz
    _tz(a.tz)  # refuse an unknown zone before starting
    n = int(ctx.db.scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0") or 0)
    app = create_app(cfg, ctx.db)
    scheme = "https" if tls else "http"
    print("console: %s://%s:%d/ (database %s)%s" % (
        scheme, a.host, a.port, ctx.db.url.split("@")[-1],
        "" if n else "; no admin account yet: host-sync users add NAME --role admin"),
        file=ctx.err, flush=True)
    if not tls and not a.behind_proxy and a.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: plain HTTP on %s: passwords and session cookies cross the network in "
              "clear; give --certfile/--keyfile or run behind an HTTPS reverse proxy "
              "(--behind-proxy)" % a.host, file=ctx.err, flush=True)
    logging.getLogger("host_sync").setLevel(logging.INFO)
    uvicorn.run(app, host=a.host, port=a.port, ssl_certfile=a.certfile, ssl_keyfile=a.keyfile,
                proxy_headers=a.behind_proxy, forwarded_allow_ips=a.proxy_ip if a.behind_proxy
                else None, log_level="warning", access_log=a.verbose, server_header=False,
                timeout_graceful_shutdown=5)
    return 0


def add_parsers(top: argparse._SubParsersAction) -> None:
    from host_sync.accounts import ROLES
    x = top.add_parser("web", help="serve the operators' web console",
                       description="Serve the console: readers, cards, changes, events, the staff "
                       "ledger, imports, remote commands, alarms and the audit log, for signed-in "
                       "accounts (host-sync users add). Also watches for alarms and sends them to "
                       "the configured sinks (host-sync alarms sink-add).")
    x.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    x.add_argument("--port", type=int, default=8080)
    x.add_argument("--certfile", help="HTTPS: the server certificate (PEM), e.g. the site's that "
                                      "site init made: CONFIG/broker/server.pem (CONFIG: "
                                      "/etc/grindvakt as root, ~/.config/grindvakt)")
    x.add_argument("--keyfile", help="HTTPS: its private key (PEM), e.g. CONFIG/broker/server.key "
                                     "(as root: root:mosquitto 0640, for another user systemd's "
                                     "LoadCredential=, docs/web.md)")
    x.add_argument("--behind-proxy", action="store_true",
                   help="an HTTPS reverse proxy is in front: secure cookies, trust its "
                        "X-Forwarded-For/Proto")
    x.add_argument("--proxy-ip", default="127.0.0.1", help="the proxy's address (default 127.0.0.1)")
    x.add_argument("--lag-limit", type=float, default=60.0,
                   help="seconds a reader may lag a block before the alarm (default 60)")
    x.add_argument("--tz", default="Europe/Stockholm", help="time zone for times shown")
    x.add_argument("--no-alarms", action="store_true", help="do not watch for or send alarms here")
    x.set_defaults(fn=cmd_web)

    up = top.add_parser("users", help="console accounts").add_subparsers(dest="cmd", required=True)
    x = up.add_parser("add", help="add an account (the first admin too)")
    x.add_argument("username")
    x.add_argument("--role", choices=ROLES, required=True)
    x.add_argument("--sites", help="limit it to these sites (comma-separated; default every site)")
    x.add_argument("--password-stdin", action="store_true", help="read the password from standard "
                   "input (scripts); otherwise asked twice without echo")
    x.set_defaults(fn=cmd_users_add)
    x = up.add_parser("list", help="accounts, roles, lockouts")
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_users_list)
    x = up.add_parser("passwd", help="set an account's password (ends its sessions, lifts a lockout)")
    x.add_argument("username")
    x.add_argument("--password-stdin", action="store_true")
    x.set_defaults(fn=cmd_users_passwd)
    x = up.add_parser("role", help="change an account's role and sites")
    x.add_argument("username")
    x.add_argument("--role", choices=ROLES, required=True)
    x.add_argument("--sites")
    x.set_defaults(fn=cmd_users_role)
    x = up.add_parser("disable", help="disable (or --enable) an account")
    x.add_argument("username")
    x.add_argument("--enable", action="store_true")
    x.set_defaults(fn=cmd_users_disable)

    ap = top.add_parser("alarms", help="alarms and where they are sent").add_subparsers(
        dest="cmd", required=True)
    x = ap.add_parser("list", help="recent alarms and their deliveries")
    x.add_argument("--open", action="store_true", help="only those not acknowledged")
    x.add_argument("--limit", type=int, default=50)
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_alarms_list)
    x = ap.add_parser("ack", help="acknowledge an alarm")
    x.add_argument("alarm", type=int)
    x.add_argument("--note")
    x.set_defaults(fn=cmd_alarms_ack)
    x = ap.add_parser("sink-add", help="send alarms to a webhook, an e-mail address or an MQTT topic")
    x.add_argument("kind", choices=("webhook", "smtp", "mqtt"))
    x.add_argument("target", help="webhook: URL; smtp: recipient address; mqtt: topic")
    x.add_argument("--secret-env", help="webhook: environment variable holding the HMAC secret")
    x.add_argument("--smtp-host")
    x.add_argument("--smtp-port", type=int, default=25)
    x.add_argument("--smtp-user")
    x.add_argument("--starttls", action="store_true")
    x.add_argument("--mail-from", default="grindvakt@localhost")
    x.add_argument("--mqtt-host")
    x.add_argument("--mqtt-port", type=int, default=1883)
    x.add_argument("--mqtt-user")
    x.add_argument("--mqtt-ca", help="CA certificate for MQTT over TLS")
    x.add_argument("--password-env", help="smtp/mqtt: environment variable holding the password")
    x.set_defaults(fn=cmd_alarms_sink_add)
    x = ap.add_parser("watch", help="raise and send alarms without a console (host-sync web "
                      "does this too)")
    x.add_argument("--lag-limit", type=float, default=60.0)
    x.set_defaults(fn=cmd_alarms_watch)
    x = ap.add_parser("sink-list", help="configured sinks")
    x.set_defaults(fn=cmd_alarms_sink_list)
    x = ap.add_parser("sink-remove", help="stop sending to a sink")
    x.add_argument("sink", type=int)
    x.set_defaults(fn=cmd_alarms_sink_remove)
