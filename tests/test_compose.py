"""docker-compose.yml and the Dockerfile: a structural check that always runs, ``docker compose
config`` where a compose client works, and the multi-node test module the compose runner
uses, run here against three local servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ktcluster.testing import start_cluster

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NODES = ("node1", "node2", "node3")


def _compose_command() -> list[str] | None:
    """``docker compose`` or ``docker-compose``, whichever can at least print its version."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return command
    return None


def test_compose_file_structure() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {*NODES, "tests"}
    for sid, name in enumerate(NODES, 1):
        node = services[name]
        assert node["image"] == "${KT_IMAGE:-ktcluster:dev}"          # a real KT image when KT_IMAGE is set
        assert node["build"] == "."                                    # else the project's own image
        assert node["entrypoint"] == "${KT_COMMAND:-ktcluster-server}"
        assert node["command"] == ["-host", "0.0.0.0", "-port", "1978", "-ulog", "ulog", "-sid", str(sid),
                                           ":"]
    runner = services["tests"]
    assert runner["build"] == "." and set(runner["depends_on"]) == set(NODES)
    assert runner["environment"]["KT_SERVERS"] == ",".join(f"{n}={n}:1978" for n in NODES)
    assert "tests/test_external_cluster.py" in runner["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "ktcluster-server" in dockerfile
    lowered = dockerfile.lower()
    assert "kyototycoon-" not in lowered and "configure" not in lowered and "make" not in lowered.split()


def test_docker_compose_config_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no working compose client here (neither `docker compose` nor `docker-compose`)")
    env = {k: v for k, v in os.environ.items() if k not in ("KT_IMAGE", "KT_COMMAND")}
    check = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                           timeout=60, env=env, cwd=ROOT, check=False)
    assert check.returncode == 0, check.stderr
    resolved = subprocess.run([*command, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                              env={**env, "KT_IMAGE": "example/kyototycoon:0.9.56", "KT_COMMAND": "/usr/bin/ktserver"},
                              cwd=ROOT, check=False)
    assert resolved.returncode == 0, resolved.stderr
    node = yaml.safe_load(resolved.stdout)["services"]["node1"]
    assert node["image"] == "example/kyototycoon:0.9.56"
    assert node["entrypoint"] in ("/usr/bin/ktserver", ["/usr/bin/ktserver"])


def test_the_compose_runners_tests_pass_against_three_local_servers() -> None:
    with start_cluster(3, ulog=True) as servers:
        spec = ",".join(f"node{i}={srv.address}" for i, srv in enumerate(servers, 1))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                               str(ROOT / "tests" / "test_external_cluster.py")],
                              capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
                              env={**os.environ, "KT_SERVERS": spec})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "5 passed" in summary and "skipped" not in summary, summary
