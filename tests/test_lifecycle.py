"""The call lifecycle: interruption at any blocking point, fork, close and overload.

Invariants checked after every storm: no pooled connection is left checked out, every
idle connection is healthy, no file descriptor leaked, every caller saw either its
answer, a ktcluster error, or exactly the exception that interrupted it, and no read
returned another request's answer.  tests/test_cluster_gevent.py runs this module
again under ``gevent.monkey.patch_all()`` (greenlets killed and timed out at random);
here it runs with threads (deadlines, KeyboardInterrupt in the main thread, close()).
"""

from __future__ import annotations

import _thread
import gc
import os
import random
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from ktcluster import KT_PACKER_BYTES, Cluster, KyotoTycoon
from ktcluster.concurrency import gevent_active
from ktcluster.errors import (
    KTConnectionError,
    KTTimeoutError,
    KyotoTycoonException,
    NodeDownError,
    PartialFailureError,
    PoolTimeoutError,
)
from ktcluster.health import BreakerState, HealthConfig
from ktcluster.retry import RetryPolicy
from ktcluster.testing import FaultProxy, start_cluster

UNDER_GEVENT = bool(os.environ.get("KTCLUSTER_GEVENT_RUN"))
NEEDS_GEVENT = pytest.mark.skipif(not UNDER_GEVENT, reason="kills greenlets: runs in the gevent rerun "
                                                            "of this module (tests/test_cluster_gevent.py)")
KEYS = [f"key{i:03d}" for i in range(200)]


def value_of(key: str) -> bytes:
    return b"value-of-" + key.encode()


@pytest.fixture(scope="module")
def servers() -> Iterator[list]:
    with start_cluster(3, ulog=True) as srvs:
        yield srvs


def make_cluster(servers, **kw) -> Cluster:
    kw.setdefault("pack_type", KT_PACKER_BYTES)
    cluster = Cluster([s.address for s in servers], **kw)
    cluster.set_bulk({k: value_of(k) for k in KEYS})
    return cluster


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pools(cluster: Cluster) -> dict:
    return {name: node["pool"] for name, node in cluster.stats()["nodes"].items()}


def settled(pool, within: float = 5.0):
    """The pool's stats once nothing is checked out, or as they are after ``within`` seconds
    (a fan-out's shards may outlive a caller interrupted while stopping them: they end by
    the call's deadline)."""
    give_up = time.monotonic() + within
    while True:
        stats = pool.stats()
        if stats.in_use == 0 or time.monotonic() > give_up:
            return stats
        gc.collect()
        time.sleep(0.05)


def assert_pools_consistent(cluster: Cluster) -> int:
    """No connection checked out, every idle one healthy; returns how many are idle."""
    idle = 0
    for name, member in cluster._topology.members.items():
        pool = member.transport.pool
        stats = settled(pool)
        assert stats.in_use == 0, f"{name}: {stats}"
        assert stats.waiting == 0, f"{name}: {stats}"
        for conn in list(pool._idle):
            assert not conn.broken and conn.is_alive(), f"{name}: unhealthy idle {conn}"
        idle += stats.idle
    return idle


def test_runs_in_the_expected_concurrency_mode():
    assert gevent_active() == UNDER_GEVENT


def test_pool_timeout_is_local_congestion_not_a_server_timeout():
    err = PoolTimeoutError("busy")
    assert not isinstance(err, KTTimeoutError) and isinstance(err, KyotoTycoonException)
    assert err.request_sent is False


# -- interruption ----------------------------------------------------------------------------------


