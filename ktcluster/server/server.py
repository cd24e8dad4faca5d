"""The server process: the listener, ktserver's threaded server, and the dispatch of each
request to its front end.

The listener, the poller and the ``-th`` worker threads are :mod:`.thserv`'s, with
ktserver's rules (an idle connection costs no thread; a blocked request holds its
worker; the idle event collects expired records and defragments files whenever no
request has arrived for 0.1 s and none waits, even while others are blocked).  Each
connection is a :class:`~.session.Session`; each request starts by looking at one byte:
``0x00`` or ``>= 0x80`` is the binary protocol (:mod:`.frontends.binary`, which hands
0xB1 to :mod:`.frontends.replication`), anything else an HTTP request
(:mod:`.frontends.rpc` under ``/rpc/``, :mod:`.frontends.rest` otherwise).  The two may
alternate and be pipelined on one connection.  ``-tout`` bounds every blocking read
*inside* a request; an idle keep-alive connection waits for its next request
indefinitely.

What the front ends share is :class:`~.state.ServerState` (``server.state``); this
module adds to it the parts the command line asks for, when it asks for them: the Lua
engine of ``-scr`` (:func:`.scripting.create_engine`), the replication slave of ``-rts``
(:func:`.frontends.slave.create_slave`), the memcached plug-in of ``-plsv
ktplugservmemc.so`` (:func:`.frontends.memcached.create_plugin`).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ..protocol.rpc import RPC_PREFIX
from .config import LOG_ERROR, LOG_INFO, LOG_SYSTEM, ConfigError, ServerConfig
from .db.storage import DBError
from .frontends import binary, rest, rpc
from .netio import invalid_address, open_listener
from .session import Session
from .state import ServerState
from .thserv import AVAILABLE as thserv_available
from .thserv import ThreadedServer

__all__ = ["Server"]


class Server:
    """A running embedded Kyoto Tycoon server, the :class:`~.thserv.Handler` of its
    threaded server.

    ``Server(config)`` opens the update log and the databases (``server.state``), adds
    the parts the command line asks for and binds the port; :meth:`serve_forever`
    accepts connections until :meth:`stop`; :meth:`close` releases everything."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state = ServerState(config)
        self._idle_count = 0
        self._next_sync = time.time() + config.sync_interval
        self._next_snapshot = time.time() + config.snapshot_interval
        self._core: ThreadedServer | None = None
        try:
            if not thserv_available:
                raise ConfigError("the embedded server needs Linux (it serves its connections with epoll)")
            self.state.open()
            self._add_parts()
            self._core = ThreadedServer(self._listen(), self, config.threads, self.state.stopping)
        except BaseException:
            self.close()
            raise

    def log(self, kind: int, message: str) -> None:
        self.state.log(kind, message)

    def _add_parts(self) -> None:
        """The parts of ``-scr``, ``-rts`` and ``-plsv``, imported only when asked for."""
        config, state = self.config, self.state
        if config.script_path:
            self.log(LOG_SYSTEM, f"loading a script file: path={config.script_path}")
            from .scripting import create_engine
            state.scripting = create_engine(state, config.script_path)
        if config.rts_path:
            from .frontends.slave import create_slave
            state.slave = create_slave(state)
        if config.plugin_server_path:
            self.log(LOG_SYSTEM, f"loading a plug-in server file: path={config.plugin_server_path}")
            if os.path.basename(config.plugin_server_path) != "ktplugservmemc.so":
                self.log(LOG_ERROR, f"could not load a plug-in server file: {config.plugin_server_path}")
                raise ConfigError(f"{config.plugin_server_path}: could not load a plug-in server file")
            from .frontends.memcached import create_plugin
            state.plugins.append(create_plugin(state, config.plugin_server_expr))

    def _listen(self) -> socket.socket:
        """The listening socket of ``-host``/``-port`` (ConfigError, logged, if it cannot be)."""
        config = self.config
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
        self.log(LOG_SYSTEM, f"server socket opened: expr={host or ''}:{config.port} timeout={config.timeout:.1f}")
        return listener

    # -- serving (the thserv.Handler) --------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`; then wake every waiter."""
        core = self._core
        assert core is not None
        state = self.state
        for plugin in state.plugins:
            plugin.start()
        if state.slave is not None:
            state.slave.start()
        self.log(LOG_SYSTEM, f"listening server socket started: fd={core.listener_fd()}")
        try:
            core.serve_forever()
        finally:
            state.stopping.set()
            state.conditions.broadcast_all()
            self.log(LOG_SYSTEM, "server stopped")

    def connect(self, sock: socket.socket, addr: Any) -> Session:
        sock.settimeout(self.config.timeout if self.config.timeout > 0 else None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.log(LOG_INFO, f"connected: expr={addr[0]}:{addr[1]}")
        return Session(self.state, sock, addr)

    def process(self, session: Session) -> bool:
        """Serve the request whose bytes have begun to arrive, by its first byte; whether
        the connection stays open."""
        if not session.begin_request():
            return False
        first = session.buf[session.pos]
        if first == 0 or first >= 0x80:
            return binary.handle(session, first)
        request = session.read_http_request()
        if request is None:
            return False
        head, body = request
        handle = rpc.handle if head.path.startswith(RPC_PREFIX) else rest.handle
        return session.send(handle(session, head, body)) and head.keep_alive

    def disconnect(self, session: Session) -> None:
        self.log(LOG_INFO, f"disconnecting: expr={session.addr[0]}:{session.addr[1]}")
        session.close()

    def log_error(self, message: str) -> None:
        self.log(LOG_ERROR, message)

    def process_idle(self) -> None:
        """ktserver's idle event: the garbage collector of one database (round robin)
        advances four steps.  (ktserver stops early when a request waits for a worker;
        here a waiting request is not counted, see thserv.)"""
        dbs = self.state.dbs
        if not dbs or self.config.read_only:
            return
        db = dbs[self._idle_count % len(dbs)]
        self._idle_count += 1
        for _ in range(4):
            try:
                db.vacuum(2)
            except DBError as exc:
                self.state.log_db_error(exc)
                break

    def process_timer(self) -> None:
        """ktserver's timer event: -asi synchronises the databases, -bgs snapshots them."""
        config = self.config
        if config.sync_interval > 0 and not config.read_only and time.time() >= self._next_sync:
            self.log(LOG_INFO, "synchronizing databases")
            for db in self.state.dbs:
                try:
                    db.synchronize(config.sync_hard)
                except DBError as exc:
                    self.state.log_db_error(exc)
                    break
            self._next_sync = time.time() + config.sync_interval
        if config.snapshot_path and config.snapshot_interval > 0 and time.time() >= self._next_snapshot:
            self.state.dump_snapshots()
            self._next_snapshot = time.time() + config.snapshot_interval

    def stop(self) -> None:
        """Stop serving (safe from a signal handler): within 0.1 s every connection is
        shut down and :meth:`serve_forever` returns."""
        self.state.stopping.set()

    def restart(self) -> None:
        """SIGUSR1 (or SIGHUP as a daemon): reopen the log and reload the script."""
        state = self.state
        state.logger.reopen()
        if state.scripting is not None:
            self.log(LOG_SYSTEM, f"reloading a script file: path={self.config.script_path}")
            state.scripting.reload()

    def close(self) -> None:
        """Stop the slave and plug-ins, then close the databases and the update log."""
        state = self.state
        state.stopping.set()
        for plugin in state.plugins:
            plugin.stop()
        if state.slave is not None:
            state.slave.stop()
        if self._core is not None:
            self._core.close()
            self._core = None
        state.close()
