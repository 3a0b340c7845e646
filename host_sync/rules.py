"""The card rules (ID06-style cards), in one table.

A produced card is inactive until its holder activates it; while inactive it can only be
activated or terminated. An active card can be blocked and reactivated (unblocked), or
suspended while the card fee is unpaid and resumed when paid. Any card can be terminated and a
terminated card never comes back: a new card must be ordered.
"""
from __future__ import annotations

from host_sync.ids import InvalidInput

INACTIVE, ACTIVE, BLOCKED, SUSPENDED, TERMINATED = (
    "inactive", "active", "blocked", "suspended", "terminated")
STATUSES = (INACTIVE, ACTIVE, BLOCKED, SUSPENDED, TERMINATED)

# command -> {from status: to status}
TRANSITIONS: dict[str, dict[str, str]] = {
    "activate": {INACTIVE: ACTIVE},
    "block": {ACTIVE: BLOCKED},
    "unblock": {BLOCKED: ACTIVE},
    "suspend": {ACTIVE: SUSPENDED},
    "resume": {SUSPENDED: ACTIVE},
    "terminate": {INACTIVE: TERMINATED, ACTIVE: TERMINATED, BLOCKED: TERMINATED,
                  SUSPENDED: TERMINATED},
}

_WHY = {
    ("block", INACTIVE): "an inactive card cannot be blocked; activate it first, or terminate it",
    ("suspend", INACTIVE): "an inactive card cannot be suspended; activate it first",
    ("activate", BLOCKED): "a blocked card is reactivated with 'cards unblock'",
    ("activate", SUSPENDED): "a suspended card is reactivated with 'cards resume' once the "
                             "fee is paid",
    ("activate", ACTIVE): "the card is already active",
    ("block", BLOCKED): "the card is already blocked",
    ("suspend", SUSPENDED): "the card is already suspended",
    ("block", SUSPENDED): "a suspended card cannot be blocked; terminate it if it is lost",
    ("suspend", BLOCKED): "a blocked card cannot be suspended",
    ("unblock", ACTIVE): "the card is not blocked",
    ("resume", ACTIVE): "the card is not suspended",
}


class RuleRefused(InvalidInput):
    """A status change the card rules do not allow (CLI exit code 3)."""


def next_status(command: str, current: str) -> str:
    if current == TERMINATED:
        raise RuleRefused("the card is terminated, which is final: it can never be used again; "
                          "order a new card")
    to = TRANSITIONS[command].get(current)
    if to is None:
        why = _WHY.get((command, current),
                       "a %s card cannot be %s" % (current, _PAST.get(command, command)))
        raise RuleRefused(why)
    return to


_PAST = {"activate": "activated", "block": "blocked", "unblock": "unblocked",
         "suspend": "suspended", "resume": "resumed", "terminate": "terminated"}


def past(command: str) -> str:
    return _PAST[command]


VISITOR_REFUSED = ("visitor cards carry no RFID, so no gate can read them and they cannot be "
                   "registered in the staff ledger; a visitor must be accompanied by someone "
                   "with a standard card")

DEFAULT_VALIDITY_YEARS = 5
