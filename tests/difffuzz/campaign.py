"""Campaigns: sessions run on ktserver and on the embedded server, compared, shrunk.

:func:`campaign` runs ``sessions`` generated from one seed, going through the database
types in turn (two databases per session: the type under test, then one of the memory
types), and compares the two servers' transcripts step by step.  At the first step where
they differ, :func:`shrink` looks for a shorter session that still diverges: the steps
after the divergence are dropped, then ever smaller chunks of the others (ddmin), each
candidate run on fresh servers of both kinds; a divergence that does not come back on
the unshrunk session is reported as flaky.  The result is a :class:`Report`: figures,
and each :class:`Divergence` with its minimal steps and both answers.  The two servers
of a session run at the same time.

    python tests/difffuzz --requests 100000 --seed 1 --save found   # KT_SERVER_BIN must be set
    python tests/difffuzz --replay found/seed100003-step5.session
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import runner
from .runner import run
from .steps import DB_TYPES, Session, Step, generate

__all__ = ["Divergence", "Report", "campaign", "shrink", "first_divergence", "replay", "embedded_command", "main"]

_SECOND_DBS = [":", "+", "*"]


def embedded_command() -> list[str]:
    return [sys.executable, "-m", "ktcluster.server"]


@dataclass
class Divergence:
    """Where two servers answered differently: the (shrunk) session, the step, both
    answers, and whether it came back when the session was run again."""

    session: Session
    index: int
    real: bytes
    embedded: bytes
    reproduced: bool = True

    def __str__(self) -> str:
        steps = "\n".join(f"  {i:3d}. {step.label}" for i, step in enumerate(self.session.steps))
        flaky = "" if self.reproduced else " (did not come back: flaky)"
        at = next((i for i, (x, y) in enumerate(zip(self.real, self.embedded, strict=False)) if x != y),
                  min(len(self.real), len(self.embedded)))
        start = max(at - 300, 0)
        cut = "..." if start else ""
        return (f"divergence{flaky}: seed {self.session.seed}, dbs {self.session.dbs}, step {self.index} of\n"
                f"{steps}\n  ktserver: {cut}{self.real[start:at + 300]!r}\n"
                f"  embedded: {cut}{self.embedded[start:at + 300]!r}")


@dataclass
class Report:
    sessions: int = 0
    requests: int = 0
    seconds: float = 0.0
    divergences: list[Divergence] = field(default_factory=list)
    dbs: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        lines = [f"{self.sessions} sessions, {self.requests} requests over {len(self.dbs)} database specs "
                 f"in {self.seconds:.0f} s: {len(self.divergences)} divergence(s)"]
        lines += [str(d) for d in self.divergences]
        return "\n".join(lines)


def first_divergence(session: Session, real: Sequence[str], embedded: Sequence[str], libexec: str | None,
                     run_session: Callable[..., list[bytes]] = run) -> Divergence | None:
    """Run ``session`` on both servers (at the same time); the first step where they
    differ, if any."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        real_run = pool.submit(run_session, session, real, libexec)
        embedded_run = pool.submit(run_session, session, embedded, None)
        a, b = real_run.result(), embedded_run.result()
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return Divergence(session, index, x, y)
    return None


