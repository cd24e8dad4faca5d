"""Conformance: every golden transcript recorded from a real ktserver replays against
the server under test (the embedded one, or $KT_SERVER_BIN) byte for byte, after the
documented normalisation (tests/golden/README.md)."""

from __future__ import annotations

import pytest
from golden_replay import load_cases, replay

from ktcluster.testing import using_real_server

#: Cases a real ktserver other than the recorded build cannot reproduce, and why.
REAL_SERVER_ONLY_RECORDED_BUILD = {
    "ordering/-": "ProtoHashDB ('-') iterates in std::unordered_map order, which depends on the C++ "
                  "library ktserver was built with; only the recorded build (and the embedded server, "
                  "which reproduces it) answers with the recorded ranks.",
}

FILES = ["http_rpc", "http_rest", "binary", "db_types", "replication", "memcached", "lua"]
CASES = [pytest.param(case, id=f"{name}:{case['name']}") for name in FILES for case in load_cases(name)]


@pytest.mark.parametrize("case", CASES)
def test_golden(case):
    reason = REAL_SERVER_ONLY_RECORDED_BUILD.get(case["name"])
    if reason and using_real_server():
        pytest.skip(reason)
    replay(case)
