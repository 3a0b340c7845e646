"""The web console's local accounts and sessions (tables users, web_sessions: migration 5).

Passwords are hashed with argon2id (argon2-cffi); a session cookie carries a random token of
which only the SHA-256 is stored, so a copy of the database opens no session. Roles:

  viewer    reads every page of its sites
  operator  also changes card statuses, imports cards, sends remote commands, acknowledges alarms
  admin     also manages accounts and alarm sinks

An account may be limited to sites (empty = every site). After LOCK_AFTER failed sign-ins in a
row an account is locked for LOCK_S seconds; the web layer also rate-limits sign-ins per client
address. Every change here is audit-logged under the acting user.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from host_sync.db import Db
from host_sync.ids import InvalidInput
from host_sync.timeutil import iso, now, now_iso, parse_iso

ROLES = ("viewer", "operator", "admin")
LOCK_AFTER = 5
LOCK_S = 300.0
SESSION_S = 12 * 3600.0
MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
_ph = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory defaults
# verified when the name is unknown, so a wrong name takes as long as a wrong password
_DUMMY = _ph.hash("not a password of anyone")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    sites: tuple[str, ...]  # () = every site

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, site: str) -> bool:
        return not self.sites or site in self.sites

    def sees_all(self, sites: list[str] | tuple[str, ...]) -> bool:
        return not self.sites or all(s in self.sites for s in sites)


class SignInRefused(Exception):
    """Wrong name or password, or a locked account; the message is safe to show."""


def _audit(db: Db, actor: str, action: str, subject: str, detail: str = "") -> None:
    db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
               (now_iso(), actor, action, subject, detail))


def _check(username: str, password: str | None, role: str, sites: tuple[str, ...]) -> str:
    name = username.strip().lower()
    if not _NAME.match(name):
        raise InvalidInput("user name %r: 2-64 characters a-z 0-9 . _ @ -, starting with a letter "
                           "or digit" % username)
    if role not in ROLES:
        raise InvalidInput("role must be one of %s" % ", ".join(ROLES))
    if password is not None and len(password) < MIN_PASSWORD:
        raise InvalidInput("a password needs at least %d characters" % MIN_PASSWORD)
    return name


def add_user(db: Db, username: str, password: str, role: str, sites: tuple[str, ...] = (),
             actor: str = "admin") -> User:
    name = _check(username, password, role, sites)
    with db.tx():
        _known_sites(db, sites)
        if db.scalar("SELECT 1 FROM users WHERE username = ?", (name,)):
            raise InvalidInput("user %s already exists" % name)
        uid = db.scalar("INSERT INTO users (username, pw_hash, role, sites, created_at)"
                        " VALUES (?,?,?,?,?) RETURNING id",
                        (name, _ph.hash(password), role, ",".join(sites), now_iso()))
        _audit(db, actor, "user added", name, "role=%s sites=%s" % (role, ",".join(sites) or "all"))
    return User(int(uid), name, role, tuple(sites))


def set_password(db: Db, username: str, password: str, actor: str) -> None:
    name = username.strip().lower()
    _check(name, password, "viewer", ())
    with db.tx():
        cur = db.execute("UPDATE users SET pw_hash = ?, failed = 0, locked_until = NULL"
                         " WHERE username = ?", (_ph.hash(password), name))
        if cur.rowcount != 1:
            raise LookupError("no user %r" % name)
        uid = db.scalar("SELECT id FROM users WHERE username = ?", (name,))
        db.execute("DELETE FROM web_sessions WHERE user_id = ?", (uid,))  # sign out everywhere
        _audit(db, actor, "password changed", name, "every session of the user ended")


def _known_sites(db: Db, sites: tuple[str, ...]) -> None:
    """An unknown site is not found (CLI exit 4, as every command's unknown site)."""
    from host_sync.registry import NotFound
    for s in sites:
        if not db.scalar("SELECT 1 FROM sites WHERE id = ?", (s,)):
            raise NotFound("no site %r (see 'host-sync sites list')" % s)


def set_role(db: Db, username: str, role: str, sites: tuple[str, ...], actor: str) -> None:
    name = _check(username, None, role, sites)
    with db.tx():
        _known_sites(db, sites)  # a role for a site that is not there was set
        cur = db.execute("UPDATE users SET role = ?, sites = ? WHERE username = ?",
                         (role, ",".join(sites), name))
        if cur.rowcount != 1:
            raise LookupError("no user %r" % name)
        _audit(db, actor, "user role set", name, "role=%s sites=%s" % (role, ",".join(sites) or "all"))


def disable(db: Db, username: str, actor: str, disabled: bool = True) -> None:
    name = username.strip().lower()
    with db.tx():
        cur = db.execute("UPDATE users SET disabled = ? WHERE username = ?",
                         (1 if disabled else 0, name))
        if cur.rowcount != 1:
            raise LookupError("no user %r" % name)
        if disabled:
            uid = db.scalar("SELECT id FROM users WHERE username = ?", (name,))
            db.execute("DELETE FROM web_sessions WHERE user_id = ?", (uid,))
        _audit(db, actor, "user disabled" if disabled else "user enabled", name)


def users(db: Db) -> list[dict]:
    cols = ("username", "role", "sites", "failed", "locked_until", "disabled", "created_at")
    return [dict(zip(cols, r)) for r in db.all("SELECT %s FROM users ORDER BY username"
                                               % ", ".join(cols))]


def _user(row: tuple) -> User:
    return User(int(row[0]), row[1], row[2], tuple(s for s in row[3].split(",") if s))


def sign_in(db: Db, username: str, password: str, client: str) -> tuple[User, str, str]:
    """(user, session token, CSRF token), or SignInRefused. Failures count towards the lockout
    and are audit-logged with the client address."""
    name = username.strip().lower()
    row = db.one("SELECT id, username, role, sites, pw_hash, failed, locked_until, disabled"
                 " FROM users WHERE username = ?", (name,))
    t = now()
    if row is None:
        try:
            _ph.verify(_DUMMY, password)
        except VerificationError:
            pass
        _audit(db, "web:" + (name[:64] or "?"), "sign-in refused", name[:64] or "?",
               "unknown user, from %s" % client)
        raise SignInRefused("wrong user name or password")
    uid, _, _, _, pw_hash, failed, locked_until, disabled = row
    if locked_until and parse_iso(locked_until) > t:
        _audit(db, "web:" + name, "sign-in refused", name, "account locked, from %s" % client)
        raise SignInRefused("this account is locked after %d failed sign-ins; try again after %s"
                            " UTC or ask an admin" % (LOCK_AFTER, locked_until[11:19]))
    try:
        _ph.verify(pw_hash, password)
        ok = not disabled
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok:
        with db.tx():
            n = int(failed) + 1
            lock = iso(t + dt.timedelta(seconds=LOCK_S)) if n >= LOCK_AFTER else None
            db.execute("UPDATE users SET failed = ?, locked_until = ? WHERE id = ?",
                       (0 if lock else n, lock, uid))
            _audit(db, "web:" + name, "sign-in refused",
                   name, ("disabled account" if disabled else "wrong password")
                   + (", account locked until %s" % lock if lock else "") + ", from %s" % client)
        raise SignInRefused("wrong user name or password")
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with db.tx():
        if _ph.check_needs_rehash(pw_hash):
            db.execute("UPDATE users SET pw_hash = ? WHERE id = ?", (_ph.hash(password), uid))
        db.execute("UPDATE users SET failed = 0, locked_until = NULL WHERE id = ?", (uid,))
        db.execute("DELETE FROM web_sessions WHERE expires_at < ?", (iso(t),))
        db.execute("INSERT INTO web_sessions (token_hash, user_id, csrf, created_at, expires_at)"
                   " VALUES (?,?,?,?,?)", (_hash(token), uid, csrf, iso(t),
                                          iso(t + dt.timedelta(seconds=SESSION_S))))
        _audit(db, "web:" + name, "signed in", name, "from %s" % client)
    return _user(row[:4]), token, csrf


def session(db: Db, token: str | None) -> tuple[User, str] | None:
    """(user, CSRF token) of a live session, or None."""
    if not token:
        return None
    row = db.one("SELECT u.id, u.username, u.role, u.sites, s.csrf, s.expires_at, u.disabled"
                 " FROM web_sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
                 (_hash(token),))
    if row is None or row[6] or parse_iso(row[5]) < now():
        return None
    return _user(row[:4]), row[4]


def sign_out(db: Db, token: str, username: str) -> None:
    with db.tx():
        db.execute("DELETE FROM web_sessions WHERE token_hash = ?", (_hash(token),))
        _audit(db, "web:" + username, "signed out", username)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
