"""Receiving with envelopes opened ahead in worker processes (issue 19, ADR 0027): the same
outcome, the same stored bytes and the same receipt as opening them in the node; the key
material a worker gets; a worker killed mid-batch."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest

from exchange.envelope import Envelope
from exchange.errors import InputError
from exchange.receiver import OpenContext, Opened
from keys.keyring import BatchDecrypter
from node.home import Node
from node.services import outbox
from node.services.inbox import apply_batch, cursor, get_inbox, list_inbox, open_inputs
from node.services.opening import (
    OpenedBatch,
    OpenPool,
    configured_workers,
    default_workers,
    open_chunk,
)
from tests.builders import ALERT, valid_report
from tests.conftest import PASSPHRASE


@pytest.fixture(scope="module")
def pool() -> Iterator[OpenPool]:
    opener = OpenPool(2)
    yield opener
    opener.close()


def _reports(count: int) -> list[dict[str, object]]:
    out = []
    for i in range(count):
        fields = dict(ALERT["fields"])
        fields["title"] = f"{fields['title']} {i}"
        out.append({**ALERT, "fields": fields})
    return out


def _sent(pk: Node, count: int, now: datetime, after: int = 0) -> list[Envelope]:
    """Submit ``count`` reports; the envelopes for cn-mps after seq ``after``."""
    outbox.submit(pk, [valid_report(r) for r in _reports(count)], now)
    return _pending(pk, after)


def _pending(pk: Node, after: int = 0) -> list[Envelope]:
    out: list[Envelope] = []
    while True:
        rows = outbox.pending_with_seq(pk, "cn-mps", after + len(out), 256)
        if not rows:
            return out
        out += [env for _seq, env in rows]


def _twin(cn: Node, tmp_path: Path) -> Node:
    """A second copy of the receiving node, in the same state."""
    copy = tmp_path / "cn-twin"
    shutil.copytree(cn.data_dir, copy)
    return Node.open(copy, lambda: PASSPHRASE)


def _in_process(cn: Node, envelopes: list[Envelope], now: datetime) -> OpenedBatch:
    inputs = open_inputs(cn, "pk-moi", envelopes, now)
    assert inputs is not None
    context, decrypter = inputs
    # What the pool does: everything through multiprocessing's pickler.
    sent = ForkingPickler.loads(ForkingPickler.dumps((context, decrypter, envelopes)))
    results = ForkingPickler.loads(ForkingPickler.dumps(open_chunk(*sent)))
    return OpenedBatch(context, decrypter, tuple(results))


def _stored(node: Node) -> list[tuple[object, ...]]:
    items = list_inbox(node, limit=1000)
    out: list[tuple[object, ...]] = []
    for item in items:
        _i, content = get_inbox(node, item.envelope_id)
        out.append((item, content["release"], content.get("presentation")))
    return out


def test_opened_ahead_applies_what_the_node_would(
    pair: tuple[Node, Node], tmp_path: Path, pool: OpenPool
) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    envelopes = _sent(pk, 12, now)
    twin = _twin(cn, tmp_path)
    try:
        ahead = asyncio.run(pool.open(*_inputs(cn, envelopes, now), envelopes))
        assert ahead is not None and all(isinstance(r, Opened) for r in ahead.results)
        got = apply_batch(cn, "pk-moi", envelopes, now, ahead=ahead)
        want = apply_batch(twin, "pk-moi", envelopes, now)
        assert got.applied == want.applied == 12 and not got.rejected
        assert got.receipt is not None and want.receipt is not None
        assert got.receipt.statement == want.receipt.statement  # the signed bytes
        assert got.items == want.items
        assert _stored(cn) == _stored(twin)
        assert cursor(cn, "pk-moi") == cursor(twin, "pk-moi") == 12
        # The same batch again: replays, whichever way it is opened.
        again = apply_batch(cn, "pk-moi", envelopes, now, ahead=ahead)
        assert again.duplicates == 12 and again.applied == 0
    finally:
        twin.close()


def _inputs(
    cn: Node, envelopes: list[Envelope], now: datetime
) -> tuple[OpenContext, BatchDecrypter]:
    inputs = open_inputs(cn, "pk-moi", envelopes, now)
    assert inputs is not None
    return inputs


def test_results_for_another_context_or_position_are_not_used(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    envelopes = _sent(pk, 4, now)
    ahead = _in_process(cn, envelopes, now)
    # Opened at another time: not used (the agreement window, acks depend on it).
    later = now + timedelta(seconds=1)
    twin = _twin(cn, tmp_path)
    try:
        got = apply_batch(cn, "pk-moi", envelopes, later, ahead=ahead)
        want = apply_batch(twin, "pk-moi", envelopes, later)
        assert got.receipt is not None and want.receipt is not None
        assert got.receipt.statement == want.receipt.statement
    finally:
        twin.close()
    # Results shifted by one (each opened for another position): the receiver opens
    # every envelope itself, and the outcome is the in-order one.
    more = _pending(pk)
    shifted = OpenedBatch(ahead.context, ahead.decrypter, (None, *ahead.results[:-1]))
    out = apply_batch(cn, "pk-moi", more, now, ahead=shifted)
    assert out.duplicates == 4


def test_a_worker_gets_only_the_epoch_keys_of_its_batch(pair: tuple[Node, Node]) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    envelopes = _sent(pk, 2, now)
    ring = cn.keyring()
    renewed = ring.with_new_encryption_epoch(now, ring.encryption[0].suite)
    kid = envelopes[0].header  # the batch names only the first epoch's kid
    _context, decrypter = _inputs(cn, envelopes, now)
    assert decrypter.kids == (ring.encryption[0].kid,)
    wire = ForkingPickler.dumps(decrypter).tobytes()
    assert ring.encryption[0].secret in wire
    for other in (renewed.encryption[-1].secret, ring.identity_seed, ring.storage_key):
        assert other not in wire
    for secret in (ring.log_seed, ring.witness_seed, ring.tls.key_pem, ring.tls.ca_key_pem):
        assert secret not in wire
    assert b"ek-" in kid
    # It answers as the keyring does, for its kids and only those.
    theirs = ForkingPickler.loads(wire)
    assert theirs == decrypter and theirs(decrypter.kids[0]) is not None
    assert theirs(renewed.encryption[-1].kid) is None
    assert renewed.batch_decrypter(decrypter.kids) == decrypter
    assert repr(decrypter).count("ek-") == 1 and "secret" not in repr(decrypter)


def _kill_one(opener: OpenPool) -> None:
    pids = opener.worker_pids()
    assert pids
    os.kill(pids[0], signal.SIGKILL)


def test_a_killed_worker_costs_the_batch_nothing(pair: tuple[Node, Node]) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    envelopes = _sent(pk, 200, now)
    assert len(envelopes) == 200
    opener = OpenPool(2)
    try:
        # Killed while the batch is in the workers: the batch is opened in the node, or
        # (if the other worker finished every chunk first) from the results; either way
        # each envelope is applied once.
        opener.start()

        async def killed_midway() -> OpenedBatch | None:
            opening = asyncio.ensure_future(opener.open(*_inputs(cn, envelopes, now), envelopes))
            await asyncio.sleep(0.02)
            _kill_one(opener)
            return await opening

        ahead = asyncio.run(killed_midway())
        out = apply_batch(cn, "pk-moi", envelopes, now, ahead=ahead)
        assert out.applied == 200 and cursor(cn, "pk-moi") == 200
        # Killed between batches: the next batch finds the pool broken, is opened in the
        # node, and the pool is replaced for the one after.
        more = _sent(pk, 16, now, after=200)
        assert asyncio.run(opener.open(*_inputs(cn, more, now), more)) is not None
        _kill_one(opener)
        assert asyncio.run(opener.open(*_inputs(cn, more, now), more)) is None
        out = apply_batch(cn, "pk-moi", more[:8], now, ahead=None)
        assert out.applied == 8
        rest = more[8:]
        ahead = asyncio.run(opener.open(*_inputs(cn, rest, now), rest))
        assert ahead is not None
        again = apply_batch(cn, "pk-moi", rest, now, ahead=ahead)
        assert again.applied == 8 and cursor(cn, "pk-moi") == 216
        assert len(list_inbox(cn, limit=1000)) == 216  # nothing twice, nothing lost
    finally:
        opener.close()


_ORPHAN = """
import sys, time
from node.services.opening import OpenPool

if __name__ == "__main__":
    pool = OpenPool(2)
    pool.start()
    while len(pool.worker_pids()) < 2:
        time.sleep(0.05)
    print(" ".join(map(str, pool.worker_pids())), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_workers_leave_when_the_serving_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "serving.py"
    script.write_text(_ORPHAN, "utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60  # a bound on the wait, not a timing assertion
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_workers_by_default_from_three_cores_one_per_spare_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [default_workers(n) for n in (1, 2, 3, 4, 8)] == [0, 0, 2, 3, 7]
    monkeypatch.delenv("ACCORD_RECEIVE_WORKERS", raising=False)
    assert configured_workers() == default_workers(len(os.sched_getaffinity(0)))
    monkeypatch.setenv("ACCORD_RECEIVE_WORKERS", "0")
    assert configured_workers() == 0
    monkeypatch.setenv("ACCORD_RECEIVE_WORKERS", "two")
    with pytest.raises(InputError) as raised:
        configured_workers()
    assert raised.value.code == "config.invalid"
