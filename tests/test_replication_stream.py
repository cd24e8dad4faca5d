"""The merged replication stream of three masters (embedded servers, or $KT_SERVER_BIN):
exactly once, per-master and global order, restarts, checkpoint resume, idle masters,
backpressure, dual-master pairs, thread cleanup and ``tail``."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter

import fronts
import pytest
from fronts import FRONTS
from test_replication_slave import purged_master

from ktcluster import KT_PACKER_BYTES, Checkpoint, ReplicationStream
from ktcluster.cli import main as cli_main
from ktcluster.cli.tail import tail
from ktcluster.cluster import Cluster
from ktcluster.concurrency import gevent_active
from ktcluster.connection import Connection
from ktcluster.errors import ResyncRequiredError
from ktcluster.observe import Metrics
from ktcluster.testing import KTServer, start_cluster

FLUSH = 0.3  # KT flushes its update log every 0.1 s
UNDER_GEVENT = bool(os.environ.get("KTCLUSTER_GEVENT_RUN"))  # set by test_replication_gevent.py


@pytest.fixture(autouse=True, params=('blocking',) if UNDER_GEVENT else FRONTS)
def front(request, monkeypatch) -> str:
    """Each test runs with the ReplicationStream of each front end (``ktcluster.aio``'s through
    tests/fronts.py)."""
    return fronts.swap_consumer(request, monkeypatch, globals(), "ReplicationStream")


@pytest.fixture
def masters():
    with start_cluster(3, ulog=True) as servers:
        yield servers


def write(servers: list[KTServer], keys: list[bytes], value: bytes = b"v", writers: int = 4) -> dict[bytes, str]:
    """Set every key through a Cluster of ``servers``, from ``writers`` threads at once;
    returns key -> the node (``host:port``) that owns it."""
    with Cluster([s.address for s in servers], pack_type=KT_PACKER_BYTES) as cluster:
        threads = [threading.Thread(target=lambda part: [cluster.set(k, value) for k in part], args=(keys[i::writers],))
                   for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {key: cluster.node_for(key) for key in keys}


class Consumer:
    """Iterates a stream in a thread, collecting records, until it has ``n`` or is stopped."""

    def __init__(self, stream: ReplicationStream, n: int | None = None) -> None:
        self.stream = stream
        self.n = n
        self.records: list[dict] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for rec in self.stream:
                self.records.append(rec)
                if self.n is not None and len(self.records) >= self.n:
                    break
        except BaseException as exc:
            self.error = exc

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        return self.records

    def stop(self) -> list[dict]:
        self.stream.close()
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.records


def check_order(records: list[dict]) -> None:
    """Per master strictly increasing ts; globally non-decreasing, ties broken by master order."""
    per_node: dict[str, list[int]] = {}
    for rec in records:
        per_node.setdefault(rec["node"], []).append(rec["ts"])
    for stamps in per_node.values():
        assert stamps == sorted(set(stamps))
    stamps = [rec["ts"] for rec in records]
    assert stamps == sorted(stamps)


def keys_of(records: list[dict]) -> Counter:
    return Counter((rec["node"], rec["key"]) for rec in records)


def test_runs_in_the_expected_concurrency_mode():
    assert gevent_active() == UNDER_GEVENT


def test_every_write_once_in_order(masters):
    keys = [b"k%04d" % i for i in range(900)]
    with Cluster([s.address for s in masters]) as cluster:
        stream = cluster.replication(99)
    consumer = Consumer(stream, n=len(keys))
    time.sleep(0.5)  # the stream starts "now": let it connect first
    owner = write(masters, keys)
    records = consumer.wait_for(len(keys))
    consumer.stop()
    assert len({owner[k] for k in keys}) == 3  # the ring spread the keys over every master
    assert consumer.error is None
    assert keys_of(records) == Counter((owner[k], k) for k in keys)
    check_order(records)
    assert stream.late_records == 0 and stream.excluded == frozenset()
    sid_of = {srv.address: i + 1 for i, srv in enumerate(masters)}  # start_cluster: -sid 1, 2, 3
    assert all(rec["sid"] == sid_of[rec["node"]] for rec in records)
    cp = stream.checkpoint()
    assert json.loads(cp.to_json())["positions"].keys() == {s.address for s in masters}
    last = {}
    for rec in records:
        last[rec["node"]] = rec["ts"]
    assert all(cp.positions[node] >= ts for node, ts in last.items())


def test_since_zero_reads_the_history_of_every_master(masters):
    keys = [b"h%03d" % i for i in range(60)]
    owner = write(masters, keys)
    time.sleep(FLUSH)
    with ReplicationStream([s.address for s in masters], 99, since=0) as stream:
        consumer = Consumer(stream, n=len(keys))
        records = consumer.wait_for(len(keys))
        consumer.stop()
    assert keys_of(records) == Counter((owner[k], k) for k in keys)
    check_order(records)


def test_a_master_killed_and_restarted(masters):
    stream = ReplicationStream([s.address for s in masters], 99, since=0, idle_timeout=1.0, max_backoff=0.2)
    consumer = Consumer(stream)
    first = [b"a%03d" % i for i in range(90)]
    owner = write(masters, first)
    assert len(consumer.wait_for(len(first))) == len(first)
    time.sleep(FLUSH)  # a SIGKILLed ktserver loses the update-log entries it has not flushed
    masters[1].kill()
    owner.update(write([masters[0], masters[2]], [b"b%03d" % i for i in range(20)]))
    time.sleep(1.5)
    masters[1].restart()
    second = [b"c%03d" % i for i in range(90)]
    owner.update(write(masters, second))
    records = consumer.wait_for(len(owner))
    time.sleep(1.5)  # nothing more may come
    records = consumer.stop()
    assert consumer.error is None
    assert keys_of(records) == Counter((node, key) for key, node in owner.items())
    per_node: dict[str, list[int]] = {}
    for rec in records:
        per_node.setdefault(rec["node"], []).append(rec["ts"])
    assert all(stamps == sorted(set(stamps)) for stamps in per_node.values())
    assert stream.status()[masters[1].address]["reconnects"] >= 1


def test_resume_from_a_saved_checkpoint_loses_and_repeats_nothing(masters, tmp_path):
    keys = [b"r%04d" % i for i in range(600)]
    nodes = [s.address for s in masters]
    path = tmp_path / "checkpoint.json"
    owner: dict[bytes, str] = {}
    writer = threading.Thread(target=lambda: owner.update(write(masters, keys)))
    with ReplicationStream(nodes, 99, since=0) as stream:
        writer.start()
        first = []
        for rec in stream:
            first.append(rec)
            stream.checkpoint().save(path)  # after "processing" each record
            if len(first) == 250:
                break
    writer.join()
    resumed = ReplicationStream(nodes, 99, since=Checkpoint.load(path))
    consumer = Consumer(resumed, n=len(keys) - len(first))
    rest = consumer.wait_for(len(keys) - len(first))
    consumer.stop()
    assert keys_of(first + rest) == Counter((owner[k], k) for k in keys)
    check_order(first)
    check_order(rest)


def test_checkpoint_keeps_unknown_masters_and_starts_new_ones_from_their_oldest_entry(masters):
    keys = [b"n%02d" % i for i in range(30)]
    owner = write(masters, keys)
    time.sleep(FLUSH)
    expected = Counter((owner[k], k) for k in keys if owner[k] != masters[0].address)
    cp = Checkpoint({"gone:1": 42, masters[0].address: 2**62})  # master 0: everything already seen
    with ReplicationStream([s.address for s in masters], 99, since=cp.to_dict()) as stream:
        consumer = Consumer(stream)
        consumer.wait_for(len(expected))
        time.sleep(1.5)  # nothing more may come
        records = consumer.stop()
        assert stream.checkpoint().positions["gone:1"] == 42
    assert keys_of(records) == expected


def test_masters_without_writes_only_delay_the_stream_by_their_heartbeats(masters):
    events: list[tuple[str, bool]] = []
    stream = ReplicationStream([s.address for s in masters], 99, idle_timeout=1.0,
                               on_idle=lambda node, excluded: events.append((node, excluded)))
    consumer = Consumer(stream, n=30)
    time.sleep(0.5)
    owner = write(masters[:1], [b"q%02d" % i for i in range(30)])  # masters 1 and 2 get nothing
    records = consumer.wait_for(30)
    consumer.stop()
    assert keys_of(records) == Counter((node, key) for key, node in owner.items())
    assert events == [] and stream.late_records == 0  # their heartbeats kept them in the ordering


def test_an_unreachable_master_stops_holding_the_stream_back_after_the_idle_timeout(masters):
    events: list[tuple[str, bool]] = []
    metrics = Metrics()
    stream = ReplicationStream([s.address for s in masters], 99, idle_timeout=1.0,
                               on_idle=lambda node, excluded: events.append((node, excluded)), observer=metrics)
    consumer = Consumer(stream)
    time.sleep(0.5)
    write(masters, [b"x%02d" % i for i in range(9)])
    assert len(consumer.wait_for(9)) == 9
    quiet = masters[2]
    quiet.pause()  # SIGSTOP: connected but silent, no heartbeats
    try:
        write(masters[:2], [b"y%02d" % i for i in range(10)])
        records = consumer.wait_for(19, timeout=15)
        assert len(records) == 19  # delivered while the master is still silent
        assert stream.excluded == {quiet.address} and events == [(quiet.address, True)]
    finally:
        quiet.resume()
    write([quiet], [b"z0"])
    records = consumer.wait_for(20, timeout=15)
    deadline = time.monotonic() + 10
    while stream.excluded and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    assert [r["key"] for r in records[19:]] == [b"z0"] and records[19]["node"] == quiet.address
    assert events == [(quiet.address, True), (quiet.address, False)]
    check_order(records)
    # the observer saw the same exclusion, and every master's lag (per batch, heartbeats included)
    seen = {name: node["replication"] for name, node in metrics.snapshot()["nodes"].items()}
    assert set(seen) == {s.address for s in masters}
    assert seen[quiet.address]["exclusions"] == 1 and not seen[quiet.address]["excluded"]
    assert all(r["lag"] is not None and 0 <= r["lag"] < 60 and r["ts"] > 0 for r in seen.values())


def test_a_master_down_from_the_start_does_not_stall_the_stream(masters):
    masters[0].stop()
    stream = ReplicationStream([s.address for s in masters], 99, since=0, idle_timeout=1.0)
    consumer = Consumer(stream)
    owner = write(masters[1:], [b"d%02d" % i for i in range(10)])
    records = consumer.wait_for(10, timeout=15)
    status = stream.status()
    consumer.stop()
    assert keys_of(records) == Counter((node, key) for key, node in owner.items())
    assert not status[masters[0].address]["connected"] and status[masters[0].address]["excluded"]


def test_backpressure_bounds_the_buffer_of_a_master(masters):
    conn = Connection(masters[0].host, masters[0].port)
    for i in range(10):
        conn.call("set_bulk", {b"_p%02d-%04d" % (i, j): b"v" * 100 for j in range(1000)})
    conn.close()
    time.sleep(FLUSH)
    with ReplicationStream([s.address for s in masters], 99, since=0, max_buffer=256 * 1024) as stream:
        it = iter(stream)
        next(it)
        time.sleep(1.0)  # the reader would have read everything by now without backpressure
        assert stream.status()[masters[0].address]["buffered_batches"] <= 1
        count = 1 + sum(1 for _, rec in zip(range(9999), it, strict=False))
    assert count == 10000


def test_threads_stop_when_the_iteration_ends(masters):
    def replication_threads(within: float = 5.0) -> list[threading.Thread]:
        """The readers still running after at most ``within`` seconds (the asyncio front
        end's consumer hands the stop to its worker thread: it takes a moment)."""
        give_up = time.monotonic() + within
        while True:
            running = [t for t in threading.enumerate() if t.name.startswith("ktcluster-replication-")]
            if not running or time.monotonic() > give_up:
                return running
            time.sleep(0.02)

    write(masters, [b"t%02d" % i for i in range(6)])
    time.sleep(FLUSH)
    stream = ReplicationStream([s.address for s in masters], 99, since=0)
    for _ in stream:
        break  # the generator is finalised here, which closes the stream
    assert replication_threads() == []
    with ReplicationStream([s.address for s in masters], 99, since=0) as stream:
        it = iter(stream)
        next(it)
        assert len(replication_threads(within=0)) == 3
    assert replication_threads() == []  # the with block closed it while the iterator lives on
    with pytest.raises(StopIteration):
        next(it)


def test_dual_master_pair_with_origin_sids_yields_each_write_once(kt_server_factory):
    a = KTServer(":", args=["-ulog", "ulog", "-sid", "1", "-rts", "a.rts"])
    b = kt_server_factory(":", args=["-ulog", "ulog", "-sid", "2", "-rts", "b.rts",
                                     "-mhost", a.host, "-mport", str(a.port), "-riv", "0"])
    a.args += ["-mhost", b.host, "-mport", str(b.port), "-riv", "0"]
    with a:
        keys = [b"m%02d" % i for i in range(20)]
        owner = write([a, b], keys)
        nodes = {"a": a.address, "b": b.address}
        conns = [Connection(s.host, s.port) for s in (a, b)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until both sides hold every record
            counts = [conn.call("status")[b"count"] for conn in conns]
            if counts == [b"20", b"20"]:
                break
            time.sleep(0.1)
        for conn in conns:
            conn.close()
        assert counts == [b"20", b"20"], "the dual-master pair did not replicate"
        time.sleep(FLUSH)
        with ReplicationStream(nodes, 99, since=0, origin_sids={"a": 1, "b": 2}) as stream:
            consumer = Consumer(stream)
            records = consumer.wait_for(len(keys))
            time.sleep(1.5)  # nothing more may come
            records = consumer.stop()
        name = {a.address: "a", b.address: "b"}
        assert keys_of(records) == Counter((name[owner[k]], k) for k in keys)
        check_order(records)
        # without origin_sids each master also sends what it replicated from the other
        with ReplicationStream(nodes, 99, since=0) as stream:
            consumer = Consumer(stream, n=2 * len(keys))
            assert len(consumer.wait_for(2 * len(keys))) == 2 * len(keys)
            consumer.stop()


def test_tail_prints_json_lines_and_resumes_from_its_checkpoint_file(masters, tmp_path):
    keys = [b"j%02d" % i for i in range(30)]
    owner = write(masters, keys)
    time.sleep(FLUSH)
    path = str(tmp_path / "tail.json")
    nodes = [s.address for s in masters]
    out1 = io.StringIO()
    assert tail(nodes, since=0, checkpoint_file=path, count=12, out=out1) == 12
    out2 = io.StringIO()
    assert tail(nodes, since=0, checkpoint_file=path, count=18, out=out2) == 18
    lines = [json.loads(line) for line in (out1.getvalue() + out2.getvalue()).splitlines()]
    assert Counter((line["node"], line["key"].encode()) for line in lines) == Counter((owner[k], k) for k in keys)
    assert all(line["op"] == "set" and line["value"] == "v" and line["expires"] is None for line in lines)
    assert Checkpoint.load(path).positions.keys() == set(nodes)


def test_cli_tail(masters, tmp_path, capsys):
    keys = [b"c%02d" % i for i in range(12)]
    owner = write(masters, keys)
    time.sleep(FLUSH)
    path = str(tmp_path / "cli.json")
    names = [f"n{i}={s.address}" for i, s in enumerate(masters)]
    assert cli_main(["tail", *names, "--since", "0", "--checkpoint-file", path, "--count", "12"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    name = {s.address: f"n{i}" for i, s in enumerate(masters)}
    assert Counter((line["node"], line["key"]) for line in lines) == \
        Counter((name[owner[k]], k.decode()) for k in keys)
    assert Checkpoint.load(path).positions.keys() == set(name.values())


def test_a_purged_master_stops_the_stream_with_resync_required(kt_server_factory, capsys):
    srv, records = purged_master(kt_server_factory)
    since = Checkpoint({srv.address: records[0]["ts"]})
    with ReplicationStream([srv.address], 99, since=since) as stream:
        with pytest.raises(ResyncRequiredError) as info:
            next(iter(stream))
    assert info.value.node == srv.address and info.value.oldest_ts > records[0]["ts"]
    assert stream.checkpoint() == since  # nothing was yielded
    assert cli_main(["tail", srv.address, "--since", str(records[0]["ts"] / 1e9)]) == 3
    assert "oldest ts kept" in capsys.readouterr().err
