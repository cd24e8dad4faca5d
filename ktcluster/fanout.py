"""Run one task per shard at the same time, under one deadline.

:class:`Fanout` runs a mapping ``{key: task}`` (a key is a node) and returns
``(results, errors)``: every task ends up in exactly one of the two.  How it runs:

* under gevent (the ``socket`` module is monkey-patched): one greenlet per
  task (a lone task runs in the caller's greenlet); shortly after the deadline
  (:data:`BACKSTOP` seconds: the tasks' own waits are capped at the deadline,
  so they normally end first and report what cut them short) the unfinished
  ones are interrupted (their connections are discarded by the pool, as after
  any interruption).  A failing task's error is returned, not
  raised in its greenlet, so gevent's hub prints nothing;
* otherwise: each key has its own bounded, lazily started thread pool
  (``workers_per_key`` threads), so a slow node's shards queue behind that
  node's shards only, never in front of another node's (a lone task runs in
  the caller's thread).  At the deadline the caller stops waiting, cancels
  tasks that have not started and reports the rest as timed out (their threads
  finish on their own, when their waits end: the cluster caps those at the
  deadline).

A task that missed the deadline gets a :class:`~ktcluster.errors.DeadlineExceeded`
error, with ``request_sent=False`` only when it provably never started.
:meth:`Fanout.close` may race with :meth:`Fanout.run` in other threads: a run after
(or during) a close starts new threads.  In a forked child the parent's threads do
not exist: the child starts new ones (:mod:`ktcluster.forksafe`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Generic, TypeVar

from . import forksafe
from .concurrency import gevent_active
from .deadline import Deadline
from .errors import DeadlineExceeded

__all__ = ["Fanout", "DeadlineExceeded"]

#: how long after the deadline unfinished greenlets are interrupted (gevent)
BACKSTOP = 0.05

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Fanout(Generic[K]):
    """Parallel execution of per-key tasks; ``workers_per_key`` bounds each key's threads."""

    def __init__(self, workers_per_key: int = 16) -> None:
        if workers_per_key < 1:
            raise ValueError("workers_per_key must be at least 1")
        self.workers_per_key = workers_per_key
        self._executors: dict[K, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        forksafe.register(self)

    def close(self) -> None:
        """Stop the worker threads (running tasks finish first)."""
        with self._lock:
            executors, self._executors = self._executors, {}
        for executor in executors.values():
            executor.shutdown(wait=True)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._executors = {}

    def run(self, tasks: Mapping[K, Callable[[], T]], deadline: Deadline) -> tuple[dict[K, T], dict[K, BaseException]]:
        """Run all ``tasks``; return their results and errors, both keyed like ``tasks``."""
        if not tasks:
            return {}, {}
        if gevent_active():
            return _run_greenlets(tasks, deadline)
        return self._run_threads(tasks, deadline)

    # -- threads ------------------------------------------------------------------------------------

    def _submit(self, key: K, task: Callable[[], T]) -> Future[T]:
        """Submit under the lock that close() takes: never to an executor already shut down."""
        with self._lock:
            executor = self._executors.get(key)
            if executor is None:
                executor = self._executors[key] = ThreadPoolExecutor(
                    self.workers_per_key, thread_name_prefix=f"ktcluster-fanout-{key}")
            return executor.submit(task)

    def _run_threads(self, tasks: Mapping[K, Callable[[], T]],
                     deadline: Deadline) -> tuple[dict[K, T], dict[K, BaseException]]:
        results: dict[K, T] = {}
        errors: dict[K, BaseException] = {}
        if len(tasks) == 1:  # no thread hop for a lone task (the cluster caps its waits at the deadline)
            ((key, task),) = tasks.items()
            try:
                results[key] = task()
            except Exception as exc:
                errors[key] = exc
            return results, errors
        futures: dict[Future[T], K] = {}
        try:
            for key, task in tasks.items():
                futures[self._submit(key, task)] = key
            left = deadline.left()
            _, pending = wait_futures(futures, timeout=None if left is None else max(0.0, left))
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
            failure = fut.exception()
            if failure is None:
                results[key] = fut.result()
            elif isinstance(failure, Exception):
                errors[key] = failure
            else:
                raise failure  # KeyboardInterrupt, SystemExit...: not a shard failure
        return results, errors


# -- gevent -------------------------------------------------------------------------------------------


def _captured(task: Callable[[], T]) -> Callable[[], tuple[bool, Any]]:
    """``task`` returning ``(True, result)`` or ``(False, error)``: a greenlet that raises
    would have its traceback printed by gevent's hub, although the error is reported."""
    def run() -> tuple[bool, Any]:
        try:
            return True, task()
        except Exception as exc:
            return False, exc
    return run


def _run_greenlets(tasks: Mapping[K, Callable[[], T]],
                   deadline: Deadline) -> tuple[dict[K, T], dict[K, BaseException]]:
    import gevent

    left = deadline.left()
    backstop = None if left is None else max(0.0, left + BACKSTOP)
    if len(tasks) == 1:  # no greenlet to spawn: run it here, under the deadline
        ((key, task),) = tasks.items()
        late = DeadlineExceeded("the call's deadline passed before this shard finished")
        try:
            with gevent.Timeout(backstop, late):
                return {key: task()}, {}
        except Exception as exc:
            return {}, {key: exc}
    greenlets = {key: gevent.spawn(_captured(task)) for key, task in tasks.items()}
    try:
        gevent.joinall(list(greenlets.values()), timeout=backstop)
    except BaseException:
        # The caller is interrupted: stop the shards without blocking, for a switch here could
        # let another interruption (the caller's own gevent.Timeout) replace this one.
        gevent.killall(list(greenlets.values()), block=False)
        raise
    unfinished = [g for g in greenlets.values() if not g.ready()]
    if unfinished:
        gevent.killall(unfinished, block=True)
    results: dict[K, T] = {}
    errors: dict[K, BaseException] = {}
    for key, g in greenlets.items():
        if g in unfinished:
            errors[key] = DeadlineExceeded("the call's deadline passed before this shard finished")
        elif g.successful():
            ok, value = g.value
            if ok:
                results[key] = value
            else:
                errors[key] = value
        else:
            raise g.exception  # GreenletExit, KeyboardInterrupt, SystemExit...: not a shard failure
    return results, errors
