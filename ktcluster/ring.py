"""The consistent-hashing ring: which node owns a key.

A :class:`Ring` is an immutable ketama continuum (libketama's algorithm, built
by uhashring in ``hash_fn="ketama"`` mode: 40 point groups of 4 points per node,
scaled by weight) over node **names**.  Names, not addresses, are hashed, so a
box can be replaced without moving keys; with names equal to ``"host:port"``
the ring agrees with libketama clients configured with the same servers.

Keys are hashed as the bytes the client stores them as
(:func:`ktcluster.keys.key_bytes`: ``str`` as UTF-8, ``bytes`` as
themselves), so ``"a"`` and ``b"a"`` land on the same node.  (uhashring itself
hashes ``str(key)``, which would turn ``b"a"`` into the text ``"b'a'"``, so
lookups are done here, on the continuum uhashring built.)  A key owns the
first point at or after its hash, wrapping at 2**32 (libketama's rule).

Weights are relative: a node gets ``floor(40 * n * weight / sum(weights))``
point groups, so changing one weight (or the node count) rebuilds the whole
continuum and can move keys between untouched nodes.  :meth:`Ring.diff`
measures that exactly before a change is applied.

**Hash tags** (opt-in, ``Ring(nodes, hash_tags=True)``) follow Redis Cluster's
rule: when a key holds a ``{`` followed later by a ``}`` with at least one byte
between them, only the bytes between the first ``{`` and the first ``}`` after
it are hashed, so ``{user:42}:cart`` and ``{user:42}:profile`` share a node.
A key without such a tag (``{}x``, ``x{y``) is hashed whole.  Every client of a
cluster must agree on the setting, as on names and weights.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from uhashring import HashRing

from .errors import ArgumentError
from .keys import Key, key_bytes

try:  # CPython's built-in MD5 is about twice as fast as OpenSSL's on key-sized inputs
    from _md5 import md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - interpreters built without it
    from hashlib import md5

__all__ = ["Key", "Ring", "RingDiff", "key_hash", "hash_tag", "VNODES", "REPLICAS"]

#: libketama's constants: point groups per node (at equal weights), points per group.
VNODES = 40
REPLICAS = 4
_SPACE = 1 << 32
_LE32 = struct.Struct("<I").unpack_from
_digest = type(md5(b"")).digest
#: :meth:`Ring.partition`'s table entry for a 65,536-hash slice that holds a point (owners differ)
_SHARED = 0xFFFF
T = TypeVar("T")


def key_hash(key: Key) -> int:
    """libketama's ``ketama_hashi``: the first 4 bytes of MD5(key), little-endian."""
    return _LE32(md5(key_bytes(key)).digest())[0]


def hash_tag(kb: bytes) -> bytes:
    """The bytes of a key that a ring with hash tags hashes: the non-empty text between
    the first ``{`` and the first ``}`` after it, else the whole key."""
    start = kb.find(b"{")
    if start >= 0:
        end = kb.find(b"}", start + 1)
        if end > start + 1:
            return kb[start + 1:end]
    return kb


