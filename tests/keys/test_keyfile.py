"""The key file: encrypted at rest, 0600, clear errors that change nothing."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchange.errors import InputError, KeyringError
from keys import keyfile
from keys.keyring import Keyring, generate_keyring, load_keyring, save_keyring
from tests.conftest import PRODUCTION_KDF

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _never_unencrypted() -> None:
    raise AssertionError("file was expected to be encrypted")


@pytest.fixture(scope="module")
def ring():  # type: ignore[no-untyped-def]
    return generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)


def test_round_trip_encrypted(tmp_path: Path, ring) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys" / "secrets.key"
    save_keyring(path, ring, "a long passphrase", replace=False)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    data = path.read_bytes()
    assert ring.identity_seed.hex() not in data.decode()
    loaded = load_keyring(path, lambda: "a long passphrase", on_unencrypted=_never_unencrypted)
    assert loaded.identity_signer().public_key == ring.identity_signer().public_key
    assert loaded.tls.key_pem == ring.tls.key_pem


def test_wrong_passphrase(tmp_path: Path, ring) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secrets.key"
    save_keyring(path, ring, "a long passphrase", replace=False)
    before = path.read_bytes()
    with pytest.raises(KeyringError, match="wrong passphrase") as err:
        load_keyring(path, lambda: "not the passphrase", on_unencrypted=_never_unencrypted)
    assert err.value.code == "keyring.wrong_passphrase"
    assert path.read_bytes() == before


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="missing") as err:
        load_keyring(tmp_path / "secrets.key", lambda: "x", on_unencrypted=_never_unencrypted)
    assert "backup" in err.value.next_step


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o666, 0o660])
def test_loose_permissions(tmp_path: Path, ring, mode: int) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secrets.key"
    save_keyring(path, ring, "a long passphrase", replace=False)
    os.chmod(path, mode)
    with pytest.raises(KeyringError, match="loose permissions"):
        load_keyring(path, lambda: "a long passphrase", on_unencrypted=_never_unencrypted)
    assert path.stat().st_mode & 0o777 == mode


def test_unencrypted_needs_to_be_acknowledged(tmp_path: Path, ring) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secrets.key"
    save_keyring(path, ring, None, replace=False)
    warned: list[bool] = []
    loaded = load_keyring(
        path,
        lambda: pytest.fail("no passphrase needed"),
        on_unencrypted=lambda: warned.append(True),
    )
    assert warned == [True]
    assert loaded.storage_key == ring.storage_key


def test_short_passphrase_refused_before_writing(tmp_path: Path, ring) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secrets.key"
    with pytest.raises(InputError, match="shorter"):
        save_keyring(path, ring, "short", replace=False)
    assert not path.exists()


def test_never_overwrites(tmp_path: Path, ring) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secrets.key"
    save_keyring(path, ring, "a long passphrase", replace=False)
    before = path.read_bytes()
    with pytest.raises(KeyringError, match="already exists"):
        save_keyring(path, ring, "a long passphrase", replace=False)
    assert path.read_bytes() == before


def test_corrupt_key_file(tmp_path: Path, ring) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secrets.key"
    save_keyring(path, ring, "a long passphrase", replace=False)
    data = bytearray(path.read_bytes())
    i = data.index(b'"box": "') + 20
    data[i] = ord("A") if data[i] != ord("A") else ord("B")
    path.write_bytes(bytes(data))
    with pytest.raises(KeyringError):
        load_keyring(path, lambda: "a long passphrase", on_unencrypted=_never_unencrypted)


def test_encryption_epochs_rotate_and_retire(ring) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from exchange.card import SUITE_X25519

    later = ring.with_new_encryption_epoch(NOW + timedelta(days=30), SUITE_X25519)
    assert len(later.encryption) == 2
    assert later.encryption[-1].suite == SUITE_X25519
    # Past not_after + retention the old private key is destroyed.
    much_later = later.with_new_encryption_epoch(NOW + timedelta(days=40), SUITE_X25519)
    kids = [e.kid for e in much_later.encryption]
    assert ring.encryption[0].kid not in kids
    assert len(kids) == 2


def test_an_operators_key_file_gets_the_production_argon2id_cost(
    tmp_path: Path, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test process seals key files at libsodium's minimum cost (tests/conftest.py); what
    # an operator's `accord init` writes is the cost keys/keyfile.py ships, and it must stay
    # at least Argon2id with 3 passes over 64 MiB (libsodium's "moderate" memory).
    monkeypatch.setattr(keyfile, "OPSLIMIT", PRODUCTION_KDF[0])
    monkeypatch.setattr(keyfile, "MEMLIMIT", PRODUCTION_KDF[1])
    path = tmp_path / "secrets.key"
    save_keyring(path, ring, "a long passphrase", replace=False)
    kdf = json.loads(path.read_bytes())["kdf"]
    assert kdf["alg"] == "argon2id"
    assert kdf["opslimit"] >= 3
    assert kdf["memlimit"] >= 64 * 1024 * 1024
    loaded = load_keyring(path, lambda: "a long passphrase", on_unencrypted=_never_unencrypted)
    assert loaded.identity_signer().public_key == ring.identity_signer().public_key
