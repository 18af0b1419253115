"""Benchmark the trade loader beside the raw bulk path of each database.

For each size of --rows (a file of that many generated trades: generate_dummy_data's files, seed 7, fee column
included) and each database of --databases, each load goes into its own fresh database with the schema
(db_config.get_engine) and the seeded reference data (seed_investors.seed_reference_data), so the table has the
same keys, indexes, CHECKs and foreign keys:
- ours:  load_transactions.load_file(engine, path), checked: every row read and loaded, 0 duplicates, 0 rejected;
- raw, the reference: the database's own bulk path into the same table, on a raw connection of the same engine:
  SQLite one executemany of every row in one transaction (rows parsed with the csv module before the clock,
  batch_id NULL); MariaDB LOAD DATA LOCAL INFILE of the CSV (IGNORE 1 LINES); PostgreSQL
  COPY transactions (columns) FROM STDIN WITH (FORMAT csv, HEADER true) of the file, through psycopg's cursor.copy.
Both are checked with SELECT COUNT(*) = N. Ours and raw run in turns, --runs times (a fresh database each time);
the table shows their medians and ours' speed as a share of raw's: speed_share = raw seconds / ours seconds (target
>= 0.85). The machine may be shared: each timing starts after the machine has used fewer than --quiet-cores for 2 s.
When the share is below --profile-below, one more load of ours runs under cProfile (not timed; the loader's worker
process off, so that cProfile sees every part) and its top functions by own time are printed.

Usage (from the project folder, with the project's virtualenv):
    python bench/bench_load.py --quick          # 20,000 trades, 1 run, no wait for quiet, each database
    python bench/bench_load.py                  # 400,000 and 1,000,000 trades, median of 3 runs
    python bench/bench_load.py --rows 1000000 --databases mariadb --json bench/results-load.json

The table goes to stdout, progress to stderr. Exit code 0 when every measurement ran and checked out, else 1.
"""
import argparse
import contextlib
import cProfile
import csv
import gc
import hashlib
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from datetime import datetime
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sqlalchemy import text  # noqa: E402

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
import timing  # noqa: E402
from bench_pipeline import DATABASES, MARIADB_URL, POSTGRES_URL, fresh_database  # noqa: E402

DEFAULT_ROWS = "400000,1000000"
QUICK_ROWS = 20_000
SEED = 7
TARGET = 0.85  # ours' speed as a share of raw's, at least
INTEGER_COLUMNS = {"investor_id", "quantity"}  # bound as int by the SQLite raw insert, as the loader binds them
COPY_BLOCK_BYTES = 1 << 20
RAW_METHODS = {"sqlite": "sqlite3 executemany, one transaction", "mariadb": "LOAD DATA LOCAL INFILE of the CSV",
               "postgresql": "COPY ... FROM STDIN (FORMAT csv) of the CSV"}
MEASURED_MODULES = ("load_transactions.py", "bulk_insert.py", "validation.py", "batches.py", "db_config.py",
                    "dialects.py", "schema.py")


class Bench(NamedTuple):
    """Where the fresh databases go and how quiet the machine must be before a timing."""
    workdir: str
    servers: tuple  # (MariaDB server URL, PostgreSQL maintenance database URL)
    quiet_cores: float
    quiet_timeout: float


