"""Two real ``accord serve`` processes on loopback, mutual TLS between them: the backlog
sync (throughput and the receiver's memory) and the follow-mode latency from a Submit on
the sender's Officer socket to the row stored at the receiver."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.cluster import make_cluster, open_node, report_bytes
from bench.pipelines import count, submit_batches
from node.rpc._pb.accord.v1 import officer_pb2, officer_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0
SERVE: tuple[str, ...] = (sys.executable, "-m", "node")
# The same command under bench/profiled.py: a CPU profile of the main thread between the
# bench's SIGUSR1 and SIGUSR2.
PROFILED: tuple[str, ...] = (sys.executable, str(ROOT / "bench" / "profiled.py"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of ``pid``'s main thread, and of the process with all its
    threads and its live descendants (receive workers, their fork server), from /proc."""

    def ticks(path: str) -> float:
        try:
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / TICK

    main = ticks(f"/proc/{pid}/task/{pid}/stat")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += ticks(f"/proc/{p}/stat")
        todo += children.get(p, [])
    return main, total


@dataclass
class Server:
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, object] = field(default_factory=dict)
    profile: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Server:
        ready = self.data.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        env = {**os.environ, "ACCORD_PASSPHRASE": "unused", "PYTHONPATH": str(ROOT), **self.env}
        env.pop("ACCORD_HOME", None)
        command = SERVE
        if self.profile is not None:
            env["ACCORD_BENCH_PROFILE"] = str(self.profile)
            command = PROFILED
        with (self.data.with_suffix(".log")).open("wb") as log:
            self.proc = subprocess.Popen(
                [*command, "--data", str(self.data), "serve", "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.data.name} did not start:\n{self.logs()}")
            time.sleep(0.02)
        self.ready = json.loads(ready.read_text("utf-8"))
        return self

    def status(self, key: str) -> int:
        """A /proc/<pid>/status value in bytes (VmRSS, VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu(self) -> tuple[float, float]:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def logs(self) -> str:
        return self.data.with_suffix(".log").read_text("utf-8", errors="replace")[-4000:]


def _reader(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data / 'node.db'}?mode=ro", uri=True, isolation_level=None)


def _cursor(conn: sqlite3.Connection, peer: str) -> int:
    row = conn.execute("SELECT last_applied FROM cursors WHERE peer = ?", (peer,)).fetchone()
    return 0 if row is None else int(row[0])


def _prepare(root: Path, backlog: int, database: str | None) -> tuple[Path, Path, int, float]:
    """pk-moi and cn-mps, and ``backlog`` reports submitted in process at pk-moi (one
    envelope each); the data dirs, the envelopes and the seconds it took."""
    sender, (receiver,) = make_cluster(root, ("cn-mps",), database)
    node = open_node(sender)
    try:
        start = time.perf_counter()
        submit_batches(node, report_bytes(backlog, seed=2))
        prepared = time.perf_counter() - start
        envelopes = count(node, "outbox")
    finally:
        node.close()
    return sender, receiver, envelopes, prepared


def _until_synced(
    b: Server, watch: sqlite3.Connection, envelopes: int, begin: float
) -> list[tuple[int, int]]:
    """Poll the receiver's cursor until it reaches ``envelopes``; (applied, VmRSS) samples."""
    rss: list[tuple[int, int]] = []
    while True:
        done = _cursor(watch, "pk-moi")
        rss.append((done, b.status("VmRSS")))
        if done >= envelopes:
            return rss
        if b.proc is not None and b.proc.poll() is not None:
            raise RuntimeError(f"receiver exited:\n{b.logs()}")
        if time.perf_counter() - begin > 3600:
            raise RuntimeError(f"sync stalled at {done}/{envelopes}:\n{b.logs()}")
        time.sleep(0.05)


def _spent(after: tuple[float, float], before: tuple[float, float]) -> dict[str, float]:
    return {"main_s": after[0] - before[0], "total_s": after[1] - before[1]}


def run(
    root: Path,
    backlog: int,
    samples: int,
    database: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Backlog sync of ``backlog`` envelopes, then ``samples`` follow-mode latencies. With
    ``database`` (a PostgreSQL DSN) the sender, pk-moi, keeps its state there; the receiver,
    cn-mps, is on SQLite either way. Also the CPU each node spent on the sync (/proc).
    ``env``: extra environment of both servers (``ACCORD_RECEIVE_WORKERS``)."""
    sender, receiver, envelopes, prepared = _prepare(root / "live", backlog, database)
    a = Server(sender, env=env or {}).start()
    b: Server | None = None
    try:
        b = Server(receiver, env=env or {})
        b.start()
        begin = time.perf_counter()  # from the receiver's ready file: serving, not booting
        cpu_a, cpu_b = a.cpu(), b.cpu()
        watch = _reader(receiver)
        rss = _until_synced(b, watch, envelopes, begin)
        synced = time.perf_counter() - begin
        cpu = {"sender": _spent(a.cpu(), cpu_a), "receiver": _spent(b.cpu(), cpu_b)}
        hwm = b.status("VmHWM")
        early = next((r for d, r in rss if d >= envelopes // 10), rss[-1][1])
        latencies = _latencies(a, watch, samples)
        sender_hwm = a.status("VmHWM")
        watch.close()
    finally:
        if b is not None:
            b.stop()
        a.stop()
    return {
        "backlog": envelopes,
        "prepare_s": prepared,
        "sync_s": synced,
        "envelopes_per_s": envelopes / synced,
        "cpu": cpu,
        "receiver_hwm_bytes": hwm,
        "receiver_rss_at_10pct": early,
        "receiver_rss_at_end": rss[-1][1],
        "sender_hwm_bytes": sender_hwm,
        "latency_ms": sorted(x * 1000 for x in latencies),
    }


def run_profiled(root: Path, backlog: int, env: dict[str, str] | None = None) -> dict[str, object]:
    """The same backlog sync (SQLite on both sides) with both ``accord serve`` under
    bench/profiled.py, profiling exactly the sync window; the profile files and the CPU
    each node spent. Its rate is not the measurement (profiling slows it)."""
    sender, receiver, envelopes, _ = _prepare(root / "profiled", backlog, None)
    profiles = {"sender": root / "sender.prof", "receiver": root / "receiver.prof"}
    a = Server(sender, profile=profiles["sender"], env=env or {}).start()
    b: Server | None = None
    try:
        b = Server(receiver, profile=profiles["receiver"], env=env or {})
        # The sender's profile runs from before the receiver connects.
        a.send(signal.SIGUSR1)
        b.start()
        b.send(signal.SIGUSR1)
        begin = time.perf_counter()
        cpu_a, cpu_b = a.cpu(), b.cpu()
        watch = _reader(receiver)
        _until_synced(b, watch, envelopes, begin)
        cpu = {"sender": _spent(a.cpu(), cpu_a), "receiver": _spent(b.cpu(), cpu_b)}
        watch.close()
        for server in (a, b):
            server.send(signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not all(Path(f"{p}.done").exists() for p in profiles.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the profiled servers did not write their profiles")
            time.sleep(0.05)
    finally:
        if b is not None:
            b.stop()
        a.stop()
    return {
        "envelopes": envelopes,
        "cpu": cpu,
        "profiles": {k: str(v) for k, v in profiles.items()},
    }


def _latencies(sender: Server, watch: sqlite3.Connection, samples: int) -> list[float]:
    """Submit one report at a time on the Officer socket; time until cn-mps stored it."""
    documents = report_bytes(samples + 5, seed=3)
    out = []
    with grpc.insecure_channel(f"unix:{sender.ready['officer_socket']}") as channel:
        stub = officer_pb2_grpc.OfficerStub(channel)
        for i, document in enumerate(documents):
            start = time.perf_counter()
            answer = stub.Submit(officer_pb2.SubmitRequest(report=document), timeout=30)
            envelope_id = answer.releases[0].envelope_id
            while (
                watch.execute(
                    "SELECT 1 FROM inbox WHERE envelope_id = ?", (envelope_id,)
                ).fetchone()
                is None
            ):
                if time.perf_counter() - start > 30:
                    raise RuntimeError("a followed envelope did not arrive within 30 s")
                time.sleep(0.0005)
            if i >= 5:  # the first few warm the streams up
                out.append(time.perf_counter() - start)
            time.sleep(0.02)
    return out


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
