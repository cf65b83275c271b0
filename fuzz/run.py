"""``make fuzz``: run every harness under atheris (coverage-guided) for a bounded time.

    python -m fuzz.run                 # every target, 60 s each
    python -m fuzz.run --seconds 600   # the acceptance run: 10 minutes per harness
    python -m fuzz.run envelope note   # some targets

A target may only return or raise AccordError; anything else is a crash, reported with
the input that caused it (saved under fuzz/crashes/). Exit status is non-zero on any.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fuzz_one(name: str) -> None:
    import atheris

    with atheris.instrument_imports(include=["exchange", "fuzz"]):
        from exchange.errors import AccordError
        from fuzz.harnesses import TARGETS

    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        with contextlib.suppress(AccordError):
            target(data)

    argv = [sys.argv[0], *sys.argv[3:]]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        fuzz_one(sys.argv[2])
        return 0
    from fuzz.harnesses import TARGETS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=int, default=60, help="time per harness (default 60)")
    args = parser.parse_args()
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}")
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    from fuzz.seeds import write

    corpus = write(HERE / "corpus")
    failed = []
    for name in args.targets or list(TARGETS):
        print(f"== {name}: {args.seconds}s", flush=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fuzz.run",
                "--one",
                name,
                f"-max_total_time={args.seconds}",
                f"-artifact_prefix={crashes}/{name}-",
                "-rss_limit_mb=2048",
                "-timeout=10",
                "-print_final_stats=1",
                *([str(corpus[name])] if name in corpus else []),
            ],
            cwd=HERE.parent,
            check=False,
            capture_output=True,
            text=True,
        )
        tail = "\n".join(proc.stderr.splitlines()[-8:])
        if proc.returncode != 0:
            failed.append(name)
            print(f"!! {name}: exit {proc.returncode}\n{tail}", flush=True)
        else:
            runs = [
                line
                for line in proc.stderr.splitlines()
                if "stat::number_of_executed_units" in line
            ]
            print(
                f"ok {name}: {runs[-1].split(':')[-1].strip() if runs else '?'} inputs, no crash",
                flush=True,
            )
    if failed:
        print(f"crashes in: {', '.join(failed)} (inputs saved in {crashes})")
        return 1
    print("all harnesses ran clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
