"""What bounds submit and sync: a CPU profile of each, measured in the same ``make bench`` run,
folded into areas of the code, and what each next step would buy, computed from this run's
numbers (docs/PERFORMANCE.md, "Reading the profile").

- submit: one unprofiled and one profiled (cProfile, CPU time) in-process submit of the same
  number of reports after a warm-up; each area's share of the profiled CPU is scaled to the
  unprofiled CPU per report, and the wall time the CPU does not explain is "waiting".
- sync: the CPU each ``accord serve`` spent per envelope in the measured run (/proc: the main
  thread, and all threads with the receive workers), and each node's main-thread profile from
  a second, profiled sync of a smaller backlog (bench/profiled.py).

A step's projection removes (or moves to other cores) the measured seconds of what it
replaces and keeps everything else; it is an upper bound, and says what it assumes.
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cluster import make_cluster, open_node, report_bytes
from bench.pipelines import BATCH, submit_batches
from node.services.opening import configured_workers

ROOT = Path(__file__).resolve().parents[1]

# Function key as pstats holds it: (file, line, name); builtins have file "~".
Key = tuple[str, int, str]

# Native work recognised by name (the builtin's own time stays there); any other builtin's
# time goes to the area of the Python function that called it.
NATIVE: list[tuple[str, tuple[str, ...]]] = [
    ("SQLite (C)", ("sqlite3",)),
    ("PostgreSQL client (psycopg)", ("psycopg", "pq_")),
    ("Ed25519 (libsodium)", ("crypto_sign", "_sodium")),
    ("HPKE, ML-KEM, X25519 (cryptography)", ("cryptography", "hpke", "mlkem", "x25519")),
    ("SHA-256 (hashlib)", ("_hashlib", "sha256", "openssl")),
]

# Python code by path, first match wins (paths relative to the repository or site-packages).
PYTHON: list[tuple[str, tuple[str, ...]]] = [
    ("canonical JSON, strict parsing, base64url", ("exchange/canonical.py",)),
    ("SD-JWT (seal, verify presentation)", ("exchange/sdjwt.py",)),
    ("envelopes, release statements", ("exchange/envelope.py", "exchange/receiver.py")),
    (
        "exchange log (events, Merkle, checkpoints)",
        (
            "exchange/events.py",
            "exchange/merkle.py",
            "exchange/checkpoint.py",
            "exchange/cosignature.py",
            "exchange/receipt.py",
            "node/services/log.py",
            "node/services/logstate.py",
            "node/services/witness.py",
        ),
    ),
    ("release policy, decisions", ("exchange/policy.py", "node/services/policy.py")),
    (
        "SOP schemas (jsonschema)",
        (
            "exchange/sop.py",
            "exchange/fastschema.py",
            "jsonschema",
            "referencing",
            "rpds",
            "node/services/schemas.py",
        ),
    ),
    ("keys/ (Python side)", ("keys/", "nacl/")),
    ("store (Python side)", ("node/store/", "sqlite_utils", "psycopg")),
    (
        "gRPC, protobuf, servicers",
        ("node/rpc/", "grpc", "google/protobuf", "_pb2", "protobuf"),
    ),
    ("structured logs", ("structlog", "logging/", "node/logsetup.py")),
    ("asyncio", ("asyncio",)),
    ("exchange, other", ("exchange/",)),
    ("node, other", ("node/",)),
]
OTHER = "other (stdlib, dataclasses, ...)"


def area(key: Key) -> str | None:
    """The area of a function; None for a builtin that is not native work of its own."""
    file, _, name = key
    if file == "~":
        return next((label for label, marks in NATIVE if any(m in name for m in marks)), None)
    path = file.replace("\\", "/")
    for label, marks in PYTHON:
        if any(m in path for m in marks):
            return label
    return OTHER


@dataclass(frozen=True)
class Profile:
    """A folded profile: CPU seconds per area (self time; a builtin's time is its caller's
    area unless it is native work) and the cumulative seconds of named functions."""

    areas: dict[str, float]
    total: float
    stats: pstats.Stats

    @classmethod
    def load(cls, stats: pstats.Stats) -> Profile:
        raw: dict[Key, Any] = stats.stats  # type: ignore[attr-defined]
        areas: dict[str, float] = {}
        for key, (_cc, _nc, tt, _ct, callers) in raw.items():
            label = area(key)
            if label is not None:
                areas[label] = areas.get(label, 0.0) + tt
                continue
            spread = sum(v[2] for v in callers.values())
            for caller, value in callers.items():
                share = tt * (value[2] / spread) if spread else tt / max(len(callers), 1)
                label = area(caller) or OTHER
                areas[label] = areas.get(label, 0.0) + share
            if not callers:
                areas[OTHER] = areas.get(OTHER, 0.0) + tt
        total = sum(areas.values())
        return cls(areas=areas, total=total, stats=stats)

    def cumulative(self, name: str, file_suffix: str) -> float:
        """Cumulative seconds of the function ``name`` defined in a file ending ``file_suffix``
        (0 when it did not run)."""
        raw: dict[Key, Any] = self.stats.stats  # type: ignore[attr-defined]
        return sum(
            float(v[3])
            for k, v in raw.items()
            if k[2] == name and k[0].replace("\\", "/").endswith(file_suffix)
        )

    def share(self, seconds: float) -> float:
        return seconds / self.total if self.total else 0.0


# ---------------------------------------------------------------------------------------
# submit


def submit(root: Path, reports: int = 2 * BATCH) -> dict[str, Any]:
    """Submit ``reports`` (2 partners, batches of 256) unprofiled, then the same number
    profiled; per report: wall, CPU, and CPU per area, and the named functions the steps
    use. In process, on SQLite, as the submit line of the table."""
    sender, _ = make_cluster(root / "profile-submit")
    node = open_node(sender)
    try:
        submit_batches(node, report_bytes(BATCH, seed=11))  # warm caches
        documents = report_bytes(reports, seed=12)
        cpu0, wall = time.process_time(), time.perf_counter()
        submit_batches(node, documents)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu0
        profiler = cProfile.Profile(time.process_time)
        more = report_bytes(reports, seed=13)
        profiler.enable()
        submit_batches(node, more)
        profiler.disable()
    finally:
        node.close()
        shutil.rmtree(root / "profile-submit", ignore_errors=True)
    prof = Profile.load(pstats.Stats(profiler))
    per = cpu / reports
    return {
        "reports": reports,
        "wall_per_report_s": wall / reports,
        "cpu_per_report_s": per,
        "areas_per_report_s": {k: prof.share(v) * per for k, v in prof.areas.items()},
        "named_per_report_s": {
            "seal_envelope": prof.share(prof.cumulative("seal_envelope", "exchange/envelope.py"))
            * per,
            "sdjwt.seal": prof.share(prof.cumulative("seal", "exchange/sdjwt.py")) * per,
            "validate": prof.share(prof.cumulative("validate", "node/rpc/officer_service.py"))
            * per,
        },
    }


def submit_steps(p: dict[str, Any], cores: int, target: float) -> list[dict[str, Any]]:
    """Each next step for submit with the per-report wall time it would leave, from ``p``."""
    t = p["wall_per_report_s"]
    areas, named = p["areas_per_report_s"], p["named_per_report_s"]
    parallel = named["seal_envelope"] + named["sdjwt.seal"]
    steps = [
        (
            f"seal each (report, partner) in {cores} worker processes: SD-JWT and envelope "
            "sealing are independent once seqs are assigned (assumes no pickling cost; needs "
            "the signing keys in the workers, which ADR 0027 does not give them)",
            parallel * (1 - 1 / cores),
        ),
        (
            "canonical JSON, strict parsing and base64url in native code (their Python time "
            "to zero)",
            areas.get("canonical JSON, strict parsing, base64url", 0.0),
        ),
        (
            "SD-JWT assembly in native code (its Python time to zero)",
            areas.get("SD-JWT (seal, verify presentation)", 0.0),
        ),
        (
            "envelope and statement building in native code (its Python time to zero)",
            areas.get("envelopes, release statements", 0.0),
        ),
        (
            "log events from per-kind templates (the log's Python time to zero)",
            areas.get("exchange log (events, Merkle, checkpoints)", 0.0),
        ),
        (
            "release decisions cached per (policy, SOP, labels) (their Python time to zero)",
            areas.get("release policy, decisions", 0.0),
        ),
    ]
    measured = 1 / t
    out = []
    for what, saved in steps:
        rate = 1 / max(t - saved, 1e-9)
        out.append(
            {
                "step": what,
                "saves_per_item_s": saved,
                "projected_per_s": rate,
                "gap_closed": (rate - measured) / (target - measured) if target > measured else 1,
            }
        )
    return out


# ---------------------------------------------------------------------------------------
# sync


def sync(
    live_cpu: dict[str, dict[str, float]], envelopes: int, prof: dict[str, Any]
) -> dict[str, Any]:
    """Per envelope, per node: CPU (main thread, all threads) of the measured run, and the
    main thread's CPU per area from the profiled run scaled to the measured main thread."""
    out: dict[str, Any] = {"envelopes": envelopes}
    for side in ("sender", "receiver"):
        main = live_cpu[side]["main_s"] / envelopes
        total = live_cpu[side]["total_s"] / envelopes
        folded = Profile.load(pstats.Stats(prof["profiles"][side]))
        out[side] = {
            "main_per_envelope_s": main,
            "total_per_envelope_s": total,
            "areas_per_envelope_s": {k: folded.share(v) * main for k, v in folded.areas.items()},
            "open_per_envelope_s": folded.share(
                folded.cumulative("open_envelope", "exchange/envelope.py")
            )
            * main,
        }
    return out


