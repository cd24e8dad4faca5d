"""A client process of the live-migration acceptance test (tests/test_migration_acceptance.py).

:func:`client` runs in its own process (multiprocessing, spawn): a shared-ring Cluster
doing a random mix of reads, writes, removes, adds, increments and bulk reads on keys it
alone writes, checking every answer against what it knows it wrote, until told to stop;
then it reads every key and counter once more and reports its counts.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from ktcluster.cluster import Cluster
from ktcluster.errors import KyotoTycoonException, LogicalInconsistencyError, OutcomeUnknownError
from ktcluster.packers import KT_PACKER_BYTES
from ktcluster.retry import RetryPolicy

COUNTERS = 20


def initial(key: str) -> bytes:
    return f"init:{key}".encode()


def client(index: int, seed: dict[str, str], keys: list[str], stop: Any, results: Any) -> None:
    rng = random.Random(index)
    expected: dict[str, bytes | None] = {key: initial(key) for key in keys}
    counters = {f"ctr:{index}:{i}": 0 for i in range(COUNTERS)}
    counts: Counter[str] = Counter()
    live = list(keys)
    cluster = Cluster(seed, shared_ring=True, pack_type=KT_PACKER_BYTES, retry=RetryPolicy(attempts=3, deadline=30))

    def check(key: str, got: bytes | None) -> None:
        want = expected[key]
        counts["reads"] += 1
        if got is None and want is not None:
            counts["missed_reads"] += 1
        elif got != want:
            counts["stale_reads"] += 1

    def forget(key: str) -> None:  # its state is not known any more: stop using it
        counts["forgotten"] += 1
        expected.pop(key, None)
        counters.pop(key, None)
        if key in live:
            live.remove(key)

    n = 0
    while not stop.is_set() and live:
        n += 1
        key = rng.choice(live)
        roll = rng.random()
        try:
            if roll < 0.45:
                check(key, cluster.get(key))
            elif roll < 0.65:
                value = f"{index}:{n}".encode()
                cluster.set(key, value)
                expected[key] = value
                counts["writes"] += 1
            elif roll < 0.72:
                if cluster.remove(key) != (expected[key] is not None):
                    counts["wrong_answers"] += 1
                expected[key] = None
                counts["removes"] += 1
            elif roll < 0.80:
                value = f"{index}:{n}:added".encode()
                try:
                    added = cluster.add(key, value)
                except LogicalInconsistencyError:
                    added = False
                if added != (expected[key] is None):
                    counts["wrong_answers"] += 1
                if added:
                    expected[key] = value
                counts["adds"] += 1
            elif roll < 0.95:
                key = rng.choice(list(counters))
                got = cluster.increment(key, 1)
                counters[key] += 1
                counts["increments"] += 1
                if got != counters[key]:
                    counts["counter_drift"] += abs(got - counters[key])
                    counters[key] = got
            else:
                some = rng.sample(live, min(10, len(live)))
                found = cluster.get_bulk(some)
                for k in some:
                    check(k, found.get(k))
        except OutcomeUnknownError:
            forget(key)
        except KyotoTycoonException as exc:  # a write that failed midway may or may not be done
            counts[f"error:{type(exc).__name__}"] += 1
            if 0.45 <= roll < 0.95:
                forget(key)
    stop.wait()
    final = cluster.get_bulk(list(expected))
    for key, want in expected.items():
        if final.get(key) != want:
            counts["lost_writes"] += 1
    for key, want in counters.items():
        got = cluster.get_int(key)
        counts["counter_drift"] += abs(got - want)
    cluster.close()
    results.put(dict(counts))
