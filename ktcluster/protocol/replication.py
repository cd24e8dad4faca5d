"""KT replication (0xB1): the handshake, the master's stream, update-log entries.

Pure functions over bytes shared by the client's consumers (KyotoSlave, the
merged stream) and the embedded server (master side and slave side).

Stream, master to client, after the one-byte 0xB1 accept:
  * ``B1 ts:u64 size:u32 payload`` -- one log entry (size 0: a progress-only dummy)
  * ``B0 ts:u64`` -- heartbeat; the client must answer the single byte ``B1``
Payload: ``sid:u16 dbid:u16 op:u8`` then for SET ``varnum ksiz, varnum vsiz, key, value``,
for REMOVE ``varnum ksiz, key``, for CLEAR nothing.

The master answers the handshake with ``B1`` (accepted) or ``BF`` (no update log,
or its reader could not open one) and closes.  It never signals that history is
missing: a ts older than its oldest remaining update-log file is accepted and the
stream silently starts at that file.  :func:`parse_ulog_list` reads the
``ulog_list`` RPC answer a client needs to detect that.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from ..errors import ProtocolError, ReplicationError
from .binary import MAGIC_ERROR, MAGIC_NOP, MAGIC_REPLICATION, XTMAX
from .framing import Incomplete

__all__ = [
    "OP_SET", "OP_REMOVE", "OP_CLEAR", "FLAG_WHITESID", "DUMMY_FREQ", "ACK",
    "LogEntry", "StreamMessage",
    "VARNUM_MAX", "encode_varnum", "decode_varnum",
    "encode_handshake", "decode_handshake",
    "decode_accept", "encode_log_message", "encode_nop", "decode_stream_message", "LogRecord", "decode_log_stream",
    "encode_log_entry", "decode_log_entry", "entry_origin",
    "split_xt", "join_xt",
    "UlogFile", "parse_ulog_list",
]

OP_SET = 0xA1
OP_REMOVE = 0xA2
OP_CLEAR = 0xA5

#: handshake flag: receive only entries whose origin sid equals the given sid.
FLAG_WHITESID = 0x01
#: the master sends a size-0 dummy after this many entries filtered out in a row.
DUMMY_FREQ = 256
#: what a client sends to acknowledge a heartbeat (and what the master sends to accept).
ACK = bytes((MAGIC_REPLICATION,))

_HANDSHAKE = struct.Struct(">BIQH")
_LOG_HEAD = struct.Struct(">BQI")
_NOP = struct.Struct(">BQ")
_ENTRY_HEAD = struct.Struct(">HHB")
_ENTRY_ORIGIN = struct.Struct(">HH")
_XT5 = struct.Struct(">Q")
_UINT64 = (1 << 64) - 1
#: the longest varnum KC writes (a 64-bit number in 7-bit groups); a log entry's sizes
#: may not be longer.
VARNUM_MAX = 10


class LogEntry(NamedTuple):
    """One decoded update-log entry."""

    sid: int
    dbid: int
    op: int
    key: bytes
    value: bytes  # the stored value (5-byte xt prefix included unless ktopts=p); b"" for REMOVE/CLEAR


class StreamMessage(NamedTuple):
    """One message of the master's stream: a log (payload may be b'' for a dummy) or a NOP."""

    is_nop: bool
    ts: int
    payload: bytes


# -- varnum -----------------------------------------------------------------------------------


def encode_varnum(num: int) -> bytes:
    """KC writevarnum: big-endian base-128, high bit set on all but the last byte."""
    if num < 0x80:
        return bytes((num,))
    out = [num & 0x7F]
    num >>= 7
    while num:
        out.append(0x80 | (num & 0x7F))
        num >>= 7
    return bytes(reversed(out))


def decode_varnum(buf: bytes, pos: int, end: int | None = None, max_len: int | None = None) -> tuple[int, int]:
    """(value, new pos) of the number at ``pos``, read as KC's readvarnum does (modulo
    2**64, so in linear time whatever its length).  ProtocolError when the buffer (or
    ``end``) comes mid-number, or when the number runs longer than ``max_len`` bytes."""
    if end is None:
        end = len(buf)
    stop = end if max_len is None else min(end, pos + max_len)
    num = 0
    while pos < stop:
        c = buf[pos]
        pos += 1
        num = ((num << 7) | (c & 0x7F)) & _UINT64
        if c < 0x80:
            return num, pos
    if stop < end:
        raise ProtocolError(f"a varnum longer than {max_len} bytes in a replication log entry")
    raise ProtocolError("truncated varnum in a replication log entry")


# -- handshake --------------------------------------------------------------------------------


