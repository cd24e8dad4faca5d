"""The memcached plug-in (``-plsv ktplugservmemc.so -plex 'port=N#opts=fqr#...'``).

A second listener, started and stopped with the server, that serves database 0 over the
memcached text protocol exactly as Kyoto Tycoon's ``ktplugservmemc.so`` does (the
protocol rules are in :mod:`ktcluster.protocol.memcache`).  Writes go through the
database like any other write, so they are logged to the update log and replicated.

``-plex`` is ``#``-separated ``name=value`` pairs: ``host`` (bind address, default all
interfaces), ``port`` (11211), ``tout``/``timeout`` (30 s, bounds each read inside a
command), ``th``/``thnum`` (16, reported by ``stats``), ``opts``/``options`` letters
``f`` (store the flags as 4 big-endian bytes after the value), ``r`` (read-only: writes
answer ``SERVER_ERROR server is read-only``), ``q`` (message queue on a tree database:
``set`` appends a message, ``get`` takes the oldest one, waiting up to ``qtout``/
``qtimeout`` seconds (10), ``delete`` acknowledges it; messages taken but not
acknowledged are stored again when the connection closes).  ``q`` with ``r`` refuses to
start, as the plug-in does (the server itself keeps running).

The plug-in has a :mod:`~ktcluster.server.thserv` server of its own, as ktserver's: ``th`` worker threads
(a queue ``get`` waiting for a message holds one), idle connections waiting in a poller
for their next command indefinitely, while a command that has begun must arrive within
``tout`` seconds.  It binds every address unless ``host`` is given (ktserver's ``-host``
does not apply to it), and refuses an address such as ``0.0.0.0`` as ktserver's socket
layer does (the server itself keeps running).
"""

from __future__ import annotations

import functools
import itertools
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...protocol import memcache as mc
from ...protocol.framing import Incomplete
from ...protocol.kcnum import atof, atoi, to_int64
from ..config import LOG_ERROR, LOG_SYSTEM
from ..db.storage import DUPREC, NOP, NOREC, Database, DBError
from ..netio import BufferedSocket, invalid_address, open_listener
from ..thserv import ThreadedServer

if TYPE_CHECKING:
    from ..state import ServerState

__all__ = ["MemcacheOptions", "MemcachedServer", "create_plugin"]

DEFAULT_PORT = 11211

# operation counters, as the plug-in keeps them
(_SET, _SET_MISS, _GET, _GET_MISS, _DELETE, _DELETE_MISS, _INCR, _INCR_MISS, _DECR, _DECR_MISS,
 _FLUSH) = range(11)


@dataclass
class MemcacheOptions:
    """The settings of ``-plex`` (MemcacheServer::configure)."""

    host: str = ""
    port: int = DEFAULT_PORT
    timeout: float = 30.0
    threads: int = 16
    flags: bool = False
    queue: bool = False
    read_only: bool = False
    queue_timeout: float = 10.0

    @classmethod
    def parse(cls, expr: str) -> MemcacheOptions:
        """Parse ``name=value#name=value...``; unknown names are ignored, numbers read
        leniently, out-of-range values replaced by the defaults."""
        opts = cls(port=0, timeout=0, threads=0, queue_timeout=0)
        for elem in expr.split("#"):
            fields = elem.split("=")
            if len(fields) < 2:
                continue
            name, value = fields[0], fields[1]
            raw = value.encode("utf-8", "surrogateescape")
            if name == "host":
                opts.host = value
            elif name == "port":
                opts.port = atoi(raw)
            elif name in ("tout", "timeout"):
                opts.timeout = atof(raw)
            elif name in ("th", "thnum"):
                opts.threads = atoi(raw)
            elif name in ("opts", "options"):
                opts.flags |= "f" in value
                opts.queue |= "q" in value
                opts.read_only |= "r" in value
            elif name in ("qtout", "qtimeout"):
                opts.queue_timeout = atof(raw)
        if opts.port < 1:
            opts.port = DEFAULT_PORT
        if not opts.timeout >= 1:
            opts.timeout = 30.0
        if opts.threads < 1:
            opts.threads = 16
        if not opts.queue_timeout > 0:
            opts.queue_timeout = 10.0
        return opts


def create_plugin(state: ServerState, expr: str) -> MemcachedServer:
    """The ``state.plugins`` entry of ``-plsv ktplugservmemc.so -plex EXPR``."""
    return MemcachedServer(state, MemcacheOptions.parse(expr))


