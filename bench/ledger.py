"""Benchmark (not a test): ledger hold + capture pairs per second on PostgreSQL.

Each client is its own process with its own connection, like web or worker processes. A client
loops for a fixed time doing what the router does for one priced answer: `hold` 5 tokens,
`capture` them, commit. Two layouts are measured for 1, 8 and 32 clients:

- separate: each client spends from its own account (throughput across people);
- shared:   all clients spend from one account (the worst case: one person's row lock).

By default a throwaway PostgreSQL server is started with its normal durability settings
(fsync and synchronous commit on); `--no-fsync` turns them off to show the CPU cost alone;
`--database-url` measures an existing server instead (it must be an empty database: the
schema is created with the migrations).

    .venv/bin/python -m bench.ledger [--seconds 5] [--clients 1,8,32] [--no-fsync] [--json F]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tokens import ledger

TOKENS_PER_PAIR = 5


@dataclass(frozen=True)
class Row:
    """One measured setting."""

    layout: str
    clients: int
    pairs: int
    seconds: float
    pairs_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def client(
    url: str, account_id: int, seconds: float, tag: str, queue: multiprocessing.Queue
) -> None:
    """One client process: hold + capture + commit until time is up; reports latencies (s)."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    latencies = []
    n = 0
    deadline = time.perf_counter() + seconds
    with Session(engine) as session:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            placed = ledger.hold(session, account_id, TOKENS_PER_PAIR, key=f"hold:{tag}:{n}")
            ledger.capture(session, placed.hold_id, key=f"debit:{tag}:{n}")
            session.commit()
            latencies.append(time.perf_counter() - start)
            n += 1
    engine.dispose()
    queue.put(latencies)


def fund(url: str, accounts: int, tokens: int) -> list[int]:
    """Open `accounts` accounts holding `tokens` paid tokens each."""
    engine = create_engine(url)
    ids = []
    with Session(engine) as session:
        for i in range(accounts):
            account = ledger.open_account(session)
            ledger.purchase(session, account.id, tokens, key=f"bench:fund:{account.id}:{i}")
            ids.append(account.id)
        session.commit()
    engine.dispose()
    return ids


def measure(url: str, layout: str, clients: int, seconds: float) -> Row:
    budget = 10_000_000  # more tokens than any run can spend
    accounts = fund(url, 1 if layout == "shared" else clients, budget)
    queue: multiprocessing.Queue = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(
            target=client,
            args=(url, accounts[0 if layout == "shared" else i], seconds,
                  f"{layout}:{clients}:{i}", queue),
        )
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    latencies: list[float] = []
    for _ in processes:
        latencies.extend(queue.get())
    for process in processes:
        process.join()
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return Row(
        layout=layout,
        clients=clients,
        pairs=len(latencies),
        seconds=seconds,
        pairs_per_second=round(len(latencies) / seconds, 1),
        p50_ms=round(cuts[49] * 1000, 2),
        p95_ms=round(cuts[94] * 1000, 2),
        p99_ms=round(cuts[98] * 1000, 2),
    )


@contextmanager
def database(url: str | None, durable: bool = True) -> Iterator[str]:
    """The URL of an empty PostgreSQL database with the schema migrated: `url` itself, or a
    throwaway server's, durable (fsync, synchronous commit and full page writes on) unless
    `durable` is False.

    Raises:
        RuntimeError: the throwaway server's `fsync` is not what `durable` asks for.
    """
    from testing.deployment import migrate

    if url:
        migrate(url)
        yield url
        return
    from pytest_postgresql.janitor import DatabaseJanitor

    from testing.postgres import DURABLE, FAST_BUT_UNSAFE, PG_USER, postgres_server
    from testing.postgres import url as postgres_url

    # Durable must be said: the executor's own `-F` turns fsync off (testing/postgres.py).
    # Until 2026-12-07 it was not, so the benchmarks' earlier figures ran with fsync off.
    options = "-c max_connections=100 " + (DURABLE if durable else FAST_BUT_UNSAFE)
    with postgres_server(options=options) as server:
        DatabaseJanitor(user=PG_USER, host=server.host, port=server.port,
                        dbname="bench").init()
        target = postgres_url(server, "bench")
        migrate(target)
        engine = create_engine(target)
        with engine.connect() as connection:
            fsync = connection.exec_driver_sql("SHOW fsync").scalar()
        engine.dispose()
        if fsync != ("on" if durable else "off"):
            raise RuntimeError(f"the benchmark's PostgreSQL runs with fsync={fsync}")
        yield target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per setting (default 5)")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--no-fsync", action="store_true",
                        help="start the server with fsync off: shows the CPU cost alone")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    rows = []
    with database(args.database_url, durable=not args.no_fsync) as url:
        for layout in ("separate", "shared"):
            for clients in counts:
                rows.append(measure(url, layout, clients, args.seconds))
                print(f"  measured {layout} x{clients}", file=sys.stderr)

    print("| layout | clients | pairs | pairs/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row.layout} | {row.clients} | {row.pairs} | {row.pairs_per_second} | "
              f"{row.p50_ms} | {row.p95_ms} | {row.p99_ms} |")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
