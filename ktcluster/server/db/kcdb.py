"""Kyoto Cabinet's database vocabulary, shared by the record stores (:mod:`.stores`), their
cursors (:mod:`.cursors`) and the TimedDB layer (:mod:`.storage`): the error codes and
:class:`DBError` of kcdb.h ``BasicDB::Error``, and the answers a visitor gives
(``DB::Visitor::NOP`` and ``REMOVE``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DBError", "NOP", "REMOVE", "NOIMPL", "INVALID", "NOPERM", "DUPREC", "NOREC", "LOGIC", "SYSTEM",
           "norec", "noimpl"]

# Kyoto Cabinet error codes (kcdb.h BasicDB::Error::Code) and their names.
NOIMPL, INVALID, NOPERM, DUPREC, NOREC, LOGIC, SYSTEM = 1, 2, 4, 6, 7, 8, 9
_ERROR_NAMES = {1: "not implemented", 2: "invalid operation", 3: "file not found", 4: "no permission",
                5: "broken file", 6: "record duplication", 7: "no record", 8: "logical inconsistency",
                9: "system error", 15: "miscellaneous error"}


class DBError(Exception):
    """A Kyoto Cabinet database error: ``str()`` is ktserver's ``DB: code: name: message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def name(self) -> str:
        return _ERROR_NAMES.get(code := self.code, "unknown error" if code else "success")

    def __str__(self) -> str:
        return f"DB: {self.code}: {self.name}: {self.message}"


def norec() -> DBError:
    """The error of a missing record or a cursor past either end."""
    return DBError(NOREC, "no record")


def noimpl() -> DBError:
    """The error of an operation the database type does not have (a hash cursor going back)."""
    return DBError(NOIMPL, "not implemented")


class _Answer:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: visitor answer: leave the record alone.
NOP: Any = _Answer("NOP")
#: visitor answer: remove the record.
REMOVE: Any = _Answer("REMOVE")
