"""Per-node health: a circuit breaker that fails fast on a dead node and finds it again.

Each node has a :class:`CircuitBreaker`, all held by one :class:`Health`
registry per cluster::

    closed ──(hard failure, or `failure_threshold` soft failures in a row)──> open
    open ──(jittered backoff elapsed; the first caller gets the single trial)──> half-open
    half-open ──(probe and the trial request succeed)──> closed
    half-open ──(probe or trial fails)──> open, with a longer backoff

* A **hard** failure is a refused/failed connect (the node is not listening):
  it opens the breaker at once.  A **soft** failure is a socket timeout or a
  connection broken mid-request.  Answers from the server, even errors
  (450, 500, 501...), prove the node is alive and count as successes; local
  congestion (:class:`~ktcluster.errors.PoolTimeoutError`) and interruptions
  count as neither; a call's deadline counts as the wait it cut short (a
  socket timeout is a soft failure, a wait for the pool is nothing).
* While open, calls raise :class:`~ktcluster.errors.NodeDownError` without
  touching the network (``request_sent=False``, so even non-idempotent writes
  may go elsewhere).  The ring does not change: keys are never rehashed.
* After ``reset_timeout`` (doubling up to ``max_reset_timeout`` while the node
  keeps failing, times a random factor in [0.5, 1] so clients do not probe in
  lockstep) exactly one caller runs the cheap ``probe`` and then its own
  request as the half-open trial; everybody else keeps failing fast.  The
  defaults (0.5 s up to 1 s) bring a node that answers again back within a
  second whatever happened before, for one TCP connect and one ``void`` per
  second per client while it is down.  An operator can close a breaker at once
  (:meth:`CircuitBreaker.reset`, ``Cluster.reset_node``); ``stats()`` shows each
  one's ``next_probe_in``.
* Soft failures may open at most ``max_down`` breakers at once, so a client
  whose own network or CPU is struggling cannot declare the whole cluster dead
  (mcrouter's ``--maximum-soft-tkos``); hard failures are never capped.

State changes are logged on ``ktcluster.health`` and passed to ``listener`` and to the
observer (a :class:`~ktcluster.observe.BreakerChange` event).
The lock is never held during I/O, so it is safe under threads and gevent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from .errors import (
    DeadlineExceeded,
    KTConnectionError,
    KTTimeoutError,
    KyotoTycoonException,
    NodeDownError,
    PoolTimeoutError,
    ProtocolError,
)
from .observe.events import BreakerChange, Observer, notify

__all__ = ["BreakerState", "FailureKind", "classify_failure", "CircuitBreaker", "Health", "HealthConfig"]

T = TypeVar("T")
log = logging.getLogger("ktcluster.health")


class BreakerState(str, Enum):
    CLOSED = "closed"        # healthy: calls go through
    OPEN = "open"            # down: calls fail fast
    HALF_OPEN = "half-open"  # one trial in flight


class FailureKind(str, Enum):
    HARD = "hard"  # nothing listens: connect refused or failed
    SOFT = "soft"  # timeout, or the connection broke mid-request


def classify_failure(exc: BaseException) -> FailureKind | None:
    """Whether ``exc`` says something about the node's health (None: it does not).

    A call's deadline that cut short a wait on the node (``node_wait``: a connect, a
    send, a reply) counts as the timeout it was: the node did not answer in time."""
    if isinstance(exc, DeadlineExceeded):
        return FailureKind.SOFT if exc.node_wait else None
    if isinstance(exc, NodeDownError) or not isinstance(exc, KTConnectionError):
        return None
    if isinstance(exc, KTTimeoutError) or exc.request_sent:
        return FailureKind.SOFT
    return FailureKind.HARD


def _answered(exc: BaseException) -> bool:
    """Did the server answer (a status code, or bytes we could not parse)?"""
    return isinstance(exc, KyotoTycoonException) and (exc.code is not None or isinstance(exc, ProtocolError))


@dataclass(frozen=True)
class HealthConfig:
    """Breaker tuning shared by every node of a cluster."""

    failure_threshold: int = 3        # consecutive soft failures that open the breaker
    reset_timeout: float = 0.5        # first wait before probing an open node
    max_reset_timeout: float = 1.0    # cap of the doubling wait: a node that answers is back within it
    max_down: int | None = None       # soft-opened breakers allowed at once (None: half the nodes, at least 1)


Listener = Callable[[str, BreakerState, BreakerState, "BaseException | None"], None]


class CircuitBreaker:
    """The breaker of one node; use :meth:`call`."""

    def __init__(self, node: str, config: HealthConfig, registry: Health | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.node = node
        self.config = config
        self._registry = registry
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self.state = BreakerState.CLOSED
        self._failures = 0          # consecutive soft failures while closed
        self._level = 0             # how many times in a row the node failed its trial
        self._retry_at = 0.0
        self._closed_at = 0.0
        self.opened = 0             # times the breaker opened (a counter for stats)
        self.last_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.node} {self.state.value}>"

    def call(self, fn: Callable[..., T], *args: Any, probe: Callable[..., Any] | None = None) -> T:
        """Run ``fn(*args)`` if the node may be used; record how it went.  (The arguments are
        passed on rather than bound in a closure: this is every cluster call's path.)

        Raises NodeDownError (nothing sent) while the breaker is open or another
        caller holds the half-open trial.  The trial holder runs ``probe(*args)`` first.
        (``ktcluster.aio.cluster`` makes the same steps with ``await``.)
        """
        trial = self.enter()
        if trial and probe is not None:
            try:
                probe(*args)
            except BaseException as exc:
                err = self.probe_failed(exc)
                if err is exc:
                    raise
                raise err from exc
        try:
            result = fn(*args)
        except BaseException as exc:
            self.record(exc, trial)
            raise
        self.succeeded(trial)
        return result

    def enter(self) -> bool:
        """Before a call: False for a normal call, True when this caller holds the half-open
        trial (it probes first); NodeDownError while the node may not be used."""
        return False if self.state is BreakerState.CLOSED else self._admit()

    def probe_failed(self, exc: BaseException) -> BaseException:
        """The trial's probe failed with ``exc``: the breaker opens again; what to raise (an
        interruption as it is)."""
        self._reopen(exc)
        if isinstance(exc, Exception):
            return NodeDownError(f"{self.node} is down (probe failed: {exc})", node=self.node)
        return exc

    def succeeded(self, trial: bool) -> None:
        """A call went through (no bookkeeping at all on the usual path)."""
        if trial or self._failures:
            self.record(None, trial)

    @property
    def closed(self) -> bool:
        """True while calls go through without a trial (the state is CLOSED)."""
        return self.state is BreakerState.CLOSED

    def _admit(self) -> bool:
        """False: a normal call; True: this caller holds the half-open trial."""
        if self.state is BreakerState.CLOSED:
            return False
        with self._lock:
            if self.state is BreakerState.CLOSED:
                return False
            now = self._clock()
            if self.state is BreakerState.OPEN and now >= self._retry_at:
                self._set_state(BreakerState.HALF_OPEN, None)
                return True
            wait = max(0.0, self._retry_at - now)
        detail = f"retry in {wait:.2f}s" if self.state is BreakerState.OPEN else "a probe is in flight"
        raise NodeDownError(f"{self.node} is marked down ({detail}); last error: {self.last_error}",
                            node=self.node)

    def record(self, exc: BaseException | None, trial: bool = False) -> None:
        """Account for one call's outcome (``exc`` None: success)."""
        kind = classify_failure(exc) if exc is not None else None
        if trial:
            # The trial (after a good probe) decides.  Timeouts of any kind (a deadline, a
            # saturated pool) and interruptions (gevent.Timeout, KeyboardInterrupt) prove
            # nothing, so they count as failed; anything else the node said, even 450, is life.
            if exc is None or (kind is None and isinstance(exc, Exception)
                               and not isinstance(exc, (KTTimeoutError, PoolTimeoutError))):
                self._close()
            else:
                self._reopen(exc)
            return
        if kind is None:
            # Only an answer from the server resets the count: a deadline or an interruption
            # ends the call without telling anything about the node.
            if self._failures and (exc is None or _answered(exc)):
                with self._lock:
                    self._failures = 0
            return
        with self._lock:
            if self.state is not BreakerState.CLOSED:
                return
            self.last_error = exc
            self._failures += 1
            if kind is FailureKind.SOFT and (self._failures < self.config.failure_threshold
                                             or not self._may_soft_open()):
                return
            self._level = self._level + 1 if self._clock() - self._closed_at < self.config.max_reset_timeout else 0
            self._open_locked(exc)  # type: ignore[arg-type]  # a failure kind implies an error

    def _may_soft_open(self) -> bool:
        return self._registry is None or self._registry.may_soft_open(self.node)

    def _reopen(self, exc: BaseException) -> None:
        with self._lock:
            self.last_error = exc
            self._level += 1
            self._open_locked(exc)

    def _open_locked(self, exc: BaseException) -> None:
        backoff = min(self.config.reset_timeout * (2 ** self._level), self.config.max_reset_timeout)
        self._retry_at = self._clock() + backoff * (0.5 + 0.5 * self._rng())
        self._failures = 0
        self.opened += 1
        self._set_state(BreakerState.OPEN, exc)

    def _close(self) -> None:
        with self._lock:
            self._failures = 0
            self._closed_at = self._clock()
            self._set_state(BreakerState.CLOSED, None)

    def _set_state(self, new: BreakerState, exc: BaseException | None) -> None:
        old, self.state = self.state, new
        if old is new:
            return
        if new is BreakerState.OPEN:
            log.warning("node %s marked down (%s -> open): %s", self.node, old.value, exc)
        else:
            log.info("node %s: %s -> %s", self.node, old.value, new.value)
        if self._registry is not None:
            self._registry.notify(self.node, old, new, exc)

    def force_open(self, reason: str = "forced") -> None:
        """Mark the node down now (an operator's decision; probes still bring it back)."""
        with self._lock:
            self.last_error = NodeDownError(reason, node=self.node)
            self._open_locked(self.last_error)

    def reset(self) -> None:
        """Forget all failures and close."""
        with self._lock:
            self._failures = self._level = 0
            self._set_state(BreakerState.CLOSED, None)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state.value,
                "consecutive_failures": self._failures,
                "opened": self.opened,
                "next_probe_in": (max(0.0, self._retry_at - self._clock()) if self.state is BreakerState.OPEN
                                  else 0.0),
                "last_error": None if self.last_error is None else str(self.last_error),
            }