def log(message):
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", help=f"comma-separated trade counts (default: {DEFAULT_ROWS}; {QUICK_ROWS} with "
                                       "--quick)")
    parser.add_argument("--quick", action="store_true", help=f"a fast check that everything works: {QUICK_ROWS:,} "
                                                             "trades, 1 run")
    parser.add_argument("--runs", type=int, help="runs of ours and of raw; the median is shown (default: 3; "
                                                 "1 with --quick)")
    parser.add_argument("--databases", default=",".join(DATABASES),
                        help="comma-separated, from: sqlite, mariadb, postgresql (default: %(default)s)")
    parser.add_argument("--mariadb-url", default=MARIADB_URL, help="MariaDB server URL; fresh databases are "
                                                                   "created and dropped there (default: %(default)s)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL maintenance database URL (default: %(default)s)")
    parser.add_argument("--workdir", help="where the CSV and SQLite files go (default: a temporary directory, "
                                          "removed at the end); an explicit --workdir is kept")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--profile-below", type=float, default=0.7,
                        help="profile ours when its speed share is below this; 0 never (default: %(default)s)")
    parser.add_argument("--profile-top", type=int, default=15, help="functions listed per profile "
                                                                    "(default: %(default)s)")
    parser.add_argument("--quiet-cores", type=float, default=0.25,
                        help="before each timing, wait until the machine uses fewer cores than this for 2 s "
                             "(default: %(default)s)")
    parser.add_argument("--quiet-timeout", type=float,
                        help="longest wait for quiet, in seconds, then measure anyway; 0 never waits "
                             "(default: 300; 0 with --quick)")
    args = parser.parse_args(argv)
    args.rows = [int(rows) for rows in (args.rows or (str(QUICK_ROWS) if args.quick else DEFAULT_ROWS)).split(",")]
    args.runs = args.runs or (1 if args.quick else 3)
    if args.quiet_timeout is None:
        args.quiet_timeout = 0 if args.quick else 300
    args.databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    unknown = set(args.databases) - set(DATABASES)
    if unknown or not args.databases:
        parser.error(f"--databases: unknown {', '.join(sorted(unknown)) or '(none given)'}; choose from "
                     f"{', '.join(DATABASES)}")
    if min(args.rows) < 1 or args.runs < 1:
        parser.error("--rows and --runs must be at least 1")
    return args


# ------------------------------------------------------------------------------------------------ quiet machine

def busy_cores(seconds=1.0):
    """Cores the whole machine kept busy over the next `seconds` (/proc/stat: all but idle and iowait)."""
    def busy_and_total():
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(value) for value in handle.readline().split()[1:9]]
        return sum(values) - values[3] - values[4], sum(values)
    busy, total = busy_and_total()
    time.sleep(seconds)
    busy_after, total_after = busy_and_total()
    return (busy_after - busy) / max(total_after - total, 1) * (os.cpu_count() or 1)


def wait_for_quiet(bench, label):
    """Wait until the machine (this process idle meanwhile) used under bench.quiet_cores for 2 s in a row, at most
    bench.quiet_timeout seconds; then collect garbage, so that earlier work does not leak into the timing."""
    started, quiet_seconds, used = time.perf_counter(), 0, 0.0
    while quiet_seconds < 2 and time.perf_counter() - started < bench.quiet_timeout and os.path.exists("/proc/stat"):
        used = busy_cores()
        quiet_seconds = quiet_seconds + 1 if used < bench.quiet_cores else 0
        if quiet_seconds == 0 and 3 <= time.perf_counter() - started < 4:
            log(f"{label}: waiting for the machine to go quiet ({used:.2f} cores busy)")
    waited = time.perf_counter() - started
    if waited >= 4:
        log(f"{label}: {'measuring anyway, ' if quiet_seconds < 2 else ''}{used:.2f} cores busy after {waited:.0f} s")
    gc.collect()


# ------------------------------------------------------------------------------------------------ measurements

@contextlib.contextmanager
def seeded_database(kind, bench):
    """An engine on a fresh database with the schema and the seeded reference data; dropped afterwards."""
    url, drop = fresh_database(kind, bench.workdir, *bench.servers)
    engine = db_config.get_engine(url)
    try:
        seed_investors.seed_reference_data(engine)
        yield engine
    finally:
        engine.dispose()
        drop()


def check_count(engine, expected, method):
    with engine.connect() as connection:
        found = connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar()
    if found != expected:
        raise RuntimeError(f"{method}: transactions holds {found} rows, expected {expected}")


def check_summary(summary, rows):
    """RuntimeError unless the load read and loaded every row, with no duplicate and no reject."""
    counts = (summary.skipped_batch, summary.rows_read, summary.rows_loaded, summary.rows_duplicate,
              summary.rows_rejected)
    if counts != (None, rows, rows, 0, 0):
        raise RuntimeError(f"ours: {summary.line()}; expected {rows} read and loaded, 0 duplicates, 0 rejected")


