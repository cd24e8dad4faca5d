"""The library functions of the Lua ``kt`` module, as ktserver's myscript.cc computes them
(kt_pack, kt_unpack, kt_split, kt_codec, kt_bit, kt_strstr, kt_regex, kt_levdist,
kt_arraydump ...), as pure functions over bytes and numbers; :class:`.kt.KtHost`
hands them to Lua.

Lua numbers reach C through casts whose x86-64 results are reproduced by
:func:`c_int64`, :func:`c_int32` and :func:`c_uint64`.  Strings passed as ``const
char*`` end at their first NUL (:func:`~ktcluster.protocol.kcnum.cstr`).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Iterable

from ...errors import ProtocolError
from ...protocol.kcnum import INT64MAX, INT64MIN, cstr
from ...protocol.kctext import levdist
from ...protocol.replication import decode_varnum, encode_varnum
from ...protocol.tsv import base64_decode, base64_encode, quote_decode, quote_encode, url_decode, url_encode
from ..db.hashing import fnv, murmur
from ..db.textmatch import RegexError, compile_regex

__all__ = ["c_int64", "c_int32", "c_uint64", "hash_murmur", "hash_fnv", "levdist", "pack", "unpack", "split",
           "codec", "bit", "strstr", "regex", "arraydump", "arrayload", "mapdump", "mapload"]

_U64 = (1 << 64) - 1
_TWO63 = 9.223372036854775808e18
_U48 = (1 << 48) - 1


# -- C conversions (x86-64, as ktserver performs them) ------------------------------------------


def c_int64(num: float) -> int:
    """``(int64_t)`` of a Lua number: truncation; INT64MIN when out of range or NaN."""
    if isinstance(num, float):
        if not -_TWO63 <= num < _TWO63:  # NaN fails too
            return INT64MIN
        return int(num)
    return num if INT64MIN <= num <= INT64MAX else INT64MIN


def c_int32(num: float) -> int:
    """``(int32_t)`` (and the 8/16-bit conversions that go through it)."""
    if isinstance(num, float) and not -2147483648.0 <= num < 2147483648.0:
        return -(1 << 31)
    value = int(num)
    return value if -(1 << 31) <= value < (1 << 31) else -(1 << 31)


def c_uint64(num: float) -> int:
    """``(uint64_t)`` of a double, gcc's sequence: negatives wrap, >= 2^64 gives 0."""
    num = float(num)
    if num >= _TWO63:
        return int(num) if num < 2 * _TWO63 else 0
    return c_int64(num) & _U64


# -- hashes, distances, regular expressions -----------------------------------------------------


def hash_murmur(data: bytes) -> int:
    """kt.hash_murmur: kc::hashmurmur cut to 48 bits (a Lua number holds them exactly)."""
    return murmur(data) & _U48


def hash_fnv(data: bytes) -> int:
    """kt.hash_fnv: kc::hashfnv cut to 48 bits."""
    return fnv(data) & _U48


def regex(text: bytes, pattern: bytes, alt: bytes | None) -> bool | bytes:
    """kt.regex: whether ``pattern`` matches ``text``, or ``text`` with every match
    replaced by ``alt``; a pattern that does not compile matches nothing."""
    try:
        compiled = compile_regex(pattern)
    except RegexError:
        return False if alt is None else cstr(text)
    if alt is None:
        return compiled.search(text)
    return compiled.replace(text, alt)


def strstr(text: bytes, pattern: bytes, alt: bytes | None) -> int | bytes:
    """kt.strstr: the 1-based position of ``pattern`` in ``text`` (0: none), or ``text``
    with every occurrence replaced by ``alt``."""
    text, pattern = cstr(text), cstr(pattern)
    if alt is None:
        return text.find(pattern) + 1
    return text.replace(pattern, cstr(alt)) if pattern else text


def split(data: bytes, delims: bytes | None) -> list[bytes]:
    """kt.split: the fields of ``data`` between any of the ``delims`` bytes (None: NUL)."""
    if delims is None:
        return data.split(b"\0")
    data, delims = cstr(data), cstr(delims)
    parts = []
    start = 0
    for i, c in enumerate(data):
        if c in delims:
            parts.append(data[start:i])
            start = i + 1
    parts.append(data[start:])
    return parts


