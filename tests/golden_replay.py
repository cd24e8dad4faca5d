"""Replay the golden transcripts (tests/golden/*.json, recorded from a real ktserver)
against a server and compare what comes back, after the documented normalisation.

The server is the embedded one, or ``$KT_SERVER_BIN`` (then ``$KT_LIBEXEC``, default
``<bin dir>/../libexec``, must hold the plug-ins ktplugservmemc.so and ktplugdbvoid.so).
See tests/golden/README.md for the case and step format.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktcluster.protocol.binary import Incomplete
from ktcluster.protocol.http import parse_response_head
from ktcluster.testing import free_port, server_command

GOLDEN_DIR = Path(__file__).parent / "golden"
RECV_TIMEOUT = 5.0
CLOSE_TIMEOUT = 3.0
#: how long a step that expects silence (no reply, connection kept) listens for stray bytes
QUIET_TIMEOUT = 0.5


def load_cases(name: str) -> list[dict[str, Any]]:
    with open(GOLDEN_DIR / f"{name}.json") as f:
        return json.load(f)


def unesc(s: str) -> bytes:
    return s.encode("ascii").decode("unicode_escape").encode("latin-1")


def step_bytes(step: dict[str, Any], key: str) -> bytes:
    if step.get(f"{key}_encoding") == "base64":
        return base64.b64decode(step[key])
    return unesc(step[key])


def normalize(data: bytes, volatile: list[Any]) -> bytes:
    """tests/golden/README.md's reference normalisation."""
    for a, b in sorted((v["range"] for v in volatile if isinstance(v, dict)), reverse=True):
        data = data[:a] + b"#" * (b - a) + data[b:]
    for v in volatile:
        if not isinstance(v, str):
            continue
        if v.startswith("tsv:"):
            data = re.sub(rb"(?m)(^|(?<=\n))(" + re.escape(v[4:].encode("latin-1")) + rb")\t[^\n]*",
                          rb"\2\t<V>", data)
        elif v.startswith("line:"):
            data = re.sub(rb"(?m)^(" + re.escape(v[5:].encode("latin-1")) + rb")[^\r\n]*", rb"\1<V>", data)
        elif v == "body":
            head, sep, _ = data.partition(b"\r\n\r\n")
            data = head + sep + b"<V>" if sep else data
        else:
            data = re.sub(rb"(?im)^(" + re.escape(v.encode("latin-1")) + rb"):[^\r\n]*", rb"\1: <V>", data)
    return data


def libexec_dir() -> str:
    explicit = os.environ.get("KT_LIBEXEC")
    if explicit:
        return explicit
    binary = os.environ["KT_SERVER_BIN"]
    return os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(binary)), "..", "libexec"))


def _http_messages_complete(actual: bytes, expected: bytes) -> bool:
    """Does ``actual`` hold as many complete HTTP responses as ``expected``?  Framing
    follows each response's own head (Content-Length, or none for HEAD answers)."""
    pos_e = pos_a = 0
    while pos_e < len(expected):
        try:
            head_e = parse_response_head(expected, pos_e, head_request=True)
        except Exception:
            return len(actual) >= len(expected)
        has_length = b"content-length" in head_e.headers and not _is_head_answer(expected, pos_e, head_e)
        body_e = int(head_e.headers[b"content-length"]) if has_length else 0
        pos_e = head_e.body_start + body_e
        try:
            head_a = parse_response_head(actual, pos_a, head_request=True)
        except Incomplete:
            return False
        except Exception:
            return True
        body_a = int(head_a.headers.get(b"content-length", b"0")) if has_length else 0
        pos_a = head_a.body_start + body_a
        if len(actual) < pos_a:
            return False
    return True


def _is_head_answer(expected: bytes, pos: int, head: Any) -> bool:
    """A HEAD answer may carry Content-Length (REST) with no body: the next response
    (or the end) follows the head directly."""
    start = head.body_start
    return start == len(expected) and int(head.headers.get(b"content-length", b"0")) > 0 or (
        expected.startswith(b"HTTP/1.1 ", start) and int(head.headers.get(b"content-length", b"0")) > 0)


