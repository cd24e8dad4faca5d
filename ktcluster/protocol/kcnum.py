"""Kyoto Cabinet's lenient text-to-number and text-to-time parsers.

ktserver reads every numeric parameter (RPC ``xt``, ``num``, ``DB``, ``Content-Length``,
command-line options, ``X-Kt-Xt`` ...) with these C functions, which never fail: they skip
leading blanks, read what looks like a number and ignore the rest.  The embedded server
must interpret input exactly the same way; a client may use them to predict the server's
reading of a value.  All functions take bytes and treat them as C strings (a NUL ends them).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["INT64MAX", "INT64MIN", "cstr", "to_int64", "atoi", "atoin", "atoix", "atoih", "atof", "strmktime",
           "timegm"]

INT64MAX = (1 << 63) - 1
INT64MIN = -(1 << 63)
_U64 = (1 << 64) - 1


def cstr(data: bytes) -> bytes:
    """``data`` as C reads a ``char*``: up to its first NUL."""
    nul = data.find(b"\0")
    return data if nul < 0 else data[:nul]


def to_int64(num: int) -> int:
    """Wrap an integer into the int64 range, as C arithmetic does."""
    num &= _U64
    return num - (1 << 64) if num > INT64MAX else num


def _skip_blanks(data: bytes, pos: int = 0) -> int:
    """Skip bytes 0x01..0x20 (KC tests ``*str > '\\0' && *str <= ' '`` on a signed char)."""
    end = len(data)
    while pos < end and 0 < data[pos] <= 0x20:
        pos += 1
    return pos


def _sign(data: bytes, pos: int) -> tuple[int, int]:
    if pos < len(data):
        if data[pos] == 0x2D:
            return -1, pos + 1
        if data[pos] == 0x2B:
            return 1, pos + 1
    return 1, pos


#: int() converts at most 4300 digits at once: longer runs are converted in two pieces.
_INT_DIGITS = 4000
#: digit runs longer than this overflow even a long double (max ~1.19e4932).
_EXACT_DIGITS = 4932
#: stands for "a number too large for any C type": a multiple of 2^64 (so int64
#: wrapping still sees the exact low 64 bits) that overflows a long double.
_HUGE = 10 ** 4950
_DIGIT_RUN = re.compile(rb"[0-9]*")


def _digits(data: bytes, pos: int) -> tuple[int, int, int]:
    """(value, digit count, new pos) of the decimal digits at pos.

    A run of more than _EXACT_DIGITS significant digits is worth ``_HUGE`` plus its
    last 64 digits: the same low 64 bits as the exact value (10^64 is a multiple of
    2^64), and larger than anything the callers saturate or overflow at."""
    start = pos
    pos = _DIGIT_RUN.match(data, pos).end()  # type: ignore[union-attr]  # [0-9]* always matches
    digits = data[start:pos]
    if len(digits) > _INT_DIGITS:
        digits = digits.lstrip(b"0")
        if len(digits) > _EXACT_DIGITS:
            return _HUGE + int(digits[-64:]), pos - start, pos
        if len(digits) > _INT_DIGITS:
            return (int(digits[:-_INT_DIGITS]) * 10 ** _INT_DIGITS + int(digits[-_INT_DIGITS:]),
                    pos - start, pos)
    return (int(digits) if digits else 0), pos - start, pos


def atoi(data: bytes) -> int:
    """kc::atoi: blanks, optional sign, decimal digits; anything else ends the number
    (no digits: 0).  The result wraps like int64 arithmetic."""
    pos = _skip_blanks(data)
    sign, pos = _sign(data, pos)
    num, _, _ = _digits(data, pos)
    return to_int64(sign * num)


def atoin(data: bytes) -> int:
    """kc::atoin: atoi over a byte array rather than a C string: the leading bytes
    skipped are 0x00-0x20 (NULs included) and a NUL after them ends the number."""
    pos = 0
    end = len(data)
    while pos < end and data[pos] <= 0x20:
        pos += 1
    sign, pos = _sign(data, pos)
    num, _, _ = _digits(data, pos)
    return to_int64(sign * num)


def atoix(data: bytes) -> int:
    """kc::atoix: like atoi with an optional fraction and a binary metric suffix
    (k/m/g/t/p/e = 2^10 .. 2^60, after optional blanks); saturates at INT64MAX/MIN."""
    pos = _skip_blanks(data)
    sign, pos = _sign(data, pos)
    num, _, pos = _digits(data, pos)
    value: Fraction | int = num
    if pos < len(data) and data[pos] == 0x2E:
        frac_start = pos + 1
        _, count, pos = _digits(data, frac_start)
        if count:
            count = min(count, 40)  # beyond a long double's precision
            value = num + Fraction(int(data[frac_start:frac_start + count]), 10 ** count)
    value = value * sign
    pos = _skip_blanks(data, pos)
    if pos < len(data):
        shift = {0x6B: 10, 0x6D: 20, 0x67: 30, 0x74: 40, 0x70: 50, 0x65: 60}.get(data[pos] | 0x20)
        if shift:
            value = value * (1 << shift)
    if value > INT64MAX:
        return INT64MAX
    if value < INT64MIN:
        return INT64MIN
    return int(value)


def atoih(data: bytes) -> int:
    """kc::atoih: a hexadecimal number after blanks and an optional ``0x`` (no sign)."""
    pos = _skip_blanks(data)
    if data[pos:pos + 2] in (b"0x", b"0X"):
        pos += 2
    end = len(data)
    start = pos
    while pos < end and data[pos] in b"0123456789abcdefABCDEF":
        pos += 1
    return to_int64(int(data[start:pos], 16)) if pos > start else 0


def atof(data: bytes) -> float:
    """kc::atof: blanks, sign, ``inf``/``nan``, integer digits, at most 16 significant
    digits of fraction, an optional decimal exponent."""
    pos = _skip_blanks(data)
    sign, pos = _sign(data, pos)
    word = data[pos:pos + 3].lower()
    if word == b"inf":
        return math.inf * sign
    if word == b"nan":
        return math.nan
    num, _, ipos = _digits(data, pos)
    col = len(data[pos:ipos].lstrip(b"0"))
    value: Fraction = Fraction(num)
    pos = ipos
    if pos < len(data) and data[pos] == 0x2E:
        pos += 1
        scale = 10
        end = len(data)
        while col < 16 and pos < end and 0x30 <= data[pos] <= 0x39:
            value += Fraction(data[pos] - 0x30, scale)
            scale *= 10
            pos += 1
            col += 1
    if pos < len(data) and data[pos] in b"eE":
        exp = atoi(data[pos + 1:])
        if exp > 4932:
            return math.inf * sign if value else 0.0 * sign
        if exp < -4950:
            return 0.0 * sign
        value = value * Fraction(10) ** exp
    try:
        return float(value) * sign
    except OverflowError:
        return math.inf * sign


def timegm(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """POSIX timegm() with out-of-range fields normalised (month 13 is next January...)."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    # days from civil (Howard Hinnant's algorithm)
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second


