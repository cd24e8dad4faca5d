"""The package namespace: the client, the cluster and what configures it, replication and
every error class import from ``ktcluster`` itself, lazily (``import ktcluster`` loads none
of the cluster's dependencies)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import ktcluster
from ktcluster import errors


def test_every_public_name_comes_from_its_module():
    for name in ktcluster.__all__:
        module = ktcluster._EXPORTS.get(name, "errors")
        assert getattr(ktcluster, name) is getattr(importlib.import_module(f"ktcluster.{module}"), name), name
    assert set(ktcluster.__all__) <= set(dir(ktcluster))
    with pytest.raises(AttributeError):
        ktcluster.NoSuchThing  # noqa: B018


def test_every_error_class_is_exported():
    classes = {name for name in errors.__all__ if isinstance(getattr(errors, name), type)}
    assert set(ktcluster.__all__) - set(ktcluster._EXPORTS) == classes
    assert all(issubclass(getattr(ktcluster, name), ktcluster.KyotoTycoonException) for name in classes)


def test_cluster_building_blocks_import_from_the_package():
    from ktcluster import (
        NO_RETRY,
        BreakerState,
        Cluster,
        DeadlineExceeded,
        HealthConfig,
        NodeDownError,
        OpClass,
        OutcomeUnknownError,
        PartialFailureError,
        RetryBudget,
        RetryPolicy,
        Ring,
        RingDiff,
    )
    from ktcluster.cluster import Cluster as DefinedCluster
    from ktcluster.fanout import DeadlineExceeded as FanoutDeadline

    assert Cluster is DefinedCluster and DeadlineExceeded is FanoutDeadline
    policy = RetryPolicy(attempts=2, deadline=1.0, budget=RetryBudget(ratio=0.1))
    assert NO_RETRY.attempts == 1 and policy.attempts == 2 and HealthConfig(failure_threshold=1)
    assert OpClass.UNSAFE.value == "unsafe" and BreakerState.OPEN.value == "open"
    diff = Ring({"a": 1}).diff(Ring({"a": 1, "b": 1}))
    assert isinstance(diff, RingDiff)
    assert issubclass(NodeDownError, ktcluster.KTConnectionError)
    assert not issubclass(OutcomeUnknownError, ktcluster.KTConnectionError)
    assert issubclass(PartialFailureError, ktcluster.KyotoTycoonException)


def loaded_after(code: str) -> list[str]:
    probe = ("import sys\n" + code + "\nprint(' '.join(sorted(m for m in "
             "('gevent', 'uhashring', 'tenacity', 'ktcluster.cluster', 'ktcluster.client') if m in sys.modules)))")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()


def test_import_ktcluster_is_cheap():
    assert loaded_after("import ktcluster") == []
    assert loaded_after("from ktcluster import NodeDownError, KEEP") == []
    assert loaded_after("from ktcluster import KyotoTycoon") == ["ktcluster.client"]
    assert "gevent" not in loaded_after("from ktcluster import Cluster")