class Storm:
    """Random calls of every kind; records what each caller saw."""

    def __init__(self, cluster: Cluster, kt: KyotoTycoon, seed: int) -> None:
        self.cluster = cluster
        self.kt = kt
        self.rng = random.Random(seed)
        self.calls = 0
        self.wrong: list[str] = []
        self.foreign: list[str] = []

    def check(self, key: str, value: object) -> None:
        if value is not None and value != value_of(key):
            self.wrong.append(f"{key!r} -> {value!r}")

    def one_call(self) -> None:
        rng, cluster = self.rng, self.cluster
        op = rng.randrange(8)
        key = rng.choice(KEYS)
        self.calls += 1
        if op == 0:
            self.check(key, cluster.get(key))
        elif op == 1:
            cluster.set(key, value_of(key))
        elif op == 2:
            keys = rng.sample(KEYS, 30)
            for k, v in cluster.get_bulk(keys).items():
                self.check(k, v)
        elif op == 3:
            cluster.set_bulk({k: value_of(k) for k in rng.sample(KEYS, 20)})
        elif op == 4:
            assert cluster.count() >= 0
        elif op == 5:
            node = rng.choice(list(cluster.nodes))
            with cluster.cursor(node) as cur:
                for n, (k, v) in enumerate(cur.items()):
                    if k in KEYS:
                        self.check(k, v)
                    if n >= 4:
                        break
        elif op == 6:
            self.check(key, self.kt.get(key))
        else:
            for k, v in self.kt.get_bulk(rng.sample(KEYS, 10)).items():
                self.check(k, v)


def assert_storm_clean(storm: Storm, cluster: Cluster, kt: KyotoTycoon, fds_before: int) -> None:
    assert not storm.foreign, storm.foreign[:5]
    assert not storm.wrong, storm.wrong[:5]
    idle = assert_pools_consistent(cluster)
    stats = settled(kt.pool)
    assert stats.in_use == 0 and stats.waiting == 0, stats
    idle += stats.idle
    # every socket still open is an idle pooled one (fds may only have been closed)
    assert open_fds() <= fds_before + idle, (open_fds(), fds_before, idle)
    # and everything still works, at once
    for key in KEYS[:20]:
        assert cluster.get(key) == value_of(key)
    assert cluster.get_bulk(KEYS) == {k: value_of(k) for k in KEYS}


@NEEDS_GEVENT
def test_greenlets_killed_or_timed_out_anywhere_leak_nothing(servers):
    import gevent

    cluster = make_cluster(servers, pool_size=4, pool_timeout=1, timeout=2,
                           retry=RetryPolicy(deadline=0.05 + 2))
    kt = KyotoTycoon(pack_type=KT_PACKER_BYTES, pool_size=2, pool_timeout=1)
    kt.open(servers[0].host, servers[0].port)
    kt.set_bulk({k: value_of(k) for k in KEYS})
    fds_before = open_fds()
    storm = Storm(cluster, kt, seed=11)

    def worker() -> None:
        while True:
            timeout = gevent.Timeout(storm.rng.uniform(0, 0.01)) if storm.rng.random() < 0.5 else None
            try:
                if timeout is None:
                    storm.one_call()
                else:
                    with timeout:
                        storm.one_call()
            except gevent.Timeout as exc:
                if exc is not timeout:
                    storm.foreign.append(f"someone else's Timeout: {exc!r}")
            except KyotoTycoonException:
                pass  # typed: pool congestion under the storm, deadlines
            except BaseException as exc:
                if isinstance(exc, gevent.GreenletExit):
                    raise
                storm.foreign.append("".join(traceback.format_exception(exc)))

    workers = [gevent.spawn(worker) for _ in range(60)]
    end = time.monotonic() + 4
    kills = 0
    while time.monotonic() < end:
        gevent.sleep(storm.rng.uniform(0, 0.004))
        victim = storm.rng.randrange(len(workers))
        workers[victim].kill(block=False)
        workers[victim] = gevent.spawn(worker)
        kills += 1
    gevent.killall(workers)
    assert kills > 100 and storm.calls > 1000, (kills, storm.calls)
    assert_storm_clean(storm, cluster, kt, fds_before)
    cluster.close()
    kt.close()


