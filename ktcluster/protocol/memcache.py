"""The memcached text protocol as Kyoto Tycoon's ``ktplugservmemc.so`` speaks it.

Pure functions over bytes (sans-IO), used by the embedded server's memcached listener
(:mod:`ktcluster.server.memcached`).  The plug-in's rules, which differ from memcached's
in places (ktplugservmemc.cc):

* a command line ends at LF, every CR is dropped, at most 8191 bytes are kept (the rest
  is read as the next line) -- :func:`read_command`; tokens are split on any byte
  0x01-0x20 and a NUL ends the line -- :func:`tokenize`;
* ``set/add/replace <key> <flags> <exptime> <bytes> [noreply]``: numbers are read with
  ``kc::atoi`` (junk ignored, never an error); fewer than 5 tokens is
  ``CLIENT_ERROR invalid parameters``; a size below 0 or above 2^28 closes the
  connection; the data block is followed by CRLF or a bare LF, anything else closes
  the connection without a reply -- :func:`parse_storage`, :func:`read_data_block`;
* exptime <= 0 never expires, 1 .. 2^24 is relative, larger is an absolute epoch --
  :func:`exptime_to_xt`;
* with the ``f`` option the flags are stored as 4 big-endian bytes after the value --
  :func:`pack_flags`, :func:`unpack_flags`;
* ``incr``/``decr`` read the value's leading decimal number (``kc::atoin``), clamp the
  result at 0 and store it as decimal text (flag bytes kept) -- :func:`incr_value`;
* ``noreply`` anywhere after the required tokens suppresses the answer --
  :func:`has_noreply`;
* queue mode (``q``) stores messages under ``key + " %014.0f %04d"`` -- :func:`queue_key`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import NamedTuple

from .binary import DATAMAXSIZ
from .framing import Incomplete
from .http import SERVER_NAME, read_line
from .kcnum import INT64MAX, atoi, atoin, to_int64

__all__ = [
    "VERSION", "STORED", "NOT_STORED", "DELETED", "NOT_FOUND", "END", "ERROR", "OK",
    "INVALID_PARAMETERS", "READ_ONLY", "VERSION_REPLY", "RELATIVE_EXPTIME_MAX",
    "BadDataBlock", "StorageRequest",
    "tokenize", "read_command", "has_noreply", "parse_storage", "read_data_block", "exptime_to_xt",
    "pack_flags", "unpack_flags", "incr_value", "queue_key", "queue_prefix",
    "encode_value", "encode_stats", "server_error",
]

#: the version the plug-in reports (``version``, ``STAT version``): the server's.
VERSION = SERVER_NAME
#: exptimes above this are absolute epoch seconds (2^24).
RELATIVE_EXPTIME_MAX = 1 << 24

STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
DELETED = b"DELETED\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
END = b"END\r\n"
ERROR = b"ERROR\r\n"
OK = b"OK\r\n"
INVALID_PARAMETERS = b"CLIENT_ERROR invalid parameters\r\n"
READ_ONLY = b"SERVER_ERROR server is read-only\r\n"
VERSION_REPLY = b"VERSION " + VERSION + b"\r\n"

_SEPARATORS = re.compile(rb"[\x01-\x20]+")
_FLAGS = struct.Struct(">I")


class BadDataBlock(Exception):
    """The data block of a storage command is not followed by CRLF or LF: the plug-in
    closes the connection without answering."""


class StorageRequest(NamedTuple):
    """A parsed ``set``/``add``/``replace`` line."""

    key: bytes
    flags: int      # uint32
    xt: int         # the expiry as a Kyoto Tycoon ``xt`` parameter (see exptime_to_xt)
    size: int       # bytes in the data block
    noreply: bool


def tokenize(line: bytes) -> list[bytes]:
    """kt::strtokenize: the line up to its first NUL, split on runs of 0x01-0x20."""
    nul = line.find(b"\0")
    if nul >= 0:
        line = line[:nul]
    return [token for token in _SEPARATORS.split(line) if token]


def read_command(buf: bytes, pos: int) -> tuple[list[bytes], int]:
    """(tokens of the command line at ``pos``, new pos); raises Incomplete.  The first
    token is the command name (none for an empty line, which the plug-in answers with
    ``ERROR``)."""
    line, pos = read_line(buf, pos)
    return tokenize(line), pos


def has_noreply(tokens: list[bytes], start: int) -> bool:
    """Whether a ``noreply`` token appears at ``start`` or later."""
    return b"noreply" in tokens[start:]


def exptime_to_xt(exptime: int) -> int:
    """A memcached exptime as the ``xt`` parameter of a database write: <= 0 -> no
    expiry (INT64MAX), up to 2^24 -> relative seconds, beyond -> absolute (negated)."""
    if exptime < 1:
        return INT64MAX
    if exptime > RELATIVE_EXPTIME_MAX:
        return -exptime
    return exptime


def parse_storage(tokens: list[bytes]) -> StorageRequest | None:
    """The parameters of a storage command line, or None when there are fewer than 5
    tokens (``CLIENT_ERROR invalid parameters``).  The size is not checked here: see
    :func:`read_data_block`."""
    if len(tokens) < 5:
        return None
    return StorageRequest(tokens[1], atoi(tokens[2]) & 0xFFFFFFFF, exptime_to_xt(atoi(tokens[3])),
                          atoi(tokens[4]), has_noreply(tokens, 5))


def read_data_block(buf: bytes, pos: int, size: int) -> tuple[bytes, int]:
    """(data, new pos) of a ``size``-byte data block at ``pos`` and its terminator.

    Raises :class:`BadDataBlock` for a size outside 0..2^28 or a terminator other than
    CRLF/LF (the plug-in then closes the connection), Incomplete when more bytes are
    needed (``needed`` never asks for more than the block and a 2-byte terminator)."""
    if size < 0 or size > DATAMAXSIZ:
        raise BadDataBlock(f"data block size {size} out of range")
    end = pos + size
    if len(buf) <= end:
        raise Incomplete(end + 1)
    term = buf[end]
    if term == 0x0D:
        if len(buf) <= end + 1:
            raise Incomplete(end + 2)
        term = buf[end + 1]
        if term == 0x0A:
            return buf[pos:end], end + 2
    elif term == 0x0A:
        return buf[pos:end], end + 1
    raise BadDataBlock("data block not followed by CRLF")


def pack_flags(data: bytes, flags: int) -> bytes:
    """The stored value with the ``f`` option: data + flags as u32 big-endian."""
    return data + _FLAGS.pack(flags)


def unpack_flags(stored: bytes, with_flags: bool) -> tuple[bytes, int]:
    """(data, flags) of a stored value: with the ``f`` option and at least 4 bytes the
    last 4 are the flags; otherwise the whole value with flags 0."""
    if with_flags and len(stored) >= 4:
        return stored[:-4], _FLAGS.unpack_from(stored, len(stored) - 4)[0]
    return stored, 0


def incr_value(stored: bytes, delta: int, with_flags: bool) -> tuple[bytes, int]:
    """``incr``/``decr`` on a stored value: (new stored value, new number).  The number
    is the value's leading decimal (non-numeric: 0) plus ``delta`` (negative for decr),
    clamped at 0 (int64 arithmetic), written as decimal text followed by the same flag
    bytes."""
    if with_flags and len(stored) >= 4:
        body, suffix = stored[:-4], stored[-4:]
    else:
        body, suffix = stored, b""
    num = to_int64(atoin(body) + delta)
    if num < 0:
        num = 0
    return b"%d" % num + suffix, num


def queue_prefix(key: bytes) -> bytes:
    """The key prefix of every message queued under ``key``."""
    return key + b" "


def queue_key(key: bytes, now: float, seq: int) -> bytes:
    """The record key of a queued message: key, the time in milliseconds (14 digits)
    and a 4-digit sequence number, so that a tree database keeps them in arrival order."""
    return key + b" %014.0f %04d" % (now * 1000, seq % 10000)


def encode_value(key: bytes, flags: int, data: bytes) -> bytes:
    """One ``VALUE`` item of a ``get`` answer (no cas field, also for ``gets``)."""
    return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)


def encode_stats(stats: Iterable[tuple[bytes, bytes | int]]) -> bytes:
    """The ``stats`` answer: a ``STAT name value`` line per item, then ``END``."""
    lines = [b"STAT %s %s\r\n" % (name, value if isinstance(value, bytes) else b"%d" % value)
             for name, value in stats]
    return b"".join(lines) + END


def server_error(operation: str) -> bytes:
    """The answer to a failed database operation, e.g. ``SERVER_ERROR DB::set failed``."""
    return b"SERVER_ERROR DB::%s failed\r\n" % operation.encode()
