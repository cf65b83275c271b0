"""``make bench``: the primitives' floor and every pipeline of docs/DESIGN.md §12, in one run.

    .venv/bin/python bench/run.py            # full: 100k backlog, 1M stored reports, 10M log
    .venv/bin/python bench/run.py --quick    # the same shape, small sizes, about 2 minutes
    .venv/bin/python bench/run.py --backend sqlite   # submit and sync on SQLite only

Submit, sync, latency and memory run once per backend of the sender's store (``--backend``,
default both): SQLite, and PostgreSQL in a throwaway cluster started from initdb on a Unix
socket (tools/pgcluster.py), stopped at the end however the run ends. Without the server
binaries the PostgreSQL column says so and the rest still runs.

Prints the tables (measured, floor, ratio, target, pass/fail) and writes the numbers to
``bench/results/<UTC time>[-quick].json``. Timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psycopg import sql

from bench import floor, live, pipelines, profiling
from node.services.opening import configured_workers
from tools.pgcluster import MISSING, SUPERUSER, PgCluster, find_server_bin

RESULTS = Path(__file__).resolve().parent / "results"

FULL = {
    "floor_seconds": 1.0,
    "flat_sizes": [10_000, 100_000, 1_000_000],
    "flat_sample": 1024,
    "backlog": 100_000,
    "latency_samples": 200,
    "log_entries": 100_000,
    "proof_sizes": [1_000_000, 10_000_000],
    "audit_entries": 1_000_000,
    "profile_backlog": 10_000,
}
QUICK = {
    "floor_seconds": 0.3,
    "flat_sizes": [1_000, 5_000, 20_000],
    "flat_sample": 768,
    "backlog": 3_000,
    "latency_samples": 40,
    "log_entries": 50_000,
    "proof_sizes": [1_000_000],
    "audit_entries": 100_000,
    "profile_backlog": 2_000,
}

# How many of each primitive one item of a pipeline cannot do without (see docs/PERFORMANCE.md).
SUBMIT_FLOOR = {"ed25519_sign": 5, "hpke_seal": 2, "sha256_2kb": 16, "sqlite_insert_2kb": 4}
SYNC_FLOOR = {
    "ed25519_verify": 3,
    "hpke_open": 1,
    "sha256_2kb": 12,
    "sqlite_insert_2kb": 3,
    "ed25519_sign": 1 / 256,
}
LOG_FLOOR = {"sha256_2kb": 2, "sqlite_insert_2kb": 1}
AUDIT_FLOOR = {"sha256_2kb": 2}


BACKENDS = ("sqlite", "postgres")
LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
# The insert primitive of each backend's floor: the same 2 KB rows in batches of 256, one
# durable commit per batch (SQLite: WAL, synchronous=FULL; PostgreSQL: synchronous_commit).
INSERT = {"sqlite": "sqlite_insert_2kb", "postgres": "pg_insert_2kb"}


def cost(prims: Mapping[str, float], recipe: Mapping[str, float], backend: str = "sqlite") -> float:
    """Seconds one item of a pipeline cannot go below; its inserts priced on ``backend``."""
    return sum(
        prims[INSERT[backend] if name == "sqlite_insert_2kb" else name] * count
        for name, count in recipe.items()
    )


def step(name: str) -> float:
    print(f"  … {name}", file=sys.stderr, flush=True)
    return time.perf_counter()


class Postgres:
    """The PostgreSQL side of a run: a throwaway cluster (tools/pgcluster.py) from initdb,
    on a Unix socket, fsync and synchronous_commit on, or the reason there is none.
    ``close()`` stops it and removes its directory; main() calls it however the run ends."""

    def __init__(self) -> None:
        self.cluster: PgCluster | None = None
        self.reason = ""
        bindir = find_server_bin()
        if bindir is None:
            self.reason = MISSING
            return
        try:
            self.cluster = PgCluster.create(bindir)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            self.reason = "the PostgreSQL cluster did not start: " + str(e).splitlines()[0]

    def createdb(self, name: str) -> str:
        assert self.cluster is not None
        return self.cluster.createdb(name)

    def dropdb(self, name: str) -> None:
        """Drop a database the run is done with (a million stored reports take ~17 GB)."""
        assert self.cluster is not None
        with self.cluster.connect(dbname="postgres", user=SUPERUSER) as conn:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))

    def settings(self) -> dict[str, str]:
        """What the server runs with, as it reports it (not as asked)."""
        assert self.cluster is not None
        with self.cluster.connect() as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', "
                "'fsync', 'synchronous_commit', 'full_page_writes', 'listen_addresses', "
                "'shared_buffers', 'wal_level')"
            ).fetchall()
        return {str(name): str(value) for name, value in rows}

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None


def measure(
    cfg: dict[str, Any], root: Path, backends: list[str], pg: Postgres | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = step("floor: Ed25519, HPKE, SHA-256, SQLite batched insert")
    out["floor"] = floor.measure(cfg["floor_seconds"])
    runs: dict[str, dict[str, Any]] = {}
    for backend in backends:
        if backend == "postgres":
            assert pg is not None
            if pg.cluster is None:
                runs[backend] = {"unavailable": pg.reason}
                continue
            step("floor: PostgreSQL batched insert")
            out["floor"]["pg_insert_2kb"] = floor.pg_insert(
                pg.createdb("bench_floor"), cfg["floor_seconds"] * 2, rows=200_000
            )
            runs[backend] = {"server": pg.settings()}
        else:
            runs[backend] = {}
    out["floor_s"] = time.perf_counter() - t
    out["backends"] = runs
    todo = [b for b in backends if "unavailable" not in runs[b]]

    def database(backend: str, name: str) -> str | None:
        return pg.createdb(name) if backend == "postgres" and pg is not None else None

    sizes = ", ".join(f"{s:,}" for s in cfg["flat_sizes"])
    for backend in todo:
        t = step(f"submit at {sizes} stored reports ({LABEL[backend]})")
        runs[backend]["submit_flat"] = pipelines.submit_flat(
            root / backend,
            cfg["flat_sizes"],
            cfg["flat_sample"],
            database(backend, "bench_submit"),
        )
        runs[backend]["submit_flat_s"] = time.perf_counter() - t
        if backend == "postgres" and pg is not None:
            pg.dropdb("bench_submit")
    for backend in todo:
        t = step(
            f"sync of a {cfg['backlog']:,}-envelope backlog between two accord serve "
            f"(sender on {LABEL[backend]})"
        )
        runs[backend]["live"] = live.run(
            root / backend, cfg["backlog"], cfg["latency_samples"], database(backend, "bench_live")
        )
        runs[backend]["live_s"] = time.perf_counter() - t
    out["profile"] = profile(cfg, root, runs, out["floor"])
    t = step("log append")
    out["log_append_per_s"] = pipelines.log_append(root, cfg["log_entries"])
    out["proofs"] = [pipelines.proofs(root, size) for size in cfg["proof_sizes"]]
    out["log_s"] = time.perf_counter() - t
    t = step(f"audit verify of a {cfg['audit_entries']:,}-entry bundle")
    out["audit"] = pipelines.audit(root, cfg["audit_entries"])
    out["audit_s"] = time.perf_counter() - t
    return out


SUBMIT_TARGET, SYNC_TARGET = 1000.0, 2000.0


def missed(runs: dict[str, dict[str, Any]], prims: dict[str, float]) -> tuple[bool, bool]:
    """Whether submit and sync missed their targets (rate or floor ratio) on any backend."""
    sub = syn = False
    for name, run in runs.items():
        if "submit_flat" in run:
            rate = run["submit_flat"][0]["reports_per_s"]
            sub |= rate < SUBMIT_TARGET or rate * cost(prims, SUBMIT_FLOOR, name) < 0.6
        if "live" in run:
            rate = run["live"]["envelopes_per_s"]
            syn |= rate < SYNC_TARGET or rate * cost(prims, SYNC_FLOOR, name) < 0.5
    return sub, syn


def profile(
    cfg: dict[str, Any], root: Path, runs: dict[str, dict[str, Any]], prims: dict[str, float]
) -> dict[str, Any]:
    """When submit or sync missed, where its time goes and what each next step would buy
    (bench/profile.py): submit profiled in process, sync with both servers profiled."""
    sub, syn = missed(runs, prims)
    cores = _cpus()
    out: dict[str, Any] = {}
    if sub:
        t = step("profile: submit in process (2 partners, SQLite)")
        out["submit"] = profiling.submit(root)
        out["submit"]["steps"] = profiling.submit_steps(out["submit"], cores, SUBMIT_TARGET)
        out["submit"]["seconds"] = time.perf_counter() - t
    measured = runs.get("sqlite", {}).get("live")
    if syn and measured is not None:
        t = time.perf_counter()
        backlog = cfg["profile_backlog"]
        # The same backlog with receive workers off and on (ADR 0027): the workers step
        # measured, and the off run the base the profile's areas are scaled to.
        ab: dict[int, dict[str, Any]] = {}
        for workers in (0, configured_workers() or cores):
            step(f"sync of a {backlog:,}-envelope backlog with ACCORD_RECEIVE_WORKERS={workers}")
            ab[workers] = live.run(
                root / f"workers-{workers}",
                backlog,
                max(cfg["latency_samples"] // 5, 8),
                env={"ACCORD_RECEIVE_WORKERS": str(workers)},
            )
            ab[workers]["workers"] = workers
        step("profile: the same sync with both accord serve profiled (workers off, SQLite)")
        profiled = live.run_profiled(
            root / "profile-sync", backlog, env={"ACCORD_RECEIVE_WORKERS": "0"}
        )
        off = ab[0]
        s = profiling.sync(off["cpu"], off["backlog"], profiled)
        s["measured"] = {k: measured[k] for k in ("backlog", "envelopes_per_s", "cpu")}
        s["profiled_envelopes"] = profiled["envelopes"]
        s["workers"] = list(ab.values())
        s["analysis"] = profiling.sync_steps(s, off["envelopes_per_s"], cores, SYNC_TARGET)
        s["seconds"] = time.perf_counter() - t
        out["sync"] = s
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def side_by_side(r: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The pipelines that touch the sender's store, one column per backend run: header and
    rows. A backend that could not run says why in every one of its cells."""
    prims = r["floor"]
    runs: dict[str, dict[str, Any]] = r["backends"]
    names = list(runs)

    said: set[str] = set()

    def cells(fn: Any) -> list[str]:
        out = []
        for name in names:
            run = runs[name]
            if "unavailable" not in run:
                out.append(fn(name, run))
            elif name in said:
                out.append("not run")
            else:
                out.append(f"not run: {run['unavailable']}")
                said.add(name)
        return out

    def submit(name: str, run: dict[str, Any]) -> str:
        rate = run["submit_flat"][0]["reports_per_s"]
        best = 1 / cost(prims, SUBMIT_FLOOR, name)
        ok = rate >= 1000 and rate / best >= 0.6
        return f"{rate:,.0f} reports/s, {rate / best:.0%} of {best:,.0f}/s: {verdict(ok)}"

    def sync(name: str, run: dict[str, Any]) -> str:
        rate = run["live"]["envelopes_per_s"]
        best = 1 / cost(prims, SYNC_FLOOR, name)
        ok = rate >= 2000 and rate / best >= 0.5
        return f"{rate:,.0f} envelopes/s, {rate / best:.0%} of {best:,.0f}/s: {verdict(ok)}"

    def latency(name: str, run: dict[str, Any]) -> str:
        lat = run["live"]["latency_ms"]
        p50, p99 = live.percentile(lat, 50), live.percentile(lat, 99)
        return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms: {verdict(p50 < 50 and p99 < 250)}"

    def memory(name: str, run: dict[str, Any]) -> str:
        m = run["live"]
        hwm = m["receiver_hwm_bytes"] / 2**20
        early, end = m["receiver_rss_at_10pct"] / 2**20, m["receiver_rss_at_end"] / 2**20
        ok = hwm < 200 and end <= early * 1.25
        return f"peak {hwm:.0f} MB ({early:.0f} MB at 10 %, {end:.0f} at end): {verdict(ok)}"

    def sender(name: str, run: dict[str, Any]) -> str:
        return f"peak {run['live']['sender_hwm_bytes'] / 2**20:.0f} MB"

    first = next((run for run in runs.values() if "live" in run), None)
    backlog = f"{first['live']['backlog']:,}" if first else "?"
    samples = len(first["live"]["latency_ms"]) if first else "?"
    table = [
        ["submit, 2 partners (batch API)", ">= 1,000/s, >= 60 %", *cells(submit)],
        [f"sync over mTLS, {backlog} backlog", ">= 2,000/s, >= 50 %", *cells(sync)],
        [f"latency A->B, follow ({samples} reports)", "p50 < 50 ms, p99 < 250 ms", *cells(latency)],
        [f"memory, receiver (SQLite), {backlog} backlog", "< 200 MB, flat", *cells(memory)],
        ["memory, sender accord serve", "-", *cells(sender)],
    ]
    header = ["pipeline (sender's store ->)", "target", *(LABEL[n] for n in names)]
    return header, table


