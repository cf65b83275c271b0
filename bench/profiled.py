"""``python bench/profiled.py ARGS`` runs ``python -m node ARGS`` (an ``accord serve``) under a
CPU-time profiler of its main thread that the bench switches on with SIGUSR1 and dumps with
SIGUSR2 to ``$ACCORD_BENCH_PROFILE``, so the profile covers exactly the sync window, not the
start-up. Bench only: nothing in the product imports it."""

from __future__ import annotations

import cProfile
import os
import runpy
import signal
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    out = os.environ["ACCORD_BENCH_PROFILE"]
    # thread_time: the main thread's CPU, so waiting in epoll is not counted as work.
    profiler = cProfile.Profile(time.thread_time)

    def start(_sig: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def dump(_sig: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)
        Path(out + ".done").touch()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    sys.argv = ["node", *sys.argv[1:]]
    runpy.run_module("node", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
