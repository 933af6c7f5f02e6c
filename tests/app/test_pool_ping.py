"""Pooled connections are tested only after they sat idle (app.extensions.ping_when_idle): no
round trip per transaction under load, and a connection the server dropped while it was idle
is replaced before anyone uses it."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, make_url

from app.extensions import ping_when_idle


def _terminate(database_url: str, pid: int) -> None:
    url = make_url(database_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres",
                         autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


@pytest.mark.backends("postgresql")
def test_a_connection_is_tested_only_after_it_sat_idle(database_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    ping_when_idle(engine, idle_seconds=0.3)
    pings: list[Any] = []
    real_ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    try:
        with engine.connect() as connection:
            first = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as connection:  # back in use at once: not tested
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == first
        assert pings == []

        _terminate(database_url, int(first))  # the server drops it while it sits in the pool
        time.sleep(0.4)
        with engine.connect() as connection:  # tested, found dead, replaced: no error
            second = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert second != first
        assert len(pings) == 1

        time.sleep(0.4)
        with engine.connect() as connection:  # idle again, alive: tested and kept
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == second
        assert len(pings) == 2
    finally:
        engine.dispose()
