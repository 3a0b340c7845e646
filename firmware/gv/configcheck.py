# The one validation of a reader config (gv.config.problems calls it): the host CLI (`readers
# add/config`), tools.provision, the deploy and the reader itself run this same code (plain Python
# that runs under CPython and MicroPython), so a config the host writes is one the reader boots
# with. Every message names the field and what is allowed, never a secret's value. A module of its
# own so a reader can drop its bytecode (about 4 KB) from the heap once its config is checked.

PIN_POLICIES = ("never", "card", "always")

# Every gate setting a config may carry (gv.gate.core.DEFAULTS has the defaults): (low, high,
# unit). Durations stay below 2^29 ms (6.2 days), the most ticks_add() takes on an ESP32, and so
# below 2^30 where a 32-bit MicroPython int would live on the heap.
GATE_RANGES = {
    "hold_ms": (100, 10000, "ms a card must be held"),
    "open_ms": (500, 60000, "ms the door stays open"),
    "pin_min": (4, 6, "PIN digits"),
    "pin_max": (4, 6, "PIN digits"),
    "pin_first_ms": (1000, 120000, "ms to the first key"),
    "pin_key_ms": (1000, 60000, "ms between keys"),
    "wave_count": (1, 20, "short presentations"),
    "wave_window_ms": (1000, 600000, "ms"),
    "wave_lock_ms": (1000, 3600000, "ms"),
    "burst_count": (1, 100, "refused cards"),
    "burst_window_ms": (1000, 600000, "ms"),
    "reader_lock_ms": (1000, 3600000, "ms"),
    "pin_tries": (1, 20, "wrong PINs"),
    "card_lock_ms": (1000, 3600000, "ms"),
    "lock_cap_ms": (1000, 86400000, "ms"),
    "pin_hard_after": (0, 20, "card locks before one only the host clears (0: never)"),
}
BROKER_RANGES = {  # optional broker settings: (low, high, unit)
    "port": (1, 65535, "TCP port"),
    "keepalive": (1, 3600, "s"),
    "connect_timeout_ms": (100, 60000, "ms"),
}
LOOPBACK = ("localhost", "localhost.localdomain", "ip6-localhost", "::1", "0.0.0.0", "::")
PASSWORD_MIN = 16  # broker password (the host issues 32 characters)


def _name_ok(s):
    # site and reader ids are MQTT topic parts: 1..32 of [A-Za-z0-9_-] (gv.sync.protocol.valid_name)
    if not isinstance(s, str) or not 0 < len(s) <= 32:
        return False
    for c in s:
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "_-"):
            return False
    return True


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _hex_problem(d, key, size):
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, str) or not v:
        return "missing"
    try:
        b = bytes.fromhex(v)
    except ValueError:
        return "is not hex"
    if len(b) != size:
        return "must be %d bytes of hex (%d hex digits)" % (size, 2 * size)
    return None


def is_loopback(host):
    h = host.strip().lower().rstrip(".")
    return h in LOOPBACK or h.startswith("127.") or h.startswith("::ffff:127.")


def _range(out, field, v, lo, hi, unit):
    if not _int(v):
        out.append("%s: must be a whole number %d..%d (%s)" % (field, lo, hi, unit))
    elif not lo <= v <= hi:
        out.append("%s: %d is outside %d..%d (%s)" % (field, v, lo, hi, unit))


def _wifi(out, w):
    if not isinstance(w, dict):
        out.append("wifi: missing (ssid and password; \"open\": true for a network without one)")
        return
    ssid = w.get("ssid")
    if not isinstance(ssid, str) or not 1 <= len(ssid.encode()) <= 32:
        out.append("wifi.ssid: missing or longer than 32 bytes (1..32)")
    pw = w.get("password")
    is_open = w.get("open")
    if is_open is not None and not isinstance(is_open, bool):
        out.append("wifi.open: must be true or false")
    if is_open is True:
        if pw:
            out.append("wifi.password: must be empty on an open network (wifi.open is true)")
    elif not isinstance(pw, str) or not pw:
        out.append("wifi.password: missing (8..63 characters; say \"open\": true for an open "
                   "network)")
    elif not 8 <= len(pw) <= 64:
        out.append("wifi.password: %d characters, WPA2 takes 8..63 (or 64 hex digits)" % len(pw))


