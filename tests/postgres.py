"""The tests' throwaway PostgreSQL cluster: the ``pg_cluster`` fixture and the names the tests
import. The cluster itself (initdb, start on a Unix socket, stop, kill) is
tools/pgcluster.py, shared with ``make bench``; its names are re-exported here.

``make test`` needs no running service: the ``pg_cluster`` fixture (registered in
tests/conftest.py) creates one cluster per test session under /tmp and removes it all at the
end of the session, whether the tests passed or not (docs/adr/0024).

Where the server binaries are missing the fixture skips, naming the package to install; under
``CI=true`` it fails instead, so a machine without them can never pass CI by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tools.pgcluster import (
    MIN_MAJOR,
    MISSING,
    PORT,
    ROLE,
    SERVER_USER,
    SETTINGS,
    SUPERUSER,
    PgCluster,
    ServerNotFound,
    find_server_bin,
)

__all__ = [
    "MIN_MAJOR",
    "MISSING",
    "PORT",
    "ROLE",
    "SERVER_USER",
    "SETTINGS",
    "SUPERUSER",
    "PgCluster",
    "ServerNotFound",
    "find_server_bin",
    "pg_cluster",
    "require_server_bin",
]


def require_server_bin(
    lookup: Callable[[], Path | None] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The server binaries' directory; where there is none, skip the test, or fail it under
    ``CI=true`` (a skip there would let a machine without PostgreSQL pass CI)."""
    bindir = (lookup or find_server_bin)()
    if bindir is not None:
        return bindir
    environ = os.environ if env is None else env
    if environ.get("CI", "").lower() == "true":
        pytest.fail(f"{MISSING} (CI=true: a skip would be a failure)", pytrace=False)
    pytest.skip(MISSING)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the whole session (initdb takes seconds).

    Connect with ``pg_cluster.dsn`` (the ``accord`` database) or a database of your own from
    ``pg_cluster.createdb(name)``. A test that stops or kills the server starts it again
    before it ends, so the tests after it find it running."""
    cluster = PgCluster.create(require_server_bin())
    try:
        yield cluster
    finally:
        cluster.destroy()
