"""``make soak``: officers submitting, two partners syncing both ways and an auditor
exporting, all at once for a set time (docs/THREATS.md L05); then the checks:

- no errors (exit codes, server error log lines, rejected submissions),
- nothing lost or duplicated (every envelope a sender committed is in the receiver's
  inbox exactly once, and acknowledged),
- both logs verify offline and reconcile,
- WAL size bounded, server memory flat (RSS at the end vs. after warm-up).

    python -m soak.run --seconds 600       # the acceptance run
    python -m soak.run --seconds 60        # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.rpc._pb.accord.v1 import officer_pb2, officer_pb2_grpc  # noqa: E402

ACCORD = [sys.executable, "-m", "node"]
ENV = {
    **os.environ,
    "ACCORD_PASSPHRASE": "soak passphrase, not for production",
    "PYTHONPATH": str(ROOT),
}
ENV.pop("ACCORD_HOME", None)
ENV["ACCORD_PULL_STREAM_SECONDS"] = "30"  # re-open followed streams often, under load
WAL_LIMIT = 64 * 1024 * 1024
RSS_GROWTH_LIMIT = 1.5  # end RSS at most 1.5x the RSS after warm-up
CN_POLICY = """
[peer.pk-moi]
max_tlp = "amber"
[peer.pk-moi.schema."threat-alert@1"]
release_labels = ["public", "operational"]
withhold_labels = ["sensitive-source"]
"""


def accord(*args: Any, check: bool = True) -> str:
    proc = subprocess.run(
        [*ACCORD, *map(str, args)], env=ENV, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise SystemExit(
            f"soak: accord {' '.join(map(str, args))} failed:\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def report(node: str, n: int) -> bytes:
    return json.dumps(
        {
            "sop": "threat-alert@1",
            "tlp": "amber",
            "fields": {
                "title": f"Soak report {node} #{n}",
                "threat_type": "armed-attack",
                "severity": "moderate",
                "region": "Khyber Pakhtunkhwa",
                "location": {"lat": 34.0 + n % 100 / 1000, "lon": 71.5},
                "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
                "source": {"kind": "osint", "reliability": "C", "credibility": 3},
            },
        }
    ).encode()


class Officer(threading.Thread):
    """Submits batches through SubmitStream until stopped; counts what was accepted."""

    def __init__(self, data: Path, node: str, stop: threading.Event, batch: int = 25) -> None:
        super().__init__(daemon=True)
        self.data, self.node, self.stop, self.batch = data, node, stop, batch
        self.accepted = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(f"unix:{self.data / 'officer.sock'}") as channel:
            stub = officer_pb2_grpc.OfficerStub(channel)
            n = 0
            while not self.stop.is_set():
                requests = [
                    officer_pb2.SubmitRequest(report=report(self.node, n + i))
                    for i in range(self.batch)
                ]
                n += self.batch
                try:
                    for answer in stub.SubmitStream(iter(requests), timeout=120):
                        if answer.HasField("error"):
                            self.errors.append(answer.error.code)
                        else:
                            self.accepted += 1
                except grpc.RpcError as e:
                    self.errors.append(e.code().name)
                time.sleep(0.2)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wal_size(data: Path) -> int:
    wal = data / "node.db-wal"
    return wal.stat().st_size if wal.exists() else 0


def counts(
    sender: Path, receiver: Path, receiver_id: str, sender_id: str
) -> tuple[int, int, int, int]:
    s = sqlite3.connect(f"file:{sender / 'node.db'}?mode=ro", uri=True)
    r = sqlite3.connect(f"file:{receiver / 'node.db'}?mode=ro", uri=True)
    try:
        sent = s.execute("SELECT count(*) FROM outbox WHERE peer = ?", (receiver_id,)).fetchone()[0]
        pending = s.execute(
            "SELECT count(*) FROM outbox WHERE peer = ? AND state = 'pending'", (receiver_id,)
        ).fetchone()[0]
        got = r.execute("SELECT count(*) FROM inbox WHERE peer = ?", (sender_id,)).fetchone()[0]
        distinct = r.execute(
            "SELECT count(DISTINCT envelope_id) FROM inbox WHERE peer = ?", (sender_id,)
        ).fetchone()[0]
        return sent, pending, got, distinct
    finally:
        s.close()
        r.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="accord-soak-"))
    pk, cn = work / "pk-moi", work / "cn-mps"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    failures: list[str] = []
    try:
        print(f"soak: {args.seconds}s in {work}", flush=True)
        for data, node in ((pk, "pk-moi"), (cn, "cn-mps")):
            accord(
                "--data",
                data,
                "init",
                "--node",
                node,
                "--name",
                node,
                "--endpoint",
                f"127.0.0.1:{free_port()}",
            )
            accord("--data", data, "card", "export", "--out", work / f"{node}.card")
        anchors: list[str] = []  # the auditor's: both fingerprints, checked at peer add
        for data, other in ((pk, "cn-mps"), (cn, "pk-moi")):
            other_dir = work / other
            fp = json.loads(accord("--data", other_dir, "card", "show", "--json"))["fingerprint"]
            accord("--data", data, "peer", "add", work / f"{other}.card", "--fingerprint", fp)
            anchors += ["--fingerprint", f"{other}={fp}"]
        accord(
            "--data",
            pk,
            "agreement",
            "propose",
            "--peer",
            "cn-mps",
            "--terms",
            ROOT / "sop" / "agreements" / "example-terms.toml",
            "--out",
            work / "agreement.json",
        )
        accord("--data", cn, "agreement", "sign", work / "agreement.json", "--yes")
        accord("--data", pk, "agreement", "sign", work / "agreement.json", "--yes")
        accord("--data", pk, "policy", "apply", ROOT / "sop" / "policies" / "example.toml")
        (work / "cn-policy.toml").write_text(CN_POLICY)
        accord("--data", cn, "policy", "apply", work / "cn-policy.toml")
        for data, node in ((pk, "pk-moi"), (cn, "cn-mps")):
            log = (work / f"{node}.log").open("wb")
            procs[node] = subprocess.Popen(
                [
                    *ACCORD,
                    "--data",
                    str(data),
                    "serve",
                    "--ready-file",
                    str(work / f"{node}.ready"),
                ],
                env=ENV,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not all((work / f"{n}.ready").exists() for n in procs):
            if time.monotonic() > deadline:
                raise SystemExit("soak: servers did not start")
            time.sleep(0.1)
        stop = threading.Event()
        officers = [Officer(pk, "pk-moi", stop), Officer(cn, "cn-mps", stop)]
        for o in officers:
            o.start()
        start = time.monotonic()
        warm_rss: dict[str, int] = {}
        max_wal = 0
        audits = 0
        while time.monotonic() - start < args.seconds:
            time.sleep(5)
            elapsed = time.monotonic() - start
            max_wal = max(max_wal, wal_size(pk), wal_size(cn))
            if not warm_rss and elapsed > min(60, args.seconds / 4):
                warm_rss = {n: rss_kb(p.pid) for n, p in procs.items()}
            if int(elapsed) // 30 > audits:  # the auditor, every 30 s, while everything runs
                audits += 1
                for data, node in ((pk, "pk-moi"), (cn, "cn-mps")):
                    bundle = work / f"{node}-{audits}.bundle"
                    accord("--data", data, "audit", "export", "--out", bundle)
                    if subprocess.run(
                        [*ACCORD, "audit", "verify", str(bundle), *anchors],
                        env=ENV,
                        capture_output=True,
                        check=False,
                    ).returncode:
                        failures.append(f"audit verify failed on {bundle.name} during the soak")
                    bundle.unlink()
            sent = [o.accepted for o in officers]
            print(
                f"  t={elapsed:5.0f}s submitted pk-moi={sent[0]} cn-mps={sent[1]} "
                f"wal={max_wal // 1024} KiB "
                f"rss={ {n: rss_kb(p.pid) // 1024 for n, p in procs.items()} } MiB",
                flush=True,
            )
        stop.set()
        for o in officers:
            o.join(timeout=180)
        end_rss = {n: rss_kb(p.pid) for n, p in procs.items()}
        settle = time.monotonic() + 180
        while time.monotonic() < settle:
            a, b = counts(pk, cn, "cn-mps", "pk-moi"), counts(cn, pk, "pk-moi", "cn-mps")
            if a[1] == 0 and b[1] == 0 and a[0] == a[2] and b[0] == b[2]:
                break
            time.sleep(1)
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            if p.wait(timeout=30) != 0:
                failures.append(f"{name} did not stop cleanly (exit {p.returncode})")
        for o in officers:
            if o.errors:
                failures.append(f"{o.node}: {len(o.errors)} submission errors, e.g. {o.errors[:3]}")
        for sender, receiver, rid, sid in (
            (pk, cn, "cn-mps", "pk-moi"),
            (cn, pk, "pk-moi", "cn-mps"),
        ):
            sent, pending, got, distinct = counts(sender, receiver, rid, sid)
            print(
                f"  {sid} -> {rid}: sent {sent}, received {got} ({distinct} distinct), "
                f"unacknowledged {pending}"
            )
            if got != sent:
                failures.append(f"{sid} -> {rid}: {sent} sent but {got} received (lost or extra)")
            if distinct != got:
                failures.append(f"{sid} -> {rid}: {got - distinct} duplicates")
            if pending:
                failures.append(f"{sid} -> {rid}: {pending} envelopes never acknowledged")
        for name in procs:
            errors = [
                line
                for line in (work / f"{name}.log").read_text(errors="replace").splitlines()
                if '"level": "error"' in line or '"level":"error"' in line
            ]
            if errors:
                failures.append(f"{name}: {len(errors)} error log lines, e.g. {errors[0][:300]}")
        for data, node in ((pk, "pk-moi"), (cn, "cn-mps")):
            accord("--data", data, "audit", "export", "--out", work / f"{node}.bundle")
            if subprocess.run(
                [*ACCORD, "audit", "verify", str(work / f"{node}.bundle"), *anchors],
                env=ENV,
                capture_output=True,
                check=False,
            ).returncode:
                failures.append(f"final audit verify failed for {node}")
        if subprocess.run(
            [
                *ACCORD,
                "audit",
                "reconcile",
                str(work / "pk-moi.bundle"),
                str(work / "cn-mps.bundle"),
                *anchors,
            ],
            env=ENV,
            capture_output=True,
            check=False,
        ).returncode:
            failures.append("audit reconcile found unmatched releases")
        if max_wal > WAL_LIMIT:
            failures.append(
                f"WAL grew to {max_wal // 1024 // 1024} MiB (limit {WAL_LIMIT // 1024 // 1024})"
            )
        for name, warm in warm_rss.items():
            if warm and end_rss[name] > warm * RSS_GROWTH_LIMIT:
                failures.append(
                    f"{name}: RSS grew from {warm // 1024} to {end_rss[name] // 1024} MiB"
                )
        print(
            f"  max WAL {max_wal // 1024} KiB; RSS after warm-up {warm_rss}, at end {end_rss} (KiB)"
        )
        if failures:
            print("SOAK FAILED:\n  " + "\n  ".join(failures))
            return 1
        print(
            f"SOAK PASSED: {sum(o.accepted for o in officers)} reports, "
            "zero errors, zero lost, zero duplicated"
        )
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
