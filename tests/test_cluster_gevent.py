"""Run the cluster suites again in a process that did ``gevent.monkey.patch_all()``.

There, fan-outs use greenlets, pools block greenlets and fault proxies run as
greenlets; ``test_runs_in_the_expected_concurrency_mode`` in each suite checks
that the mode really switched.  The child inherits KT_SERVER_BIN and friends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SUITES = ["test_cluster.py", "test_faults.py", "test_gevent_app.py", "test_lifecycle.py", "test_observe.py",
          "test_observe_extras.py"]

CHILD = """
from gevent import monkey
monkey.patch_all()
import sys
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


@pytest.mark.skipif(bool(os.environ.get("KTCLUSTER_GEVENT_RUN")), reason="already the gevent run")
@pytest.mark.parametrize("suite", SUITES)
def test_suite_passes_under_gevent_monkey_patching(suite):
    env = dict(os.environ, KTCLUSTER_GEVENT_RUN="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, "-x", "-q", "-p", "no:cacheprovider", str(HERE / suite)],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
