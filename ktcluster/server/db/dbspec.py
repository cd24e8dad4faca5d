"""Database specs of ktserver's command line: ``path#name=value#...`` (kcpolydb.h
``PolyDB::open``).

The path names the Kyoto Cabinet type: ``-`` ProtoHashDB, ``+`` ProtoTreeDB, ``:``
StashDB, ``*`` CacheDB, ``%`` GrassDB (in memory), or a file whose extension chooses
``.kch`` HashDB, ``.kct`` TreeDB, ``.kcd`` DirDB, ``.kcf`` ForestDB; ``#type=`` overrides
it.  The tuning parameters are kept as given; those with a visible effect are read by
the stores and the TimedDB layer (``ktopts``, ``ktcapcnt``, ``ktcapsiz``, ``bnum``,
``capcnt``, ``capsiz``, ``rcomp``).  ``#rcomp=`` picks the comparator that orders the
B+ tree types (kcpolydb.h: lexical, decimal, and their descending forms).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ...protocol.kcnum import atoix, to_int64

__all__ = ["DBSpec", "TYPE_NUMBERS", "comparator"]

#: Kyoto Cabinet's type number of each kind (``type`` in ``status``).
TYPE_NUMBERS = {"phash": 16, "ptree": 17, "stash": 24, "cache": 32, "grass": 33, "hash": 48, "tree": 49,
                "dir": 64, "forest": 65, "void": 128}

_MEMORY_KINDS = {"-": "phash", "+": "ptree", ":": "stash", "*": "cache", "%": "grass"}
_FILE_KINDS = {".kch": "hash", ".kct": "tree", ".kcd": "dir", ".kcf": "forest"}
_TYPE_ALIASES = {
    "-": "phash", "phash": "phash", "+": "ptree", "ptree": "ptree", ":": "stash", "stash": "stash",
    "*": "cache", "cache": "cache", "%": "grass", "grass": "grass", "kch": "hash", "hash": "hash",
    "kct": "tree", "tree": "tree", "kcd": "dir", "dir": "dir", "kcf": "forest", "forest": "forest",
}


@dataclass
class DBSpec:
    """A database spec: ``path``, ``kind`` (phash, ptree, stash, cache, grass, hash, tree,
    dir, forest, or void for ktplugdbvoid) and the tuning ``params``."""

    path: str
    kind: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> DBSpec:
        """Parse a spec; raises ValueError for a type Kyoto Cabinet cannot open."""
        path, *tunings = spec.split("#")
        params: dict[str, str] = {}
        for tuning in tunings:
            name, sep, value = tuning.partition("=")
            if sep:
                params[name] = value.split("=")[0]
        kind = _MEMORY_KINDS.get(path)
        type_name = params.get("type", "").lower()
        if type_name:
            kind = _TYPE_ALIASES.get(type_name)
        elif kind is None:
            kind = _FILE_KINDS.get(os.path.splitext(path)[1].lower())
        if kind is None:
            raise ValueError(f"{spec}: unknown database type")
        return cls(path, kind, params)

    @property
    def name(self) -> str:
        """The name RPC ``DB=`` and REST ``/name/key`` select it by (base name of the path)."""
        return self.path.rsplit("/", 1)[-1]

    def int_param(self, *names: str, default: int = -1) -> int:
        """The first of ``names`` given, read as kc::atoix does; ``default`` if none is."""
        for name in names:
            if name in self.params:
                return atoix(self.params[name].encode())
        return default

    def str_param(self, *names: str) -> str:
        """The first of ``names`` given, or ''."""
        for name in names:
            if name in self.params:
                return self.params[name]
        return ""


# -- comparators of the B+ tree types (#rcomp=) -------------------------------------------------


def _decimal_parts(key: bytes) -> tuple[int, Fraction]:
    """kc::DecimalComparator's reading of a key: the integer after blanks and an optional
    minus, then (only if a digit follows) the fraction after a point, 16 digits at most."""
    n = len(key)
    i = 0
    while i < n and (key[i] <= 0x20 or key[i] == 0x7F):
        i += 1
    sign = 1
    if i < n and key[i] == 0x2D:
        sign = -1
        i += 1
    start = i
    while i < n and 0x30 <= key[i] <= 0x39:
        i += 1
    num = to_int64(int(key[start:i]) * sign) if i > start else 0
    frac = Fraction(0)
    if n - i > 1 and key[i] == 0x2E:
        digits = bytearray()
        for c in key[i + 1:i + 1 + 16]:
            if not 0x30 <= c <= 0x39:
                break
            digits.append(c)
        if digits:
            frac = Fraction(int(digits), 10 ** len(digits)) * sign
    return num, frac


class RankedKey:
    """A tree order key for a non-lexical comparator: sorts by ``rank``, is ``key``."""

    __slots__ = ("key", "rank")

    def __init__(self, key: bytes, rank: Any) -> None:
        self.key = key
        self.rank = rank

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RankedKey) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: RankedKey) -> bool:
        return self.rank < other.rank


class _Descending(RankedKey):
    __slots__ = ()

    def __lt__(self, other: RankedKey) -> bool:
        return other.rank < self.rank


def _decimal(key: bytes) -> RankedKey:
    return RankedKey(key, (*_decimal_parts(key), key))


def _decimal_descending(key: bytes) -> RankedKey:
    return _Descending(key, (*_decimal_parts(key), key))


def _lexical_descending(key: bytes) -> RankedKey:
    return _Descending(key, key)


#: ``#rcomp=`` values -> (name in ``status``, order key maker or None for lexical)
_COMPARATORS: dict[str, tuple[str, Callable[[bytes], RankedKey] | None]] = {
    "lex": ("lexical", None), "lexical": ("lexical", None),
    "dec": ("decimal", _decimal), "decimal": ("decimal", _decimal),
    "lexdesc": ("lexicaldesc", _lexical_descending), "lexicaldesc": ("lexicaldesc", _lexical_descending),
    "decdesc": ("decimaldesc", _decimal_descending), "decimaldesc": ("decimaldesc", _decimal_descending),
}


def comparator(spec: DBSpec) -> tuple[str, Callable[[bytes], RankedKey] | None]:
    """The comparator of a B+ tree database: (its name in ``status``, the maker of the
    order key a record's key sorts as, or None when keys sort as themselves)."""
    return _COMPARATORS.get(spec.str_param("rcomp", "comparator"), ("lexical", None))
