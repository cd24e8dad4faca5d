"""Unit tests of the cluster's building blocks that need no server: breaker, retries, fan-out."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ktcluster.concurrency import gevent_active
from ktcluster.deadline import Deadline
from ktcluster.errors import (
    ArgumentError,
    InvalidArgumentError,
    KTConnectionError,
    LogicalInconsistencyError,
    NodeDownError,
    OutcomeUnknownError,
    PoolTimeoutError,
    ProtocolError,
    ServerError,
    SocketTimeoutError,
)
from ktcluster.fanout import DeadlineExceeded, Fanout
from ktcluster.health import BreakerState, CircuitBreaker, FailureKind, Health, HealthConfig, classify_failure
from ktcluster.retry import NO_RETRY, OPERATIONS, OpClass, RetryBudget, RetryPolicy, is_retryable, op_class


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused() -> KTConnectionError:
    return KTConnectionError("connecting failed: refused", request_sent=False)


def broken() -> KTConnectionError:
    return KTConnectionError("closed the connection before replying", request_sent=True)


def timed_out(sent: bool = True) -> SocketTimeoutError:
    return SocketTimeoutError("timed out", request_sent=sent)


def fail(exc: BaseException):
    def fn():
        raise exc
    return fn


# -- failure classification --------------------------------------------------------------------------

def test_classify_failures():
    assert classify_failure(refused()) is FailureKind.HARD
    assert classify_failure(broken()) is FailureKind.SOFT
    assert classify_failure(timed_out()) is FailureKind.SOFT
    assert classify_failure(timed_out(sent=False)) is FailureKind.SOFT   # connect timeout: maybe just slow
    for answered in [LogicalInconsistencyError("x", 450), ServerError("x", 500), InvalidArgumentError("x", 400),
                     ProtocolError("x"), PoolTimeoutError("x"), NodeDownError("x"), ValueError("x")]:
        assert classify_failure(answered) is None


# -- circuit breaker ---------------------------------------------------------------------------------

def make_health(**kw) -> tuple[Health, Clock, list]:
    clock, events = Clock(), []
    health = Health(HealthConfig(**kw), listener=lambda *e: events.append(e[:3]), clock=clock, rng=lambda: 1.0)
    return health, clock, events


def opened_breaker(**kw) -> tuple[CircuitBreaker, Clock, list]:
    """Node kt1's breaker, just opened by a refused connect."""
    health, clock, events = make_health(**kw)
    b = health["kt1"]
    with pytest.raises(KTConnectionError):
        b.call(fail(refused()))
    return b, clock, events


def test_hard_failure_opens_at_once_and_calls_fail_fast():
    b, _, events = opened_breaker()
    assert b.state is BreakerState.OPEN
    calls = []
    with pytest.raises(NodeDownError) as info:
        b.call(lambda: calls.append(1))
    assert calls == [] and info.value.request_sent is False and info.value.node == "kt1"
    assert events == [("kt1", BreakerState.CLOSED, BreakerState.OPEN)]


def test_soft_failures_open_after_threshold_and_successes_reset_the_count():
    health, _, _ = make_health(failure_threshold=3)
    b = health["kt1"]
    for _ in range(2):
        with pytest.raises(SocketTimeoutError):
            b.call(fail(timed_out()))
    b.call(lambda: None)
    for _ in range(2):
        with pytest.raises(SocketTimeoutError):
            b.call(fail(timed_out()))
    assert b.state is BreakerState.CLOSED
    with pytest.raises(SocketTimeoutError):
        b.call(fail(timed_out()))
    assert b.state is BreakerState.OPEN


def test_server_answers_prove_the_node_alive():
    health, _, _ = make_health(failure_threshold=2)
    b = health["kt1"]
    for exc in [timed_out(), LogicalInconsistencyError("no record", 450), timed_out(), ServerError("x", 500)]:
        with pytest.raises(type(exc)):
            b.call(fail(exc))
    assert b.state is BreakerState.CLOSED


def test_deadlines_and_interruptions_neither_reset_nor_count():
    health, clock, _ = make_health(failure_threshold=2)
    b = health["kt1"]
    with pytest.raises(SocketTimeoutError):
        b.call(fail(timed_out()))
    for neutral in [DeadlineExceeded("late"), KeyboardInterrupt(), PoolTimeoutError("busy"), ArgumentError("bad")]:
        with pytest.raises(type(neutral)):
            b.call(fail(neutral))
    assert b.stats()["consecutive_failures"] == 1
    with pytest.raises(SocketTimeoutError):
        b.call(fail(timed_out()))
    assert b.state is BreakerState.OPEN
    clock.now += 10
    with pytest.raises(DeadlineExceeded):      # a trial cut short by the deadline proves nothing
        b.call(fail(DeadlineExceeded("late")), probe=lambda: None)
    assert b.state is BreakerState.OPEN


