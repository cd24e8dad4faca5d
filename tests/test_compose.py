"""docker-compose.yml, the Dockerfile and scripts/compose-check.sh: a structural check that
always runs, ``config`` under each Compose client found, the multi-node test module the
compose runner uses run here against three local servers (a node stopped and restarted
included), and the check script itself when a Docker engine is reachable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ktcluster.testing import KTServer, start_cluster

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CHECK_SCRIPT = ROOT / "scripts" / "compose-check.sh"
NODES = ("node1", "node2", "node3")
CLIENTS = {"v2": ["docker", "compose"], "v1": ["docker-compose"]}
#: variables the compose file reads; each test sets those it wants
COMPOSE_VARIABLES = ("KT_IMAGE", "KT_COMMAND", "PYTHON_IMAGE")


def _works(command: list[str]) -> bool:
    if shutil.which(command[0]) is None:
        return False
    probe = subprocess.run([*command, "version"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def test_compose_file_structure() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    # the tests service builds the only image, and comes first: docker-compose v1 makes
    # images in file order and would try to pull ktcluster:dev for a node before it
    assert list(services) == ["tests", *NODES]
    runner = services["tests"]
    assert runner["image"] == "ktcluster:dev"
    assert runner["build"] == {"context": ".", "args": ["PYTHON_IMAGE"]}
    assert "depends_on" not in runner                  # it waits for the nodes itself
    assert runner["environment"] == {"KT_SERVERS": ",".join(f"{n}={n}:1978" for n in NODES)}
    assert "tests/test_external_cluster.py" in runner["command"]
    for sid, name in enumerate(NODES, 1):
        node = services[name]
        assert "build" not in node                     # so a KT_IMAGE is never built over
        assert node["image"] == "${KT_IMAGE:-ktcluster:dev}"
        assert node["entrypoint"] == "${KT_COMMAND:-ktcluster-server}"
        # no -host: ktserver refuses 0.0.0.0, and without it both servers listen everywhere
        assert node["command"] == ["-port", "1978", "-ulog", "ulog", "-sid", str(sid), "casket.kch"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE\nFROM ${PYTHON_IMAGE:-python:3.12-slim}\n" in dockerfile
    assert "pip install" in dockerfile and "ktcluster-server" in dockerfile
    lowered = dockerfile.lower()
    assert "kyototycoon-" not in lowered and "configure" not in lowered and "make" not in lowered.split()


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_compose_config_never_builds_a_kt_image(client: str) -> None:
    command = CLIENTS[client]
    if not _works(command):
        pytest.skip(f"`{' '.join(command)}` does not work here")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}

    def config(**variables: str) -> dict:
        done = subprocess.run([*command, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                              env={**env, **variables}, cwd=ROOT, check=False)
        assert done.returncode == 0, done.stderr
        return yaml.safe_load(done.stdout)["services"]

    def entrypoint(service: dict) -> list[str]:          # v1 prints a string, v2 a list
        value = service["entrypoint"]
        return value if isinstance(value, list) else [value]

    embedded = config()
    for name in NODES:
        assert embedded[name]["image"] == "ktcluster:dev"
        assert entrypoint(embedded[name]) == ["ktcluster-server"]
    real = config(KT_IMAGE="example/kyototycoon:0.9.56", KT_COMMAND="/usr/bin/ktserver")
    for name in NODES:
        assert real[name]["image"] == "example/kyototycoon:0.9.56"
        assert entrypoint(real[name]) == ["/usr/bin/ktserver"]
    built = {name: svc["image"] for name, svc in real.items() if "build" in svc}
    assert built == {"tests": "ktcluster:dev"}
    assert config(PYTHON_IMAGE="example/python:3.12")["tests"]["build"]["args"] == {"PYTHON_IMAGE":
                                                                                        "example/python:3.12"}


def _run_acting_on_restart_lines(argv: list[str], env: dict[str, str], servers: dict[str, KTServer],
                                 timeout: float) -> tuple[int, str]:
    """Run ``argv``; stop or start a server when its output says ``KT-RESTART stop|start NAME``
    (what scripts/compose-check.sh does with ``docker compose stop|start``)."""
    lines: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=ROOT) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                match = re.fullmatch(r"KT-RESTART (stop|start) (\S+)", line.strip())
                if match:
                    srv = servers[match[2]]
                    if match[1] == "stop":
                        srv.stop()
                    else:
                        srv.restart()       # on its port and directory again
            return proc.wait(timeout), "".join(lines)
        finally:
            proc.kill()


def test_the_compose_runners_tests_pass_against_three_local_servers() -> None:
    # the nodes of docker-compose.yml: a file database and an update log each
    with start_cluster(3, "casket.kch", ulog=True) as servers:
        by_name = {f"node{i}": srv for i, srv in enumerate(servers, 1)}
        spec = ",".join(f"{name}={srv.address}" for name, srv in by_name.items())
        status, output = _run_acting_on_restart_lines(
            [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
             str(ROOT / "tests" / "test_external_cluster.py")],
            {**os.environ, "KT_SERVERS": spec, "KT_RESTART_NODE": "node2"}, by_name, timeout=240)
    assert status == 0, output[-5000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\b6 passed in\b", summary) and "skipped" not in summary, summary
    assert "KT-RESTART stop node2\n" in output and "KT-RESTART start node2\n" in output


def _docker_engine() -> str | None:
    """Why no Docker engine can run the check here, or None when one can."""
    if shutil.which("docker") is None:
        return "no docker command"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip().splitlines()
        return f"no Docker engine reachable ({said[-1] if said else f'docker info: status {probe.returncode}'})"
    return None


@pytest.mark.timeout(3600)
def test_compose_check_script_under_a_docker_engine() -> None:
    reason = _docker_engine()
    if reason:
        pytest.skip(f"{reason} (scripts/compose-check.sh runs docker-compose.yml under one)")
    done = subprocess.run(["bash", str(CHECK_SCRIPT)], capture_output=True, text=True, timeout=3500, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "compose-check: passed: " in done.stdout
