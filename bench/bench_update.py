"""Benchmark update_portfolio.py and surveillance.py run as processes on a history: with nothing new, with one
new trade, and (incremental beside --full) with 10,000 new and 300 late trades; checks both results against each
other and against an independent replay, and reports the size of position_checkpoints beside transactions.

Usage (from the project folder):
    python bench/bench_update.py                         # histories of 300,000 and 1,000,000, SQLite and MariaDB
    python bench/bench_update.py --histories 20000 --databases sqlite      # quick
    python bench/bench_update.py --compare-up-to 1000000 --json bench/out/update.json

For each history size the trades file holds history + 10,300 trades: the newest 10,000 and 300 drawn at random
from the older part's last --late-within-days days (the late ones: reported after newer trades, as corrections
and late fills are; 0 draws them from the whole history) are kept back; the rest (the history) is loaded after
the reference data and prices, then update_portfolio.py and surveillance.py run once, so that everything is
applied and surveilled.
For each database, in the same run:
  - import only: a process that only imports the module (and freezes its objects out of garbage collection, as
    every stage does before its work); subtracted from the times below as "beyond imports";
  - nothing new: update_portfolio.py and surveillance.py with nothing to do (median of 5 rounds, each running
    the two import-only processes and these two in turn);
  - one new trade: load a file of one BUY later than every trade (not timed), then update_portfolio.py (median
    of 5 such trades);
  - 10,000 new + 300 late (histories up to --compare-up-to): that file is loaded (not timed) into the database
    and into a twin (SQLite: a copy of the file; MariaDB: a second database built the same way), then one gets
    update_portfolio.py and the other update_portfolio.py --full. portfolios and investor_risk (without
    updated_at) and alerts must be equal, and every position's quantity, cost_basis and realized_pnl must match a
    weighted-average-cost replay in Fractions of the transactions table to the cent; else the run exits 1;
  - sizes, at the end, of the database that got the incremental updates: rows, rows per trade and bytes (table
    and its indexes: SQLite dbstat, MariaDB data_length + index_length after ANALYZE TABLE) of transactions and
    position_checkpoints ("n/a" when that table does not exist).
Every process runs with sys.executable in the project folder, DATABASE_URL set to the database.
"""
import argparse
import json
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple
from fractions import Fraction

from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
from bench_pipeline import fresh_database  # noqa: E402

NEW_TRADES, LATE_TRADES, ONE_NEW_RUNS, REPEATS = 10_000, 300, 5, 5
SEED = 61
CENT = Fraction(5, 1000)
ALERT_COLUMNS = ["rule", "alert_key", "investor_id", "stock_symbol", "txn_ref", "severity", "metric", "threshold",
                 "details"]
SIZED_TABLES = ("transactions", "position_checkpoints")
SHOWN = 3  # differing rows or positions printed


@dataclass
class TradeFiles:
    """The files of one history size."""
    prices: str
    history: str
    history_rows: int
    new_and_late: str
    one_new: list


# ------------------------------------------------------------------------------------------------ the files

def write_lines(path, header, lines):
    """Write a CSV file from its header line and record lines."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header)
        handle.writelines(lines)


def prepare_files(rows, workdir, late_within_days):
    """Generate history + 10,300 trades and split them into the history, the new + late file and one-trade files.
    The late trades are drawn from the history's last late_within_days days (0: from all of it)."""
    folder = os.path.join(workdir, f"history_{rows}")
    os.makedirs(folder)
    generated = os.path.join(folder, "generated.csv")
    generate_dummy_data.write_dummy_data(generated, rows + NEW_TRADES + LATE_TRADES, seed=SEED)
    with open(generated, encoding="utf-8") as handle:
        header, *lines = handle.readlines()
    older = len(lines) - NEW_TRADES
    rng = random.Random(SEED)
    late = set(rng.sample(late_candidates(lines[:older], late_within_days), LATE_TRADES))
    history = [line for index, line in enumerate(lines[:older]) if index not in late]
    files = TradeFiles(generate_dummy_data.prices_path_for(generated), os.path.join(folder, "history.csv"),
                       len(history), os.path.join(folder, "new_and_late.csv"), [])
    write_lines(files.history, header, history)
    write_lines(files.new_and_late, header, [lines[index] for index in sorted(late)] + lines[older:])
    files.one_new = write_one_new_trades(folder, header, history, lines[-1], rng)
    return files