@dataclass
class Mismatch(Exception):
    case: str
    index: int
    step: dict[str, Any]
    detail: str

    def __str__(self) -> str:
        note = self.step.get("note", "")
        return f"{self.case} step {self.index} ({note}): {self.detail}"


@dataclass
class Replay:
    case: dict[str, Any]
    workdir: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    conns: dict[str, socket.socket] = field(default_factory=dict)
    listener: socket.socket | None = None
    received: dict[int, bytes] = field(default_factory=dict)

    # -- setup ------------------------------------------------------------------------------

    def substitute_ports(self, data: bytes) -> bytes:
        for name, recorded in self.case["ports"].items():
            data = data.replace(str(recorded).encode(), str(self.ports[name]).encode())
        return data

    def argv(self, template: list[str]) -> list[str]:
        real = bool(os.environ.get("KT_SERVER_BIN"))
        libexec = libexec_dir() if real else ""
        out = list(server_command())
        for arg in template[1:]:
            for name, port in self.ports.items():
                arg = arg.replace("{%s}" % name, str(port))
            arg = arg.replace("{libexec_memc}", os.path.join(libexec, "ktplugservmemc.so") if real
                              else "ktplugservmemc.so")
            arg = arg.replace("{libexec_void}", os.path.join(libexec, "ktplugdbvoid.so") if real
                              else "ktplugdbvoid.so")
            out.append(arg)
        return out

    def server_templates(self) -> dict[str, list[str]]:
        return self.case.get("servers") or {"main": self.case["server"]}

    def start_server(self, name: str) -> None:
        template = self.server_templates()[name]
        joined = " ".join(template)
        wait_for = [p for p in self.ports if "{%s}" % p in joined and p != "master_port"]
        proc = subprocess.Popen(self.argv(template), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.procs[name] = proc
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server {name} exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                for port_name in wait_for:
                    with socket.create_connection(("127.0.0.1", self.ports[port_name]), timeout=1):
                        pass
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"server {name} did not start")

    def stop_server(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def setup(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="ktgolden-")
        for rel, content in self.case.get("files", {}).items():
            path = os.path.join(self.workdir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if content.startswith("@"):
                shutil.copy(GOLDEN_DIR / content[1:], path)
            else:
                with open(path, "w") as f:
                    f.write(content)
                if rel.startswith("cmd/"):
                    os.chmod(path, 0o755)
        used: set[int] = set()
        for name in self.case["ports"]:
            port = free_port()
            while port in used:
                port = free_port()
            used.add(port)
            self.ports[name] = port
        if "master_port" in self.ports:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(("127.0.0.1", self.ports["master_port"]))
            self.listener.listen(4)
        for name in self._initial_servers():
            self.start_server(name)

    def _initial_servers(self) -> list[str]:
        names = list(self.server_templates())
        for step in self.case["steps"]:
            m = re.match(r"(\w+) server stopped", step.get("note", "")) if set(step) == {"note"} else None
            if m and m.group(1) in names:
                return names[:names.index(m.group(1)) + 1]
        return names

    def teardown(self) -> None:
        for sock in self.conns.values():
            sock.close()
        if self.listener:
            self.listener.close()
        for name in list(self.procs):
            self.stop_server(name)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- steps ------------------------------------------------------------------------------

    def conn(self, name: str) -> socket.socket:
        sock = self.conns.get(name)
        if sock is None:
            port = self.ports[self.case["connections"][name]]
            sock = socket.create_connection(("127.0.0.1", port), timeout=RECV_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[name] = sock
        return sock

    def send_bytes(self, index: int, step: dict[str, Any]) -> bytes:
        data = self.substitute_ports(step_bytes(step, "send"))
        for vol in step.get("send_volatile", []):
            a, b = vol["range"]
            recorded = data[a:b]
            for prior in range(index - 1, -1, -1):
                earlier = self.case["steps"][prior]
                if prior not in self.received or "recv" not in earlier:
                    continue
                pos = step_bytes(earlier, "recv").find(recorded)
                if pos >= 0:
                    data = data[:a] + self.received[prior][pos:pos + b - a] + data[b:]
                    break
        return data

    def receive(self, sock: socket.socket, expected: bytes, volatile: list[Any], closed: bool) -> tuple[bytes, bool]:
        """Read until as much as expected arrived (HTTP-aware), EOF, or the timeout."""
        actual = b""
        eof = False
        deadline = time.monotonic() + (RECV_TIMEOUT if expected or closed else QUIET_TIMEOUT)
        is_http = expected.startswith(b"HTTP/")
        variable = any(isinstance(v, str) and (v in ("body", "Content-Length") or v.startswith(("line:", "tsv:")))
                       for v in volatile)
        tail = expected[expected.rstrip(b"\r\n").rfind(b"\n") + 1:] if variable else b""
        while True:
            if expected and not closed:
                if is_http and _http_messages_complete(actual, expected):
                    break
                if not is_http and (len(actual) >= len(expected) or (tail and actual.endswith(tail))):
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            actual += chunk
            if closed and expected and len(actual) >= len(expected) and not is_http:
                continue
        return actual, eof

    def run(self) -> None:
        self.setup()
        try:
            for index, step in enumerate(self.case["steps"]):
                self.run_step(index, step)
                pause = EXTRA_PAUSES.get((self.case["name"], index))
                if pause:
                    time.sleep(pause[0])
        finally:
            self.teardown()

    def run_step(self, index: int, step: dict[str, Any]) -> None:
        name = self.case["name"]
        if "sleep" in step:
            time.sleep(step["sleep"])
            return
        if set(step) == {"note"}:
            m = re.match(r"(\w+) server stopped", step["note"])
            if m:
                self.stop_server(m.group(1))
                for server in self.server_templates():
                    if server not in self.procs and server != m.group(1):
                        self.start_server(server)
            return
        conn_name = step["conn"]
        if step.get("accept"):
            assert self.listener is not None
            self.listener.settimeout(RECV_TIMEOUT)
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                raise Mismatch(name, index, step, "the server never connected to the fake master") from None
            self.conns[conn_name] = sock
            return
        if step.get("client_close"):
            sock = self.conns.pop(conn_name, None)
            if sock:
                sock.close()
            return
        sock = self.conn(conn_name)
        if "send" in step:
            try:
                sock.sendall(self.send_bytes(index, step))
            except (BrokenPipeError, ConnectionResetError):
                pass
            if step.get("half_close"):
                sock.shutdown(socket.SHUT_WR)
        if "recv" not in step:
            return
        expected = self.substitute_ports(step_bytes(step, "recv"))
        volatile = step.get("volatile", [])
        closed = bool(step.get("closed"))
        actual, eof = self.receive(sock, expected, volatile, closed)
        self.received[index] = actual
        if normalize(actual, volatile) != normalize(expected, volatile):
            raise Mismatch(name, index, step,
                           f"\nexpected: {normalize(expected, volatile)!r}\nactual:   {normalize(actual, volatile)!r}")
        if closed and not eof:
            sock.settimeout(CLOSE_TIMEOUT)
            try:
                extra = sock.recv(65536)
            except TimeoutError:
                raise Mismatch(name, index, step, "expected the server to close the connection") from None
            except ConnectionResetError:
                extra = b""
            if extra:
                raise Mismatch(name, index, step, f"expected a close, got more bytes: {extra[:200]!r}")


#: Pauses added after a step, each with why the recording needs it to be reproducible.
EXTRA_PAUSES: dict[tuple[str, int], tuple[float, str]] = {
    ("real-slave-via-tune_replication", 5): (
        0.3,
        "ktserver's slave checks the 'restart' flag set by tune_replication only after its "
        "blocking read returns, so the message already in flight is still applied: whether the "
        "next write is copied races with the master's 0.1 s NOP. The recording saw the NOP first; "
        "the pause makes that order certain on every server."),
}


def replay(case: dict[str, Any]) -> None:
    """Run one case; raises Mismatch on the first difference."""
    Replay(case).run()
