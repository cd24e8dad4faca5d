"""ktcluster.aio: what only the asyncio front end has -- its pool under cancellation, its
connections across event loops -- on asyncio's own loop and on uvloop's (tests/conftest.py),
and the storm that proves cancellation safety: tasks
cancelled, or cut short by ``asyncio.timeout``, at random awaits, then the invariants
(no connection checked out, no socket leaked, no cancellation swallowed, every later
call correct).  The behaviour both front ends share runs in the blocking tests,
parametrised over both (tests/fronts.py); the hostile servers in tests/test_hostile.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import traceback
from collections.abc import Iterator

import pytest
import uvloop
from test_pool import ScriptedServer, read_request

from ktcluster import KT_PACKER_BYTES
from ktcluster.aio import Cluster, KyotoTycoon, ReplicationStream
from ktcluster.errors import DeadlineExceeded, KyotoTycoonException, PoolTimeoutError
from ktcluster.testing import KTServer, start_cluster

KEYS = [f"key{i}" for i in range(200)]


def value_of(key: str) -> bytes:
    return key.encode() * 3


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3) as srvs:
        yield srvs


@pytest.fixture(scope="module")
def server(servers) -> KTServer:
    return servers[0]


def client(address: tuple[str, int], timeout: float = 30, **kw) -> KyotoTycoon:
    kt = KyotoTycoon(pack_type=KT_PACKER_BYTES, **kw)
    kt.open(*address, timeout=timeout)
    return kt


async def settled(pool, within: float = 5.0):
    """The pool's counters once the loop has run the callbacks that close aborted sockets."""
    end = time.monotonic() + within
    while True:
        await asyncio.sleep(0.01)
        stats = pool.stats()
        if stats.in_use == 0 and stats.waiting == 0 or time.monotonic() > end:
            return stats


# -- cancellation at any await ---------------------------------------------------------------


class Storm:
    """Random calls of every kind on a client (HTTP and binary views) and a cluster; records
    what each caller saw that it should not have."""

    def __init__(self, kt: KyotoTycoon, cluster: Cluster, seed: int) -> None:
        self.kt = kt
        self.cluster = cluster
        self.binary = kt.with_protocol(binary=True)
        self.rng = random.Random(seed)
        self.calls = 0
        self.timeouts = 0
        self.wrong: list[str] = []
        self.foreign: list[str] = []

    def check(self, key: str, value: object) -> None:
        if value is not None and value != value_of(key):
            self.wrong.append(f"{key!r} -> {value!r}")

    async def one_call(self) -> None:
        rng = self.rng
        kt = rng.choice((self.kt, self.binary, self.cluster))
        key = rng.choice(KEYS)
        op = rng.randrange(7)
        self.calls += 1
        if op == 0:
            self.check(key, await kt.get(key))
        elif op == 1:
            await kt.set(key, value_of(key))
        elif op == 2:
            for k, v in (await kt.get_bulk(rng.sample(KEYS, 30))).items():
                self.check(k, v)
        elif op == 3:
            await kt.set_bulk({k: value_of(k) for k in rng.sample(KEYS, 20)})
        elif op == 4:
            assert await rng.choice((self.kt, self.cluster)).count() >= 0
        elif op == 5:
            async with self.cluster.cursor(rng.choice(list(self.cluster.nodes))) as cur:
                n = 0
                async for k, v in cur:
                    if k in KEYS:
                        self.check(k, v)
                    n += 1
                    if n > 4:
                        break
        else:
            for k in await rng.choice((self.kt, self.cluster)).match_prefix("key1", limit=5):
                self.check(k, await kt.get(k))

    async def worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            limit = asyncio.timeout(self.rng.uniform(0, 0.01)) if self.rng.random() < 0.5 else None
            try:
                if limit is None:
                    await self.one_call()
                else:
                    async with limit:
                        await self.one_call()
            except TimeoutError:
                self.timeouts += 1
                if limit is None or not limit.expired():
                    self.foreign.append("a TimeoutError that no asyncio.timeout of ours raised")
            except KyotoTycoonException as exc:
                if limit is not None and limit.expired():
                    self.foreign.append(f"the timeout's cancellation became {exc!r}")
                # else typed: pool congestion under the storm
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # what the storm is looking for
                self.foreign.append("".join(traceback.format_exception(exc)))
            if me.cancelling():
                self.foreign.append("a cancellation was swallowed")
                return


