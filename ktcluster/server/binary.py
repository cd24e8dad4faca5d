"""The binary protocol: 0xB8 set_bulk, 0xB9 remove_bulk, 0xBA get_bulk, 0xB4 play_script,
and the hand-off of 0xB1 to the replication master (ktserver do_bin_*).

Records are read and applied one by one, so earlier ones stay applied when a later one
fails.  A record larger than 2^28 bytes, a short read or a database failure ends the
request with a single 0xBF byte (suppressed by the no-reply flag for set/remove;
get_bulk always answers) and closes the connection.  play_script failures answer 0xBF
but keep the connection; any unknown magic closes it without a word.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import ProtocolError
from ..protocol.binary import (
    DATAMAXSIZ,
    FLAG_NOREPLY,
    MAGIC_ERROR,
    MAGIC_GET_BULK,
    MAGIC_PLAY_SCRIPT,
    MAGIC_REMOVE_BULK,
    MAGIC_REPLICATION,
    MAGIC_SET_BULK,
    Incomplete,
    decode_key_record,
    decode_script_record,
    decode_set_record,
    encode_count_reply,
    encode_get_bulk_reply,
    encode_play_script_reply,
)
from . import replication
from .rpc import RV_SUCCESS
from .server import Counter
from .storage import DBError

if TYPE_CHECKING:
    from .server import Session

__all__ = ["handle"]

_ERROR = bytes((MAGIC_ERROR,))
_U32PAIR = struct.Struct(">II")
_U32TRIPLE = struct.Struct(">III")


def handle(session: Session, magic: int) -> bool:
    """Serve one binary request whose first byte is ``magic``; whether to keep the connection."""
    session.pos += 1
    if magic == MAGIC_GET_BULK:
        return _get_bulk(session)
    if magic == MAGIC_SET_BULK:
        return _set_bulk(session)
    if magic == MAGIC_REMOVE_BULK:
        return _remove_bulk(session)
    if magic == MAGIC_PLAY_SCRIPT:
        return _play_script(session)
    if magic == MAGIC_REPLICATION:
        return replication.serve(session)
    return False


def _records(session: Session, rnum: int, decode):
    """Yield the decoded records one by one, reading more as needed; stops early (and
    sets ``session.binary_failed``) on a short read or an oversized record."""
    session.binary_failed = False
    for _ in range(rnum):
        while True:
            try:
                record, end = decode(session.buf, session.pos)
                break
            except Incomplete as exc:
                if not session.ensure(exc.needed - session.pos):
                    session.binary_failed = True
                    return
            except ProtocolError:
                session.binary_failed = True
                return
        session.pos = end
        yield record


def _header(session: Session) -> tuple[int, int] | None:
    data = session.read(8)
    return None if data is None else _U32PAIR.unpack(data)


def _set_bulk(session: Session) -> bool:
    header = _header(session)
    if header is None:
        return False
    flags, rnum = header
    dbs = session.server.dbs
    counts = session.counts
    hits = 0
    failed = False
    for dbidx, key, value, xt in _records(session, rnum, decode_set_record):
        if dbidx < len(dbs):
            counts[Counter.SET] += 1
            try:
                dbs[dbidx].set(key, value, xt)
            except DBError:
                counts[Counter.SET_MISS] += 1
                failed = True
                break
            hits += 1
    failed = failed or session.binary_failed
    if flags & FLAG_NOREPLY:
        return not failed
    if failed:
        session.send(_ERROR)
        return False
    return session.send(encode_count_reply(MAGIC_SET_BULK, hits))


def _remove_bulk(session: Session) -> bool:
    header = _header(session)
    if header is None:
        return False
    flags, rnum = header
    dbs = session.server.dbs
    counts = session.counts
    hits = 0
    failed = False
    for dbidx, key in _records(session, rnum, decode_key_record):
        if dbidx < len(dbs):
            counts[Counter.REMOVE] += 1
            try:
                found = dbs[dbidx].remove_bulk((key,))
            except DBError:
                counts[Counter.REMOVE_MISS] += 1
                failed = True
                break
            if found:
                hits += 1
            else:
                counts[Counter.REMOVE_MISS] += 1
    failed = failed or session.binary_failed
    if flags & FLAG_NOREPLY:
        return not failed
    if failed:
        session.send(_ERROR)
        return False
    return session.send(encode_count_reply(MAGIC_REMOVE_BULK, hits))


def _get_bulk(session: Session) -> bool:
    header = _header(session)
    if header is None:
        return False
    _, rnum = header
    dbs = session.server.dbs
    counts = session.counts
    found = []
    for dbidx, key in _records(session, rnum, decode_key_record):
        if dbidx < len(dbs):
            counts[Counter.GET] += 1
            got = dbs[dbidx].get(key)
            if got is None:
                counts[Counter.GET_MISS] += 1
            else:
                found.append((dbidx, key, got[0], got[1]))
    if session.binary_failed:
        session.send(_ERROR)
        return False
    return session.send(encode_get_bulk_reply(found))


def _play_script(session: Session) -> bool:
    data = session.read(12)
    if data is None:
        return False
    flags, nsiz, rnum = _U32TRIPLE.unpack(data)
    if nsiz > DATAMAXSIZ:
        return False
    name = session.read(nsiz)
    if name is None:
        return False
    nul = name.find(b"\0")
    if nul >= 0:
        name = name[:nul]
    inmap = dict(sorted(dict(_records(session, rnum, decode_script_record)).items()))
    if session.binary_failed:
        return False
    engine = session.server.scripting
    norep = flags & FLAG_NOREPLY
    rv = None
    if engine is not None:
        session.counts[Counter.SCRIPT] += 1
        rv, outmap = engine.call(name, inmap)
    if rv != RV_SUCCESS:
        if not norep:
            session.send(_ERROR)
        return True
    return True if norep else session.send(encode_play_script_reply(sorted(outmap.items())))
