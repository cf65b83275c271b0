"""docs/THREATS.md rows that need the victim serving (P05 acknowledge/witness, P12 status, P13,
L03), a third partner (N05), faults (C01 SIGKILL, C02 disk full, C03 clock steps), load
(L01, L04, L05) and the insider (I03). Each asserts the stored state afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from exchange.errors import AccordError, StoreError
from node.home import Node
from node.rpc import sync
from node.rpc._pb.accord.v1 import (
    card_pb2,
    envelope_pb2,
    log_pb2,
    officer_pb2,
    peer_pb2,
    peer_pb2_grpc,
)
from node.rpc.cosigning import Cosigner
from node.rpc.errors_map import read_error_detail
from node.rpc.officer_service import ExchangeOfficerService
from node.rpc.server import NodeServer, ServeOptions
from node.rpc.transport import MAX_CALLS_PER_PEER, PartnerChannels, dial
from node.services import outbox
from node.services.inbox import cursor
from node.services.policy import apply_policy
from tests.adversarial.hostile import (
    HOSTILE,
    THIRD,
    VICTIM,
    Forge,
    HostileServer,
    World,
    agree,
    hostile_server,
    integrity_ok,
    make_node,
    pull,
    pull_once,
    rows,
    trust,
    valid,
)
from tests.builders import sqlite_store
from tests.conftest import POLICY, Result, snapshot
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.timeout(90)
RPC = 10.0


async def _serving(w: World, body: Callable[[NodeServer], Awaitable[Any]]) -> Any:
    """The victim serves (PeerExchange over mTLS, Officer socket); pk-moi is the client."""
    server = NodeServer(w.victim, ServeOptions(cosign=False, roots_refresh_seconds=3600))
    await server.start()
    try:
        return await body(server)
    finally:
        await server.stop(grace=0)


def _as_hostile(w: World) -> grpc.aio.Channel:
    return dial(w.hostile, w.victim_card)


# ---- P05 the other ways in: acknowledge, witness, CLI imports -----------------------------------


@pytest.mark.threat("P05")
def test_p05_forged_on_acknowledge(world: World) -> None:
    forge = Forge(world)
    outbox.submit(world.victim, [valid()], world.now)  # nothing released: no policy
    env = forge.submit()  # pk-moi's own traffic, so a receipt range exists on its side
    assert env
    before = snapshot(world.victim.data_dir)

    async def body(_server: NodeServer) -> grpc.aio.AioRpcError:
        async with _as_hostile(world) as channel:
            stub = peer_pb2_grpc.PeerExchangeStub(channel)
            statement = json.dumps({"type": "accord.receipt/v1"}).encode()
            request = peer_pb2.AcknowledgeRequest(
                receipt=envelope_pb2.BatchReceipt(statement=statement, signature=b"\x00" * 64)
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Acknowledge(request, timeout=RPC)
            return err.value

    error = asyncio.run(_serving(world, body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert read_error_detail(error).code == "peer.bad_signature"  # type: ignore[union-attr]
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.threat("P05")
def test_p05_forged_on_witness_add_checkpoint(world: World) -> None:
    cp = world.hostile.log.latest_checkpoint()
    assert cp is not None
    lines = cp.note.split(b"\n\n")
    forged = lines[0] + b"\n\n" + lines[1][:-10] + b"AAAAAAAAA\n"
    before = snapshot(world.victim.data_dir)

    async def body(_server: NodeServer) -> grpc.aio.AioRpcError:
        async with _as_hostile(world) as channel:
            stub = peer_pb2_grpc.PeerExchangeStub(channel)
            request = log_pb2.AddCheckpointRequest(
                old_size=0, checkpoint=log_pb2.Checkpoint(note=forged)
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.AddCheckpoint(request, timeout=RPC)
            return err.value

    error = asyncio.run(_serving(world, body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert read_error_detail(error).code.startswith("peer.")  # type: ignore[union-attr]
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.threat("P05")
def test_p05_forged_card_and_bundle_on_cli_import(
    world: World, accord: Callable[..., Result], tmp_path: Path
) -> None:
    chain = world.hostile.own_chain()
    import base64

    doc = json.loads(chain.to_bytes())
    inner = base64.b64decode(doc["cards"][-1]["card"])
    assert f"Agency {HOSTILE}".encode() in inner
    doc["cards"][-1]["card"] = base64.b64encode(
        inner.replace(f"Agency {HOSTILE}".encode(), b"Agency evilx")
    ).decode()
    card = tmp_path / "forged.card"
    card.write_text(json.dumps(doc))
    before = snapshot(world.victim.data_dir)
    r = accord(
        "--data",
        world.victim.data_dir,
        "peer",
        "add",
        card,
        "--fingerprint",
        chain.latest.fingerprint,
    )
    assert r.code != 0 and r.err
    assert snapshot(world.victim.data_dir) == before
    # An audit bundle with one byte of a signed checkpoint changed: verify refuses it.
    from node.services.audit import export_bundle

    bundle = tmp_path / "pk.bundle"
    export_bundle(world.hostile, bundle, world.now)
    data = bundle.read_bytes().replace(b"pk-moi.accord/log", b"pk-moi.accord/lig", 1)
    forged = tmp_path / "forged.bundle"
    forged.write_bytes(data)
    anchor = ("--fingerprint", f"{HOSTILE}={chain.latest.fingerprint}")
    assert accord("audit", "verify", bundle, *anchor, "--json").code == 0
    r = accord("audit", "verify", forged, *anchor, "--json")
    assert r.code != 0
    assert snapshot(world.victim.data_dir) == before


# ---- P12 never silent: receipt, log event and a count in `accord sync status` -------------------


@pytest.mark.threat("P12")
def test_p12_rejection_is_never_silent(world: World, accord: Callable[..., Result]) -> None:
    forge = Forge(world)
    sealed = forge.seal_report(valid())
    above = forge.seal(forge.content(sealed, released=sorted(sealed.disclosures)), seq=1)
    p = pull(world, [above])
    assert json.loads(p.peer.receipts[0][0])["items"] == [{"seq": 1, "code": "peer.above_ceiling"}]
    kinds = [
        e
        for e in rows(world.victim, "SELECT event FROM log_leaves")
        if b'"kind":"envelope.rejected"' in e[0]
    ]
    assert len(kinds) == 1 and b"peer.above_ceiling" in kinds[0][0]

    async def body(_server: NodeServer) -> Result:
        return await asyncio.to_thread(
            accord, "--data", world.victim.data_dir, "sync", "status", "--json"
        )

    r = asyncio.run(_serving(world, body))
    assert r.code == 0, r.err
    [status] = r.json()
    assert status["peer"] == HOSTILE and status["rejected"] == 1 and status["inbox_seq"] == 1


# ---- P13 existence does not leak -----------------------------------------------------------------


@pytest.mark.threat("P13")
def test_p13_existence_does_not_leak(world: World) -> None:
    """A report released to nobody and a report that does not exist look the same to the
    partner: the same Pull answer, the same refusal of a receipt naming it; error texts
    name no withheld field."""

    async def ask(_server: NodeServer) -> tuple[list[bytes], list[tuple[Any, str, str]]]:
        async with _as_hostile(world) as channel:
            stub = peer_pb2_grpc.PeerExchangeStub(channel)
            pulled = [
                m.SerializeToString()
                async for m in stub.Pull(peer_pb2.PullRequest(after_seq=0), timeout=RPC)
            ]
            errors = []
            for seq in (1, 2):
                statement = json.dumps({"first_seq": seq}).encode()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Acknowledge(
                        peer_pb2.AcknowledgeRequest(
                            receipt=envelope_pb2.BatchReceipt(statement=statement)
                        ),
                        timeout=RPC,
                    )
                detail = read_error_detail(err.value)
                assert detail is not None
                errors.append((err.value.code(), detail.code, err.value.details() or ""))
            return pulled, errors

    nothing, errors_before = asyncio.run(_serving(world, ask))
    secret = valid(
        title="Withheld-title-QX", source={"kind": "humint", "reliability": "A", "credibility": 1}
    )
    outbox.submit(world.victim, [secret], world.now)  # cn-mps has no policy: nothing released
    withheld, errors_after = asyncio.run(_serving(world, ask))
    assert withheld == nothing
    assert errors_after == errors_before
    for _status, _code, text in errors_after:
        for word in ("title", "source", "Withheld", "humint"):
            assert word not in text


# ---- P03 a frozen partner is marked stale ---------------------------------------------------------


@pytest.mark.threat("P03")
def test_p03_frozen_partner_is_marked_stale(world: World) -> None:
    window = timedelta(minutes=5)
    clock = {"now": world.now}

    async def scenario() -> list[officer_pb2.PeerStatus]:
        async with hostile_server(world) as peer:
            channels = PartnerChannels(world.victim)
            cosigner = Cosigner(world.victim, channels, now=lambda: clock["now"])
            service = ExchangeOfficerService(
                world.victim, cosigner, now=lambda: clock["now"], stale_after=window
            )
            seen = []
            await cosigner.round()  # pk-moi cosigns our checkpoint: a healthy contact
            [fresh] = (await service.Status(officer_pb2.StatusRequest(), None)).peers
            seen.append(fresh)
            peer.script.freeze_witness = True  # from now on it serves its stale view
            for minutes in (2, 4, 6):
                clock["now"] = world.now + timedelta(minutes=minutes)
                outbox.submit(world.victim, [valid()], clock["now"])  # our log grows
                await cosigner.round()
                [status] = (await service.Status(officer_pb2.StatusRequest(), None)).peers
                seen.append(status)
            await channels.close()
            return seen

    fresh, at2, at4, at6 = asyncio.run(scenario())
    assert fresh.cosigned_size > 0 and not fresh.stale
    assert not at2.stale and not at4.stale  # inside the window (its errors are shown)
    assert at2.last_error_code.startswith("witness.")
    assert at6.stale and at6.cosigned_size == fresh.cosigned_size


# ---- N05 idle peers end by deadline; others are not slowed ---------------------------------------


@pytest.fixture
def third(world: World) -> Iterator[Node]:
    de = make_node(world.tmp, THIRD, world.now - timedelta(hours=1))
    past = world.now - timedelta(minutes=30)
    trust(de, world.victim, past)
    trust(world.victim, de, past)
    agree(de, world.victim, past)
    apply_policy(de, POLICY.read_text("utf-8").replace("peer.cn-mps", "peer.cn-mps"), past)
    yield de
    de.close()


@pytest.mark.parametrize("how", ["hold", "trickle"])
@pytest.mark.threat("N05")
def test_n05_idle_or_trickling_peer_is_ended_and_others_are_not_slowed(
    world: World, third: Node, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "CALL_DEADLINE", 0.5)  # the whole non-follow stream: 3 s
    outbox.submit(third, [valid()], world.now)
    forge = Forge(world)
    forge.submit()
    before = snapshot(world.victim.data_dir)
    order: list[str] = []

    async def scenario() -> Any:
        honest = HostileServer(third, world.victim_card.tls_ca_pem.encode("ascii"))
        async with hostile_server(world) as bad, honest as good:
            setattr(bad.script, how, True)
            good.script.batches = [outbox.pending(third, VICTIM, 0, 256)]

            async def run(peer: str) -> Any:
                result = await pull_once(world.victim, world.now, peer)
                order.append(peer)
                return result

            return await asyncio.gather(run(HOSTILE), run(THIRD))

    (_bad_applied, bad_error, _), (good_applied, good_error, _) = asyncio.run(scenario())
    assert order == [THIRD, HOSTILE]  # the honest partner finished while the other hung
    assert good_error is None and good_applied == 1
    assert isinstance(bad_error, grpc.aio.AioRpcError)
    assert bad_error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cursor(world.victim, HOSTILE) == 0
    assert rows(world.victim, "SELECT DISTINCT peer FROM inbound") == [(THIRD,)]
    # Of pk-moi, nothing was stored: only de-bka's batch changed the victim.
    assert "pk-moi" not in str(rows(world.victim, "SELECT peer FROM receipts"))
    assert before["config.toml"] == snapshot(world.victim.data_dir)["config.toml"]


# ---- L03 many streams from one partner ------------------------------------------------------------


@pytest.mark.threat("L03")
def test_l03_many_streams_from_one_partner_are_bounded(world: World, third: Node) -> None:
    async def body(_server: NodeServer) -> tuple[int, int, bool]:
        async with _as_hostile(world) as channel:
            stub = peer_pb2_grpc.PeerExchangeStub(channel)
            calls = [
                stub.Pull(peer_pb2.PullRequest(after_seq=0, follow=True), timeout=RPC)
                for _ in range(MAX_CALLS_PER_PEER + 6)
            ]
            admitted = refused = 0
            for call in calls:
                try:
                    await call.read()
                    admitted += 1
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert read_error_detail(e).code == "limit.peer_calls"  # type: ignore[union-attr]
                    refused += 1
            async with dial(third, world.victim_card) as other:
                answer = await peer_pb2_grpc.PeerExchangeStub(other).GetCard(
                    card_pb2.GetCardRequest(), timeout=RPC
                )
            for call in calls:
                call.cancel()
            return admitted, refused, answer.card.card != b""

    admitted, refused, other_served = asyncio.run(_serving(world, body))
    assert admitted == MAX_CALLS_PER_PEER and refused == 6
    assert other_served


# ---- L01 oversized, L04 parser bombs, at the node --------------------------------------------------


@pytest.mark.threat("L01")
def test_l01_oversized_header_and_message(world: World) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    before = snapshot(world.victim.data_dir)
    big = forge.resign(e1, header=lambda h: h.update({"kid": "k" * 2000}))
    p = pull(world, [big])
    assert p.code == "peer.envelope.too_large" and "1024" in str(p.error)
    huge = envelope_pb2.EnvelopeBatch(
        envelopes=[envelope_pb2.Envelope(header=e1.header, ciphertext=b"\0" * (5 << 20))]
    )

    async def scenario() -> Any:
        server = HostileServer(
            world.hostile,
            world.victim_card.tls_ca_pem.encode("ascii"),
            options=[("grpc.max_send_message_length", 8 << 20)],
        )
        async with server as peer:
            peer.script.raw_batches = [huge]
            return await pull_once(world.victim, world.now)

    _applied, error, _state = asyncio.run(scenario())
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert snapshot(world.victim.data_dir) == before


BOMBS = {
    "deep-nesting": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "huge-integer": b'{"seq":' + b"9" * 5000 + b"}",
    "invalid-utf8": b'{"id":"\xff\xfe"}',
    "nul": b'{"id":"a\x00b"}',
    "long-string": b'{"id":"' + b"x" * 900 + b'"}',
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
@pytest.mark.threat("L04")
def test_l04_parser_bombs_in_a_signed_header(world: World, bomb: str) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    before = snapshot(world.victim.data_dir)
    p = pull(world, [forge.resign(e1, header_bytes=BOMBS[bomb])])
    assert p.code in ("peer.envelope.bad_header", "peer.envelope.too_large")
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.threat("L04")
def test_l04_confusable_sender_id(world: World) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    before = snapshot(world.victim.data_dir)
    confusable = forge.resign(e1, header=lambda h: h.update({"from": "pk-m\u043ei"}))  # Cyrillic o
    p = pull(world, [confusable])
    assert p.code in ("peer.envelope.bad_header", "peer.envelope.wrong_sender")
    assert snapshot(world.victim.data_dir) == before


# ---- L05 sustained load (bounded here; the long run is marked slow) --------------------------------


def _load(world: World, rounds: int, per_round: int, tmp_path: Path) -> None:
    from node.services.audit import export_bundle

    forge = Forge(world)
    total = 0
    for r in range(rounds):
        outbox.submit(world.victim, [valid() for _ in range(per_round)], world.now)  # officers
        envelopes = forge.submit(*(valid() for _ in range(per_round)))  # the partner's traffic
        p = pull(world, envelopes)
        assert p.error is None and p.applied == per_round
        total += per_round
        export_bundle(world.victim, tmp_path / f"audit-{r}.bundle", world.now)  # auditors
    assert cursor(world.victim, HOSTILE) == total
    wal = sqlite_store(world.victim).path.with_name("node.db-wal")
    assert not wal.exists() or wal.stat().st_size < 64 << 20
    integrity_ok(world.victim)


@pytest.mark.threat("L05")
def test_l05_sustained_load_bounded(world: World, tmp_path: Path) -> None:
    _load(world, rounds=3, per_round=20, tmp_path=tmp_path)


@pytest.mark.slow
@pytest.mark.threat("L05")
def test_l05_sustained_load_long(world: World, tmp_path: Path) -> None:
    _load(world, rounds=20, per_round=100, tmp_path=tmp_path)


# ---- C01 SIGKILL between steps of receive, C02 disk full, C03 clock steps --------------------------

CRASH = r"""
import json, os, signal, sys
from datetime import datetime
from exchange.envelope import Envelope
from node.services import inbox
from node.home import Node
data, envelopes, point, now = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
node = Node.open(__import__("pathlib").Path(data), lambda: "")
envs = [Envelope(*(bytes.fromhex(x) for x in e)) for e in json.loads(open(envelopes).read())]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "before-commit":
    inbox.make_receipt = die
