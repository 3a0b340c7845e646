"""Validation of the identifiers operators type or import: card numbers, card UIDs, Swedish
personal identity numbers and organisation numbers. Each check raises InvalidInput with a
message an operator can act on."""
from __future__ import annotations

import datetime as dt
import re


class InvalidInput(ValueError):
    """Input that breaks a rule (CLI exit code 3)."""


_CARD_NO = re.compile(r"^([A-Z]{2})-(\d{2})(\d{2})-(\d{6})$")
# at most 32: site and reader ids are parts of the readers' MQTT topics (gv.sync.protocol.valid_name)
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_READER_ID = _SITE_ID
UID_LENGTHS = (4, 7, 10)  # ISO 14443-A single, double and triple size


def card_no(s: str) -> str:
    """`BB-YYMM-NNNNNN`: two letters, the issue year and month, a six-digit serial."""
    v = s.strip().upper()
    m = _CARD_NO.match(v)
    if not m:
        raise InvalidInput("card number %r is not BB-YYMM-NNNNNN (two letters, issue year and "
                           "month, six-digit serial)" % s)
    if not 1 <= int(m.group(3)) <= 12:
        raise InvalidInput("card number %r: month %s is not 01-12" % (s, m.group(3)))
    return v


def uid_hex(s: str) -> str:
    """A card UID in hex; separators (':', '-', spaces) allowed; leading zeros are kept."""
    v = re.sub(r"[\s:-]", "", s.strip()).lower()
    if not v:
        raise InvalidInput("no card UID given")
    if not re.fullmatch(r"[0-9a-f]+", v) or len(v) % 2:
        raise InvalidInput("card UID %r is not an even number of hex digits" % s)
    if len(v) // 2 not in UID_LENGTHS:
        raise InvalidInput("card UID %r is %d bytes; an NFC card UID is 4, 7 or 10 bytes"
                           % (s, len(v) // 2))
    return v


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def luhn_digit(nine: str) -> str:
    """The check digit that makes nine digits a valid ten-digit number (for test data)."""
    for c in "0123456789":
        if _luhn_ok(nine + c):
            return c
    raise AssertionError


def pnr(s: str) -> str:
    """Personal identity number (or coordination number) as YYYYMMDD-NNNN; empty allowed."""
    v = s.strip()
    if not v:
        return ""
    m = re.fullmatch(r"(\d{2})?(\d{6})[-+]?(\d{4})", v)
    if not m:
        raise InvalidInput("personal identity number %r is not YYYYMMDD-NNNN" % s)
    ten = m.group(2) + m.group(3)
    if not _luhn_ok(ten):
        raise InvalidInput("personal identity number %r has a wrong check digit" % s)
    month, day = int(ten[2:4]), int(ten[4:6])
    if not 1 <= month <= 12 or not (1 <= day <= 31 or 61 <= day <= 91):
        raise InvalidInput("personal identity number %r has no valid date" % s)
    century = m.group(1) or ("19" if "+" in v else "20" if int(ten[:2]) <= 30 else "19")
    return "%s%s-%s" % (century, m.group(2), m.group(3))


def org_no(s: str) -> str:
    """Swedish organisation number NNNNNN-NNNN; empty allowed."""
    v = s.strip()
    if not v:
        return ""
    m = re.fullmatch(r"(?:16)?(\d{6})-?(\d{4})", v)
    if not m or not _luhn_ok(m.group(1) + m.group(2)):
        raise InvalidInput("organisation number %r is not NNNNNN-NNNN with a valid check digit"
                           % s)
    return "%s-%s" % (m.group(1), m.group(2))


def site_id(s: str) -> str:
    v = s.strip()
    if not _SITE_ID.match(v):
        raise InvalidInput("site %r: use lower-case letters, digits, '-' or '_' (max 32: it is part "
                           "of the readers' MQTT topics)" % s)
    return v


def reader_id(s: str) -> str:
    v = s.strip()
    if not _READER_ID.match(v):
        raise InvalidInput("reader id %r: use lower-case letters, digits, '-' or '_' (max 32: it "
                           "is part of its MQTT topics)" % s)
    return v


def pin_digits(s: str) -> str:
    v = s.strip()
    if not re.fullmatch(r"\d{4,6}", v):
        raise InvalidInput("a PIN is 4 to 6 digits")
    return v


def date(s: str, label: str) -> dt.date:
    """A day YYYY-MM-DD typed or imported under `label` (--day, valid_from...). A value of the
    right form that is no day of the calendar (2026-12-32, 2026-02-30) is said to be that, with
    why, not that its form is wrong."""
    v = s.strip()
    try:
        return dt.date.fromisoformat(v)
    except ValueError as e:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise InvalidInput("%s %s is not a date: %s" % (label, v, e)) from None
        raise InvalidInput("%s %r is not a date YYYY-MM-DD" % (label, s)) from None


DEFAULT_TZ = "Europe/Stockholm"


def time_zone(s: str) -> str:
    """An IANA time zone name (Europe/Stockholm) or UTC."""
    v = (s or "").strip()
    if v.upper() == "UTC":
        return "UTC"
    from zoneinfo import ZoneInfo
    try:
        ZoneInfo(v)
    except Exception:
        raise InvalidInput("unknown time zone %r (e.g. Europe/Stockholm or UTC)" % s)
    return v


_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def address_problem(s: str) -> str | None:
    """Why `s` is not an address a reader or the host can reach the broker at, or None.

    A name of digits and dots only is taken for an IPv4 address (resolvers and the readers'
    socket code do the same), so it must be one: 192.168.10.300 is a typo, not a host name,
    and would otherwise go into the broker's certificate and every reader's config. Anything
    else is an IPv6 address or a host name per RFC 1123 (labels of letters, digits and '-',
    1-63 characters, not starting or ending with '-'; at most 253 in all)."""
    import ipaddress
    v = s.strip()
    if not v:
        return "empty"
    if re.fullmatch(r"[0-9.]+", v):
        try:
            ipaddress.IPv4Address(v)
        except ValueError as e:
            return "not a valid IPv4 address (%s), which a name of digits and dots must be" % e
        return None
    if ":" in v:
        try:
            ipaddress.IPv6Address(v)
        except ValueError as e:
            return "not an IPv6 address (%s)" % e
        return None
    if len(v) > 253:
        return "a host name is at most 253 characters, this has %d" % len(v)
    bad = [p for p in v.split(".") if not _HOST_LABEL.match(p)]
    if bad:
        return ("neither an IP address nor a host name (RFC 1123: labels of letters, digits "
                "and '-', 1-63 characters, not starting or ending with '-'; %s is not one)"
                % (repr(bad[0]) if bad[0] else "an empty label"))
    return None


def broker_address(s: str, option: str) -> str:
    """An address for the broker given by `option` (e.g. --address), stripped; refused by name
    and reason (address_problem) otherwise."""
    why = address_problem(s)
    if why:
        raise InvalidInput("%s %s: %s" % (option, s.strip() or repr(s), why))
    return s.strip()
