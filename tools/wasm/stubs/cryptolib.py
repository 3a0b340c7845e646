# `cryptolib` for the 32-bit WebAssembly MicroPython, which is built without it: AES-128 in ECB
# mode (the only use the firmware has), encrypt(in, out) writing into out without allocating,
# as the C module on an ESP32 does. Round keys (176 B) and a 16-byte state are taken up front.
# Checked against FIPS-197's example by tests/test_heap32.py. Never deployed.
_SBOX = b'c|w{\xf2ko\xc50\x01g+\xfe\xd7\xabv\xca\x82\xc9}\xfaYG\xf0\xad\xd4\xa2\xaf\x9c\xa4r\xc0\xb7\xfd\x93&6?\xf7\xcc4\xa5\xe5\xf1q\xd81\x15\x04\xc7#\xc3\x18\x96\x05\x9a\x07\x12\x80\xe2\xeb\'\xb2u\t\x83,\x1a\x1bnZ\xa0R;\xd6\xb3)\xe3/\x84S\xd1\x00\xed \xfc\xb1[j\xcb\xbe9JLX\xcf\xd0\xef\xaa\xfbCM3\x85E\xf9\x02\x7fP<\x9f\xa8Q\xa3@\x8f\x92\x9d8\xf5\xbc\xb6\xda!\x10\xff\xf3\xd2\xcd\x0c\x13\xec_\x97D\x17\xc4\xa7~=d]\x19s`\x81O\xdc"*\x90\x88F\xee\xb8\x14\xde^\x0b\xdb\xe02:\nI\x06$\\\xc2\xd3\xacb\x91\x95\xe4y\xe7\xc87m\x8d\xd5N\xa9lV\xf4\xeaez\xae\x08\xbax%.\x1c\xa6\xb4\xc6\xe8\xddt\x1fK\xbd\x8b\x8ap>\xb5fH\x03\xf6\x0ea5W\xb9\x86\xc1\x1d\x9e\xe1\xf8\x98\x11i\xd9\x8e\x94\x9b\x1e\x87\xe9\xceU(\xdf\x8c\xa1\x89\r\xbf\xe6BhA\x99-\x0f\xb0T\xbb\x16'
_RCON = b"\x01\x02\x04\x08\x10\x20\x40\x80\x1b\x36"


def _x2(a):
    a <<= 1
    return (a ^ 0x11B) if a & 0x100 else a


class aes:
    def __init__(self, key, mode, iv=None):
        if mode != 1 or len(key) != 16:
            raise ValueError("this stand-in does AES-128-ECB only")
        w = self._rk = bytearray(176)
        w[:16] = key
        for i in range(16, 176, 4):
            a, b, c, d = w[i - 4], w[i - 3], w[i - 2], w[i - 1]
            if i % 16 == 0:
                a, b, c, d = _SBOX[b] ^ _RCON[i // 16 - 1], _SBOX[c], _SBOX[d], _SBOX[a]
            w[i] = w[i - 16] ^ a
            w[i + 1] = w[i - 15] ^ b
            w[i + 2] = w[i - 14] ^ c
            w[i + 3] = w[i - 13] ^ d
        self._s = bytearray(16)

    def encrypt(self, inb, outb):
        s = self._s
        rk = self._rk
        sb = _SBOX
        for i in range(16):
            s[i] = inb[i] ^ rk[i]
        for r in range(1, 11):
            # SubBytes + ShiftRows (column-major state: byte i is row i % 4, column i // 4).
            # One name per byte: a 4-tuple assignment would build a tuple on the heap.
            s[0] = sb[s[0]]
            s[4] = sb[s[4]]
            s[8] = sb[s[8]]
            s[12] = sb[s[12]]
            t = sb[s[1]]
            s[1] = sb[s[5]]
            s[5] = sb[s[9]]
            s[9] = sb[s[13]]
            s[13] = t
            t = sb[s[2]]
            s[2] = sb[s[10]]
            s[10] = t
            t = sb[s[6]]
            s[6] = sb[s[14]]
            s[14] = t
            t = sb[s[15]]
            s[15] = sb[s[11]]
            s[11] = sb[s[7]]
            s[7] = sb[s[3]]
            s[3] = t
            if r < 10:
                for c in range(0, 16, 4):
                    x0 = s[c]
                    x1 = s[c + 1]
                    x2 = s[c + 2]
                    x3 = s[c + 3]
                    t = x0 ^ x1 ^ x2 ^ x3
                    s[c] = x0 ^ t ^ _x2(x0 ^ x1)
                    s[c + 1] = x1 ^ t ^ _x2(x1 ^ x2)
                    s[c + 2] = x2 ^ t ^ _x2(x2 ^ x3)
                    s[c + 3] = x3 ^ t ^ _x2(x3 ^ x0)
            o = r * 16
            for i in range(16):
                s[i] ^= rk[o + i]
        for i in range(16):
            outb[i] = s[i]
        return outb
