"""Which servers a command talks to: ``--servers`` or ``$KT_SERVERS``.

A server list is comma- (or space-) separated entries, each ``host:port`` (the
node is then named ``host:port``, as libketama clients name servers) or
``name=host:port`` (names, not addresses, are hashed: see
:mod:`ktcluster.ring`).  ``--weight NAME=N`` gives a node a ring weight;
``--hash-tags`` places keys by their ``{tag}``.  Every client of the cluster
must use the same names, weights and hash-tag setting, or keys are looked for on
the wrong node.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..address import parse_address
from ..cluster import Cluster
from ..errors import ArgumentError
from ..packers import KT_PACKER_BYTES
from ..retry import RetryPolicy
from ..ring import Ring

__all__ = ["ServerList", "parse_servers", "server_list", "open_cluster", "ENV"]

#: the environment variable read when ``--servers`` is not given
ENV = "KT_SERVERS"


class ServerList:
    """Node name -> ``"host:port"`` (configuration order) and the ring weights."""

    def __init__(self, nodes: dict[str, str], weights: dict[str, int], hash_tags: bool = False) -> None:
        self.nodes = nodes
        self.weights = weights
        self.hash_tags = hash_tags

    def ring(self) -> Ring:
        return Ring({name: self.weights.get(name, 1) for name in self.nodes}, hash_tags=self.hash_tags)

    def to_dict(self) -> dict[str, Any]:
        return {name: [address, self.weights.get(name, 1)] for name, address in self.nodes.items()}


def parse_servers(text: str) -> dict[str, str]:
    """``"a=h1:1978, h2:1978"`` -> ``{"a": "h1:1978", "h2:1978": "h2:1978"}``."""
    nodes: dict[str, str] = {}
    for entry in text.replace(",", " ").split():
        name, sep, address = entry.partition("=")
        if not sep:
            name, address = "", entry
        if sep and not name:
            raise ArgumentError(f"empty node name in {entry!r}")
        host, port = parse_address(address)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        name = name or address
        if name in nodes:
            raise ArgumentError(f"node {name!r} is listed twice")
        nodes[name] = address
    return nodes


def _weight(text: str) -> tuple[str, int]:
    name, sep, value = text.rpartition("=")
    if not sep or not name or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=N with N a positive integer, not {text!r}")
    return name, int(value)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", "-s", metavar="LIST",
                        help=f"the cluster's nodes: host:port or name=host:port, comma-separated "
                             f"(default: ${ENV})")
    parser.add_argument("--weight", action="append", type=_weight, default=[], metavar="NAME=N",
                        help="ring weight of a node (default 1); repeatable")
    parser.add_argument("--hash-tags", action="store_true",
                        help="place keys by their {tag} (as Redis Cluster does); every client must agree")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds for each request and for a whole call with its retries (default 5)")


def server_list(args: argparse.Namespace) -> ServerList:
    """The servers named by ``--servers`` / ``$KT_SERVERS`` (ArgumentError when neither is set)."""
    text = args.servers if args.servers is not None else os.environ.get(ENV, "")
    if not text.strip():
        raise ArgumentError(f"no servers: give --servers host:port,... or set {ENV}")
    nodes = parse_servers(text)
    weights = dict(args.weight)
    unknown = set(weights) - set(nodes)
    if unknown:
        raise ArgumentError(f"--weight names unknown nodes: {', '.join(sorted(unknown))}")
    return ServerList(nodes, weights, args.hash_tags)


def open_cluster(servers: ServerList, timeout: float, **options: Any) -> Cluster:
    """A Cluster over ``servers`` that stores values as raw bytes (what the CLI reads and writes)."""
    options.setdefault("pack_type", KT_PACKER_BYTES)
    options.setdefault("retry", RetryPolicy(attempts=2, deadline=timeout))
    return Cluster(servers.nodes, weights=servers.weights, hash_tags=servers.hash_tags, timeout=timeout,
                   connect_timeout=timeout, **options)
