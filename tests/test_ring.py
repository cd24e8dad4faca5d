"""The ketama ring: libketama parity, key normalisation, weights and exact ring diffs.

``LibKetama`` below is an independent transcription of libketama's algorithm
(RJ/ketama ``ketama.c``: ``ketama_create_continuum``, ``ketama_hashi``,
``ketama_get_server``), including its float arithmetic for weights and its
binary search, written without uhashring.  ``ring_vectors.json`` holds key ->
node vectors it produced; regenerate with ``python tests/test_ring.py``.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from hashlib import md5
from pathlib import Path

import pytest
from uhashring import HashRing

from ktcluster.errors import InvalidArgumentError
from ktcluster.keys import key_bytes
from ktcluster.ring import Ring, key_hash

VECTORS = Path(__file__).with_name("ring_vectors.json")

CONFIGS = {
    "memcached-style": {"10.0.1.1:11211": 1, "10.0.1.2:11211": 1, "10.0.1.3:11211": 1},
    "named-weighted": {"kt1": 1, "kt2": 2, "kt3": 3, "kt4": 4},
    "ten-nodes": {f"node{i:02d}": 1 for i in range(10)},
    "memory-weights": {"a:1978": 600, "b:1978": 1024, "c:1978": 2048, "d:1978": 700},
}


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


class LibKetama:
    """libketama, transcribed: ``servers`` is a list of (addr, memory)."""

    def __init__(self, servers: list[tuple[str, int]]) -> None:
        memory = sum(m for _, m in servers)
        n = len(servers)
        continuum = []
        for addr, mem in servers:
            pct = _f32(_f32(float(mem)) / _f32(float(memory)))      # float pct = (float)m / (float)memory
            ks = int(_f32(pct * 40.0 * float(n)) // 1)              # floorf(pct * 40.0 * (float)n)
            for k in range(ks):
                digest = md5(f"{addr}-{k}".encode()).digest()      # sprintf("%s-%d") + md5
                for h in range(4):
                    point = (digest[3 + h * 4] << 24) | (digest[2 + h * 4] << 16) \
                        | (digest[1 + h * 4] << 8) | digest[h * 4]
                    continuum.append((point, addr))
        continuum.sort(key=lambda p: p[0])                          # qsort by point
        self.points = continuum

    @staticmethod
    def hashi(key: bytes) -> int:
        d = md5(key).digest()
        return (d[3] << 24) | (d[2] << 16) | (d[1] << 8) | d[0]

    def get_server(self, key: bytes) -> str:
        """ketama_get_server's divide-and-conquer search, as written in C."""
        h = self.hashi(key)
        num = len(self.points)
        lowp, highp = 0, num
        while True:
            midp = (lowp + highp) // 2
            if midp == num:
                return self.points[0][1]
            midval = self.points[midp][0]
            midval1 = 0 if midp == 0 else self.points[midp - 1][0]
            if midval1 < h <= midval:
                return self.points[midp][1]
            if midval < h:
                lowp = midp + 1
            else:
                highp = midp - 1
            if lowp > highp:
                return self.points[0][1]


def _sample_keys() -> list[bytes]:
    keys = [f"key{i}".encode() for i in range(60)]
    keys += ["ключ", "clé", "日本語のキー", "a", "", "user:1234:profile", "b'a'"]
    keys = [k if isinstance(k, bytes) else k.encode() for k in keys]
    rnd = random.Random(1978)
    keys += [bytes(rnd.randrange(1, 256) for _ in range(rnd.randrange(1, 24))) for _ in range(30)]
    return keys


def generate_vectors() -> dict:
    out = {}
    for name, weights in CONFIGS.items():
        ref = LibKetama(list(weights.items()))
        out[name] = {"nodes": weights, "vectors": [[k.hex(), ref.get_server(k)] for k in _sample_keys()]}
    return out


def test_vectors_file_matches_the_reference_implementation():
    assert json.loads(VECTORS.read_text()) == generate_vectors()


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_ring_matches_libketama_vectors(config):
    data = json.loads(VECTORS.read_text())[config]
    ring = Ring(data["nodes"])
    for key_hex, node in data["vectors"]:
        assert ring.node_for(bytes.fromhex(key_hex)) == node, key_hex