def test_half_open_single_trial_with_probe_then_close():
    b, clock, events = opened_breaker(reset_timeout=1.0)
    clock.now += 0.99
    with pytest.raises(NodeDownError):
        b.call(lambda: None)
    clock.now += 0.02
    inside = threading.Event()
    release = threading.Event()
    probes = []

    def trial():
        inside.set()
        release.wait(5)
        return "ok"

    results = []
    t = threading.Thread(target=lambda: results.append(b.call(trial, probe=lambda: probes.append(1))))
    t.start()
    assert inside.wait(5)
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(NodeDownError, match="probe is in flight"):   # only one trial at a time
        b.call(lambda: None)
    release.set()
    t.join(5)
    assert results == ["ok"] and probes == [1] and b.state is BreakerState.CLOSED
    assert [e[2] for e in events] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens_with_longer_backoff_and_reports_node_down():
    b, clock, _ = opened_breaker(reset_timeout=1.0, max_reset_timeout=3.0)
    waits = []
    for _ in range(4):
        waits.append(b.stats()["next_probe_in"])
        clock.now += waits[-1]
        with pytest.raises(NodeDownError, match="probe failed") as info:
            b.call(lambda: pytest.fail("must not run"), probe=fail(refused()))
        assert info.value.request_sent is False
    assert waits == [1.0, 2.0, 3.0, 3.0]
    clock.now += 3.0
    assert b.call(lambda: 42, probe=lambda: None) == 42
    assert b.state is BreakerState.CLOSED


def test_failed_trial_request_reopens_and_interrupted_trial_does_not_wedge():
    b, clock, _ = opened_breaker(reset_timeout=1.0)
    clock.now += 1.0
    with pytest.raises(SocketTimeoutError):
        b.call(fail(timed_out()))
    assert b.state is BreakerState.OPEN
    clock.now += 10
    with pytest.raises(KeyboardInterrupt):
        b.call(fail(KeyboardInterrupt()))
    assert b.state is BreakerState.OPEN       # interrupted trial counts as failed, not stuck half-open
    clock.now += 10
    with pytest.raises(LogicalInconsistencyError):
        b.call(fail(LogicalInconsistencyError("no record", 450)))
    assert b.state is BreakerState.CLOSED     # an answer, even a 450, proves the node alive


def test_flapping_node_backs_off_longer_each_time():
    health, clock, _ = make_health(reset_timeout=1.0, max_reset_timeout=30.0)
    b = health["kt1"]
    waits = []
    for _ in range(3):
        with pytest.raises(KTConnectionError):
            b.call(fail(refused()))
        waits.append(b.stats()["next_probe_in"])
        clock.now += waits[-1]
        b.call(lambda: None)
        clock.now += 1
    assert waits == [1.0, 2.0, 4.0]
    clock.now += 60                            # stable for a while: back to the short wait
    with pytest.raises(KTConnectionError):
        b.call(fail(refused()))
    assert b.stats()["next_probe_in"] == 1.0


def test_soft_failures_cannot_mark_more_than_max_down_nodes():
    health, _, _ = make_health(failure_threshold=1, max_down=1)
    a, b = health["a"], health["b"]
    for br in (a, b):
        with pytest.raises(SocketTimeoutError):
            br.call(fail(timed_out()))
    assert a.state is BreakerState.OPEN and b.state is BreakerState.CLOSED
    with pytest.raises(KTConnectionError):
        b.call(fail(refused()))                # hard failures are not capped
    assert health.down() == ["a", "b"]


def test_default_cap_is_half_the_nodes():
    health, _, _ = make_health(failure_threshold=1)
    breakers = [health[n] for n in "abcd"]
    for br in breakers:
        with pytest.raises(SocketTimeoutError):
            br.call(fail(timed_out()))
    assert len(health.down()) == 2


def test_force_open_reset_forget_and_stats():
    health, _, _ = make_health()
    b = health["a"]
    b.force_open("maintenance")
    with pytest.raises(NodeDownError, match="maintenance"):
        b.call(lambda: None)
    assert health.stats()["a"]["state"] == "open" and health.stats()["a"]["opened"] == 1
    b.reset()
    assert b.call(lambda: 1) == 1
    health.forget("a")
    assert "a" not in health.stats() and health["a"] is not b


def test_breaker_is_consistent_under_threads():
    health, _, _ = make_health(failure_threshold=5)
    b = health["a"]
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(200):
            try:
                b.call(fail(timed_out()))
            except (SocketTimeoutError, NodeDownError):
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.state is BreakerState.OPEN and b.opened == 1


# -- retry policy ------------------------------------------------------------------------------------