async def test_tasks_cancelled_or_timed_out_anywhere_leak_nothing(servers):
    cluster = Cluster([s.address for s in servers], pool_size=4, pool_timeout=1, timeout=2)
    kt = client((servers[0].host, servers[0].port), pool_size=4, pool_timeout=1, timeout=2)
    await kt.set_bulk({k: value_of(k) for k in KEYS})
    await cluster.set_bulk({k: value_of(k) for k in KEYS})
    fds_before = open_fds()
    storm = Storm(kt, cluster, seed=11)
    workers = [asyncio.create_task(storm.worker()) for _ in range(60)]
    victims = []
    end = time.monotonic() + 4
    while time.monotonic() < end:
        await asyncio.sleep(storm.rng.uniform(0, 0.004))
        index = storm.rng.randrange(len(workers))
        workers[index].cancel()
        victims.append(workers[index])
        workers[index] = asyncio.create_task(storm.worker())
    for task in workers:
        task.cancel()
    done, pending = await asyncio.wait(victims + workers, timeout=10)
    assert not pending, f"{len(pending)} tasks did not end when cancelled"
    assert all(task.cancelled() for task in done), "a task swallowed its cancellation"
    assert len(victims) > 100 and storm.calls > 1000 and storm.timeouts > 50, (len(victims), storm.calls,
                                                                              storm.timeouts)
    assert not storm.foreign, storm.foreign[:5]
    assert not storm.wrong, storm.wrong[:5]
    idle = 0
    for pool in [kt.pool] + [cluster.client(name).pool for name in cluster.nodes]:
        stats = await settled(pool)
        assert stats.in_use == 0 and stats.waiting == 0 and stats.idle <= 4, stats
        idle += stats.idle
    assert open_fds() <= fds_before + idle, (open_fds(), fds_before, idle)
    # and everything still works, at once, on whatever connections are left
    for key in KEYS[:20]:
        assert await kt.get(key) == value_of(key)
        assert await storm.binary.get(key) == value_of(key)
        assert await cluster.get(key) == value_of(key)
    assert await kt.get_bulk(KEYS) == {k: value_of(k) for k in KEYS}
    assert await cluster.get_bulk(KEYS) == {k: value_of(k) for k in KEYS}
    assert cluster.stats()["down"] == []
    kt.close()
    cluster.close()


