"""Fixtures of the adversarial suite: a victim node and the real partner that attacks it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node import clock
from tests.adversarial.hostile import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, clock.now().replace(microsecond=0))
    yield w
    w.close()
