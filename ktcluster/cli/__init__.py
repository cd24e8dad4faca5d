"""The ``ktcluster`` command: everyday tools for a Kyoto Tycoon fleet.

    ktcluster demo                                   # three throw-away servers, a guided tour
    export KT_SERVERS=kt1=10.0.0.1:1978,kt2=10.0.0.2:1978,kt3=10.0.0.3:1978
    ktcluster stats                                  # per-node and total records, size, connections
    ktcluster stats --watch                          # live: ops/s, p99, errors, breaker, pool (--lag SID)
    ktcluster set user:1 alice && ktcluster get user:1 && ktcluster rm user:1
    ktcluster load users.jsonl --checkpoint load.ckpt # bulk, resumable
    ktcluster dump > all.jsonl                       # every record as JSON lines
    ktcluster tail                                   # the merged replication stream
    ktcluster ring user:1 --add kt4=10.0.0.4:1978    # who holds a key; what a change would move
    ktcluster rebalance --servers ...,kt4=10.0.0.4:1978 --dry-run
    ktcluster bench

Every command takes ``--servers`` (or ``$KT_SERVERS``): ``host:port`` or
``name=host:port`` entries, comma-separated (see :mod:`ktcluster.cli.servers`).
Failures print one line on stderr and exit with a non-zero status: 1 for errors,
2 for usage mistakes, 3 when ``tail`` must resync, 4 when ``rebalance`` left keys
in conflict, 130 when interrupted.  Set ``KTCLUSTER_TRACEBACK=1`` to see the
traceback of an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from ..errors import KyotoTycoonException, NodeDownError, PartialFailureError, ResyncRequiredError
from ..ringdoc import DEFAULT_MAX_CALL, DEFAULT_REFRESH
from .commands import CLIError
from .records import InputError
from .servers import add_server_options

__all__ = ["main", "EXIT_RESYNC"]

#: exit status when a master no longer has the history asked for
EXIT_RESYNC = 3


def _node(text: str) -> tuple[str, str]:
    """``host:port`` or ``name=host:port``."""
    name, sep, address = text.partition("=")
    return (name, address) if sep else (text, text)


def _origin_sid(text: str) -> tuple[str, int]:
    node, sep, sid = text.rpartition("=")
    if not sep or not sid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NODE=SID, not {text!r}")
    return node, int(sid)


def _since(text: str) -> float:
    """Epoch seconds; a negative number counts back from now."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epoch seconds or -SECONDS, not {text!r}") from None
    return time.time() + value if value < 0 else value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _db(text: str) -> int | str:
    """A database index or name."""
    return int(text) if text.isdigit() else text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ktcluster", description="Tools for a Kyoto Tycoon cluster. Servers come from --servers or "
                                      "$KT_SERVERS (host:port or name=host:port, comma-separated).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    add_server_options(common)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary on stderr")
    dbopt = argparse.ArgumentParser(add_help=False)
    dbopt.add_argument("--db", type=_db, default=0, help="database index or name (default 0)")

    def add(name: str, help: str, description: str | None = None, parents: Sequence[argparse.ArgumentParser] = (
            common,)) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=description or help, parents=list(parents))

    demo = add("demo", "start three embedded servers and tour the cluster (nothing is left running)",
               parents=())
    demo.add_argument("--keys", type=_positive, default=100_000, help="keys to load (default 100000)")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    stats = add("stats", "records, size and connections per node and in total (a table); --watch: live",
                "Per node: records, size, connections, uptime and the totals (a table, or --json). With --watch, "
                "a live per-node view refreshed every --interval seconds: ops/s, p99 latency, errors, breaker "
                "state, pool use and (--lag SID) replication lag; with --url, of the application that serves its "
                "cluster.stats() as JSON there (see docs/observability.md).")
    stats.add_argument("--json", action="store_true", help="JSON instead of a table (--watch: one line per refresh)")
    stats.add_argument("--watch", action="store_true", help="refresh a live per-node view until interrupted")
    stats.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    stats.add_argument("--count", type=_positive, default=None, help="stop after this many refreshes")
    stats.add_argument("--url", help="read an application's cluster.stats() JSON from this URL")
    stats.add_argument("--lag", type=int, default=None, metavar="SID",
                       help="also read every master's update log as replication client SID, to show its lag")
    get = add("get", "print a record's value", parents=(common, dbopt))
    get.add_argument("key")
    set_ = add("set", "store a record", parents=(common, dbopt))
    set_.add_argument("key")
    set_.add_argument("value", help="the value ('-' reads it from stdin)")
    set_.add_argument("--expire", type=float, default=None, help="seconds until the record expires")
    rm = add("rm", "remove records", parents=(common, dbopt))
    rm.add_argument("keys", nargs="+", metavar="KEY")

    load = add("load", "bulk-load records from JSON lines or TSV (resumable)",
               "Store the records of FILE ('-': stdin) with set_bulk, --batch records at a time. JSON lines "
               "are what `ktcluster dump` writes: {\"key\": ..., \"value\": ..., \"expires\": epoch} "
               "(key_b64/value_b64 for binary data); TSV lines are key<TAB>value[<TAB>expires]. With "
               "--checkpoint the byte offset reached is saved after every batch and a rerun resumes there.",
               parents=(common, dbopt))
    load.add_argument("file", metavar="FILE")
    load.add_argument("--format", choices=("jsonl", "tsv"), default=None,
                      help="input format (default: tsv for .tsv/.tab/.txt files, else jsonl)")
    load.add_argument("--batch", type=_positive, default=1000, help="records per set_bulk (default 1000)")
    load.add_argument("--checkpoint", metavar="PATH", help="progress file to resume from and keep updated")

    dump = add("dump", "print every record as JSON lines (what load reads)", parents=(common, dbopt))
    dump.add_argument("--node", action="append", metavar="NAME", help="only this node; repeatable")
    dump.add_argument("--batch", type=_positive, default=1000, help=argparse.SUPPRESS)

    tail = add("tail", "print every master's update log, merged and ordered, as JSON lines",
               "Print the update logs of the masters merged into one stream ordered by (timestamp, node), "
               "one JSON object per line: node, ts, sid, db, op (set/remove/clear), key and value (UTF-8 "
               "text, or key_b64/value_b64), expires (epoch seconds or null). Idle/rejoin events go to "
               "stderr. Masters are the NODE arguments, or --servers.")
    tail.add_argument("nodes", nargs="*", metavar="NODE", type=_node,
                      help="a master, host:port or name=host:port (the name is printed as 'node')")
    tail.add_argument("--sid", type=int, default=65535,
                      help="this consumer's server id; entries written with it are not sent (default 65535)")
    tail.add_argument("--since", type=_since, default=None,
                      help="start at this epoch second (0: all history kept; -300: five minutes ago); "
                           "default: now")
    tail.add_argument("--checkpoint-file", metavar="PATH",
                      help="resume from this file if it exists (then --since is ignored) and keep it updated")
    tail.add_argument("--origin-sid", action="append", type=_origin_sid, default=[], metavar="NODE=SID",
                      help="read only entries written on NODE, whose -sid is SID (dual-master pairs); repeatable")
    tail.add_argument("--idle-timeout", type=float, default=5.0,
                      help="seconds after which a silent master stops holding the stream back (default 5)")
    tail.add_argument("--count", type=int, default=None, help="stop after this many records")

    ring = add("ring", "which node holds a key; what adding or removing a node would move",
               "With KEYs: print each key's node. With --add/--remove: the share of keys that would "
               "move, and between which nodes. With neither: each node's share of the ring. "
               "No server is contacted.")
    ring.add_argument("keys", nargs="*", metavar="KEY")
    ring.add_argument("--add", action="append", metavar="NAME[=HOST:PORT]", help="a node to add; repeatable")
    ring.add_argument("--add-weight", type=_positive, default=1, help="ring weight of the added nodes")
    ring.add_argument("--remove", action="append", metavar="NAME", help="a node to remove; repeatable")

    reb = add("rebalance", "move every key to the node the ring says owns it; grow or shrink a live fleet",
              "With a STEP, migrate a cluster whose clients follow the ring document (shared_ring=True) "
              "under traffic: begin (publish the new ring from --add/--remove, wait until every client "
              "routes by it), move (settle every misplaced key), finish (publish the new ring as stable); "
              "abort (during prepare), status, run (all three). Every step is resumable. Without a STEP: "
              "after a ring change, move each key found on a node that does not own it: copy it with its "
              "expiry, verify the copy, then remove the original by compare-and-swap (a key changed "
              "meanwhile is copied again, never lost). --servers is the new ring; --drain lists nodes "
              "leaving it. Resumable with --checkpoint; safe to run again.", parents=(common, dbopt))
    reb.add_argument("step", nargs="?", choices=("begin", "move", "finish", "abort", "status", "run"),
                     help="a live migration's step (see the description)")
    reb.add_argument("--add", action="append", metavar="NAME=HOST:PORT", help="begin: a node to add; repeatable")
    reb.add_argument("--add-weight", type=_positive, default=1, help="begin: ring weight of the added nodes")
    reb.add_argument("--remove", action="append", metavar="NAME", help="begin: a node to drain; repeatable")
    reb.add_argument("--refresh", type=float, default=DEFAULT_REFRESH,
                     help=f"begin, on a cluster without a ring document: seconds between the clients' reads "
                          f"of it (default {DEFAULT_REFRESH:g})")
    reb.add_argument("--max-call", type=float, default=DEFAULT_MAX_CALL,
                     help=f"begin, on a cluster without a ring document: the longest a client call may last "
                          f"(default {DEFAULT_MAX_CALL:g})")
    reb.add_argument("--drain", metavar="LIST", help="nodes to empty that are not in the ring (name=host:port,...)")
    reb.add_argument("--dry-run", action="store_true", help="count what would move; change nothing")
    reb.add_argument("--on-conflict", choices=("keep", "source", "target"), default="keep",
                     help="a key on two nodes with different values: keep both and report it (default), "
                          "or let the misplaced copy (source) or the owner's value (target) win")
    reb.add_argument("--checkpoint", metavar="PATH", help="progress file to resume from (deleted when done)")
    reb.add_argument("--batch", type=_positive, default=1000, help="records moved per batch (default 1000)")

    bench = add("bench", "time set/get and bulk calls through a Cluster (its keys are removed after)")
    bench.add_argument("--keys", type=_positive, default=20_000, help="records for the bulk calls (default 20000)")
    bench.add_argument("--single", type=_positive, default=2_000, help="records for single calls (default 2000)")
    bench.add_argument("--bulk", type=_positive, default=500, help="records per bulk call (default 500)")
    bench.add_argument("--value-size", type=_positive, default=100, help="bytes per value (default 100)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from . import commands, demo, live, rebalance

    if args.command == "rebalance" and args.step:
        return live.live(args)

    if args.command == "stats" and args.watch:
        from .watch import watch

        return watch(args)
    handlers = {"demo": demo.demo, "stats": commands.stats, "get": commands.get, "set": commands.set_,
                "rm": commands.rm, "load": commands.load, "dump": commands.dump, "tail": commands.tail,
                "ring": commands.ring, "rebalance": rebalance.rebalance, "bench": commands.bench}
    return handlers[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # a long-running tail reports its masters' outages; other commands report the error they end with
    logging.basicConfig(format="ktcluster: %(levelname)s: %(message)s",
                        level=logging.WARNING if args.command == "tail" else logging.ERROR)
    name = f"ktcluster {args.command}"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`ktcluster dump | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ResyncRequiredError as exc:
        print(f"{name}: {exc} (oldest ts kept: {exc.oldest_ts})", file=sys.stderr)
        return EXIT_RESYNC
    except (KyotoTycoonException, CLIError, InputError, OSError, ValueError) as exc:
        if os.environ.get("KTCLUSTER_TRACEBACK"):
            raise
        print(f"{name}: {_one_line(exc)}", file=sys.stderr)
        return exc.status if isinstance(exc, CLIError) else 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, PartialFailureError) and exc.errors:
        summary = str(exc).split(" (", 1)[0]
        return f"{summary}: " + "; ".join(dict.fromkeys(_one_line(e) for e in exc.errors.values()))
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, NodeDownError) and exc.node and "last error: " in text:
        # the breaker's wording ("[n] n is marked down (retry in 0.9s); last error: [n] ...") is
        # for logs of a long-lived client; a command just says which node and why
        cause = text.split("last error: ", 1)[1].removeprefix(f"[{exc.node}] ")
        return f"node {exc.node} is down: {cause}"
    return text
