"""``Cluster``: many KT servers behind one client, sharded by a ketama ring.

    cluster = Cluster(["kt1:1978", "kt2:1978", "kt3:1978"])
    cluster.set_bulk({"a": 1, "b": 2, "c": 3})    # one bulk call per node, all nodes at once
    cluster.get("a")                              # routed to the node that owns "a"

KT is a database, not a cache, so the cluster never moves a key on its own:

* **Routing** -- each key has exactly one node, ``node_for(key)`` (see
  :mod:`ktcluster.ring`).  The ring changes only through :meth:`add_node` /
  :meth:`remove_node`, which swap in a new immutable topology and report the
  share of keys that moves (:class:`~ktcluster.ring.RingDiff`; moving the data
  is the operator's job), or, with ``shared_ring=True``, through the ring
  document the nodes hold (:mod:`ktcluster.ringdoc`), re-read at least every
  ``refresh`` seconds it names; while it says a migration is under way, keys whose
  owner changes are routed by :mod:`ktcluster.migration`.
* **Dead nodes** -- a per-node circuit breaker (:mod:`ktcluster.health`) turns
  a dead node into fast :class:`~ktcluster.errors.NodeDownError` failures for
  its keys only.  With ``failover={"kt1": "kt1b:1978"}`` a down node's traffic
  goes to its configured partner (a KT dual-master pair), for the operation
  classes in ``failover_ops`` (reads and idempotent writes by default).
* **Retries** -- per operation class (:mod:`ktcluster.retry`): reads and
  idempotent writes retry transport errors; increment, append, add, cas, seize
  and play_script retry only when the request provably never left, and
  otherwise raise :class:`~ktcluster.errors.OutcomeUnknownError`.
* **Bulk calls** -- keys are grouped by node, each node gets one bulk call per
  ``bulk_chunk`` records (up to ``bulk_lanes`` of them in flight on their own
  connections), and all nodes run at once under one deadline
  (``retry.deadline``): the caller sends every node its request and reads the replies
  as they come (:mod:`ktcluster.scatter`); a node that needs a retry or its
  breaker's trial continues on its own (:mod:`ktcluster.fanout`).  Results keep the caller's key order.
  If some nodes fail, :class:`~ktcluster.errors.PartialFailureError` carries
  what the others did (``results``), each failed node's exception (``errors``)
  and the keys whose outcome is not known to be done (``failed_keys``).
* **Timeouts** -- ``connect_timeout`` bounds a TCP connect, ``timeout`` each
  request's whole exchange (sending it and receiving all of its reply),
  ``pool_timeout`` the wait for a free pooled connection (5 s each by default),
  and ``retry.deadline`` (default 10 s) the whole call: no attempt starts after
  it, and every attempt carries it down to the socket, so each wait ends by it
  (even in a thread, where a blocked socket cannot be interrupted, and against
  a server that trickles its reply); a fan-out stops waiting at it (under gevent
  the late shards are interrupted).  Each error says which limit fired:
  :class:`~ktcluster.errors.DeadlineExceeded` for the deadline.
* **Values** -- the default packer is ``KT_PACKER_BYTES`` (bytes in and out,
  ``str`` stored as UTF-8): KT has no authentication, and a cluster unpickles
  what its servers hold only when ``pack_type=KT_PACKER_PICKLE`` asks for it
  (unpickling runs code).  A value that does not decode raises
  :class:`~ktcluster.errors.ValueDecodeError` naming its key and node; in a
  get_bulk, the other records still come back (in ``PartialFailureError.results``).

Each node has one :class:`~ktcluster.transport.Transport` (and so one bounded
connection pool).  A call checks its arguments and encodes its keys (and packs
its values) once, routes them, and runs the operations of :mod:`ktcluster.ops` on
the nodes under one :class:`~ktcluster.deadline.Deadline`: ``_execute`` (retries,
failover) -> ``_guarded`` (the breaker) -> ``Transport.run`` -> the socket.  With
``binary=True`` (the default) get/set/remove and the bulk calls use KT's binary
protocol and everything else HTTP, over the same pool.  A Cluster is safe to share
between threads and between greenlets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, TypeVar

from . import migration, ops
from .address import DEFAULT_PORT, Address, Servers, format_address, named_addresses, parse_address
from .client import ClientCore, KyotoTycoon
from .connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REPLY_SIZE, OWN
from .cursor import Cursor
from .deadline import Deadline
from .errors import (
    ArgumentError,
    KyotoTycoonException,
    NodeDownError,
    PartialFailureError,
    ValueDecodeError,
)
from .expiry import Expire
from .fanout import Fanout
from .health import CircuitBreaker, Health, HealthConfig, Listener
from .keys import DB, Key, KeyT, decode_key, keep_bytes, key_bytes, key_list, keys_bytes
from .migration import Migration
from .observe import find_metrics
from .observe.events import Attempt, Observer, observed
from .observe.events import Call as Observed
from .ops import AUTO, HTTP, Op, Operation, Session
from .packers import KT_PACKER_BYTES, make_packer
from .pool import DEFAULT_POOL_SIZE
from .protocol.kcnum import cstr
from .protocol.kctext import levdist
from .replication import ReplicationStream
from .retry import OpClass, RetryPolicy, op_class
from .ring import Ring, RingDiff
from .ringdoc import DEFAULT_MAX_CALL, DEFAULT_REFRESH, RingDoc, read_doc
from .scatter import scatter
from .transport import Transport, TransportBase

__all__ = ["Cluster", "ClusterCore", "Node", "Address", "DEFAULT_PORT", "DEFAULT_NODE_TIMEOUT"]

T = TypeVar("T")
log = logging.getLogger("ktcluster.cluster")

#: the default socket timeout and pool wait of the nodes' pools (under RetryPolicy's 10 s deadline).
DEFAULT_NODE_TIMEOUT = 5.0

#: what an attempt runs on a node: a function of the node, the call's deadline and the
#: observed attempt (None without an observer), which the transport measures
Call = Callable[["_Member", Deadline, "Attempt | None"], T]


@dataclass(frozen=True)
class Node:
    """A configured node: its ring name, where it listens, and its ring weight."""

    name: str
    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


class _Member:
    """A node at run time: its transport (pool), the session its operations use, its
    breaker, and the single-server client that :meth:`Cluster.client` hands out."""

    __slots__ = ("node", "name", "transport", "session", "breaker", "client", "probe_timeout")

    def __init__(self, node: Node, name: str, transport: Any, session: Session, client: Any,
                 breaker: CircuitBreaker, probe_timeout: float | None) -> None:
        # transport: a Transport (an AsyncTransport in ktcluster.aio), client: its KyotoTycoon
        self.node = node
        self.name = name
        self.transport = transport
        self.session = session
        self.client = client
        self.breaker = breaker
        self.probe_timeout = probe_timeout

    def probe(self, deadline: Deadline) -> Any:
        """A cheap liveness check on a fresh connection (pooled ones may be stale); an
        awaitable with an asyncio transport."""
        return self.transport.probe(self.session, deadline, self.probe_timeout)


def _op(make_op: Callable[[Session], Operation[T]]) -> Call[T]:
    """The attempt that runs an operation of :mod:`ktcluster.ops` on a node."""
    return lambda member, deadline, attempt: member.transport.run(make_op(member.session), deadline, OWN, attempt)


@dataclass(frozen=True)
class _Topology:
    """What one call sees, swapped atomically by add_node/remove_node."""

    ring: Ring
    members: dict[str, _Member]
    partners: dict[str, _Member]
    #: the migration under way (shared_ring only): ``ring`` is then the ring keys move to
    migration: Migration | None = None


class _Watch:
    """shared_ring: the ring document in force (None: none read yet) and when a call must
    read it again (``time.monotonic()``)."""

    __slots__ = ("doc", "due", "lock")

    def __init__(self) -> None:
        self.doc: RingDoc | None = None
        self.due = 0.0
        self.lock = threading.Lock()


class _Shard:
    """What one node did in a bulk call: the results of its completed chunks (by chunk
    index), and its error with the indices (into the call's keys) not known to be done."""

    __slots__ = ("results", "error", "failed")

    def __init__(self) -> None:
        self.results: dict[int, Any] = {}
        self.error: BaseException | None = None
        self.failed: list[int] = []

    def fail(self, exc: BaseException, chunks: list[list[int]], left: Iterable[int]) -> _Shard:
        """The node failed with ``exc``: its ``chunks`` of indices ``left`` are not known
        to be done."""
        self.error = exc
        self.failed = [i for c in left for i in chunks[c]]
        return self


# -- planning and merging (pure) ------------------------------------------------------------------


def plan_bulk(ring: Ring, kbs: Sequence[bytes], chunk: int) -> dict[str, list[list[int]]]:
    """The chunks of a bulk call: per node, lists of at most ``chunk`` indices into
    ``kbs``, in the caller's order."""
    groups = ring.partition(range(len(kbs)), kbs)
    return {node: [idx[i:i + chunk] for i in range(0, len(idx), chunk)] for node, idx in groups.items()}


def _sorted_union(per_node: dict[str, list[Any]], limit: int | None) -> list[Any]:
    merged = sorted({k for keys in per_node.values() for k in keys})
    return merged[:limit] if limit else merged


def _total(per_node: dict[str, int]) -> int:
    return sum(per_node.values())


def _done(per_node: dict[str, Any]) -> bool:
    return True


def _probe(member: _Member, deadline: Deadline, attempt: Attempt | None) -> None:
    """A breaker trial's probe, taking an attempt's arguments (see CircuitBreaker.call)."""
    member.probe(deadline)


def _before_attempt(member: _Member, deadline: Deadline) -> None:
    """DeadlineExceeded (nothing sent) when an attempt would start after the call's deadline."""
    deadline.check("this attempt", member.name)


def _merge(per_node: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sum the numeric fields every node reports; keep each node's dict under "nodes"."""
    merged: dict[str, Any] = {}
    dicts = list(per_node.values())
    for field in dicts[0] if dicts else ():
        values = [d.get(field) for d in dicts]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[field] = sum(values)
    merged["nodes"] = per_node
    return merged


class ClusterCore:
    """A sharded KT cluster; see the module docstring.  (The core both front ends share:
    :class:`Cluster` blocks, :class:`ktcluster.aio.Cluster` awaits; they differ in how a
    call reaches the nodes -- ``_execute``, ``_guarded``, ``_bulk``, ``_each`` and
    ``_then`` -- and in the transports of their nodes.)

    ``servers``: ``"host:port"`` strings or ``(host, port)`` tuples (the node
    name is then ``"host:port"``, as libketama clients name servers), or a
    mapping of node name -> address (names, not addresses, are hashed, so a box
    can be replaced without moving keys).  ``weights`` maps names to positive
    ints (relative; default 1); ``hash_tags=True`` places keys by their ``{tag}``
    (see :mod:`ktcluster.ring`).

    ``binary``, ``pack_type``, ``custom_packer``, ``decode_keys`` and
    ``max_reply_size`` are :class:`~ktcluster.client.KyotoTycoon`'s, except that
    ``pack_type`` defaults to ``KT_PACKER_BYTES`` (values are bytes; a ``str`` is
    stored as UTF-8): pass ``KT_PACKER_PICKLE`` only if every writer to the servers
    is trusted, since unpickling runs code.  ``pool_size``, ``pool_timeout``,
    ``connect_timeout`` and ``timeout`` (5 s each by default, under the deadline)
    configure each node's pool.  ``retry``
    is the :class:`~ktcluster.retry.RetryPolicy` (its ``deadline`` bounds every
    call, fan-outs included), ``health`` the breaker tuning, ``on_node_event``
    a callback ``(node, old_state, new_state, error)`` for breaker changes.
    ``failover`` maps a node name to the address of its partner; ``bulk_chunk``
    caps the records per bulk request; ``bulk_lanes`` is how many of a node's bulk
    requests may be in flight at once, each on its own connection (one more only when
    the pool has it free: never at the expense of another caller); ``fanout_workers`` bounds the threads
    running one node's shards when gevent is not active (default: ``pool_size``,
    as a node cannot serve more at once; each node has its own threads, so a slow
    node never delays another node's shards).

    ``shared_ring=True`` makes the ring document on the nodes (written by ``ktcluster
    rebalance``) the source of the ring: ``servers`` (and ``weights``, ``hash_tags``)
    are then the ring used until a node holding a document answers, and the only way
    in.  The document is re-read when a call finds the last read older than its
    ``refresh`` period (``ringdoc.DEFAULT_REFRESH`` before one was read), and every
    call's deadline is capped to its ``max_call`` (``DEFAULT_MAX_CALL`` before).
    """

    def __init__(self, servers: Servers, *, binary: bool = True,
                 pack_type: int = KT_PACKER_BYTES, custom_packer: Any = None, decode_keys: bool = True,
                 weights: Mapping[str, int] | None = None, hash_tags: bool = False, pool_size: int = DEFAULT_POOL_SIZE,
                 pool_timeout: float | None = DEFAULT_NODE_TIMEOUT,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 timeout: float | None = DEFAULT_NODE_TIMEOUT, retry: RetryPolicy | None = None,
                 health: HealthConfig | None = None, on_node_event: Listener | None = None,
                 failover: Mapping[str, Address] | None = None,
                 failover_ops: Iterable[OpClass] = (OpClass.READ, OpClass.IDEMPOTENT),
                 bulk_chunk: int = 1000, bulk_lanes: int = 4, fanout_workers: int | None = None,
                 max_reply_size: int = DEFAULT_MAX_REPLY_SIZE, shared_ring: bool = False,
                 observer: Observer | None = None) -> None:
        if bulk_chunk < 1 or bulk_lanes < 1:
            raise ArgumentError("bulk_chunk and bulk_lanes must be at least 1")
        self.binary = binary
        self.retry = retry or RetryPolicy()
        #: receives an event per attempt, breaker change and pool exhaustion (:mod:`ktcluster.observe`)
        self.observer = observer
        self.health = Health(health, on_node_event, observer)
        self.failover_ops = frozenset(failover_ops)
        self.bulk_chunk = bulk_chunk
        self.bulk_lanes = bulk_lanes
        self._client_options = dict(pack_type=pack_type, custom_packer=custom_packer, decode_keys=decode_keys,
                                    max_reply_size=max_reply_size)
        self._pool_options = dict(size=pool_size, pool_timeout=pool_timeout, connect_timeout=connect_timeout,
                                  timeout=timeout, max_reply_size=max_reply_size)
        #: the session the cluster checks arguments and decodes values with (every node's
        #: has the same packer)
        self._session = Session(make_packer(pack_type, custom_packer), decode_key if decode_keys else keep_bytes,
                                b"", AUTO if binary else HTTP, max_reply_size=max_reply_size)
        self._probe_timeout = 1.0 if timeout is None else min(timeout, 1.0)
        self._fanout: Fanout[str] = Fanout(pool_size if fanout_workers is None else fanout_workers)
        self._reconfigure = threading.Lock()
        self._counters = {"retries": 0, "failovers": 0, "partial_failures": 0}
        self._counter_lock = threading.Lock()
        nodes = self._parse_servers(servers, weights or {})
        members = {n.name: self._member(n, n.name) for n in nodes}
        partners = {}
        for name, address in (failover or {}).items():
            if name not in members:
                raise ArgumentError(f"failover names unknown node {name!r}")
            host, port = parse_address(address)
            partner = Node(format_address(host, port), host, port)
            partners[name] = self._member(partner, f"{name}~{partner.address}")
        self._topology = _Topology(Ring({n.name: n.weight for n in nodes}, hash_tags=hash_tags), members, partners)
        #: the longest a call may last (with shared_ring: the ring document's max_call at most)
        self._call_limit = min(self.retry.deadline, DEFAULT_MAX_CALL) if shared_ring else self.retry.deadline
        #: shared_ring: the document in force (None: none read yet) and when to read it again
        self._watch: _Watch | None = _Watch() if shared_ring else None

    @staticmethod
    def _parse_servers(servers: Servers, weights: Mapping[str, int]) -> list[Node]:
        named = named_addresses(servers, "server")
        unknown = set(weights) - {name for name, _, _ in named}
        if unknown:
            raise ArgumentError(f"weights for unknown nodes: {sorted(unknown)}")
        return [Node(name, host, port, weights.get(name, 1)) for name, host, port in named]

    #: the transport of a node, and the single-server client that :meth:`client` hands out
    _transport_type: type[TransportBase] = Transport
    _client_type: type[ClientCore[Any]] = KyotoTycoon

    def _member(self, node: Node, name: str) -> _Member:
        transport = self._transport_type(node.host, node.port, **self._pool_options)  # type: ignore[arg-type]
        session = self._session.derive(host=transport.host_header, db_names=transport.db_names)
        client = self._client_type._over(transport, wire=HTTP, **self._client_options)
        return _Member(node, name, transport, session, client, self.health[name], self._probe_timeout)

    # -- topology ---------------------------------------------------------------------------------

    @property
    def ring(self) -> Ring:
        """The current ring (immutable)."""
        return self._topology.ring

    @property
    def nodes(self) -> dict[str, str]:
        """Node name -> ``"host:port"``, in configuration order."""
        return {name: m.node.address for name, m in self._topology.members.items()}

    def node_for(self, key: Key) -> str:
        """The name of the node that owns ``key``."""
        return self._topology.ring.node_for(key)

    def client(self, node: str) -> KyotoTycoon:
        """The single-server client of a node (HTTP; shares the node's pool)."""
        return self._member_named(node).client

    def _member_named(self, node: str) -> _Member:
        member = self._topology.members.get(node)
        if member is None:
            raise ArgumentError(f"no node named {node!r}; nodes: {list(self._topology.members)}")
        return member

    def add_node(self, name: str, address: Address | None = None, weight: int = 1, *,
                 dry_run: bool = False) -> RingDiff:
        """Add a node (``address`` defaults to ``name``) or change its weight; returns the
        ring diff.  With ``dry_run`` nothing changes.  No data is moved."""
        with self._reconfigure:
            topo = self._topology
            ring = topo.ring.with_node(name, weight)
            self._check_local_ring(dry_run)
            diff = topo.ring.diff(ring)
            if dry_run:
                return diff
            members = dict(topo.members)
            if name not in members:
                host, port = parse_address(address if address is not None else name)
                members[name] = self._member(Node(name, host, port, weight), name)
            elif address is not None and parse_address(address) != (members[name].node.host,
                                                                     members[name].node.port):
                raise ArgumentError(f"node {name!r} exists with another address; remove it first")
            self._topology = _Topology(ring, members, topo.partners)
        log.info("ring changed (add %s): %s", name, diff)
        return diff

    def remove_node(self, name: str, *, dry_run: bool = False) -> RingDiff:
        """Remove a node from the ring (its keys go to their next owners); returns the ring
        diff.  With ``dry_run`` nothing changes.  No data is moved."""
        with self._reconfigure:
            topo = self._topology
            if name not in topo.members:
                raise ArgumentError(f"no node named {name!r}")
            if len(topo.members) == 1:
                raise ArgumentError("cannot remove the last node")
            ring = topo.ring.without_node(name)
            self._check_local_ring(dry_run)
            diff = topo.ring.diff(ring)
            if dry_run:
                return diff
            members = {n: m for n, m in topo.members.items() if n != name}
            partner = topo.partners.get(name)
            self._topology = _Topology(ring, members, {n: p for n, p in topo.partners.items() if n != name})
        for gone in [topo.members[name]] + ([partner] if partner else []):
            gone.transport.close()
            self.health.forget(gone.name)
        log.info("ring changed (remove %s): %s", name, diff)
        return diff

    def _check_local_ring(self, dry_run: bool) -> None:
        if self._watch is not None and not dry_run:
            raise ArgumentError("this cluster follows the ring document on its nodes (shared_ring=True): "
                                "change the ring with `ktcluster rebalance begin`")

    def _watched(self, watch: _Watch) -> _Topology:
        """The topology, once the ring document has been read again if the last read is
        older than its refresh period (the calling thread reads it; others wait)."""
        if time.monotonic() >= watch.due:
            with watch.lock:
                if time.monotonic() >= watch.due:
                    self._refresh(watch)
        return self._topology

    def _refresh(self, watch: _Watch) -> None:
        """Read the ring document from every node at once and apply the highest version
        (none answering: keep the ring, and try again within a second)."""
        started = time.monotonic()
        topo = self._topology
        deadline = self._deadline()
        found, errors = self._fanout.run(
            {n: partial(self._execute, OpClass.READ, topo, n, _op(read_doc), deadline) for n in topo.members}, deadline)
        docs = [doc for _, doc in filter(None, found.values())]
        newest = max(docs, key=lambda d: d.version, default=None)
        if newest is not None and (watch.doc is None or newest.version > watch.doc.version):
            self._apply(newest)
            watch.doc = newest
        refresh = DEFAULT_REFRESH if watch.doc is None else watch.doc.refresh
        if not found:
            log.warning("no node answered for the ring document (%s); keeping the ring",
                        "; ".join(f"{n}: {e}" for n, e in errors.items()))
            refresh = min(refresh, 1.0)
        watch.due = started + refresh

    def _apply(self, doc: RingDoc) -> None:
        """Swap in the topology ``doc`` describes (members kept where name and address stay)."""
        with self._reconfigure:
            topo = self._topology
            target = doc.target_ring()
            ring = target or doc.ring()
            weights = {**doc.nodes, **(doc.target or {})}
            members = {}
            for name, address in doc.addresses().items():
                host, port = parse_address(address)
                member = topo.members.get(name)
                if member is None or (member.node.host, member.node.port) != (host, port):
                    member = self._member(Node(name, host, port, weights[name][1]), name)
                members[name] = member
            partners = {n: p for n, p in topo.partners.items() if n in members}
            moving = None if target is None else Migration(doc.phase, doc.ring(), target)
            self._topology = _Topology(ring, members, partners, moving)
            self._call_limit = min(self.retry.deadline, doc.max_call)
        for name, member in topo.members.items():
            if members.get(name) is not member:
                member.transport.close()
                if name not in members:
                    self.health.forget(name)
        log.info("ring document version %d: %s %s", doc.version, doc.phase, ring)

    def reset_node(self, name: str) -> None:
        """Close a node's breaker now, forgetting its failures (an operator who knows the node
        is back); the next call goes to it.  ``name`` is a node's name, or a failover
        partner's as :meth:`stats` lists it.  ``cluster.health[name].force_open()`` does
        the opposite."""
        topo = self._topology
        names = {m.name for m in [*topo.members.values(), *topo.partners.values()]}
        if name not in names:
            raise ArgumentError(f"no node named {name!r}; nodes: {sorted(names)}")
        self.health[name].reset()

    # -- execution core ---------------------------------------------------------------------------

    def _deadline(self) -> Deadline:
        return Deadline.after(self._call_limit)

    def _execute(self, cls: OpClass, topo: _Topology, node: str, call: Call[T], deadline: Deadline,
                 first_error: Exception | None = None, scope: Observed | None = None) -> T:
        """Run ``call`` on ``node`` under the retry policy, its breaker and its failover
        (``first_error``: how a first attempt made elsewhere failed; each attempt an event
        of the observed call ``scope``, when there is an observer)."""
        member = topo.members[node]
        tries = -1 if first_error is None else 0

        def attempt() -> T:
            nonlocal tries
            tries += 1
            try:
                return self._guarded(member, call, deadline, scope, tries)
            except NodeDownError as exc:
                return self._guarded(self._partner(topo, node, cls, exc), call, deadline, scope, tries)

        return self.retry.run(cls, attempt, deadline, self._on_retry, first_error)

    def _partner(self, topo: _Topology, node: str, cls: OpClass, exc: NodeDownError) -> _Member:
        """Where an operation of class ``cls`` goes when ``node`` is down: its failover
        partner, or ``exc`` is raised."""
        partner = topo.partners.get(node)
        if partner is None or cls not in self.failover_ops:
            raise exc
        self._count("failovers")
        log.info("failing over from node %s to %s: %s", node, partner.node.address, exc)
        return partner

    def _on_retry(self, attempt_no: int, exc: BaseException, wait: float) -> None:
        self._count("retries")
        log.info("retrying after attempt %d failed on node %s (%s: %s); waiting %.3f s", attempt_no,
                 getattr(exc, "node", None), type(exc).__name__, exc, wait)

    def _count(self, counter: str) -> None:
        with self._counter_lock:
            self._counters[counter] += 1

    def _guarded(self, member: _Member, call: Call[T], deadline: Deadline, scope: Observed | None = None,
                 retry: int = 0) -> T:
        """One attempt on ``member`` through its breaker, the deadline carried down to the
        socket: every wait ends by it (a thread cannot be interrupted in a blocked socket,
        and a trickling reply would stretch a per-receive timeout).  With ``scope``, the
        attempt is an event of that observed call (``retry``: how many came before it)."""
        _before_attempt(member, deadline)
        if scope is None:
            return self._attempt(member, call, deadline, None)
        attempt = scope.attempt(member.name, member.node.address, retry)
        return attempt.measure(lambda: self._attempt(member, call, deadline, attempt))

    @staticmethod
    def _attempt(member: _Member, call: Call[T], deadline: Deadline, attempt: Attempt | None) -> T:
        """:meth:`_guarded`'s attempt, through the node's breaker (the trial holder probes first)."""
        try:
            return member.breaker.call(call, member, deadline, attempt, probe=_probe)
        except KyotoTycoonException as exc:
            if exc.node is None:
                exc.node = member.name
            raise

    def _keyed(self, operation: str, key: Key, make_op: Callable[[Session], Operation[T]], db: DB = 0,
               scope: Observed | None = None) -> T:
        """One operation on the node that owns ``key`` (``db``: the operation's; ``scope``: the
        observed call, when there is an observer)."""
        cls = op_class(operation)
        if scope is None and self.observer is not None:
            return observed(self.observer, operation, cls, 1, lambda o: self._keyed(operation, key, make_op, db, o))
        topo = self._topology
        if self._watch is not None:
            topo = self._watched(self._watch)
            if topo.migration is not None:
                deadline = self._deadline()

                def run(cls: OpClass, node: str, make: Callable[[Session], Operation[Any]]) -> Any:
                    return self._execute(cls, topo, node, _op(make), deadline, scope=scope)

                return migration.keyed(topo.migration, run, operation, cls, key_bytes(key), db, make_op)
        return self._execute(cls, topo, topo.ring.node_for(key), _op(make_op), self._deadline(), scope=scope)

    def _current(self) -> _Topology:
        """The topology a call uses (with shared_ring, the ring document read recently enough)."""
        return self._topology if self._watch is None else self._watched(self._watch)

    def _bulk_topology(self, kbs: Sequence[bytes]) -> tuple[_Topology, set[int]]:
        """A bulk call's topology, and the indices of its keys whose owner changes in the
        migration under way (the call routes them one by one, its other keys in bulk)."""
        topo = self._current()
        return topo, set() if topo.migration is None else topo.migration.moving(kbs)

    def _bulk(self, operation: str, topo: _Topology, plan: dict[str, list[list[int]]],
              make_op: Callable[[list[int], Session], Op[Any]]) -> dict[str, _Shard]:
        """Run ``make_op(chunk, session)`` for every chunk of ``plan`` (see :func:`plan_bulk`),
        all nodes at once, under one deadline.

        First attempts go out together from the caller (:func:`~ktcluster.scatter.scatter`:
        no thread or greenlet per node; up to :attr:`bulk_lanes` chunks of a node in flight)
        to the nodes whose breaker is closed; the chunks of a node that fails there, or
        whose breaker is not closed, are run by :meth:`_execute` (the retry policy from
        where the first attempt left, the breaker's trial, failover), node by node in
        turn, those nodes at once (:mod:`ktcluster.fanout`)."""
        deadline = self._deadline()
        members = topo.members
        cls = op_class(operation)
        call = None if self.observer is None else Observed(
            self.observer, operation, cls, sum(len(c) for chunks in plan.values() for c in chunks))
        scopes = None if call is None else {n: [call.shard(len(c)) for c in chunks] for n, chunks in plan.items()}
        if call is not None:
            call.begin()
        lanes = self.bulk_lanes
        direct = {node: (members[node].transport, [partial(make_op, chunk, members[node].session) for chunk in chunks],
                         lanes)
                  for node, chunks in plan.items() if members[node].breaker.closed}
        done, failures = scatter(direct, deadline, scopes) if direct else ({}, {})
        shards: dict[str, _Shard] = {}
        rest: dict[str, tuple[list[int], Exception | None]] = {}
        for node, chunks in plan.items():
            shard = shards[node] = _Shard()
            breaker = members[node].breaker
            if node not in direct:
                rest[node] = (list(range(len(chunks))), None)
                continue
            shard.results = done[node]
            if node in failures:
                exc, undone = failures[node]
                if isinstance(exc, KyotoTycoonException) and exc.node is None:
                    exc.node = node
                breaker.record(exc)
                rest[node] = (undone, exc)
            else:
                breaker.succeeded(False)
        if rest:
            self._bulk_rest(cls, topo, plan, make_op, deadline, shards, rest, scopes)
        if call is not None:  # a bulk call ends with its first failed shard's error
            call.end(next((s.error for s in shards.values() if s.error is not None), None))
        return shards

    def _bulk_rest(self, cls: OpClass, topo: _Topology, plan: dict[str, list[list[int]]],
                   make_op: Callable[[list[int], Session], Op[Any]], deadline: Deadline,
                   shards: dict[str, _Shard], rest: dict[str, tuple[list[int], Exception | None]],
                   scopes: dict[str, list[Observed]] | None = None) -> None:
        """The chunks the first pass left (``rest``: node -> (their indices, how the first
        attempt of the first one failed)), in turn per node through :meth:`_execute`, the
        nodes at once (each chunk observed as its ``scopes`` entry)."""

        def shard_task(node: str, left: list[int], first_error: Exception | None) -> Callable[[], _Shard]:
            def task() -> _Shard:
                shard, chunks = _Shard(), plan[node]
                error = first_error
                for n, index in enumerate(left):
                    try:
                        scope = None if scopes is None else scopes[node][index]
                        shard.results[index] = self._execute(cls, topo, node, _op(partial(make_op, chunks[index])),
                                                             deadline, error, scope)
                    except Exception as exc:
                        return shard.fail(exc, chunks, left[n:])
                    error = None
                return shard
            return task

        finished, errors = self._fanout.run({node: shard_task(node, *left) for node, left in rest.items()}, deadline)
        for node, later in finished.items():
            shard = shards[node]
            shard.results.update(later.results)
            shard.error, shard.failed = later.error, later.failed
        for node, exc in errors.items():  # the fan-out's deadline cut it short
            shards[node].fail(exc, plan[node], rest[node][0])

    def _partial(self, op: str, shards: dict[str, _Shard], results: Any, failed: list[Any],
                 key_errors: dict[Any, ValueDecodeError] | None = None) -> PartialFailureError:
        errors = {node: s.error for node, s in shards.items() if s.error is not None}
        self._count("partial_failures")
        what = []
        if errors:
            summary = ", ".join(f"{node}: {exc}" for node, exc in errors.items())
            what.append(f"failed on {len(errors)} of {len(shards)} nodes ({summary})")
        if key_errors:
            named = ", ".join(repr(key) for key in list(key_errors)[:5]) + (", ..." if len(key_errors) > 5 else "")
            what.append(f"{len(key_errors)} values do not decode ({named})")
        return PartialFailureError(f"{op} {'; '.join(what)}", results, errors, failed,
                                   key_errors)

    def _counts(self, op: str, shards: dict[str, _Shard], keys: Sequence[Any]) -> int:
        """set_bulk/remove_bulk's result: the total count, or PartialFailureError with each
        node's count as ``results``."""
        failed = [keys[i] for shard in shards.values() for i in shard.failed]
        if failed:
            raise self._partial(op, shards, {n: sum(s.results.values()) for n, s in shards.items()}, failed)
        return sum(sum(s.results.values()) for s in shards.values())

    def _each(self, operation: str, call: Call[T]) -> dict[str, T]:
        """Run ``call`` on every node at once: ``{node: result}`` in configuration order."""
        topo = self._current()
        names = list(topo.members)
        deadline = self._deadline()
        cls = op_class(operation)
        scope = None if self.observer is None else Observed(self.observer, operation, cls, 0).begin()
        results, errors = self._fanout.run(
            {n: partial(self._execute, cls, topo, n, call, deadline, scope=scope) for n in names}, deadline)
        if scope is not None:
            scope.end(next(iter(errors.values()), None))
        return self._every_node(operation, names, results, errors)

    def _every_node(self, operation: str, names: list[str], results: dict[str, T],
                    errors: dict[str, BaseException]) -> dict[str, T]:
        """A call made on every node: ``{node: result}`` in configuration order, or the error
        (PartialFailureError when some nodes failed)."""
        if errors:
            for exc in errors.values():
                if isinstance(exc, ArgumentError):
                    raise exc  # the same call to every node: the caller's mistake, not a node's
            self._count("partial_failures")
            summary = ", ".join(f"{node}: {exc}" for node, exc in errors.items())
            raise PartialFailureError(f"{operation} failed on {len(errors)} of {len(names)} nodes ({summary})",
                                      {n: results[n] for n in names if n in results}, errors)
        return {n: results[n] for n in names}

    def _then(self, result: Any, finish: Callable[[Any], T]) -> T:
        """``finish(result)``: what a call does with what the nodes answered (the asyncio
        front end awaits ``result`` first)."""
        return finish(result)

    def _each_op(self, operation: str, make_op: Callable[[Session], Op[T]]) -> dict[str, T]:
        return self._each(operation, _op(make_op))

    def _per_node(self, operation: str, make_op: Callable[[Session], Op[T]], finish: Callable[[dict[str, T]], Any]
                  ) -> Any:
        """``finish({node: result})`` of an operation run on every node."""
        return self._then(self._each_op(operation, make_op), finish)

    # -- single records ---------------------------------------------------------------------------

    def get(self, key: Key, db: DB = 0) -> Any:
        """The value of a record, or None."""
        return self._keyed("get", key, lambda s: ops.get(s, key, db), db)

    def get_with_expiry(self, key: Key, db: DB = 0) -> tuple[Any, int | None] | None:
        """``(value, expires)`` or None; see KyotoTycoon.get_with_expiry."""
        return self._keyed("get_with_expiry", key, lambda s: ops.get_with_expiry(s, key, db), db)

    def get_int(self, key: Key, db: DB = 0) -> int:
        return self._keyed("get_int", key, lambda s: ops.get_int(s, key, db), db)

    def check(self, key: Key, db: DB = 0) -> bool:
        return self._keyed("check", key, lambda s: ops.check(s, key, db), db)

    def set(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        return self._keyed("set", key, lambda s: ops.set_record(s, key, value, expire, db), db)

    def add(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        return self._keyed("add", key, lambda s: ops.add(s, key, value, expire, db), db)

    def replace(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        return self._keyed("replace", key, lambda s: ops.replace(s, key, value, expire, db), db)

    def append(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        return self._keyed("append", key, lambda s: ops.append(s, key, value, expire, db), db)

    def increment(self, key: Key, delta: int = 1, expire: Expire = None, db: DB = 0, *,
                  orig: int | str | None = None) -> int:
        return self._keyed("increment", key, lambda s: ops.increment(s, key, delta, expire, db, orig), db)

    def increment_double(self, key: Key, delta: float = 1.0, expire: Expire = None, db: DB = 0, *,
                         orig: float | str | None = None) -> float:
        return self._keyed("increment_double", key,
                           lambda s: ops.increment_double(s, key, delta, expire, db, orig), db)

    def cas(self, key: Key, old_val: Any = None, new_val: Any = None, expire: Expire = None, db: DB = 0) -> bool:
        return self._keyed("cas", key, lambda s: ops.cas(s, key, old_val, new_val, expire, db), db)

    def remove(self, key: Key, db: DB = 0) -> bool:
        return self._keyed("remove", key, lambda s: ops.remove(s, key, db), db)

    def seize(self, key: Key, db: DB = 0) -> Any:
        return self._keyed("seize", key, lambda s: ops.seize(s, key, db), db)

    # -- bulk -------------------------------------------------------------------------------------

    def get_bulk(self, keys: Iterable[KeyT], atomic: bool | None = None, db: DB = 0) -> dict[KeyT, Any]:
        """``{key: value}`` for the keys that exist, in the caller's order.  ``atomic``
        applies per node (HTTP).  PartialFailureError when some nodes fail (their keys
        are its ``failed_keys``) or some values do not decode (its ``key_errors``); its
        ``results`` hold every other record."""
        session = self._session
        atomic = ops.check_atomic(session, atomic)
        ops.check_db(session, db)
        keys = key_list(keys)
        kbs = keys_bytes(keys)
        topo, moving = self._bulk_topology(kbs)
        if moving:
            found = self.get_bulk([k for i, k in enumerate(keys) if i not in moving], atomic, db)
            found.update((keys[i], value) for i in moving if (value := self.get(keys[i], db)) is not None)
            return {k: found[k] for k in keys if k in found}
        plan = plan_bulk(topo.ring, kbs, self.bulk_chunk)
        shards = self._bulk("get_bulk", topo, plan,
                            lambda chunk, s: ops.get_bulk_encoded(s, [kbs[i] for i in chunk], atomic, db))
        return self._then(shards, partial(self._records, keys, topo, plan))

    def _records(self, keys: Sequence[Any], topo: _Topology, plan: dict[str, list[list[int]]],
                 shards: dict[str, _Shard]) -> dict[Any, Any]:
        """get_bulk's result from what its shards read (see get_bulk)."""
        session = self._session
        raws: list[bytes | None] = [None] * len(keys)
        for node, shard in shards.items():
            for index, found in shard.results.items():  # the chunks done
                chunk = plan[node][index]
                for i, raw in zip(chunk, found, strict=True):
                    raws[i] = raw
        bad: dict[Any, ValueDecodeError] = {}
        try:
            records = ops.bulk_values(session, keys, raws)
        except PartialFailureError as exc:  # values that do not decode: the other records are good
            records, bad = exc.results, exc.key_errors
            for key, error in bad.items():
                error.node = topo.ring.node_for(key)
        failed = [keys[i] for shard in shards.values() for i in shard.failed]
        if failed or bad:
            raise self._partial("get_bulk", shards, records, failed, bad)
        return records

    def set_bulk(self, kv_dict: Mapping[KeyT, Any], expire: Expire = None, atomic: bool | None = None,
                 db: DB = 0) -> int:
        """Store records on their nodes; returns how many were stored.  On partial failure
        ``results`` maps each node to the records it stored."""
        session = self._session
        atomic, xt = ops.set_bulk_args(session, kv_dict, expire, atomic)
        ops.check_db(session, db)
        keys = list(kv_dict)
        kbs = keys_bytes(keys)
        topo, moving = self._bulk_topology(kbs)
        if moving:
            return (self.set_bulk({k: kv_dict[k] for i, k in enumerate(keys) if i not in moving}, expire, atomic, db)
                    + sum(self.set(keys[i], kv_dict[keys[i]], expire, db) for i in moving))
        values = ops.packed_values(session, list(kv_dict.values()))
        plan = plan_bulk(topo.ring, kbs, self.bulk_chunk)
        shards = self._bulk("set_bulk", topo, plan, lambda chunk, s: ops.set_bulk_encoded(
            s, [kbs[i] for i in chunk], [values[i] for i in chunk], xt, atomic, db))
        return self._then(shards, partial(self._counts, "set_bulk", keys=keys))

    def remove_bulk(self, keys: Iterable[KeyT], atomic: bool | None = None, db: DB = 0) -> int:
        """Remove records from their nodes; returns how many existed.  On partial failure
        ``results`` maps each node to the records it removed."""
        session = self._session
        atomic = ops.check_atomic(session, atomic)
        ops.check_db(session, db)
        keys = key_list(keys)
        kbs = keys_bytes(keys)
        topo, moving = self._bulk_topology(kbs)
        if moving:
            return (self.remove_bulk([k for i, k in enumerate(keys) if i not in moving], atomic, db)
                    + sum(self.remove(keys[i], db) for i in moving))
        plan = plan_bulk(topo.ring, kbs, self.bulk_chunk)
        shards = self._bulk("remove_bulk", topo, plan,
                            lambda chunk, s: ops.remove_bulk_encoded(s, [kbs[i] for i in chunk], atomic, db))
        return self._then(shards, partial(self._counts, "remove_bulk", keys=keys))

    # -- whole-cluster operations -------------------------------------------------------------------

    def per_node(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call a KyotoTycoon method on every node at once: ``{node: result}``.  Retried
        as its operation class allows; PartialFailureError when some nodes fail."""
        if method.startswith("_") or not callable(getattr(KyotoTycoon, method, None)):
            raise ArgumentError(f"KyotoTycoon has no method {method!r}")
        return self._each(method, lambda m, deadline, _: getattr(m.client.with_options(deadline=deadline.at),
                                                                 method)(*args, **kwargs))

    def count(self, db: DB = 0) -> int:
        """Records in the database, over all nodes."""
        return self._per_node("count", lambda s: ops.status_field(s, "count", b"count", db), _total)

    def size(self, db: DB = 0) -> int:
        """Database size in bytes, over all nodes."""
        return self._per_node("size", lambda s: ops.status_field(s, "size", b"size", db), _total)

    def status(self, db: DB = 0) -> dict[str, Any]:
        """The database's status merged over nodes: numeric fields summed, and each
        node's own (typed) status under ``"nodes"``."""
        return self._per_node("status", lambda s: ops.status(s, db, True), _merge)

    def report(self) -> dict[str, Any]:
        """The servers' reports merged like :meth:`status`."""
        return self._per_node("report", lambda s: ops.report(s, True), _merge)

    def clear(self, db: DB = 0) -> bool:
        """Remove every record on every node."""
        return self._per_node("clear", lambda s: ops.clear(s, db), _done)

    def vacuum(self, db: DB = 0, *, step: int | None = None) -> bool:
        return self._per_node("vacuum", lambda s: ops.vacuum(s, db, step), _done)

    def match_prefix(self, prefix: Key, limit: int | None = None, db: DB = 0) -> list[Any]:
        """Keys starting with ``prefix`` on any node, sorted.  ``limit`` caps the result;
        which keys it keeps follows each node's DB order (tree DBs: the first ones)."""
        return self._per_node("match_prefix", lambda s: ops.match_prefix(s, prefix, limit, db),
                              partial(_sorted_union, limit=limit))

    def match_regex(self, regex: Key, limit: int | None = None, db: DB = 0) -> list[Any]:
        """Keys matching ``regex`` on any node, sorted; ``limit`` as for match_prefix."""
        return self._per_node("match_regex", lambda s: ops.match_regex(s, regex, limit, db),
                              partial(_sorted_union, limit=limit))

    def match_similar(self, origin: Key, distance: int | None = 0, limit: int | None = None, db: DB = 0, *,
                      utf: bool | None = None) -> list[Any]:
        """Keys within ``distance`` of ``origin`` on any node, nearest first (ties in key
        order).  KT does not return distances, so the merge recomputes them as the
        server does (in UTF-8 code points with ``utf``, the default for a str origin,
        else in bytes)."""
        chars = utf if utf is not None else isinstance(origin, str)
        target = cstr(key_bytes(origin))

        def nearest(per_node: dict[str, list[Any]]) -> list[Any]:
            merged = sorted({k for keys in per_node.values() for k in keys},
                            key=lambda k: (levdist(key_bytes(k), target, chars), key_bytes(k)))
            return merged[:limit] if limit else merged

        return self._per_node("match_similar", lambda s: ops.match_similar(s, origin, distance, limit, db, utf),
                              nearest)

    def play_script(self, name: str | bytes, kv_dict: Mapping[Any, Any] | None = None, *,
                    node: str | None = None, key: Key | None = None) -> dict[Any, bytes]:
        """Run a Lua procedure on ``node``, or on the node that owns ``key``."""
        if (node is None) == (key is None):
            raise ArgumentError("play_script needs exactly one of node= or key=")
        topo = self._topology
        target = topo.ring.node_for(key) if key is not None else self._member_named(node).name  # type: ignore
        cls = op_class("play_script")
        return observed(self.observer, "play_script", cls, 1, lambda o: self._execute(
            cls, topo, target, _op(lambda s: ops.play_script(s, name, kv_dict)), self._deadline(), scope=o))

    # -- observability and lifecycle --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-node breaker and pool counters, cluster-wide retry/failover counts and, when the
        observer is (or includes) a :class:`~ktcluster.observe.Metrics`, its snapshot under
        ``"metrics"``: plain data (``json.dumps`` takes it; docs/observability.md)."""
        topo = self._topology
        breakers = self.health.stats()
        nodes = {}
        for member in list(topo.members.values()) + list(topo.partners.values()):
            pool = member.transport.pool
            nodes[member.name] = {"address": member.node.address, "health": breakers.get(member.name),
                                  "pool": {"size": pool.size, **asdict(pool.stats())}}
        budget = self.retry.budget
        metrics = find_metrics(self.observer)
        return {"nodes": nodes, **self._counters, "down": self.health.down(),
                "retry_budget": None if budget is None else {"tokens": budget.tokens, "denied": budget.denied},
                "metrics": None if metrics is None else metrics.snapshot()}

    def close(self) -> None:
        """Close every pool and stop the fan-out threads.  Calls after close reconnect."""
        topo = self._topology
        for member in list(topo.members.values()) + list(topo.partners.values()):
            member.transport.close()
        self._fanout.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {list(self.nodes.values())} binary={self.binary} down={self.health.down()}>"


class Cluster(ClusterCore):
    """A sharded KT cluster for threads and greenlets; see the module docstring and
    :class:`ClusterCore` for the arguments."""

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cursors ----------------------------------------------------------------------------------

    def cursor(self, node: str) -> Cursor:
        """A cursor on one node (cursors live on a server; no retries, no failover)."""
        return self._member_named(node).client.cursor()

    def iterate(self, db: DB = 0) -> Iterator[tuple[Any, Any]]:
        """Every ``(key, value)`` of the cluster, node after node (each node in its DB's
        order).  Not a snapshot: concurrent writes may or may not be seen."""
        for name in list(self._topology.members):
            with self.cursor(name) as cur:
                try:
                    yield from cur.items(db)
                except KyotoTycoonException as exc:
                    if exc.node is None:
                        exc.node = name
                    raise

    # -- replication ------------------------------------------------------------------------------

    def replication(self, sid: int, since: Any = None, **options: Any) -> ReplicationStream:
        """Every node's update log merged into one stream ordered by ``(ts, node)``:
        ``ReplicationStream(self.nodes, sid, since, **options)`` (see
        :mod:`ktcluster.replication` for ``since``, the options and the guarantees).
        Failover partners are not read: writes made on a partner while its node was
        down are in the partner's log (stream them with ``origin_sids``).  The stream's
        ``observer`` is the cluster's unless given (its lag then shows in :meth:`stats`)."""
        options.setdefault("observer", self.observer)
        return ReplicationStream(self.nodes, sid, since, **options)