def encode_handshake(ts: int, sid: int, flags: int = 0) -> bytes:
    """The 15-byte request: B1, flags, ts (entries after it are sent), our sid."""
    return _HANDSHAKE.pack(MAGIC_REPLICATION, flags, ts, sid)


def decode_handshake(buf: bytes, pos: int = 0) -> tuple[int, int, int, int]:
    """(flags, ts, sid, new pos) of the handshake at ``pos`` (server side)."""
    if len(buf) < pos + 15:
        raise Incomplete(pos + 15)
    _, flags, ts, sid = _HANDSHAKE.unpack_from(buf, pos)
    return flags, ts, sid, pos + 15


def decode_accept(buf: bytes) -> int:
    """Check the master's one-byte answer to the handshake; returns the bytes used (1).

    ``B1``: accepted.  ``BF``: :class:`ReplicationError` (the master has no update
    log, or could not open it).  Anything else: :class:`ProtocolError`."""
    if not buf:
        raise Incomplete(1)
    magic = buf[0]
    if magic == MAGIC_REPLICATION:
        return 1
    if magic == MAGIC_ERROR:
        raise ReplicationError("the master refused replication (0xBF): it has no update log "
                               "or could not open it")
    raise ProtocolError(f"unexpected byte 0x{magic:02x} in answer to a replication handshake")


# -- stream messages --------------------------------------------------------------------------


def encode_log_message(ts: int, payload: bytes) -> bytes:
    """A data message (payload b'' makes the size-0 dummy)."""
    return _LOG_HEAD.pack(MAGIC_REPLICATION, ts, len(payload)) + payload


def encode_nop(ts: int) -> bytes:
    """A heartbeat carrying the master's progress timestamp."""
    return _NOP.pack(MAGIC_NOP, ts)


def decode_stream_message(buf: bytes, pos: int = 0, max_size: int | None = None) -> tuple[StreamMessage, int]:
    """One message at ``pos``: (message, new pos).  0xBF or another byte: ProtocolError;
    so is a log entry announced larger than ``max_size`` bytes (before its bytes come)."""
    end = len(buf)
    if pos >= end:
        raise Incomplete(pos + 1)
    magic = buf[pos]
    if magic == MAGIC_REPLICATION:
        if end < pos + 13:
            raise Incomplete(pos + 13)
        _, ts, size = _LOG_HEAD.unpack_from(buf, pos)
        if max_size is not None and size > max_size:
            raise _too_large(size, max_size)
        stop = pos + 13 + size
        if end < stop:
            raise Incomplete(stop)
        return StreamMessage(False, ts, buf[pos + 13:stop]), stop
    if magic == MAGIC_NOP:
        if end < pos + 9:
            raise Incomplete(pos + 9)
        return StreamMessage(True, _NOP.unpack_from(buf, pos)[1], b""), pos + 9
    raise _bad_magic(magic)


def _too_large(size: int, max_size: int) -> ProtocolError:
    return ProtocolError(f"the master announced a log entry of {size} bytes, over the limit of {max_size} "
                         "(max_record_size)")


def _bad_magic(magic: int) -> ProtocolError:
    if magic == MAGIC_ERROR:
        return ProtocolError("the master sent an error (0xBF) in the replication stream")
    return ProtocolError(f"unexpected byte 0x{magic:02x} in the replication stream")


#: A decoded data message: (ts, sid, dbid, op, key, value) -- value as stored, see LogEntry.
LogRecord = tuple[int, int, int, int, bytes, bytes]


def decode_log_stream(buf: bytes, pos: int = 0, max_size: int | None = None) -> tuple[list[LogRecord | int], int, int]:
    """Every complete message from ``pos`` on, entries parsed: (items, new pos, heartbeats).

    An item is a :data:`LogRecord` tuple for a log entry, or the bare ts (an int)
    of a heartbeat or of a size-0 dummy (progress only).  ``heartbeats`` counts
    the heartbeats, each of which the client must acknowledge with :data:`ACK`.
    The bytes after ``new pos`` are the start of an incomplete message (the list
    is empty when not even one message is complete; :func:`decode_stream_message`
    then says how many bytes it needs).  Errors (and ``max_size``) as for
    :func:`decode_stream_message`.
    Plain tuples, parsed in place: this is the consumers' hot path.
    """
    out: list[LogRecord | int] = []
    append = out.append
    end = len(buf)
    log_head = _LOG_HEAD.unpack_from
    nop = _NOP.unpack_from
    heartbeats = 0
    while pos < end:
        magic = buf[pos]
        if magic == MAGIC_REPLICATION:
            if end < pos + 13:
                break
            _, ts, size = log_head(buf, pos)
            if max_size is not None and size > max_size:
                raise _too_large(size, max_size)
            stop = pos + 13 + size
            if end < stop:
                break
            append(_parse_entry(buf, pos + 13, stop, ts) if size else ts)
            pos = stop
        elif magic == MAGIC_NOP:
            if end < pos + 9:
                break
            append(nop(buf, pos)[1])
            heartbeats += 1
            pos += 9
        else:
            raise _bad_magic(magic)
    return out, pos, heartbeats


