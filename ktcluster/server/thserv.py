"""ktserver's threaded server (kt::ThreadedServer, ktthserv.h): connections wait in a
poller, a fixed set of worker threads serves their requests, idle and timer events run
on the workers.

:class:`ThreadedServer` serves one listening socket for a :class:`Handler` (the server
itself, or the memcached plug-in), with ktserver's rules:

* **An idle connection costs no thread.**  Between requests a connection waits in an
  epoll set (one-shot, as in ktserver's Poller), however long it stays idle: ``-tout``
  bounds the reads *inside* a request, never the wait for the next one.
* **Workers.**  ``threads`` worker threads (``-th``) wait on the epoll set; the one that
  gets a connection's event calls ``handler.process(conn)`` for one request, again while
  the next request's bytes are already buffered (pipelining), then hands the connection
  back to the poller, or closes it when ``process`` returns False.  A request that blocks
  (a ``WAIT``, a body slow to arrive, a replication stream, a memcached queue ``get``)
  holds its worker; with every worker busy, further requests wait, exactly as with
  ktserver.  (ktserver's poller thread queues the ready connections for its workers;
  here the workers poll themselves, which saves a thread switch per request.  The one
  visible difference: the requests waiting for a worker are not counted anywhere.)
* **Idle event.**  When no connection and no request has arrived for 0.1 s and a worker
  is free, that worker runs ``handler.process_idle()``, at most once per 0.1 s, even
  while other requests are blocked.
* **Timer event.**  A free worker runs ``handler.process_timer()`` every 0.5 s (one at a
  time; a busy server runs it between requests).
* **Stopping.**  :meth:`stop` only sets the ``stopping`` event (safe in a signal
  handler); :meth:`serve_forever` then shuts every connection down (blocked reads return
  at once), lets each worker finish its request, closes every connection and returns.
  :meth:`close` then releases the listener.

Threads: the caller of :meth:`serve_forever` (which only waits) and ``threads`` workers,
whatever the number of connections.  A bug in ``process`` is logged through
``handler.log_error`` and closes that connection only.  It needs epoll, so Linux
(:data:`AVAILABLE`).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .netio import BufferedSocket

__all__ = ["Handler", "ThreadedServer", "IDLE_WAIT", "TIMER_INTERVAL", "AVAILABLE"]

#: this long without a new connection or request is idleness
IDLE_WAIT = 0.1
#: seconds between timer events
TIMER_INTERVAL = 0.5
#: how long stopping waits for the workers to finish their requests
_FINISH_WAIT = 10.0
#: the poller is Linux's epoll (ktserver's Linux build uses it too)
AVAILABLE = hasattr(select, "epoll")
_ARMED = select.EPOLLIN | select.EPOLLONESHOT if AVAILABLE else 0


class Handler(Protocol):
    """What a :class:`ThreadedServer` serves (ktserver's Worker, plus the connection's
    creation and end)."""

    def connect(self, sock: socket.socket, addr: Any) -> BufferedSocket:
        """A new connection: set the socket up, return the object passed to ``process``."""

    def process(self, conn: Any) -> bool:
        """Serve one request of ``conn``; whether the connection stays open."""

    def process_idle(self) -> None:
        """The idle event."""

    def process_timer(self) -> None:
        """The timer event."""

    def disconnect(self, conn: Any) -> None:
        """The connection is done: release what it holds and close its socket."""

    def log_error(self, message: str) -> None:
        """Log an unexpected failure."""


class ThreadedServer:
    """Serve ``listener`` for ``handler`` with ``threads`` workers until ``stopping`` is
    set (see the module doc).  ``name`` names the threads."""

    def __init__(self, listener: socket.socket, handler: Handler, threads: int, stopping: threading.Event,
                 name: str = "kt") -> None:
        listener.setblocking(False)
        self.stopping = stopping
        self._listener = listener
        self._handler = handler
        self._threads = threads
        self._name = name
        self._poller = select.epoll()
        self._conns: dict[int, BufferedSocket] = {}
        self._lock = threading.Lock()
        self._event_lock = threading.Lock()   # one idle or timer event at a time
        self._last_arrival = time.monotonic()
        self._last_idle = 0.0
        self._next_timer = time.monotonic() + TIMER_INTERVAL

    def connection_count(self) -> int:
        return len(self._conns)

    def connections(self) -> list[Any]:
        """The open connections."""
        with self._lock:
            return list(self._conns.values())

    def listener_fd(self) -> int:
        return self._listener.fileno()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from a signal handler)."""
        self.stopping.set()

    def close(self) -> None:
        """Release the listener and the poller (after :meth:`serve_forever`, or instead)."""
        self._listener.close()
        self._poller.close()

    # -- serving ------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until ``stopping`` is set; then finish (see the module doc)."""
        self._poller.register(self._listener.fileno(), _ARMED)
        workers = [threading.Thread(target=self._work, name=f"{self._name}-worker-{i}", daemon=True)
                   for i in range(self._threads)]
        for worker in workers:
            worker.start()
        try:
            while not self.stopping.wait(0.5):
                pass
        finally:
            self.stopping.set()
            for conn in self.connections():
                conn.shutdown()
            deadline = time.monotonic() + _FINISH_WAIT
            for worker in workers:
                worker.join(max(deadline - time.monotonic(), 0.0))
            for conn in self.connections():
                self._close(conn)

    def _work(self) -> None:
        poll = self._poller.poll
        listener_fd = self._listener.fileno()
        handler = self._handler
        stopping = self.stopping
        monotonic = time.monotonic
        while not stopping.is_set():
            try:
                events = poll(IDLE_WAIT, 1)
            except OSError:   # the poller was closed under us: the server is gone
                return
            now = monotonic()
            if events:
                self._last_arrival = now
                fd = events[0][0]
                if fd == listener_fd:
                    self._accept()
                else:
                    conn = self._conns.get(fd)
                    if conn is not None:
                        self._serve(conn)
            elif now - self._last_arrival >= IDLE_WAIT and now - self._last_idle >= IDLE_WAIT:
                self._event(handler.process_idle, idle=True)
            if now >= self._next_timer:
                self._event(handler.process_timer, idle=False)

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except BlockingIOError:
            sock = None
        except OSError:   # out of descriptors, say: do not spin on a listener that stays ready
            sock = None
            time.sleep(0.01)
        if not self.stopping.is_set():
            self._poller.modify(self._listener.fileno(), _ARMED)
        if sock is None:
            return
        try:
            conn = self._handler.connect(sock, addr)
        except Exception as exc:
            self._handler.log_error(f"unexpected error on a new connection: {exc!r}")
            sock.close()
            return
        fd = sock.fileno()
        with self._lock:
            self._conns[fd] = conn
            self._poller.register(fd, _ARMED)

    def _event(self, func: Callable[[], None], idle: bool) -> None:
        """Run the idle or timer event, unless another worker runs one."""
        if not self._event_lock.acquire(blocking=False):
            return
        try:
            if idle:
                self._last_idle = time.monotonic()
            else:
                self._next_timer = time.monotonic() + TIMER_INTERVAL
            func()
        except Exception as exc:
            self._handler.log_error(f"unexpected error in an idle or timer event: {exc!r}")
        finally:
            self._event_lock.release()

    def _serve(self, conn: BufferedSocket) -> None:
        """The requests of ``conn`` that have arrived, then back to the poller."""
        keep = False
        process = self._handler.process
        try:
            keep = process(conn)
            while keep and conn.pos < len(conn.buf):
                keep = process(conn)
        except Exception as exc:
            self._handler.log_error(f"unexpected error in a session: {exc!r}")
            keep = False
        if keep and not self.stopping.is_set():
            try:
                self._poller.modify(conn.sock.fileno(), _ARMED)
                return
            except (OSError, ValueError):
                pass
        self._close(conn)

    def _close(self, conn: BufferedSocket) -> None:
        fd = conn.sock.fileno()
        with self._lock:
            if self._conns.get(fd) is not conn:
                return   # closed already
            del self._conns[fd]
            try:
                self._poller.unregister(fd)
            except (OSError, ValueError):
                pass
        self._handler.disconnect(conn)