def bit(mode: bytes, num: float, aux: float) -> int:
    """kt.bit: a 32-bit and/or/xor/not/left/right of two Lua numbers."""
    value = c_int64(num) & 0xFFFFFFFF
    other = c_int64(aux) & 0xFFFFFFFF
    mode = cstr(mode).lower()
    if mode == b"and":
        value &= other
    elif mode == b"or":
        value |= other
    elif mode == b"xor":
        value ^= other
    elif mode == b"not":
        value = ~value & 0xFFFFFFFF
    elif mode == b"left":
        value = (value << (other & 31)) & 0xFFFFFFFF
    elif mode == b"right":
        value >>= other & 31
    return value


# -- pack / unpack ------------------------------------------------------------------------------


def _repeat(fmt: bytes, pos: int) -> tuple[int, int]:
    """The repeat count after the format character at ``pos`` (``*`` = INT32MAX, digits as
    strtol into an int32) and the position of the last byte it used."""
    if fmt[pos + 1:pos + 2] == b"*":
        return 0x7FFFFFFF, pos + 1
    end = pos + 1
    while end < len(fmt) and 0x30 <= fmt[end] <= 0x39:
        end += 1
    if end == pos + 1:
        return 1, pos
    count = min(int(fmt[pos + 1:end]), INT64MAX) & 0xFFFFFFFF
    return (count - (1 << 32) if count >= (1 << 31) else count), end - 1


def _pack_varnum(num: int) -> bytes:
    """kt_pack's 'w': KC varnum, except that a 9-byte number skips bits 56..62 as ktserver does."""
    if num < (1 << 56):
        return encode_varnum(num)
    out = [(num >> 63) | 0x80] + [((num >> shift) & 0x7F) | 0x80 for shift in range(49, 0, -7)]
    return bytes(out + [num & 0x7F])


def _pack_float(num: float) -> bytes:
    try:
        return struct.pack("<f", num)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, num))


_PACKERS: dict[int, Callable[[float], bytes]] = {}
for _chars, _func in (
    (b"cC", lambda n: bytes((c_int32(n) & 0xFF,))),
    (b"sS", lambda n: struct.pack("<H", c_int32(n) & 0xFFFF)),
    (b"iI", lambda n: struct.pack("<I", c_int64(n) & 0xFFFFFFFF)),
    (b"lL", lambda n: struct.pack("<Q", c_uint64(n))),
    (b"fF", _pack_float),
    (b"dD", lambda n: struct.pack("<d", n)),
    (b"n", lambda n: struct.pack(">H", c_int32(n) & 0xFFFF)),
    (b"N", lambda n: struct.pack(">I", c_int64(n) & 0xFFFFFFFF)),
    (b"M", lambda n: struct.pack(">Q", c_uint64(n))),
    (b"wW", lambda n: _pack_varnum(c_uint64(n))),
):
    for _char in _chars:
        _PACKERS[_char] = _func

#: kt_unpack's fixed-size formats: struct format per character
_UNPACKERS = {ord(c): struct.Struct(f) for c, f in (
    ("c", "<b"), ("C", "<B"), ("s", "<h"), ("S", "<H"), ("i", "<i"), ("I", "<I"), ("l", "<q"), ("L", "<Q"),
    ("f", "<f"), ("F", "<f"), ("d", "<d"), ("D", "<d"), ("n", ">H"), ("N", ">I"), ("M", ">Q"))}
_VARNUM_CHARS = b"wW"


def pack(fmt: bytes, values: list[float]) -> bytes:
    """kt.pack: ``values`` packed by the format (Perl's pack letters: cC sS iI lL fF dD nNM
    wW; a count or ``*`` repeats a letter)."""
    fmt = cstr(fmt)
    count = len(values)
    out = bytearray()
    index = 0
    pos = 0
    while pos < len(fmt):
        char = fmt[pos]
        loop, pos = _repeat(fmt, pos)
        end = min(index + min(loop, count), count)
        packer = _PACKERS.get(char)
        while index < end:
            if packer is not None:
                out += packer(values[index])
            index += 1
        pos += 1
        if index >= count:
            break
    return bytes(out)


def unpack(fmt: bytes, data: bytes) -> list[float]:
    """kt.unpack: the numbers ``data`` holds in the format of :func:`pack`."""
    fmt = cstr(fmt)
    out: list[float] = []
    rp = 0
    size = len(data)
    pos = 0
    while pos < len(fmt):
        char = fmt[pos]
        loop, pos = _repeat(fmt, pos)
        loop = min(loop, size)
        unpacker = _UNPACKERS.get(char)
        if unpacker is not None:
            width = unpacker.size
            for _ in range(loop):
                if size <= 0:
                    break
                if size < width:
                    size = 0
                    break
                out.append(float(unpacker.unpack_from(data, rp)[0]))
                rp += width
                size -= width
        elif char in _VARNUM_CHARS:
            for _ in range(loop):
                if size <= 0:
                    break
                num = 0
                while True:
                    c = data[rp]
                    num = (num * 0x80 + (c & 0x7F)) & _U64
                    rp += 1
                    size -= 1
                    if c < 0x80 or size <= 0:
                        break
                out.append(float(num))
        pos += 1
        if size < 1:
            break
    return out


