"""ktcluster.address: how a Cluster's servers and a ReplicationStream's masters are read."""

from __future__ import annotations

import pytest

from ktcluster.address import DEFAULT_PORT, format_address, named_addresses, parse_address
from ktcluster.cluster import Cluster
from ktcluster.errors import ArgumentError
from ktcluster.replication import ReplicationStream


def test_named_addresses():
    assert named_addresses(["h:1", ("g", 2), "[::1]:3"]) == [("h:1", "h", 1), ("g:2", "g", 2), ("[::1]:3", "::1", 3)]
    assert named_addresses({"a": "h:1", "b": "h"}) == [("a", "h", 1), ("b", "h", DEFAULT_PORT)]
    assert parse_address("h") == ("h", DEFAULT_PORT)
    for bad, message in [("h:1", "masters must be a list of addresses"), (b"h:1", "masters must be"),
                         ([], "at least one master"), (["h:1", ("h", 1)], "duplicate master names"),
                         ({"a": "h:x"}, "bad port"), ([("h",)], "an address is"),
                         (None, "masters must be"), (1978, "masters must be")]:
        with pytest.raises(ArgumentError, match=message):
            named_addresses(bad, "master")


def test_clusters_and_replication_streams_read_their_servers_alike():
    with pytest.raises(ArgumentError, match="duplicate server names"):
        Cluster(["h:1", "h:1"])
    with pytest.raises(ArgumentError, match="duplicate master names"):
        ReplicationStream(["h:1", "h:1"], sid=1)
    with pytest.raises(ArgumentError, match="at least one master"):
        ReplicationStream({}, sid=1)


def test_ipv6_addresses():
    """A bare IPv6 address is a host on the default port (it used to read "::1" as host
    ":" and port 1; a bracketed one keeps its port; names and Host headers write IPv6
    back in brackets, so that they parse again."""
    assert parse_address("::1") == ("::1", DEFAULT_PORT)
    assert parse_address("fe80::1:2") == ("fe80::1:2", DEFAULT_PORT)
    assert parse_address("2001:db8::7") == ("2001:db8::7", DEFAULT_PORT)
    assert parse_address("[::1]:1979") == ("::1", 1979)
    assert parse_address("[::1]") == ("::1", DEFAULT_PORT)
    assert parse_address(("::1", 1979)) == ("::1", 1979)
    assert parse_address("h:1979") == ("h", 1979)
    for host, port in [("::1", 1979), ("10.0.0.1", 1), ("kt1", 65535)]:
        assert parse_address(format_address(host, port)) == (host, port)
    assert format_address("::1", 1979) == "[::1]:1979"
    for bad, message in [("1:2:x", "write an IPv6 address with a port as"), ("[::1", "bracketed host"),
                         ("[::1]x", "bracketed host"), ("[::1]:", "bad port"), ("h:+1", "bad port"),
                         ("h: 1", "bad port"), ("h:", "bad port"), ("h:0", "bad address"), ("h:65536", "bad address"),
                         ("h:\u0661", "bad port")]:
        with pytest.raises(ArgumentError, match=message):
            parse_address(bad)
