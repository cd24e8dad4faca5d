"""The replication master: the 0xB1 request (ktserver do_bin_replication).

After the 14 bytes ``flags:u32 ts:u64 sid:u16`` the master answers 0xB1 and streams
every update-log entry with a time stamp > ``ts``: by default all but those whose
origin sid is the requester's; with the WHITESID flag only those.  Every 256 entries
filtered out in a row it sends a size-0 dummy record carrying the last skipped time
stamp.  At the end of the log it sends a 0xB0 heartbeat with
``max(now - 1 s, highest time stamp read)``, waits for the single byte 0xB1 (anything
else ends the session), sleeps 0.1 s and looks again.

Entries are sent in batches of 64 KiB; a slave that has gone (its connection closed)
is noticed within 1024 entries read, so a handshake whose client left does not go on
scanning the log.

A requested time stamp older than the oldest remaining update-log file is not an error:
as with ktserver, the stream starts at the oldest file and the entries of removed files
are silently missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...protocol.binary import MAGIC_ERROR
from ...protocol.replication import (
    ACK,
    DUMMY_FREQ,
    FLAG_WHITESID,
    decode_handshake,
    encode_log_message,
    encode_nop,
    entry_origin,
)
from ..config import LOG_ERROR, LOG_INFO, LOG_SYSTEM
from ..db.ulog import UlogError, clock_pure

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["serve"]

_BATCH = 1 << 16
#: entries read between two looks at whether the slave is still there
_CHECK_EVERY = 1024
_ERROR = bytes((MAGIC_ERROR,))


def serve(session: Session) -> bool:
    """Stream the update log to a slave until it fails or the server stops."""
    state = session.state
    handshake = session.decode(decode_handshake)
    if handshake is None:
        return False
    flags, ts, sid = handshake
    white = bool(flags & FLAG_WHITESID)
    if state.ulog is None:
        session.send(_ERROR)
        state.log(LOG_INFO, "no update log allows no replication")
        return False
    try:
        reader = state.ulog.reader(ts)
    except (UlogError, OSError):
        state.log(LOG_ERROR, "opening an update log reader failed")
        session.send(_ERROR)
        return False
    try:
        if not session.send(ACK):
            return False
        state.log(LOG_SYSTEM, f"a slave was connected: ts={ts} sid={sid}")
        _stream(session, reader, sid, white)
        state.log(LOG_SYSTEM, f"a slave was disconnected: sid={sid}")
    finally:
        reader.close()
    return False


def _stream(session: Session, reader, sid: int, white: bool) -> None:
    state = session.state
    stopping = state.stopping
    highest = 0
    missed = 0
    out: list[bytes] = []
    pending = 0
    scanned = 0
    while not stopping.is_set():
        entry = reader.read()
        if entry is not None:
            scanned += 1
            if scanned % _CHECK_EVERY == 0 and session.peer_closed():
                return   # the slave has gone: stop scanning the log for it
            message, mts = entry
            origin = entry_origin(message)
            wanted = origin is not None and ((origin[0] == sid) if white else (origin[0] != sid))
            if wanted:
                missed = 0
                chunk = encode_log_message(mts, message)
            else:
                missed += 1
                chunk = b""
                if missed >= DUMMY_FREQ:
                    chunk = encode_log_message(mts, b"")
                    missed = 0
            if chunk:
                out.append(chunk)
                pending += len(chunk)
                if pending >= _BATCH:
                    if not session.send(b"".join(out)):
                        return
                    out, pending = [], 0
            if mts > highest:
                highest = mts
            continue
        now = clock_pure()
        if now > 1000000000:
            now -= 1000000000
        out.append(encode_nop(max(now, highest)))
        if not session.send(b"".join(out)):
            return
        out, pending = [], 0
        if session.read(1) != ACK:
            return
        if stopping.wait(0.1):
            return