class Health:
    """The breakers of all nodes of one cluster, sharing a config, a listener and the down cap."""

    def __init__(self, config: HealthConfig | None = None, listener: Listener | None = None,
                 observer: Observer | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.config = config or HealthConfig()
        self.listener = listener
        self.observer = observer
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, node: str) -> CircuitBreaker:
        breaker = self._breakers.get(node)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(node)
                if breaker is None:
                    breaker = CircuitBreaker(node, self.config, self, self._clock, self._rng)
                    self._breakers = {**self._breakers, node: breaker}
        return breaker

    def forget(self, node: str) -> None:
        """Drop a removed node's breaker."""
        with self._lock:
            self._breakers = {n: b for n, b in self._breakers.items() if n != node}

    def down(self) -> list[str]:
        """Nodes whose breaker is not closed."""
        return [n for n, b in self._breakers.items() if b.state is not BreakerState.CLOSED]

    def may_soft_open(self, node: str) -> bool:
        cap = self.config.max_down
        if cap is None:
            cap = max(1, len(self._breakers) // 2)
        return len([n for n in self.down() if n != node]) < cap

    def notify(self, node: str, old: BreakerState, new: BreakerState, exc: BaseException | None) -> None:
        if self.observer is not None:
            notify(self.observer.breaker, BreakerChange(node, old.value, new.value, exc))
        if self.listener is not None:
            try:
                self.listener(node, old, new, exc)
            except Exception:
                log.exception("health listener failed")

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: b.stats() for n, b in self._breakers.items()}
