"""KT's binary protocol: bulk set/get/remove (0xB8/0xBA/0xB9) and play_script (0xB4).

Pure functions over bytes, used by both the client (encode requests, decode
replies) and the embedded server (decode requests record by record, encode
replies).  All integers are big-endian.  A decoder given too few bytes raises
:class:`Incomplete` saying how many bytes (from the start of the buffer) it
needs at least; sizes over KT's limit raise :class:`~ktcluster.errors.ProtocolError`.
The reply decoders take the most records the request can produce (``max_hits``:
a get_bulk of n keys finds at most n records; ``max_records`` for play_script) and
refuse a reply that declares more, before reading any record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

from ..errors import ProtocolError
from .framing import Incomplete

__all__ = [
    "MAGIC_NOP", "MAGIC_REPLICATION", "MAGIC_PLAY_SCRIPT", "MAGIC_SET_BULK",
    "MAGIC_REMOVE_BULK", "MAGIC_GET_BULK", "MAGIC_ERROR", "FLAG_NOREPLY",
    "XT_NONE", "XTMAX", "DATAMAXSIZ",
    "encode_set_bulk", "encode_remove_bulk", "encode_get_bulk", "encode_play_script",
    "encode_set_one", "encode_key_one",
    "CHUNK_RECORDS", "set_bulk_request", "remove_bulk_request", "get_bulk_request",
    "decode_count_reply", "decode_set_one", "decode_remove_one", "decode_get_bulk_reply", "decode_get_bulk_values",
    "decode_play_script_reply",
    "decode_request_header", "decode_set_record", "decode_key_record",
    "decode_play_script_header", "decode_script_record",
    "encode_count_reply", "encode_get_bulk_reply", "encode_play_script_reply",
]

MAGIC_NOP = 0xB0
MAGIC_REPLICATION = 0xB1
MAGIC_PLAY_SCRIPT = 0xB4
MAGIC_SET_BULK = 0xB8
MAGIC_REMOVE_BULK = 0xB9
MAGIC_GET_BULK = 0xBA
MAGIC_ERROR = 0xBF

FLAG_NOREPLY = 0x01

#: xt a client sends for "no expiry" (INT64MAX).
XT_NONE = 0x7FFFFFFFFFFFFFFF
#: the stored "never expires" value, reported by get_bulk for normal DBs.
XTMAX = (1 << 40) - 1
#: the largest key, value or name the server accepts.
DATAMAXSIZ = 1 << 28

_HEADER = struct.Struct(">BII")        # magic, flags, rnum
_SCRIPT_HEADER = struct.Struct(">BIII")  # magic, flags, nsiz, rnum
_SET_REC = struct.Struct(">HIIq")      # dbidx, ksiz, vsiz, xt
_KEY_REC = struct.Struct(">HI")        # dbidx, ksiz
_SCRIPT_REC = struct.Struct(">II")     # ksiz, vsiz
_REPLY = struct.Struct(">BI")          # magic, hits/rnum
_SIZES = struct.Struct(">2xII8x")      # ksiz, vsiz of a get_bulk reply record
_SET_ONE = struct.Struct(">BIIHIIq")   # the header and record head of a one-record set_bulk
_KEY_ONE = struct.Struct(">BIIHI")     # the header and record head of a one-key get/remove_bulk


def _check_size(size: int) -> None:
    if size > DATAMAXSIZ:
        raise ProtocolError(f"record size {size} exceeds the limit of {DATAMAXSIZ} bytes")


# -- requests (client encodes) ----------------------------------------------------------------


#: records per piece when a bulk request is sent in pieces (``*_request``): ktserver applies
#: the records of a bulk request as they arrive, so it works while the client encodes the rest.
CHUNK_RECORDS = 1024


def _set_columns(dbs: Iterable[int], keys: Sequence[bytes], values: Sequence[bytes], xts: Iterable[int]) -> bytes:
    """Set records from their columns: one ``struct.pack`` per record, the pieces laid out
    by slice assignment (no per-record tuple or concatenation), one join."""
    parts: list[bytes] = [b""] * (3 * len(keys))
    parts[0::3] = map(_SET_REC.pack, dbs, map(len, keys), map(len, values), xts)
    parts[1::3] = keys
    parts[2::3] = values   # (a ValueError unless there are as many values as keys)
    return b"".join(parts)


def _key_columns(dbs: Iterable[int], keys: Sequence[bytes]) -> bytes:
    parts: list[bytes] = [b""] * (2 * len(keys))
    parts[0::2] = map(_KEY_REC.pack, dbs, map(len, keys))
    parts[1::2] = keys
    return b"".join(parts)


def _set_records(records: Sequence[tuple[int, bytes, bytes, int]]) -> bytes:
    if not records:
        return b""
    dbs, keys, values, xts = zip(*records, strict=True)
    return _set_columns(dbs, keys, values, xts)


def _key_records(records: Sequence[tuple[int, bytes]]) -> bytes:
    if not records:
        return b""
    dbs, keys = zip(*records, strict=True)
    return _key_columns(dbs, keys)


def _sequence(records: Iterable[Any]) -> Sequence[Any]:
    return records if isinstance(records, (list, tuple)) else list(records)


def encode_set_bulk(records: Iterable[tuple[int, bytes, bytes, int]], flags: int = 0) -> bytes:
    """0xB8 request; records are (dbidx, key, value, xt) with xt as in RPC (XT_NONE: none)."""
    seq = _sequence(records)
    return _HEADER.pack(MAGIC_SET_BULK, flags, len(seq)) + _set_records(seq)


def encode_remove_bulk(records: Iterable[tuple[int, bytes]], flags: int = 0) -> bytes:
    """0xB9 request; records are (dbidx, key)."""
    seq = _sequence(records)
    return _HEADER.pack(MAGIC_REMOVE_BULK, flags, len(seq)) + _key_records(seq)


def encode_get_bulk(records: Iterable[tuple[int, bytes]]) -> bytes:
    """0xBA request; records are (dbidx, key).  The server ignores flags here."""
    seq = _sequence(records)
    return _HEADER.pack(MAGIC_GET_BULK, 0, len(seq)) + _key_records(seq)


# The requests of single-record operations: one struct.pack each, the shortest path.


def encode_set_one(dbidx: int, key: bytes, value: bytes, xt: int, flags: int = 0) -> bytes:
    """0xB8 request of one record (as :func:`encode_set_bulk` of it)."""
    return _SET_ONE.pack(MAGIC_SET_BULK, flags, 1, dbidx, len(key), len(value), xt) + key + value


def encode_key_one(magic: int, dbidx: int, key: bytes, flags: int = 0) -> bytes:
    """0xBA (``MAGIC_GET_BULK``) or 0xB9 (``MAGIC_REMOVE_BULK``) request of one key."""
    return _KEY_ONE.pack(magic, flags, 1, dbidx, len(key)) + key


# A bulk request of one database (and one xt) built from its columns -- the keys (and the
# values) -- as the client sends it: bytes, or, with more than ``per_piece`` records, the
# pieces of ``per_piece`` records to send as they are produced (the first carries the header).


def set_bulk_request(dbidx: int, keys: Sequence[bytes], values: Sequence[bytes], xt: int, flags: int = 0,
                     per_piece: int = CHUNK_RECORDS) -> bytes | Iterator[bytes]:
    """0xB8 request: ``keys[i]`` set to ``values[i]`` in ``dbidx`` with expiry ``xt``."""
    head = _HEADER.pack(MAGIC_SET_BULK, flags, len(keys))
    if len(keys) <= per_piece:
        return head + _set_columns(repeat(dbidx), keys, values, repeat(xt))
    return _pieces(head, len(keys), per_piece,
                   lambda a, b: _set_columns(repeat(dbidx), keys[a:b], values[a:b], repeat(xt)))


def remove_bulk_request(dbidx: int, keys: Sequence[bytes], flags: int = 0,
                        per_piece: int = CHUNK_RECORDS) -> bytes | Iterator[bytes]:
    """0xB9 request: ``keys`` of ``dbidx``."""
    return _key_request(MAGIC_REMOVE_BULK, dbidx, keys, flags, per_piece)


def get_bulk_request(dbidx: int, keys: Sequence[bytes], per_piece: int = CHUNK_RECORDS) -> bytes | Iterator[bytes]:
    """0xBA request: ``keys`` of ``dbidx``."""
    return _key_request(MAGIC_GET_BULK, dbidx, keys, 0, per_piece)


def _key_request(magic: int, dbidx: int, keys: Sequence[bytes], flags: int, per_piece: int) -> bytes | Iterator[bytes]:
    head = _HEADER.pack(magic, flags, len(keys))
    if len(keys) <= per_piece:
        return head + _key_columns(repeat(dbidx), keys)
    return _pieces(head, len(keys), per_piece, lambda a, b: _key_columns(repeat(dbidx), keys[a:b]))


def _pieces(head: bytes, count: int, per_piece: int, encode: Callable[[int, int], bytes]) -> Iterator[bytes]:
    yield head + encode(0, per_piece)
    for start in range(per_piece, count, per_piece):
        yield encode(start, start + per_piece)


def encode_play_script(name: bytes, records: Iterable[tuple[bytes, bytes]], flags: int = 0) -> bytes:
    """0xB4 request: procedure name and (key, value) records, passed to the script raw."""
    pack = _SCRIPT_REC.pack
    parts = [b"", name]
    n = 0
    for key, value in records:
        parts.append(pack(len(key), len(value)))
        parts.append(key)
        parts.append(value)
        n += 1
    parts[0] = _SCRIPT_HEADER.pack(MAGIC_PLAY_SCRIPT, flags, len(name), n)
    return b"".join(parts)


# -- replies (client decodes) -----------------------------------------------------------------


def _reply_header(buf: bytes, magic: int, max_hits: int | None = None) -> int:
    if not buf:
        raise Incomplete(1)
    if buf[0] != magic:
        if buf[0] == MAGIC_ERROR:
            raise ProtocolError("the server answered 0xBF (error)")
        raise ProtocolError(f"unexpected reply magic 0x{buf[0]:02x}, expected 0x{magic:02x}")
    if len(buf) < 5:
        raise Incomplete(5)
    hits = _REPLY.unpack_from(buf)[1]
    if max_hits is not None and hits > max_hits:
        raise ProtocolError(f"the reply declares {hits} records where the request allows at most {max_hits}")
    return hits


def decode_count_reply(buf: bytes, magic: int, max_hits: int | None = None) -> tuple[int, int]:
    """Reply of set_bulk/remove_bulk: (hits, bytes consumed); ``max_hits``: the records sent."""
    return _reply_header(buf, magic, max_hits), 5


def decode_set_one(buf: bytes) -> tuple[bool, int]:
    """Reply to :func:`encode_set_one`: (whether the record was stored, bytes consumed)."""
    return _reply_header(buf, MAGIC_SET_BULK, 1) > 0, 5


def decode_remove_one(buf: bytes) -> tuple[bool, int]:
    """Reply to :func:`encode_key_one` of ``MAGIC_REMOVE_BULK``: (whether the record existed,
    bytes consumed)."""
    return _reply_header(buf, MAGIC_REMOVE_BULK, 1) > 0, 5


def decode_get_bulk_reply(buf: bytes, max_hits: int | None = None) -> tuple[list[tuple[int, bytes, bytes, int]], int]:
    """Reply of get_bulk: ([(dbidx, key, value, xt)...] in request order, bytes consumed);
    ``max_hits``: the keys asked for."""
    hits = _reply_header(buf, MAGIC_GET_BULK, max_hits)
    unpack = _SET_REC.unpack_from
    pos, end = 5, len(buf)
    out = []
    for _ in range(hits):
        if pos + 18 > end:
            raise Incomplete(pos + 18)
        dbidx, ksiz, vsiz, xt = unpack(buf, pos)
        pos += 18
        if ksiz > DATAMAXSIZ or vsiz > DATAMAXSIZ:
            _check_size(max(ksiz, vsiz))
        kend = pos + ksiz
        vend = kend + vsiz
        if vend > end:
            raise Incomplete(vend)
        out.append((dbidx, buf[pos:kend], buf[kend:vend], xt))
        pos = vend
    return out, pos


def decode_get_bulk_values(buf: bytes, max_hits: int | None = None) -> tuple[dict[bytes, bytes], int]:
    """The same reply as :func:`decode_get_bulk_reply` in the shape a client wants:
    ({key: value}, bytes consumed); dbidx and xt are skipped, duplicate keys collapse."""
    hits = _reply_header(buf, MAGIC_GET_BULK, max_hits)
    unpack = _SIZES.unpack_from
    pos, end = 5, len(buf)
    out = {}
    for _ in range(hits):
        if pos + 18 > end:
            raise Incomplete(pos + 18)
        ksiz, vsiz = unpack(buf, pos)
        if ksiz > DATAMAXSIZ or vsiz > DATAMAXSIZ:
            _check_size(max(ksiz, vsiz))
        kpos = pos + 18
        vpos = kpos + ksiz
        pos = vpos + vsiz
        if pos > end:
            raise Incomplete(pos)
        out[buf[kpos:vpos]] = buf[vpos:pos]
    return out, pos


def decode_play_script_reply(buf: bytes, max_records: int | None = None
                             ) -> tuple[list[tuple[bytes, bytes]] | None, int]:
    """Reply of play_script: ([(key, value)...], bytes consumed).  ``(None, 1)`` when the
    server answered its error byte 0xBF: the procedure failed (a complete answer, unlike
    0xBF to a bulk request, after which the server closes the connection)."""
    if buf and buf[0] == MAGIC_ERROR:
        return None, 1
    rnum = _reply_header(buf, MAGIC_PLAY_SCRIPT, max_records)
    pos, end = 5, len(buf)
    out = []
    for _ in range(rnum):
        (key, value), pos = decode_script_record(buf, pos, end)
        out.append((key, value))
    return out, pos


# -- requests (server decodes, record by record) ----------------------------------------------


def decode_request_header(buf: bytes, pos: int = 0) -> tuple[int, int, int, int]:
    """(magic, flags, rnum, new pos) of a 0xB8/0xB9/0xBA request."""
    if len(buf) < pos + 9:
        raise Incomplete(pos + 9)
    magic, flags, rnum = _HEADER.unpack_from(buf, pos)
    return magic, flags, rnum, pos + 9


def decode_set_record(buf: bytes, pos: int) -> tuple[tuple[int, bytes, bytes, int], int]:
    """One set_bulk record at ``pos``: ((dbidx, key, value, xt), new pos)."""
    if len(buf) < pos + 18:
        raise Incomplete(pos + 18)
    dbidx, ksiz, vsiz, xt = _SET_REC.unpack_from(buf, pos)
    _check_size(ksiz)
    _check_size(vsiz)
    kpos = pos + 18
    vpos = kpos + ksiz
    end = vpos + vsiz
    if len(buf) < end:
        raise Incomplete(end)
    return (dbidx, buf[kpos:vpos], buf[vpos:end], xt), end


def decode_key_record(buf: bytes, pos: int) -> tuple[tuple[int, bytes], int]:
    """One get_bulk/remove_bulk record at ``pos``: ((dbidx, key), new pos)."""
    if len(buf) < pos + 6:
        raise Incomplete(pos + 6)
    dbidx, ksiz = _KEY_REC.unpack_from(buf, pos)
    _check_size(ksiz)
    end = pos + 6 + ksiz
    if len(buf) < end:
        raise Incomplete(end)
    return (dbidx, buf[pos + 6:end]), end


def decode_play_script_header(buf: bytes, pos: int = 0) -> tuple[int, bytes, int, int]:
    """(flags, name, rnum, new pos) of a 0xB4 request."""
    if len(buf) < pos + 13:
        raise Incomplete(pos + 13)
    _, flags, nsiz, rnum = _SCRIPT_HEADER.unpack_from(buf, pos)
    _check_size(nsiz)
    end = pos + 13 + nsiz
    if len(buf) < end:
        raise Incomplete(end)
    return flags, buf[pos + 13:end], rnum, end


def decode_script_record(buf: bytes, pos: int, end: int | None = None) -> tuple[tuple[bytes, bytes], int]:
    """One play_script (key, value) record at ``pos`` (requests and replies share it)."""
    if end is None:
        end = len(buf)
    if end < pos + 8:
        raise Incomplete(pos + 8)
    ksiz, vsiz = _SCRIPT_REC.unpack_from(buf, pos)
    _check_size(ksiz)
    _check_size(vsiz)
    kpos = pos + 8
    vpos = kpos + ksiz
    rend = vpos + vsiz
    if end < rend:
        raise Incomplete(rend)
    return (buf[kpos:vpos], buf[vpos:rend]), rend


# -- replies (server encodes) -----------------------------------------------------------------


def encode_count_reply(magic: int, hits: int) -> bytes:
    """Reply of set_bulk (0xB8) or remove_bulk (0xB9)."""
    return _REPLY.pack(magic, hits)


def encode_get_bulk_reply(records: list[tuple[int, bytes, bytes, int]]) -> bytes:
    """Reply of get_bulk; records are (dbidx, key, value, stored absolute xt)."""
    pack = _SET_REC.pack
    parts = [_REPLY.pack(MAGIC_GET_BULK, len(records))]
    for dbidx, key, value, xt in records:
        parts.append(pack(dbidx, len(key), len(value), xt))
        parts.append(key)
        parts.append(value)
    return b"".join(parts)


def encode_play_script_reply(records: list[tuple[bytes, bytes]]) -> bytes:
    """Reply of play_script."""
    pack = _SCRIPT_REC.pack
    parts = [_REPLY.pack(MAGIC_PLAY_SCRIPT, len(records))]
    for key, value in records:
        parts.append(pack(len(key), len(value)))
        parts.append(key)
        parts.append(value)
    return b"".join(parts)
