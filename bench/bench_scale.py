"""How every stage scales: wall seconds and peak memory of each stage at 1,000,000 and 10,000,000 trades, run as
cron runs them, one process per stage.

For each database of --databases (default SQLite and MariaDB; PostgreSQL when asked) and each size N of --rows, the
stages run in order as separate processes on one fresh database (SQLite: a file in the work folder; MariaDB and
PostgreSQL: a database created here and dropped at the end), each with --database-url and --quiet:
generate_dummy_data.py --rows N --seed 42 --out FILE, seed_investors.py, load_transactions.py FILE (with the prices
and corporate actions files beside it), update_portfolio.py, surveillance.py, analyze.py --reports DIR (drawing the
dashboards), update_portfolio.py --full, surveillance.py --full. For each: its wall seconds and the peak RSS of its
largest process (the stage or a worker process of it: getrusage(RUSAGE_CHILDREN) of a wrapper process,
bench_memory.measured). Checked: every stage exits 0, and after the load the transactions table holds N trades.

Figures beside their references, one table per database: a stage's seconds at the largest size beside its seconds
at the smallest (time ratio; target <= 1.1 x the size ratio: 11 for 10M / 1M), and each peak RSS beside 1 GB
(10^9 bytes; target below it at the largest size). A figure that misses its target is marked with "!".

Usage (from the project folder; the 10M trades file is about 700 MB, the SQLite database a few GB):
    python bench/bench_scale.py                                        # 1M and 10M trades, SQLite and MariaDB
    python bench/bench_scale.py --rows 20000,200000                    # a quick check that it works
    python bench/bench_scale.py --databases postgresql --json /tmp/scale.json
    python bench/bench_scale.py --write                                # also append to bench/results-scale.txt

The tables go to stdout, progress to stderr. Exit code 0 when every stage ran and checked out, else 1.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime

from sqlalchemy import create_engine, text

import timing
from bench_memory import ROOT, measured
from bench_pipeline import DATABASES, MARIADB_URL, POSTGRES_URL, fresh_database

DEFAULT_ROWS = "1000000,10000000"
DEFAULT_DATABASES = "sqlite,mariadb"
SEED = 42
TIME_SLACK = 1.1  # a stage may take up to 1.1 x the size ratio longer at the largest size than at the smallest
RSS_LIMIT_KIB = 1e9 / 1024  # 1 GB
RESULTS = os.path.join(ROOT, "bench", "results-scale.txt")


def log(message):
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated trade counts, smallest first "
                                                             "(default: %(default)s)")
    parser.add_argument("--databases", default=DEFAULT_DATABASES,
                        help="comma-separated, from: sqlite, mariadb, postgresql (default: %(default)s)")
    parser.add_argument("--mariadb-url", default=MARIADB_URL, help="MariaDB server URL (default: %(default)s)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL maintenance database URL (default: %(default)s)")
    parser.add_argument("--workdir", help="where the trade files, SQLite databases and reports go (default: a "
                                          "temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the files and the databases (default: each run's "
                                                            "are removed when it ends)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--write", action="store_true", help=f"also append the tables to {RESULTS}")
    args = parser.parse_args(argv)
    try:
        args.rows = sorted(int(rows) for rows in args.rows.split(","))
    except ValueError:
        parser.error(f"--rows {args.rows}: give comma-separated whole numbers, e.g. {DEFAULT_ROWS}")
    args.databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    unknown = set(args.databases) - set(DATABASES)
    if unknown or not args.databases:
        parser.error(f"--databases: unknown {', '.join(sorted(unknown)) or '(none given)'}; choose from "
                     f"{', '.join(DATABASES)}")
    if args.rows[0] < 1:
        parser.error("--rows must be at least 1")
    return args


def stage_commands(rows, trades, reports):
    """(stage name, script and its arguments) of each stage, in the order they run."""
    return [
        ("generate", ["generate_dummy_data.py", "--rows", str(rows), "--seed", str(SEED), "--out", trades]),
        ("seed", ["seed_investors.py"]),
        ("load", ["load_transactions.py", trades]),
        ("update", ["update_portfolio.py"]),
        ("surveillance", ["surveillance.py"]),
        ("analyze", ["analyze.py", "--reports", reports]),
        ("update --full", ["update_portfolio.py", "--full"]),
        ("surveillance --full", ["surveillance.py", "--full"]),
    ]


def check_loaded(url, rows):
    """RuntimeError unless the transactions table holds `rows` trades."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar()
    finally:
        engine.dispose()
    if found != rows:
        raise RuntimeError(f"the load left {found:,} trades in transactions, expected {rows:,}")


