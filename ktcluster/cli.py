"""The ``ktcluster`` command.

    ktcluster tail kt1:1978 kt2:1978 kt3:1978 --checkpoint-file tail.json

``tail`` prints the merged update-log stream of the given masters as JSON lines
(see :func:`ktcluster.replication.tail`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .errors import KyotoTycoonException, ResyncRequiredError

__all__ = ["main"]

#: exit status when a master no longer has the history asked for
EXIT_RESYNC = 3


def _node(text: str) -> tuple[str | None, str]:
    """``host:port`` or ``name=host:port``."""
    name, sep, address = text.partition("=")
    return (name, address) if sep else (None, text)


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ktcluster", description="Kyoto Tycoon cluster tools")
    commands = parser.add_subparsers(dest="command", required=True)
    tail = commands.add_parser(
        "tail", help="print every master's update log, merged and ordered, as JSON lines",
        description="Print the update logs of the masters merged into one stream ordered by "
                    "(timestamp, node), one JSON object per line: node, ts, sid, db, op (set/remove/clear), "
                    "key and value (UTF-8 text, or key_b64/value_b64), expires (epoch seconds or null). "
                    "Idle/rejoin events go to stderr.")
    tail.add_argument("nodes", nargs="+", metavar="NODE", type=_node,
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .replication import tail

    named = [name for name, _ in args.nodes]
    masters: list[str] | dict[str, str]
    if any(named):
        masters = {name or address: address for name, address in args.nodes}
    else:
        masters = [address for _, address in args.nodes]
    try:
        tail(masters, args.sid, since=args.since, checkpoint_file=args.checkpoint_file,
             origin_sids=dict(args.origin_sid), idle_timeout=args.idle_timeout, count=args.count)
    except ResyncRequiredError as exc:
        print(f"ktcluster tail: {exc} (oldest ts kept: {exc.oldest_ts})", file=sys.stderr)
        return EXIT_RESYNC
    except (KyotoTycoonException, OSError) as exc:
        print(f"ktcluster tail: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
