"""Big bulk calls: 100,000 records on one node and over four, ktcluster against ukt.

    python benchmarks/big_bulk.py                    # fresh servers ($KT_SERVER_BIN or embedded)
    python benchmarks/big_bulk.py --records 200000 --rounds 5
    python benchmarks/big_bulk.py --nodes 4          # over four nodes only (benchmarks/cluster.py's part 4)

A ``Cluster`` cuts a bulk call into requests of ``bulk_chunk`` records (1,000) and keeps
up to ``bulk_lanes`` (4) of a node's requests in flight, each on its own connection, so
the server's workers and the client work at the same time.  ukt (the fastest KT client
today) sends a bulk call as one request and waits for its reply; over four nodes its
user groups the keys by node (here with ktcluster's ring, the fastest ketama at hand:
0.5 µs of CPU per key, an md5 each) and calls the nodes one after another.
ktcluster's ``KyotoTycoon`` does what ukt does (one request, as python-kyototycoon-ng)
and is shown for reference.

Printed per operation: records/s (the best of ``--rounds`` interleaved batches per
library), the client's own CPU per record (process CPU time / records, the least of the
batches), and ktcluster's ratios (targets: Cluster >= 1.3x ukt's records/s on one node
and over four).  100-byte values, the binary protocol, no serializer.  It never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from _common import Case, measure, print_table

from ktcluster import KT_PACKER_BYTES, Cluster, KyotoTycoon
from ktcluster.testing import KTServer, server_command

TARGET = 1.3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--batch", type=float, default=1.0, help="seconds per measured batch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best batch counts")
    parser.add_argument("--nodes", default="1,4", help="the cluster sizes measured (comma-separated)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.nodes.split(",")]
    try:
        import ukt
    except ImportError:
        sys.exit("ukt is not installed: pip install 'ktcluster[bench]'")

    value = b"v" * args.value_size
    keys = [f"big:{i:08d}" for i in range(args.records)]
    data = dict.fromkeys(keys, value)
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(KTServer(":")) for _ in range(max(sizes))]
        print(f"servers: {' '.join(server_command())}; {args.records:,} records of {args.value_size} bytes; "
              f"best of {args.rounds} batches of {args.batch:g} s per library")
        cases = []
        for n in sizes:
            nodes = servers[:n]
            cluster = Cluster([s.address for s in nodes], pack_type=KT_PACKER_BYTES)
            stack.callback(cluster.close)
            cluster.set_bulk(data)
            clients = {s.address: ukt.KyotoTycoon(s.host, s.port, serializer=ukt.KT_NONE) for s in nodes}

            def ukt_get(ring=cluster.ring, clients=clients) -> None:
                for node, share in ring.partition(keys).items():
                    clients[node].get_bulk(share)

            def ukt_set(ring=cluster.ring, clients=clients) -> None:
                for node, share in ring.partition(keys).items():
                    clients[node].set_bulk({k: data[k] for k in share})

            where = "one node" if n == 1 else f"{n} nodes"
            get_runs = {"ktcluster": lambda c=cluster: c.get_bulk(keys), "ukt": ukt_get}
            set_runs = {"ktcluster": lambda c=cluster: c.set_bulk(data), "ukt": ukt_set}
            if n == 1:
                single = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES).connect(nodes[0].host, nodes[0].port)
                stack.callback(single.close)
                get_runs["KyotoTycoon"] = lambda k=single: k.get_bulk(keys)
                set_runs["KyotoTycoon"] = lambda k=single: k.set_bulk(data)
            cases.append(Case(f"get_bulk, {where}", get_runs, records=args.records))
            cases.append(Case(f"set_bulk, {where}", set_runs, records=args.records))
        measure(cases, args.batch, args.rounds)
    targets = {(case.name, "ukt"): TARGET for case in cases}
    print_table(cases, ["ktcluster", "ukt", "KyotoTycoon"], "ktcluster", targets, cpu_libs=["ktcluster", "ukt"],
                per_record=True)
    print("ktcluster: a Cluster over the nodes (bulk_chunk 1000, bulk_lanes 4); KyotoTycoon: ktcluster's "
          "single-server client, one request like ukt; over 4 nodes ukt's keys are grouped by node with "
          "ktcluster's ring, then the nodes called in turn.")


if __name__ == "__main__":
    main()