def _bound(cores: int, sender: tuple[float, float], receiver: tuple[float, float]) -> float:
    """Envelopes/s the CPU allows: each node's main thread is one core at most, and both
    nodes' threads share ``cores``. (main, total) seconds per envelope per node."""
    return min(
        1 / max(sender[0], 1e-9),
        1 / max(receiver[0], 1e-9),
        cores / max(sender[1] + receiver[1], 1e-9),
    )


def sync_steps(s: dict[str, Any], rate: float, cores: int, target: float) -> dict[str, Any]:
    """The CPU bound of this machine, the measured rate's share of it, and each next step's
    projected rate (the measured rate scaled by the bound after the step over the bound now)."""
    snd, rcv = s["sender"], s["receiver"]
    sm, st = snd["main_per_envelope_s"], snd["total_per_envelope_s"]
    rm, rt = rcv["main_per_envelope_s"], rcv["total_per_envelope_s"]
    now = _bound(cores, (sm, st), (rm, rt))
    efficiency = rate / now if now else 0.0
    ra, sa = rcv["areas_per_envelope_s"], snd["areas_per_envelope_s"]
    steps: list[tuple[str, float]] = []

    def receiver_cut(what: str, saved: float) -> None:
        steps.append((what, _bound(cores, (sm, st), (rm - saved, rt - saved))))

    def sender_cut(what: str, saved: float) -> None:
        steps.append((what, _bound(cores, (sm - saved, st - saved), (rm, rt))))

    for label in (
        "SOP schemas (jsonschema)",
        "SD-JWT (seal, verify presentation)",
        "canonical JSON, strict parsing, base64url",
        "envelopes, release statements",
    ):
        receiver_cut(f"receiver: {label} in native code (its time to zero)", ra.get(label, 0.0))
    # The sender's largest area: it matters only where the sender's CPU is what binds.
    for label, seconds in sorted(sa.items(), key=lambda kv: -kv[1])[:1]:
        sender_cut(f"sender: {label} (its time to zero)", seconds)
    projected = [
        {
            "step": what,
            "bound_per_s": bound,
            "projected_per_s": efficiency * bound,
            "gap_closed": (efficiency * bound - rate) / (target - rate) if target > rate else 1,
        }
        for what, bound in steps
    ]
    for run in s.get("workers", []):
        if run["workers"]:  # measured, not projected
            got = run["envelopes_per_s"]
            n, cpu = run["backlog"], run["cpu"]
            on_s = (cpu["sender"]["main_s"] / n, cpu["sender"]["total_s"] / n)
            on_r = (cpu["receiver"]["main_s"] / n, cpu["receiver"]["total_s"] / n)
            shared = _bound(cores, on_s, on_r)
            # Deployed, each node has its machine: the receiver's cores are its own.
            own = min(
                1 / max(on_r[0], 1e-9),
                cores / max(on_r[1], 1e-9),
                1 / max(on_s[0], 1e-9),
                cores / max(on_s[1], 1e-9),
            )
            alone = got / shared * own if shared else got
            projected.insert(
                0,
                {
                    "step": f"the same with each node on its own {cores}-core machine, as "
                    "deployed (the receiver's CPU bound without the sender beside it)",
                    "bound_per_s": own,
                    "projected_per_s": alone,
                    "gap_closed": (alone - rate) / (target - rate) if target > rate else 1,
                },
            )
            projected.insert(
                0,
                {
                    "step": f"receiver opens envelopes in {run['workers']} worker processes "
                    "(ADR 0027; measured on the same backlog, not projected)",
                    "bound_per_s": got,
                    "projected_per_s": got,
                    "gap_closed": (got - rate) / (target - rate) if target > rate else 1,
                },
            )
    return {"bound_per_s": now, "efficiency": efficiency, "rate": rate, "steps": projected}


