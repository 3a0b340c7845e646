"""Rotating one reader's secret and broker password (`host-sync readers rotate`), with no
window in which the old pair still works after the switch:

1. start(): a new pair is kept as pending (settings row `rekey:<reader>`), audit-logged.
2. serve sends it in a REKEY (sealed and encrypted under the old secret, docs/protocol.md) while
   the reader is connected, again every RESEND_S until answered; each counter sent is recorded.
3. The reader stores the pair on its flash and answers CMDRES(C_REKEY, ok) under the old secret.
4. commit() (on that answer, for a counter this host sent): the registry takes the new pair in
   one transaction, the credentials generation moves (every serve drops the old session), the
   broker's passwd/acl are rewritten and mosquitto reloaded: it disconnects the old login and
   refuses the old password from then on. The reader logs in with the new pair (it falls back
   to the old one only while the broker still takes it, i.e. before the switch).
"""
from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from host_sync.ids import InvalidInput
from host_sync.registry import Registry
from host_sync.timeutil import now_iso

log = logging.getLogger("host_sync.rekey")

PREFIX = "rekey:"
RESEND_S = 10.0
KEEP_SENT = 8  # counters of REKEYs sent that an answer may still name


def _get(reg: Registry, rid: str) -> dict | None:
    v = reg.db.scalar("SELECT value FROM settings WHERE name = ?", (PREFIX + rid,))
    return json.loads(v) if v else None


def _put(reg: Registry, rid: str, d: dict) -> None:
    reg.db.execute("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                   " SET value = excluded.value", (PREFIX + rid, json.dumps(d)))


def start(reg: Registry, rid: str) -> None:
    with reg.db.tx():
        r = reg.reader(rid)
        if reg.revoked(rid):
            raise InvalidInput("reader %s is revoked: nothing to rotate" % rid)
        again = _get(reg, rid) is not None
        _put(reg, rid, {"secret": secrets.token_hex(32), "password": secrets.token_urlsafe(24),
                        "at": now_iso(), "by": reg.actor, "sent": []})
        reg.audit("reader re-key started", rid, "site=%s: new secret and broker password issued%s;"
                  " sent when it is connected" % (r["site_id"], " (replacing an unfinished one)"
                                                  if again else ""))


def pending(reg: Registry) -> dict[str, dict]:
    return {name[len(PREFIX):]: json.loads(v) for name, v in reg.db.all(
        "SELECT name, value FROM settings WHERE name LIKE ?", (PREFIX + "%",))}


def mark_sent(reg: Registry, rid: str, counter: int) -> None:
    with reg.db.tx():
        d = _get(reg, rid)
        if d is not None:
            d["sent"] = (d.get("sent", []) + [int(counter)])[-KEEP_SENT:]
            _put(reg, rid, d)


def commit(reg: Registry, rid: str, counter: int) -> bool:
    """The reader has stored the pair sent with `counter`: switch to it. False when no pending
    re-key of this reader was sent with that counter (an old answer, or one replaced since)."""
    with reg.db.tx():
        d = _get(reg, rid)
        if d is None or int(counter) not in d.get("sent", []):
            return False
        reg.db.execute("UPDATE readers SET secret = ?, broker_password = ? WHERE id = ?",
                       (d["secret"], d["password"], rid))
        reg.db.execute("DELETE FROM settings WHERE name = ?", (PREFIX + rid,))
        reg.bump_credentials()
        reg.audit("reader re-keyed", rid, "the reader stored its new secret and broker password;"
                  " the old ones are deleted (started by %s at %s)" % (d["by"], d["at"]))
    return True


def refresh_broker(reg: Registry) -> str:
    """Rewrite the broker's accounts from the registry and reload it: the folder `broker config
    --out` recorded (and its reload command), else the site's broker (`site init`)."""
    from host_sync import broker, siteconf
    from host_sync.cli import _accounts_of

    readers, hosts = _accounts_of(reg)
    out = reg.db.scalar("SELECT value FROM settings WHERE name = 'broker_dir'")
    if out:
        broker.write_accounts(out, readers, hosts)
        cmd = reg.db.scalar("SELECT value FROM settings WHERE name = 'broker_reload'")
        done = broker.reload(command=cmd)
    else:
        conf = siteconf.SiteConf.load()
        if conf is None:
            raise broker.BrokerConfigError("no broker config known to rewrite")
        siteconf.write_broker(conf, readers, hosts)
        done = siteconf.reload_broker(conf)
    reg.audit("broker accounts reloaded", out or "site broker", "%d reader account(s); %s"
              % (len(readers), done))
    return done


def on_answer(reg: Registry, rid: str, counter: int, ok: bool) -> Any:
    """A reader's CMDRES for a REKEY: commit and reload the broker (serve calls this)."""
    if not ok:
        reg.audit("reader re-key failed", rid, "the reader could not store the new pair; "
                  "retried while pending")
        return False
    if not commit(reg, rid, counter):
        return False
    try:
        done = refresh_broker(reg)
        log.info("reader %s re-keyed; broker: %s", rid, done)
    except Exception as e:  # noqa: BLE001 - said loudly: the reader can't log in until reloaded
        log.error("reader %s re-keyed but the broker was not reloaded (%s): reload it now", rid, e)
        reg.audit("broker reload failed", rid, str(e))
    return True
