"""Fixtures of the adversarial suite: a victim node and the real partner that attacks it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest

from exchange.envelope import Envelope
from exchange.receiver import Opened, Outcome, Receiver, Stop, open_ahead
from node import clock
from node.services import opening
from tests.adversarial.hostile import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, clock.now().replace(microsecond=0))
    yield w
    w.close()


# The receive-rule attacks run twice: as the node receives a small batch (every envelope
# opened by the receiver itself), and with every envelope opened ahead as a worker process
# would (node/services/opening.py, ADR 0027): the context, the decrypter and the result
# round-trip through multiprocessing's pickler, and the outcome must equal the one the
# receiver computes itself on a copy of its state.
AHEAD_MODULES = frozenset(
    {
        "tests.adversarial.test_receive_rules",
        "tests.adversarial.test_partner",
        "tests.adversarial.test_key_schedule",
        "tests.adversarial.test_authenticated_state",
        "tests.adversarial.test_revoked_partner_items",
    }
)


def _same(a: Outcome, b: Outcome) -> bool:
    if isinstance(a, Stop) and isinstance(b, Stop):
        return (type(a.error), a.error.code, a.error.message) == (
            type(b.error),
            b.error.code,
            b.error.message,
        )
    return a == b


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ in AHEAD_MODULES:
        metafunc.fixturenames.append("receive_path")
        # The 120 simulated days (C04) opened ahead take as long as the run itself: test-long.
        ahead = (
            pytest.param("ahead", marks=pytest.mark.slow)
            if metafunc.function.__name__.startswith("test_c04_")
            else "ahead"
        )
        metafunc.parametrize("receive_path", ["here", ahead], indirect=True)


@pytest.fixture
def receive_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if getattr(request, "param", "here") == "here":
        return "here"
    original = Receiver.receive

    def receive(self: Receiver, env: Envelope, ahead: Opened | None = None) -> Outcome:
        if ahead is not None:
            return original(self, env, ahead)
        twin = copy.copy(self)
        twin._versions, twin._acks = dict(self._versions), set(self._acks)
        expected = original(twin, env)
        assert opening.PARALLEL_FROM  # imported: the pool's reducers are registered
        context = ForkingPickler.loads(ForkingPickler.dumps(self.context))
        registry = self.registry
        opened = open_ahead(context, env, decrypter_for=self.decrypter_for, registry=registry)
        opened = ForkingPickler.loads(ForkingPickler.dumps(opened))
        got = original(self, env, opened)
        assert _same(got, expected), (got, expected)
        assert (self.last_applied, self.key_floor) == (twin.last_applied, twin.key_floor)
        return got

    monkeypatch.setattr(Receiver, "receive", receive)
    return "ahead"