def late_candidates(lines, within_days):
    """Indexes of the time-ordered trade lines dated within `within_days` days of the last one (0: all)."""
    if not within_days:
        return range(len(lines))
    last_day = date.fromisoformat(lines[-1].rstrip("\n").split(",")[6][:10])
    first_day = (last_day - timedelta(days=within_days)).isoformat()
    return [index for index, line in enumerate(lines) if line.split(",")[6][:10] > first_day]


def write_one_new_trades(folder, header, history, last_line, rng):
    """Files of one BUY each, of an investor/symbol of the history, k minutes after the last generated trade."""
    names = header.strip().split(",")
    last_time = datetime.fromisoformat(dict(zip(names, last_line.strip().split(",")))["txn_time"])
    paths = []
    for k in range(1, ONE_NEW_RUNS + 1):
        picked = dict(zip(names, rng.choice(history).strip().split(",")))
        trade = picked | {"txn_ref": f"BENCH-ONE-{len(history)}-{k}", "txn_type": "BUY", "quantity": "10",
                          "txn_time": f"{last_time + timedelta(minutes=k):%Y-%m-%d %H:%M:%S}"}
        paths.append(os.path.join(folder, f"one_new_{k}.csv"))
        write_lines(paths[-1], header, [",".join(trade[name] for name in names) + "\n"])
    return paths


# ------------------------------------------------------------------------------------------------ processes

class Run(NamedTuple):
    """One process: its wall-clock seconds, and the stage's own (its summary line's: work without start-up)."""
    seconds: float
    own: float


STAGE_SECONDS = re.compile(r"\((\d+\.\d+) s\)\s*$")


def run_process(arguments, url, folder=PROJECT):
    """One `python arguments...` in the project folder (or another work tree) with DATABASE_URL=url; exits if it
    fails."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=folder, env=os.environ | {"DATABASE_URL": url},
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"python {' '.join(arguments)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    own = STAGE_SECONDS.search(done.stdout)
    return Run(seconds, float(own.group(1)) if own else float("nan"))


def import_only(module):
    """A program that imports the module and ends as the stage does: its imports frozen out of garbage
    collection (cli.run does so; a process that does not spends ~0.1 s more collecting them at exit)."""
    return f"import gc, {module}; gc.freeze()"


def imports_and_nothing_new(url):
    """({module: import-only seconds}, {module: Run with nothing new}): medians of REPEATS rounds, each
    running the four processes in turn, so that a drift of the machine's speed affects both alike."""
    commands = {(kind, name): ["-c", import_only(name)] if kind == "import" else [f"{name}.py", "--database-url", url]
                for name in ("update_portfolio", "surveillance") for kind in ("import", "run")}
    runs = {command: [] for command in commands}
    for _ in range(REPEATS):
        for command, arguments in commands.items():
            runs[command].append(run_process(arguments, url))
    medians = {command: median_run(measured) for command, measured in runs.items()}
    return ({name: run.seconds for (kind, name), run in medians.items() if kind == "import"},
            {name: run for (kind, name), run in medians.items() if kind == "run"})


def median_run(runs):
    """The medians of the wall-clock and own seconds of several runs, rounded to the millisecond."""
    return Run(round(statistics.median(run.seconds for run in runs), 3), round(statistics.median(
        run.own for run in runs), 3))


def update(url, full=False):
    """One update_portfolio.py process (with --full if asked)."""
    return run_process(["update_portfolio.py", "--database-url", url] + (["--full"] if full else []), url)


# ------------------------------------------------------------------------------------------------ loading

def load(url, path, expected_rows):
    """Load one trade file in this process (not timed); exits unless exactly expected_rows are new."""
    engine = db_config.get_engine(url)
    try:
        summary = load_transactions.load_file(engine, path)
    finally:
        engine.dispose()
    if summary.rows_loaded != expected_rows:
        raise SystemExit(f"{path}: {summary.rows_loaded} rows loaded, {expected_rows} expected: {summary.line()}")


