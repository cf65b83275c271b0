"""``make bench``: the primitives' floor and every pipeline of docs/DESIGN.md §12, in one run.

    .venv/bin/python bench/run.py            # full: 100k backlog, 1M stored reports, 10M log
    .venv/bin/python bench/run.py --quick    # the same shape, small sizes, under 2 minutes

Prints one table (measured, floor, ratio, target, pass/fail) and writes the numbers to
``bench/results/<UTC time>[-quick].json``. Timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import floor, live, pipelines

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


def cost(prims: dict[str, float], recipe: dict[str, float]) -> float:
    return sum(prims[name] * count for name, count in recipe.items())


def step(name: str) -> float:
    print(f"  … {name}", file=sys.stderr, flush=True)
    return time.perf_counter()


def measure(cfg: dict[str, Any], root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = step("floor: Ed25519, HPKE, SHA-256, SQLite batched insert")
    out["floor"] = floor.measure(cfg["floor_seconds"])
    out["floor_s"] = time.perf_counter() - t
    t = step(f"submit at {', '.join(f'{s:,}' for s in cfg['flat_sizes'])} stored reports")
    out["submit_flat"] = pipelines.submit_flat(root, cfg["flat_sizes"], cfg["flat_sample"])
    out["submit_flat_s"] = time.perf_counter() - t
    t = step(f"sync of a {cfg['backlog']:,}-envelope backlog between two accord serve")
    out["live"] = live.run(root, cfg["backlog"], cfg["latency_samples"])
    out["live_s"] = time.perf_counter() - t
    t = step("log append")
    out["log_append_per_s"] = pipelines.log_append(root, cfg["log_entries"])
    out["proofs"] = [pipelines.proofs(root, size) for size in cfg["proof_sizes"]]
    out["log_s"] = time.perf_counter() - t
    t = step(f"audit verify of a {cfg['audit_entries']:,}-entry bundle")
    out["audit"] = pipelines.audit(root, cfg["audit_entries"])
    out["audit_s"] = time.perf_counter() - t
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def rows(r: dict[str, Any], cfg: dict[str, Any]) -> list[list[str]]:
    prims = r["floor"]
    table = []
    submit = r["submit_flat"][0]["reports_per_s"]
    submit_floor = 1 / cost(prims, SUBMIT_FLOOR)
    table.append(
        [
            "submit, 2 partners (batch API)",
            f"{submit:,.0f} reports/s",
            f"{submit_floor:,.0f}/s",
            f"{submit / submit_floor:.0%}",
            ">= 1,000/s, >= 60 %",
            verdict(submit >= 1000 and submit / submit_floor >= 0.6),
        ]
    )
    sync = r["live"]["envelopes_per_s"]
    sync_floor = 1 / cost(prims, SYNC_FLOOR)
    table.append(
        [
            f"sync over mTLS, {r['live']['backlog']:,} backlog",
            f"{sync:,.0f} envelopes/s",
            f"{sync_floor:,.0f}/s",
            f"{sync / sync_floor:.0%}",
            ">= 2,000/s, >= 50 %",
            verdict(sync >= 2000 and sync / sync_floor >= 0.5),
        ]
    )
    lat = r["live"]["latency_ms"]
    p50, p99 = live.percentile(lat, 50), live.percentile(lat, 99)
    table.append(
        [
            f"latency A->B, follow ({len(lat)} reports)",
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            "-",
            "-",
            "p50 < 50 ms, p99 < 250 ms",
            verdict(p50 < 50 and p99 < 250),
        ]
    )
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
    m = r["live"]
    hwm = m["receiver_hwm_bytes"] / 2**20
    early, end = m["receiver_rss_at_10pct"] / 2**20, m["receiver_rss_at_end"] / 2**20
    table.append(
        [
            f"memory, receiver, {m['backlog']:,} backlog",
            f"peak {hwm:.0f} MB (RSS {early:.0f} MB at 10 %, {end:.0f} MB at end)",
            "-",
            "-",
            "< 200 MB, flat",
            verdict(hwm < 200 and end <= early * 1.25),
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


def report(r: dict[str, Any], cfg: dict[str, Any]) -> str:
    prims = r["floor"]
    out = ["Floor (this machine, this run):", ""]
    out.append(
        render(
            [[name, f"{seconds * 1e6:.1f} µs"] for name, seconds in prims.items()],
            ["primitive", "per operation"],
        )
    )
    out += ["", "Pipelines against the floor and the budget of docs/DESIGN.md §12:", ""]
    out.append(
        render(rows(r, cfg), ["pipeline", "measured", "floor", "of floor", "target", "result"])
    )
    first = r["submit_flat"][0]["reports_per_s"]
    out += ["", "Submit cost as the store grows (2 partners, batches of 256):", ""]
    out.append(
        render(
            [
                [
                    f"{s['stored']:,}",
                    f"{s['reports_per_s']:,.0f}",
                    f"{1000 / s['reports_per_s']:.2f} ms",
                    f"{s['reports_per_s'] / first:.2f}",
                ]
                for s in r["submit_flat"]
            ],
            ["stored reports", "reports/s", "per report", "vs first"],
        )
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    root = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    started = time.perf_counter()
    try:
        results = measure(cfg, root)
    finally:
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
