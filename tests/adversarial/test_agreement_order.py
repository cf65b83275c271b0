"""Which agreement is in force: the one both partners signed last, from its start on.

The "current" agreement used to be the valid one with the latest ``not_after``, so a newer,
stricter agreement both sides signed never took effect while an older, longer one was still
valid. Now the newest signed agreement supersedes the older ones, and when it ends, none
of them comes back (ADR 0004 addendum)."""

from __future__ import annotations

from datetime import timedelta

from node.services import outbox
from node.services.agreements import ceiling, current_agreement, propose_agreement, sign_and_store
from node.services.schemas import registry
from tests.adversarial.hostile import HOSTILE, VICTIM, World, valid
from tests.conftest import TERMS


def _sign_both(world: World, terms: str) -> str:
    offer = propose_agreement(world.hostile, VICTIM, terms, world.now)
    countersigned, verified = sign_and_store(world.victim, offer.to_bytes(), world.now)
    assert verified is not None
    _, completed = sign_and_store(world.hostile, countersigned.to_bytes(), world.now)
    assert completed is not None and completed.digest == verified.digest
    return verified.digest


def _stricter_and_shorter(world: World) -> str:
    """Signed after the example agreement: public fields only, for 30 days (not 365)."""
    terms = (
        TERMS.read_text("utf-8")
        .replace("pk-moi:cn-mps:2026", "pk-moi:cn-mps:stricter")
        .replace("valid_days = 365", "valid_days = 30")
        .replace('labels = ["public", "operational", "tactical"]', 'labels = ["public"]')
    )
    return _sign_both(world, terms)


def test_a_newer_stricter_agreement_supersedes_an_older_longer_one(world: World) -> None:
    older = current_agreement(world.victim, HOSTILE, world.now)
    assert older is not None
    stricter = _stricter_and_shorter(world)
    for node in (world.victim, world.hostile):  # both sides agree on what is in force
        now_current = current_agreement(
            node, HOSTILE if node is world.victim else VICTIM, world.now
        )
        assert now_current is not None and now_current.digest == stricter
    limit = ceiling(
        world.victim, current_agreement(world.victim, HOSTILE, world.now), HOSTILE, VICTIM,
        "threat-alert@1",
    )  # fmt: skip
    assert limit is not None and limit.agreement_digest == stricter
    public = {f for f, label in registry().labels("threat-alert@1").items() if label == "public"}
    assert limit.fields == public  # the stricter ceiling, not the older one's


def test_when_the_newer_agreement_ends_the_older_one_does_not_come_back(world: World) -> None:
    _stricter_and_shorter(world)
    later = world.now + timedelta(days=31)  # the stricter one ended; the older runs to 365
    assert current_agreement(world.victim, HOSTILE, later) is None
    assert current_agreement(world.hostile, VICTIM, later) is None
    [done] = outbox.submit(world.hostile, [valid()], later)
    assert all(r.envelope_id is None for r in done.releases)  # nothing flows without one
