"""Kyoto Cabinet's text functions that client and server must compute alike.

``match_similar`` ranks keys by these: the embedded server to answer as ktserver
does, the cluster to merge the nodes' answers in the order one server would give.

* :func:`levenshtein` -- kc::strlevdist and kc::strucslevdist (kcutil.h);
* :func:`utf8_to_ucs` -- kc::strutftoucs, Kyoto Cabinet's lenient UTF-8 decoder;
* :func:`levdist` -- the distance of two byte strings, by bytes or by code points.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["levenshtein", "utf8_to_ucs", "levdist"]


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """The edit distance of two byte strings or code point lists (kc::strlevdist)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def utf8_to_ucs(data: bytes) -> list[int]:
    """kc::strutftoucs: the code points of UTF-8 text; bad sequences are skipped."""
    out: list[int] = []
    n = len(data)
    i = 0
    while i < n:
        c = data[i]
        if c < 0x80:
            out.append(c)
        else:
            width = 1 if c < 0xE0 else 2 if c < 0xF0 else 3 if c < 0xF8 else 4 if c < 0xFC else 5 if c < 0xFE else 0
            tail = data[i + 1:i + 1 + width]
            if width and len(tail) == width and 0 not in tail:
                mask = (0x1F, 0x0F, 0x07, 0x03, 0x01)[width - 1]
                code = c & mask
                for t in tail:
                    code = code << 6 | (t & 0x3F)
                if code >= (0x80, 0x800, 0x10000, 0x200000, 0x4000000)[width - 1]:
                    out.append(code)
                i += width
        i += 1
    return out


def levdist(a: bytes, b: bytes, utf: bool) -> int:
    """The edit distance of two byte strings, by bytes or (``utf``) by UTF-8 code points."""
    if utf:
        return levenshtein(utf8_to_ucs(a), utf8_to_ucs(b))
    return levenshtein(a, b)
