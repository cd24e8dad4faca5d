"""The differential fuzzer (tests/difffuzz): a short seeded campaign against a real
ktserver, and the shrinker on its own.  A long campaign is run by hand:
``KT_SERVER_BIN=... python tests/difffuzz --requests 100000``."""

from __future__ import annotations

import os
import random
import re

import pytest
from difffuzz.campaign import Divergence, campaign, shrink
from difffuzz.steps import DB_TYPES, Step, _Generator, generate
from golden_replay import libexec_dir

from ktcluster.testing import using_real_server


@pytest.mark.skipif(not using_real_server(), reason="the differential fuzzer compares the embedded server with "
                    "a real ktserver: set KT_SERVER_BIN (and KT_LIBEXEC) to run it")
@pytest.mark.timeout(180)
def test_short_campaign_finds_no_divergence():
    """Every database type once, two per session, 150 steps per session."""
    sessions = (len(DB_TYPES) + 1) // 2
    report = campaign(13, 150 * sessions, [os.environ["KT_SERVER_BIN"]], session_steps=150, paired=True,
                      libexec=libexec_dir(), shrink_budget=60)
    assert report.sessions == sessions and report.dbs == set(DB_TYPES)
    assert not report.divergences, str(report)


def test_generation_is_reproducible_and_covers_every_kind_of_step():
    first = generate(7, ["casket.kch", ":"], 2000)
    assert first.steps == generate(7, ["casket.kch", ":"], 2000).steps
    assert {step.kind for step in first.steps} == {"http", "binary", "memcache", "raw", "pause", "block", "repl"}
    labels = " ".join(step.label for step in first.steps)
    for needle in ("rpc play_script", "binary play_script", "rest PUT", "pipelined", "cur_jump", "match_regex"):
        assert needle in labels


def test_regex_anchors_stand_only_at_the_ends_of_a_pattern():
    """Next to a newline, glibc's ``^`` and ``$`` elsewhere in a pattern follow its
    automaton's internals, which the embedded server does not (docs/embedded-server.md)."""
    generator = _Generator(random.Random(3), [":"], True, True, True)
    patterns = [generator.regex().lstrip(b"(").rstrip(b")") for _ in range(5000)]
    assert any(p.startswith(b"^") for p in patterns) and any(b"$" in p for p in patterns)
    for pattern in patterns:
        assert b"^" not in pattern.replace(b"[^", b"[")[1:]
        assert re.fullmatch(rb"[^$]*(\$(\*\?|[*+?]|\{[0-9,]*\})?)?", pattern), pattern


def test_shrink_keeps_only_what_the_divergence_needs():
    """A fake pair of servers that diverge at any step labelled "bad" once a step
    labelled "setup" came before it: the minimal session is those two steps."""
    session = generate(1, [":"], 0).with_steps(
        [Step("pause", f"noise {i}") for i in range(30)] + [Step("pause", "setup")]
        + [Step("pause", f"noise {i}") for i in range(30, 50)] + [Step("pause", "bad")]
        + [Step("pause", "after")])
    runs = []

    def diverges(candidate):
        runs.append(candidate)
        labels = [step.label for step in candidate.steps]
        if "setup" in labels and "bad" in labels[labels.index("setup"):]:
            return Divergence(candidate, labels.index("bad"), b"real", b"embedded")
        return None

    found = shrink(diverges(session), diverges)
    assert [step.label for step in found.session.steps] == ["setup", "bad"]
    assert found.reproduced and len(runs) < 60