def build_history(url, files):
    """Seed, load prices and the history, then apply and surveil it with one process each; their seconds."""
    engine = db_config.get_engine(url)
    try:
        seed_investors.seed_reference_data(engine)
        load_transactions.load_path(engine, files.prices)
    finally:
        engine.dispose()
    load(url, files.history, files.history_rows)
    return {"first_update_s": round(update(url).seconds, 3),
            "first_surveillance_s": round(run_process(["surveillance.py", "--database-url", url], url).seconds, 3)}


def add_one_new_trade(url, path):
    """Load one new trade (not timed); the update_portfolio.py process that applies it."""
    load(url, path, 1)
    return update(url)


# ------------------------------------------------------------------------------------------------ one database

def bench_database(kind, files, args, workdir):
    """Every section's figures for one database and history size."""
    url, drop = fresh_database(kind, workdir, args.mariadb_url)
    try:
        record = {"database": kind, "history": files.history_rows, "build": build_history(url, files)}
        record["import_s"], record["nothing_new_s"] = imports_and_nothing_new(url)
        record["one_new_update"] = median_run([add_one_new_trade(url, path) for path in files.one_new])._asdict()
        record["nothing_new"] = {name: run._asdict() for name, run in record.pop("nothing_new_s").items()}
        if files.history_rows <= args.compare_up_to:
            record["new_and_late"] = compare_updates(kind, url, files, args, workdir)
        record["sizes"] = table_sizes(url)
        return record
    finally:
        drop()


def twin_database(kind, url, files, args, workdir):
    """(URL, drop) of a database holding what `url` holds: a copy of the SQLite file, or built the same way."""
    twin_url, drop = fresh_database(kind, workdir, args.mariadb_url)
    if kind == "sqlite":
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as source, \
                closing(sqlite3.connect(twin_url.removeprefix("sqlite:///"))) as target:
            source.backup(target)
        return twin_url, drop
    build_history(twin_url, files)
    for path in files.one_new:
        add_one_new_trade(twin_url, path)
    return twin_url, drop


def compare_updates(kind, url, files, args, workdir):
    """Times of the incremental update and --full on twins after the new + late file; the results checked."""
    twin_url, drop = twin_database(kind, url, files, args, workdir)
    try:
        for target in (url, twin_url):
            load(target, files.new_and_late, NEW_TRADES + LATE_TRADES)
        incremental, full = update(url), update(twin_url, full=True)
        problems = compare_tables(url, twin_url) + compare_with_replay(url)
        for line in problems:
            print(line, file=sys.stderr)
        return {"incremental": median_run([incremental])._asdict(), "full": median_run([full])._asdict(),
                "ratio": round(incremental.seconds / full.seconds, 3), "check": "differs" if problems else "equal"}
    finally:
        drop()


# ------------------------------------------------------------------------------------------------ checks

def compared_columns(engine, table):
    """The columns compared between the twins: alerts' listed ones, else all but updated_at."""
    if table == "alerts":
        return ALERT_COLUMNS
    return [column["name"] for column in inspect(engine).get_columns(table) if column["name"] != "updated_at"]


def sorted_rows(engine, table, columns):
    """The table's rows (those columns) sorted, NULLs last."""
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT {', '.join(columns)} FROM {table}")).all()
    return sorted((tuple(row) for row in rows), key=lambda row: tuple((value is None, value) for value in row))


def compare_tables(url, twin_url):
    """Lines describing the first differences of portfolios, investor_risk and alerts between the twins."""
    engine, twin = db_config.get_engine(url, create_schema=False), db_config.get_engine(twin_url, create_schema=False)
    try:
        problems = []
        for table in ("portfolios", "investor_risk", "alerts"):
            columns = compared_columns(engine, table)
            if columns != compared_columns(twin, table):
                problems.append(f"{table}: columns differ: {columns} / {compared_columns(twin, table)}")
                continue
            problems += row_differences(table, columns, sorted_rows(engine, table, columns),
                                        sorted_rows(twin, table, columns))
        return problems
    finally:
        engine.dispose()
        twin.dispose()


