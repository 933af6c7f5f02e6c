"""A throwaway PostgreSQL server on a free loopback port, for the tests and the benchmarks.

Uses pytest-postgresql's `PostgreSQLExecutor` (pg_ctl under the hood). PostgreSQL refuses to run
as root, so as root the `pg_ctl` wrapper next to this file runs it as the `postgres` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import port_for
from pytest_postgresql.executors import PostgreSQLExecutor

PG_CTL = Path(__file__).with_name("pg_ctl")
PG_USER = "postgres"
FAST_BUT_UNSAFE = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
# pytest-postgresql's executor always starts the server with `-F` (fsync off). A later `-c`
# option wins, so a server that must be durable (the benchmarks) says so explicitly.
DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"


@contextmanager
def postgres_server(options: str = FAST_BUT_UNSAFE) -> Iterator[PostgreSQLExecutor]:
    """Start a PostgreSQL server in a temporary folder; stop it and delete the folder after.

    Args:
        options: extra `postgres` options; the default trades durability for speed (tests).
    """
    workdir = Path(tempfile.mkdtemp(prefix="bot-pg-"))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam(PG_USER)
        os.chown(workdir, postgres.pw_uid, postgres.pw_gid)
    executor = PostgreSQLExecutor(
        executable=str(PG_CTL),
        host="127.0.0.1",
        port=port_for.select_random(),
        datadir=str(workdir / "data"),
        unixsocketdir=str(workdir),
        logfile=str(workdir / "postgresql.log"),
        startparams="-w",
        dbname="postgres",
        user=PG_USER,
        postgres_options=options,
    )
    executor.start()
    try:
        yield executor
    finally:
        executor.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def url(server: PostgreSQLExecutor, dbname: str) -> str:
    """The SQLAlchemy URL of database `dbname` on `server`."""
    return f"postgresql+psycopg://{PG_USER}@{server.host}:{server.port}/{dbname}"
