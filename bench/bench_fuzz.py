"""Fuzz for longer than CI does: the properties of tests/test_fuzz.py (generated trade files and queue messages never
crash the loader, the consumer's apply or `update_portfolio.py --full`; every record is loaded, a duplicate or
rejected with its reason) with fresh random seeds, round after round, for a time budget per database.

Usage (from the project folder):
    python bench/bench_fuzz.py --minutes 12                                  # SQLite, MariaDB and PostgreSQL
    python bench/bench_fuzz.py --minutes 2 --databases sqlite --out /tmp/fuzz.txt

Each database gets an equal share of the minutes, split evenly between trade files and messages. A round is
--round-examples examples of one property; a database is replaced by a fresh one after --examples-per-database
examples (every example keeps loading into it, so `--full` grows slower). The report (printed, and written to
--out) gives per database the examples run, the rows they loaded, and every failure with hypothesis' falsifying
example.
"""
import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field

from hypothesis.reporting import with_reporter
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [PROJECT, os.path.join(PROJECT, "tests")]

import test_fuzz  # noqa: E402
from schema import load_batches  # noqa: E402

SERVERS = {"mariadb": ("mysql+pymysql://root:@127.0.0.1:3306", "CREATE DATABASE {name} CHARACTER SET utf8mb4",
                       "DROP DATABASE IF EXISTS {name}"),
           "postgres": ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", "CREATE DATABASE {name}",
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)")}
MAX_FAILURE_CHARS = 20_000  # of a failure's traceback (its end, where the failing assertion is)
PROPERTIES = {"files": (test_fuzz.CsvFuzz, test_fuzz.csv_property),
              "messages": (test_fuzz.QueueFuzz, test_fuzz.queue_property)}


@dataclass
class Tally:
    """What one database's runs did."""
    examples: dict = field(default_factory=lambda: {name: 0 for name in PROPERTIES})
    rows: dict = field(default_factory=lambda: {"read": 0, "loaded": 0, "duplicate": 0, "rejected": 0})
    batches: int = 0
    failures: list = field(default_factory=list)
    seconds: float = 0.0


def fresh_database(kind, workdir, server_urls):
    """(URL of a new empty database, a function that drops it)."""
    if kind == "sqlite":
        return f"sqlite:///{os.path.join(workdir, f'fuzz_{uuid.uuid4().hex[:8]}.db')}", lambda: None
    server_url, create, drop = server_urls[kind], *SERVERS[kind][1:]
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    server = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(create.format(name=name)))

    def drop_database():
        with server.connect() as connection:
            connection.execute(text(drop.format(name=name)))
        server.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop_database


def count_rows(fuzz, tally):
    """Add the database's batch counts to the tally."""
    columns = load_batches.c
    with fuzz.engine.connect() as connection:
        row = connection.execute(select(func.count(), func.sum(columns.rows_read), func.sum(columns.rows_loaded),
                                        func.sum(columns.rows_duplicate), func.sum(columns.rows_rejected))).one()
    tally.batches += row[0]
    for key, value in zip(tally.rows, row[1:]):
        tally.rows[key] += int(value or 0)


def run_rounds(kind, name, deadline, args, server_urls, workdir, tally):
    """Rounds of one property on fresh databases until the deadline."""
    make_fuzz, make_property = PROPERTIES[name]
    while time.monotonic() < deadline:
        url, drop = fresh_database(kind, workdir, server_urls)
        fuzz = make_fuzz(url, workdir) if name == "files" else make_fuzz(url)
        try:
            while fuzz.examples < args.examples_per_database and time.monotonic() < deadline:
                run_round(fuzz, make_property, args.round_examples, tally, name)
            count_rows(fuzz, tally)
        finally:
            tally.examples[name] += fuzz.examples
            fuzz.close()
            drop()


def run_round(fuzz, make_property, examples, tally, name):
    """One hypothesis run with a fresh random seed; a failure is recorded with its falsifying example."""
    report = []
    try:
        with with_reporter(report.append):
            make_property(fuzz, examples, profile="fuzz-long")()
    except Exception as error:  # a property failed: keep hypothesis' report and go on with the next round
        trace = "".join(traceback.format_exception(error))  # with the sub-exceptions of a flaky failure
        tally.failures.append(f"{name}: {trace[-MAX_FAILURE_CHARS:]}\n" + "\n".join(report))
        print(tally.failures[-1], flush=True)
    gc.collect()  # the examples' cycles reach the oldest generation, which Python collects rarely: 100 MB a round


def table_row(kind, tally):
    rows = tally.rows
    return (f"| {kind} | {tally.examples['files']:,} | {tally.examples['messages']:,} | {tally.batches:,} | "
            f"{rows['read']:,} | {rows['loaded']:,} | {rows['duplicate']:,} | {rows['rejected']:,} | "
            f"{len(tally.failures)} | {tally.seconds / 60:.1f} |")


def report_lines(tallies, minutes):
    lines = [f"bench_fuzz: {minutes:g} minutes, {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| database | trade files | messages | batches | rows read | loaded | duplicates | rejected | failures "
             "| minutes |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [table_row(kind, tally) for kind, tally in tallies.items()]
    for kind, tally in tallies.items():
        for failure in tally.failures:
            lines += ["", f"FAILURE on {kind}:", failure]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12.0, help="total time (default: %(default)s)")
    parser.add_argument("--databases", default="sqlite,mariadb,postgres")
    parser.add_argument("--properties", default=",".join(PROPERTIES), help="files, messages or both")
    parser.add_argument("--round-examples", type=int, default=50, help="examples per hypothesis run")
    parser.add_argument("--examples-per-database", type=int, default=400)
    parser.add_argument("--mariadb-url", default=os.environ.get("TEST_MARIADB_URL", SERVERS["mariadb"][0]))
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", SERVERS["postgres"][0]))
    parser.add_argument("--out", default=os.path.join(PROJECT, "bench", "results-fuzz.txt"))
    args = parser.parse_args()
    kinds = args.databases.split(",")
    server_urls = {"mariadb": args.mariadb_url, "postgres": args.postgres_url}
    properties = args.properties.split(",")
    share = args.minutes * 60 / len(kinds) / len(properties)
    tallies = {kind: Tally() for kind in kinds}
    with tempfile.TemporaryDirectory() as workdir:
        for kind in kinds:
            started = time.monotonic()
            for name in properties:
                run_rounds(kind, name, time.monotonic() + share, args, server_urls, workdir, tallies[kind])
            tallies[kind].seconds = time.monotonic() - started
            print(table_row(kind, tallies[kind]), flush=True)
    lines = report_lines(tallies, args.minutes)
    print("\n".join(lines))
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return 1 if any(tally.failures for tally in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
