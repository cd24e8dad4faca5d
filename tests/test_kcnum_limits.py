"""kcnum parsers on inputs beyond Python's int() digit limit, and kc::atoin.

Numbers with thousands of digits reach the server in Content-Length headers, RPC
parameters and memcached command lines; the parsers must answer what Kyoto
Cabinet's C loops give (int64 wrap-around, saturation, overflow to inf), never raise.
"""

from __future__ import annotations

import math

from ktcluster.protocol.kcnum import INT64MAX, INT64MIN, atof, atoi, atoin, atoix, to_int64


def _c_atoi(digits: bytes) -> int:
    """int64 wrap-around of a decimal loop, without converting the whole number at once."""
    num = 0
    for c in digits:
        num = (num * 10 + c - 0x30) & ((1 << 64) - 1)
    return to_int64(num)


def test_atoi_wraps_like_int64_for_any_length():
    for digits in (b"9" * 5000, b"12345" * 900, b"0" * 6000 + b"42", b"7" * 4933):
        assert atoi(digits) == _c_atoi(digits)
        assert atoi(b"-" + digits) == to_int64(-_c_atoi(digits))
    assert atoi(b"18446744073709551615") == -1


def test_atoix_saturates_and_atof_overflows():
    big = b"9" * 5000
    assert atoix(big) == INT64MAX
    assert atoix(b"-" + big) == INT64MIN
    assert atoix(b"1." + b"5" * 5000) == 1
    assert atof(big) == math.inf
    assert atof(b"-" + big) == -math.inf
    assert atof(b"0" * 5000 + b"12.5") == 12.5
    assert math.isclose(atof(b"1" * 4500 + b"e-4400"), 1.111111111111111e99)


def test_atoin_skips_nuls_and_blanks():
    assert atoin(b"\x00 \t12ab") == 12
    assert atoin(b"abc") == 0
    assert atoin(b"") == 0
    assert atoin(b"-5") == -5
    assert atoin(b"+7\x00") == 7
    assert atoin(b"\x80 1") == 0
    assert atoin(b"18446744073709551615") == -1