_MONTHS = (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec")
_ZONES = {b"JST": 9, b"CCT": 8, b"KST": 9, b"EDT": -4, b"EST": -5, b"CDT": -5, b"CST": -6,
          b"MDT": -6, b"MST": -7, b"PDT": -7, b"PST": -8, b"HDT": -9, b"HST": -10}


def _offset(tail: bytes) -> int:
    """Seconds east of UTC of a ``+hh:mm``/``-hh:mm`` suffix after the time digits (else 0)."""
    pos = 0
    while pos < len(tail) and 0x30 <= tail[pos] <= 0x39:
        pos += 1
    zone = tail[pos:]
    if zone[:1] in (b"+", b"-") and len(zone) >= 6 and zone[3:4] == b":":
        minutes = atoi(zone[1:]) * 60 + atoi(zone[4:])
        return minutes * 60 * (1 if zone[:1] == b"+" else -1)
    return 0


def _dated(text: bytes, sep: int, time_sep: int) -> int:
    """ktutil strmktime's ``YYYY-MM-DD[Thh:mm:ss[.f][+hh:mm]]`` and ``YYYY/MM/DD hh:mm:ss`` forms."""
    year, month, day, hour, minute, second = atoi(text), 1, 1, 0, 0, 0
    if text.find(bytes((sep,))) == 4:
        month = atoi(text[5:])
        if text.find(bytes((sep,)), 5) == 7:
            day = atoi(text[8:])
            if text.find(bytes((time_sep,)), 8) == 10:
                hour = atoi(text[11:])
                rest = 11
                if text.find(b":", rest) == 13:
                    rest = 14
                    minute = atoi(text[14:])
                if text.find(b":", rest) == 16:
                    rest = 17
                    second = atoi(text[17:])
                dot = text.find(b".", rest)
                if dot >= 19:
                    rest = dot + 1
                second -= _offset(text[rest:])
    return timegm(year, month, day, hour, minute, second)


def strmktime(data: bytes) -> int:
    """ktutil strmktime: the epoch seconds of a time expression, INT64MIN if unreadable.

    Accepts a decimal number (with an optional s/m/h/d unit), ``0x`` hex, W3CDTF
    (``2100-01-01T09:00:00+09:00``), ``YYYY/MM/DD hh:mm:ss`` and RFC 1123 / RFC 850 style
    dates (``Fri, 01 Jan 2100 00:00:00 GMT``)."""
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    text = data[_skip_blanks(data):]
    if not text:
        return INT64MIN
    if text[:2] in (b"0x", b"0X"):
        return atoih(text[2:])
    num = atoi(text)
    pos = 0
    while pos < len(text) and 0x30 <= text[pos] <= 0x39:
        pos += 1
    pos = _skip_blanks(text, pos)
    if pos >= len(text):
        return num
    unit = text[pos:pos + 1].lower()
    if unit in (b"s", b"m", b"h", b"d") and (pos + 1 >= len(text) or text[pos + 1] <= 0x20):
        return to_int64(num * {b"s": 1, b"m": 60, b"h": 3600, b"d": 86400}[unit])
    if len(text) > 4 and text[4:5] == b"-":
        return _dated(text, 0x2D, 0x54)
    if len(text) > 4 and text[4:5] == b"/":
        return _dated(text, 0x2F, 0x20)
    rest = text[4:] if len(text) >= 4 and text[3:4] == b"," else text
    rest = rest.lstrip(b" ")
    day = atoi(rest)
    pos = 0
    while pos < len(rest) and (0x30 <= rest[pos] <= 0x39 or rest[pos] == 0x20):
        pos += 1
    rest = rest[pos:]
    month = -1
    if rest[:3].lower() in _MONTHS:
        month = _MONTHS.index(rest[:3].lower())
        rest = rest[3:]
    rest = rest.lstrip(b" ")
    year = atoi(rest)
    if year >= 1969:
        year -= 1900
    pos = 0
    while pos < len(rest) and 0x30 <= rest[pos] <= 0x39:
        pos += 1
    rest = rest[pos:].lstrip(b" ")
    if day > 0 and month >= 0 and year >= 0:
        hour = minute = second = 0
        if len(rest) >= 8 and rest[2:3] == b":" and rest[5:6] == b":":
            hour, minute, second = atoi(rest[0:]), atoi(rest[3:]), atoi(rest[6:])
            if len(rest) >= 14 and rest[8:9] == b" " and rest[9:10] in (b"+", b"-"):
                digits = [c - 0x30 for c in rest[10:14]]
                offset = digits[0] * 36000 + digits[1] * 3600 + digits[2] * 600 + digits[3] * 60
                second -= offset * (1 if rest[9:10] == b"+" else -1)
            elif len(rest) > 9 and rest[9:] in _ZONES:
                second -= _ZONES[rest[9:]] * 3600
        return timegm(year + 1900, month + 1, day, hour, minute, second)
    return INT64MIN
