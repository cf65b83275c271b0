"""The fuzz harnesses of ``make fuzz`` under hypothesis: random and mutated inputs to every
parser and verifier may only raise AccordError. Bounded here; atheris goes deeper."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.errors import AccordError
from fuzz.harnesses import TARGETS
from fuzz.seeds import seeds

SEEDS = seeds()


def _run(name: str, data: bytes) -> None:
    with contextlib.suppress(AccordError):
        TARGETS[name](data)


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    corpus = SEEDS.get(name)
    if not corpus or draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[i]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_accepts_its_valid_seeds_or_refuses_cleanly(name: str) -> None:
    for data in SEEDS.get(name, [b""]):
        _run(name, data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_never_raises_anything_but_accord_errors(name: str) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=mutated(name))
    def check(data: bytes) -> None:
        _run(name, data)

    check()
