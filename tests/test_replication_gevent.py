"""The merged-stream suite again, in a process that did ``gevent.monkey.patch_all()``:
the per-master readers are then greenlets and every blocking call yields to the hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cluster_gevent import CHILD

HERE = Path(__file__).parent


@pytest.mark.skipif(bool(os.environ.get("KTCLUSTER_GEVENT_RUN")), reason="already the gevent run")
def test_replication_stream_suite_passes_under_gevent_monkey_patching():
    env = dict(os.environ, KTCLUSTER_GEVENT_RUN="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, "-x", "-q", "-p", "no:cacheprovider",
                           str(HERE / "test_replication_stream.py")],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