# -- log entries ------------------------------------------------------------------------------


def encode_log_entry(sid: int, dbid: int, op: int, key: bytes = b"", value: bytes = b"") -> bytes:
    """Serialise one entry (value is the stored value, xt prefix included)."""
    head = _ENTRY_HEAD.pack(sid, dbid, op)
    if op == OP_SET:
        return head + encode_varnum(len(key)) + encode_varnum(len(value)) + key + value
    if op == OP_REMOVE:
        return head + encode_varnum(len(key)) + key
    return head


def entry_origin(payload: bytes) -> tuple[int, int] | None:
    """(origin sid, dbid) of a log entry without decoding the rest; None for a payload
    too short to hold them (a size-0 dummy, for one)."""
    return _ENTRY_ORIGIN.unpack_from(payload) if len(payload) >= 4 else None


def decode_log_entry(payload: bytes) -> LogEntry:
    """Parse one entry; unknown op codes come back with empty key and value."""
    return LogEntry(*_parse_entry(payload, 0, len(payload), 0)[1:])


def _parse_entry(buf: bytes, pos: int, end: int, ts: int) -> LogRecord:
    """The entry in ``buf[pos:end]`` as (ts, sid, dbid, op, key, value)."""
    if end - pos < 5:
        raise ProtocolError("replication log entry shorter than its 5-byte header")
    sid, dbid, op = _ENTRY_HEAD.unpack_from(buf, pos)
    if op != OP_SET and op != OP_REMOVE:
        return ts, sid, dbid, op, b"", b""
    pos += 5
    # sizes below 128 take one byte: decoded inline (the hot path), longer ones by decode_varnum
    if pos < end and buf[pos] < 0x80:
        ksiz = buf[pos]
        pos += 1
    else:
        ksiz, pos = decode_varnum(buf, pos, end, VARNUM_MAX)
    if op == OP_REMOVE:
        if pos + ksiz > end:
            raise ProtocolError("truncated REMOVE entry in the replication stream")
        return ts, sid, dbid, op, buf[pos:pos + ksiz], b""
    if pos < end and buf[pos] < 0x80:
        vsiz = buf[pos]
        pos += 1
    else:
        vsiz, pos = decode_varnum(buf, pos, end, VARNUM_MAX)
    kend = pos + ksiz
    if kend + vsiz > end:
        raise ProtocolError("truncated SET entry in the replication stream")
    return ts, sid, dbid, op, buf[pos:kend], buf[kend:kend + vsiz]


def split_xt(stored: bytes) -> tuple[int, bytes]:
    """(absolute xt, user value) of a stored value of a normal (not ktopts=p) DB;
    xt is XTMAX when the record never expires."""
    if len(stored) < 5:
        raise ProtocolError("stored value shorter than its 5-byte expiration prefix")
    return int.from_bytes(stored[:5], "big"), stored[5:]


def join_xt(xt: int, value: bytes) -> bytes:
    """The stored form of a value with absolute expiry ``xt`` (XTMAX: never)."""
    return _XT5.pack(min(xt, XTMAX))[3:] + value


# -- update-log files (the ulog_list RPC) -----------------------------------------------------


class UlogFile(NamedTuple):
    """One update-log file as ``ulog_list`` reports it."""

    id: int  # the 10-digit number of NNNNNNNNNN.ulog; files are numbered from 1 and never reused
    path: str
    size: int
    max_ts: int  # the highest ts written to the file


def parse_ulog_list(fields: Iterable[tuple[bytes, bytes]]) -> list[UlogFile]:
    """The files of a ``ulog_list`` answer (``<path>\t<size>:<max ts>`` per file), oldest first."""
    files = []
    for key, value in fields:
        path = key.decode("utf-8", "replace")
        name = path.rsplit("/", 1)[-1]
        stem, dot, ext = name.partition(".")
        size, colon, max_ts = value.partition(b":")
        if not (dot and ext == "ulog" and stem.isdigit() and colon and size.isdigit() and max_ts.isdigit()):
            raise ProtocolError(f"unexpected ulog_list entry {key!r}: {value!r}")
        files.append(UlogFile(int(stem), path, int(size), int(max_ts)))
    files.sort()
    return files