# ---------------------------------------------------------------------------------------
# printing


def _areas_table(
    columns: dict[str, dict[str, float]], render: Callable[[list[list[str]], list[str]], str]
) -> str:
    names = list(columns)
    labels = sorted(
        {k for c in columns.values() for k in c},
        key=lambda k: -sum(c.get(k, 0.0) for c in columns.values()),
    )
    rows = []
    for label in labels:
        row = [label]
        for name in names:
            value = columns[name].get(label, 0.0)
            total = sum(columns[name].values())
            row.append(f"{value * 1e6:,.0f} µs ({value / total:.0%})" if total else "-")
        rows.append(row)
    rows.append(["all", *(f"{sum(columns[n].values()) * 1e6:,.0f} µs" for n in names)])
    return render(rows, ["area", *names])


def _steps_table(
    steps: list[dict[str, Any]], unit: str, render: Callable[[list[list[str]], list[str]], str]
) -> str:
    rows = [
        [
            s["step"],
            f"{s['projected_per_s']:,.0f} {unit}/s",
            f"{min(max(s['gap_closed'], 0.0), 1.0):.0%}",
        ]
        for s in steps
    ]
    return render(rows, ["next step (each alone)", "projected", "of the gap closed"])


def report(
    sub: dict[str, Any] | None,
    syn: dict[str, Any] | None,
    cores: int,
    render: Callable[[list[list[str]], list[str]], str],
) -> str:
    out: list[str] = []
    if sub is not None:
        t, cpu = sub["wall_per_report_s"], sub["cpu_per_report_s"]
        out += [
            f"Why submit misses 1,000 reports/s: {sub['reports']} reports (2 partners) in process, "
            f"{t * 1e6:,.0f} µs per report ({1 / t:,.0f}/s, unprofiled); CPU {cpu * 1e6:,.0f} µs, "
            f"waiting (fsync, I/O) {max(t - cpu, 0) * 1e6:,.0f} µs. The target needs "
            f"{1e6 / 1000:,.0f} µs: {max(t - 1 / 1000, 0) * 1e6:,.0f} µs "
            f"({max(1 - 1 / (1000 * t), 0):.0%}) less.",
            "",
            _areas_table({"CPU per report": sub["areas_per_report_s"]}, render),
            "",
            "Of it: seal_envelope "
            + f"{sub['named_per_report_s']['seal_envelope'] * 1e6:,.0f} µs, SD-JWT seal "
            + f"{sub['named_per_report_s']['sdjwt.seal'] * 1e6:,.0f} µs, validation "
            + f"{sub['named_per_report_s']['validate'] * 1e6:,.0f} µs (cumulative).",
            "",
            _steps_table(sub["steps"], "reports", render),
            "",
        ]
    if syn is not None:
        snd, rcv = syn["sender"], syn["receiver"]
        b = syn["analysis"]
        m = syn["measured"]
        n = m["backlog"]
        ms, mr = m["cpu"]["sender"], m["cpu"]["receiver"]
        both = (ms["total_s"] + mr["total_s"]) / n
        out += [
            f"Why sync misses 2,000 envelopes/s: in the measured run ({n:,} backlog, "
            f"{m['envelopes_per_s']:,.0f}/s) the sender spent {ms['total_s'] / n * 1e6:,.0f} µs "
            f"of CPU per envelope, the receiver {mr['main_s'] / n * 1e6:,.0f} µs on its main "
            f"thread and {mr['total_s'] / n * 1e6:,.0f} µs with its other threads and receive "
            f"workers; 2,000/s on {cores} cores needs both nodes together at "
            f"{cores / 2000 * 1e6:,.0f} µs per envelope, not {both * 1e6:,.0f}.",
            "",
            f"Where it goes, workers off ({syn['envelopes']:,} backlog, "
            f"{b['rate']:,.0f}/s; sender {snd['total_per_envelope_s'] * 1e6:,.0f} µs, receiver "
            f"{rcv['total_per_envelope_s'] * 1e6:,.0f} µs per envelope; the CPU allows "
            f"{b['bound_per_s']:,.0f}/s and the run got {b['efficiency']:.0%} of that). Main "
            f"thread per envelope, profiled ({syn['profiled_envelopes']:,} envelopes) and scaled "
            f"to that run; the receiver opens envelopes in "
            f"{rcv['open_per_envelope_s'] * 1e6:,.0f} µs of it:",
            "",
            _areas_table(
                {
                    "sender": snd["areas_per_envelope_s"],
                    "receiver": rcv["areas_per_envelope_s"],
                },
                render,
            ),
            "",
            _steps_table(b["steps"], "envelopes", render),
            "",
        ]
        if syn.get("workers"):
            out += [_workers_table(syn["workers"], render), ""]
    return "\n".join(out)