@NEEDS_GEVENT
def test_replication_streams_killed_or_timed_out_anywhere_leak_nothing(servers):
    import gevent

    cluster = make_cluster(servers)
    fds_before = open_fds()
    rng = random.Random(3)
    seen = [0]
    foreign: list[str] = []

    def writer() -> None:
        while True:
            cluster.set(rng.choice(KEYS), value_of(rng.choice(KEYS)))
            gevent.sleep(0.001)

    def consumer() -> None:
        while True:
            timeout = gevent.Timeout(rng.uniform(0, 1.5))
            try:
                with timeout, cluster.replication(sid=100 + rng.randrange(100), since=0) as stream:
                    for record in stream:
                        assert record["node"] in cluster.nodes
                        seen[0] += 1
            except gevent.Timeout as exc:
                if exc is not timeout:
                    foreign.append(f"someone else's Timeout: {exc!r}")
            except KyotoTycoonException:
                pass
            except BaseException as exc:
                if isinstance(exc, gevent.GreenletExit):
                    raise
                foreign.append("".join(traceback.format_exception(exc)))

    feeder = gevent.spawn(writer)
    consumers = [gevent.spawn(consumer) for _ in range(8)]
    end = time.monotonic() + 4
    kills = 0
    while time.monotonic() < end:
        gevent.sleep(rng.uniform(0, 0.05))
        victim = rng.randrange(len(consumers))
        consumers[victim].kill(block=False)
        consumers[victim] = gevent.spawn(consumer)
        kills += 1
    gevent.killall([feeder, *consumers])
    assert not foreign, foreign[:3]
    assert kills > 30 and seen[0] > 100, (kills, seen[0])
    give_up = time.monotonic() + 5       # the readers of halted streams end on their own
    while open_fds() > fds_before + assert_pools_consistent(cluster) and time.monotonic() < give_up:
        gevent.sleep(0.05)
    assert open_fds() <= fds_before + assert_pools_consistent(cluster)
    cluster.close()


@NEEDS_GEVENT
def test_a_timeout_while_waiting_for_a_connection_is_that_timeout(servers):
    import gevent

    cluster = make_cluster(servers[:1], pool_size=2, pool_timeout=5)
    seen: list[BaseException] = []

    def caller() -> None:
        for _ in range(20):
            timeout = gevent.Timeout(0.005)
            try:
                with timeout:
                    cluster.get(KEYS[0])
            except BaseException as exc:
                if exc is not timeout:
                    seen.append(exc)

    gevent.joinall([gevent.spawn(caller) for _ in range(300)])
    assert not seen, seen[:3]
    assert_pools_consistent(cluster)
    cluster.close()


def settle(timer: threading.Timer) -> int:
    """Stop ``timer`` and take the interrupt it may have sent (1 if it did)."""
    came = 0
    while True:
        try:
            timer.cancel()
            timer.join()
            time.sleep(0.002)  # a pending interrupt is raised here at the latest
            return came
        except KeyboardInterrupt:
            came = 1


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Python's own SIGINT handler during the test: _thread.interrupt_main() raises
    KeyboardInterrupt only through it, and a process started in the background of a shell
    script inherits SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(UNDER_GEVENT, reason="KeyboardInterrupt at any bytecode is a threads matter; the gevent "
                                         "rerun kills greenlets instead")
def test_keyboard_interrupt_anywhere_in_the_main_thread_leaks_nothing(servers, python_sigint):
    cluster = make_cluster(servers, pool_size=3, pool_timeout=2, timeout=2)
    kt = KyotoTycoon(pack_type=KT_PACKER_BYTES, pool_size=2)
    kt.open(servers[0].host, servers[0].port)
    kt.set_bulk({k: value_of(k) for k in KEYS})
    fds_before = open_fds()
    storm = Storm(cluster, kt, seed=5)
    stop = threading.Event()

    def background() -> None:  # other threads keep the pools busy meanwhile
        rng = random.Random(9)
        while not stop.is_set():
            try:
                cluster.get(rng.choice(KEYS))
            except KyotoTycoonException:
                pass

    threads = [threading.Thread(target=background) for _ in range(3)]
    for t in threads:
        t.start()
    interrupts = 0
    try:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            timer = threading.Timer(storm.rng.uniform(0, 0.003), _thread.interrupt_main)
            try:
                timer.start()
                for _ in range(20):
                    storm.one_call()
            except KeyboardInterrupt:
                interrupts += 1
            except KyotoTycoonException:
                pass
            except BaseException as exc:
                storm.foreign.append("".join(traceback.format_exception(exc)))
            interrupts += settle(timer)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert interrupts > 100, interrupts
    assert_storm_clean(storm, cluster, kt, fds_before)
    cluster.close()
    kt.close()


