"""docs/vectors/protocol.json under CPython (tests/mp/test_sync_vectors.py checks it in the unix
port), and the codec's parsers under hypothesis: bad input only ever raises ProtoError."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import host_sync  # noqa: F401
from gv.sync import protocol as P

V = json.loads((Path(__file__).resolve().parent.parent / "docs/vectors/protocol.json").read_text())
NONCE = bytes.fromhex(V["nonce"])
KEY = P.Key(bytes.fromhex(V["secret"]), V["reader_id"])


def decode(typ: int, body) -> dict:
    if typ == P.T_DELTA:
        flags, head, frm, to, n = P.parse_delta(body)
        ents = [bytes(k).hex() + "-" if r is None else bytes(r).hex()
                for k, r in P.delta_entries(body, n)]
        return {"flags": flags, "head": head, "from": frm, "to": to, "entries": ents}
    if typ == P.T_SNAP:
        flags, head, v, count, off, n, data = P.parse_snap(body)
        recs = bytes(data)
        return {"flags": flags, "head": head, "version": v, "count": count, "offset": off,
                "n": n, "records": recs.hex()}
    if typ == P.T_EVACK:
        return {"upto": P.parse_evack(body)}
    if typ == P.T_CMD:
        c, a = P.parse_cmd(body)
        return {"cmd": c, "arg": a}
    if typ == P.T_HELLO:
        return P.parse_hello(body)
    if typ in (P.T_SYNC, P.T_ACK):
        a, b, c = P.parse_sync(body)
        return {"al_version": a, "snap_version": b, "snap_offset": c}
    if typ == P.T_EVENTS:
        return {"events": [e.hex() for e in P.parse_events(body)]}
    if typ == P.T_REJECT:
        r, t, c, k = P.parse_reject(body)
        return {"reason": r, "type": t, "count": c, "counter": k}
    if typ == P.T_CMDRES:
        k, c, r = P.parse_cmdres(body)
        return {"counter": k, "cmd": c, "result": r}
    if typ == P.T_HEALTH:
        return P.parse_health(body)
    raise AssertionError(typ)


def test_hmac_matches_rfc4231_and_stdlib():
    import hashlib
    import hmac
    for c in V["hmac_sha256_rfc4231"]:
        key, data = bytes.fromhex(c["key"]), bytes.fromhex(c["data"])
        assert P.hmac_sha256(key, data).hex() == c["mac"]
        assert hmac.new(key, data, hashlib.sha256).hexdigest() == c["mac"]


def test_messages_seal_and_open():
    for m in V["messages"]:
        d = P.DIR_HOST if m["dir"] == "H" else P.DIR_READER
        body = bytes.fromhex(m["body"])
        assert P.seal(KEY, d, m["type"], NONCE, m["counter"], body).hex() == m["msg"], m["name"]
        typ, nonce, ctr, b = P.unseal(KEY, d, bytes.fromhex(m["msg"]))
        assert (typ, nonce, ctr, bytes(b)) == (m["type"], NONCE, m["counter"], body)
        assert decode(typ, b) == m["fields"], m["name"]


def test_rejects():
    for r in V["rejects"]:
        key = P.Key(bytes.fromhex(V["secret"]), r.get("reader_id", V["reader_id"]))
        d = P.DIR_HOST if r["dir"] == "H" else P.DIR_READER
        try:
            P.unseal(key, d, bytes.fromhex(r["msg"]))
        except P.ProtoError as e:
            assert e.reason == r["reason"], r["name"]
        else:
            raise AssertionError("accepted: " + r["name"])


def test_body_rejects():
    # authentic messages whose body the parser refuses (a retired zlib chunk among them)
    parse = {P.T_SNAP: P.parse_snap, P.T_DELTA: P.parse_delta}
    assert V["body_rejects"]
    for r in V["body_rejects"]:
        try:
            parse[r["type"]](bytes.fromhex(r["body"]))
        except P.ProtoError as e:
            assert e.reason == r["reason"], r["name"]
        else:
            raise AssertionError("accepted: " + r["name"])


PARSERS = [P.parse_delta, P.parse_snap, P.parse_evack, P.parse_cmd, P.parse_hello,
           P.parse_sync, P.parse_events, P.parse_reject, P.parse_cmdres, P.parse_health]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_raise_only_protoerror(body):
    for parse in PARSERS:
        try:
            r = parse(body)
            if parse is P.parse_delta:
                list(P.delta_entries(body, r[4]))
        except P.ProtoError:
            pass
    try:
        P.unseal(KEY, P.DIR_HOST, body)
        raise AssertionError("random bytes verified")
    except P.ProtoError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 500), st.integers(0, 7))
def test_any_bit_flip_is_caught(pos, bit):
    m = bytearray.fromhex(V["messages"][0]["msg"])
    m[pos % len(m)] ^= 1 << bit
    try:
        P.unseal(KEY, P.DIR_HOST, bytes(m))
        raise AssertionError("tampered message verified")
    except P.ProtoError as e:
        assert e.reason in (P.E_MAC, P.E_PROTO)


def test_rekey_vector_and_its_parser_on_junk():
    import pytest
    r = V["rekey"]
    secret = bytes.fromhex(r["secret"])
    body = P.rekey_body(KEY, NONCE, r["counter"], secret, r["password"])
    assert body.hex() == r["body"]
    assert P.seal(KEY, P.DIR_HOST, P.T_REKEY, NONCE, r["counter"], body).hex() == r["msg"]
    assert P.parse_rekey(KEY, NONCE, r["counter"], body) == (secret, r["password"])
    # under another counter the keystream differs: the pair never comes out
    try:
        assert P.parse_rekey(KEY, NONCE, r["counter"] + 1, body)[0] != secret
    except P.ProtoError:
        pass  # its length byte came out wrong: malformed
    for junk in (b"", bytes(33), bytes(200)):
        with pytest.raises(P.ProtoError):
            P.parse_rekey(KEY, NONCE, r["counter"], junk)


def test_sitekey_vector_and_its_parser_on_junk():
    import pytest
    r = V["sitekey"]
    card, pin = bytes.fromhex(r["card_key"]), bytes.fromhex(r["pin_key"])
    body = P.sitekey_body(KEY, NONCE, r["counter"], r["from_version"], card, pin)
    assert body.hex() == r["body"]
    assert P.seal(KEY, P.DIR_HOST, P.T_SITEKEY, NONCE, r["counter"], body).hex() == r["msg"]
    assert P.parse_sitekey(KEY, NONCE, r["counter"], body) == (r["from_version"], card, pin)
    # under another counter the keystream differs: the keys never come out
    assert P.parse_sitekey(KEY, NONCE, r["counter"] + 1, body)[1:] != (card, pin)
    for junk in (b"", bytes(35), bytes(37)):
        with pytest.raises(P.ProtoError):
            P.parse_sitekey(KEY, NONCE, r["counter"], junk)
    with pytest.raises(ValueError):
        P.sitekey_body(KEY, NONCE, 1, 0, card, pin)  # version 0 is "none yet"


def test_flash_record_chunk_holds_the_raw_chunks_cards_as_a_store_keeps_them():
    from tests.host_kit import kept, unpack_chunk
    msgs = {m["name"]: m for m in V["messages"]}
    raw = bytes.fromhex(msgs["snap-raw"]["fields"]["records"])
    p13 = bytes.fromhex(msgs["snap-p13"]["fields"]["records"])
    assert len(raw) // 16 == len(p13) // 13 == 2
    got = unpack_chunk(P, P.F_P13, 2, p13)
    for i in range(2):
        assert got[16 * i:16 * i + 16] == kept(raw[16 * i:16 * i + 16])