def _broker(out, b, reader_id, real):
    if not isinstance(b, dict):
        out.append("broker: missing (host, port, tls, ca, user, password)")
        return
    host = b.get("host")
    if not isinstance(host, str) or not host.strip():
        out.append("broker.host: missing (the broker's address on the site network)")
    elif len(host) > 253:
        out.append("broker.host: longer than 253 characters")
    elif real and is_loopback(host):
        out.append("broker.host: %s is the reader itself; give the broker's address on the site "
                   "network" % host)
    if real and "port" not in b:
        out.append("broker.port: missing (1..65535, 8883 for MQTT over TLS)")
    for k in BROKER_RANGES:
        if k in b:
            lo, hi, unit = BROKER_RANGES[k]
            _range(out, "broker." + k, b[k], lo, hi, unit)
    tls = b.get("tls", True)
    if not isinstance(tls, bool):
        out.append("broker.tls: must be true or false")
    elif tls:
        ca = b.get("ca")
        if not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca:
            out.append("broker.ca: missing; TLS needs the site CA certificate (PEM)")
    sn = b.get("server_name")
    if sn is not None and (not isinstance(sn, str) or not sn):
        out.append("broker.server_name: must be a host name")
    if b.get("user", reader_id) != reader_id:
        out.append("broker.user: must be the reader's own account (its reader_id)")
    pw = b.get("password")
    if not isinstance(pw, str) or len(pw) < PASSWORD_MIN:
        out.append("broker.password: missing or shorter than %d characters" % PASSWORD_MIN)


def _gate(out, g):
    if g is None:
        return
    if not isinstance(g, dict):
        out.append("gate: must be an object")
        return
    for k in sorted(g):  # the same order of messages on every port
        if k == "pin_policy":
            if g[k] not in PIN_POLICIES:
                out.append("gate.pin_policy: must be never, card or always")
        elif k in GATE_RANGES:
            lo, hi, unit = GATE_RANGES[k]
            _range(out, "gate." + k, g[k], lo, hi, unit)
        else:
            out.append("gate.%s: unknown setting (known: pin_policy, %s)"
                       % (k, ", ".join(sorted(GATE_RANGES))))
    lo, hi = g.get("pin_min", 4), g.get("pin_max", 6)
    if _int(lo) and _int(hi) and lo > hi:
        out.append("gate.pin_min: %d is more than gate.pin_max %d" % (lo, hi))


def problems(d, real=None):
    """Everything wrong with a reader config, one message per field (names and allowed ranges,
    never a secret). `real`: the config is for a real reader (Wi-Fi needed, a loopback broker
    refused); default: on the host unless the config says "virtual": true, on the device when
    it is an ESP32. A virtual board (docs/virtual-board.md) has no Wi-Fi and its broker is on
    the same host."""
    if not isinstance(d, dict):
        return ["config: not a JSON object"]
    out = []
    virtual = d.get("virtual", False)
    if not isinstance(virtual, bool):
        out.append("virtual: must be true or false")
        virtual = False
    if real is None:
        real = not virtual
    elif real and virtual:
        out.append("virtual: this config is for a virtual board, not a real reader")
    for k in ("reader_id", "site"):
        if not _name_ok(d.get(k)):
            out.append("%s: missing or not 1..32 of A-Z a-z 0-9 - _ (it is part of the reader's "
                       "MQTT topics)" % k)
    why = _hex_problem(d, "secret", 32)
    if why:
        out.append("secret: " + why)
    keys = d.get("site_keys")
    if not isinstance(keys, dict):
        out.append("site_keys: missing (card and pin, 16 bytes of hex each)")
    else:
        for k in ("card", "pin"):
            why = _hex_problem(keys, k, 16)
            if why:
                out.append("site_keys.%s: %s" % (k, why))
    if real or d.get("wifi"):  # a virtual board may have neither (an empty broker: no sync)
        _wifi(out, d.get("wifi"))
    if real or d.get("broker"):
        _broker(out, d.get("broker"), d.get("reader_id"), real)
    _gate(out, d.get("gate"))
    return out