def row_differences(table, columns, incremental, full):
    """Lines showing the first rows only in the incremental result and only in the full one (none if equal)."""
    if incremental == full:
        return []
    only_incremental, only_full = set(incremental) - set(full), set(full) - set(incremental)
    lines = [f"{table} differs: {len(incremental)} rows incremental, {len(full)} --full; columns {columns}"]
    lines += [f"  incremental only: {row}" for row in [r for r in incremental if r in only_incremental][:SHOWN]]
    lines += [f"  --full only:      {row}" for row in [r for r in full if r in only_full][:SHOWN]]
    return lines


def apply_trade(state, txn_type, quantity, price):
    """(quantity, cost_basis, realized_pnl) after one trade, weighted average cost; an oversell changes nothing."""
    held, cost, pnl = state
    if txn_type == "BUY":
        return held + quantity, cost + quantity * price, pnl
    if quantity > held:
        return state
    average = cost / held
    left = held - quantity
    return left, (cost - quantity * average) if left else Fraction(0), pnl + quantity * (price - average)


def replayed_positions(engine):
    """{(investor_id, stock_symbol): (quantity, cost_basis, realized_pnl)} from transactions, in Fractions."""
    positions = {}
    zero = (0, Fraction(0), Fraction(0))
    with engine.connect() as connection:
        trades = connection.execution_options(stream_results=True).execute(text(
            "SELECT investor_id, stock_symbol, txn_type, quantity, price FROM transactions ORDER BY txn_time, txn_id"))
        for investor_id, symbol, txn_type, quantity, price in trades:
            key = (investor_id, symbol)
            positions[key] = apply_trade(positions.get(key, zero), txn_type, quantity, Fraction(str(price)))
    return positions


def compare_with_replay(url):
    """Lines describing the first positions whose quantity, cost_basis or realized_pnl are off by a cent or more."""
    engine = db_config.get_engine(url, create_schema=False)
    try:
        expected = replayed_positions(engine)
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT investor_id, stock_symbol, quantity, cost_basis, realized_pnl FROM portfolios"))
            stored = {(investor_id, symbol): (quantity, Fraction(str(cost)), Fraction(str(pnl)))
                      for investor_id, symbol, quantity, cost, pnl in rows}
    finally:
        engine.dispose()
    zero = (0, Fraction(0), Fraction(0))
    wrong = [key for key in sorted(expected.keys() | stored.keys())
             if any(abs(a - b) >= CENT for a, b in zip(stored.get(key, zero), expected.get(key, zero)))]
    if not wrong:
        return []
    heading = f"{len(wrong)} of {len(expected)} positions differ from the replay (quantity, cost_basis, realized_pnl):"
    return [heading] + [
        f"  {key}: stored {format_state(stored.get(key, zero))}, replay {format_state(expected.get(key, zero))}"
        for key in wrong[:SHOWN]]


def format_state(state):
    """A (quantity, cost_basis, realized_pnl) with the money to 6 decimals."""
    quantity, cost, pnl = state
    return f"({quantity}, {float(cost):.6f}, {float(pnl):.6f})"


# ------------------------------------------------------------------------------------------------ sizes

def table_sizes(url):
    """{table: {rows, rows_per_trade, bytes}} for transactions and position_checkpoints (None if it is missing)."""
    engine = db_config.get_engine(url, create_schema=False)
    try:
        sizes = {}
        with engine.connect() as connection:
            for table in SIZED_TABLES:
                if not inspect(connection).has_table(table):
                    sizes[table] = None
                    continue
                rows = connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
                sizes[table] = {"rows": rows, "bytes": table_bytes(connection, table)}
            trades = sizes["transactions"]["rows"]
            for figures in filter(None, sizes.values()):
                figures["rows_per_trade"] = round(figures["rows"] / trades, 4)
        return sizes
    finally:
        engine.dispose()


def table_bytes(connection, table):
    """Bytes of a table with its indexes; a string saying why when they cannot be measured."""
    if connection.dialect.name == "sqlite":
        try:
            return connection.execute(text(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = :t)"),
                {"t": table}).scalar()
        except OperationalError:
            return "dbstat unavailable"
    connection.execute(text(f"ANALYZE TABLE {table}")).all()
    return connection.execute(text(
        "SELECT data_length + index_length FROM information_schema.TABLES "
        "WHERE table_schema = DATABASE() AND table_name = :t"), {"t": table}).scalar()


