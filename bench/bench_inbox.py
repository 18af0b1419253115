"""Benchmark the inbox: the time from renaming a small trade file into a watched folder to its trades being applied.

Usage (from the project folder):
    python bench/bench_inbox.py                            # SQLite and MariaDB, 20 files each of 1, 10, 100 trades
    python bench/bench_inbox.py --databases sqlite --files 5               # quick
    python bench/bench_inbox.py --out bench/results-inbox.txt

For each database (SQLite: a new file; MariaDB: a new database) the reference data, the generated prices and a
history of --history generated trades are loaded, applied and surveilled in this process (not timed). Then
`load_transactions.py --watch INBOX` runs as a subprocess (reports off, its inbox log lines kept for the split
below) and, for each size, --files files of that many new BUYs (later than every trade of the history) are
dropped one at a time: written under a temporary dot name in the inbox, then renamed to NAME.csv. The latency of
a file is the time from the rename to the moment a query sees every one of its trades applied: each trade's
position has applied it or a later trade (portfolios.last_txn_time, last_txn_id). The query runs every
POLL_SECONDS, so latencies are up to that much (plus one query) late. The next file is dropped once the watcher
has moved the previous one out of the inbox, so each file finds the watcher idle. One warm-up file per database
is not counted. p95 is the nearest-rank percentile (the 19th of 20).

The split comes from the watcher's own log line per file: load (load_transactions.load_path), update
(update_portfolio.update_portfolios; the file's trades are in portfolios when it commits) and surveillance (after
the trades are applied: not part of the latency), medians over the files of a size. "Other" is the median of each
file's latency minus its load and update: the inotify event, the watcher's wake-up and the polling; it is below
zero on MariaDB, where the update's time also counts releasing its named locks (db_config.stage_transaction)
after the commit that the query sees.
"""
import argparse
import math
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import bindparam, text

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

import constants  # noqa: E402
import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
import surveillance  # noqa: E402
import update_portfolio  # noqa: E402
from bench_pipeline import fresh_database  # noqa: E402

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"
SEED = 42
POLL_SECONDS = 0.002
DEADLINE_SECONDS = 60
FIRST_NEW_TIME = datetime(2026, 11, 2, 10, 0, 0)  # after the generated history (it ends on 2026-10-30)
WATCHER = ("import logging, sys, load_transactions; logging.getLogger('inbox').setLevel(logging.INFO); "
           "sys.exit(load_transactions.main(sys.argv[1:]))")  # the script, with the inbox's INFO lines kept
SPLIT = re.compile(r"inbox: (\S+): .*\(load ([\d.]+) s, update ([\d.]+) s, surveillance ([\d.]+) s\)")
APPLIED_SQL = text(
    "SELECT COUNT(*) FROM transactions t JOIN portfolios p "
    "ON p.investor_id = t.investor_id AND p.stock_symbol = t.stock_symbol "
    "WHERE t.txn_ref IN :refs AND (p.last_txn_time > t.txn_time "
    "OR (p.last_txn_time = t.txn_time AND p.last_txn_id >= t.txn_id))"
).bindparams(bindparam("refs", expanding=True))


class Drop(NamedTuple):
    """One file dropped into the inbox: its name, trades, and seconds from its rename to its trades applied."""
    name: str
    trades: int
    latency: float


# ------------------------------------------------------------------------------------------------ the files

class NewTrades:
    """Writes files of new BUYs, each later than every trade before it, spread over investors and symbols."""

    def __init__(self):
        self.count = 0

    def lines(self, trades):
        """`trades` record lines, with refs INBOX-1, INBOX-2, ... and one second apart."""
        lines = []
        for _ in range(trades):
            self.count += 1
            investor = 1001 + self.count * 7 % constants.DEFAULT_INVESTOR_COUNT
            symbol = constants.STOCKS[self.count % len(constants.STOCKS)].symbol
            when = FIRST_NEW_TIME + timedelta(seconds=self.count)
            lines.append(f"INBOX-{self.count},{investor},{symbol},BUY,10,100.00,{when:%Y-%m-%d %H:%M:%S}\n")
        return lines


def drop_file(folder, name, lines):
    """Write the file under a temporary dot name in the inbox, then rename it; the time just after the rename."""
    temporary = os.path.join(folder, f".{name}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(HEADER)
        handle.writelines(lines)
    os.rename(temporary, os.path.join(folder, name))
    return time.perf_counter()


# ------------------------------------------------------------------------------------------------ one database

def build_history(url, history_path):
    """Seed, load the prices and the history, apply and surveil it (not timed)."""
    engine = db_config.get_engine(url)
    try:
        seed_investors.seed_reference_data(engine)
        load_transactions.load_path(engine, generate_dummy_data.prices_path_for(history_path))
        load_transactions.load_path(engine, history_path)
        update_portfolio.update_portfolios(engine)
        surveillance.run_surveillance(engine)
    finally:
        engine.dispose()


def start_watcher(url, folder, logs):
    """The watcher subprocess, once it has printed its `watching` line; its stdout and stderr in files."""
    out, err = os.path.join(logs, "watch.out"), os.path.join(logs, "watch.err")
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", WATCHER, "--watch", folder, "--database-url", url,
                                    "--report-every", "0"], cwd=PROJECT, stdout=stdout, stderr=stderr,
                                   env=os.environ | {"DATABASE_URL": ""})
    wait_until(lambda: "watching " in read(out) or process.poll() is not None, "the watcher to start")
    if process.poll() is not None:
        raise SystemExit(f"the watcher exited {process.returncode}: {read(err)}")
    return process, out, err


