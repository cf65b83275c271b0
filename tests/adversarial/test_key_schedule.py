"""docs/THREATS.md C04: keys and agreements reach the end of their validity.

Two real nodes serve each other (``NodeServer``, real mutual TLS, real GetCard and Pull)
under one injected clock that the test steps one simulated day at a time, for 120 days.
Nobody rotates anything: each server's key schedule (node/services/keywatch.py) starts new
encryption epochs on its own, and the partner learns each new card over GetCard.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchange.events import parse_event_unverified as parse_event
from keys.keyring import EPOCH, RENEW_BEFORE, RETENTION
from node.rpc.server import NodeServer, ServeOptions
from node.rpc.sync import Puller
from node.services import outbox
from node.services.keywatch import AGREEMENT, expiry_warnings
from node.services.policy import apply_policy
from tests.adversarial.hostile import HOSTILE, VICTIM, agree, make_world, valid
from tests.conftest import POLICY

DAYS = 120


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


async def _next_check(server: NodeServer) -> None:
    """Wait until the server's key schedule has run a whole check after the clock moved."""
    assert server.keywatch is not None
    target = server.keywatch.checks + 2
    for _ in range(500):
        if server.keywatch.checks >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the key schedule did not run")


@pytest.mark.threat("C04")
def test_c04_120_days_of_exchange_with_no_manual_key_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime.now().astimezone().replace(microsecond=0)
    world = make_world(tmp_path, start)
    pk, cn = world.hostile, world.victim
    agree(cn, pk, start)  # both directions send
    apply_policy(cn, POLICY.read_text("utf-8").replace("cn-mps", HOSTILE), start)
    clock = Clock(start + timedelta(hours=1))
    first_kids = {n.config.node: n.keyring().encryption[0].kid for n in (pk, cn)}

    # The servers' own Pullers sync; their follow loop is replaced by one non-following
    # pull per simulated day (a followed stream re-opens every 5 real minutes, which a
    # stepped clock never reaches). Each pull starts with GetCard, as the loop's does.
    async def idle(self: Puller, refresh_seconds: float = 5.0) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Puller, "run", idle)

    async def scenario() -> dict[str, Any]:
        options = ServeOptions(cosign=False, key_check_seconds=0.01)
        servers = {n.config.node: NodeServer(n, options, now=clock) for n in (pk, cn)}
        for server in servers.values():
            await server.start()
        sent = {HOSTILE: 0, VICTIM: 0}
        try:
            for _day in range(DAYS):
                clock.at += timedelta(days=1)
                for server in servers.values():
                    await _next_check(server)
                for sender, recipient in ((pk, cn), (cn, pk)):
                    [result] = outbox.submit(sender, [valid()], clock())
                    [release] = [r for r in result.releases if r.peer == recipient.config.node]
                    assert release.envelope_id is not None, (clock(), release.decision)
                    sent[sender.config.node] += 1
                for node in (pk, cn):
                    puller = servers[node.config.node].puller
                    assert puller is not None
                    peer = HOSTILE if node is cn else VICTIM
                    await puller.pull_once(peer, follow=False)
                    state = puller.state[peer]
                    assert state.rejected == 0 and state.last_error_code == "", (clock(), state)
                for node in (pk, cn):  # nothing to warn about on a healthy pair
                    warnings = expiry_warnings(node, clock())
                    assert [w for w in warnings if w.subject != AGREEMENT] == [], warnings
            return {
                name: (s.puller.state[HOSTILE if name == VICTIM else VICTIM].applied)
                for name, s in servers.items()
                if s.puller is not None
            }
        finally:
            for server in servers.values():
                await server.stop(0)

    applied = asyncio.run(scenario())
    assert applied == {HOSTILE: DAYS, VICTIM: DAYS}  # every report arrived, none refused

    end = clock()
    for node, other in ((pk, cn), (cn, pk)):
        card = node.own_chain().latest
        # One new epoch every EPOCH - RENEW_BEFORE days, each a card version partners took.
        assert card.version >= 1 + DAYS // int((EPOCH - RENEW_BEFORE).days)
        assert other.trust_store().trusted_chain(node.config.node, end).latest == card
        # Retired keys are destroyed after the retention; the card stays within its limit.
        ring = node.keyring()
        assert ring.decrypter(first_kids[node.config.node]) is None
        assert 2 <= len(ring.encryption) <= 8
        for key in ring.encryption:
            assert datetime.fromisoformat(key.not_after) + RETENTION > end
        events = [parse_event(data) for _i, data in node.log.leaves(0, node.log.size())]
        triggers = [e.attrs.get("trigger") for e in events if e.kind == "key.rotated"]
        assert triggers and set(triggers) == {"schedule"}  # no operator step
    world.close()
