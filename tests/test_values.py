"""Stored values a client must not trust (issue 12, bugs 1 and 2), against the server under
test (embedded or $KT_SERVER_BIN).

KT has no authentication: anyone who reaches a server can store any bytes.  A Cluster
unpickles nothing unless asked (its default packer is KT_PACKER_BYTES); KyotoTycoon keeps
ng's pickle default.  A value that does not decode raises ValueDecodeError naming its key
(and node); a get_bulk returns the records that decode and reports the others per key; a
value the packer cannot store is an ArgumentError, before anything is sent."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktcluster import (
    KT_PACKER_BYTES,
    KT_PACKER_CUSTOM,
    KT_PACKER_JSON,
    KT_PACKER_PICKLE,
    KT_PACKER_STRING,
    ArgumentError,
    Cluster,
    KyotoTycoon,
    MemcachePacker,
    PartialFailureError,
    ValueDecodeError,
)
from ktcluster.testing import KTServer, start_cluster


class _Exploit:
    """Unpickling it creates a directory: proof that the reader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(2) as srvs:
        yield srvs


@pytest.fixture
def raw(servers) -> Iterator[dict[str, KyotoTycoon]]:
    """A bytes client per server (address -> client), to store what a hostile writer would."""
    clients = {s.address: KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(s.host, s.port) for s in servers}
    yield clients
    for kt in clients.values():
        kt.clear()
        kt.close()


def store(cluster: Cluster, raw: dict[str, KyotoTycoon], records: dict[str, bytes]) -> None:
    """Write raw bytes where ``cluster`` looks for each key (over HTTP, as a REST PUT)."""
    for key, value in records.items():
        raw[cluster.nodes[cluster.node_for(key)]].set(key, value)


def test_a_cluster_unpickles_nothing_unless_asked(servers, raw, tmp_path):
    """Issue 12, bug 1: one crafted record used to run code in every Cluster reader."""
    marker = tmp_path / "pwned"
    crafted = pickle.dumps(_Exploit(marker), 2)
    with Cluster([s.address for s in servers]) as cluster:
        store(cluster, raw, {"evil": crafted, "fine": b"plain"})
        assert cluster.get("evil") == crafted                           # binary get
        assert cluster.get_bulk(["evil", "fine"]) == {"evil": crafted, "fine": b"plain"}
        assert dict(cluster.iterate())["evil"] == crafted               # cursors
        assert cluster.get_with_expiry("evil") == (crafted, None)
        assert cluster.seize("evil") == crafted                         # RPC
        assert not marker.exists()
        cluster.set("text", "é")                                        # str is stored as UTF-8
        assert cluster.get("text") == "é".encode()
    with Cluster([s.address for s in servers], binary=False) as cluster:
        store(cluster, raw, {"evil": crafted})
        assert cluster.get("evil") == crafted                           # REST get
        assert not marker.exists()
    with Cluster([s.address for s in servers], pack_type=KT_PACKER_PICKLE) as trusting:
        trusting.get("evil")                                            # pickle runs code: only when asked for
        assert marker.exists()


def test_kyototycoon_keeps_ngs_pickle_default(servers):
    kt = KyotoTycoon().connect(servers[0].host, servers[0].port)
    assert kt.pack_type == KT_PACKER_PICKLE                              # a drop-in reads what ng wrote
    kt.set("obj", {"a": (1, 2)})
    assert kt.get("obj") == {"a": (1, 2)}
    kt.close()


@pytest.mark.parametrize("binary", [False, True], ids=["http", "binary"])
@pytest.mark.parametrize("pack_type, bad, cause", [
    (KT_PACKER_PICKLE, b"not a pickle", pickle.UnpicklingError),
    (KT_PACKER_JSON, b"{not json", json.JSONDecodeError),
    (KT_PACKER_STRING, b"\xff\xfe", UnicodeDecodeError),
], ids=["pickle", "json", "string"])
def test_a_value_that_does_not_decode_is_a_typed_error_naming_its_key(servers, raw, binary, pack_type, bad, cause):
    """Issue 12, bug 2: a bare UnpicklingError/JSONDecodeError/UnicodeDecodeError before."""
    srv = servers[0]
    raw[srv.address].set("bad", bad)
    kt = KyotoTycoon(binary=binary, pack_type=pack_type).connect(srv.host, srv.port)
    calls = [kt.get, kt.get_with_expiry] + ([] if binary else [kt.seize])
    for call in calls:
        with pytest.raises(ValueDecodeError) as info:
            call("bad")
        err = info.value
        assert err.key == "bad" and err.raw == bad and isinstance(err.__cause__, cause)
        assert isinstance(err, ValueError) and "'bad'" in str(err)
    kt.close()