class MemcachedServer:
    """The plug-in's listener and its connections, serving ``state.dbs[0]``."""

    def __init__(self, state: ServerState, options: MemcacheOptions) -> None:
        self.state = state
        self.options = options
        self.start_time = time.time()
        self.counts = [0] * 11
        self._counts_lock = threading.Lock()
        self._seq = itertools.count()
        self._queue_cond = threading.Condition()
        self._queue_gen = 0
        self._stopping = threading.Event()
        self._core: ThreadedServer | None = None
        self._thread: threading.Thread | None = None
        state.log(LOG_SYSTEM, f"the plug-in memcached server configured: expr={state.config.plugin_server_expr}")

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start accepting.  Failures are logged and leave the server running
        without the plug-in, as ktserver does."""
        opts = self.options
        if opts.queue and opts.read_only:
            self.state.log(LOG_ERROR, "message queue cannot be read-only")
            return
        host = ""
        if opts.host:
            try:
                host = socket.gethostbyname(opts.host)
            except OSError:
                self.state.log(LOG_ERROR, f"unknown host: {opts.host}")
                return
        expr = f"{host}:{opts.port}"
        if invalid_address(host, opts.port):
            self.state.log(LOG_ERROR, f"socket error: expr={expr} msg=invalid address expression")
            return
        try:
            listener = open_listener(host, opts.port, socket.SOMAXCONN)
        except OSError as exc:
            self.state.log(LOG_ERROR, f"socket error: expr={expr} msg={exc.strerror}")
            return
        self.state.log(LOG_SYSTEM, f"server socket opened: expr={expr} timeout={opts.timeout:.1f}")
        self._core = ThreadedServer(listener, self, opts.threads, self._stopping, name="kt-memcached")
        self._thread = threading.Thread(target=self._core.serve_forever, name="kt-memcached", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: every connection ends (its unacknowledged queue messages are
        stored again)."""
        self._stopping.set()
        with self._queue_cond:
            self._queue_cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._core is not None:
            self._core.close()
            self._core = None

    # -- the thserv.Handler -------------------------------------------------------------------

    def connect(self, sock: socket.socket, addr: Any) -> _Connection:
        return _Connection(self, sock)

    def process(self, conn: _Connection) -> bool:
        tokens = conn.read_command()
        return tokens is not None and conn.dispatch(tokens)

    def process_idle(self) -> None:
        pass

    def process_timer(self) -> None:
        pass

    def disconnect(self, conn: _Connection) -> None:
        conn.restore_taken()
        conn.close()

    def log_error(self, message: str) -> None:
        self.state.log(LOG_ERROR, f"memcached: {message}")

    def connection_count(self) -> int:
        return self._core.connection_count() if self._core is not None else 0

    # -- shared state -------------------------------------------------------------------------

    @property
    def db(self) -> Database:
        return self.state.dbs[0]

    def count(self, *indices: int) -> None:
        with self._counts_lock:
            for index in indices:
                self.counts[index] += 1

    def queue_generation(self) -> int:
        return self._queue_gen

    def queue_notify(self) -> None:
        """A message was queued: wake every waiting ``get`` (they recheck their keys)."""
        with self._queue_cond:
            self._queue_gen += 1
            self._queue_cond.notify_all()

    def queue_wait(self, generation: int, timeout: float) -> None:
        """Wait up to ``timeout`` for a message queued after ``generation`` was read."""
        with self._queue_cond:
            if self._queue_gen == generation and not self._stopping.is_set():
                self._queue_cond.wait(timeout)

    def stats(self) -> bytes:
        """The ``stats`` answer."""
        db = self.db
        status = db.status()
        now = time.time()
        with self._counts_lock:
            c = list(self.counts)
        items: list[tuple[bytes, bytes | int]] = [
            (b"pid", self.state.pid), (b"uptime", int(now - self.start_time)), (b"time", int(now)),
            (b"version", mc.VERSION), (b"pointer_size", 64), (b"curr_connections", self.connection_count()),
            (b"threads", self.options.threads), (b"curr_items", db.count()), (b"bytes", db.size())]
        items += [(b"db_" + name.encode(), value.encode()) for name, value in sorted(status.items())]
        items += [
            (b"set_hits", c[_SET] - c[_SET_MISS]), (b"set_misses", c[_SET_MISS]),
            (b"get_hits", c[_GET] - c[_GET_MISS]), (b"get_misses", c[_GET_MISS]),
            (b"delete_hits", c[_DELETE] - c[_DELETE_MISS]), (b"delete_misses", c[_DELETE_MISS]),
            (b"incr_hits", c[_INCR] - c[_INCR_MISS]), (b"incr_misses", c[_INCR_MISS]),
            (b"decr_hits", c[_DECR] - c[_DECR_MISS]), (b"decr_misses", c[_DECR_MISS]),
            (b"cmd_set", c[_SET]), (b"cmd_get", c[_GET]), (b"cmd_delete", c[_DELETE]), (b"cmd_flush", c[_FLUSH])]
        return mc.encode_stats(items)


