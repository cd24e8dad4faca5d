"""The server: the databases and front ends behind ktserver's threaded server.

The listener, the poller and the ``-th`` worker threads are :mod:`.thserv`'s, with
ktserver's rules (an idle connection costs no thread; a blocked request holds its
worker; the idle event collects expired records and defragments files whenever no
request has arrived for 0.1 s and none waits, even while others are blocked).  Each
connection is a :class:`Session`; each request starts by looking at one byte: ``0x00``
or ``>= 0x80`` is the binary protocol (:mod:`.binary`, :mod:`.replication`), anything
else an HTTP request (:mod:`.rpc` under ``/rpc/``, :mod:`.rest` otherwise).  The two may
alternate and be pipelined on one connection.  ``-tout`` bounds every blocking read
*inside* a request; an idle keep-alive connection waits for its next request
indefinitely.

Hooks for the parts other modules add (created at start when the command line asks for
them, None or empty otherwise):

* ``server.scripting`` -- the Lua engine of ``-scr``: an object with
  ``call(name: bytes, inmap: dict[bytes, bytes]) -> (rv: int, outmap: dict)`` and
  ``reload()``; built by ``ktcluster.server.scripting.create_engine(server, path)``.
  None: play_script answers as a ktserver without a script.
* ``server.slave`` -- the replication slave of ``-mhost``/``-rts``: an object with
  ``start()``, ``stop()``, ``tune(host, port, ts, iv)`` (ts/iv None = keep),
  ``report_fields() -> dict[str, str]`` (the ``repl_*`` fields of ``report``, empty
  while no master is set), and attributes ``host`` (str, "" = none) and ``rts`` (the
  last applied time stamp, used by ``synchronize``); built by
  ``ktcluster.server.slave.create_slave(server)`` when ``-rts`` is given.
* ``server.plugins`` -- listeners started and stopped with the server (``-plsv``):
  objects with ``start()`` and ``stop()``; ``ktplugservmemc.so`` is built by
  ``ktcluster.server.memcached.create_plugin(server, expr)``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

from ..protocol.framing import Incomplete
from ..protocol.http import (
    BadRequest,
    HTTPError,
    IncompleteChunkEnd,
    RequestHead,
    encode_error_response,
    parse_request_head,
    read_request_body,
)
from ..protocol.kcnum import atoi
from ..protocol.rpc import RPC_PREFIX
from .config import LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_SYSTEM, ConfigError, ServerConfig
from .netio import BufferedSocket, invalid_address, open_listener
from .storage import Cursor, Database, DBError, StorageError
from .thserv import AVAILABLE as thserv_available
from .thserv import ThreadedServer
from .ulog import UlogError, UpdateLog

__all__ = ["Server", "Session", "Conditions", "Logger", "Counter"]

#: the largest request head we buffer before giving up on a client (ktserver has no limit,
#: but each of its lines is at most 8191 bytes; this bounds memory per connection)
HEAD_MAX = 1 << 20


class Counter:
    """Indices of the ``cnt_*`` operation counters of ``report``.  The miss counter of
    SET, REMOVE and GET is the next index (``Counter.SET + 1`` is SET_MISS)."""

    SET, SET_MISS, REMOVE, REMOVE_MISS, GET, GET_MISS, SCRIPT, MISC = range(8)
    NAMES = ("cnt_set", "cnt_set_misses", "cnt_remove", "cnt_remove_misses", "cnt_get", "cnt_get_misses",
             "cnt_script", "cnt_misc")


class Logger:
    """ktserver's log: ``DATE: [KIND]: message`` lines, filtered by the -li/-ls/-le/-lz
    kinds.  Nothing is written unless a -log path is given (``-`` = stdout)."""

    _NAMES = {LOG_DEBUG: "DEBUG", LOG_INFO: "INFO", LOG_SYSTEM: "SYSTEM", LOG_ERROR: "ERROR"}

    def __init__(self, path: str | None, kinds: int) -> None:
        self.path = path
        self.kinds = kinds if path else 0
        self._lock = threading.Lock()
        self._stream: Any = None
        self.open()

    def open(self) -> None:
        if not self.path:
            return
        if self.path == "-":
            self._stream = sys.stdout
        else:
            try:
                self._stream = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            except OSError:
                raise ConfigError(f"{self.path}: could not open the log file") from None

    def reopen(self) -> None:
        """SIGUSR1 / SIGHUP as daemon: reopen the log file (for log rotation)."""
        with self._lock:
            self.close()
            self.open()

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None

    def log(self, kind: int, message: str) -> None:
        if not kind & self.kinds or self._stream is None:
            return
        now = time.time()
        local = time.localtime(now)
        offset = local.tm_gmtoff // 60
        zone = "Z" if offset == 0 else "%s%02d:%02d" % ("+" if offset > 0 else "-", abs(offset) // 60,
                                                        abs(offset) % 60)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local) + ".%06d" % int(now % 1 * 1e6) + zone
        with self._lock:
            try:
                self._stream.write(f"{stamp}: [{self._NAMES.get(kind, 'MISC')}]: {message}\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass


class Conditions:
    """Named condition variables for WAIT/SIGNAL (kc::CondMap): a signal wakes one
    waiter, a broadcast all of them; signals are not queued."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counts: dict[bytes, list[int]] = {}  # name -> [waiting, wakes pending]

    def wait(self, name: bytes, timeout: float) -> bool:
        """Wait for a signal on ``name``; False when none came in ``timeout`` seconds.
        A NaN timeout gives up at once and a huge or infinite one waits for good, as
        kc::CondMap does (``WAITTIME`` is any double)."""
        if timeout != timeout:
            return False
        deadline = time.monotonic() + timeout
        with self._cond:
            count = self._counts.setdefault(name, [0, 0])
            count[0] += 1
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, threading.TIMEOUT_MAX))
                    if count[1] > 0:
                        count[1] -= 1
                        return True
            finally:
                count[0] -= 1
                if count[0] < 1:
                    del self._counts[name]

    def signal(self, name: bytes) -> int:
        """Wake one waiter; returns how many were waiting."""
        with self._cond:
            count = self._counts.get(name)
            if count is None or count[0] < 1:
                return 0
            if count[1] < count[0]:
                count[1] += 1
            self._cond.notify_all()
            return count[0]

    def broadcast(self, name: bytes) -> int:
        """Wake every waiter; returns how many were waiting."""
        with self._cond:
            count = self._counts.get(name)
            if count is None or count[0] < 1:
                return 0
            count[1] = count[0]
            self._cond.notify_all()
            return count[0]

    def broadcast_all(self) -> None:
        with self._cond:
            for count in self._counts.values():
                count[1] = count[0]
            self._cond.notify_all()