@dataclass(frozen=True)
class RingDiff:
    """How ownership of the hash space changes from one ring to another.

    ``moved`` is the fraction of all keys (of the 2**32 hash space) that change
    node; ``flows`` maps ``(old_node, new_node)`` to the fraction moving along
    that edge; ``before``/``after`` give each node's share.
    """

    moved: float
    flows: dict[tuple[str, str], float]
    before: dict[str, float]
    after: dict[str, float]

    def __str__(self) -> str:
        lines = [f"{self.moved:.2%} of keys move"]
        for (src, dst), share in sorted(self.flows.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {src} -> {dst}: {share:.2%}")
        return "\n".join(lines)


class Ring:
    """An immutable ketama ring over named nodes.

    ``nodes`` is an iterable of names (all weight 1) or a mapping name -> weight
    (a positive int); ``hash_tags`` hashes only a key's ``{tag}`` (see the module
    docstring).  Derive changed rings with :meth:`with_node` / :meth:`without_node`
    (they keep ``hash_tags``); compare them with :meth:`diff`.
    """

    __slots__ = ("_weights", "_points", "_owners", "hash_tags", "_table", "_names", "_codes")

    def __init__(self, nodes: Iterable[str] | Mapping[str, int], *, hash_tags: bool = False) -> None:
        weights = dict(nodes) if isinstance(nodes, Mapping) else {name: 1 for name in nodes}
        if not weights:
            raise ArgumentError("a ring needs at least one node")
        for name, weight in weights.items():
            if not isinstance(name, str) or not name:
                raise ArgumentError(f"node names must be non-empty strings, got {name!r}")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ArgumentError(f"weight of node {name!r} must be a positive int, got {weight!r}")
        if len(weights) >= _SHARED:
            raise ArgumentError(f"a ring has at most {_SHARED - 1} nodes")
        self._weights = weights
        self.hash_tags = hash_tags
        built = HashRing(nodes={name: {"weight": w} for name, w in weights.items()},
                         hash_fn="ketama", vnodes=VNODES, replicas=REPLICAS)
        points = built.get_points()
        missing = set(weights) - {name for _, name in points}
        if missing:
            raise ArgumentError(f"weights too small to give nodes any point on the ring: {sorted(missing)}")
        self._points = [p for p, _ in points]
        self._owners = [name for _, name in points]
        #: partition's lookup table (built on first use): see _slices
        self._table: array[int] | None = None
        self._names = list(weights)
        index = {name: i for i, name in enumerate(self._names)}
        #: the owner of each point, as an index into _names
        self._codes = [index[name] for name in self._owners]

    @property
    def nodes(self) -> list[str]:
        """Node names, in configuration order."""
        return list(self._weights)

    @property
    def weights(self) -> dict[str, int]:
        return dict(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, name: object) -> bool:
        return name in self._weights

    def __repr__(self) -> str:
        return f"Ring({self._weights!r}{', hash_tags=True' if self.hash_tags else ''})"

    def node_for(self, key: Key) -> str:
        """The name of the node that owns ``key``."""
        if len(self._weights) == 1:   # every key lives there: skip the hashing, keep the key check
            key_bytes(key)
            return self._owners[0]
        kb = hash_tag(key_bytes(key)) if self.hash_tags else key_bytes(key)
        return self._owners[self._point_of(_LE32(md5(kb).digest())[0])]

    def _point_of(self, h: int) -> int:
        """The index of the point that owns hash ``h``: the first at or after it, wrapping."""
        i = bisect_left(self._points, h)
        return i if i < len(self._points) else 0

    def partition(self, keys: Iterable[T], kbs: Sequence[bytes] | None = None) -> dict[str, list[T]]:
        """``keys`` grouped by owning node, input order kept inside each group (the
        bulk-call hot path; a one-node ring takes the keys as they are).  With ``kbs``
        (the keys' bytes, already encoded, in the same order) ``keys`` may be any items,
        e.g. the indices of the keys in a call.

        The owners are those of :meth:`node_for`, found in bulk: the keys' MD5 digests in
        one buffer, each key's slice of the continuum (its hash's top 16 bits) looked up
        in :meth:`_slices`, and only the keys of the few slices that hold a point placed
        by bisection."""
        items = keys if isinstance(keys, list) else list(keys)
        if len(self._weights) == 1:
            return {self._owners[0]: items}
        if kbs is None:
            kbs = [key_bytes(key) for key in items]
        if self.hash_tags:
            kbs = [hash_tag(kb) for kb in kbs]
        halves = array("H")   # each digest as 8 little-endian 16-bit words; the hash is words 0-1
        halves.frombytes(b"".join(map(_digest, map(md5, kbs))))
        if sys.byteorder == "big":
            halves.byteswap()
        codes = array("H", map(self._slices().__getitem__, halves[1::8]))
        if _SHARED in codes:
            i = codes.index(_SHARED)
            while True:
                codes[i] = self._codes[self._point_of(halves[8 * i] | halves[8 * i + 1] << 16)]
                try:
                    i = codes.index(_SHARED, i + 1)
                except ValueError:
                    break
        groups: list[list[T]] = [[] for _ in self._names]
        appends = [group.append for group in groups]
        for item, code in zip(items, codes, strict=True):
            appends[code](item)
        return {name: group for name, group in zip(self._names, groups, strict=True) if group}

    def _slices(self) -> array[int]:
        """For each of the 65,536 slices of the continuum (hashes sharing their top 16
        bits), the index in ``_names`` of the node that owns every hash of the slice, or
        _SHARED when a point lies in it (its hashes are placed by bisection)."""
        table = self._table
        if table is None:
            table = array("H", [_SHARED]) * 65536
            start = 0                   # the first slice after the previous point's
            for point, code in zip(self._points, self._codes, strict=True):
                top = point >> 16
                if top > start:         # the slices up to this point's belong to its owner
                    table[start:top] = array("H", [code]) * (top - start)
                table[top] = _SHARED
                start = top + 1
            table[start:] = array("H", [self._codes[0]]) * (65536 - start)   # wrap to the first point
            self._table = table
        return table

    def with_node(self, name: str, weight: int = 1) -> Ring:
        """A new ring with ``name`` added (or its weight changed)."""
        return Ring({**self._weights, name: weight}, hash_tags=self.hash_tags)

    def without_node(self, name: str) -> Ring:
        """A new ring without ``name``."""
        if name not in self._weights:
            raise ArgumentError(f"no node named {name!r} in the ring")
        return Ring({n: w for n, w in self._weights.items() if n != name}, hash_tags=self.hash_tags)

    def shares(self) -> dict[str, float]:
        """Each node's exact fraction of the hash space."""
        shares = dict.fromkeys(self._weights, 0.0)
        prev = self._points[-1] - _SPACE
        for point, owner in zip(self._points, self._owners, strict=True):
            shares[owner] += (point - prev) / _SPACE
            prev = point
        return shares

    def diff(self, other: Ring) -> RingDiff:
        """Exactly which fraction of keys would move, and between which nodes, going to ``other``."""
        bounds = sorted(set(self._points) | set(other._points))
        flows: dict[tuple[str, str], float] = {}
        prev = bounds[-1] - _SPACE
        for bound in bounds:
            src, dst = self._owners[self._point_of(bound)], other._owners[other._point_of(bound)]
            if src != dst:
                flows[(src, dst)] = flows.get((src, dst), 0.0) + (bound - prev) / _SPACE
            prev = bound
        return RingDiff(sum(flows.values()), flows, self.shares(), other.shares())
