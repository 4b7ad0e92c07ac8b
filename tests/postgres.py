"""A throwaway PostgreSQL cluster for the tests, started from the machine's own binaries.

``initdb`` into a fresh temp folder, ``pg_ctl start`` listening on a unix socket in that folder
only (no TCP port, so concurrent test sessions never collide), trust authentication for the one
local user. Durability settings are off (``fsync``): the tests kill the server, never PostgreSQL
(bench/bench_server.py keeps them on).
Debian keeps the binaries in /usr/lib/postgresql/<major>/bin, off PATH; ``make postgresql``
installs Debian's package when none are found. PostgreSQL refuses to run as root, so under root
the cluster runs as the ``postgres`` user (made by that package), else ``nobody``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

USER = "fedurl"
PORT = 5432  # only names the socket file: listen_addresses is empty
START_TIMEOUT_S = 60


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else Debian's newest major."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return debian[-1].parent if debian else None


def _run_as() -> str | None:
    """The unprivileged account to run PostgreSQL as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' account to run PostgreSQL as")


class Cluster:
    """One PostgreSQL server in a temp folder; ``database()`` hands out fresh, empty databases."""

    def __init__(self, bindir: Path, durable: bool = False):
        """:param durable: keep fsync on (benchmarks); the tests turn it off."""
        self.bindir, self.durable = bindir, durable
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="fedurl-pg-"))  # short: a socket path is ≤ 107 bytes
        self.data = self.root / "data"
        self._names = itertools.count(1)
        self._admin: sa.Engine | None = None

    def _pg(self, *args: str) -> None:
        """Run a PostgreSQL binary as the cluster's user; raise with its output if it fails."""
        result = subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self.user, capture_output=True,
                                text=True, timeout=START_TIMEOUT_S, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def start(self) -> Cluster:
        """initdb and start the server; wait until it accepts connections."""
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._pg("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--encoding=UTF8",
                 "--locale=C", "--no-sync")
        options = f"-c listen_addresses='' -k {self.root} -p {PORT} -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                 "-t", str(START_TIMEOUT_S), "-o", options, "start")
        self._admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT",
                                       poolclass=sa.NullPool)
        return self

    def url(self, database: str) -> str:
        """SQLAlchemy URL of a database of this cluster (psycopg 3 over the unix socket)."""
        return f"postgresql+psycopg://{USER}@/{database}?host={self.root}&port={PORT}"

    def database(self) -> tuple[str, str]:
        """A new empty database: (name, URL)."""
        assert self._admin is not None, "start() the cluster first"
        name = f"test_{next(self._names)}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        return name, self.url(name)

    def drop(self, name: str) -> None:
        """Drop a database, ending the connections still open to it (pools of apps a test left behind)."""
        assert self._admin is not None
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def drop_connections(self, name: str) -> int:
        """End every connection to a database, as a server restart would; how many there were."""
        assert self._admin is not None
        with self._admin.connect() as conn:
            return conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                        "WHERE datname = :name"), {"name": name}).scalar_one()

    def end_lock_holders(self, name: str) -> list[int]:
        """End the connections to a database that hold an advisory lock exclusively (a worker's
        round lock), as a network cut would, and wait until they are gone (so is the lock): their pids.
        """
        assert self._admin is not None
        with self._admin.connect() as conn:
            holders = sa.text("SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                              "WHERE d.datname = :name AND l.locktype = 'advisory' "
                              "AND l.mode = 'ExclusiveLock' AND l.granted")
            pids = list(conn.execute(holders, {"name": name}).scalars())
            alive = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)")
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
                         {"pids": pids})
            deadline = time.monotonic() + START_TIMEOUT_S
            while conn.execute(alive, {"pids": pids}).scalar_one() and time.monotonic() < deadline:
                time.sleep(0.01)
        return pids

    def allow_connections(self, name: str, allowed: bool) -> None:
        """Let a database take new connections or refuse them, as one starting up does."""
        assert self._admin is not None
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop the server at once and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
