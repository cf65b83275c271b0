"""Fixtures for the node tests: two real nodes that trust each other and share an agreement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.home import Node
from tests.conftest import PASSPHRASE, Result, agree, exchange_cards

Accord = Callable[..., Result]


@pytest.fixture
def pair(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> Iterator[tuple[Node, Node]]:
    pk, cn = make_node("pk-moi", 7441), make_node("cn-mps", 7442)
    exchange_cards(accord, pk, cn, tmp_path)
    agree(accord, pk, cn, tmp_path)
    a, b = Node.open(pk, lambda: PASSPHRASE), Node.open(cn, lambda: PASSPHRASE)
    yield a, b
    a.close()
    b.close()
