"""Which operations may be retried, when, and how often (tenacity underneath).

Every data operation belongs to an :class:`OpClass`, listed once in
:data:`OPERATIONS` (docs/failures.md shows the same table; a test keeps them equal):

* READ -- retried on connection errors and socket timeouts;
* IDEMPOTENT -- the same (doing it twice leaves the same state);
* UNSAFE -- retried only on errors with ``request_sent=False`` (the request never
  left us); an operation not listed is UNSAFE (idempotency is never guessed).

When an UNSAFE operation fails after its request may have reached the server (a
broken connection, a socket timeout, the call's deadline), it is not retried and
:class:`~ktcluster.errors.OutcomeUnknownError` is raised (``__cause__`` is the
transport error).  The error that ends a call says ``request_sent=True`` when any of
its attempts may have reached the server, with the first such attempt's error as its
``__cause__``: a retried write whose last attempt found the node down may still have
been applied by an earlier one.  Nothing else is ever retried: answers
from the server (450 logical errors, 400, 500, 501...), protocol errors,
:class:`~ktcluster.errors.NodeDownError` (the breaker is open: retrying
cannot help) and :class:`~ktcluster.errors.PoolTimeoutError` (the pool is
saturated: retrying would make it worse).

Retries wait with jittered exponential backoff (``wait_random_exponential``),
stop at ``attempts`` or when the next attempt would start after the call's
deadline, and each retry must take a token from a :class:`RetryBudget`, so an
outage cannot multiply the load on the cluster.

The first attempt runs outside tenacity (building a ``Retrying`` costs ~20 µs,
more than a loopback round trip); only when it fails is tenacity started, with
that failure replayed as its first attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn, TypeGuard, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from .deadline import Deadline
from .errors import DeadlineExceeded, KTConnectionError, KyotoTycoonException, NodeDownError, OutcomeUnknownError

__all__ = ["OpClass", "OPERATIONS", "op_class", "is_retryable", "outcome_unknown", "RetryBudget", "RetryPolicy",
           "NO_RETRY"]

T = TypeVar("T")


class OpClass(str, Enum):
    READ = "read"
    IDEMPOTENT = "idempotent"
    UNSAFE = "unsafe"


OPERATIONS: dict[str, OpClass] = {
    **dict.fromkeys(["get", "get_with_expiry", "get_bulk", "get_int", "check", "match_prefix", "match_regex",
                     "match_similar", "count", "size", "status", "report"], OpClass.READ),
    **dict.fromkeys(["set", "set_bulk", "replace", "remove", "remove_bulk", "clear", "vacuum"],
                    OpClass.IDEMPOTENT),
    **dict.fromkeys(["increment", "increment_double", "append", "add", "cas", "seize", "play_script"],
                    OpClass.UNSAFE),
}


def op_class(operation: str) -> OpClass:
    """The class of a named operation (unknown names are UNSAFE: never guess idempotency)."""
    return OPERATIONS.get(operation, OpClass.UNSAFE)


def is_retryable(cls: OpClass, exc: BaseException) -> bool:
    """May an operation of class ``cls`` that failed with ``exc`` be sent again?"""
    if not isinstance(exc, KTConnectionError) or isinstance(exc, NodeDownError):
        return False
    return cls is not OpClass.UNSAFE or not exc.request_sent


def outcome_unknown(exc: BaseException, cls: OpClass) -> TypeGuard[KTConnectionError | DeadlineExceeded]:
    """Whether an operation of class ``cls`` that failed with ``exc`` may or may not have been
    applied (it is then not retried: the call raises OutcomeUnknownError)."""
    return cls is OpClass.UNSAFE and isinstance(exc, (KTConnectionError, DeadlineExceeded)) and exc.request_sent


def _final_error(cls: OpClass, exc: BaseException) -> BaseException:
    if outcome_unknown(exc, cls):
        return OutcomeUnknownError(
            f"the outcome of this non-idempotent operation is unknown (not retried): {exc}", node=exc.node)
    return exc


def _may_have_sent(exc: BaseException) -> bool:
    return not isinstance(exc, KyotoTycoonException) or exc.request_sent


def _raise_final(cls: OpClass, exc: BaseException, sent: BaseException | None) -> NoReturn:
    """Raise the error that ends a call whose last attempt failed with ``exc``; ``sent`` is
    the first error of an earlier attempt that may have reached the server (or None)."""
    final = _final_error(cls, exc)
    if sent is not None and sent is not exc and isinstance(final, KyotoTycoonException) and not final.request_sent:
        final.request_sent = True  # this attempt sent nothing, but an earlier one may have
        raise final from sent
    if final is exc:
        raise exc
    raise final from exc


class RetryBudget:
    """A token bucket that caps retries at a fraction of traffic.

    Each first attempt deposits ``ratio`` tokens; each retry takes one.
    ``min_per_second`` tokens trickle in regardless (so a quiet client can still
    retry), and the balance never exceeds ``cap``.  Share one budget between the
    clusters of a process to bound their retries together.
    """

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0, cap: float = 100.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.cap = cap
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = cap
        self._stamp = clock()
        self.denied = 0

    def deposit(self) -> None:
        """Account for one first attempt.  Lock-free on the hot path: a deposit lost to a
        concurrent update only makes the budget slightly stricter."""
        self._tokens = min(self.cap, self._tokens + self.ratio)

    def withdraw(self) -> bool:
        """Take a token for a retry; False (and nothing taken) when the budget is spent."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.cap, self._tokens + (now - self._stamp) * self.min_per_second)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self.denied += 1
            return False

    @property
    def tokens(self) -> float:
        return self._tokens