def _workers_table(
    runs: list[dict[str, Any]], render: Callable[[list[list[str]], list[str]], str]
) -> str:
    """The receive-workers step measured: the same backlog with ACCORD_RECEIVE_WORKERS at
    this machine's default and at the other setting."""
    rows = []
    for run in runs:
        n, cpu = run["backlog"], run["cpu"]
        lat = sorted(run["latency_ms"])
        p50 = lat[len(lat) // 2] if lat else float("nan")
        rows.append(
            [
                str(run["workers"]),
                f"{run['envelopes_per_s']:,.0f}/s",
                f"{cpu['receiver']['main_s'] / n * 1e6:,.0f} µs",
                f"{cpu['receiver']['total_s'] / n * 1e6:,.0f} µs",
                f"{cpu['sender']['total_s'] / n * 1e6:,.0f} µs",
                f"{p50:.1f} ms",
            ]
        )
    backlog = f"{runs[0]['backlog']:,}"
    return (
        f"Receive workers measured (the same {backlog}-envelope backlog; this machine's "
        f"default is {configured_workers()}):\n\n"
        + render(
            rows,
            [
                "ACCORD_RECEIVE_WORKERS",
                "sync",
                "receiver main thread / envelope",
                "receiver + workers / envelope",
                "sender / envelope",
                "latency p50 after",
            ],
        )
    )
