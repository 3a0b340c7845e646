# docs/vectors/protocol.json checked inside the unix port (tests/test_sync_vectors.py checks the
# same file under CPython): one codec, the same bytes on both sides.
import json

from gv.sync import protocol as P
from mpt import eq

with open("docs/vectors/protocol.json") as f:
    V = json.load(f)
NONCE = bytes.fromhex(V["nonce"])
KEY = P.Key(bytes.fromhex(V["secret"]), V["reader_id"])


def decode(typ, body):
    if typ == P.T_DELTA:
        flags, head, frm, to, n = P.parse_delta(body)
        ents = []
        for k, r in P.delta_entries(body, n):
            ents.append(bytes(k).hex() + "-" if r is None else bytes(r).hex())
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
    raise AssertionError("type %d" % typ)


def test_hmac_rfc4231():
    for c in V["hmac_sha256_rfc4231"]:
        eq(P.hmac_sha256(bytes.fromhex(c["key"]), bytes.fromhex(c["data"])).hex(), c["mac"])


def test_messages_seal_and_open():
    for m in V["messages"]:
        d = P.DIR_HOST if m["dir"] == "H" else P.DIR_READER
        body = bytes.fromhex(m["body"])
        eq(P.seal(KEY, d, m["type"], NONCE, m["counter"], body).hex(), m["msg"], m["name"])
        typ, nonce, ctr, b = P.unseal(KEY, d, bytes.fromhex(m["msg"]))
        eq((typ, nonce, ctr, bytes(b)), (m["type"], NONCE, m["counter"], body), m["name"])
        eq(decode(typ, b), m["fields"], m["name"])


def test_rejects():
    for r in V["rejects"]:
        key = P.Key(bytes.fromhex(V["secret"]), r.get("reader_id", V["reader_id"]))
        d = P.DIR_HOST if r["dir"] == "H" else P.DIR_READER
        try:
            P.unseal(key, d, bytes.fromhex(r["msg"]))
        except P.ProtoError as e:
            eq(e.reason, r["reason"], r["name"])
            continue
        raise AssertionError("accepted: " + r["name"])


def test_body_rejects():
    parse = {P.T_SNAP: P.parse_snap, P.T_DELTA: P.parse_delta}
    assert V["body_rejects"]
    for r in V["body_rejects"]:
        try:
            parse[r["type"]](bytes.fromhex(r["body"]))
        except P.ProtoError as e:
            eq(e.reason, r["reason"], r["name"])
            continue
        raise AssertionError("accepted: " + r["name"])


def test_rekey_vector():
    r = V["rekey"]
    secret = bytes.fromhex(r["secret"])
    body = P.rekey_body(KEY, NONCE, r["counter"], secret, r["password"])
    eq(body.hex(), r["body"])
    eq(P.seal(KEY, P.DIR_HOST, P.T_REKEY, NONCE, r["counter"], body).hex(), r["msg"])
    eq(P.parse_rekey(KEY, NONCE, r["counter"], body), (secret, r["password"]))


def test_sitekey_vector():
    r = V["sitekey"]
    card, pin = bytes.fromhex(r["card_key"]), bytes.fromhex(r["pin_key"])
    body = P.sitekey_body(KEY, NONCE, r["counter"], r["from_version"], card, pin)
    eq(body.hex(), r["body"])
    eq(P.seal(KEY, P.DIR_HOST, P.T_SITEKEY, NONCE, r["counter"], body).hex(), r["msg"])
    eq(P.parse_sitekey(KEY, NONCE, r["counter"], body), (r["from_version"], card, pin))


def test_flash_record_chunk_is_what_the_store_packs():
    # the reader's own pack13 of snap-raw's cards gives snap-p13's bytes
    from gv.allowlist.pages import pack13
    msgs = {}
    for m in V["messages"]:
        msgs[m["name"]] = m
    raw = bytes.fromhex(msgs["snap-raw"]["fields"]["records"])
    out = bytearray(26)
    for i in range(2):
        pack13(raw, 16 * i, out, 13 * i)
    eq(bytes(out).hex(), msgs["snap-p13"]["fields"]["records"])
