"""Single-server speed: ktcluster vs python-kyototycoon-ng and ukt, same server, one run.

    python benchmarks/single_node.py            # a fresh server ($KT_SERVER_BIN or embedded)
    python benchmarks/single_node.py --host 127.0.0.1 --port 1978

Measures single get/set and 500-key get_bulk/set_bulk over HTTP and over the binary
protocol (ng and ukt come with the ``bench`` extra: ``pip install 'ktcluster[bench]'``),
every library with raw bytes values (no serializer), one connection, one thread.
Prints ops/s and ratios (targets: binary single ops >= 1.1x ukt, binary bulk >= 1.2x ukt,
HTTP >= 2x python-kyototycoon-ng), then each client's own CPU per record (process CPU
time / records, steadier than wall time on a shared machine; target: ktcluster at or
below the best peer).  It never asserts.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import BareSocket, Case, add_server_arguments, measure, print_table, server  # noqa: E402

from ktcluster import KT_PACKER_BYTES, KyotoTycoon  # noqa: E402
from ktcluster.protocol import binary, rest  # noqa: E402
from ktcluster.protocol.rpc import encode_call  # noqa: E402

BULK = 500



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args(argv)

    try:
        import kyototycoon as ng
    except ImportError:
        ng = None
        print("python-kyototycoon-ng is not installed: pip install 'ktcluster[bench]'")
    try:
        import ukt
    except ImportError:
        ukt = None
        print("ukt is not installed: pip install 'ktcluster[bench]'")

    value = os.urandom(args.value_size // 2).hex().encode()[:args.value_size]
    keys = ["bench:%06d" % i for i in range(BULK)]
    data = {k: value for k in keys}

    with server(args) as (host, port, description):
        ours_http = KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(host, port)
        ours_bin = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES).connect(host, port)
        ours_http.set_bulk(data)
        libs = {"ktcluster": (ours_http, ours_bin)}
        if ng is not None:
            libs["ng"] = (ng.KyotoTycoon(pack_type=ng.KT_PACKER_BYTES).connect(host, port),
                          ng.KyotoTycoon(binary=True, pack_type=ng.KT_PACKER_BYTES).connect(host, port))
        if ukt is not None:
            u = ukt.KyotoTycoon(host, port, serializer=ukt.KT_NONE)
            libs["ukt"] = (u, u)

        def runs(http_op, bin_op, ukt_http, ukt_bin, binary):
            out = {}
            for lib, (h, b) in libs.items():
                if lib == "ukt":
                    out[lib] = (lambda u=h: ukt_bin(u)) if binary else (lambda u=h: ukt_http(u))
                else:
                    out[lib] = (lambda c=b: bin_op(c)) if binary else (lambda c=h: http_op(c))
            return out

        k0 = keys[0]
        bkeys = [k.encode() for k in keys]
        floor = BareSocket(host, port)
        floor_requests = {
            "get (binary)": binary.encode_get_bulk([(0, bkeys[0])]),
            "set (binary)": binary.encode_set_bulk([(0, bkeys[0], value, binary.XT_NONE)]),
            "get_bulk 500 (binary)": binary.encode_get_bulk([(0, k) for k in bkeys]),
            "set_bulk 500 (binary)": binary.encode_set_bulk([(0, k, value, binary.XT_NONE) for k in bkeys]),
            "get (http)": rest.encode_get(rest.rest_target(b"0", bkeys[0]), b"localhost"),
            "set (http)": rest.encode_put(rest.rest_target(b"0", bkeys[0]), value, b"localhost"),
            "get_bulk 500 (http)": encode_call(b"get_bulk", [(b"atomic", b"")] + [(b"_" + k, b"") for k in bkeys]),
            "set_bulk 500 (http)": encode_call(b"set_bulk", [(b"atomic", b"")] + [(b"_" + k, value) for k in bkeys]),
        }
        cases = [
            Case("get (binary)", runs(None, lambda c: c.get(k0), None, lambda u: u.get(k0), True)),
            Case("set (binary)", runs(None, lambda c: c.set(k0, value), None, lambda u: u.set(k0, value), True)),
            Case("get_bulk 500 (binary)", runs(None, lambda c: c.get_bulk(keys), None,
                                               lambda u: u.get_bulk(keys), True)),
            Case("set_bulk 500 (binary)", runs(None, lambda c: c.set_bulk(data), None,
                                               lambda u: u.set_bulk(data), True)),
            Case("get (http)", runs(lambda c: c.get(k0), None, lambda u: u.get_http(k0), None, False)),
            Case("set (http)", runs(lambda c: c.set(k0, value), None, lambda u: u.set_http(k0, value), None, False)),
            Case("get_bulk 500 (http)", runs(lambda c: c.get_bulk(keys), None,
                                             lambda u: u.get_bulk_http(keys), None, False)),
            Case("set_bulk 500 (http)", runs(lambda c: c.set_bulk(data), None,
                                             lambda u: u.set_bulk_http(data), None, False)),
        ]
        for case in cases:
            case.runs["bare socket"] = floor.exchange(floor_requests[case.name])
            if "500" in case.name:
                case.records = BULK
        print(f"server: {description}; value {args.value_size} bytes; "
              f"fastest of {args.rounds} batches of {args.batch:g} s per library")
        measure(cases, args.batch, args.rounds)
        targets = {("get (binary)", "ukt"): 1.1, ("set (binary)", "ukt"): 1.1,
                   ("get_bulk 500 (binary)", "ukt"): 1.2, ("set_bulk 500 (binary)", "ukt"): 1.2}
        for case in cases:
            if case.name.endswith("(http)"):
                targets[(case.name, "ng")] = 2.0
        print_table(cases, [*libs, "bare socket"], "ktcluster", targets, cpu_libs=list(libs))
        print("bare socket: the pre-encoded request written and the reply read with a plain socket, no client "
              "library at all -- the server's own limit; ktcluster / bare socket is the share of it reached.")


if __name__ == "__main__":
    main()