class _stop_at_deadline(stop_base):
    """Stop when the next attempt would begin at or after the call's deadline."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        left = self.deadline.left()
        return left is not None and retry_state.upcoming_sleep >= left


class _stop_without_budget(stop_base):
    """Stop when the retry budget has no token left (takes one otherwise: evaluated last)."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self.budget.withdraw()


RetryHook = Callable[[int, BaseException, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How a cluster retries.

    ``attempts`` counts the first one; ``deadline`` (seconds) bounds a whole
    call, bulk fan-outs included: no attempt starts after it and socket timeouts
    are clamped to what is left.  Waits are ``random(0, min(max_backoff,
    backoff * 2**(n-1)))`` before retry n.
    """

    attempts: int = 3
    deadline: float = 10.0
    backoff: float = 0.02
    max_backoff: float = 1.0
    budget: RetryBudget | None = field(default_factory=RetryBudget, compare=False)

    def run(self, cls: OpClass, fn: Callable[[], T], deadline: Deadline, on_retry: RetryHook | None = None,
            first_error: Exception | None = None) -> T:
        """Call ``fn`` under this policy; no attempt starts after ``deadline`` (the call's).

        ``on_retry(attempt, error, wait)`` is called before each retry's wait.
        ``first_error``: the first attempt was already made elsewhere and failed so
        (a scatter-gather bulk call's); the policy goes on from there.
        """
        if self.budget is not None:
            self.budget.deposit()
        try:
            if first_error is not None:
                raise first_error
            return fn()
        except BaseException as exc:
            retries = _Retries(self, cls, exc)
        try:
            return Retrying(**self._tenacity(cls, deadline, on_retry))(retries.attempt, fn)
        except BaseException as exc:
            retries.fail(exc)

    async def run_async(self, cls: OpClass, fn: Callable[[], Awaitable[T]], deadline: Deadline,
                        on_retry: RetryHook | None = None) -> T:
        """:meth:`run` for a coroutine function ``fn`` (tenacity's AsyncRetrying: its waits
        are ``asyncio.sleep``).  A cancellation is never retried: it propagates."""
        if self.budget is not None:
            self.budget.deposit()
        try:
            return await fn()
        except BaseException as exc:
            retries = _Retries(self, cls, exc)
        try:
            return await AsyncRetrying(**self._tenacity(cls, deadline, on_retry))(retries.attempt_async, fn)
        except BaseException as exc:
            retries.fail(exc)

    def _tenacity(self, cls: OpClass, deadline: Deadline, on_retry: RetryHook | None) -> dict[str, Any]:
        """The arguments of tenacity's Retrying/AsyncRetrying for the retries of one call."""
        stop: stop_base = stop_after_attempt(self.attempts) | _stop_at_deadline(deadline)
        if self.budget is not None:
            stop = stop | _stop_without_budget(self.budget)
        before_sleep: Callable[[RetryCallState], Any] | None = None
        if on_retry is not None:
            def before_sleep(state: RetryCallState) -> None:
                assert state.outcome is not None
                on_retry(state.attempt_number, state.outcome.exception(), state.upcoming_sleep)  # type: ignore[arg-type]
        return dict(stop=stop, wait=wait_random_exponential(multiplier=self.backoff, max=self.max_backoff),
                    retry=retry_if_exception(lambda e: is_retryable(cls, e)), reraise=True, before_sleep=before_sleep)


class _Retries:
    """The retries of one call whose first attempt failed with ``first`` (raised at once
    when it may not be retried): tenacity's attempts replay that failure first, then call
    ``fn`` again; ``sent`` keeps the first error that may have reached the server."""

    __slots__ = ("cls", "first", "sent")

    def __init__(self, policy: RetryPolicy, cls: OpClass, first: BaseException) -> None:
        if policy.attempts <= 1 or not is_retryable(cls, first):
            _raise_final(cls, first, None)
        self.cls = cls
        self.first: BaseException | None = first
        self.sent = first if _may_have_sent(first) else None

    def _replay(self) -> None:
        if self.first is not None:
            replay, self.first = self.first, None
            raise replay

    def _failed(self, exc: BaseException) -> None:
        if self.sent is None and _may_have_sent(exc):
            self.sent = exc

    def attempt(self, fn: Callable[[], T]) -> T:
        self._replay()
        try:
            return fn()
        except BaseException as exc:
            self._failed(exc)
            raise

    async def attempt_async(self, fn: Callable[[], Awaitable[T]]) -> T:
        self._replay()
        try:
            return await fn()
        except BaseException as exc:
            self._failed(exc)
            raise

    def fail(self, exc: BaseException) -> NoReturn:
        """The retries ended with ``exc``: raise the call's error."""
        _raise_final(self.cls, exc, self.sent)


#: A policy that never retries (every error surfaces at once; UNSAFE still reports OutcomeUnknownError).
NO_RETRY = RetryPolicy(attempts=1, budget=None)