def stop_watcher(process, err):
    """SIGTERM the watcher; exits unless it ends with 0."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(DEADLINE_SECONDS)
    if code != 0:
        raise SystemExit(f"the watcher exited {code} after SIGTERM: {read(err)}")


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def wait_until(condition, what, poll_seconds=0.01):
    """Poll until condition() holds; exits after DEADLINE_SECONDS."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(poll_seconds)


def applied(engine, refs):
    """Are all these trades applied (their positions' last trade applied is them or later)?"""
    with engine.connect() as connection:
        return connection.execute(APPLIED_SQL, {"refs": refs}).scalar() == len(refs)


def time_drop(engine, folder, name, lines):
    """Drop one file; the seconds from its rename to its trades applied (then waits for it to leave the inbox)."""
    refs = [line.split(",", 1)[0] for line in lines]
    renamed = drop_file(folder, name, lines)
    wait_until(lambda: applied(engine, refs), f"{name}'s trades in portfolios", POLL_SECONDS)
    latency = time.perf_counter() - renamed
    wait_until(lambda: not os.path.exists(os.path.join(folder, name)), f"{name} to leave the inbox")
    if not os.path.exists(os.path.join(folder, "processed", name)):
        raise SystemExit(f"{name} was not processed: {os.listdir(os.path.join(folder, 'failed'))}")
    return Drop(name, len(lines), latency)


def bench_database(kind, history_path, args, workdir):
    """Drops of every size on one database: a list of Drop, and {file name: (load, update, surveillance) s}."""
    url, drop_database = fresh_database(kind, workdir, args.mariadb_url)
    folder = os.path.join(workdir, f"inbox_{kind}")
    os.makedirs(folder)
    try:
        build_history(url, history_path)
        process, _, err = start_watcher(url, folder, workdir)
        engine = db_config.get_engine(url, create_schema=False)
        try:
            new = NewTrades()
            time_drop(engine, folder, "warm_up.csv", new.lines(1))
            drops = [time_drop(engine, folder, f"size{size}_{n:02d}.csv", new.lines(size))
                     for size in args.sizes for n in range(args.files)]
        finally:
            engine.dispose()
            stop_watcher(process, err)
        return drops, {name: tuple(map(float, seconds)) for name, *seconds in SPLIT.findall(read(err))}
    finally:
        drop_database()


# ------------------------------------------------------------------------------------------------ the report

def nearest_rank(values, fraction):
    """The nearest-rank percentile: the ceil(fraction * n)-th smallest value."""
    return sorted(values)[math.ceil(fraction * len(values)) - 1]


def table_rows(kind, drops, split):
    """Markdown table rows, one per file size."""
    rows = []
    for size in sorted({drop.trades for drop in drops}):
        of_size = [drop for drop in drops if drop.trades == size]
        latencies = [drop.latency for drop in of_size]
        load, update, checked = (statistics.median(split[drop.name][i] for drop in of_size) for i in range(3))
        other = statistics.median(drop.latency - sum(split[drop.name][:2]) for drop in of_size)
        figures = [statistics.median(latencies), nearest_rank(latencies, 0.95), max(latencies), load, update, other,
                   checked]
        rows.append(f"| {kind} | {size} | {len(of_size)} | " + " | ".join(map(milliseconds, figures)) + " |")
    return rows


def milliseconds(seconds):
    return f"{seconds * 1000:.0f} ms"


def report(results, args):
    """The results as text: the command, the machine, the table."""
    lines = [f"`{' '.join(['python bench/bench_inbox.py', *args.argv])}`", "",
             f"{date.today()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
             f"{sqlite3.sqlite_version}, {mariadb_version(args)}; history of {args.history:,} generated trades; "
             f"polled every {POLL_SECONDS * 1000:g} ms; load average {args.load_before:.2f} before, "
             f"{os.getloadavg()[0]:.2f} after (1 minute).", "",
             "| database | trades per file | files | p50 rename → applied | p95 | max | load | update | other | "
             "surveillance, after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, (drops, split) in results.items():
        lines += table_rows(kind, drops, split)
    return "\n".join(lines) + "\n"


def mariadb_version(args):
    """MariaDB's version when it was measured."""
    if "mariadb" not in args.databases:
        return "no MariaDB"
    engine = db_config.get_engine(args.mariadb_url, create_schema=False)
    try:
        with engine.connect() as connection:
            return "MariaDB " + connection.execute(text("SELECT VERSION()")).scalar().split("-")[0]
    finally:
        engine.dispose()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="sqlite,mariadb", type=lambda value: value.split(","))
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root:@127.0.0.1:3306")
    parser.add_argument("--sizes", default="1,10,100", type=lambda value: [int(v) for v in value.split(",")],
                        help="trades per file (default: 1,10,100)")
    parser.add_argument("--files", type=int, default=20, help="files of each size (default: %(default)s)")
    parser.add_argument("--history", type=int, default=10_000, help="generated trades loaded first (default: "
                                                                    "%(default)s)")
    parser.add_argument("--out", default=os.path.join(PROJECT, "bench", "results-inbox.txt"),
                        help="write the table here too (default: bench/results-inbox.txt)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.load_before = os.getloadavg()[0]  # other work on the machine slows the watcher: shown with the table
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        history_path = os.path.join(workdir, "history.csv")
        generate_dummy_data.write_dummy_data(history_path, args.history, seed=SEED)
        for kind in args.databases:
            results[kind] = bench_database(kind, history_path, args, workdir)
            print(f"{kind}: {len(results[kind][0])} files timed", flush=True)
    text_report = report(results, args)
    print(text_report)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text_report)


if __name__ == "__main__":
    main()
