"""A throwaway PostgreSQL cluster started from the machine's server binaries: the tests'
``pg_cluster`` fixture (tests/postgres.py) and ``make bench`` (bench/run.py) both use it.

``PgCluster.create`` runs ``initdb`` into a fresh directory under /tmp and ``pg_ctl start`` on
a Unix socket in that directory (no TCP listener), with fsync and synchronous_commit on;
``destroy()`` stops the server however it is and removes it all (docs/adr/0024).

``initdb`` refuses to run as root, and CI runs as root: there the cluster runs as the
unprivileged ``postgres`` system user that Debian's ``postgresql`` package creates
(``runuser -u postgres --``), with the data and socket directories owned by it; otherwise it
runs as the invoking user. The socket directory is ``/tmp/apg-XXXXXXXX``: a Unix socket's
path is limited to about 100 bytes, and pytest's own temporary paths can be longer.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

import psycopg
from psycopg import sql

MIN_MAJOR = 15  # issue 16: PostgreSQL 15 or newer
SERVER_ROOTS = (Path("/usr/lib/postgresql"),)  # Debian/Ubuntu: /usr/lib/postgresql/<major>/bin
SERVER_USER = "postgres"  # the system user Debian's package creates; used only as root
SUPERUSER = "postgres"  # the cluster's bootstrap superuser (trust on the socket)
ROLE = "accord"  # the role and database the tests connect as
PORT = 5432  # only names the socket file: the cluster listens on no TCP port
MISSING = "PostgreSQL server binaries not found: install Debian's postgresql package"
# The server's command-line settings (they override postgresql.conf and ALTER SYSTEM): no TCP
# listener, and the durability node/store/pg.py relies on, stated rather than left to defaults.
SETTINGS = {
    "listen_addresses": "''",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
START_TIMEOUT = 60  # seconds pg_ctl waits for the server (crash recovery included)

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


class ServerNotFound(Exception):
    """No ``initdb``/``pg_ctl`` of PostgreSQL MIN_MAJOR or newer on this machine."""


def _major(initdb: Path) -> int | None:
    """The major version ``initdb --version`` reports, or None when it does not run."""
    try:
        out = subprocess.run(
            [str(initdb), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def find_server_bin(path: str | None = None, roots: tuple[Path, ...] = SERVER_ROOTS) -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` of PostgreSQL MIN_MAJOR or newer:
    first from ``path`` (default $PATH), then the highest ``<root>/<major>/bin``."""
    initdb = shutil.which("initdb", path=path if path is not None else os.environ.get("PATH"))
    if initdb:
        bindir = Path(initdb).resolve().parent
        major = _major(bindir / "initdb")
        if major is not None and major >= MIN_MAJOR and (bindir / "pg_ctl").is_file():
            return bindir
    found: list[tuple[int, Path]] = []
    for root in roots:
        if not root.is_dir():
            continue
        for child in root.iterdir():
            bindir = child / "bin"
            if (
                child.name.isdigit()
                and int(child.name) >= MIN_MAJOR
                and (bindir / "initdb").is_file()
                and (bindir / "pg_ctl").is_file()
            ):
                found.append((int(child.name), bindir))
    for _, bindir in sorted(found, reverse=True):
        major = _major(bindir / "initdb")
        if major is not None and major >= MIN_MAJOR:
            return bindir
    return None


class PgCluster:
    """One throwaway cluster: its own data directory and socket directory under /tmp."""

    def __init__(self, bindir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.bindir = bindir
        self.settings = {**SETTINGS, **(settings or {})}
        self.as_server_user = os.geteuid() == 0
        # Short on purpose: "/tmp/apg-XXXXXXXX/.s.PGSQL.5432" is far below the ~100-byte limit.
        self.base = Path(tempfile.mkdtemp(prefix="apg-", dir="/tmp"))
        self.socket_dir = self.base
        self.data_dir = self.base / "data"
        self.log_file = self.base / "server.log"
        self.dsn = self.dsn_for(ROLE)

    # ---- lifecycle ------------------------------------------------------------------------

    @classmethod
    def create(cls, bindir: Path, settings: Mapping[str, str] | None = None) -> PgCluster:
        """initdb, start, and create the ``accord`` role and database; on any failure nothing
        is left behind (no running server, no directory). ``settings`` override SETTINGS."""
        cluster = cls(bindir, settings)
        try:
            cluster._initdb()
            cluster.start()
            with cluster.connect(dbname="postgres", user=SUPERUSER) as conn:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
            cluster.createdb(ROLE)
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as ``postgres`` when we are root (initdb refuses root)."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_server_user:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        result = subprocess.run(
            cmd, cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                f"{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log_file.read_text("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def _initdb(self) -> None:
        if self.as_server_user:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, and there is no '{SERVER_USER}' user to run the "
                    f"server as: install Debian's postgresql package"
                ) from None
            os.chown(self.base, user.pw_uid, user.pw_gid)
        # --no-sync: only the catalog initdb writes, which no test crashes the machine under;
        # the running server itself has fsync=on (see start()).
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        """Start the server on the same data directory (after a kill(): crash recovery)."""
        options = " ".join(
            [f"-k {self.socket_dir} -p {PORT}", *(f"-c {k}={v}" for k, v in self.settings.items())]
        )
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_file),
            "--wait",
            "--timeout",
            str(START_TIMEOUT),
            "-o",
            options,
            "start",
            timeout=START_TIMEOUT + 30,
        )

    def stop(self) -> None:
        """A clean shutdown (``pg_ctl stop -m fast``)."""
        self._run("pg_ctl", "--pgdata", str(self.data_dir), "-m", "fast", "--wait", "stop")

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, from ``postmaster.pid``, or None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text("utf-8").split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def kill(self) -> None:
        """``kill -9`` of the database server: SIGKILL the postmaster and every process it
        started, as a crash would, and wait until they are gone. start() then recovers."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        # Until reaped, not only dead: a new postmaster refuses to start while the old pid
        # still answers kill(pid, 0), which a zombie does.
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{p}").exists() for p in (pid, *children)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL processes {pid} {children} outlived SIGKILL")
            time.sleep(0.05)

    def destroy(self) -> None:
        """Stop the server however it is (immediate shutdown, else SIGKILL) and remove its
        directory."""
        if self.running:
            try:
                self._run("pg_ctl", "--pgdata", str(self.data_dir), "-m", "immediate", "stop")
            except (RuntimeError, subprocess.SubprocessError):
                self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- connecting -----------------------------------------------------------------------

    def dsn_for(self, dbname: str, user: str = ROLE) -> str:
        """A libpq keyword DSN for ``dbname`` over the cluster's Unix socket."""
        return f"host={self.socket_dir} port={PORT} user={user} dbname={dbname}"

    def connect(
        self, dbname: str = ROLE, user: str = ROLE
    ) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn_for(dbname, user), autocommit=True, connect_timeout=10)

    def createdb(self, name: str) -> str:
        """Create database ``name`` owned by the test role; returns its DSN."""
        with self.connect(dbname="postgres", user=SUPERUSER) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )
        return self.dsn_for(name)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text("utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (the postmaster's backends and helpers)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text("utf-8")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out
