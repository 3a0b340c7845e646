"""Rotating a site's card key (and, when asked, its PIN key): `host-sync sites rotate-keys`.

1. rotate(): in one transaction the site takes new keys, every record of the site is recomputed
   under them and published as a new allowlist version V (the first under the new keys), and a
   settings row `sitekey:<site>` keeps the rotation (V, generation, the old keys, who, when,
   which readers stored the new keys). The PIN key cannot carry PINs over: the host keeps 10-bit
   verifiers, not PINs (docs/pin-security.md), so rotating it clears the site's verifiers.
2. serve (host_sync/syncer.py) answers a reader still below V with a SITEKEY (the new keys
   encrypted and MACed under its secret, docs/protocol.md) instead of anything crossing V; the
   reader keeps them pending and answers CMDRES(C_SITEKEY); acked() records that.
3. The reader asks for a rebuild and gets a SNAP at the head (>= V): its last chunk switches the
   reader's store and keys in one step. Its ACK moves its applied version to >= V.
4. finish(): once every reader of the site (revoked ones aside) has applied V or later, the old
   keys are deleted from the registry (the settings row goes) and the audit log says so.
"""
from __future__ import annotations

import json
import secrets
from typing import Any

from host_sync.ids import InvalidInput
from host_sync.registry import Registry
from host_sync.timeutil import now_iso

PREFIX = "sitekey:"
KEEP_SENT = 8  # counters of SITEKEYs sent that an answer may still name


def get(reg: Registry, site: str) -> dict | None:
    v = reg.db.scalar("SELECT value FROM settings WHERE name = ?", (PREFIX + site,))
    return json.loads(v) if v else None