class Session(BufferedSocket):
    """One client connection: its read buffer, its cursors, its counters."""

    def __init__(self, server: Server, sock: socket.socket, addr: Any) -> None:
        super().__init__(sock)
        self.server = server
        self.addr = addr
        self.cursors: dict[int, Cursor] = {}
        self.counts = [0] * 8

    def serve(self) -> bool:
        """Serve the request whose bytes have begun to arrive; whether the connection stays
        open."""
        if not self.begin_request():
            return False
        first = self.buf[self.pos]
        if first == 0 or first >= 0x80:
            return self.server.binary_handler(self, first)
        return self.handle_http()

    def handle_http(self) -> bool:
        """One HTTP request and its answer; whether the connection stays open."""
        while True:
            try:
                head = parse_request_head(self.buf, self.pos)
                break
            except Incomplete:
                if len(self.buf) - self.pos > HEAD_MAX or not self.fill():
                    return False
            except BadRequest:
                return False
        self.pos = head.body_start
        body = self._read_body(head)
        if body is None:
            return False
        if head.path.startswith(RPC_PREFIX):
            response = self.server.rpc_handler(self, head, body)
        else:
            response = self.server.rest_handler(self, head, body)
        return self.send(response) and head.keep_alive

    def _read_body(self, head: RequestHead) -> bytes | None:
        """The body of the request (b"" if it has none), or None after ktserver's error
        answer (400 when it does not arrive or a chunk is malformed, 413 when too large)."""
        while True:
            try:
                body, self.pos = read_request_body(self.buf, head)
                return body
            except Incomplete as exc:
                if not self.ensure(exc.needed - self.pos):
                    chunk_end = isinstance(exc, IncompleteChunkEnd)
                    self.send(encode_error_response(400, "invalid chunk" if chunk_end else "receiving data failed"))
                    return None
                head = head._replace(body_start=self.pos)   # the buffer was refilled from pos
            except HTTPError as exc:
                self.send(encode_error_response(exc.code, exc.message))
                return None

    def close(self) -> None:
        self.cursors.clear()
        super().close()