@pytest.mark.parametrize("seed", range(6))
def test_ring_matches_libketama_on_random_configs(seed):
    rnd = random.Random(seed)
    scale = rnd.choice([1, 100])
    weights = {f"srv{i}.example:{1978 + i}": rnd.choice([1, 1, 2, 3, 5]) * scale for i in range(rnd.randrange(1, 9))}
    ref = LibKetama(list(weights.items()))
    ring = Ring(weights)
    assert Counter(ring._owners) == Counter(a for _, a in ref.points)
    for _ in range(3000):
        key = rnd.randbytes(rnd.randrange(1, 20)).replace(b"\0", b"\1")
        assert ring.node_for(key) == ref.get_server(key)


def test_str_and_bytes_forms_of_a_key_land_on_the_same_node():
    ring = Ring(["kt1", "kt2", "kt3"])
    for text in ["a", "ключ", "user:42", "x" * 300]:
        raw = text.encode("utf-8")
        assert ring.node_for(text) == ring.node_for(raw) == ring.node_for(bytearray(raw)) \
            == ring.node_for(memoryview(raw))
    assert key_hash("a") == key_hash(b"a") != key_hash("b'a'")
    raw = b"\xff\xfekey"           # not UTF-8: read back as str with surrogateescape, it must route alike
    assert ring.node_for(raw.decode("utf-8", "surrogateescape")) == ring.node_for(raw)


def test_uses_uhashring_continuum_for_text_keys():
    nodes = ["kt1", "kt2", "kt3", "kt4"]
    ring, uh = Ring(nodes), HashRing(nodes=nodes, hash_fn="ketama")
    uh_points = set(p for p, _ in uh.get_points())
    for i in range(2000):
        key = f"k{i}"
        if key_hash(key) not in uh_points:   # uhashring picks the point after an exact hit
            assert ring.node_for(key) == uh.get_node(key)


def test_partition_groups_items_like_node_for():
    ring = Ring({"a": 1, "b": 2, "c": 1})
    keys = [f"k{i}" for i in range(500)] + [b"k1", "k1"]
    groups = ring.partition(keys)
    assert sorted(map(repr, (k for g in groups.values() for k in g))) == sorted(map(repr, keys))
    for node, part in groups.items():
        assert all(ring.node_for(k) == node for k in part)
        assert part == [k for k in keys if ring.node_for(k) == node]
    assert Ring(["solo"]).partition(keys) == {"solo": keys}


@pytest.mark.parametrize("nodes", [{"a": 1, "b": 2, "c": 1}, [f"10.0.0.{i}:1978" for i in range(1, 17)]])
def test_partition_agrees_with_node_for_in_shared_slices_and_at_the_wrap(nodes):
    """partition looks most keys up by the top 16 bits of their hash; keys whose 65,536-hash
    slice holds a point, and keys past the last point (they wrap to the first), must still
    land where node_for puts them."""
    ring = Ring(nodes)
    points = ring._points
    tops = {p >> 16 for p in points}
    keys = [f"key:{i}" for i in range(20000)]
    keys += [k for k in (f"wrap:{i}" for i in range(300000)) if key_hash(k) > points[-1]][:5]
    shared = [k for k in keys if key_hash(k) >> 16 in tops]
    assert len(shared) >= 20 and key_hash(keys[-1]) > points[-1]   # both cases are exercised
    groups = ring.partition(range(len(keys)), [k.encode() for k in keys])
    assert {i: node for node, part in groups.items() for i in part} == {
        i: ring.node_for(k) for i, k in enumerate(keys)}
    assert all(part == sorted(part) for part in groups.values())


def test_bad_keys_and_configs_raise_typed_errors():
    ring = Ring(["a"])
    for bad in [1, None, 2.5, ("a",)]:
        with pytest.raises(InvalidArgumentError):
            ring.node_for(bad)
    with pytest.raises(InvalidArgumentError):
        key_bytes(object())
    for nodes in [[], {}, {"a": 0}, {"a": -1}, {"a": 1.5}, {"a": True}, {"": 1}, [1]]:
        with pytest.raises(InvalidArgumentError):
            Ring(nodes)
    with pytest.raises(InvalidArgumentError, match="too small"):
        Ring({"big": 10**6, "tiny": 1})
    with pytest.raises(InvalidArgumentError):
        ring.without_node("zzz")


