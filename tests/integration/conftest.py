"""Real ``accord serve`` processes on free loopback ports, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.builders import ALERT
from tests.conftest import PASSPHRASE, Result, agree, exchange_cards

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0  # grace (5 s) + bounded shutdown steps, on a loaded 2-core machine
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nobody listens on right now. Certificates name the endpoint, so the port is
    chosen before the node is created (port 0 at serve time cannot work)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    data: Path
    ready_file: Path
    log_file: Path
    args: tuple[str, ...] = ("serve",)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServerProcess:
        env = {**os.environ, "ACCORD_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(ROOT)}
        env.pop("ACCORD_HOME", None)
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "node",
                    "--data",
                    str(self.data),
                    *self.args,
                    "--ready-file",
                    str(self.ready_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        return self

    def wait_ready(self) -> dict[str, object]:
        """Wait for the ready file (bounded); fail with the server's log if it exits."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in {READY_TIMEOUT}s:\n{self.logs()}")
            time.sleep(0.05)
        doc = json.loads(self.ready_file.read_text("utf-8"))
        assert isinstance(doc, dict)
        return doc

    def terminate(self) -> int:
        """SIGTERM, then the exit code (bounded wait)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.logs()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)

    def logs(self) -> str:
        return self.log_file.read_text("utf-8", errors="replace")[-6000:]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``accord serve`` for a data directory; every process is killed at teardown."""
    started: list[ServerProcess] = []

    def start(data: Path, *args: str) -> ServerProcess:
        name = data.name + "-" + "-".join(args or ("serve",)).replace("/", "_")
        proc = ServerProcess(
            data=data,
            ready_file=tmp_path / f"{name}.ready",
            log_file=tmp_path / f"{name}.log",
            args=args or ("serve",),
        ).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def partners(
    make_node: Callable[..., Path], accord: Callable[..., Result], tmp_path: Path
) -> tuple[Path, Path]:
    """Two nodes on free ports that trust each other, cards exchanged through the CLI."""
    a = make_node("pk-moi", free_port())
    b = make_node("cn-mps", free_port())
    exchange_cards(accord, a, b, tmp_path)
    return a, b


WAIT = 30.0


def until(what: str, check: Callable[[], object], procs: list[ServerProcess]) -> Any:
    """Poll ``check`` until it returns something true; fail with every server's log."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {WAIT}s\n" + "\n".join(p.logs() for p in procs))


def inbox_count(accord: Callable[..., Result], data: Path) -> int:
    """How many reports ``inbox list`` shows at ``data`` (0 while the node cannot answer)."""
    r = accord("--data", data, "inbox", "list", "--json")
    return len(r.json()) if r.code == 0 else 0


def serving_with_one_report(
    accord: Callable[..., Result],
    servers: Callable[..., ServerProcess],
    pk: Path,
    cn: Path,
    tmp_path: Path,
) -> tuple[ServerProcess, ServerProcess, Path]:
    """Both nodes agreed and serving; one report from pk-moi already in cn-mps's inbox."""
    agree(accord, pk, cn, tmp_path)
    pk_server, cn_server = servers(pk), servers(cn)
    for p in (pk_server, cn_server):
        p.wait_ready()
    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    assert accord("--data", pk, "report", "submit", report).code == 0
    until("the first report", lambda: inbox_count(accord, cn) == 1, [pk_server, cn_server])
    return pk_server, cn_server, report
