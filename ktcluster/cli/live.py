"""``ktcluster rebalance begin|move|finish|abort|status|run``: grow or shrink a live fleet.

For clusters whose clients follow the ring document (``Cluster(shared_ring=True)``, see
:mod:`ktcluster.ringdoc` and :mod:`ktcluster.migration`):

    ktcluster rebalance begin --servers kt1=h1:1978,kt2=h2:1978,kt3=h3:1978 --add kt4=h4:1978
    ktcluster rebalance move --checkpoint move.ckpt
    ktcluster rebalance finish

* **begin** publishes the migration (``--add NAME=HOST:PORT``, ``--remove NAME`` to drain
  a node) in its ``prepare`` phase, waits the document's grace (every client has read it),
  publishes ``migrate`` and waits the grace again.  ``--servers`` is the ring in force
  when the nodes hold no document yet (it is then written with ``--refresh`` and
  ``--max-call``, the clients' re-read period and call limit); afterwards any node of
  the cluster will do.  ``--dry-run`` scans and prints how many records and bytes
  would move between which nodes, changing nothing.
* **move** settles every key found on a node that the new ring does not give it
  (:func:`ktcluster.migration.settle`: copy with ``add``, remove with ``cas``), node
  by node; ``--checkpoint`` resumes a scan.
* **finish** checks that no key is left to move, publishes the new ring as ``stable``,
  waits the grace, and removes the document from the nodes that left the ring (they
  can then be stopped).
* **abort** (during ``prepare`` only) publishes the old ring as ``stable`` again; from
  ``migrate`` on, keys may already live on their new nodes, so a migration only goes
  forward.  **status** prints the document and each node's version; **run** is
  begin, move and finish in a row.

Every step is idempotent and can be killed at any point and run again: a document
written to some nodes only is completed (readers already take the highest version);
a wait is resumed from the document's ``since`` stamp; a key copied but not yet removed
from its old node is settled by the next ``move`` (its copy is the value readers see).
Two commands starting from the same version cannot both publish: each write is a
compare-and-swap against what the node held, the ring in force's nodes first, in name
order.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..address import parse_address
from ..client import KyotoTycoon
from ..errors import LogicalInconsistencyError
from ..migration import ABSENT, settle
from ..ops import status_field
from ..packers import KT_PACKER_BYTES
from ..retry import OpClass
from ..ring import Ring
from ..ringdoc import MIGRATE, PREPARE, RING_KEY, STABLE, Nodes, RingDoc, read_doc, stamped, write_doc
from .commands import CLIError, print_table
from .rebalance import Tally, report, sweep
from .records import Record
from .servers import server_list

__all__ = ["live"]


#: keys settled at once by ``move`` (each key is independent; a ktserver serves them in parallel)
MOVERS = 8


class _Nodes:
    """A raw-bytes HTTP client per node (a pool of MOVERS connections); ``run`` is what
    :func:`settle` calls."""

    def __init__(self, nodes: dict[str, str], timeout: float) -> None:
        self.clients: dict[str, KyotoTycoon] = {}
        for name, address in nodes.items():
            host, port = parse_address(address)
            client = KyotoTycoon(pack_type=KT_PACKER_BYTES, decode_keys=False, pool_size=MOVERS,
                                 connect_timeout=timeout)
            client.open(host, port, timeout=timeout)
            self.clients[name] = client

    def run(self, cls: OpClass, node: str, make_op: Any) -> Any:
        client = self.clients[node]
        return client._run(make_op(client._session))

    def on_each(self, make_op: Any) -> dict[str, Any]:
        return {name: self.run(OpClass.READ, name, make_op) for name in self.clients}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


class _Settler:
    """The :class:`~ktcluster.cli.rebalance.Mover` of ``move``: settles each key of a batch,
    MOVERS at a time."""

    def __init__(self, nodes: _Nodes, db: int | str, tally: Tally) -> None:
        self.nodes, self.db, self.tally = nodes, db, tally
        self.threads = ThreadPoolExecutor(MOVERS, thread_name_prefix="ktcluster-move")

    def count(self, node: str) -> int:
        db = self.db
        return self.nodes.run(OpClass.READ, node, lambda s: status_field(s, "count", b"count", db))

    def move(self, src: str, dst: str, records: list[Record]) -> None:
        def one(key: bytes) -> str | None:
            try:
                return settle(self.nodes.run, src, dst, key, self.db)
            except LogicalInconsistencyError:
                return None

        for (key, _, _), outcome in zip(records, self.threads.map(one, [r[0] for r in records]), strict=True):
            if outcome is None:
                self.tally.conflicts.append((src, dst, key))
            elif outcome == ABSENT:
                self.tally.gone += 1  # a client settled or removed it since the scan read it
            else:
                self.tally.moved[(src, dst)] += 1

    def close(self) -> None:
        self.threads.shutdown()


# -- the document on the nodes ------------------------------------------------------------------------


def _load(nodes: _Nodes) -> tuple[dict[str, bytes | None], RingDoc | None]:
    """What each node holds (raw), and the highest version among them."""
    found: dict[str, tuple[bytes, RingDoc] | None] = nodes.on_each(read_doc)
    docs = [doc for _, doc in filter(None, found.values())]
    return ({name: None if f is None else f[0] for name, f in found.items()},
            max(docs, key=lambda d: d.version, default=None))


def _publish(nodes: _Nodes, held: dict[str, bytes | None], doc: RingDoc, first: list[str]) -> RingDoc:
    """Write ``doc`` (stamped now) on each of its nodes that does not hold it yet, the nodes
    of ``first`` first; CLIError when a node holds something else than it did (a
    concurrent publisher); returns what was written."""
    doc = stamped(doc)
    for name in sorted(doc.addresses(), key=lambda n: (n not in first, n)):
        raw = held[name]
        if raw is not None and RingDoc.decode(raw) == doc:
            continue
        if not nodes.run(OpClass.UNSAFE, name, lambda s, raw=raw: write_doc(s, raw, doc)):
            raise CLIError(f"the ring document on {name} changed under this command (another "
                           f"`ktcluster rebalance`?); see `ktcluster rebalance status`")
        held[name] = doc.encode()
    return doc


def _wait(doc: RingDoc, quiet: bool) -> None:
    """Sleep until the grace of ``doc`` (published at ``doc.since``) is over."""
    left = doc.since + doc.grace() - time.time()
    if left > 0:
        if not quiet:
            print(f"waiting {left:.1f}s for every client to read version {doc.version} ({doc.phase}): "
                  f"refresh {doc.refresh:g}s + max call {doc.max_call:g}s", file=sys.stderr)
        time.sleep(left)


def _published(held: dict[str, bytes | None], doc: RingDoc) -> bool:
    return all((raw := held[name]) is not None and RingDoc.decode(raw) == doc for name in doc.addresses())


def _open(args: argparse.Namespace) -> tuple[_Nodes, dict[str, bytes | None], RingDoc]:
    """The nodes of ``--servers`` and of the document in force, what they hold, and that
    document (a version-0 stable one of ``--servers`` when there is none)."""
    servers = server_list(args)
    nodes = _Nodes(servers.nodes, args.timeout)
    held, doc = _load(nodes)
    if doc is None:
        return nodes, held, RingDoc.of(servers.nodes, servers.weights, hash_tags=servers.hash_tags,
                                       refresh=args.refresh, max_call=args.max_call)
    everyone = {**servers.nodes, **doc.addresses()}
    if set(everyone) != set(nodes.clients):
        nodes.close()
        nodes = _Nodes(everyone, args.timeout)
        held, doc = _load(nodes)
        assert doc is not None
    return nodes, held, doc


def _target(doc: RingDoc, args: argparse.Namespace) -> Nodes:
    target = dict(doc.nodes)
    for spec in args.add or ():
        name, sep, address = spec.partition("=")
        if not sep or not name:
            raise CLIError(f"--add takes NAME=HOST:PORT, not {spec!r}")
        host, port = parse_address(address)
        target[name] = (f"{host}:{port}" if ":" not in host else f"[{host}]:{port}", args.add_weight)
    for name in args.remove or ():
        if name not in target:
            raise CLIError(f"--remove names {name!r}, which is not in the ring ({', '.join(doc.nodes)})")
        del target[name]
    if not target:
        raise CLIError("a ring needs at least one node")
    if target == doc.nodes:
        raise CLIError("the ring would not change: give --add NAME=HOST:PORT or --remove NAME")
    return target


# -- the steps --------------------------------------------------------------------------------------------


def _begin(args: argparse.Namespace, nodes: _Nodes, held: dict[str, bytes | None], doc: RingDoc) -> RingDoc:
    if doc.phase == STABLE:
        target = _target(doc, args)
        if args.dry_run:
            return _dry_run(args, doc, target)
        new = {name: address for name, (address, _) in target.items() if name not in nodes.clients}
        if new:
            extra = _Nodes(new, args.timeout)
            held.update(_load(extra)[0])
            nodes.clients.update(extra.clients)
        doc = _publish(nodes, held, doc.next(PREPARE, target=target), list(doc.nodes))
    elif (args.add or args.remove) and _target(doc, args) != doc.target:
        raise CLIError(f"a migration to another ring is under way (version {doc.version}, {doc.phase}); "
                       f"finish or abort it first")
    if not _published(held, doc):
        doc = _publish(nodes, held, doc, list(doc.nodes))
    _wait(doc, args.quiet)
    if doc.phase == PREPARE:
        doc = _publish(nodes, held, doc.next(MIGRATE), list(doc.nodes))
        _wait(doc, args.quiet)
    return doc


def _dry_run(args: argparse.Namespace, doc: RingDoc, target: Nodes) -> RingDoc:
    ring = doc.next(PREPARE, target=target).target_ring()
    assert ring is not None
    current = {name: address for name, (address, _) in doc.nodes.items()}  # (nodes being added hold nothing)
    tally = Tally()
    nodes = _Nodes(current, args.timeout)
    try:
        elapsed = _sweep(args, nodes, current, ring, {}, tally)
    finally:
        nodes.close()
    report(args, tally, elapsed)
    return doc


def _sweep(args: argparse.Namespace, nodes: _Nodes, addresses: dict[str, str], ring: Ring,
           identity: dict[str, Any], tally: Tally) -> float:
    settler = _Settler(nodes, args.db, tally)
    try:
        return sweep(args, addresses, ring, identity, settler, tally)
    finally:
        settler.close()


def _move(args: argparse.Namespace, nodes: _Nodes, held: dict[str, bytes | None], doc: RingDoc) -> int:
    if doc.phase != MIGRATE:
        raise CLIError(f"no migration is in its migrate phase (version {doc.version} is {doc.phase}): "
                       f"`ktcluster rebalance begin` first")
    if not _published(held, doc):
        doc = _publish(nodes, held, doc, list(doc.nodes))
    _wait(doc, args.quiet)
    ring = doc.target_ring()
    assert ring is not None
    tally = Tally()
    identity = {"document": doc.version, "db": args.db}
    elapsed = _sweep(args, nodes, doc.addresses(), ring, identity, tally)
    return report(args, tally, elapsed)


def _finish(args: argparse.Namespace, nodes: _Nodes, held: dict[str, bytes | None], doc: RingDoc) -> int:
    if doc.phase == MIGRATE:
        ring = doc.target_ring()
        assert ring is not None and doc.target is not None
        check = argparse.Namespace(**{**vars(args), "dry_run": True, "checkpoint": None, "quiet": True})
        tally = Tally()
        _sweep(check, nodes, doc.addresses(), ring, {}, tally)
        left = sum(tally.flows.values())
        if left:
            raise CLIError(f"{left:,} keys are not on their new node yet: run `ktcluster rebalance move`")
        leaving = [name for name in doc.nodes if name not in doc.target]
        doc = _publish(nodes, held, doc.next(STABLE, nodes=doc.target, target=None), list(doc.target))
    elif doc.phase == PREPARE:
        raise CLIError("the migration is in its prepare phase: `ktcluster rebalance begin` completes it")
    else:
        leaving = [name for name, raw in held.items() if raw is not None and name not in doc.nodes]
        if not _published(held, doc):
            doc = _publish(nodes, held, doc, list(doc.nodes))
    _wait(doc, args.quiet)
    for name in leaving:  # clients stopped reading them: drop their copy of the document
        nodes.clients[name].remove(RING_KEY)
        print(f"{name} holds no keys of the ring and can be stopped")
    print(f"the ring is {', '.join(doc.nodes)} (version {doc.version}, stable)")
    return 0


def _abort(args: argparse.Namespace, nodes: _Nodes, held: dict[str, bytes | None], doc: RingDoc) -> int:
    if doc.phase != PREPARE:
        raise CLIError(f"nothing to abort: version {doc.version} is {doc.phase}"
                       + (" (from migrate on, a migration only goes forward: run move and finish)"
                          if doc.phase == MIGRATE else ""))
    doc = _publish(nodes, held, doc.next(STABLE, target=None), list(doc.nodes))
    _wait(doc, args.quiet)
    print(f"aborted: the ring is {', '.join(doc.nodes)} again (version {doc.version})")
    return 0


def _status(nodes: _Nodes, held: dict[str, bytes | None], doc: RingDoc) -> int:
    print(f"version {doc.version}, {doc.phase}; clients re-read every {doc.refresh:g}s, calls last at most "
          f"{doc.max_call:g}s (grace {doc.grace():g}s)")
    rows = [["node", "address", "ring", "target", "version held"]]
    for name, address in doc.addresses().items():
        raw = held.get(name)
        rows.append([name, address, str(doc.nodes.get(name, ("", "-"))[1]),
                     "-" if doc.target is None else str(doc.target.get(name, ("", "-"))[1]),
                     "-" if raw is None else str(RingDoc.decode(raw).version)])
    print_table(rows, right=(2, 3, 4))
    return 0


def live(args: argparse.Namespace) -> int:
    nodes, held, doc = _open(args)
    try:
        if args.step == "status":
            return _status(nodes, held, doc)
        if args.step == "abort":
            return _abort(args, nodes, held, doc)
        if args.step in ("begin", "run"):
            doc = _begin(args, nodes, held, doc)
            if args.step == "begin" or args.dry_run:
                if not args.dry_run:
                    print(f"version {doc.version}: keys are moving to {', '.join(doc.target or {})}; "
                          f"next: `ktcluster rebalance move`")
                return 0
        if args.step in ("move", "run"):
            status = _move(args, nodes, held, doc)
            if status or args.step == "move":
                return status
        return _finish(args, nodes, held, doc)
    finally:
        nodes.close()