def test_cursors_and_cluster_calls_name_the_key_and_node(servers, raw):
    with Cluster({"a": servers[0].address, "b": servers[1].address}, pack_type=KT_PACKER_JSON) as cluster:
        store(cluster, raw, {"bad": b"\x80", "good": b"1"})
        node = cluster.node_for("bad")
        with pytest.raises(ValueDecodeError) as info:
            cluster.get("bad")
        assert (info.value.key, info.value.node) == ("bad", node)
        with pytest.raises(ValueDecodeError) as info:
            dict(cluster.iterate())
        assert (info.value.key, info.value.node) == ("bad", node)
        with cluster.cursor(node) as cur:
            cur.jump("bad")
            with pytest.raises(ValueDecodeError) as info:
                cur.get_value()
            assert info.value.key is None and info.value.raw == b"\x80"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "http"])
def test_a_bulk_read_returns_the_good_records_and_reports_the_bad_keys(servers, raw, binary):
    """Issue 12, bug 2: one bad value failed its node's whole share (113 keys listed as
    failed, 87 of 199 good records returned)."""
    keys = [f"k{i}" for i in range(200)]
    with Cluster({"a": servers[0].address, "b": servers[1].address}, pack_type=KT_PACKER_JSON,
                 binary=binary) as cluster:
        records = {key: json.dumps(i).encode() for i, key in enumerate(keys)}
        records["k7"] = b"{not json"
        store(cluster, raw, records)
        with pytest.raises(PartialFailureError) as info:
            cluster.get_bulk(keys)
        err = info.value
        assert err.results == {key: i for i, key in enumerate(keys) if key != "k7"}   # in the caller's order
        assert list(err.results) == [key for key in keys if key != "k7"]
        assert err.failed_keys == [] and err.errors == {}
        assert list(err.key_errors) == ["k7"]
        assert err.key_errors["k7"].node == cluster.node_for("k7") and err.key_errors["k7"].raw == b"{not json"
        neighbour = next(key for key in keys if key != "k7" and cluster.node_for(key) == cluster.node_for("k7"))
        host, port = cluster.nodes[cluster.node_for("k7")].rsplit(":", 1)
        kt = KyotoTycoon(binary=binary, pack_type=KT_PACKER_JSON).connect(host, int(port))
        with pytest.raises(PartialFailureError) as info:                        # one server alike
            kt.get_bulk(["k7", neighbour, "missing"])
        assert info.value.results == {neighbour: keys.index(neighbour)} and list(info.value.key_errors) == ["k7"]
        kt.close()


@pytest.mark.parametrize("pack_type", [KT_PACKER_STRING, KT_PACKER_BYTES])
@pytest.mark.parametrize("binary", [False, True], ids=["http", "binary"])
def test_a_value_the_packer_cannot_store_is_an_argument_error(servers, pack_type, binary):
    """Issue 12, bug 2: set("k", 5) with the string packer raised AttributeError."""
    srv = servers[0]
    kt = KyotoTycoon(binary=binary, pack_type=pack_type).connect(srv.host, srv.port)
    calls = [lambda: kt.set("k", 5), lambda: kt.set_bulk({"k": 5, "j": "fine"})]
    if not binary:
        calls += [lambda: kt.add("k", 5), lambda: kt.replace("k", 5), lambda: kt.cas("k", None, 5)]
    for call in calls:
        with pytest.raises(ArgumentError) as info:
            call()
        assert info.value.request_sent is False and "int" in str(info.value)
    assert kt.get("k") is None and kt.get("j") is None
    with Cluster([srv.address]) as cluster:
        with pytest.raises(ArgumentError):
            cluster.set("k", 5)
    kt.close()


def test_a_gzip_bomb_does_not_inflate_past_the_limit(servers, raw):
    """A 50 KB value that inflates to 64 MiB, read through the memcached packer with gzip."""
    srv = servers[0]
    raw[srv.address].set("bomb", gzip.compress(bytes(64 << 20)) + b"\0\0\0\1")   # flags: gzip bit 1
    packer = MemcachePacker(gzip_enabled=True, max_size=1 << 20)
    kt = KyotoTycoon(pack_type=KT_PACKER_CUSTOM, custom_packer=packer).connect(srv.host, srv.port)
    with pytest.raises(ValueDecodeError) as info:
        kt.get("bomb")
    assert isinstance(info.value.__cause__, ValueError) and "inflates" in str(info.value)
    kt.set("fine", b"x" * 5000)                                                      # gzipped on the way in
    assert kt.get("fine") == b"x" * 5000 and len(raw[srv.address].get("fine")) < 200
    kt.close()
