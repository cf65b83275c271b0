"""Writing exports: partner data and signed documents leave the node only as private files.

Every file a command writes for the officer (``inbox export``, ``card export``, ``agreement
propose``, ``report new --out``) goes through :func:`write_export`: mode 0600 whatever the
umask, never through a symbolic link (a dangling link planted where the export goes would
otherwise receive the partner's data wherever it points), and never over an existing file
unless the officer passed ``--force`` (docs/THREATS.md B07).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from exchange.errors import InputError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def write_export(path: Path, data: bytes, *, force: bool = False) -> None:
    """Create ``path`` (0600) holding ``data``; with ``force``, replace what is there.

    Without ``force`` the file must not exist, not even as a dangling link. With ``force``
    the new content is written to a fresh file beside it and renamed over the old name, so a
    link at ``path`` is replaced, never followed, and a reader never sees half a file."""
    if path.is_dir():
        raise InputError(f"{path} is a directory", next_step="Give a file name to --out.")
    if not force:
        try:
            fd = os.open(path, _CREATE, 0o600)
        except FileExistsError as e:
            raise InputError(
                f"{path} exists", next_step="Choose another --out, or pass --force to replace it."
            ) from e
        except OSError as e:
            raise InputError(f"cannot create {path}: {e.strerror}") from e
        _write_all(fd, data, path)
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as e:
        raise InputError(f"cannot write beside {path}: {e.strerror}") from e
    try:
        _write_all(fd, data, path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes, path: Path) -> None:
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from e