def shrink(found: Divergence, diverges: Callable[[Session], Divergence | None], budget: float = 300.0) -> Divergence:
    """A shorter session that still diverges (ddmin over its steps, within ``budget``
    seconds); ``found`` marked flaky if its own session no longer diverges."""
    deadline = time.monotonic() + budget
    steps = found.session.steps[:found.index + 1]
    best = diverges(found.session.with_steps(steps))
    if best is None:
        found.reproduced = False
        return found
    chunks = 2
    while len(steps) > 1 and time.monotonic() < deadline:
        size = max(1, len(steps) // chunks)
        for start in range(0, len(steps), size):
            candidate = steps[:start] + steps[start + size:]
            if not candidate:
                continue
            result = diverges(found.session.with_steps(candidate))
            if result is not None:
                steps = candidate[:result.index + 1]
                best = result
                chunks = max(chunks - 1, 2)
                break
            if time.monotonic() >= deadline:
                break
        else:
            if size == 1:
                break
            chunks = min(chunks * 2, len(steps))
    return best


def campaign(seed: int, requests: int, real: Sequence[str], *, session_steps: int = 300,
             dbs: Sequence[str] = DB_TYPES, paired: bool = False, libexec: str | None = None,
             shrink_budget: float = 300.0, save: str | None = None,
             log: Callable[[str], None] = lambda line: None) -> Report:
    """Run sessions of ``session_steps`` steps until ``requests`` steps have been sent to
    each server; every divergence is shrunk and reported.  Each session has two
    databases: the next type of ``dbs`` and a memory one, or with ``paired`` the next
    two types of ``dbs``.  ``save``: a directory where each shrunk session is written
    (as a Python expression) for :func:`replay`."""
    report = Report()
    embedded = embedded_command()
    started = time.monotonic()
    number = 0
    while report.requests < requests:
        if paired:
            specs = [dbs[2 * number % len(dbs)], dbs[(2 * number + 1) % len(dbs)]]
        else:
            specs = [dbs[number % len(dbs)], _SECOND_DBS[(number // len(dbs)) % len(_SECOND_DBS)]]
        session = generate(seed * 100003 + number, specs, min(session_steps, requests - report.requests),
                           memcached=number % 3 != 2, lua=number % 4 != 3)
        number += 1
        found = first_divergence(session, real, embedded, libexec)
        report.sessions += 1
        report.requests += len(session.steps)
        report.dbs.update(specs)
        if found is not None:
            log(f"session {number}: divergence at step {found.index}; shrinking")
            found = shrink(found, lambda s: first_divergence(s, real, embedded, libexec), shrink_budget)
            report.divergences.append(found)
            if save is not None:
                path = os.path.join(save, f"seed{found.session.seed}-step{found.index}.session")
                with open(path, "w") as f:
                    f.write(repr(found.session) + "\n")
                log(f"saved as {path}")
            log(str(found))
        log(f"session {number} ({specs}): {report.requests} requests, {len(report.divergences)} divergence(s), "
            f"{time.monotonic() - started:.0f} s")
    report.seconds = time.monotonic() - started
    return report


def replay(path: str, real: Sequence[str], libexec: str | None) -> Divergence | None:
    """Run a session saved by :func:`campaign` on both servers again."""
    with open(path) as f:
        session = eval(f.read(), {"Session": Session, "Step": Step})   # our own file
    return first_divergence(session, real, embedded_command(), libexec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/difffuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--requests", type=int, default=10000, help="steps sent to each server in all")
    parser.add_argument("--session-steps", type=int, default=300)
    parser.add_argument("--dbs", nargs="*", default=DB_TYPES, help="database specs to go through")
    parser.add_argument("--shrink-budget", type=float, default=300.0, help="seconds spent shrinking each divergence")
    parser.add_argument("--save", metavar="DIR", help="write each shrunk session to DIR, for --replay")
    parser.add_argument("--replay", metavar="FILE", help="run a saved session again, and nothing else")
    parser.add_argument("--compare-sizes", action="store_true",
                        help="compare status's size, realsize and cusage too (emulated figures)")
    args = parser.parse_args(argv)
    binary = os.environ.get("KT_SERVER_BIN")
    if not binary:
        parser.error("set KT_SERVER_BIN to a real ktserver (and KT_LIBEXEC to its plug-ins)")
    libexec = os.environ.get("KT_LIBEXEC") or os.path.join(os.path.dirname(os.path.realpath(binary)), "..",
                                                           "libexec")
    runner.MASK_SIZES = not args.compare_sizes
    if args.replay:
        found = replay(args.replay, [binary], libexec)
        print(found or "no divergence")
        return 1 if found else 0
    report = campaign(args.seed, args.requests, [binary], session_steps=args.session_steps, dbs=args.dbs,
                      libexec=libexec, shrink_budget=args.shrink_budget, save=args.save,
                      log=lambda line: print(line, flush=True))
    print(report)
    return 1 if report.divergences else 0