elif point == "after-commit":
    Node.checkpoint = die
inbox.apply_batch(node, "pk-moi", envs, datetime.fromisoformat(now))
"""


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
@pytest.mark.threat("C01")
def test_c01_sigkill_while_receiving(world: World, point: str, tmp_path: Path) -> None:
    envelopes = Forge(world).submit(valid(), valid(), valid())
    file = tmp_path / "envelopes.json"
    file.write_text(
        json.dumps([[e.header.hex(), e.ciphertext.hex(), e.signature.hex()] for e in envelopes])
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH,
            str(world.victim.data_dir),
            str(file),
            point,
            world.now.isoformat(),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    integrity_ok(world.victim)
    expected = 0 if point == "before-commit" else 3
    assert cursor(world.victim, HOSTILE) == expected
    assert rows(world.victim, "SELECT count(*) FROM inbox") == [(expected,)]
    # After restart: the log is consistent (a checkpoint can be signed over it), sync
    # resumes from the cursor, and nothing is applied twice.
    world.victim.checkpoint(world.now)
    p = pull(world, envelopes)
    assert p.error is None and p.applied == 3 - expected
    assert rows(world.victim, "SELECT count(*) FROM inbox") == [(3,)]
    assert rows(world.victim, "SELECT count(*) FROM receipts WHERE direction = 'sent'") == [(1,)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 24 MiB tmpfs (needs mount rights, e.g. root in a container); skipped elsewhere."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        [shutil.which("mount") or "/bin/mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here: " + done.stderr.decode()[:200])
    yield mnt
    subprocess.run([shutil.which("umount") or "/bin/umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


@pytest.mark.threat("C02")
def test_c02_disk_full_during_sync_and_submit(small_disk: Path) -> None:
    from node import clock
    from tests.adversarial.hostile import make_world

    world = make_world(small_disk, clock.now().replace(microsecond=0))
    try:
        forge = Forge(world)
        envelopes = forge.submit(valid(), valid())
        filler = _fill(small_disk)
        before = snapshot(world.victim.data_dir)
        p = pull(world, envelopes)
        assert isinstance(p.error, StoreError), repr(p.error)
        assert p.code == "store.disk_full"
        with pytest.raises(StoreError) as err:
            outbox.submit(world.victim, [valid(), valid()], world.now)
        assert err.value.code == "store.disk_full" and "Free disk space" in err.value.next_step
        assert cursor(world.victim, HOSTILE) == 0
        assert rows(world.victim, "SELECT count(*) FROM reports") == [(0,)]
        filler.unlink()  # space returns
        after = snapshot(world.victim.data_dir)
        assert after["node.db"] == before["node.db"]  # no partial state
        p = pull(world, envelopes)
        assert p.error is None and p.applied == 2
        outbox.submit(world.victim, [valid()], world.now)
        integrity_ok(world.victim)
    finally:
        world.close()


@pytest.mark.threat("C03")
def test_c03_clock_stepped_backwards_and_forwards(world: World) -> None:
    forge = Forge(world)
    e1, e2, e3 = forge.submit(valid(), valid(), valid())
    assert pull(world, [e1]).applied == 1
    back = world.now - timedelta(minutes=30)  # still inside the agreement
    p = pull(world, [e2], now=back)
    assert p.error is None and p.applied == 1  # ordering is by seq, not by clock
    [(_, at1), (_, at2)] = rows(world.victim, "SELECT seq, received_at FROM inbox ORDER BY seq")
    assert at2 < at1  # the stored times follow the clock, the order does not
    world.victim.checkpoint(back)  # signing does not depend on time moving forward
    before = snapshot(world.victim.data_dir)
    far = world.now + timedelta(days=400)  # past the agreement's end (and its skew)
    p = pull(world, [e3], now=far)
    assert p.code == "peer.no_agreement"
    assert snapshot(world.victim.data_dir) == before and cursor(world.victim, HOSTILE) == 2


# ---- I03 a swapped key in the trust store ---------------------------------------------------------


def _rogue_chain(world: World) -> Any:
    rogue = make_node(world.tmp / "rogue", HOSTILE, world.now)
    chain = rogue.own_chain()
    rogue.close()
    return chain


@pytest.mark.threat("I03")
def test_i03_swapped_peer_card_is_refused(world: World) -> None:
    [e1] = Forge(world).submit()
    chain = _rogue_chain(world)
    with world.victim.store.transaction():
        world.victim.store.conn.execute(
            "UPDATE peers SET chain = ? WHERE node = ?", (chain.to_bytes(), HOSTILE)
        )
    before = snapshot(world.victim.data_dir)
    p = pull(world, [e1])
    assert p.code == "keyring.tampered"
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.threat("I03")
def test_i03_swapped_peer_card_and_fingerprint_is_refused(world: World) -> None:
    [e1] = Forge(world).submit()
    chain = _rogue_chain(world)
    with world.victim.store.transaction():
        world.victim.store.conn.execute(
            "UPDATE peers SET chain = ?, fingerprint = ? WHERE node = ?",
            (chain.to_bytes(), chain.latest.fingerprint, HOSTILE),
        )
    with pytest.raises(AccordError):
        world.victim.trust_store().trusted_chain(HOSTILE, world.now)
    assert e1