def _put(reg: Registry, site: str, d: dict) -> None:
    reg.db.execute("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                   " SET value = excluded.value", (PREFIX + site, json.dumps(d)))


def pin_loss(reg: Registry, site: str) -> int:
    """Cards of the site that need a PIN and have one on record: a PIN key rotation clears them."""
    return int(reg.db.scalar("SELECT COUNT(*) FROM card_sites s JOIN cards c ON c.card_no ="
                             " s.card_no WHERE s.site_id = ? AND c.pin_required = 1 AND"
                             " s.pin_verifier IS NOT NULL", (site,)) or 0)


def rotate(reg: Registry, site: str, pin: bool = False) -> dict[str, Any]:
    """New card key (and PIN key with pin=True) for `site`, every record republished under it.
    Refused (InvalidInput, nothing changed) while an earlier rotation is still being applied."""
    with reg.db.tx():
        reg.site(site)
        cur = get(reg, site)
        if cur is not None:
            raise InvalidInput("site %s: key rotation %d is still being applied (%s); it must"
                               " finish first (a reader that is gone for good: host-sync readers"
                               " remove)" % (site, cur["gen"], progress_text(reg, site)))
        old_card, old_pin = reg.site_keys(site)
        card = secrets.token_bytes(16)
        pinkey = secrets.token_bytes(16) if pin else old_pin
        cleared = pin_loss(reg, site) if pin else 0
        reg.db.execute("UPDATE sites SET card_key = ?, pin_key = ? WHERE id = ?",
                       (card.hex(), pinkey.hex(), site))
        reg._keyers.pop(site, None)
        if pin:
            reg.db.execute("UPDATE card_sites SET pin_verifier = NULL WHERE site_id = ?", (site,))
        cols = ("card_no", "uid", "status", "pin_required", "valid_from", "valid_until")
        rows = reg.db.all("SELECT %s, s.pin_verifier FROM cards c JOIN card_sites s ON"
                          " s.card_no = c.card_no WHERE s.site_id = ? ORDER BY c.card_no"
                          % ", ".join("c." + x for x in cols), (site,))
        records = []
        for row in rows:  # one query, not one per card: a big site's rotation is one pass
            card = dict(zip(cols, row[:-1]))
            k, r = reg._record(site, card, row[-1])
            records.append((k, r, card["card_no"]))
        # the new allowlist replaces the old one whole: no old-key record survives it
        reg.db.execute("DELETE FROM allowlist WHERE site_id = ?", (site,))
        first = reg.current_version(site) + 1
        last = reg._publish(site, "site keys rotated", site, records)
        gen = int(reg.db.scalar("SELECT value FROM settings WHERE name = ?",
                                ("sitekey_gen:" + site,)) or 1) + 1
        reg.db.execute("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO"
                       " UPDATE SET value = excluded.value", ("sitekey_gen:" + site, str(gen)))
        _put(reg, site, {"gen": gen, "from": first, "pin": bool(pin), "at": now_iso(),
                         "by": reg.actor, "old": [old_card.hex(), old_pin.hex()],
                         "acked": [], "sent": {}})
        reg.audit("site keys rotated", site, "generation %d: new card key%s; %d record(s) under"
                  " it from version %d; the old keys are kept until every reader has applied it"
                  "%s" % (gen, " and PIN key" if pin else "", len(records), first,
                          "; %d card(s) need their PIN set again" % cleared if pin else ""))
        n = len([r for r in reg.readers(site) if not reg.revoked(r["id"])])
        if not n:
            finish(reg, site)  # no reader holds the old keys: they go at once
    return {"site": site, "gen": gen, "from": first, "version": last, "records": len(records),
            "pins_cleared": cleared, "readers": n}


def progress(reg: Registry, site: str) -> tuple[int, int]:
    """(readers on the new keys, readers that count) for the site's rotation in progress."""
    d = get(reg, site)
    readers = [r for r in reg.readers(site) if not reg.revoked(r["id"])]
    if d is None:
        return len(readers), len(readers)
    return sum(1 for r in readers if r["applied_version"] >= d["from"]), len(readers)


def progress_text(reg: Registry, site: str) -> str:
    done, n = progress(reg, site)
    return "%d of %d reader(s) on the new keys" % (done, n)


def rotations(reg: Registry) -> dict[str, dict]:
    return {name[len(PREFIX):]: json.loads(v) for name, v in reg.db.all(
        "SELECT name, value FROM settings WHERE name LIKE ?", (PREFIX + "%",))}


def keys_for(reg: Registry, site: str) -> tuple[int, bytes, bytes, list[str]] | None:
    """(from_version, card_key, pin_key, readers that stored them) while a rotation is under
    way, else None (what the syncer asks)."""
    d = get(reg, site)
    if d is None:
        return None
    card, pin = reg.site_keys(site)
    return d["from"], card, pin, list(d["acked"])


def mark_sent(reg: Registry, site: str, rid: str, counter: int) -> None:
    with reg.db.tx():
        d = get(reg, site)
        if d is not None:
            d["sent"][rid] = (d["sent"].get(rid, []) + [int(counter)])[-KEEP_SENT:]
            _put(reg, site, d)


def acked(reg: Registry, site: str, rid: str, counter: int, ok: bool) -> bool:
    """The reader's CMDRES for a SITEKEY this host sent: it stored the keys (or could not)."""
    with reg.db.tx():
        d = get(reg, site)
        if d is None or int(counter) not in d["sent"].get(rid, []):
            return False
        if not ok:
            reg.audit("site keys not stored", rid, "site=%s generation %d: the reader could not"
                      " store them; sent again" % (site, d["gen"]))
            return False
        if rid not in d["acked"]:
            d["acked"].append(rid)
            _put(reg, site, d)
    return True


def finish(reg: Registry, site: str) -> bool:
    """Drop the old keys once every reader of the site applied the new generation."""
    with reg.db.tx():
        d = get(reg, site)
        if d is None:
            return False
        done, n = progress(reg, site)
        if done < n:
            return False
        reg.db.execute("DELETE FROM settings WHERE name = ?", (PREFIX + site,))
        reg.audit("old site keys dropped", site, "generation %d is applied by all %d reader(s);"
                  " the old keys are deleted (rotation by %s at %s)" % (d["gen"], n, d["by"],
                                                                        d["at"]))
    return True