class Server:
    """A running embedded Kyoto Tycoon server.

    ``Server(config)`` opens the update log and the databases and binds the port;
    :meth:`serve_forever` accepts connections until :meth:`stop`; :meth:`close`
    releases everything.  Attributes used by the front ends and the hooks: ``config``,
    ``dbs`` (list of :class:`~.storage.Database`), ``db_index`` (name -> index), ``ulog``
    (:class:`~.ulog.UpdateLog` or None), ``conditions``, ``logger``, ``scripting``,
    ``slave``, ``plugins``, ``stopping`` (an Event), ``start_time``."""

    def __init__(self, config: ServerConfig) -> None:
        from . import binary, rest, rpc  # the front ends import this module's types

        self.config = config
        self.logger = Logger(config.log_path, config.log_kinds)
        self.start_time = time.time()
        self.pid = os.getpid()
        self.stopping = threading.Event()
        self.conditions = Conditions()
        self.scripting: Any = None
        self.slave: Any = None
        self.plugins: list[Any] = []
        self.ulog: UpdateLog | None = None
        self.dbs: list[Database] = []
        self.db_index: dict[str, int] = {}
        self.binary_handler = binary.handle
        self.rpc_handler = rpc.handle
        self.rest_handler = rest.handle
        self.name = f"localhost:{config.port}" if config.port != 80 else "localhost"
        self._counts_lock = threading.Lock()   # guards the two below: a session moves atomically
        self._sessions: set[Session] = set()
        self._finished_counts = [0] * 8
        self._idle_count = 0
        self._next_sync = time.time() + config.sync_interval
        self._next_snapshot = time.time() + config.snapshot_interval
        self._core: ThreadedServer | None = None
        self.log(LOG_SYSTEM, f"================ [START]: pid={self.pid}")
        try:
            self._open(config)
        except BaseException:
            self.close()
            raise

    def log(self, kind: int, message: str) -> None:
        self.logger.log(kind, message)

    def log_db_error(self, exc: DBError) -> None:
        """Log an unexpected database failure, as ktserver's workers do."""
        self.log(LOG_ERROR, f"database error: {exc.code}: {exc.name}: {exc.message}")

    def _open(self, config: ServerConfig) -> None:
        if not thserv_available:
            raise ConfigError("the embedded server needs Linux (it serves its connections with epoll)")
        if config.plugin_db_path and not config.void_db:
            self.log(LOG_ERROR, f"could not load a plug-in database file: {config.plugin_db_path}")
            raise ConfigError(f"{config.plugin_db_path}: could not load a plug-in database file")
        if config.ulog_path:
            self.log(LOG_SYSTEM, f"opening the update log: path={config.ulog_path} sid={config.sid}")
            try:
                self.ulog = UpdateLog(config.ulog_path, config.ulog_limit, config.ulog_sync_interval)
            except UlogError as exc:
                self.log(LOG_ERROR, f"could not open the update log: {config.ulog_path}")
                raise ConfigError(f"could not open the update log: {exc}") from None
        for index, spec in enumerate(config.dbs):
            self.log(LOG_SYSTEM, f"opening a database: path={spec.path}")
            try:
                db = Database(spec, index, writable=not config.read_only, void=config.void_db,
                              sink=self.ulog, sid=config.sid)
            except (StorageError, OSError) as exc:
                self.log(LOG_ERROR, f"could not open a database file: {spec.path}: {exc}")
                raise ConfigError(f"could not open a database file: {spec.path}: {exc}") from None
            self.dbs.append(db)
            self.db_index[db.name] = index
        if config.snapshot_path:
            self._load_snapshots(config.snapshot_path)
        # the parts other modules add (see the module docstring), imported when asked for
        if config.script_path:
            self.log(LOG_SYSTEM, f"loading a script file: path={config.script_path}")
            from .scripting import create_engine
            self.scripting = create_engine(self, config.script_path)
        if config.rts_path:
            from .slave import create_slave
            self.slave = create_slave(self)
        if config.plugin_server_path:
            self.log(LOG_SYSTEM, f"loading a plug-in server file: path={config.plugin_server_path}")
            if os.path.basename(config.plugin_server_path) != "ktplugservmemc.so":
                self.log(LOG_ERROR, f"could not load a plug-in server file: {config.plugin_server_path}")
                raise ConfigError(f"{config.plugin_server_path}: could not load a plug-in server file")
            from .memcached import create_plugin
            self.plugins.append(create_plugin(self, config.plugin_server_expr))
        host = config.host
        if host is not None:                         # -host "" is an unknown host too
            try:
                host = socket.gethostbyname(host) if host else ""
            except OSError:
                host = ""
            if not host:
                self.log(LOG_ERROR, f"unknown host: {config.host}")
                raise ConfigError(f"unknown host: {config.host}")
        if invalid_address(host or "", config.port):
            message = f"socket error: expr={host or ''}:{config.port} msg=invalid address expression"
            self.log(LOG_ERROR, message)
            raise ConfigError(message)
        try:
            listener = open_listener(host or "", config.port, 128)
        except OSError as exc:
            self.log(LOG_ERROR, f"socket error: {exc}")
            raise ConfigError(f"could not listen on port {config.port}: {exc.strerror}") from None
        self._core = ThreadedServer(listener, self, config.threads, self.stopping)
        self.log(LOG_SYSTEM, f"server socket opened: expr={host or ''}:{config.port} timeout={config.timeout:.1f}")

    # -- snapshots (-bgs) ---------------------------------------------------------------------

    def _snapshot_file(self, index: int) -> str:
        return os.path.join(self.config.snapshot_path or ".", "%08d.ktss" % index)

    def _load_snapshots(self, directory: str) -> None:
        """Load ``NNNNNNNN.ktss`` files into the databases of those indexes."""
        for name in sorted(os.listdir(directory)):
            stem, dot, ext = name.rpartition(".")
            if not (dot and stem[:1].isdigit() and ext.lower() == "ktss"):
                continue
            index = int(stem) if stem.isdigit() else -1
            if 0 <= index < len(self.dbs):
                self.log(LOG_SYSTEM, f"applying a snapshot file: db={index}")
                try:
                    self.dbs[index].load_snapshot(os.path.join(directory, name))
                except StorageError as exc:
                    self.log(LOG_ERROR, f"could not apply a snapshot: {exc}")

    def dump_snapshots(self) -> None:
        """Snapshot every database to the -bgs directory."""
        self.log(LOG_INFO, "snapshotting databases")
        for index, db in enumerate(self.dbs):
            try:
                db.dump_snapshot(self._snapshot_file(index))
            except OSError as exc:
                self.log(LOG_ERROR, f"snapshotting a database failed: {exc}")

    # -- counters and tasks -------------------------------------------------------------------

    def connection_count(self) -> int:
        return self._core.connection_count() if self._core is not None else 0

    def counts(self) -> list[int]:
        """The ``cnt_*`` totals over every connection served (a closing connection's
        are in, before and after it moves to the finished ones)."""
        with self._counts_lock:
            total = list(self._finished_counts)
            for session in self._sessions:
                for i, value in enumerate(session.counts):
                    total[i] += value
        return total

    def db_by_expr(self, expr: bytes | None) -> Database | None:
        """The database an RPC ``DB`` value or REST path segment names: a decimal index
        when it starts with a digit (kc::atoi, kept in a 32-bit int: 2^32 is DB 0), else
        an exact name; absent or an empty C string = DB 0."""
        if not expr or expr[0] == 0:
            return self.dbs[0] if self.dbs else None
        if 0x30 <= expr[0] <= 0x39:
            index = (atoi(expr) + (1 << 31)) % (1 << 32) - (1 << 31)
        else:
            nul = expr.find(b"\0")
            index = self.db_index.get((expr if nul < 0 else expr[:nul]).decode("utf-8", "surrogateescape"), -1)
        return self.dbs[index] if 0 <= index < len(self.dbs) else None

    # -- serving (the thserv.Handler) --------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`; then wake every waiter."""
        core = self._core
        assert core is not None
        for plugin in self.plugins:
            plugin.start()
        if self.slave is not None:
            self.slave.start()
        self.log(LOG_SYSTEM, f"listening server socket started: fd={core.listener_fd()}")
        try:
            core.serve_forever()
        finally:
            self.stopping.set()
            self.conditions.broadcast_all()
            self.log(LOG_SYSTEM, "server stopped")

    def connect(self, sock: socket.socket, addr: Any) -> Session:
        sock.settimeout(self.config.timeout if self.config.timeout > 0 else None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.log(LOG_INFO, f"connected: expr={addr[0]}:{addr[1]}")
        session = Session(self, sock, addr)
        with self._counts_lock:
            self._sessions.add(session)
        return session

    def process(self, session: Session) -> bool:
        return session.serve()

    def disconnect(self, session: Session) -> None:
        self.log(LOG_INFO, f"disconnecting: expr={session.addr[0]}:{session.addr[1]}")
        session.close()
        with self._counts_lock:
            self._sessions.discard(session)
            for i, value in enumerate(session.counts):
                self._finished_counts[i] += value

    def log_error(self, message: str) -> None:
        self.log(LOG_ERROR, message)

    def process_idle(self) -> None:
        """ktserver's idle event: the garbage collector of one database (round robin)
        advances four steps.  (ktserver stops early when a request waits for a worker;
        here a waiting request is not counted, see thserv.)"""
        if not self.dbs or self.config.read_only:
            return
        db = self.dbs[self._idle_count % len(self.dbs)]
        self._idle_count += 1
        for _ in range(4):
            try:
                db.vacuum(2)
            except DBError as exc:
                self.log_db_error(exc)
                break

    def process_timer(self) -> None:
        """ktserver's timer event: -asi synchronises the databases, -bgs snapshots them."""
        config = self.config
        if config.sync_interval > 0 and not config.read_only and time.time() >= self._next_sync:
            self.log(LOG_INFO, "synchronizing databases")
            for db in self.dbs:
                try:
                    db.synchronize(config.sync_hard)
                except DBError as exc:
                    self.log_db_error(exc)
                    break
            self._next_sync = time.time() + config.sync_interval
        if config.snapshot_path and config.snapshot_interval > 0 and time.time() >= self._next_snapshot:
            self.dump_snapshots()
            self._next_snapshot = time.time() + config.snapshot_interval

    def stop(self) -> None:
        """Stop serving (safe from a signal handler): within 0.1 s every connection is
        shut down and :meth:`serve_forever` returns."""
        self.stopping.set()

    def restart(self) -> None:
        """SIGUSR1 (or SIGHUP as a daemon): reopen the log and reload the script."""
        self.logger.reopen()
        if self.scripting is not None:
            self.log(LOG_SYSTEM, f"reloading a script file: path={self.config.script_path}")
            self.scripting.reload()

    def close(self) -> None:
        """Stop the slave and plug-ins, close the databases and the update log."""
        self.stopping.set()
        for plugin in self.plugins:
            plugin.stop()
        if self.slave is not None:
            self.slave.stop()
        if self._core is not None:
            self._core.close()
            self._core = None
        if self.config.snapshot_path and self.dbs:
            self.dump_snapshots()
        for db in self.dbs:
            self.log(LOG_SYSTEM, f"closing a database: path={db.path}")
            db.close()
        if self.ulog is not None:
            self.ulog.close()
            self.ulog = None
        self.log(LOG_SYSTEM, f"================ [FINISH]: pid={self.pid}")
        self.logger.close()
