"""The card rules as one table, checked exhaustively, and the identifier parsers under random
input (they return a normalised value or raise InvalidInput with a reason, nothing else)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

import host_sync  # noqa: F401
from host_sync import ids, rules

A, I, B, S, T = rules.ACTIVE, rules.INACTIVE, rules.BLOCKED, rules.SUSPENDED, rules.TERMINATED
ALLOWED = {  # (command, from) -> to, straight from the card FAQ and the issue
    ("activate", I): A, ("terminate", I): T,
    ("block", A): B, ("suspend", A): S, ("terminate", A): T,
    ("unblock", B): A, ("terminate", B): T,
    ("resume", S): A, ("terminate", S): T,
}


@pytest.mark.parametrize("command", sorted(rules.TRANSITIONS))
@pytest.mark.parametrize("status", rules.STATUSES)
def test_every_command_from_every_status(command, status):
    want = ALLOWED.get((command, status))
    if want is None:
        with pytest.raises(rules.RuleRefused) as e:
            rules.next_status(command, status)
        assert str(e.value)
        if status == T:
            assert "final" in str(e.value)
    else:
        assert rules.next_status(command, status) == want


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789-+ ", max_size=16))
def test_personal_identity_numbers(s):
    try:
        v = ids.pnr(s)
    except ids.InvalidInput as e:
        assert str(e)
        return
    if v:
        assert len(v) == 13 and v[8] == "-" and ids.pnr(v) == v


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF:- xg", max_size=30))
def test_uids_keep_leading_zeros(s):
    try:
        v = ids.uid_hex(s)
    except ids.InvalidInput as e:
        assert str(e)
        return
    assert len(v) in (8, 14, 20) and bytes.fromhex(v).hex() == v
    assert v == "".join(c for c in s.lower() if c in "0123456789abcdef")


def test_known_numbers():
    assert ids.pnr("811218-9876") == "19811218-9876"
    assert ids.pnr("198112189876") == "19811218-9876"
    with pytest.raises(ids.InvalidInput):
        ids.pnr("19811218-9875")  # wrong check digit
    assert ids.org_no("556036-0793") == "556036-0793"
    with pytest.raises(ids.InvalidInput):
        ids.org_no("556036-0794")
    assert ids.uid_hex("00 0A 0B 0C") == "000a0b0c"
    assert ids.card_no("ab-2412-000001") == "AB-2412-000001"
