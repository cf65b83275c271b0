"""The row authenticator (ADR 0012): purpose-separated keys, bound fields, no key exposed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exchange.errors import InputError
from keys.keyring import generate_keyring
from keys.rowauth import TAG_LEN, LeafAuthenticator, RowAuthenticator

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LEAF = b"\x11" * 32


def test_leaf_tags_bind_index_hash_and_keyring() -> None:
    ring = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    other = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    auth = ring.leaf_authenticator()
    tag = auth.tag(7, LEAF)
    assert len(tag) == TAG_LEN and auth.tag(7, LEAF) == tag
    assert auth.verify(7, LEAF, tag)
    assert not auth.verify(8, LEAF, tag)  # moved to another index
    assert not auth.verify(7, b"\x12" * 32, tag)  # another event
    assert not auth.verify(7, LEAF, None) and not auth.verify(7, LEAF, tag[:-1])
    assert not other.leaf_authenticator().verify(7, LEAF, tag)  # another node's keyring
    # Rotations keep the storage key, so tags survive them.
    assert ring.with_new_identity().leaf_authenticator().verify(7, LEAF, tag)


def test_purposes_are_separated_and_fields_unambiguous() -> None:
    ring = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    inbox, peers = ring.row_authenticator("inbox.row"), ring.row_authenticator("peers.row")
    tag = inbox.tag(b"cn-mps", b"7")
    assert inbox.verify(tag, b"cn-mps", b"7")
    assert not peers.verify(tag, b"cn-mps", b"7")
    assert not inbox.verify(tag, b"cn-mps7")
    assert not inbox.verify(tag, b"cn-mp", b"s7")
    for bad in ("", "Upper", "x" * 65, "a b", "../x"):
        with pytest.raises(InputError):
            ring.row_authenticator(bad)
    with pytest.raises(InputError):
        LeafAuthenticator(inbox)


def test_the_key_is_not_exposed() -> None:
    ring = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    auth = RowAuthenticator(ring.storage_key, "log.leaf")
    assert not hasattr(auth, "__dict__")
    assert ring.storage_key.hex() not in repr(auth) + repr(ring.leaf_authenticator())
    assert [a for a in dir(auth) if not a.startswith("__")] == [
        "_key",
        "_message",
        "purpose",
        "tag",
        "verify",
    ]
