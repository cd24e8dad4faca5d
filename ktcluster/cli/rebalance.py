"""``ktcluster rebalance``: after a ring change, move every key to the node that owns it.

    ktcluster rebalance --servers a=h1:1978,b=h2:1978,c=h3:1978,d=h4:1978   # d was added
    ktcluster rebalance --servers a=h1:1978,b=h2:1978 --drain c=h3:1978      # c is leaving

``--servers`` is the new ring (what the clients use, or are about to use);
``--drain`` names nodes that still hold data but are out of the ring.  Every node
is scanned with a cursor; each record found on a node that does not own it is
moved, a batch at a time, in three steps that never lose a key:

1. **copy** it to its owner with its absolute expiry, unless the owner already
   holds the key: the same value (an interrupted run copied it) is fine, another
   value is a *conflict*, settled by ``--on-conflict`` (``keep``: leave both and
   report the key, the default; ``source``: the misplaced copy wins; ``target``:
   the owner's value wins);
2. **verify** it by reading it back from the owner;
3. **remove** it from the old node with a compare-and-swap on the value copied, so
   a value a client wrote there after the copy is never deleted: the new value is
   copied over (again by compare-and-swap on the owner, which must still hold our
   copy) and the removal retried; a record a client removed meanwhile has its copy
   removed too.

``--checkpoint FILE`` records finished nodes and, per node, the last key scanned
that stays there: an interrupted run resumes from it, and the file is deleted when
a run ends cleanly.  Re-running is always safe: a key already moved is no longer
misplaced.  ``--dry-run`` counts what would move and changes nothing.

What it cannot promise while clients keep writing: a scan is not a snapshot (a
record written behind the cursor is missed until the next run), and a client
still using the old ring can write a key to its old node after that key moved
(run rebalance again once every client uses the new ring).  Clients that follow
the ring document (``shared_ring=True``) are rebalanced live, with no such gap,
by the steps of :mod:`ktcluster.cli.live` (``rebalance begin|move|finish``);
this command refuses nodes that hold a ring document.

:func:`sweep` (scan every node, hand each batch's misplaced records to a mover,
checkpoint, progress) is shared by both.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..address import parse_address
from ..client import KyotoTycoon
from ..errors import ArgumentError, LogicalInconsistencyError
from ..expiry import ExpireAt
from ..packers import KT_PACKER_BYTES
from ..ring import Ring
from ..ringdoc import RING_KEY
from .commands import CLIError, human_size, print_table
from .progress import Progress
from .records import Record, scan
from .servers import parse_servers, server_list
from .statefile import load_state, save_state

__all__ = ["rebalance", "sweep", "report", "Mover", "Tally", "EXIT_CONFLICTS"]

#: exit status when keys were left in conflict on two nodes
EXIT_CONFLICTS = 4
#: how often a removal is retried when clients keep changing the record
_REMOVE_TRIES = 3


@dataclass
class Tally:
    """What a sweep found and did: records scanned; per ``(from, to)`` the records (and
    their bytes) found misplaced and those moved; records gone meanwhile; conflicts."""

    scanned: int = 0
    flows: Counter[tuple[str, str]] = field(default_factory=Counter)
    sizes: Counter[tuple[str, str]] = field(default_factory=Counter)
    moved: Counter[tuple[str, str]] = field(default_factory=Counter)
    gone: int = 0
    conflicts: list[tuple[str, str, bytes]] = field(default_factory=list)


class Mover(Protocol):
    """Moves a batch of misplaced records from ``src`` to their owner ``dst``."""

    def count(self, node: str) -> int: ...

    def move(self, src: str, dst: str, records: list[Record]) -> None: ...

    def close(self) -> None: ...


def _expire(expires: int | None) -> ExpireAt | None:
    return None if expires is None else ExpireAt(expires)


class _Mover:
    """Moves misplaced records between nodes, one batch at a time (see the module docstring)."""

    def __init__(self, nodes: dict[str, str], db: int | str, policy: str, timeout: float, tally: Tally) -> None:
        self.db = db
        self.policy = policy
        self.tally = tally
        self.http: dict[str, KyotoTycoon] = {}
        self.fast: dict[str, KyotoTycoon] = {}
        for name, address in nodes.items():
            host, port = parse_address(address)
            for pool, binary in ((self.http, False), (self.fast, True)):
                client = KyotoTycoon(binary=binary, pack_type=KT_PACKER_BYTES, connect_timeout=timeout)
                client.open(host, port, timeout=timeout)
                pool[name] = client

    def close(self) -> None:
        for client in list(self.http.values()) + list(self.fast.values()):
            client.close()

    def count(self, node: str) -> int:
        return self.http[node].count(self.db)

    def move(self, src: str, dst: str, records: list[Record]) -> None:
        db = self.db
        present = self.fast[dst].get_bulk([key for key, _, _ in records], db=db)
        copy: dict[bytes, tuple[bytes, int | None]] = {}
        keep_target: list[bytes] = []
        source_values = {key: value for key, value, _ in records}
        for key, value, expires in records:
            have = present.get(key)
            if have is None or have == value or self.policy == "source":
                copy[key] = (value, expires)
            elif self.policy == "target":
                keep_target.append(key)
            else:
                self.tally.conflicts.append((src, dst, key))
        by_expiry: dict[int | None, dict[bytes, bytes]] = {}
        for key, (value, expires) in copy.items():
            by_expiry.setdefault(expires, {})[key] = value
        for expires, group in by_expiry.items():
            self.fast[dst].set_bulk(group, _expire(expires), db=db)
        check = self.fast[dst].get_bulk(list(copy), db=db) if copy else {}
        for key, (value, _) in copy.items():
            if check.get(key) == value:
                self._remove(src, dst, key, value, value)
            else:  # a client wrote the key on its new node between our copy and the check
                self.tally.conflicts.append((src, dst, key))
        for key in keep_target:
            self._remove(src, dst, key, source_values[key], None)

    def _remove(self, src: str, dst: str, key: bytes, value: bytes, copied: bytes | None) -> None:
        """Remove ``key`` from ``src`` if it still holds ``value``; ``copied`` is what ``dst``
        holds from us (None: ``dst`` keeps its own value)."""
        db = self.db
        for _ in range(_REMOVE_TRIES):
            try:
                self.http[src].cas(key, value, None, db=db)
                self.tally.moved[(src, dst)] += 1
                return
            except LogicalInconsistencyError:
                pass  # changed or removed since we read it
            now = self.http[src].get_with_expiry(key, db)
            if now is None:  # a client removed it: our copy must go too (if it is still ours)
                if copied is not None:
                    try:
                        self.http[dst].cas(key, copied, None, db=db)
                    except LogicalInconsistencyError:
                        pass
                self.tally.gone += 1
                return
            value, expires = now
            if copied is not None:
                try:
                    self.http[dst].cas(key, copied, value, _expire(expires), db=db)
                except LogicalInconsistencyError:
                    break  # the owner's value changed too: a real conflict
                copied = value
        self.tally.conflicts.append((src, dst, key))


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def rebalance(args: argparse.Namespace) -> int:
    servers = server_list(args)
    drain = parse_servers(args.drain) if args.drain else {}
    both = set(drain) & set(servers.nodes)
    if both:
        raise ArgumentError(f"nodes both in the ring and drained: {', '.join(sorted(both))}")
    nodes = {**servers.nodes, **drain}
    tally = Tally()
    mover = _Mover(nodes, args.db, args.on_conflict, args.timeout, tally)
    try:
        if any(mover.http[name].check(RING_KEY) for name in nodes):
            raise CLIError("these nodes hold a ring document (their clients follow it): rebalance them live "
                           "with `ktcluster rebalance begin`, `move` and `finish`")
        identity = {"ring": servers.to_dict(), "drain": drain, "db": args.db, "hash_tags": servers.hash_tags}
        elapsed = sweep(args, nodes, servers.ring(), identity, mover, tally)
    finally:
        mover.close()
    status = report(args, tally, elapsed)
    if status == 0 and not args.dry_run:
        for name in drain:
            print(f"{name} holds no more keys of the ring and can be stopped")
    return status


def sweep(args: argparse.Namespace, nodes: dict[str, str], ring: Ring, identity: dict[str, Any], mover: Mover,
          tally: Tally) -> float:
    """Scan ``nodes`` (``args.db``, ``args.batch`` records at a time) and hand each batch's
    records that ``ring`` places on another node to ``mover`` (only count them with
    ``args.dry_run``), resuming from and updating ``args.checkpoint`` (a file for this
    ``identity`` only); the ring document is left where it is.  Returns the seconds taken."""
    state: dict[str, Any] = {"kind": "rebalance", **identity, "done": [], "after": {}}
    if args.checkpoint and not args.dry_run:
        saved = load_state(args.checkpoint, "rebalance")
        if saved is not None:
            if any(saved.get(k, False) != v for k, v in identity.items()):  # (older files: no hash_tags)
                raise CLIError(f"the checkpoint {args.checkpoint} is for another ring, drain list or db; "
                               f"delete it to start over")
            state = saved
            print(f"resuming from {args.checkpoint}: {len(state['done'])} node(s) done", file=sys.stderr)
    started = time.monotonic()
    todo = [name for name in nodes if name not in state["done"]]
    counts = {name: mover.count(name) for name in todo}
    label = "scanning" if args.dry_run else "rebalancing"
    with Progress(sum(counts.values()), label, enabled=not args.quiet) as bar:
        for name in todo:
            host, port = parse_address(nodes[name])
            after = state["after"].get(name)
            start = base64.b64decode(after) if after else None
            try:
                batches = scan(host, port, db=args.db, batch=args.batch, start_after=start, timeout=args.timeout)
                for records in batches:
                    tally.scanned += len(records)
                    bar.update(len(records))
                    by_owner: dict[str, list[Record]] = {}
                    for rec in records:
                        owner = ring.node_for(rec[0])
                        if owner != name and rec[0] != RING_KEY:
                            by_owner.setdefault(owner, []).append(rec)
                            tally.sizes[(name, owner)] += len(rec[0]) + len(rec[1])
                        else:
                            state["after"][name] = _b64(rec[0])
                    for owner, recs in by_owner.items():
                        tally.flows[(name, owner)] += len(recs)
                        if not args.dry_run:
                            mover.move(name, owner, recs)
                    if args.checkpoint and not args.dry_run:
                        save_state(args.checkpoint, state)
            except LookupError:
                # the key to resume after is gone: scan this node again from its start
                print(f"{name}: resume point gone, rescanning the node", file=sys.stderr)
                state["after"].pop(name, None)
                todo.append(name)
                continue
            state["done"].append(name)
            state["after"].pop(name, None)
            if args.checkpoint and not args.dry_run:
                save_state(args.checkpoint, state)
    return time.monotonic() - started


def report(args: argparse.Namespace, tally: Tally, elapsed: float) -> int:
    """Print what a sweep did; the exit status (EXIT_CONFLICTS when keys were left on two
    nodes; a clean run deletes its checkpoint)."""
    counted = tally.flows if args.dry_run else tally.moved
    verb = "would move" if args.dry_run else "moved"
    total = sum(counted.values())
    print(f"scanned {tally.scanned:,} records in {elapsed:.1f}s; {verb} {total:,}"
          + (f" ({human_size(sum(tally.sizes.values()))})" if args.dry_run else ""))
    if counted:
        rows = [["from", "to", "records"] + (["bytes"] if args.dry_run else [])]
        rows += [[src, dst, f"{n:,}"] + ([human_size(tally.sizes[(src, dst)])] if args.dry_run else [])
                 for (src, dst), n in sorted(counted.items())]
        print_table(rows, right=(2, 3))
    if tally.gone:
        print(f"{tally.gone:,} records were removed by clients while being moved (their copies were removed too)")
    if args.dry_run:
        return 0
    if tally.conflicts:
        print(f"{len(tally.conflicts):,} keys are on two nodes with different values and were left on both "
              f"(--on-conflict source|target settles them):", file=sys.stderr)
        for src, dst, key in tally.conflicts[:20]:
            print(f"  {key!r}: {src} and {dst}", file=sys.stderr)
        return EXIT_CONFLICTS
    if args.checkpoint and os.path.exists(args.checkpoint):
        os.unlink(args.checkpoint)
    return 0
