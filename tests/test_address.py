"""ktcluster.address: how a Cluster's servers and a ReplicationStream's masters are read."""

from __future__ import annotations

import pytest

from ktcluster.address import DEFAULT_PORT, named_addresses, parse_address
from ktcluster.cluster import Cluster
from ktcluster.errors import ArgumentError
from ktcluster.replication import ReplicationStream


def test_named_addresses():
    assert named_addresses(["h:1", ("g", 2), "[::1]:3"]) == [("h:1", "h", 1), ("g:2", "g", 2), ("::1:3", "::1", 3)]
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