def test_ring_is_immutable_and_derivations_are_new_rings():
    ring = Ring(["a", "b"])
    bigger = ring.with_node("c", 2)
    assert ring.nodes == ["a", "b"] and bigger.weights == {"a": 1, "b": 1, "c": 2}
    assert bigger.without_node("c").weights == ring.weights
    assert "c" in bigger and "c" not in ring and len(bigger) == 3


def test_shares_sum_to_one_and_follow_weights():
    shares = Ring({"a": 1, "b": 3}).shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert 0.15 < shares["a"] < 0.35


def _empirical_moves(old: Ring, new: Ring, n: int = 40000) -> Counter:
    rnd = random.Random(7)
    moves: Counter = Counter()
    for _ in range(n):
        key = rnd.randbytes(12)
        src, dst = old.node_for(key), new.node_for(key)
        if src != dst:
            moves[(src, dst)] += 1
    return moves


def test_diff_removing_a_node_moves_only_its_keys():
    old = Ring([f"n{i}" for i in range(5)])
    new = old.without_node("n2")
    diff = old.diff(new)
    assert all(src == "n2" for src, _ in diff.flows)
    assert diff.moved == pytest.approx(old.shares()["n2"])
    assert "n2 ->" in str(diff)


def test_diff_adding_a_node_moves_keys_only_to_it():
    old = Ring([f"n{i}" for i in range(4)])
    diff = old.diff(old.with_node("n4"))
    assert {dst for _, dst in diff.flows} == {"n4"}
    assert diff.moved == pytest.approx(diff.after["n4"])


def test_diff_is_exact_and_shows_collateral_movement_of_weight_changes():
    old = Ring({"a": 1, "b": 2, "c": 3, "d": 1})
    new = old.with_node("b", 3)
    diff = old.diff(new)
    moves = _empirical_moves(old, new)
    total = sum(moves.values()) / 40000
    assert total == pytest.approx(diff.moved, abs=0.01)
    for edge, count in moves.items():
        assert count / 40000 == pytest.approx(diff.flows[edge], abs=0.01)
    assert any("b" not in edge for edge in diff.flows)   # relative weights: untouched nodes trade keys


def test_diff_of_identical_rings_is_empty():
    ring = Ring({"a": 1, "b": 2})
    diff = ring.diff(Ring({"a": 1, "b": 2}))
    assert diff.moved == 0 and diff.flows == {}


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(generate_vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {VECTORS}")


# -- hash tags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "tag"), [
    (b"{user:42}:cart", b"user:42"), (b"x{user:42}y{z}", b"user:42"), (b"{a}{b}", b"a"),
    (b"{}user:42", b"{}user:42"), (b"{}{a}", b"{}{a}"), (b"user{", b"user{"), (b"}{a}", b"a"),
    (b"{{a}}", b"{a"), (b"no tag", b"no tag"), (b"", b""),
])
def test_hash_tag_follows_redis_clusters_rule(key: bytes, tag: bytes) -> None:
    from ktcluster.ring import hash_tag
    assert hash_tag(key) == tag


def test_hash_tags_put_a_tags_keys_on_one_node_and_only_when_asked() -> None:
    nodes = [f"node{i}" for i in range(8)]
    plain, tagged = Ring(nodes), Ring(nodes, hash_tags=True)
    keys = [f"{{user:{u}}}:{part}" for u in range(200) for part in ("cart", "profile", "orders")]
    for u in range(200):
        owners = {tagged.node_for(f"{{user:{u}}}:{part}") for part in ("cart", "profile", "orders")}
        assert owners == {tagged.node_for(f"user:{u}")}     # the tag alone hashes as the key would
    assert len({plain.node_for(k) for k in keys[:3]} | {plain.node_for(k) for k in keys[3:30]}) > 1
    spread = Counter(plain.node_for(k) for k in keys)
    assert len(spread) == 8                                  # without the option braces mean nothing
    groups = tagged.partition(keys)
    assert {n: sorted(ks) for n, ks in groups.items()} == \
        {n: sorted(k for k in keys if tagged.node_for(k) == n) for n in groups}
    assert tagged.node_for("no tag") == plain.node_for("no tag")
    grown = tagged.with_node("node8").without_node("node0")
    assert grown.hash_tags and grown.node_for("{a}1") == grown.node_for("{a}2")
    assert "hash_tags=True" in repr(tagged) and "hash_tags" not in repr(plain)