def test_operation_table():
    assert {op for op, c in OPERATIONS.items() if c is OpClass.UNSAFE} == {
        "increment", "increment_double", "append", "add", "cas", "seize", "play_script"}
    assert op_class("set_bulk") is OpClass.IDEMPOTENT and op_class("get") is OpClass.READ
    assert op_class("something_new") is OpClass.UNSAFE


@pytest.mark.parametrize("cls", list(OpClass))
def test_what_is_retryable(cls):
    assert is_retryable(cls, refused())
    assert is_retryable(cls, timed_out(sent=False))
    assert is_retryable(cls, broken()) == (cls is not OpClass.UNSAFE)
    assert is_retryable(cls, timed_out()) == (cls is not OpClass.UNSAFE)
    for never in [LogicalInconsistencyError("x", 450), ServerError("x", 500), ProtocolError("x"),
                  NodeDownError("x"), PoolTimeoutError("x"), ValueError()]:
        assert not is_retryable(cls, never)


class Flaky:
    def __init__(self, *errors: BaseException, result=None):
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def policy(**kw) -> RetryPolicy:
    kw.setdefault("backoff", 0.001)
    kw.setdefault("max_backoff", 0.002)
    return RetryPolicy(**kw)


def far() -> Deadline:
    return Deadline.after(60)


@pytest.fixture(params=["run", "run_async"])
def via(request) -> str:
    """The RetryPolicy method under test: the blocking cluster's, or the asyncio one's."""
    return request.param


def run(via: str, retry: RetryPolicy, cls: OpClass, fn, deadline: Deadline, on_retry=None):
    """``retry.run(cls, fn, ...)``, or the same through ``run_async`` (``fn`` awaited)."""
    if via == "run":
        return retry.run(cls, fn, deadline, on_retry)

    async def attempt():
        return fn()

    return asyncio.run(retry.run_async(cls, attempt, deadline, on_retry))


def test_reads_retry_until_success(via):
    fn = Flaky(broken(), timed_out(), result="v")
    hooks = []
    assert run(via, policy(attempts=3), OpClass.READ, fn, far(), on_retry=lambda *a: hooks.append(a[0])) == "v"
    assert fn.calls == 3 and hooks == [1, 2]


def test_attempts_are_bounded_and_the_last_error_surfaces(via):
    fn = Flaky(broken(), broken(), broken(), broken())
    with pytest.raises(KTConnectionError):
        run(via, policy(attempts=3), OpClass.IDEMPOTENT, fn, far())
    assert fn.calls == 3


def test_logical_errors_are_never_retried(via):
    fn = Flaky(LogicalInconsistencyError("dup", 450), result=1)
    with pytest.raises(LogicalInconsistencyError):
        run(via, policy(), OpClass.READ, fn, far())
    assert fn.calls == 1


def test_unsafe_op_retries_only_unsent_requests(via):
    fn = Flaky(refused(), timed_out(sent=False), result=5)
    assert run(via, policy(attempts=3), OpClass.UNSAFE, fn, far()) == 5
    assert fn.calls == 3


@pytest.mark.parametrize("first", [True, False])
def test_unsafe_op_sent_then_failed_is_outcome_unknown(first, via):
    errors = [broken()] if first else [refused(), timed_out()]
    fn = Flaky(*errors, result=1)
    with pytest.raises(OutcomeUnknownError) as info:
        run(via, policy(attempts=5), OpClass.UNSAFE, fn, far())
    assert fn.calls == len(errors)
    assert isinstance(info.value.__cause__, KTConnectionError)


@pytest.mark.parametrize("cls", [OpClass.READ, OpClass.IDEMPOTENT])
def test_the_final_error_says_sent_when_an_earlier_attempt_may_have_been(cls, via):
    """Issue 12, bug 6: the first attempt reached the node (and may have been applied), the
    next found it refusing, then down: the error must not say that nothing was sent."""
    first = broken()
    fn = Flaky(first, refused(), NodeDownError("down", node="n"))
    with pytest.raises(NodeDownError) as info:
        run(via, policy(attempts=3), cls, fn, far())
    assert fn.calls == 3
    assert info.value.request_sent is True and info.value.__cause__ is first
    fn = Flaky(refused(), NodeDownError("down", node="n"))               # nothing ever left: it says so
    with pytest.raises(NodeDownError) as info:
        run(via, policy(attempts=3), cls, fn, far())
    assert info.value.request_sent is False and info.value.__cause__ is None
    sent = timed_out()
    fn = Flaky(sent, DeadlineExceeded("the call's deadline passed before this attempt", request_sent=False))
    with pytest.raises(DeadlineExceeded) as info:
        run(via, policy(attempts=3), cls, fn, far())
    assert info.value.request_sent is True and info.value.__cause__ is sent