def rows(r: dict[str, Any], cfg: dict[str, Any]) -> list[list[str]]:
    """The pipelines that do not depend on the sender's backend (they run on SQLite)."""
    prims = r["floor"]
    table = []
    append = r["log_append_per_s"]
    append_floor = 1 / cost(prims, LOG_FLOOR)
    table.append(
        [
            "log append (batches of 1,000)",
            f"{append:,.0f} entries/s",
            f"{append_floor:,.0f}/s",
            f"{append / append_floor:.0%}",
            ">= 50,000/s",
            verdict(append >= 50_000),
        ]
    )
    for p in r["proofs"]:
        worst = max(p["inclusion_s"], p["consistency_s"]) * 1000
        table.append(
            [
                f"proofs at {p['size']:,} entries",
                f"incl {p['inclusion_s'] * 1000:.2f} ms, cons {p['consistency_s'] * 1000:.2f} ms",
                "-",
                "-",
                "< 2 ms each (at 10M)",
                verdict(worst < 2),
            ]
        )
    a = r["audit"]
    per_million = a["seconds"] * 1_000_000 / a["entries"]
    audit_floor = cost(prims, AUDIT_FLOOR) * 1_000_000
    scaled = "" if a["entries"] == 1_000_000 else f" ({a['entries']:,} x{1e6 / a['entries']:g})"
    table.append(
        [
            f"audit verify, 1M entries{scaled}",
            f"{per_million:.1f} s",
            f"{audit_floor:.1f} s",
            f"{audit_floor / per_million:.0%}",
            "< 10 s",
            verdict(per_million < 10),
        ]
    )
    return table