# ------------------------------------------------------------------------------------------------ output

def seconds_cell(seconds, reference=None, own=None):
    """'1.234 s', with the time beyond the reference and the stage's own time when given."""
    if reference is None:
        return f"{seconds:.3f} s"
    return f"{seconds:.3f} s ({seconds - reference:+.3f} s beyond imports; stage's own {own:.2f} s)"


def print_tables(results):
    """One markdown table per section."""
    print(f"\n**Import only** (median of {REPEATS} processes)\n\n| database | history | import update_portfolio "
          "| import surveillance |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['database']} | {r['history']:,} | {seconds_cell(r['import_s']['update_portfolio'])} "
              f"| {seconds_cell(r['import_s']['surveillance'])} |")
    print(f"\n**Nothing new** (median of {REPEATS} processes)\n\n| database | history | update_portfolio.py "
          "| surveillance.py |\n|---|---|---|---|")
    for r in results:
        cells = [seconds_cell(r["nothing_new"][name]["seconds"], r["import_s"][name], r["nothing_new"][name]["own"])
                 for name in ("update_portfolio", "surveillance")]
        print(f"| {r['database']} | {r['history']:,} | {cells[0]} | {cells[1]} |")
    print(f"\n**One new trade** (update_portfolio.py, median of {ONE_NEW_RUNS} trades)\n\n| database | history "
          "| update_portfolio.py |\n|---|---|---|")
    for r in results:
        one = r["one_new_update"]
        cell = seconds_cell(one["seconds"], r["import_s"]["update_portfolio"], one["own"])
        print(f"| {r['database']} | {r['history']:,} | {cell} |")
    print_new_and_late([r for r in results if "new_and_late" in r])
    print_sizes(results)


def print_new_and_late(results):
    """The incremental update beside --full after 10,000 new + 300 late trades."""
    print(f"\n**{NEW_TRADES:,} new + {LATE_TRADES} late trades** (one process each)\n\n| database | history "
          "| incremental | --full | incremental / --full | results |\n|---|---|---|---|---|---|")
    for r in results:
        n, reference = r["new_and_late"], r["import_s"]["update_portfolio"]
        incremental = seconds_cell(n["incremental"]["seconds"], reference, n["incremental"]["own"])
        full = seconds_cell(n["full"]["seconds"], reference, n["full"]["own"])
        print(f"| {r['database']} | {r['history']:,} | {incremental} | {full} | {n['ratio']:.3f} | {n['check']} |")


def print_sizes(results):
    """Rows, rows per trade and bytes of transactions and position_checkpoints."""
    print("\n**Table sizes** (the incrementally updated database, at the end)\n\n| database | history | table | rows "
          "| rows per trade | bytes |\n|---|---|---|---|---|---|")
    for r in results:
        for table in SIZED_TABLES:
            figures = r["sizes"][table]
            cells = ("n/a", "n/a", "n/a") if figures is None else (
                f"{figures['rows']:,}", f"{figures['rows_per_trade']:.4f}",
                f"{figures['bytes']:,}" if isinstance(figures["bytes"], int) else figures["bytes"])
            print(f"| {r['database']} | {r['history']:,} | {table} | " + " | ".join(cells) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--histories", default="300000,1000000", help="comma-separated history sizes (trades)")
    parser.add_argument("--databases", default="sqlite,mariadb")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root:@127.0.0.1:3306")
    parser.add_argument("--compare-up-to", type=int, default=300_000, metavar="TRADES",
                        help="the new + late comparison for histories up to this size (default: %(default)s)")
    parser.add_argument("--late-within-days", type=int, default=14, metavar="DAYS",
                        help="draw the late trades from the history's last DAYS days; 0: from all of it "
                             "(default: %(default)s)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for rows in [int(r) for r in args.histories.split(",")]:
            files = prepare_files(rows, workdir, args.late_within_days)
            for kind in args.databases.split(","):
                results.append(bench_database(kind, files, args, workdir))
                print(json.dumps(results[-1]), flush=True)
    print(f"\n`python {' '.join(sys.argv)}`")
    print_tables(results)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    if any(r["new_and_late"]["check"] != "equal" for r in results if "new_and_late" in r):
        sys.exit(1)


if __name__ == "__main__":
    main()
