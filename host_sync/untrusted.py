r"""Text a reader supplied (a status payload's reason, a HELLO's firmware string, a reader id
from a topic) on its way into a log line, the registry or an operator's terminal. A reader's
secret and broker account can be stolen, so such text is hostile until shown otherwise: a
newline in it forges a log line, an ESC drives the terminal of whoever runs `readers list`.

    clean("why: \x1b[31mX\nY")   # -> the text `why: \x1b[31mX\nY`, on one line, no ESC
    clean(fw, 64)                # at most 64 characters, then "...(N more)"

Every control character (C0, DEL, C1, and the Unicode line/paragraph separators and format
characters such as bidi overrides, which reorder what a terminal shows) becomes a visible
escape: \n, \r, \t, \xNN or \uNNNN. Nothing else changes, so honest text reads as it was.
"""
from __future__ import annotations

import unicodedata

LIMIT = 200  # characters: what a log line or a table cell can take of one reader's say
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
        o = ord(ch)
        return "\\x%02x" % o if o < 0x100 else "\\u%04x" % o
    return ch


def clean(text: object, limit: int = LIMIT) -> str:
    """`text` (str, bytes as UTF-8 with replacement, anything else via str) with every control
    character escaped visibly and at most `limit` characters kept (escapes count at their
    shown length), then "...(N more)" saying how many characters of the input were cut."""
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    out: list[str] = []
    n = 0
    for i, ch in enumerate(text):
        piece = _escape(ch)
        if n + len(piece) > limit:
            out.append("...(%d more)" % (len(text) - i))
            break
        out.append(piece)
        n += len(piece)
    return "".join(out)