class _Connection(BufferedSocket):
    """One memcached client: read buffer, command loop, taken queue messages."""

    def __init__(self, plugin: MemcachedServer, sock: socket.socket) -> None:
        super().__init__(sock)
        self.plugin = plugin
        self.taken: dict[bytes, bytes] = {}   # queue messages fetched, not yet acknowledged
        self.flags = plugin.options.flags
        sock.settimeout(plugin.options.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def read_command(self) -> list[bytes] | None:
        """The tokens of the command whose bytes have begun to arrive, or None when the
        connection is done."""
        if not self.begin_request():
            return None
        while True:
            try:
                tokens, self.pos = mc.read_command(self.buf, self.pos)
                return tokens
            except Incomplete:
                if not self.fill():
                    return None

    def read_block(self, size: int) -> bytes | None:
        """A storage command's data block, or None (bad size or terminator, EOF,
        timeout): the connection is then closed without a reply."""
        try:
            return self.decode(functools.partial(mc.read_data_block, size=size))
        except mc.BadDataBlock:
            return None

    # -- commands -----------------------------------------------------------------------------

    def dispatch(self, tokens: list[bytes]) -> bool:
        """Run one command; whether the connection stays open."""
        opts = self.plugin.options
        cmd = tokens[0] if tokens else b""
        if cmd in (b"set", b"add", b"replace", b"delete", b"incr", b"decr", b"flush_all") and opts.read_only:
            return self.send(mc.READ_ONLY)
        if cmd == b"set":
            return self.queue_set(tokens) if opts.queue else self.store(tokens, "set")
        if cmd in (b"add", b"replace"):
            return self.store(tokens, cmd.decode())
        if cmd in (b"get", b"gets"):
            return self.queue_get(tokens) if opts.queue else self.get(tokens)
        if cmd == b"delete":
            return self.queue_delete(tokens) if opts.queue else self.delete(tokens)
        if cmd in (b"incr", b"decr"):
            return self.incr(tokens, cmd == b"decr")
        if cmd == b"stats":
            return self.send(self.plugin.stats())
        if cmd == b"flush_all":
            return self.flush_all(tokens)
        if cmd == b"version":
            return self.send(mc.VERSION_REPLY)
        if cmd == b"quit":
            return False
        return self.send(mc.ERROR)

    def reply(self, noreply: bool, data: bytes) -> bool:
        return True if noreply else self.send(data)

    def store(self, tokens: list[bytes], op: str) -> bool:
        """set / add / replace."""
        req = mc.parse_storage(tokens)
        if req is None:
            return self.send(mc.INVALID_PARAMETERS)
        data = self.read_block(req.size)
        if data is None:
            return False
        value = mc.pack_flags(data, req.flags) if self.flags else data
        plugin = self.plugin
        plugin.count(_SET)
        db = plugin.db
        write = db.set if op == "set" else db.add if op == "add" else db.replace
        try:
            write(req.key, value, req.xt)
        except DBError as exc:
            plugin.count(_SET_MISS)
            if (op == "add" and exc.code == DUPREC) or (op == "replace" and exc.code == NOREC):
                return self.reply(req.noreply, mc.NOT_STORED)
            plugin.state.log_db_error(exc)
            return self.reply(req.noreply, mc.server_error(op))
        return self.reply(req.noreply, mc.STORED)

    def get(self, tokens: list[bytes]) -> bool:
        plugin = self.plugin
        db = plugin.db
        out = []
        for key in tokens[1:]:
            plugin.count(_GET)
            got = db.get(key)
            if got is None:
                plugin.count(_GET_MISS)
                continue
            data, flags = mc.unpack_flags(got[0], self.flags)
            out.append(mc.encode_value(key, flags, data))
        out.append(mc.END)
        return self.send(b"".join(out))

    def delete(self, tokens: list[bytes]) -> bool:
        if len(tokens) < 2:
            return self.send(mc.INVALID_PARAMETERS)
        noreply = mc.has_noreply(tokens, 2)
        plugin = self.plugin
        plugin.count(_DELETE)
        try:
            plugin.db.remove(tokens[1])
        except DBError as exc:
            plugin.count(_DELETE_MISS)
            if exc.code == NOREC:
                return self.reply(noreply, mc.NOT_FOUND)
            plugin.state.log_db_error(exc)
            return self.reply(noreply, mc.server_error("remove"))
        return self.reply(noreply, mc.DELETED)

    def incr(self, tokens: list[bytes], decr: bool) -> bool:
        """incr / decr: the new number, NOT_FOUND, or a database error; the record
        keeps its expiry."""
        if len(tokens) < 3:
            return self.send(mc.INVALID_PARAMETERS)
        delta = atoi(tokens[2])
        if decr:
            delta = to_int64(-delta)
        noreply = mc.has_noreply(tokens, 3)
        plugin = self.plugin
        count, miss = (_DECR, _DECR_MISS) if decr else (_INCR, _INCR_MISS)
        result: list[int] = []
        with_flags = self.flags

        def full(key: bytes, value: bytes, xt: int) -> Any:
            stored, num = mc.incr_value(value, delta, with_flags)
            result.append(num)
            return stored, -xt

        plugin.count(count)
        try:
            plugin.db.accept(tokens[1], full, lambda key: NOP)
        except DBError as exc:
            plugin.count(miss)
            plugin.state.log_db_error(exc)
            return self.reply(noreply, mc.server_error("accept"))
        if not result:
            plugin.count(miss)
            return self.reply(noreply, mc.NOT_FOUND)
        return self.reply(noreply, b"%d\r\n" % result[0])

    def flush_all(self, tokens: list[bytes]) -> bool:
        noreply = mc.has_noreply(tokens, 1)
        plugin = self.plugin
        plugin.count(_FLUSH)
        try:
            plugin.db.clear()
        except DBError as exc:
            plugin.state.log_db_error(exc)
            return self.reply(noreply, mc.server_error("clear"))
        return self.reply(noreply, mc.OK)

    # -- queue mode ---------------------------------------------------------------------------

    def queue_set(self, tokens: list[bytes]) -> bool:
        """Append a message: stored under a time-ordered key; waiting ``get``s wake up."""
        req = mc.parse_storage(tokens)
        if req is None:
            return self.send(mc.INVALID_PARAMETERS)
        plugin = self.plugin
        msgkey = mc.queue_key(req.key, time.time(), next(plugin._seq))
        data = self.read_block(req.size)
        if data is None:
            return False
        value = mc.pack_flags(data, req.flags) if self.flags else data
        plugin.count(_SET)
        try:
            plugin.db.set(msgkey, value, req.xt)
        except DBError as exc:
            plugin.count(_SET_MISS)
            plugin.state.log_db_error(exc)
            return self.reply(req.noreply, mc.server_error("set"))
        ok = self.reply(req.noreply, mc.STORED)
        plugin.queue_notify()
        return ok

    def queue_get(self, tokens: list[bytes]) -> bool:
        """Take the oldest message of each key (waiting up to qtout in all); a taken
        message stays with this connection until ``delete`` acknowledges it."""
        if len(tokens) < 2:
            return self.send(mc.INVALID_PARAMETERS)
        plugin = self.plugin
        db = plugin.db
        qtout = plugin.options.queue_timeout
        deadline = time.time() + qtout
        wait = min(qtout, 1.0)
        cursor = db.cursor()
        out = []
        for key in tokens[1:]:
            prefix = mc.queue_prefix(key)
            plugin.count(_GET)
            while True:
                generation = plugin.queue_generation()
                taken = self._take(db, cursor, prefix)
                if taken is not None:
                    data, flags = mc.unpack_flags(taken, self.flags)
                    out.append(mc.encode_value(key, flags, data))
                    break
                if plugin._stopping.is_set() or time.time() > deadline:
                    plugin.count(_GET_MISS)
                    break
                plugin.queue_wait(generation, wait)
        out.append(mc.END)
        return self.send(b"".join(out))

    def _take(self, db: Database, cursor: Any, prefix: bytes) -> bytes | None:
        """Seize the first message under ``prefix`` (remembering it), or None."""
        try:
            cursor.jump(prefix)
            rkey = cursor.get_key()
        except DBError:
            return None
        if not rkey.startswith(prefix):
            return None
        try:
            value, _ = db.seize(rkey)
        except DBError:
            return None
        self.taken[rkey] = value
        return value

    def queue_delete(self, tokens: list[bytes]) -> bool:
        """Acknowledge the oldest taken message of a key."""
        if len(tokens) < 2:
            return self.send(mc.INVALID_PARAMETERS)
        noreply = mc.has_noreply(tokens, 2)
        prefix = mc.queue_prefix(tokens[1])
        plugin = self.plugin
        plugin.count(_DELETE)
        taken = min((k for k in self.taken if k.startswith(prefix)), default=None)
        if taken is None:
            plugin.count(_DELETE_MISS)
            return self.reply(noreply, mc.NOT_FOUND)
        del self.taken[taken]
        return self.reply(noreply, mc.DELETED)

    def restore_taken(self) -> None:
        """At disconnection: store every unacknowledged message again (no expiry)."""
        db = self.plugin.db
        for key, value in sorted(self.taken.items()):
            try:
                db.set(key, value)
            except DBError as exc:
                self.plugin.state.log_db_error(exc)
        self.taken.clear()

