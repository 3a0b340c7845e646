# PN532 host-link frames (UM0701-02 §6.2.1), shared by the driver and any host tool.
#   normal:   00 00 FF LEN LCS TFI PD0..PDn DCS 00      LEN counts TFI+PD, LEN+LCS = 0, TFI+PD+DCS = 0
#   extended: 00 00 FF FF FF LENM LENL LCS TFI ... DCS 00
#   ACK 00 00 FF 00 FF 00, NACK 00 00 FF FF 00 00, error frame 00 00 FF 01 FF 7F 81 00
# decode() never allocates: it answers a packed int (see below) so the poll path stays heap-free.
from gv.compat import const

TFI_HOST = const(0xD4)  # host -> PN532
TFI_CHIP = const(0xD5)  # PN532 -> host
ACK = b"\x00\x00\xff\x00\xff\x00"
NACK = b"\x00\x00\xff\xff\x00\x00"

# decode() results: >= 0 is a data frame, (offset_of_TFI << 16) | length (TFI included);
# the negatives below are everything else.
INCOMPLETE = const(-1)  # a frame start is there but not all of it yet
IS_ACK = const(-2)
IS_NACK = const(-3)
IS_ERROR = const(-4)  # application-level error frame (syntax error in the command)
BAD_LCS = const(-5)
BAD_DCS = const(-6)
NO_FRAME = const(-7)  # no start code at all (garbage or nothing)
BAD_POST = const(-8)  # checksums fine but postamble missing: a slipped frame

NAMES = {INCOMPLETE: "incomplete", IS_ACK: "ack", IS_NACK: "nack", IS_ERROR: "error frame",
         BAD_LCS: "bad LCS", BAD_DCS: "bad DCS", NO_FRAME: "no frame", BAD_POST: "bad postamble"}


def encode(data, out):
    """Frame `data` (TFI + command + params) into bytearray `out`; returns the frame length.
    Extended frames are used when data is longer than 254 bytes (the PN532 accepts up to 265)."""
    n = len(data)
    out[0] = 0
    out[1] = 0
    out[2] = 0xFF
    if n < 255:
        out[3] = n
        out[4] = (-n) & 0xFF
        p = 5
    else:
        out[3] = 0xFF
        out[4] = 0xFF
        out[5] = n >> 8
        out[6] = n & 0xFF
        out[7] = (-((n >> 8) + (n & 0xFF))) & 0xFF
        p = 8
    s = 0
    for i in range(n):
        b = data[i]
        out[p + i] = b
        s += b
    out[p + n] = (-s) & 0xFF
    out[p + n + 1] = 0
    return p + n + 2


def frame(data):
    """A new bytes frame around `data` (start-up and host tools only: it allocates)."""
    out = bytearray(len(data) + 11)
    return bytes(out[:encode(data, out)])


def _one(buf, p, end):
    # p indexes the byte after 00 FF
    if end - p < 2:
        return INCOMPLETE
    ln = buf[p]
    lcs = buf[p + 1]
    if ln == 0 and lcs == 0xFF:
        if end - p < 3:
            return INCOMPLETE
        return IS_ACK if buf[p + 2] == 0 else BAD_POST
    if ln == 0xFF and lcs == 0:
        if end - p < 3:
            return INCOMPLETE
        return IS_NACK if buf[p + 2] == 0 else BAD_POST
    if ln == 0xFF and lcs == 0xFF:  # extended
        if end - p < 5:
            return INCOMPLETE
        if (buf[p + 2] + buf[p + 3] + buf[p + 4]) & 0xFF:
            return BAD_LCS
        ln = (buf[p + 2] << 8) | buf[p + 3]
        d = p + 5
    else:
        if (ln + lcs) & 0xFF:
            return BAD_LCS
        d = p + 2
    if ln == 0:
        return BAD_LCS
    if end - d < ln + 2:
        return INCOMPLETE
    s = 0
    for i in range(d, d + ln + 1):
        s += buf[i]
    if s & 0xFF:
        return BAD_DCS
    if buf[d + ln + 1]:
        return BAD_POST
    if ln == 1 and buf[d] == 0x7F:
        return IS_ERROR
    return (d << 16) | ln


def decode(buf, start, end):
    """Find and check the first frame in buf[start:end]. Leading bytes before a 00 FF start code
    are skipped (the chip pads with 00; a fault may prefix garbage); a start code whose LCS fails
    is skipped too, so garbage that happens to contain 00 FF does not hide a good frame after it."""
    worst = NO_FRAME
    i = start
    while i + 1 < end:
        if buf[i] == 0 and buf[i + 1] == 0xFF:
            r = _one(buf, i + 2, end)
            if r != BAD_LCS:
                return r
            worst = BAD_LCS
        i += 1
    if i < end and buf[end - 1] == 0 and worst == NO_FRAME:
        return INCOMPLETE  # a trailing 00 may be the start of a frame still arriving
    return worst