def test_close_while_other_threads_call_raises_nothing_foreign(servers):
    cluster = make_cluster(servers, pool_size=4)
    stop = threading.Event()
    foreign: list[str] = []
    done = [0]

    def worker() -> None:
        while not stop.is_set():
            try:
                assert cluster.get_bulk(KEYS[:60]) == {k: value_of(k) for k in KEYS[:60]}
                done[0] += 1
            except KyotoTycoonException:
                pass
            except BaseException as exc:
                foreign.append("".join(traceback.format_exception(exc)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for _ in range(60):
            cluster.close()
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not foreign, foreign[:3]
    assert done[0] > 60
    assert cluster.get_bulk(KEYS) == {k: value_of(k) for k in KEYS}  # usable after close, as documented
    cluster.close()


# -- fork ------------------------------------------------------------------------------------------


def child_work(cluster: Cluster, kt: KyotoTycoon, cursor) -> int:
    """What a forked worker does; returns the number of problems (printed)."""
    problems = 0
    rng = random.Random(os.getpid())
    counter = f"ctr-{os.getpid()}"
    try:
        cursor.get()
        print("the parent's cursor answered in the child", file=sys.stderr)
        problems += 1
    except KTConnectionError as exc:
        assert exc.request_sent is False
    end = time.monotonic() + 1.5
    expected = 0
    while time.monotonic() < end:
        key = rng.choice(KEYS)
        for got in (cluster.get(key), kt.get(key)):
            if got != value_of(key):
                print(f"get {key!r} -> {got!r}", file=sys.stderr)
                problems += 1
        started = time.monotonic()
        keys = rng.sample(KEYS, 50)
        if cluster.get_bulk(keys) != {k: value_of(k) for k in keys}:
            print("get_bulk answered wrong", file=sys.stderr)
            problems += 1
        if time.monotonic() - started > 2:
            print("get_bulk took %.1f s" % (time.monotonic() - started), file=sys.stderr)
            problems += 1
        expected += 1
        got_n = cluster.increment(counter, 1)
        if got_n != expected:
            print(f"increment -> {got_n}, expected {expected}", file=sys.stderr)
            problems += 1
    return problems


def test_fork_after_use_never_gives_a_wrong_answer(servers):
    cluster = make_cluster(servers, pool_size=4)
    kt = KyotoTycoon(pack_type=KT_PACKER_BYTES)
    kt.open(servers[0].host, servers[0].port)
    kt.set_bulk({k: value_of(k) for k in KEYS})
    for key in KEYS:                          # warm pools: idle connections exist in every pool
        assert cluster.get(key) == value_of(key)
    assert cluster.get_bulk(KEYS) == {k: value_of(k) for k in KEYS}
    cursor = kt.cursor()
    assert cursor.jump()                      # a connection held across the fork
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 2
            try:
                code = 0 if child_work(cluster, kt, cursor) == 0 else 1
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    problems = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:             # the parent keeps using the same objects meanwhile
        key = random.choice(KEYS)
        problems += cluster.get(key) != value_of(key)
        problems += kt.get(key) != value_of(key)
    assert cursor.get()[0] is not None        # the parent's cursor is untouched
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert problems == 0
    assert codes == [0, 0, 0]
    cursor.delete()
    cluster.close()
    kt.close()


# -- overload and fairness -------------------------------------------------------------------------


def test_waiters_are_served_first_come_first_served(servers):
    cluster = make_cluster(servers[:1], pool_size=8, pool_timeout=5)
    workers = 200 if UNDER_GEVENT else 48
    counts = [0] * workers
    timeouts = [0]
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            try:
                cluster.get(KEYS[i % len(KEYS)])
                counts[i] += 1
            except PoolTimeoutError:
                timeouts[0] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    stats = cluster.stats()["nodes"][servers[0].address]["pool"]
    assert timeouts[0] == 0
    median = statistics.median(counts)
    assert median > 10 and min(counts) >= median / 4, (min(counts), median, max(counts))
    assert stats["wait_time_max"] < 5
    cluster.close()


def test_a_slow_node_does_not_delay_bulk_calls_that_skip_it(servers):
    with FaultProxy(servers[2].address, latency=2.0) as slow:
        cluster = make_cluster([servers[0], servers[1]], pool_size=4, timeout=5,
                               retry=RetryPolicy(deadline=10))
        cluster.add_node("slow", slow.address)
        fast_keys = [k for k in KEYS if cluster.node_for(k) != "slow"]
        slow_keys = [k for k in KEYS if cluster.node_for(k) == "slow"]
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    cluster.get_bulk(fast_keys[:5] + slow_keys[:5])
                except KyotoTycoonException:
                    pass

        threads = [threading.Thread(target=hammer) for _ in range(24)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)           # the slow node's shards pile up
            latencies = []
            for _ in range(20):
                started = time.monotonic()
                assert cluster.get_bulk(fast_keys) == {k: value_of(k) for k in fast_keys}
                latencies.append(time.monotonic() - started)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert max(latencies) < 1.0, latencies
        cluster.close()


def test_bulk_calls_on_healthy_nodes_start_no_thread_and_spawn_no_greenlet(servers, monkeypatch):
    """Every node's request goes out from the caller and the replies are read there: a
    thread hop or a greenlet per node costs more than the request on a fast network
    (issue 11: the GC work of the greenlets made a gevent app's bulk endpoint slower)."""
    spawned = []
    if UNDER_GEVENT:
        import gevent
        real_spawn = gevent.spawn
        monkeypatch.setattr(gevent, "spawn", lambda *a, **kw: spawned.append(a) or real_spawn(*a, **kw))
    before = {t.ident for t in threading.enumerate()}
    cluster = make_cluster(servers, bulk_chunk=20)
    for _ in range(20):
        assert cluster.get_bulk(KEYS) == {k: value_of(k) for k in KEYS}
        assert cluster.set_bulk({k: value_of(k) for k in KEYS[:50]}) == 50
    started = [t.name for t in threading.enumerate() if t.ident not in before]
    assert not [name for name in started if name.startswith("ktcluster-fanout")], started
    assert not spawned
    cluster.close()


def test_a_slow_node_does_not_hold_back_the_other_nodes_chunks(servers):
    """Ten chunks on each of two nodes 0.1 s away, one chunk on a node 1 s away: the near
    nodes' chunks go on while the far node's reply is awaited, so the call lasts about
    1 s (the slowest node), not 1.9 s (a round of all nodes' replies at a time)."""
    with FaultProxy(servers[0].address, latency=0.1) as near0, \
            FaultProxy(servers[1].address, latency=0.1) as near1, \
            FaultProxy(servers[2].address, latency=1.0) as far:
        cluster = Cluster({"a": near0.address, "b": near1.address, "far": far.address}, pack_type=KT_PACKER_BYTES,
                          bulk_chunk=5, retry=RetryPolicy(deadline=10))
        keys = [k for k in KEYS if cluster.node_for(k) == "a"][:50] + \
            [k for k in KEYS if cluster.node_for(k) == "b"][:50] + \
            [k for k in KEYS if cluster.node_for(k) == "far"][:5]
        cluster.set_bulk({k: value_of(k) for k in keys})
        started = time.monotonic()
        assert cluster.get_bulk(keys) == {k: value_of(k) for k in keys}
        took = time.monotonic() - started
        assert took < 1.6, took
        cluster.close()


def test_a_node_with_several_chunks_in_flight_reports_exactly_what_it_did_not_do(servers):
    """A node's chunks go out on several connections at once (``bulk_lanes``); when the
    node dies between two waves of them, the records of the chunks answered come back,
    and exactly the others are the failed keys, whatever order the chunks ended in."""
    with FaultProxy(servers[2].address, latency=0.5) as node:
        cluster = Cluster({"a": servers[0].address, "b": node.address}, pack_type=KT_PACKER_BYTES,
                          bulk_chunk=5, bulk_lanes=4, retry=RetryPolicy(deadline=3))
        keys = [k for k in KEYS if cluster.node_for(k) == "b"][:40] + \
            [k for k in KEYS if cluster.node_for(k) == "a"][:10]
        cluster.set_bulk({k: value_of(k) for k in keys})
        cluster.close()
        cluster = Cluster({"a": servers[0].address, "b": node.address}, pack_type=KT_PACKER_BYTES,
                          bulk_chunk=5, bulk_lanes=4, retry=RetryPolicy(deadline=3))
        accepted = node.accepted
        killer = threading.Timer(0.75, node.set_mode, args=("refuse",))
        killer.start()
        with pytest.raises(PartialFailureError) as info:
            cluster.get_bulk(keys)
        killer.join()
        err = info.value
        assert node.accepted - accepted == 4                   # four lanes on node b
        assert set(err.results) | set(err.failed_keys) == set(keys)
        assert not set(err.results) & set(err.failed_keys)
        assert all(err.results[k] == value_of(k) for k in err.results)
        assert 0 < len(err.failed_keys) < 40, len(err.failed_keys)   # the first wave came back
        assert len(err.failed_keys) % 5 == 0                   # whole chunks
        cluster.close()


# -- dead nodes ------------------------------------------------------------------------------------


def test_a_node_that_answers_again_is_used_within_about_a_second(servers):
    with FaultProxy(servers[1].address) as proxy:
        cluster = Cluster({"a": servers[0].address, "b": proxy.address}, pack_type=KT_PACKER_BYTES,
                          timeout=0.5, connect_timeout=0.5, retry=RetryPolicy(deadline=1))
        key = next(k for k in KEYS if cluster.node_for(k) == "b")
        cluster.set(key, b"x")
        proxy.set_mode("refuse")
        end = time.monotonic() + 8   # a long outage: the breaker reopens many times
        while time.monotonic() < end:
            try:
                cluster.get(key)
            except KTConnectionError:
                pass
            time.sleep(0.02)
        assert cluster.health["b"].state is not BreakerState.CLOSED
        assert cluster.stats()["nodes"]["b"]["health"]["next_probe_in"] <= 1.0
        proxy.set_mode("pass")
        back = time.monotonic()
        while True:
            try:
                assert cluster.get(key) == b"x"
                break
            except NodeDownError:
                assert time.monotonic() - back < 1.5, "the node answers but is still refused"
                time.sleep(0.02)
        cluster.close()


def test_a_black_holed_node_opens_within_two_sequential_calls():
    with FaultProxy(None, mode="blackhole") as hole:
        # timeout 0.5 under a 0.8 s deadline: each call's retry is cut by the deadline
        cluster = Cluster([hole.address], pack_type=KT_PACKER_BYTES, timeout=0.5, connect_timeout=0.5,
                          pool_timeout=0.5, retry=RetryPolicy(deadline=0.8, backoff=0.01, max_backoff=0.01),
                          health=HealthConfig(failure_threshold=3))
        for _ in range(2):
            with pytest.raises((KTTimeoutError, NodeDownError)):
                cluster.get("k")
        started = time.monotonic()
        with pytest.raises(NodeDownError):
            cluster.get("k")
        assert time.monotonic() - started < 0.1
        cluster.close()


def test_operators_can_see_the_next_probe_and_force_a_node_back(servers):
    cluster = make_cluster(servers)
    node = next(iter(cluster.nodes))
    cluster.health[node].force_open("maintenance")
    stats = cluster.stats()["nodes"][node]["health"]
    assert stats["state"] == "open" and 0 < stats["next_probe_in"] <= 1.0
    key = next(k for k in KEYS if cluster.node_for(k) == node)
    with pytest.raises(NodeDownError):
        cluster.get(key)
    cluster.reset_node(node)
    assert cluster.get(key) == value_of(key)
    assert cluster.stats()["nodes"][node]["health"]["state"] == "closed"
    with pytest.raises(KyotoTycoonException):
        cluster.reset_node("no-such-node")
    cluster.close()


@NEEDS_GEVENT
def test_fan_out_failures_print_nothing_under_gevent(servers, capfd):
    with FaultProxy(None, mode="refuse") as dead:
        cluster = Cluster({"a": servers[0].address, "dead": dead.address}, pack_type=KT_PACKER_BYTES)
        capfd.readouterr()
        for call in (cluster.count, cluster.status, lambda: cluster.per_node("size")):
            with pytest.raises(KyotoTycoonException):
                call()
        out, err = capfd.readouterr()
        assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
        cluster.close()
