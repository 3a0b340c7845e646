# UIDs as text for logs and operators: always two hex digits per byte, so leading zero bytes
# survive (int(uid).hex-style formatting drops them and makes 00 0A 1B 2C look like A1B2C).
_HEX = b"0123456789abcdef"


def uid_hex_into(uid, n, out):
    """Lower-case hex of uid[:n] into bytearray out (>= 2n bytes); returns 2n. Allocates nothing."""
    for i in range(n):
        b = uid[i]
        out[2 * i] = _HEX[b >> 4]
        out[2 * i + 1] = _HEX[b & 15]
    return 2 * n


def uid_hex(uid, n=None):
    """Lower-case hex string of uid[:n] (all of uid if n is None), leading zeros kept."""
    if n is None:
        n = len(uid)
    out = bytearray(2 * n)
    uid_hex_into(uid, n, out)
    return out.decode()