def render(table: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def growth(r: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Submit cost as the store grows, one pair of columns per backend that ran."""
    runs = {n: run for n, run in r["backends"].items() if "submit_flat" in run}
    if not runs:
        return ["stored reports"], []
    sizes = [s["stored"] for s in next(iter(runs.values()))["submit_flat"]]
    header = ["stored reports"]
    for name in runs:
        header += [f"{LABEL[name]} reports/s", "per report", "vs first"]
    table = []
    for k, size in enumerate(sizes):
        row = [f"{size:,}"]
        for run in runs.values():
            s, first = run["submit_flat"][k], run["submit_flat"][0]["reports_per_s"]
            row += [
                f"{s['reports_per_s']:,.0f}",
                f"{1000 / s['reports_per_s']:.2f} ms",
                f"{s['reports_per_s'] / first:.2f}",
            ]
        table.append(row)
    return header, table


def report(r: dict[str, Any], cfg: dict[str, Any]) -> str:
    prims = r["floor"]
    out = ["Floor (this machine, this run):", ""]
    out.append(
        render(
            [[name, f"{seconds * 1e6:.1f} µs"] for name, seconds in prims.items()],
            ["primitive", "per operation"],
        )
    )
    out += [
        "",
        "Pipelines on the sender's store, side by side (receiver always SQLite; each floor "
        "prices the inserts on that backend):",
        "",
    ]
    header, table = side_by_side(r)
    out.append(render(table, header))
    out += ["", "Pipelines against the floor and the budget of docs/DESIGN.md §12 (SQLite):", ""]
    out.append(
        render(rows(r, cfg), ["pipeline", "measured", "floor", "of floor", "target", "result"])
    )
    out += [
        "",
        "Submit cost as the store grows (2 partners, batches of 256; grown between sizes by "
        "SQL copies of rows on either backend):",
        "",
    ]
    header, table = growth(r)
    out.append(render(table, header))
    prof = r.get("profile") or {}
    if prof:
        out += [
            "",
            "The profile of what missed (bench/profiling.py; docs/PERFORMANCE.md). cProfile "
            "adds a cost to every Python call, so call-heavy Python (validation, canonical "
            "checks) weighs more in these shares than it costs unprofiled and native code "
            "less; the projections inherit that.",
            "",
        ]
        out.append(profiling.report(prof.get("submit"), prof.get("sync"), _cpus(), render))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "both"],
        default="both",
        help="the sender's store for submit, sync, latency and memory (default both)",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    root = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    started = time.perf_counter()
    # SIGTERM as an exception, so the finally below stops the PostgreSQL server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pg: Postgres | None = None
    try:
        if "postgres" in backends:
            step("PostgreSQL: initdb and start a throwaway cluster on a Unix socket")
            pg = Postgres()
        results = measure(cfg, root, backends, pg)
    finally:
        if pg is not None:
            pg.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    results["mode"] = "quick" if args.quick else "full"
    results["config"] = cfg
    results["machine"] = {"python": platform.python_version(), "cpus": _cpus()}
    text = report(results, cfg)
    print(text)
    print(f"\n{results['mode']} run: {results['total_s']:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({**results, "table": text}, indent=2) + "\n", "utf-8")
    print(f"results: {path}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
