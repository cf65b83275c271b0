"""After a partner is revoked, what it sent before stays readable, checked under the card
chain the node trusted when each item arrived (docs/THREATS.md P06: keys of a revoked
partner sign nothing new, but they did sign what was received earlier)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from exchange.errors import AccordError
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_service import ExchangeOfficerService
from tests.adversarial.hostile import HOSTILE, Forge, World, pull, rows


def _show(world: World, envelope_id: str, at_offset: timedelta) -> dict[str, object]:
    service = ExchangeOfficerService(world.victim, None, now=lambda: world.now + at_offset)
    answer = asyncio.run(
        service.GetInbox(officer_pb2.GetInboxRequest(envelope_id=envelope_id), None)
    )
    body: dict[str, object] = json.loads(answer.report)
    return body


@pytest.mark.threat("P06")
def test_p06_items_received_before_a_revocation_stay_readable(world: World) -> None:
    [env] = Forge(world).submit()
    assert pull(world, [env]).applied == 1
    [(envelope_id,)] = rows(world.victim, "SELECT envelope_id FROM inbox")
    before = _show(world, envelope_id, timedelta(0))
    assert before["fields"], "the control: the item shows its verified fields"
    later = timedelta(hours=2)
    world.victim.revoke_peer(HOSTILE, world.now + timedelta(hours=1), world.now + later)
    after = _show(world, envelope_id, later)
    assert after["fields"] == before["fields"]


@pytest.mark.threat("P06")
def test_p06_an_item_that_no_key_of_its_time_verifies_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The display check is real: an item whose presentation no longer verifies under the
    keys the partner held when it arrived is refused, not shown with no fields."""
    [env] = Forge(world).submit()
    assert pull(world, [env]).applied == 1
    [(envelope_id,)] = rows(world.victim, "SELECT envelope_id FROM inbox")
    service = ExchangeOfficerService(world.victim, None, now=lambda: world.now)
    from node.rpc import officer_service

    def never(*_a: object, **_k: object) -> object:
        raise AccordError("does not verify", code="peer.bad_signature")

    monkeypatch.setattr(officer_service, "verify_presentation", never)
    with pytest.raises(AccordError) as err:
        asyncio.run(service.GetInbox(officer_pb2.GetInboxRequest(envelope_id=envelope_id), None))
    assert err.value.code == "store.row_tampered"  # refused, never shown without its fields
