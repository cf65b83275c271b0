"""The node's private key file: every secret of one node, sealed under a passphrase.

One file (``keys/secrets.key``, mode 0600, directory 0700) holds the bundle so a node
runs Argon2id once at start. The format is JSON::

    {"type": "accord.keyfile/v1", "node": ID,
     "kdf": {"alg": "argon2id", "salt": B64, "opslimit": N, "memlimit": N} | null,
     "box": B64}              # XSalsa20-Poly1305 over the canonical JSON of the secrets

``kdf: null`` marks a deliberately unencrypted file (``--unencrypted-keys``), where
``box`` holds the plaintext bundle; loading one logs a warning (docs/THREATS.md B04).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from exchange.canonical import b64, b64_decode, canonical_json
from exchange.errors import InputError, KeyringError

KEYFILE_TYPE = "accord.keyfile/v1"
OPSLIMIT = 3
MEMLIMIT = 64 * 1024 * 1024
MAX_KEYFILE_BYTES = 1 << 20
PASSPHRASE_ENV = "ACCORD_PASSPHRASE"  # noqa: S105  (the variable's name, not a secret)
MIN_PASSPHRASE_LEN = 8


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    key: bytes = nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE,
        passphrase.encode("utf-8"),
        salt,
        opslimit=opslimit,
        memlimit=memlimit,
    )
    return key


def seal_keyfile(node: str, secrets: dict[str, Any], passphrase: str | None) -> bytes:
    """The bytes of a key file holding ``secrets``; ``passphrase=None`` leaves it plain."""
    plaintext = canonical_json(secrets)
    if passphrase is None:
        doc: dict[str, Any] = {
            "type": KEYFILE_TYPE,
            "node": node,
            "kdf": None,
            "box": b64(plaintext),
        }
    else:
        if len(passphrase) < MIN_PASSPHRASE_LEN:
            raise InputError(
                f"passphrase is shorter than {MIN_PASSPHRASE_LEN} characters",
                next_step="Choose a longer passphrase (a few words work well).",
            )
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        box = nacl.secret.SecretBox(_derive(passphrase, salt, OPSLIMIT, MEMLIMIT))
        doc = {
            "type": KEYFILE_TYPE,
            "node": node,
            "kdf": {
                "alg": "argon2id",
                "salt": b64(salt),
                "opslimit": OPSLIMIT,
                "memlimit": MEMLIMIT,
            },
            "box": b64(bytes(box.encrypt(plaintext))),
        }
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def open_keyfile(
    path: Path, passphrase: Callable[[], str], *, unencrypted_ok: Callable[[], None]
) -> dict[str, Any]:
    """Read and decrypt a key file. ``passphrase`` is asked only when the file is encrypted;
    ``unencrypted_ok`` is called (to warn and log) when it is not."""
    check_private_file(path)
    data = path.read_bytes()
    if len(data) > MAX_KEYFILE_BYTES:
        raise KeyringError(f"key file {path} is larger than {MAX_KEYFILE_BYTES} bytes")
    try:
        doc = json.loads(data)
        if doc.get("type") != KEYFILE_TYPE:
            raise ValueError("type")
        box_bytes = b64_decode(doc["box"], what="key file box")
        kdf = doc["kdf"]
    except (ValueError, KeyError, TypeError, AttributeError, InputError) as e:
        raise KeyringError(
            f"key file {path} is not an Accord key file ({type(e).__name__})",
            next_step="Restore the key file from your backup.",
        ) from e
    if kdf is None:
        unencrypted_ok()
        plaintext = box_bytes
    else:
        try:
            salt = b64_decode(kdf["salt"], what="key file salt")
            key = _derive(passphrase(), salt, int(kdf["opslimit"]), int(kdf["memlimit"]))
        except (KeyError, TypeError, ValueError, InputError) as e:
            raise KeyringError(f"key file {path}: bad KDF parameters") from e
        except nacl.exceptions.RuntimeError as e:
            raise KeyringError(f"key file {path}: KDF parameters out of range") from e
        try:
            plaintext = nacl.secret.SecretBox(key).decrypt(box_bytes)
        except nacl.exceptions.CryptoError as e:
            raise KeyringError(
                f"wrong passphrase for {path}",
                code="keyring.wrong_passphrase",
                next_step=f"Type the passphrase again, or set {PASSPHRASE_ENV} correctly.",
            ) from e
    try:
        secrets: dict[str, Any] = json.loads(plaintext)
    except ValueError as e:
        raise KeyringError(f"key file {path}: secrets are not valid JSON") from e
    return secrets


def check_private_file(path: Path) -> None:
    """A private key file must exist, be a regular file, and be readable by its owner only."""
    try:
        st = path.lstat()
    except FileNotFoundError as e:
        raise KeyringError(
            f"key file {path} is missing",
            code="keyring.missing",
            next_step="Restore it from your backup; without it this node cannot sign or decrypt.",
        ) from e
    if not stat.S_ISREG(st.st_mode):
        raise KeyringError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyringError(
            f"key file {path} has loose permissions {stat.S_IMODE(st.st_mode):04o}",
            code="keyring.loose_permissions",
            next_step=f"Run 'chmod 600 {path}' and check who could have read it.",
        )


def write_private_file(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` with mode 0600, durably. ``replace`` swaps atomically via rename;
    otherwise the file must not exist yet."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = path.with_name(path.name + ".tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    if replace and target.exists():
        target.unlink()
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError as e:
        raise KeyringError(f"key file {path} already exists; refusing to overwrite it") from e
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(target, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
