"""The ring document: one cluster's ring, shared by every client process through its nodes.

A live migration needs every client (a gunicorn fleet, workers, the CLI) to agree on
which ring is in force.  The agreement lives on the nodes themselves: each node holds,
in DB 0 under the reserved key :data:`RING_KEY`, the same JSON document

    {"format": 1, "version": 7, "phase": "migrate", "since": 1765130000.0,
     "nodes": {"kt1": ["10.0.0.1:1978", 1], ...},      # the ring keys move from
     "target": {"kt1": ["10.0.0.1:1978", 1], ...},     # the ring they move to (null when stable)
     "hash_tags": false, "refresh": 5.0, "max_call": 10.0}

* ``version`` grows by one with every change; a reader takes the highest version any
  node answers, so a change written to some nodes only (a publisher that died midway)
  is already in force for every reader that reaches one of them.
* ``phase`` is :data:`STABLE` (``target`` is null), :data:`PREPARE` or :data:`MIGRATE`
  (see :mod:`ktcluster.migration` for what each means to a client).
* ``refresh`` is the longest a client may use a document without reading it again, and
  ``max_call`` the longest a client call may last (a client caps its call deadline to
  it): together they bound how long after a publication a client can still act on the
  previous version (``grace()``, see :mod:`ktcluster.migration`).
* ``since`` is when the publisher finished writing this version (epoch seconds, the
  publisher's clock): a resumed publisher waits out the rest of the grace from it.

A change is written node after node with a compare-and-swap against what each node
held (an ``add`` where it held nothing), the nodes of the ring in force first in name
order, so of two publishers starting from the same version only one gets past the
first node.  The functions here are sans-IO operations of :mod:`ktcluster.ops`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import LogicalInconsistencyError
from .ops import Op, Session, read_raw, rpc, xt_params
from .ring import Ring

__all__ = ["RING_KEY", "STABLE", "PREPARE", "MIGRATE", "RingDoc", "read_doc", "write_doc",
           "DEFAULT_REFRESH", "DEFAULT_MAX_CALL"]

#: the reserved key (in DB 0 of every node) that holds the ring document
RING_KEY = b"__ktcluster:ring__"
STABLE, PREPARE, MIGRATE = "stable", "prepare", "migrate"
PHASES = (STABLE, PREPARE, MIGRATE)
#: defaults written into a new document: seconds between reads, the longest call
DEFAULT_REFRESH = 5.0
DEFAULT_MAX_CALL = 10.0
#: slack added to the grace for scheduling delays between a read and the call it serves
GRACE_SLACK = 1.0

Nodes = dict[str, tuple[str, int]]


@dataclass(frozen=True)
class RingDoc:
    """One version of the ring document (see the module docstring)."""

    nodes: Nodes
    target: Nodes | None = None
    phase: str = STABLE
    version: int = 0
    hash_tags: bool = False
    refresh: float = DEFAULT_REFRESH
    max_call: float = DEFAULT_MAX_CALL
    since: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        if self.phase not in PHASES or (self.phase == STABLE) != (self.target is None):
            raise ValueError(f"ring document: phase {self.phase!r} with target {self.target!r}")
        if not self.nodes or not all(math.isfinite(x) and x > 0 for x in (self.refresh, self.max_call)):
            raise ValueError("ring document: no nodes, or a refresh/max_call that is not a positive number")

    def ring(self) -> Ring:
        """The ring keys move from (the ring in force when stable)."""
        return Ring({name: weight for name, (_, weight) in self.nodes.items()}, hash_tags=self.hash_tags)

    def target_ring(self) -> Ring | None:
        if self.target is None:
            return None
        return Ring({name: weight for name, (_, weight) in self.target.items()}, hash_tags=self.hash_tags)

    def addresses(self) -> dict[str, str]:
        """Every node either ring names -> its address (the ring keys move from first)."""
        return {name: address for name, (address, _) in {**self.nodes, **(self.target or {})}.items()}

    def grace(self) -> float:
        """How long after this version is published every client has stopped acting on an
        older one: a client re-reads within ``refresh`` and no call lasts over ``max_call``.
        Version 1, the first one written, follows clients that had no document: they
        re-read every DEFAULT_REFRESH and cap their calls to DEFAULT_MAX_CALL."""
        grace = self.refresh + self.max_call
        if self.version == 1:
            grace = max(grace, DEFAULT_REFRESH + DEFAULT_MAX_CALL)
        return grace + GRACE_SLACK

    def next(self, phase: str, **changes: Any) -> RingDoc:
        """The following version in ``phase`` (``since`` is set when it is published)."""
        return replace(self, phase=phase, version=self.version + 1, since=0.0, **changes)

    def encode(self) -> bytes:
        def ring(nodes: Nodes | None) -> dict[str, list[Any]] | None:
            return None if nodes is None else {name: [address, weight] for name, (address, weight) in nodes.items()}
        return json.dumps({"format": 1, "version": self.version, "phase": self.phase, "since": self.since,
                           "nodes": ring(self.nodes), "target": ring(self.target), "hash_tags": self.hash_tags,
                           "refresh": self.refresh, "max_call": self.max_call}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RingDoc:
        """The document ``raw`` holds; ValueError when it is not one."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != 1:
                raise ValueError("not a format-1 ring document")
            return cls(_nodes(data["nodes"]), None if data["target"] is None else _nodes(data["target"]),
                       data["phase"], _int(data["version"]), data["hash_tags"] is True, float(data["refresh"]),
                       float(data["max_call"]), float(data["since"]))
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{RING_KEY.decode()} holds no valid ring document ({exc})") from None

    @classmethod
    def of(cls, nodes: Mapping[str, str], weights: Mapping[str, int], **options: Any) -> RingDoc:
        """A stable version-0 document for the ring ``nodes`` (name -> address)."""
        return cls({name: (address, weights.get(name, 1)) for name, address in nodes.items()}, **options)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"bad version {value!r}")
    return value


def _nodes(data: Any) -> Nodes:
    if not isinstance(data, dict) or not data:
        raise ValueError("a ring needs nodes")
    nodes: Nodes = {}
    for name, entry in data.items():
        address, weight = entry
        if not isinstance(address, str) or isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"bad node entry {name!r}: {entry!r}")
        nodes[name] = (address, weight)
    return nodes


# -- on a node ------------------------------------------------------------------------------------


def read_doc(s: Session) -> Op[tuple[bytes, RingDoc] | None]:
    """The raw document a node holds and what it says, or None when it holds none.
    ValueError when the reserved key holds something else."""
    rec = yield from read_raw(s, RING_KEY, 0)
    if rec is None:
        return None
    return rec[0], RingDoc.decode(rec[0])


def write_doc(s: Session, held: bytes | None, doc: RingDoc) -> Op[bool]:
    """Replace the document the node holds (``held``: its raw bytes, None for none) by
    ``doc``; False when the node holds anything else (another publisher was first)."""
    params = [(b"key", RING_KEY)]
    params += [(b"value", doc.encode())] if held is None else [(b"oval", held), (b"nval", doc.encode())]
    try:
        yield from rpc(s, b"add" if held is None else b"cas", xt_params(params, None))
    except LogicalInconsistencyError:
        return False
    return True


def stamped(doc: RingDoc) -> RingDoc:
    """``doc`` with ``since`` set to now (what a publisher writes)."""
    return replace(doc, since=time.time())
