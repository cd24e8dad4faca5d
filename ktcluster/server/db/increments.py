"""The numeric records of ``increment`` and ``increment_double`` (kttimeddb.h
``TimedDB::increment`` / ``increment_double``, whose visitors these functions are).

* An integer record is 8 bytes: a big-endian int64.
* A decimal record is 16 bytes: the integral part and the fraction x 10^15, each a
  big-endian int64; ktserver computes the fraction in x87 long double, and so do we.

Each function takes the record's current value (None when absent or expired), returns
the value to store (None: leave the record alone) and the result the caller reports.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from ...protocol.kcnum import INT64MAX, INT64MIN, to_int64

__all__ = ["increment_int", "increment_decimal", "DECIMAL_UNIT"]

#: the fixed-point unit of a decimal record's fraction.
DECIMAL_UNIT = 10 ** 15
_I64 = struct.Struct(">q")
_I64PAIR = struct.Struct(">qq")


def increment_int(value: bytes | None, num: int, orig: int) -> tuple[bytes | None, int]:
    """Add ``num`` to an integer record.  ``orig`` is the start value of an absent
    record; INT64MIN ("try") refuses to create one, INT64MAX ("set") stores ``num``
    whatever the record holds.  Result INT64MIN means failure (a value that is not 8
    bytes, or an absent record with "try")."""
    if value is None:
        if orig == INT64MIN:
            return None, INT64MIN
        result = num if orig == INT64MAX else to_int64(num + orig)
        return _I64.pack(result), result
    if len(value) != 8:
        return None, INT64MIN
    if orig == INT64MAX:
        current = 0
    else:
        current = _I64.unpack(value)[0]
        if num == 0:
            return None, current
    result = to_int64(num + current)
    return _I64.pack(result), result


def increment_decimal(value: bytes | None, num: float, orig: float) -> tuple[bytes | None, float]:
    """Add ``num`` to a decimal record.  ``orig`` is the start value of an absent record;
    -inf ("try") refuses to create one, +inf ("set") stores ``num`` whatever the record
    holds.  Result NaN means failure (a value that is not 16 bytes or holds NaN, an
    absent record with "try", a NaN sum -- which is stored nevertheless, as by ktserver)."""
    set_mode = math.isinf(orig) and orig > 0
    if value is None:
        if math.isnan(orig) or (math.isinf(orig) and orig < 0):
            return None, math.nan
        total = num if math.isinf(orig) else num + orig
        fract, integ = math.modf(total)
        if math.isnan(integ):
            return _I64PAIR.pack(INT64MIN, INT64MIN), total
        if math.isinf(integ):
            return _I64PAIR.pack(INT64MAX if integ > 0 else INT64MIN, 0), total
        return _I64PAIR.pack(_ld_to_i64(integ), _ld_mul_trunc(fract)), total
    if len(value) != 16:
        return None, math.nan
    integ, fract = (0, 0) if set_mode else _I64PAIR.unpack(value)
    if integ == INT64MIN and fract == INT64MIN:
        return None, math.nan
    if integ == INT64MAX:
        return None, math.inf
    if integ == INT64MIN:
        return None, -math.inf
    if num == 0.0 and not set_mode:
        return None, _to_float(integ, fract)
    dfract, dinteg = math.modf(num)
    if math.isnan(dinteg):
        return _I64PAIR.pack(INT64MIN, INT64MIN), math.nan
    if math.isinf(dinteg):
        return _I64PAIR.pack(INT64MAX if dinteg > 0 else INT64MIN, 0), dinteg
    integ = to_int64(integ + _ld_to_i64(dinteg))
    fract = to_int64(fract + _ld_mul_trunc(dfract))
    if fract >= DECIMAL_UNIT:
        integ = to_int64(integ + 1)
        fract -= DECIMAL_UNIT
    return _I64PAIR.pack(integ, fract), _to_float(integ, fract)


def _to_float(integ: int, fract: int) -> float:
    return float(integ) + fract / 1e15


def _ld_to_i64(num: float) -> int:
    """C's (int64_t) of a long double on x86-64: out of range gives INT64MIN."""
    return int(num) if -9.223372036854775808e18 <= num < 9.223372036854775808e18 else INT64MIN


def _ld_mul_trunc(frac: float, unit: int = DECIMAL_UNIT) -> int:
    """(int64_t)(frac * unit) computed in x87 long double (64-bit mantissa, round half even)."""
    exact = Fraction(frac) * unit
    if not exact:
        return 0
    mag = abs(exact)
    exp = mag.numerator.bit_length() - mag.denominator.bit_length()
    if Fraction(2) ** exp > mag:
        exp -= 1
    scale = Fraction(2) ** (63 - exp)
    rounded = Fraction(round(mag * scale)) / scale
    return int(rounded) if exact > 0 else -int(rounded)
