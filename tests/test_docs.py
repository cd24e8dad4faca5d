"""Every code sample of README.md and docs/*.md runs.

A doc's ```python blocks run in order as one script (later blocks see what earlier ones
defined), in a fresh interpreter, with ``servers`` (the ``"host:port"`` addresses of three
running servers with update logs, sids 1-3) and ``host``/``port`` (the first of them)
defined, as the docs announce.  Its ```sh blocks run with bash (``set -euo pipefail``)
with ``KT_SERVERS`` naming the same servers and this environment's ``ktcluster`` first on
the PATH.  A ```python block whose first line is ``# file: NAME`` is not run: it is written
to NAME in the working directory of both, for a later block to use.  A block preceded by
``<!-- not run: REASON -->`` is skipped (the install and Quick start commands, which CI
and tests/test_cli.py run, long benchmarks, a server that runs until stopped); any other
fenced block must be output (```text, ```json, ```yaml), never unlabelled.  Relative
links must point at files that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ktcluster.cluster import Cluster
from ktcluster.testing import KTServer, start_cluster

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "sh"}
SHOWN = {"text", "json", "yaml"}
SKIP = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")

PREAMBLE = """\
import os
servers = os.environ["DOC_SERVERS"].split(",")
host, port = servers[0].rsplit(":", 1)[0], int(servers[0].rsplit(":", 1)[1])
"""


FILE = re.compile(r"# file: (\S+)\n")


@dataclass
class Block:
    lang: str
    code: str
    line: int
    skip: str | None

    @property
    def file(self) -> str | None:
        """The name a ``# file: NAME`` block is saved as."""
        match = FILE.match(self.code)
        return match.group(1) if match else None


def write_files(path: Path, workdir: Path) -> None:
    for block in blocks(path):
        if block.lang == "python" and block.file:
            (workdir / block.file).write_text(block.code)


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang, start = line[3:].strip(), i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
            skip = SKIP.search(previous)
            found.append(Block(lang, "\n".join(lines[start:end]) + "\n", start, skip.group(1) if skip else None))
            i, previous = end + 1, ""
            continue
        if line.strip():
            previous = line
        i += 1
    return found


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3, ulog=True) as started:
        yield started


@pytest.fixture
def addresses(servers: list[KTServer]) -> Iterator[str]:
    yield ",".join(srv.address for srv in servers)
    with Cluster([srv.address for srv in servers]) as cluster:
        cluster.clear()


def test_docs_exist() -> None:
    names = {p.name for p in DOCS}
    for required in ("README.md", "single-server.md", "cluster.md", "failures.md", "replication.md", "gevent.md",
                     "testing.md", "embedded-server.md", "performance.md", "cli.md"):
        assert required in names


@pytest.mark.parametrize("path", DOCS, ids=_ids)
def test_fences_are_labelled_and_links_resolve(path: Path) -> None:
    for block in blocks(path):
        assert block.lang in RUN | SHOWN, f"{path.name}:{block.line}: fence language {block.lang!r}"
        if block.skip is not None:
            assert block.lang in RUN
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


@pytest.mark.parametrize("path", DOCS, ids=_ids)
def test_python_samples_run(path: Path, addresses: str, tmp_path: Path) -> None:
    code = [b for b in blocks(path) if b.lang == "python" and b.skip is None and not b.file]
    if not code:
        pytest.skip(f"{path.name} has no Python sample")
    write_files(path, tmp_path)
    script = PREAMBLE + "".join(f"# --- {path.name}:{b.line}\n{b.code}" for b in code)
    (tmp_path / "sample.py").write_text(script)
    proc = subprocess.run([sys.executable, "sample.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "DOC_SERVERS": addresses}, check=False)
    assert proc.returncode == 0, f"{path.name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("path", DOCS, ids=_ids)
def test_shell_samples_run(path: Path, addresses: str, tmp_path: Path) -> None:
    code = [b for b in blocks(path) if b.lang == "sh" and b.skip is None]
    if not code:
        pytest.skip(f"{path.name} has no shell sample that runs here")
    write_files(path, tmp_path)
    env = {**os.environ, "KT_SERVERS": addresses,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for block in code:
        proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block.code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=180, env=env, check=False)
        assert proc.returncode == 0, f"{path.name}:{block.line}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def test_the_retry_table_of_failures_md_is_the_operation_table():
    """docs/failures.md lists each operation class's operations: exactly retry.OPERATIONS."""
    from ktcluster.retry import OPERATIONS, OpClass

    text = (ROOT / "docs" / "failures.md").read_text()
    for cls in OpClass:
        row = re.search(rf"^\| {cls.name} \| ([^|]*) \|", text, re.M)
        assert row, f"no {cls.name} row in docs/failures.md"
        listed = {name.strip() for name in re.sub(r"\(.*?\)", "", row.group(1)).split(",")}
        assert listed == {op for op, c in OPERATIONS.items() if c is cls}, cls
