"""Replication benchmark: records/s decoded, and end-to-end lag of the merged stream.

    python benchmarks/replication.py [--records 200000] [--rate 3000] [--seconds 5]

Starts three masters with update logs (the embedded server, or ``$KT_SERVER_BIN``)
and measures, in one run:

1. decode only (no socket): stream bytes -> record dicts, ktcluster vs the
   decoders of python-kyototycoon-ng and ukt (same bytes, same machine);
2. one master over the wire: ``KyotoSlave.consume(0)`` over ``--records``
   logged records, vs ng's ``KyotoSlave`` and ukt's ``ReplicationClient``;
3. the merged stream of the three masters from ts 0 (3 x ``--records``);
4. end-to-end lag: writers set keys on the three masters (then on two, the
   third idle) at ``--rate`` writes/s in total for ``--seconds``; each value
   holds its write time, the consumer (the merged stream, and a single-master
   KyotoSlave for reference) computes receive time - write time.

The target is >= 100k records/s decoded.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator

from ktcluster.connection import Connection
from ktcluster.protocol.binary import XTMAX
from ktcluster.protocol.replication import OP_SET, decode_log_stream, encode_log_entry, encode_log_message, join_xt
from ktcluster.replication import KyotoSlave, ReplicationStream
from ktcluster.testing import KTServer, start_cluster

TARGET = 100_000
CHUNK = 256 * 1024


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>12,.0f} records/s"


def synthetic_stream(n: int) -> bytes:
    """n SET messages (16-byte keys, 100-byte values) as a master sends them."""
    value = join_xt(XTMAX, b"v" * 100)
    return b"".join(encode_log_message(1_800_000_000_000_000_000 + i,
                                       encode_log_entry(1, 0, OP_SET, b"key-%012d" % i, value)) for i in range(n))


def decode_ktcluster(data: bytes) -> int:
    slave = KyotoSlave(2)
    persistent = {0: False}
    count = 0
    buf = b""
    for off in range(0, len(data), CHUNK):  # as the socket delivers it
        buf += data[off:off + CHUNK]
        items, pos, _ = decode_log_stream(buf)
        buf = buf[pos:]
        count += len(slave._decode(items, persistent))
    return count


def frames(data: bytes) -> Iterator[bytes]:
    """The log payloads, framed the way ng and ukt read them (header unpack, then a slice)."""
    pos, end = 0, len(data)
    head = struct.Struct(">BQI")
    while pos < end:
        _, _, size = head.unpack_from(data, pos)
        yield data[pos + 13:pos + 13 + size]
        pos += 13 + size


def decode_ng(data: bytes) -> int:
    from kyototycoon.kyotoslave import _decode_log_entry
    return sum(1 for payload in frames(data) if _decode_log_entry(payload))


def decode_ukt(data: bytes) -> int:
    from ukt.replication import ReplicationClient

    class _KT:  # what _parse_ulog reads from its client
        decode_keys = False

    client = ReplicationClient(_KT(), sid=2, decode_values=False)
    return sum(1 for payload in frames(data) if client._parse_ulog(memoryview(payload)))


def best_of(fn: Callable[[], int], runs: int = 3) -> tuple[int, float]:
    best = float("inf")
    count = 0
    for _ in range(runs):
        start = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - start)
    return count, best


def fill(srv: KTServer, n: int, tag: bytes) -> None:
    conn = Connection(srv.host, srv.port)
    for start in range(0, n, 1000):
        conn.call("set_bulk", {b"_%s-%09d" % (tag, i): b"v" * 100 for i in range(start, min(n, start + 1000))})
    conn.close()


def read_n(records: Iterator[object], n: int) -> int:
    count = 0
    for _ in records:
        count += 1
        if count == n:
            break
    return count


def over_the_wire(srv: KTServer, n: int) -> None:
    print(f"\n2. one master over the wire ({n:,} records from ts 0)")

    def ours() -> int:
        slave = KyotoSlave(2, srv.host, srv.port)
        try:
            return read_n(slave.consume(0), n)
        finally:
            slave.close()

    def ng() -> int:
        from kyototycoon.kyotoslave import KyotoSlave as NgSlave
        slave = NgSlave(2, srv.host, srv.port)
        try:
            return read_n(slave.consume(0), n)
        finally:
            slave.close()

    def ukt() -> int:
        from ukt import KyotoTycoon
        from ukt.replication import ReplicationClient
        client = ReplicationClient(KyotoTycoon(srv.host, srv.port), sid=2, decode_values=False)
        try:
            return read_n(client.run(0), n)
        finally:
            client.stop()

    results = {}
    for name, fn in (("ktcluster KyotoSlave", ours), ("ng KyotoSlave", ng), ("ukt ReplicationClient", ukt)):
        count, seconds = best_of(fn, 2)
        assert count == n, (name, count)
        results[name] = count / seconds
        print(f"   {name:<24}{rate(count, seconds)}")
    base = results["ktcluster KyotoSlave"]
    print(f"   ratio ktcluster/ng {base / results['ng KyotoSlave']:.2f}x, "
          f"ktcluster/ukt {base / results['ukt ReplicationClient']:.2f}x")


def merged(servers: list[KTServer], n: int) -> None:
    total = n * len(servers)
    print(f"\n3. merged stream of {len(servers)} masters ({total:,} records from ts 0)")
    with ReplicationStream([s.address for s in servers], 99, since=0) as stream:
        start = time.perf_counter()
        count = read_n(stream, total)
        seconds = time.perf_counter() - start
    print(f"   ReplicationStream       {rate(count, seconds)}")


def lag(servers: list[KTServer], writing: list[KTServer], per_second: int, seconds: float) -> None:
    idle = len(servers) - len(writing)
    print(f"\n4. end-to-end lag: {per_second:,} writes/s over {len(writing)} masters for {seconds:g} s"
          + (f", {idle} master(s) idle" if idle else ""))
    stop = threading.Event()
    written = [0]

    def writer(srv: KTServer, share: int) -> None:
        conn = Connection(srv.host, srv.port)
        interval = 1.0 / share
        next_at = time.monotonic()
        i = 0
        while not stop.is_set():
            conn.call("set", {b"key": b"lag-%d" % i, b"value": repr(time.time()).encode()})
            written[0] += 1
            i += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        conn.close()

    merged_lags: list[float] = []
    single_lags: list[float] = []
    stream = ReplicationStream([s.address for s in servers], 99)
    single = KyotoSlave(98, servers[0].host, servers[0].port)

    def consume(records: Iterator[dict], out: list[float]) -> None:
        for rec in records:
            if rec.get("key", b"").startswith(b"lag-"):
                out.append(time.time() - float(rec["value"]))

    consumers = [threading.Thread(target=consume, args=(iter(stream), merged_lags)),
                 threading.Thread(target=consume, args=(single.consume(), single_lags))]
    for thread in consumers:
        thread.start()
    time.sleep(1.5)  # connected, past the first heartbeats
    writers = [threading.Thread(target=writer, args=(srv, max(1, per_second // len(writing)))) for srv in writing]
    for thread in writers:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in writers:
        thread.join()
    time.sleep(2.5)  # let the stream drain
    stream.close()
    single.close()
    for thread in consumers:
        thread.join(10)
    print(f"   writes done: {written[0]:,} ({written[0] / seconds:,.0f}/s)")
    for name, lags in (("merged stream (3 masters)", merged_lags), ("KyotoSlave (1 master)", single_lags)):
        if not lags:
            print(f"   {name:<28} no records")
            continue
        lags.sort()
        p50, p95 = (lags[min(len(lags) - 1, int(q * len(lags)))] * 1000 for q in (0.5, 0.95))
        print(f"   {name:<28} n={len(lags):,}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
              f"max {lags[-1] * 1000:7.1f} ms  mean {statistics.fmean(lags) * 1000:7.1f} ms")
    if idle:
        print("   (an idle master's watermark is its heartbeat, which KT sets to now - 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per master (default 200000)")
    parser.add_argument("--rate", type=int, default=3000, help="writes/s in total for the lag test")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the lag test")
    args = parser.parse_args()

    print(f"1. decode only ({args.records:,} SET messages, 16-byte keys, 100-byte values)")
    data = synthetic_stream(args.records)
    results = {}
    for name, fn in (("ktcluster", decode_ktcluster), ("ng", decode_ng), ("ukt", decode_ukt)):
        count, seconds = best_of(lambda fn=fn: fn(data))
        assert count == args.records, (name, count)
        results[name] = count / seconds
        print(f"   {name:<24}{rate(count, seconds)}")
    print(f"   ratio ktcluster/ng {results['ktcluster'] / results['ng']:.2f}x, "
          f"ktcluster/ukt {results['ktcluster'] / results['ukt']:.2f}x; "
          f"target {TARGET:,}/s: {'met' if results['ktcluster'] >= TARGET else 'NOT met'}")

    with start_cluster(3, ulog=True) as servers:
        for i, srv in enumerate(servers):
            fill(srv, args.records, b"m%d" % i)
        time.sleep(0.5)
        over_the_wire(servers[0], args.records)
        merged(servers, args.records)
    with start_cluster(3, ulog=True) as servers:
        lag(servers, servers, args.rate, args.seconds)
        lag(servers, servers[:2], args.rate, args.seconds)


if __name__ == "__main__":
    main()
