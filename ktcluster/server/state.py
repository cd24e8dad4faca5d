"""The server's shared state: what every front end reads, one object per server.

:class:`ServerState` holds the configuration, the log, the databases (and how a request
names one: :meth:`ServerState.db_by_expr`), the update log, the WAIT/SIGNAL conditions,
the operation counters of ``report``, the ``stopping`` event and the parts the command
line adds (the Lua engine, the replication slave, the memcached plug-in), typed by the
hook protocols below.  It opens and closes the files (:meth:`ServerState.open`,
:meth:`ServerState.close`); it knows nothing of sockets or workers.  Beside it, the
values every front end answers with: ktserver's return values (:data:`RV_SUCCESS`...)
and their HTTP statuses, the version strings, the :class:`Counter` indices.

The layers: the front ends (:mod:`.frontends`, :mod:`.scripting`) import this module and
:mod:`.session`; the process (:mod:`.server`) imports them all; nothing here imports a
front end or the process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

from ..protocol.kcnum import atoi
from .config import LOG_ERROR, LOG_INFO, LOG_SYSTEM, ConfigError, ServerConfig
from .db.storage import Database, DBError, StorageError
from .db.ulog import UlogError, UpdateLog
from .log import Logger

__all__ = ["ServerState", "Counter", "OperationCounts", "Conditions", "ScriptingHook", "SlaveHook", "PluginHook",
           "RV_SUCCESS", "RV_NOIMPL", "RV_INVALID", "RV_LOGIC", "RV_TIMEOUT", "RV_INTERNAL", "HTTP_STATUS",
           "KT_VERSION", "KT_FEATURES", "KC_VERSION", "KC_FEATURES"]

#: kt::RPCClient::ReturnValue
RV_SUCCESS, RV_NOIMPL, RV_INVALID, RV_LOGIC, RV_TIMEOUT, RV_INTERNAL = 0, 1, 2, 3, 4, 5
#: HTTP status of each return value (anything else: 500)
HTTP_STATUS = {RV_SUCCESS: 200, RV_NOIMPL: 501, RV_INVALID: 400, RV_LOGIC: 450, RV_TIMEOUT: 503, RV_INTERNAL: 500}

#: what ``report`` and the Lua ``kt.VERSION`` say the server is
KT_VERSION = b"0.9.56b (2.19)"
KT_FEATURES = b"(epoll)(lua)"
KC_VERSION = b"1.2.76a (16.13)"
KC_FEATURES = b"(atomic)(zlib)(lzo)"


class Counter:
    """Indices of the ``cnt_*`` operation counters of ``report``.  The miss counter of
    SET, REMOVE and GET is the next index (``Counter.SET + 1`` is SET_MISS)."""

    SET, SET_MISS, REMOVE, REMOVE_MISS, GET, GET_MISS, SCRIPT, MISC = range(8)
    NAMES = ("cnt_set", "cnt_set_misses", "cnt_remove", "cnt_remove_misses", "cnt_get", "cnt_get_misses",
             "cnt_script", "cnt_misc")


class OperationCounts:
    """The ``cnt_*`` counters and the connection count of ``report``.  Each open
    connection counts into a list of its own (indexed by :class:`Counter`, no lock on
    the request path): :meth:`open` hands it out, :meth:`close` moves it into the
    finished totals atomically, so :meth:`totals` counts a closing connection once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, list[int]] = {}   # id of the list -> the list
        self._finished = [0] * len(Counter.NAMES)

    def open(self) -> list[int]:
        """A new connection's counters."""
        counts = [0] * len(Counter.NAMES)
        with self._lock:
            self._open[id(counts)] = counts
        return counts

    def close(self, counts: list[int]) -> None:
        """The connection that counted into ``counts`` is gone (once; again is a no-op)."""
        with self._lock:
            if self._open.pop(id(counts), None) is None:
                return
            for i, value in enumerate(counts):
                self._finished[i] += value

    def totals(self) -> list[int]:
        """Every counter over every connection served."""
        with self._lock:
            total = list(self._finished)
            for counts in self._open.values():
                for i, value in enumerate(counts):
                    total[i] += value
        return total

    def connections(self) -> int:
        """How many connections are open."""
        return len(self._open)


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


class ScriptingHook(Protocol):
    """``state.scripting``, the Lua engine of ``-scr``
    (:func:`ktcluster.server.scripting.create_engine`)."""

    def call(self, name: bytes, inmap: dict[bytes, bytes]) -> tuple[int, dict[bytes, bytes]]:
        """Run procedure ``name``: (return value, output map)."""

    def reload(self) -> None:
        """Reread the script (SIGUSR1)."""


class SlaveHook(Protocol):
    """``state.slave``, the replication slave of ``-mhost``/``-rts``
    (:func:`ktcluster.server.frontends.slave.create_slave`).  ``host`` is the master
    ("" = none), ``rts`` the last time stamp applied (``synchronize`` reads it)."""

    host: str
    rts: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def tune(self, host: str, port: int, ts: int | None, iv: float | None) -> None:
        """A new master ("" = none); ``ts``/``iv`` None keep the time stamp/interval."""

    def report_fields(self) -> dict[str, str]:
        """The ``repl_*`` fields of ``report`` (none while no master is set)."""


class PluginHook(Protocol):
    """One of ``state.plugins``: a listener started and stopped with the server
    (``-plsv``; :func:`ktcluster.server.frontends.memcached.create_plugin`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class ServerState:
    """What the front ends of one server share (see the module doc).

    ``ServerState(config)`` starts the log; :meth:`open` opens the update log, the
    databases and their snapshots; :meth:`close` writes the snapshots and closes them
    all, then the log.  Attributes: ``config``, ``logger``, ``dbs`` (list of
    :class:`~.db.storage.Database`), ``db_index`` (name -> index), ``ulog``
    (:class:`~.db.ulog.UpdateLog` or None), ``conditions``, ``counts``
    (:class:`OperationCounts`), ``stopping`` (an Event: the server is stopping),
    ``start_time``, ``pid``, ``name`` (the host name of REST's ``Location``), and the
    parts the process adds: ``scripting`` (:class:`ScriptingHook` or None), ``slave``
    (:class:`SlaveHook` or None), ``plugins`` (list of :class:`PluginHook`)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.logger = Logger(config.log_path, config.log_kinds)
        self.start_time = time.time()
        self.pid = os.getpid()
        self.name = f"localhost:{config.port}" if config.port != 80 else "localhost"
        self.stopping = threading.Event()
        self.conditions = Conditions()
        self.counts = OperationCounts()
        self.ulog: UpdateLog | None = None
        self.dbs: list[Database] = []
        self.db_index: dict[str, int] = {}
        self.scripting: ScriptingHook | None = None
        self.slave: SlaveHook | None = None
        self.plugins: list[PluginHook] = []
        self.log(LOG_SYSTEM, f"================ [START]: pid={self.pid}")

    def log(self, kind: int, message: str) -> None:
        self.logger.log(kind, message)

    def log_db_error(self, exc: DBError) -> None:
        """Log an unexpected database failure, as ktserver's workers do."""
        self.log(LOG_ERROR, f"database error: {exc.code}: {exc.name}: {exc.message}")

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

    # -- the files ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the update log, the databases and the -bgs snapshots (ConfigError, logged,
        when one cannot be opened)."""
        config = self.config
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

    def close(self) -> None:
        """Snapshot (-bgs) and close the databases, close the update log, end the log."""
        self.stopping.set()
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