def measure_ours(kind, bench, csv_path, rows):
    """(seconds, summary line) of load_file into a fresh seeded database, checked."""
    with seeded_database(kind, bench) as engine:
        wait_for_quiet(bench, f"{kind} ours")
        seconds, summary = timing.timed(load_transactions.load_file, engine, csv_path)
        check_summary(summary, rows)
        check_count(engine, rows, "ours")
    return seconds, summary.line()


def measure_raw(kind, bench, csv_path, rows):
    """(seconds, None) of the database's raw bulk path into a fresh seeded database, checked."""
    with seeded_database(kind, bench) as engine:
        connection = engine.raw_connection()
        try:
            load = RAW_LOADS[kind](connection.driver_connection, csv_path)
            wait_for_quiet(bench, f"{kind} raw")
            seconds, _ = timing.timed(load)
        finally:
            connection.close()
        check_count(engine, rows, "raw")
    return seconds, None


def csv_columns(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def raw_sqlite(connection, csv_path):
    """The SQLite raw load: every row parsed now, off the clock; the load is one executemany in one transaction."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        integers = [index for index, column in enumerate(columns) if column in INTEGER_COLUMNS]
        rows = []
        for row in reader:
            for index in integers:
                row[index] = int(row[index])
            rows.append(row)
    statement = f"INSERT INTO transactions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

    def load():
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.executemany(statement, rows)
        cursor.execute("COMMIT")
    return load


def raw_mariadb(connection, csv_path):
    """The MariaDB raw load: LOAD DATA LOCAL INFILE of the CSV file, one commit."""
    path = os.path.abspath(csv_path)
    statement = ("LOAD DATA LOCAL INFILE %s INTO TABLE transactions CHARACTER SET utf8mb4 FIELDS TERMINATED BY ',' "
                 "OPTIONALLY ENCLOSED BY '\"' LINES TERMINATED BY '\\n' "
                 f"IGNORE 1 LINES ({', '.join(csv_columns(path))})")

    def load():
        with db_config.local_file_allowed(connection, path), connection.cursor() as cursor:
            cursor.execute(statement, (path,))
        connection.commit()
    return load


def raw_postgresql(connection, csv_path):
    """The PostgreSQL raw load: COPY of the CSV file (header skipped by the server), one commit."""
    statement = f"COPY transactions ({', '.join(csv_columns(csv_path))}) FROM STDIN WITH (FORMAT csv, HEADER true)"

    def load():
        with open(csv_path, "rb") as handle, connection.cursor() as cursor, cursor.copy(statement) as copy:
            while block := handle.read(COPY_BLOCK_BYTES):
                copy.write(block)
        connection.commit()
    return load


RAW_LOADS = {"sqlite": raw_sqlite, "mariadb": raw_mariadb, "postgresql": raw_postgresql}


@contextlib.contextmanager
def serial_loader():
    """Run the loader without its worker process (everything in this process)."""
    saved = load_transactions.BACKGROUND_MIN_BYTES
    load_transactions.BACKGROUND_MIN_BYTES = sys.maxsize
    try:
        yield
    finally:
        load_transactions.BACKGROUND_MIN_BYTES = saved


def profile_ours(kind, bench, csv_path, top):
    """One more load of ours under cProfile, worker process off: the top functions by own time, as text."""
    profiler = cProfile.Profile()
    with seeded_database(kind, bench) as engine, serial_loader():
        profiler.runcall(load_transactions.load_file, engine, csv_path)
    listing = io.StringIO()
    pstats.Stats(profiler, stream=listing).strip_dirs().sort_stats("tottime").print_stats(top)
    return listing.getvalue()


def measure_database(kind, bench, csv_path, rows, args):
    """Ours beside raw on one database: a JSON-ready dict (with the profile when ours is slow)."""
    measured = timing.medians({"ours": lambda: measure_ours(kind, bench, csv_path, rows),
                               "raw": lambda: measure_raw(kind, bench, csv_path, rows)}, args.runs)
    figure = timing.Figure.of("ours", measured["ours"], "raw", measured["raw"])
    outcome = {"ours_beside_raw": figure.as_dict(), "raw_method": RAW_METHODS[kind],
               "ours_summary": measured["ours"].results[-1]}
    log(f"{kind}, {rows:,} trades: ours {figure.seconds:.2f} s, raw {figure.reference_seconds:.2f} s, "
        f"speed share {figure.speed_share:.2f}")
    if figure.speed_share < args.profile_below:
        log(f"{kind}: profiling ours")
        outcome["profile"] = profile_ours(kind, bench, csv_path, args.profile_top)
    return figure, outcome


# ------------------------------------------------------------------------------------------------ report and main

def generate(csv_path, rows):
    """Write the trades file (and its prices and corporate actions files); return the generation's seconds."""
    seconds, _ = timing.timed(generate_dummy_data.write_files, csv_path, rows, SEED)
    log(f"generated {rows:,} trades ({os.path.getsize(csv_path) / 1e6:.1f} MB) in {seconds:.1f} s")
    return seconds


def module_digests():
    """The SHA-256 (16 hex digits) of the modules a load runs: others may be editing them during a run."""
    digests = {}
    for name in MEASURED_MODULES:
        with open(os.path.join(ROOT, name), "rb") as handle:
            digests[name] = hashlib.sha256(handle.read()).hexdigest()[:16]
    return digests


def measure_size(rows, args, bench, report):
    """Generate a file of `rows` trades and measure it on each database; a failing database is reported and the
    run goes on. Returns False when one failed."""
    csv_path = os.path.join(bench.workdir, f"trades_{rows}.csv")
    size = {"rows": rows, "generation_seconds": generate(csv_path, rows), "file_bytes": os.path.getsize(csv_path),
            "databases": {}}
    report["sizes"].append(size)
    ok = True
    for kind in args.databases:
        try:
            figure, size["databases"][kind] = measure_database(kind, bench, csv_path, rows, args)
        except Exception as error:  # the other databases are still measured; the exit code says it failed
            size["databases"][kind] = {"error": f"{type(error).__name__}: {error}"}
            log(f"{kind}, {rows:,} trades: {size['databases'][kind]['error']}")
            print(timing.markdown_row([kind, f"{rows:,}", "failed", "", ""]), flush=True)
            ok = False
            continue
        print(timing.figure_row([kind, f"{rows:,}"], figure, "speed_share"), flush=True)
    return ok


def print_profiles(report):
    for size in report["sizes"]:
        for kind, outcome in size["databases"].items():
            if "profile" in outcome:
                print(f"\ncProfile of ours, {kind}, {size['rows']:,} trades (worker process off, not timed):\n"
                      f"{outcome['profile'].strip()}")


def main(argv=None):
    args = parse_args(argv)
    own_workdir = args.workdir is None
    workdir = tempfile.mkdtemp(prefix="stocketl-bench-") if own_workdir else os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    bench = Bench(workdir, (args.mariadb_url, args.postgres_url), args.quiet_cores, args.quiet_timeout)
    servers = [url for kind, url in zip(("mariadb", "postgresql"), bench.servers) if kind in args.databases]
    report = {"machine": timing.machine_line(servers), "command": " ".join([sys.executable, *sys.argv]),
              "started": datetime.now().isoformat(timespec="seconds"), "runs": args.runs, "seed": SEED,
              "target_speed_share": TARGET, "modules_sha256": module_digests(), "sizes": []}
    print(f"{report['machine']}\nmedian of {args.runs} run(s); raw: "
          + "; ".join(f"{kind} {RAW_METHODS[kind]}" for kind in args.databases))
    print(timing.markdown_header(["database", "trades", "ours (load_file)", "raw bulk path",
                                  f"ours speed / raw = raw s / ours s (target >= {TARGET})"]))
    try:
        ok = all([measure_size(rows, args, bench, report) for rows in args.rows])
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_profiles(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
        log(f"results written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