def test_no_retry_policy_still_reports_unknown_outcomes(via):
    with pytest.raises(OutcomeUnknownError):
        run(via, NO_RETRY, OpClass.UNSAFE, Flaky(broken()), far())
    fn = Flaky(broken())
    with pytest.raises(KTConnectionError):
        run(via, NO_RETRY, OpClass.READ, fn, far())
    assert fn.calls == 1


def test_deadline_stops_retries(via):
    fn = Flaky(*[broken() for _ in range(100)])
    started = time.monotonic()
    with pytest.raises(KTConnectionError):
        run(via, policy(attempts=100, backoff=0.05, max_backoff=0.05), OpClass.READ, fn, Deadline.after(0.2))
    assert fn.calls < 100
    assert time.monotonic() - started < 5


def test_budget_caps_retries_during_an_outage(via):
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, cap=3)
    p = policy(attempts=10, budget=budget)
    calls = 0
    for _ in range(5):
        fn = Flaky(*[broken() for _ in range(20)])
        with pytest.raises(KTConnectionError):
            run(via, p, OpClass.READ, fn, far())
        calls += fn.calls
    assert calls == 5 + 3 and budget.denied >= 1


def test_budget_refills_from_traffic_and_time():
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_second=2.0, cap=10, clock=clock)
    while budget.withdraw():
        pass
    budget.deposit()
    budget.deposit()
    assert budget.withdraw() and not budget.withdraw()
    clock.now += 1.0
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()


# -- fan-out -----------------------------------------------------------------------------------------

def test_fanout_runs_in_parallel_and_collects_results_and_errors():
    fan = Fanout(workers_per_key=1)
    try:
        barrier = threading.Barrier(3, timeout=5)

        def task(i):
            def run():
                barrier.wait()            # deadlocks unless all three run at once
                if i == 2:
                    raise KTConnectionError("boom")
                return i * 10
            return run

        results, errors = fan.run({i: task(i) for i in range(3)}, Deadline.after(10))
        assert results == {0: 0, 1: 10} and list(errors) == [2]
        assert not gevent_active()
    finally:
        fan.close()


def test_fanout_deadline_reports_late_and_unstarted_shards():
    fan = Fanout(workers_per_key=1)
    release = threading.Event()
    try:
        # another call keeps node "busy"'s only worker: this call's shard there never starts
        other = threading.Thread(target=fan.run, args=({"busy": lambda: release.wait(10), "x": lambda: 1},
                                                       Deadline.after(10)))
        other.start()
        time.sleep(0.2)
        started = time.monotonic()
        results, errors = fan.run({
            "fast": lambda: "fast",
            "slow": lambda: release.wait(10),
            "busy": lambda: "never",
        }, Deadline.after(0.3))
        assert time.monotonic() - started < 5
        assert results == {"fast": "fast"}
        assert isinstance(errors["slow"], DeadlineExceeded) and errors["slow"].request_sent
        assert isinstance(errors["busy"], DeadlineExceeded) and not errors["busy"].request_sent
    finally:
        release.set()
        other.join()
        fan.close()


def test_fanout_a_slow_key_does_not_hold_back_the_others():
    fan = Fanout(workers_per_key=2)
    release = threading.Event()
    try:
        hogs = [threading.Thread(target=fan.run, args=({"slow": lambda: release.wait(10), "x": lambda: 1},
                                                       Deadline.after(10))) for _ in range(4)]
        for t in hogs:
            t.start()
        time.sleep(0.2)  # "slow" has all its workers busy and more of its shards queued
        started = time.monotonic()
        assert fan.run({"a": lambda: "a", "b": lambda: "b"}, Deadline.after(5)) == ({"a": "a", "b": "b"}, {})
        assert time.monotonic() - started < 1
    finally:
        release.set()
        for t in hogs:
            t.join()
        fan.close()


def test_fanout_close_racing_with_runs_is_harmless():
    fan = Fanout(workers_per_key=2)
    stop = threading.Event()
    problems: list[BaseException] = []

    def caller() -> None:
        while not stop.is_set():
            try:
                assert fan.run({"a": lambda: 1, "b": lambda: 2}, Deadline.after(5)) == ({"a": 1, "b": 2}, {})
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                problems.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(100):
        fan.close()
    stop.set()
    for t in threads:
        t.join()
    fan.close()
    assert not problems, problems[:3]


def test_fanout_single_and_empty():
    fan = Fanout()
    assert fan.run({}, Deadline.after(0)) == ({}, {})
    assert fan.run({"a": lambda: 1}, Deadline.after(1)) == ({"a": 1}, {})
    assert fan._executors == {}       # one shard runs in the caller's thread
    fan.close()


def test_fanout_base_exceptions_propagate():
    fan = Fanout()
    try:
        with pytest.raises(KeyboardInterrupt):
            fan.run({"a": fail(KeyboardInterrupt()), "b": lambda: 1}, Deadline.after(5))
    finally:
        fan.close()
