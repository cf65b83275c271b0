"""A second process for the lock tests: ``python -m tests.pg.lockholder KIND MODE DSN NODE``.

KIND is ``writer`` or ``leader``. MODE ``hold`` takes the lock, writes one row through it when
it is the writer, prints ``acquired`` and waits to be killed. MODE ``contend`` tries once and
prints ``busy`` when it is held, then waits for it (up to 60 s), writes as ``hold`` does and
prints ``acquired`` (or ``timeout``). Either way the lock is then held until SIGKILL. One line
each, flushed, so the parent reads them as they come.
"""

from __future__ import annotations

import sys
import time

from node.store.pg import LeaderLock, SessionLock, WriterLock


def say(word: str) -> None:
    print(word, flush=True)


def main(argv: list[str]) -> int:
    kind, mode, dsn, node_id = argv
    lock: SessionLock = WriterLock(dsn, node_id) if kind == "writer" else LeaderLock(dsn, node_id)
    if mode == "hold":
        ok = lock.acquire(timeout=30)
    else:
        ok = lock.try_acquire()
        if not ok:
            say("busy")
            ok = lock.acquire(timeout=60)
    if not ok:
        say("timeout")
        return 1
    if isinstance(lock, WriterLock):
        with lock.transaction() as conn:
            conn.execute(
                "INSERT INTO writes (node, writer_pid) VALUES (%s, pg_backend_pid())", (node_id,)
            )
    say("acquired")
    while True:  # holding it until SIGKILL
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
