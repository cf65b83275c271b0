"""Writing exports: partner data and signed documents leave the node only as private files.

Every file a command writes for the officer or the auditor (``inbox export``, ``card
export``, ``agreement propose``, ``report new --out``, ``audit export``) goes through
:func:`private_file`: mode 0600 whatever the umask, never through a symbolic link (a
dangling link planted where the export goes would otherwise receive the partner's data
wherever it points), and never over an existing file unless the officer passed ``--force``
(docs/THREATS.md B07). The content is written to a fresh file beside the target and put in
place only when complete, so a reader never sees half an export.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from exchange.errors import InputError


def _exists(path: Path) -> InputError:
    return InputError(
        f"{path} exists", next_step="Choose another --out, or pass --force to replace it."
    )


@contextlib.contextmanager
def private_file(path: Path, *, force: bool = False) -> Iterator[IO[bytes]]:
    """Yield a binary file whose content becomes ``path`` (0600) when the block ends.

    Without ``force`` the name must be free, not even a dangling link: the complete file is
    hard-linked into place, which fails if anything is there (atomic, unlike a check first).
    With ``force`` it is renamed over the name, so a link there is replaced, never
    followed. If the block raises, nothing is left behind."""
    if path.is_dir():
        raise InputError(f"{path} is a directory", next_step="Give a file name to --out.")
    if not force and (path.exists() or path.is_symlink()):
        raise _exists(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write beside {path}: {e.strerror}") from e
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError as e:
                raise _exists(path) from e
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_export(path: Path, data: bytes, *, force: bool = False) -> None:
    """Create ``path`` (0600) holding ``data``; with ``force``, replace what is there."""
    with private_file(path, force=force) as f:
        f.write(data)