def run_stages(kind, rows, args, workdir):
    """Yield (stage name, bench_memory.ProcessRun) of each stage run on a fresh database; CalledProcessError or
    RuntimeError stops the chain. The database and the files are removed at the end unless --keep."""
    folder = os.path.join(workdir, f"{kind}_{rows}")
    os.makedirs(folder, exist_ok=True)
    url, drop = fresh_database(kind, folder, args.mariadb_url, args.postgres_url)
    try:
        for name, command in stage_commands(rows, os.path.join(folder, "trades.csv"), os.path.join(folder, "reports")):
            log(f"{kind}, {rows:,} trades: {name}")
            yield name, measured([sys.executable, *command, "--database-url", url, "--quiet"])
            if name == "load":
                check_loaded(url, rows)
    finally:
        if args.keep:
            log(f"kept {folder} and the database {url}")
        else:
            drop()
            shutil.rmtree(folder, ignore_errors=True)


def measure_database(kind, args, workdir):
    """{rows: {stage: ProcessRun}} of one database, and the failures as text (a failed chain stops at its stage)."""
    runs, failures = {}, []
    for rows in args.rows:
        runs[rows] = {}
        try:
            for name, run in run_stages(kind, rows, args, workdir):
                runs[rows][name] = run
        except subprocess.CalledProcessError as error:
            last = (error.stderr or "").strip().splitlines()[-1:] or [f"exit code {error.returncode}"]
            failures.append(f"{kind}, {rows:,} trades: {' '.join(error.cmd[1:2])} failed: {last[0]}")
        except RuntimeError as error:
            failures.append(f"{kind}, {rows:,} trades: {error}")
    for failure in failures:
        log(failure)
    return runs, failures


def size_label(rows):
    """1M, 10M, 200k, 1.5M: a trade count as the tables name it."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % (size // 10) == 0:
            return f"{rows / size:g}{unit}"
    return f"{rows:,}"


def table_lines(kind, runs, sizes):
    """One database's table: a row per stage, seconds and peak RSS per size, and the time ratio largest/smallest."""
    first, last = sizes[0], sizes[-1]
    allowed = TIME_SLACK * last / first
    names = [f"{size_label(rows)} seconds" for rows in sizes]
    if len(sizes) > 1:
        names.append(f"{size_label(last)}/{size_label(first)} (target <= {allowed:g})")
    names += [f"peak RSS {size_label(rows)}" for rows in sizes[:-1]] + [f"peak RSS {size_label(last)} (target < 1 GB)"]
    lines = [f"\n{kind}", timing.markdown_header(["stage", *names])]
    for name, _ in stage_commands(0, "", ""):
        measured_runs = [runs[rows].get(name) for rows in sizes]
        cells = [f"{run.seconds:.2f}" if run else "-" for run in measured_runs]
        if len(sizes) > 1:
            cells.append(ratio_cell(measured_runs[0], measured_runs[-1], allowed))
        cells += [rss_cell(run, rows == last) for run, rows in zip(measured_runs, sizes)]
        lines.append(timing.markdown_row([name, *cells]))
    return lines


def ratio_cell(small, large, allowed):
    if not (small and large):
        return "-"
    ratio = timing.Figure("largest", large.seconds, "smallest", small.seconds).time_ratio
    return f"{ratio:.2f}" + (" !" if ratio > allowed else "")


def rss_cell(run, checked):
    if not run:
        return "-"
    return f"{run.peak_rss_kib / 1024:.0f} MiB" + (" !" if checked and run.peak_rss_kib >= RSS_LIMIT_KIB else "")


def report_lines(args, results, started):
    lines = [f"stock-etl scale benchmark, {started}", f"command: {' '.join([sys.executable, *sys.argv])}",
             timing.machine_line([url for kind, url in (("mariadb", args.mariadb_url),
                                                        ("postgresql", args.postgres_url)) if kind in args.databases])]
    for kind, (runs, failures) in results.items():
        lines += table_lines(kind, runs, args.rows) + [f"failed: {failure}" for failure in failures]
    return lines + ["", "! = misses its target; - = not measured (an earlier stage failed)"]


def as_json(results):
    return {kind: {"failures": failures,
                   "sizes": {str(rows): {name: run._asdict() for name, run in stages.items()}
                             for rows, stages in runs.items()}}
            for kind, (runs, failures) in results.items()}


def main(argv=None):
    args = parse_args(argv)
    started = datetime.now().isoformat(timespec="seconds")
    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="stocketl-scale-")
    os.makedirs(workdir, exist_ok=True)
    try:
        results = {kind: measure_database(kind, args, workdir) for kind in args.databases}
    finally:
        if not (args.workdir or args.keep):
            shutil.rmtree(workdir, ignore_errors=True)
    report = "\n".join(report_lines(args, results, started))
    print(report)
    if args.write:
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write(report + "\n\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"started": started, "rows": args.rows, "databases": as_json(results)}, handle, indent=2)
    return 1 if any(failures for _, failures in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
