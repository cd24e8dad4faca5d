"""Server speed: the embedded server against a real ktserver, same requests, one run.

    python benchmarks/server.py                       # the embedded server alone
    KT_SERVER_BIN=/path/ktserver python benchmarks/server.py   # both, with ratios

Each server gets ``:`` (an in-memory hash DB) and the memcached plug-in (the real one
from ``$KT_LIBEXEC``, default ``<ktserver dir>/../libexec``).  Requests are encoded once
with the protocol layer (no client library) and sent over one raw socket; the first
answer is decoded with the protocol layer to check it, later ones are read by size, so
what is measured is the server.  Single and 100-key get/set over HTTP (TSV-RPC and
REST), the binary protocol (bulk of 1 and of 100) and memcached.  Prints ops/s per
server and embedded / ktserver; it never asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import BareSocket, Case, binary_complete, http_complete, measure, print_table  # noqa: E402

from ktcluster.protocol import binary, memcache, rest  # noqa: E402
from ktcluster.protocol.http import parse_response_head  # noqa: E402
from ktcluster.protocol.rpc import decode_answer, encode_call  # noqa: E402
from ktcluster.testing import KTServer, free_port  # noqa: E402

BULK = 100
EMBEDDED = "embedded"
REAL = "ktserver"


def _check_http(reply: bytes, rpc: bool) -> None:
    head = parse_response_head(reply)
    if head.status not in (200, 201):
        raise RuntimeError(f"unexpected answer {reply[:200]!r}")
    if rpc:
        decode_answer(head, reply[head.body_start:head.body_start + (head.length or 0)])


def _memcache_complete(reply: bytes) -> bool:
    return reply.endswith(memcache.END) or reply == memcache.STORED


def requests(value: bytes) -> list[tuple[str, bytes, str]]:
    """(case name, request, kind) for every measured operation."""
    key = b"bench:000000"
    keys = [b"bench:%06d" % i for i in range(BULK)]
    target = rest.rest_target(b"", key)
    return [
        ("set (rpc)", encode_call(b"set", [(b"key", key), (b"value", value)]), "rpc"),
        ("get (rpc)", encode_call(b"get", [(b"key", key)]), "rpc"),
        ("set (rest)", rest.encode_put(target, value, b"localhost"), "rest"),
        ("get (rest)", rest.encode_get(target, b"localhost"), "rest"),
        (f"set_bulk {BULK} (rpc)", encode_call(b"set_bulk", [(b"_" + k, value) for k in keys]), "rpc"),
        (f"get_bulk {BULK} (rpc)", encode_call(b"get_bulk", [(b"_" + k, b"") for k in keys]), "rpc"),
        ("set (binary)", binary.encode_set_bulk([(0, key, value, binary.XT_NONE)]), "binary"),
        ("get (binary)", binary.encode_get_bulk([(0, key)]), "binary"),
        (f"set_bulk {BULK} (binary)", binary.encode_set_bulk([(0, k, value, binary.XT_NONE) for k in keys]),
         "binary"),
        (f"get_bulk {BULK} (binary)", binary.encode_get_bulk([(0, k) for k in keys]), "binary"),
        ("set (memcached)", b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value), "memcached"),
        ("get (memcached)", b"get " + key + b"\r\n", "memcached"),
    ]


class Embedded(KTServer):
    """The embedded server whatever $KT_SERVER_BIN says."""

    def argv(self) -> list[str]:
        real = os.environ.get("KT_SERVER_BIN")
        argv = super().argv()
        return [sys.executable, "-m", "ktcluster.server", *argv[1:]] if real else argv


def libexec() -> str:
    explicit = os.environ.get("KT_LIBEXEC")
    if explicit:
        return explicit
    binary_path = os.path.realpath(os.environ["KT_SERVER_BIN"])
    return os.path.normpath(os.path.join(os.path.dirname(binary_path), "..", "libexec"))


def start(kind: str) -> tuple[KTServer, int]:
    memc_port = free_port()
    plugin = "ktplugservmemc.so" if kind == EMBEDDED else os.path.join(libexec(), "ktplugservmemc.so")
    cls = Embedded if kind == EMBEDDED else KTServer
    srv = cls(":", args=["-plsv", plugin, "-plex", f"port={memc_port}"]).start()
    return srv, memc_port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=float, default=0.05, help="seconds per measured batch")
    parser.add_argument("--rounds", type=int, default=20,
                        help="interleaved rounds; the fastest batch of each server counts")
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args(argv)

    value = os.urandom(args.value_size // 2 + 1).hex().encode()[:args.value_size]
    kinds = [EMBEDDED] + ([REAL] if os.environ.get("KT_SERVER_BIN") else [])
    servers = {}
    conns: list[BareSocket] = []
    try:
        for kind in kinds:
            servers[kind] = start(kind)
        cases: dict[str, Case] = {}
        for kind, (srv, memc_port) in servers.items():
            http, bin_conn = BareSocket("127.0.0.1", srv.port), BareSocket("127.0.0.1", srv.port)
            conns += [http, bin_conn]
            memc = None
            for _ in range(100):  # the plug-in listens a moment after the server
                try:
                    memc = BareSocket("127.0.0.1", memc_port)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.05)
            assert memc is not None, "the memcached plug-in did not start"
            conns.append(memc)
            for name, request, how in requests(value):  # the sets come first: they fill what the gets read
                if how == "rpc":
                    run = http.exchange(request, http_complete, lambda r: _check_http(r, True))
                elif how == "rest":
                    run = http.exchange(request, http_complete, lambda r: _check_http(r, False))
                elif how == "binary":
                    run = bin_conn.exchange(request, binary_complete)
                else:
                    run = memc.exchange(request, _memcache_complete)
                cases.setdefault(name, Case(name, {})).runs[kind] = run
        print(f"servers: {', '.join(kinds)}; value {args.value_size} bytes; one connection, one request "
              f"at a time; fastest of {args.rounds} batches of {args.batch:g} s per server")
        measure(list(cases.values()), args.batch, args.rounds)
        print_table(list(cases.values()), kinds, EMBEDDED)
        if REAL not in kinds:
            print("set KT_SERVER_BIN (and KT_LIBEXEC) to compare with a real ktserver in the same run")
    finally:
        for conn in conns:
            conn.close()
        for srv, _ in servers.values():
            srv.cleanup()


if __name__ == "__main__":
    main()
