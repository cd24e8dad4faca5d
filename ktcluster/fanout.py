"""Run one task per shard at the same time, under one deadline.

:class:`Fanout` runs a mapping ``{key: task}`` and returns ``(results,
errors)``: every task ends up in exactly one of the two.  How it runs:

* under gevent (the ``socket`` module is monkey-patched): one greenlet per
  task (a lone task runs in the caller's greenlet); at the deadline the
  unfinished ones are interrupted (their connections are discarded by the
  pool, as after any interruption);
* otherwise: a bounded, lazily started thread pool runs the tasks (a lone
  task runs in the caller's thread); at the deadline the caller stops waiting,
  cancels tasks that have not started and reports the rest as timed out
  (their threads finish on their own, when their waits end: the cluster caps
  those at the deadline).

A task that missed the deadline gets a :class:`~ktcluster.errors.DeadlineExceeded`
error, with ``request_sent=False`` only when it provably never started.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, TypeVar

from .errors import DeadlineExceeded

__all__ = ["Fanout", "DeadlineExceeded", "gevent_active"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def gevent_active() -> bool:
    """True when gevent has monkey-patched ``socket`` (then blocking calls only block a greenlet)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


class Fanout:
    """Parallel execution of per-shard tasks; ``max_workers`` bounds the thread pool."""

    def __init__(self, max_workers: int = 16) -> None:
        self.max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the worker threads (running tasks finish first)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def run(self, tasks: Mapping[K, Callable[[], T]], deadline: float) -> tuple[dict[K, T], dict[K, BaseException]]:
        """Run all ``tasks``; return their results and errors, both keyed like ``tasks``."""
        if not tasks:
            return {}, {}
        if gevent_active():
            return self._run_greenlets(tasks, deadline)
        return self._run_threads(tasks, deadline)

    # -- threads ------------------------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="ktcluster-fanout")
            return self._executor

    def _run_threads(self, tasks: Mapping[K, Callable[[], T]],
                     deadline: float) -> tuple[dict[K, T], dict[K, BaseException]]:
        results: dict[K, T] = {}
        errors: dict[K, BaseException] = {}
        if len(tasks) == 1:  # no thread hop for a lone task (the cluster caps its waits at the deadline)
            ((key, task),) = tasks.items()
            try:
                results[key] = task()
            except Exception as exc:
                errors[key] = exc
            return results, errors
        pool = self._pool()
        futures: dict[Future[T], K] = {pool.submit(task): key for key, task in tasks.items()}
        try:
            _, pending = wait_futures(futures, timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        for fut in pending:
            never_ran = fut.cancel()
            errors[futures[fut]] = DeadlineExceeded(
                "the call's deadline passed before this shard " + ("started" if never_ran else "finished"),
                request_sent=not never_ran)
        for fut, key in futures.items():
            if key in errors:
                continue
            exc = fut.exception()
            if exc is None:
                results[key] = fut.result()
            elif isinstance(exc, Exception):
                errors[key] = exc
            else:
                raise exc  # KeyboardInterrupt, SystemExit...: not a shard failure
        return results, errors

    # -- gevent -------------------------------------------------------------------------------------

    @staticmethod
    def _run_greenlets(tasks: Mapping[K, Callable[[], T]],
                       deadline: float) -> tuple[dict[K, T], dict[K, BaseException]]:
        import gevent

        if len(tasks) == 1:  # no greenlet to spawn: run it here, under the deadline
            ((key, task),) = tasks.items()
            late = DeadlineExceeded("the call's deadline passed before this shard finished")
            try:
                with gevent.Timeout(max(0.0, deadline - time.monotonic()), late):
                    return {key: task()}, {}
            except Exception as exc:
                return {}, {key: exc}
        greenlets = {key: gevent.spawn(task) for key, task in tasks.items()}
        try:
            gevent.joinall(list(greenlets.values()), timeout=max(0.0, deadline - time.monotonic()))
        finally:
            late = [g for g in greenlets.values() if not g.ready()]
            if late:
                gevent.killall(late, block=True)
        results: dict[K, T] = {}
        errors: dict[K, BaseException] = {}
        for key, g in greenlets.items():
            if g in late:
                errors[key] = DeadlineExceeded("the call's deadline passed before this shard finished")
            elif g.successful():
                results[key] = g.value
            else:
                errors[key] = _greenlet_error(g)
        return results, errors


def _greenlet_error(g: Any) -> BaseException:
    exc = g.exception
    if isinstance(exc, Exception):
        return exc
    raise exc  # GreenletExit, KeyboardInterrupt, SystemExit...: not a shard failure
