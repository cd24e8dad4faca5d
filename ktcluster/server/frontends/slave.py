"""The replication slave (``-mhost H -mport P -rts FILE [-riv SEC]``), as ktserver's
``class Slave`` behaves.

A thread that keeps a replication session open to the master and applies what it
sends:

* it connects (60 s socket timeout) with the 0xB1 handshake carrying the last applied
  time stamp (``rts``) and this server's ``-sid``, then reads the stream message by
  message: data records are applied, heartbeats (0xB0) answered with 0xB1, and any
  other byte, EOF or timeout ends the session; ``rts`` follows the highest time stamp
  seen (heartbeats and size-0 dummies included);
* an entry is applied when its origin sid is not ours and its dbid names one of our
  databases, by writing the master's *stored* value (no expiry translation: both sides
  must agree on ``ktopts=p``), removing, or clearing; unknown operations are skipped and
  malformed entries logged and skipped.  The database logs the applied entry again
  with the *origin* sid (:meth:`~ktcluster.server.db.storage.Database.apply_replicated`), so that two
  servers replicating from each other do not echo;
* ``-riv`` throttles: each record adds ``riv``, each dummy ``riv * 64``, and the slave
  sleeps 0.1 s per 100 accumulated;
* after a session ends (or a connection fails) it retries every second;
* the RTS file holds ``rts`` as ``%020d\\n`` (21 bytes); it is read at start, written at
  start, when ``tune_replication`` gives a new time stamp, and whenever a session ends.

``tune_replication`` (:meth:`Slave.tune`) changes master, time stamp and interval; the
running session ends at its next message and the next one uses the new settings.  An
empty host disables replication.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

from ...errors import ProtocolError
from ...protocol.kcnum import atoi
from ...protocol.replication import (
    ACK,
    DUMMY_FREQ,
    OP_CLEAR,
    OP_REMOVE,
    OP_SET,
    decode_log_entry,
    decode_stream_message,
    encode_handshake,
    encode_log_entry,
    entry_origin,
)
from ..config import LOG_ERROR, LOG_SYSTEM
from ..db.storage import DBError
from ..db.ulog import clock_pure
from ..netio import BufferedSocket

if TYPE_CHECKING:
    from ..state import ServerState

__all__ = ["Slave", "create_slave", "RTS_SIZE"]

#: the RTS file: 20 decimal digits and a newline.
RTS_SIZE = 21
#: seconds between connection attempts, and the socket timeout of a session.
RETRY_INTERVAL = 1.0
SESSION_TIMEOUT = 60.0
_U64 = (1 << 64) - 1
_LINGER_RESET = struct.pack("ii", 1, 0)


def create_slave(state: ServerState) -> Slave:
    """``state.slave``, built when ``-rts`` is given."""
    cfg = state.config
    return Slave(state, cfg.sid, cfg.rts_path or "", cfg.master_host or "", cfg.master_port,
                 cfg.replication_interval)


class Slave:
    """The slave thread of one server.  ``host`` ("" = no master), ``port``, ``rts``
    (the last applied time stamp) and ``riv`` are read by ``report`` and
    ``synchronize``."""

    def __init__(self, state: ServerState, sid: int, rts_path: str, host: str, port: int, riv: float) -> None:
        self.state = state
        self.sid = sid & 0xFFFF
        self.rts_path = rts_path
        self.host = host
        self.port = port
        self.riv = riv
        self.rts = 0
        self._wrts: int | None = None   # a time stamp set by tune, applied at the next session
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._hup = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kt-slave", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the session and the thread (the RTS file gets the last time stamp)."""
        self._stopping.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def tune(self, host: str, port: int, ts: int | None, iv: float | None) -> None:
        """``tune_replication``: a new master ("" = none), a time stamp to restart from
        (None = keep), an interval (None = keep).  The running session ends at its next
        message."""
        with self._lock:
            self.host = host
            self.port = port
            self._wrts = None if ts is None else ts & _U64
            if iv is not None:
                self.riv = iv
        self._hup = True

    def report_fields(self) -> dict[str, str]:
        """The ``repl_*`` fields of ``report`` (none while no master is set)."""
        with self._lock:
            host, port = self.host, self.port
        if not host:
            return {}
        rts = self.rts
        now = clock_pure()
        delay = now - rts if now > rts else 0
        return {"repl_master_host": host, "repl_master_port": "%d" % port, "repl_timestamp": "%d" % rts,
                "repl_interval": "%.6f" % self.riv, "repl_delay": "%.6f" % (delay / 1e9)}

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        state = self.state
        try:
            fd = os.open(self.rts_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            state.log(LOG_ERROR, f"opening the RTS file failed: path={self.rts_path}")
            return
        try:
            os.ftruncate(fd, RTS_SIZE)
            self.rts = atoi(os.pread(fd, RTS_SIZE, 0)[:RTS_SIZE - 1]) & _U64
            self._write_rts(fd)
            deferred = False
            stopping = self._stopping
            if stopping.wait(0.2):
                return
            while True:
                with self._lock:
                    host, port, wrts = self.host, self.port, self._wrts
                    if host and wrts is not None:
                        self._wrts = None
                        self.rts = wrts
                        self._write_rts(fd)
                if host:
                    sock = self._connect(host, port)
                    if sock is not None:
                        state.log(LOG_SYSTEM, f"replication started: host={host} port={port} rts={self.rts}")
                        self._hup = False
                        try:
                            self._session(sock)
                        finally:
                            self._sock = None
                            try:
                                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                            except OSError:
                                pass
                            sock.close()
                        state.log(LOG_SYSTEM, f"replication finished: host={host} port={port}")
                        self._write_rts(fd)
                        deferred = False
                    else:
                        if not deferred:
                            state.log(LOG_SYSTEM, f"replication was deferred: host={host} port={port}")
                        deferred = True
                if stopping.wait(RETRY_INTERVAL):
                    break
        finally:
            os.close(fd)

    def _write_rts(self, fd: int) -> None:
        try:
            os.pwrite(fd, b"%020d\n" % self.rts, 0)
        except OSError:
            self.state.log(LOG_SYSTEM, "writing the time stamp failed")

    def _connect(self, host: str, port: int) -> socket.socket | None:
        """Connect and hand-shake; None when the master cannot be reached or refuses."""
        try:
            sock = socket.create_connection((host or "localhost", port), timeout=SESSION_TIMEOUT)
        except (OSError, ValueError, UnicodeError):
            return None
        self._sock = sock  # from now on stop() can interrupt it
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(encode_handshake(self.rts, self.sid))
            if sock.recv(1) == ACK and not self._stopping.is_set():
                return sock
        except OSError:
            pass
        self._sock = None
        sock.close()
        return None

    def _session(self, sock: socket.socket) -> None:
        """Read and apply messages until the connection fails, an unexpected byte
        arrives, tune_replication asks for a restart, or the server stops."""
        conn = BufferedSocket(sock)
        rivsum = 0.0
        stopping = self._stopping
        while not stopping.is_set() and not self._hup:
            try:
                msg = conn.decode(decode_stream_message)
            except ProtocolError:
                return
            if msg is None:
                return
            if msg.is_nop:
                if not conn.send(ACK):
                    return
            elif msg.payload:
                self._apply(msg.payload)
                rivsum += self.riv
            else:   # a dummy stands for DUMMY_FREQ filtered entries; it weighs a quarter of them
                rivsum += self.riv * DUMMY_FREQ / 4
            while rivsum > 100 and not stopping.is_set() and not self._hup:
                time.sleep(0.1)
                rivsum -= 100
            if msg.ts > self.rts:
                self.rts = msg.ts

    def _apply(self, payload: bytes) -> None:
        """Apply one log message unless it is ours or names no database of ours."""
        origin = entry_origin(payload)
        dbs = self.state.dbs
        if origin is None or origin[0] == self.sid or origin[1] >= len(dbs):
            return
        sid, dbid = origin
        try:
            entry = decode_log_entry(payload)
            # TimedDB::recover rejects an entry with bytes left over
            if entry.op in (OP_SET, OP_REMOVE, OP_CLEAR) and \
                    len(encode_log_entry(sid, dbid, entry.op, entry.key, entry.value)) != len(payload):
                raise ProtocolError("invalid message format")
            dbs[dbid].apply_replicated(entry.op, entry.key, entry.value, sid)
        except (ProtocolError, DBError) as exc:
            self.state.log(LOG_ERROR, f"recovering a database failed: {exc}")