def half_then_hang(conn: socket.socket, index: int) -> None:
    """Connection 0 answers half a reply and hangs; the others answer in full."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nvalue" + str(index).encode()
    while read_request(conn):
        if index == 0:
            conn.sendall(reply[:-4])
            time.sleep(5)
            return
        conn.sendall(reply)


async def test_a_cancelled_reply_is_never_read_by_the_next_call():
    srv = ScriptedServer(half_then_hang)
    try:
        kt = client(("127.0.0.1", srv.port), pool_size=1)
        task = asyncio.create_task(kt.get("k"))
        await asyncio.sleep(0.3)              # the first half of the reply has arrived
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await kt.get("k") == b"value1"   # a new connection, not the rest of reply 0
        stats = kt.pool.stats()
        assert (stats.in_use, stats.created, stats.discarded) == (0, 2, 1), stats
    finally:
        srv.close()


# -- the pool ---------------------------------------------------------------------------------


async def test_waiters_are_served_first_come_first_served(server):
    kt = client((server.host, server.port), pool_size=1)
    pool = kt.pool
    held = await pool.checkout()
    order: list[int] = []

    async def waiter(i: int) -> None:
        conn = await pool.checkout()
        order.append(i)
        await asyncio.sleep(0.01)
        pool.checkin(conn)

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0.005)
    assert pool.stats().waiting == 8
    pool.checkin(held)
    await asyncio.gather(*tasks)
    assert order == list(range(8))
    assert pool.stats().in_use == 0


async def test_the_pool_timeout_is_local_congestion(server):
    kt = client((server.host, server.port), pool_size=1, pool_timeout=0.2)
    held = await kt.pool.checkout()
    started = time.monotonic()
    with pytest.raises(PoolTimeoutError):
        await kt.get("k")
    assert 0.2 <= time.monotonic() - started < 2.0
    kt.pool.checkin(held)
    stats = kt.pool.stats()
    assert (stats.in_use, stats.waiting, stats.timeouts) == (0, 0, 1), stats


async def test_a_waiter_cancelled_after_its_grant_gives_the_connection_back(server):
    kt = client((server.host, server.port), pool_size=1)
    pool = kt.pool
    held = await pool.checkout()
    task = asyncio.create_task(pool.checkout())
    await asyncio.sleep(0.01)
    pool.checkin(held)          # granted to the waiting task...
    task.cancel()               # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.waiting) == (0, 1, 0), stats
    assert await kt.set("k", b"v") and await kt.get("k") == b"v"


async def test_a_deadline_bounds_the_wait_for_a_connection_and_the_exchange():
    srv = ScriptedServer(lambda conn, i: read_request(conn) and time.sleep(5))
    try:
        kt = client(("127.0.0.1", srv.port), pool_size=1, pool_timeout=30)
        # the caller holding the connection has the later deadline: the other one's wait for
        # the pool ends first, whatever the load on the machine (equal deadlines raced)
        holder = kt.with_options(deadline=lambda: time.monotonic() + 0.6)
        waiter = kt.with_options(deadline=lambda: time.monotonic() + 0.3)
        started = time.monotonic()
        results = await asyncio.gather(holder.get("a"), waiter.get("b"), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, DeadlineExceeded) for r in results), results
        assert [r.request_sent for r in results] == [True, False], results  # sent; waited for the pool
        assert elapsed < 1.5, elapsed
        assert kt.pool.stats().in_use == 0
    finally:
        srv.close()


def answer_once_then_close(conn: socket.socket, index: int) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % (index % 10))
    conn.close()


async def test_an_idle_connection_the_server_closed_is_replaced_not_used():
    srv = ScriptedServer(answer_once_then_close)
    try:
        kt = client(("127.0.0.1", srv.port))
        assert await kt.get("k") == b"0"
        await asyncio.sleep(0.1)
        assert await kt.get("k") == b"1"    # the closed one was vetted out: no error, nothing lost
        stats = kt.pool.stats()
        assert (stats.created, stats.discarded) == (2, 1), stats
    finally:
        srv.close()


def test_one_client_serves_successive_event_loops(server):
    kt = client((server.host, server.port))
    loop = uvloop.new_event_loop()
    assert loop.run_until_complete(kt.set("k", b"v")) is True
    loop.close()
    assert asyncio.run(kt.get("k")) == b"v"   # the first loop's connection is not reused
    assert kt.pool.stats().in_use == 0


# -- replication ------------------------------------------------------------------------------


async def test_a_consumer_cancelled_while_it_waits_loses_no_record_and_counts_none_it_did_not_get():
    with start_cluster(2, ulog=True) as masters:
        cluster = Cluster([m.address for m in masters])
        stream = cluster.replication(99, since=0)
        records = stream.__aiter__()
        waiting = asyncio.ensure_future(records.__anext__())
        await asyncio.sleep(0.5)                  # the stream is connected and idle: the fetch waits
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        before = stream.checkpoint()
        await cluster.set("k1", b"v1")
        await cluster.set("k2", b"v2")
        got = [await records.__anext__(), await records.__anext__()]
        assert sorted(r["key"] for r in got) == [b"k1", b"k2"]
        assert stream.checkpoint() != before and stream.checkpoint().positions[got[-1]["node"]] >= got[-1]["ts"]
        await stream.close()
        with pytest.raises(StopAsyncIteration):
            await records.__anext__()
        resumed = ReplicationStream([m.address for m in masters], 99, since=stream.checkpoint(), idle_timeout=0.5)
        async with resumed:
            await cluster.set("k3", b"v3")
            async with asyncio.timeout(20):
                async for record in resumed:
                    assert record["key"] == b"k3"    # nothing again, nothing lost
                    break
        cluster.close()
