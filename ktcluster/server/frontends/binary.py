"""The binary protocol: 0xB8 set_bulk, 0xB9 remove_bulk, 0xBA get_bulk, 0xB4 play_script,
and the hand-off of 0xB1 to the replication master (ktserver do_bin_*).

Records are read and applied one by one, so earlier ones stay applied when a later one
fails.  A record larger than 2^28 bytes, a short read or a database failure ends the
request with a single 0xBF byte (suppressed by the no-reply flag for set/remove;
get_bulk always answers) and closes the connection.  play_script failures answer 0xBF
but keep the connection; any unknown magic closes it without a word.  The frames are
:mod:`ktcluster.protocol.binary`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ...errors import ProtocolError
from ...protocol.binary import (
    FLAG_NOREPLY,
    MAGIC_ERROR,
    MAGIC_GET_BULK,
    MAGIC_PLAY_SCRIPT,
    MAGIC_REMOVE_BULK,
    MAGIC_REPLICATION,
    MAGIC_SET_BULK,
    Incomplete,
    decode_key_record,
    decode_play_script_header,
    decode_request_header,
    decode_script_record,
    decode_set_record,
    encode_count_reply,
    encode_get_bulk_reply,
    encode_play_script_reply,
)
from ...protocol.kcnum import cstr
from ..db.storage import DBError
from ..state import RV_SUCCESS, Counter
from . import replication

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["handle"]

_ERROR = bytes((MAGIC_ERROR,))


def handle(session: Session, magic: int) -> bool:
    """Serve one binary request whose first byte is ``magic``; whether to keep the connection."""
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


def _records(session: Session, rnum: int, decode: Callable[[bytes, int], tuple[Any, int]]) -> Iterator[Any]:
    """The ``rnum`` records of a request, decoded one by one as they arrive; a last None
    when the request is cut short (a short read or an oversized record)."""
    for _ in range(rnum):   # session.decode, inlined: this is the hot loop
        while True:
            try:
                record, session.pos = decode(session.buf, session.pos)
                break
            except Incomplete as exc:
                if not session.ensure(exc.needed - session.pos):
                    yield None
                    return
            except ProtocolError:
                yield None
                return
        yield record


def _count_reply(session: Session, magic: int, flags: int, hits: int, failed: bool) -> bool:
    """Answer set_bulk or remove_bulk (nothing with the no-reply flag); whether to keep
    the connection."""
    if flags & FLAG_NOREPLY:
        return not failed
    if failed:
        session.send(_ERROR)
        return False
    return session.send(encode_count_reply(magic, hits))


def _set_bulk(session: Session) -> bool:
    return _write_bulk(session, MAGIC_SET_BULK, decode_set_record, Counter.SET)


def _remove_bulk(session: Session) -> bool:
    return _write_bulk(session, MAGIC_REMOVE_BULK, decode_key_record, Counter.REMOVE)


def _write_bulk(session: Session, magic: int, decode: Callable[[bytes, int], tuple[Any, int]], counter: int) -> bool:
    """set_bulk (``magic`` 0xB8) or remove_bulk (0xB9): each record is applied as it
    arrives (a removal of an absent record is a miss); a database error ends the
    request."""
    header = session.decode(decode_request_header)
    if header is None:
        return False
    _, flags, rnum = header
    dbs = session.state.dbs
    ndbs = len(dbs)
    counts = session.counts
    miss = counter + 1
    removing = magic == MAGIC_REMOVE_BULK
    hits = 0
    failed = False
    for record in _records(session, rnum, decode):
        if record is None:
            failed = True
            break
        if record[0] < ndbs:
            counts[counter] += 1
            try:
                if removing:
                    found = dbs[record[0]].remove_bulk(record[1:]) > 0
                else:
                    dbidx, key, value, xt = record
                    dbs[dbidx].set(key, value, xt)
                    found = True
            except DBError:
                counts[miss] += 1
                failed = True
                break
            if found:
                hits += 1
            else:
                counts[miss] += 1
    return _count_reply(session, magic, flags, hits, failed)


def _get_bulk(session: Session) -> bool:
    header = session.decode(decode_request_header)
    if header is None:
        return False
    dbs = session.state.dbs
    counts = session.counts
    found = []
    for record in _records(session, header[2], decode_key_record):
        if record is None:
            session.send(_ERROR)
            return False
        dbidx, key = record
        if dbidx < len(dbs):
            counts[Counter.GET] += 1
            got = dbs[dbidx].get(key)
            if got is None:
                counts[Counter.GET_MISS] += 1
            else:
                found.append((dbidx, key, got[0], got[1]))
    return session.send(encode_get_bulk_reply(found))


def _play_script(session: Session) -> bool:
    try:
        header = session.decode(decode_play_script_header)
    except ProtocolError:   # a name over 2^28 bytes
        return False
    if header is None:
        return False
    flags, name, rnum = header
    records = list(_records(session, rnum, decode_script_record))
    if records and records[-1] is None:
        return False
    inmap = dict(sorted(dict(records).items()))
    engine = session.state.scripting
    norep = flags & FLAG_NOREPLY
    rv = None
    if engine is not None:
        session.counts[Counter.SCRIPT] += 1
        rv, outmap = engine.call(cstr(name), inmap)
    if rv != RV_SUCCESS:
        if not norep:
            session.send(_ERROR)
        return True
    return True if norep else session.send(encode_play_script_reply(sorted(outmap.items())))