# -- codecs -------------------------------------------------------------------------------------


def codec(mode: bytes, data: bytes) -> bytes | None:
    """kt.codec: ``data`` encoded by ``mode`` (url, base, quote, hex, zlib, deflate, gzip),
    or decoded by ``~mode``; None for an unknown mode or undecodable data."""
    mode = cstr(mode).lower()
    if mode.startswith(b"~"):
        mode = mode[1:]
        if mode in _ZLIB_BITS:
            return _decompress(data, _ZLIB_BITS[mode])
        decoder = {b"url": url_decode, b"base": base64_decode, b"quote": quote_decode,
                   b"hex": _hexdecode}.get(mode)
        return None if decoder is None else decoder(cstr(data))
    if mode in _ZLIB_BITS:
        return _compress(data, _ZLIB_BITS[mode])
    encoder = {b"url": url_encode, b"base": base64_encode, b"quote": quote_encode,
               b"hex": lambda d: d.hex().encode()}.get(mode)
    return None if encoder is None else encoder(data)


def _hexdecode(text: bytes) -> bytes:
    """kc::hexdecode: pairs of hex digits, blanks skipped, a bad digit counts as nothing."""
    out = bytearray()
    i, n = 0, len(text)
    while True:
        while i < n and 0 < text[i] <= 0x20:
            i += 1
        if i >= n:
            break
        num = _hexval(text[i]) or 0
        i += 1
        if i >= n:
            out.append(num)
            break
        low = _hexval(text[i])
        i += 1
        if low is not None:
            num = num * 16 + low
        out.append(num & 0xFF)
    return bytes(out)


def _hexval(c: int) -> int | None:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x57
    if 0x41 <= c <= 0x46:
        return c - 0x37
    return None


_ZLIB_BITS = {b"zlib": -15, b"deflate": 15, b"gzip": 31}


def _compress(data: bytes, wbits: int) -> bytes:
    """kc::ZLIB::compress: level 6, memLevel 9; the raw ("zlib") form keeps a trailing NUL."""
    comp = zlib.compressobj(6, zlib.DEFLATED, wbits, 9, zlib.Z_DEFAULT_STRATEGY)
    out = comp.compress(data) + comp.flush()
    return out + b"\0" if wbits < 0 else out


def _decompress(data: bytes, wbits: int) -> bytes | None:
    try:
        decomp = zlib.decompressobj(wbits)
        out = decomp.decompress(data)
    except zlib.error:
        return None
    return out if decomp.eof else None


# -- serialized arrays and maps (kc::DB's varnum-prefixed records) ------------------------------


def arraydump(values: Iterable[bytes]) -> bytes:
    """kt.arraydump: each value prefixed by its size as a varnum."""
    return b"".join(encode_varnum(len(v)) + v for v in values)


def arrayload(data: bytes) -> list[bytes]:
    """kt.arrayload: the values of :func:`arraydump`'s form (a truncated one ends them)."""
    out = []
    pos, n = 0, len(data)
    while pos < n:
        try:
            size, pos = decode_varnum(data, pos)
        except ProtocolError:
            break
        if size > n - pos:
            break
        out.append(data[pos:pos + size])
        pos += size
    return out


def mapdump(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """kt.mapdump: each pair as key size, value size (varnums), key, value."""
    return b"".join(encode_varnum(len(k)) + encode_varnum(len(v)) + k + v for k, v in pairs)


def mapload(data: bytes) -> list[bytes]:
    """kt.mapload: the keys and values of :func:`mapdump`'s form, flat (k1, v1, k2, ...)."""
    flat = []
    pos, n = 0, len(data)
    while n - pos > 1:
        try:
            ksiz, pos = decode_varnum(data, pos)
            if n - pos < 1:
                break
            vsiz, pos = decode_varnum(data, pos)
        except ProtocolError:
            break
        if ksiz + vsiz > n - pos:
            break
        flat.append(data[pos:pos + ksiz])
        flat.append(data[pos + ksiz:pos + ksiz + vsiz])
        pos += ksiz + vsiz
    return flat
