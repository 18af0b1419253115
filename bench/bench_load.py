"""Benchmark the trade loader against the raw limit of each database and against pandas `to_sql`.

One run measures, on one generated file of N trades (generate_dummy_data, --seed 7):

1. generation: rows/s of generate_dummy_data.main() in-process (trades CSV and market_prices.csv);
2. for each database (SQLite: a fresh file; MariaDB: a fresh database, created and dropped here), each method
   into its own fresh database with the schema from db_config.get_engine and the seeded reference data, so the
   table has the same keys, indexes, CHECKs and foreign keys:
   - ours:    load_transactions.load_file(engine, path), checked: every row loaded, 0 duplicates, 0 rejected;
              then a second load_file of the same file (skipped by SHA-256), timed in seconds;
   - raw:     SQLite: plain sqlite3 executemany of every row in one transaction (rows parsed with the csv
              module before the clock starts, batch_id NULL); MariaDB: LOAD DATA LOCAL INFILE of the same CSV
              file (IGNORE 1 LINES) through pymysql with local_infile=True;
   - to_sql:  DataFrame.to_sql('transactions', engine, if_exists='append', index=False) of pd.read_csv(path),
              read before the clock starts (index=False because the table has no `index` column; no chunksize,
              no method).
   Every method is checked afterwards with SELECT COUNT(*) = N.
   When the loader prepares chunks in a worker process for a file this large (load_transactions.
   BACKGROUND_MIN_BYTES), ours is also timed with that worker off ("serial"), to show what the overlap gains.
3. When ours/raw is below --profile-below (0.7), one more load of ours into another fresh database runs under
   cProfile (not timed; worker process off, so that cProfile sees every phase) and the hot spots are reported.

The machine may be shared (here: 2 cores, other sessions running tests). Each timing starts only after other
processes have used under --quiet-cores for 2 s; the CPU use of this process (and its children), of the local
database server and of everything else during each timing is read from /proc and shown; a timing disturbed
by other processes is measured again (--retries) and the least disturbed attempt is reported.

Usage (from the project root, with the project's virtualenv):
    python bench/bench_load.py --quick
    python bench/bench_load.py --rows 1000000 --databases sqlite,mariadb --json bench/results-load.json

The table goes to stdout, progress to stderr. Exit code 0 when every measurement ran and checked out, else 1.
"""
import argparse
import contextlib
import cProfile
import csv
import gc
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pandas as pd  # noqa: E402
import pymysql  # noqa: E402
import sqlalchemy  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402

QUICK_ROWS = 20_000
DEFAULT_ROWS = 1_000_000
SEED = 7
RAW_COLUMNS = ("txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time")
DATABASES = ("sqlite", "mariadb")
# Functions whose cumulative time (under cProfile) splits a load into phases.
PHASES = (
    ("load_transactions.py", "load_file", "load_file (total, profiled)"),
    ("validation.py", "file_sha256", "file_sha256 (SHA-256 of the file)"),
    ("load_transactions.py", "iter_batches", "iter_batches: read + parse chunks"),
    ("load_transactions.py", "parse_chunk", "  parse_chunk"),
    ("load_transactions.py", "_plain_data", "    _plain_data (byte-level check for the fast path)"),
    ("load_transactions.py", "_parse_records", "    _parse_records (csv module, record by record)"),
    ("load_transactions.py", "_trade_batch", "    _trade_batch (DataFrame of text cells)"),
    ("load_transactions.py", "prepare_chunk", "prepare_chunk (validate, set repeats aside)"),
    ("validation.py", "validate_trades", "validate_trades"),
    ("validation.py", "_date_times", "  _date_times"),
    ("validation.py", "_whole_numbers", "  _whole_numbers"),
    ("validation.py", "_plain_decimals", "  _plain_decimals"),
    ("validation.py", "_printable_ascii", "  _printable_ascii"),
    ("validation.py", "_reasons", "  _reasons"),
    ("load_transactions.py", "store_chunk", "store_chunk (insert + classify one chunk)"),
    ("bulk_insert.py", "_insert_sqlite", "    _insert_sqlite (executemany)"),
    ("bulk_insert.py", "_load_data_local_infile", "    _load_data_local_infile (TSV + LOAD DATA)"),
    ("bulk_insert.py", "_insert_ignore_mysql", "    _insert_ignore_mysql"),
    ("load_transactions.py", "skipped_rows", "  skipped_rows"),
    ("load_transactions.py", "classify_against_stored", "  classify_against_stored"),
    ("load_transactions.py", "store_rejects", "  store_rejects"),
    ("batches.py", "finish_batch", "finish_batch"),
    ("load_transactions.py", "in_background", "in_background (waiting on the worker process)"),
)


def log(message):
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help=f"trades to generate and load (default {DEFAULT_ROWS:,}; "
                                                 f"{QUICK_ROWS:,} with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"a fast check that everything works ({QUICK_ROWS:,} rows)")
    parser.add_argument("--databases", default="sqlite,mariadb",
                        help="comma-separated, from: sqlite, mariadb (default: %(default)s)")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root:@127.0.0.1:3306",
                        help="server URL without a database; fresh databases are created and dropped there "
                             "(default: %(default)s)")
    parser.add_argument("--workdir", help="where the CSV and SQLite files go (default: a temporary directory, "
                                          "removed at the end); an explicit --workdir is kept")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--profile-below", type=float, default=0.7,
                        help="profile ours with cProfile when ours/raw is below this ratio; 0 never, "
                             "a large number always (default: %(default)s)")
    parser.add_argument("--quiet-cores", type=float, default=0.25,
                        help="before each timing, wait until other processes use fewer cores than this for 2 s "
                             "(default: %(default)s)")
    parser.add_argument("--quiet-timeout", type=float, default=600,
                        help="longest wait for quiet, in seconds, then measure anyway and flag it; 0 never waits "
                             "(default: %(default)s)")
    parser.add_argument("--retries", type=int, default=2,
                        help="measure again (a fresh database each time) when other processes used more than "
                             "--quiet-cores during a timing, at most this many times; the least disturbed "
                             "attempt is reported (default: %(default)s)")
    parser.add_argument("--profile-top", type=int, default=15, help="hot spots listed per profile (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = QUICK_ROWS if args.quick else DEFAULT_ROWS
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    args.databases = [name.strip().lower() for name in args.databases.split(",") if name.strip()]
    unknown = [name for name in args.databases if name not in DATABASES]
    if unknown or not args.databases:
        parser.error(f"--databases: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(DATABASES)}")
    return args


# ------------------------------------------------------------------------------------------------ helpers

class CpuMeter:
    """Who used the CPUs during a measurement, from /proc (Linux): this process, the local database server,
    and everything else. The machine is shared (2 cores here), so a timing is only trusted when the other
    processes stayed quiet; before each timing `wait_quiet` waits until they are."""

    SERVER_NAMES = ("mariadbd", "mysqld")

    def __init__(self, quiet_cores=0.25, quiet_timeout=300.0):
        self.quiet_cores, self.quiet_timeout = quiet_cores, quiet_timeout
        self.available = os.path.exists("/proc/stat")
        self.ticks = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.cpus = os.cpu_count() or 1
        self.server_pids = self._find_server_pids() if self.available else []
        self.server_in_use = True  # False while measuring SQLite: the server's CPU then counts as "other"
        self.last = None

    def _find_server_pids(self):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/comm") as handle:
                        if handle.read().strip() in self.SERVER_NAMES:
                            pids.append(entry)
                except OSError:
                    continue
        return pids

    def _process_table(self):
        """{pid: (parent pid, CPU seconds incl. its waited-for children, name)} of every process."""
        table = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    content = handle.read()
                name, rest = content[content.index("(") + 1:content.rindex(")")], content[content.rindex(")") + 1:]
                fields = rest.split()
            except (OSError, ValueError):
                continue
            try:
                cpu = sum(int(value) for value in fields[11:15]) / self.ticks  # utime stime cutime cstime
                table[int(entry)] = (int(fields[1]), cpu, name)
            except (IndexError, ValueError):
                continue
        return table

    def sample(self):
        """(wall, machine busy seconds, CPU seconds of this process and its descendants, of the database server).

        The loader may hand work to child processes or threads: they count as this process ("own")."""
        wall = time.perf_counter()
        if not self.available:
            return wall, 0.0, sum(os.times()[:4]), 0.0, {}, set()
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
        busy = (sum(values) - values[3] - values[4]) / self.ticks  # all but idle and iowait
        table = self._process_table()
        tree, grown = {os.getpid()}, True
        while grown:
            before = len(tree)
            tree |= {pid for pid, (parent, _, _) in table.items() if parent in tree}
            grown = len(tree) != before
        own = sum(table[pid][1] for pid in tree if pid in table)
        server = sum(table[int(pid)][1] for pid in self.server_pids if int(pid) in table)
        return wall, busy, own, server, table, tree

    def usage(self, start, end):
        """CPU use between two samples, in cores (1.0 = one core busy the whole time)."""
        wall = max(end[0] - start[0], 1e-9)
        busy, own, server = ((end[i] - start[i]) / wall for i in (1, 2, 3))
        if not self.server_in_use:
            server = 0.0
        skip = ({int(pid) for pid in self.server_pids} if self.server_in_use else set()) | start[5] | end[5]
        # processes alive at both ends, and those started meanwhile (those that also ended are not seen)
        others = sorted(((end[4][pid][1] - (start[4][pid][1] if pid in start[4] else 0.0)) / wall,
                         f"{end[4][pid][2]}[{pid}]{'' if pid in start[4] else ' (new)'}")
                        for pid in end[4] if pid not in skip)
        return {"own_cores": round(own, 3), "server_cores": round(server, 3),
                "other_cores": round(max(0.0, busy - own - server), 3), "machine_busy_cores": round(busy, 3),
                "top_other": [[name, round(cores, 3)] for cores, name in reversed(others[-3:]) if cores > 0]}

    def wait_quiet(self, label):
        """Wait until other processes use under `quiet_cores` for 2 s in a row (at most quiet_timeout s)."""
        if not self.available or self.quiet_timeout <= 0:
            return 0.0
        started, quiet_seconds, told = time.perf_counter(), 0, False
        while True:
            before = self.sample()
            time.sleep(1.0)
            other = self.usage(before, self.sample())
            other = other["other_cores"] + other["server_cores"]  # an idle server should be idle too
            quiet_seconds = quiet_seconds + 1 if other < self.quiet_cores else 0
            waited = time.perf_counter() - started
            if quiet_seconds >= 2:
                if told:
                    log(f"{label}: machine quiet after {waited:.0f} s")
                return waited
            if waited >= self.quiet_timeout:
                log(f"{label}: other processes still use {other:.2f} cores after {waited:.0f} s; measuring anyway")
                return waited
            if not told and waited >= 3:
                log(f"{label}: waiting for other processes to go quiet ({other:.2f} cores busy)")
                told = True


CPU = CpuMeter()


def timed(function, *args, label="", **kwargs):
    """(result, seconds) of one call on a quiet machine, after a full garbage collection so earlier work
    does not leak in; CPU.last holds who used the CPUs meanwhile (and how long the wait for quiet took)."""
    waited = CPU.wait_quiet(label)
    gc.collect()
    before = CPU.sample()
    started = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - started
    CPU.last = dict(CPU.usage(before, CPU.sample()), waited_for_quiet_s=round(waited, 1))
    return result, seconds


def rate(rows, seconds):
    return rows / seconds if seconds > 0 else float("inf")


def count_transactions(engine):
    with engine.connect() as connection:
        return connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar()


def check_count(engine, expected, method):
    found = count_transactions(engine)
    if found != expected:
        raise RuntimeError(f"{method}: transactions holds {found} rows, expected {expected}")
    return found


class Target:
    """Fresh databases of one kind: `create(tag)` returns a URL of a new empty database, `drop_all()` cleans up."""

    def __init__(self, kind, workdir, mariadb_url, run_id):
        self.kind, self.workdir, self.run_id = kind, workdir, run_id
        self.server_url = make_url(mariadb_url) if kind == "mariadb" else None
        self.created = []

    def create(self, tag):
        if self.kind == "sqlite":
            path = os.path.join(self.workdir, f"bench_{tag}.db")
            self._remove_sqlite(path)
            self.created.append(path)
            return f"sqlite:///{path}"
        name = f"stocketl_bench_{self.run_id}_{tag}"
        self._server_execute(f"DROP DATABASE IF EXISTS `{name}`")
        self._server_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        self.created.append(name)
        return self.server_url.set(database=name).render_as_string(hide_password=False)

    def fresh_engine(self, tag):
        """An engine (db_config.get_engine) on a new database with the schema and the seeded reference data."""
        engine = db_config.get_engine(self.create(tag))
        seed_investors.seed_reference_data(engine)
        return engine

    def drop(self, url):
        url = make_url(url)
        if self.kind == "sqlite":
            self._remove_sqlite(url.database)
            if url.database in self.created:
                self.created.remove(url.database)
        else:
            self._server_execute(f"DROP DATABASE IF EXISTS `{url.database}`")
            if url.database in self.created:
                self.created.remove(url.database)

    def drop_all(self):
        for item in list(self.created):
            try:
                if self.kind == "sqlite":
                    self._remove_sqlite(item)
                else:
                    self._server_execute(f"DROP DATABASE IF EXISTS `{item}`")
            except Exception as error:  # clean up what can be cleaned up; say what could not
                log(f"could not drop {item}: {error}")
        self.created.clear()

    @staticmethod
    def _remove_sqlite(path):
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)

    def _server_execute(self, statement):
        server = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        try:
            with server.connect() as connection:
                connection.exec_driver_sql(statement)
        finally:
            server.dispose()


# ------------------------------------------------------------------------------------------------ measurements

def with_retries(measure, retries, label):
    """Call measure() (a fresh database each time) until other processes stayed quiet during its timing, at
    most 1 + retries times; return the least disturbed result, with every attempt's seconds and CPU."""
    attempts = []
    for attempt in range(retries + 1):
        outcome = measure()
        result = outcome[0] if isinstance(outcome, tuple) else outcome
        attempts.append((result["cpu"]["other_cores"] if result.get("cpu") else 0.0, attempt, outcome))
        if result.get("cpu") is None or result["cpu"]["other_cores"] <= CPU.quiet_cores:
            break
        if attempt < retries:
            log(f"{label}: other processes used {result['cpu']['other_cores']:.2f} cores during the timing "
                f"({result['seconds']:.2f} s); measuring again")
    best = min(attempts, key=lambda item: (item[0], item[1]))[2]
    chosen = best[0] if isinstance(best, tuple) else best
    chosen["attempts"] = [{"seconds": (o[0] if isinstance(o, tuple) else o)["seconds"], "other_cores": other}
                          for other, _, o in attempts]
    return best


def measure_generation(rows, csv_path):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code, seconds = timed(generate_dummy_data.main, ["--rows", str(rows), "--seed", str(SEED), "--out", csv_path],
                              label="generation")
    if code != 0:
        raise RuntimeError(f"generate_dummy_data exited with {code}: {buffer.getvalue().strip()}")
    log(buffer.getvalue().strip())
    return {"rows": rows, "seconds": seconds, "rows_per_s": rate(rows, seconds),
            "file_bytes": os.path.getsize(csv_path), "cpu": CPU.last}


def worker_process_used(csv_path):
    """Whether the loader hands parsing to a worker process for this file (loaders that can: see
    load_transactions.BACKGROUND_MIN_BYTES); None when the loader has no such worker."""
    limit = getattr(load_transactions, "BACKGROUND_MIN_BYTES", None)
    return None if limit is None else os.path.getsize(csv_path) > limit


@contextlib.contextmanager
def serial_loader():
    """Run the loader without its worker process (everything in this process), if it has one."""
    if not hasattr(load_transactions, "BACKGROUND_MIN_BYTES"):
        yield
        return
    saved = load_transactions.BACKGROUND_MIN_BYTES
    load_transactions.BACKGROUND_MIN_BYTES = sys.maxsize
    try:
        yield
    finally:
        load_transactions.BACKGROUND_MIN_BYTES = saved


def measure_ours(target, csv_path, rows, serial=False):
    """Time load_file into a fresh seeded database and check its summary; then time the skipped re-run.
    serial: with the loader's worker process off. Returns (result, re-run result or None)."""
    engine = target.fresh_engine("ours_serial" if serial else "ours")
    url = engine.url
    label = f"{target.kind} ours{' serial' if serial else ''}"
    try:
        with serial_loader() if serial else contextlib.nullcontext():
            summary, seconds = timed(load_transactions.load_file, engine, csv_path, label=label)
        cpu = CPU.last
        problems = []
        if summary.skipped_batch is not None:
            problems.append(f"skipped as already loaded in batch {summary.skipped_batch}")
        if summary.rows_read != rows or summary.rows_loaded != rows:
            problems.append(f"{summary.rows_read} read and {summary.rows_loaded} loaded, expected {rows}")
        if summary.rows_rejected or summary.rows_duplicate:
            problems.append(f"{summary.rows_rejected} rejected and {summary.rows_duplicate} duplicates, expected 0")
        if problems:
            raise RuntimeError(f"{label}: {'; '.join(problems)} ({summary.line()})")
        check_count(engine, rows, label)
        result = {"seconds": seconds, "rows_per_s": rate(rows, seconds), "summary": summary.line(),
                  "rows_loaded": summary.rows_loaded, "rows_rejected": summary.rows_rejected,
                  "rows_duplicate": summary.rows_duplicate, "batch_id": summary.batch_id, "cpu": cpu}
        if serial:
            return result, None
        again, rerun_seconds = timed(load_transactions.load_file, engine, csv_path, label=f"{target.kind} re-run")
        if again.skipped_batch is None:
            raise RuntimeError(f"ours re-run: the file was not skipped as already loaded ({again.line()})")
        check_count(engine, rows, "ours re-run")
        rerun = {"seconds": rerun_seconds, "skipped_batch": again.skipped_batch, "summary": again.line(), "cpu": CPU.last}
        return result, rerun
    finally:
        engine.dispose()
        target.drop(url.render_as_string(hide_password=False))


def read_rows_for_sqlite(csv_path):
    """Every data row as the tuple the raw insert binds: text cells, investor_id and quantity as int
    (the types our loader binds), batch_id NULL."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        index = [header.index(column) for column in RAW_COLUMNS]
        return [(row[index[0]], int(row[index[1]]), row[index[2]], row[index[3]], int(row[index[4]]),
                 row[index[5]], row[index[6]], None) for row in reader]


def measure_raw_sqlite(target, csv_path, rows):
    engine = target.fresh_engine("raw")
    url = engine.url
    path = url.database
    engine.dispose()
    try:
        data = read_rows_for_sqlite(csv_path)
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            for pragma in db_config.SQLITE_PRAGMAS:  # the same connection settings as the loader's engine
                connection.execute(pragma)
            statement = (f"INSERT INTO transactions ({', '.join(RAW_COLUMNS)}, batch_id) "
                         f"VALUES ({', '.join('?' * (len(RAW_COLUMNS) + 1))})")

            def load():
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(statement, data)
                connection.execute("COMMIT")

            _, seconds = timed(load, label="sqlite raw")
        finally:
            connection.close()
        data = None  # free the rows before the count check
        check_engine = create_engine(url)
        try:
            check_count(check_engine, rows, "raw")
        finally:
            check_engine.dispose()
        return {"seconds": seconds, "rows_per_s": rate(rows, seconds), "cpu": CPU.last,
                "method": "sqlite3 executemany, one transaction, pragmas as db_config (WAL, synchronous=NORMAL, "
                          "foreign_keys=ON)"}
    finally:
        target.drop(url.render_as_string(hide_password=False))


def measure_raw_mariadb(target, csv_path, rows):
    engine = target.fresh_engine("raw")
    url = engine.url
    try:
        connection = pymysql.connect(
            host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
            password=url.password or "", database=url.database, charset="utf8mb4", local_infile=True,
            autocommit=False)
        try:
            statement = (
                "LOAD DATA LOCAL INFILE %s INTO TABLE transactions CHARACTER SET utf8mb4 "
                "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' LINES TERMINATED BY '\\n' "
                f"IGNORE 1 LINES ({','.join(RAW_COLUMNS)})"
            )

            def load():
                with connection.cursor() as cursor:
                    cursor.execute(statement, (os.path.abspath(csv_path),))
                    loaded = cursor.rowcount
                connection.commit()
                return loaded

            loaded, seconds = timed(load, label="mariadb raw")
            cpu = CPU.last
            with connection.cursor() as cursor:
                cursor.execute("SHOW COUNT(*) WARNINGS")
                warnings = cursor.fetchone()[0]
        finally:
            connection.close()
        if loaded != rows:
            raise RuntimeError(f"raw: LOAD DATA loaded {loaded} rows, expected {rows}")
        check_count(engine, rows, "raw")
        return {"seconds": seconds, "rows_per_s": rate(rows, seconds), "warnings": warnings, "cpu": cpu,
                "method": "LOAD DATA LOCAL INFILE of the CSV (pymysql, local_infile=True), one commit"}
    finally:
        engine.dispose()
        target.drop(url.render_as_string(hide_password=False))


def measure_to_sql(target, csv_path, rows):
    engine = target.fresh_engine("tosql")
    url = engine.url
    try:
        frame = pd.read_csv(csv_path)
        written, seconds = timed(frame.to_sql, "transactions", engine, if_exists="append", index=False,
                                 label=f"{target.kind} to_sql")
        del frame
        check_count(engine, rows, "to_sql")
        return {"seconds": seconds, "rows_per_s": rate(rows, seconds), "to_sql_returned": written, "cpu": CPU.last,
                "method": "pd.read_csv (untimed) + DataFrame.to_sql(if_exists='append', index=False)"}
    finally:
        engine.dispose()
        target.drop(url.render_as_string(hide_password=False))


def profile_ours(target, csv_path, top, out_path):
    """Load ours once more under cProfile into a fresh database; return phases and hot spots.

    The load runs without the loader's worker process, so that cProfile (which sees one process) sees every
    phase; its total is the serial one, not the overlapped one that the table times."""
    engine = target.fresh_engine("prof")
    url = engine.url
    try:
        profiler = cProfile.Profile()
        CPU.wait_quiet(f"{target.kind} profile")
        gc.collect()
        started = time.perf_counter()
        with serial_loader():
            profiler.enable()
            summary = load_transactions.load_file(engine, csv_path)
            profiler.disable()
        wall = time.perf_counter() - started
        profiler.dump_stats(out_path)
        stats = pstats.Stats(profiler)
        entries = stats.stats  # {(file, line, name): (primitive calls, calls, tottime, cumtime, callers)}
        phases = []
        for file_name, function, label in PHASES:
            matches = [(key, value) for key, value in entries.items()
                       if key[2] == function and os.path.basename(key[0]) == file_name]
            if matches:
                calls = sum(value[1] for _, value in matches)
                cumtime = sum(value[3] for _, value in matches)
                phases.append({"phase": label, "calls": calls, "cumtime": cumtime})
        hot = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
        hot_spots = [{
            "function": _describe(key), "calls": value[1], "tottime": value[2], "cumtime": value[3],
        } for key, value in hot]
        total = stats.total_tt
        return {"wall_seconds_profiled": wall, "profiled_total_tt": total, "rows_loaded": summary.rows_loaded,
                "phases": phases, "hot_spots_by_tottime": hot_spots, "stats_file": out_path}
    finally:
        engine.dispose()
        target.drop(url.render_as_string(hide_password=False))


def _describe(key):
    file_name, line, function = key
    if file_name == "~":
        return function  # a built-in, e.g. <method 'executemany' of 'sqlite3.Cursor' objects>
    path = file_name
    for prefix in (ROOT + os.sep, sys.prefix + os.sep):
        if path.startswith(prefix):
            path = path[len(prefix):]
    parts = path.split(os.sep)
    if "site-packages" in parts:
        path = os.sep.join(parts[parts.index("site-packages") + 1:])
    return f"{path}:{line}({function})"


# ------------------------------------------------------------------------------------------------ report

def format_report(results):
    meta, generation = results["meta"], results["generation"]
    lines = [
        f"stock-etl load benchmark: {meta['rows']:,} rows ({generation['file_bytes'] / 1e6:.1f} MB CSV, seed {SEED}), "
        f"{meta['started']}",
        f"command: {meta['command']}",
        f"python {meta['python']}, pandas {meta['pandas']}, SQLAlchemy {meta['sqlalchemy']}, PyMySQL {meta['pymysql']}, "
        f"SQLite {meta['sqlite']}" + (f", MariaDB {meta['mariadb']}" if meta.get("mariadb") else "")
        + f"; {meta['cpus']} CPUs",
        f"code: commit {meta['code']['commit']}"
        + (f", uncommitted changes in {', '.join(line[3:] for line in meta['code']['changed'])}"
           if meta['code']['changed'] else ", clean")
        + f"; load average at start {_loadavg(meta.get('loadavg_start'))}, at end {_loadavg(meta.get('loadavg_end'))}",
        "",
        f"generation: {generation['rows']:,} rows in {generation['seconds']:.2f} s = "
        f"{generation['rows_per_s']:,.0f} rows/s (trades CSV + market_prices.csv; CPU cores own/other "
        f"{generation['cpu']['own_cores']:.2f}/{generation['cpu']['other_cores']:.2f})",
        "",
    ]
    header = (f"{'database':<9} {'method':<44} {'seconds':>9} {'rows/s':>11} {'ours/x':>7}   "
              f"{'CPU cores used: own':>19} {'db':>5} {'other':>6}")
    lines += [header, "-" * len(header)]
    names = {"sqlite": ("raw: sqlite3 executemany, 1 transaction", "pandas to_sql (defaults, index=False)"),
             "mariadb": ("raw: LOAD DATA LOCAL INFILE of the CSV", "pandas to_sql (defaults, index=False)")}
    for database, outcome in results["databases"].items():
        if "error" in outcome and "ours" not in outcome:
            lines.append(f"{database:<9} ERROR: {outcome['error']}")
            continue
        ours = outcome.get("ours")
        rows_out = [("ours: load_transactions.load_file", ours, None),
                    ("ours, worker process off (serial)", outcome.get("ours_serial"), None),
                    (names[database][0], outcome.get("raw"), "ours_over_raw"),
                    (names[database][1], outcome.get("to_sql"), "ours_over_to_sql")]
        for label, measured, ratio_key in rows_out:
            if measured is None:
                continue
            ratio = outcome["ratios"].get(ratio_key) if ratio_key else None
            ratio_text = f"{ratio:.2f}" if ratio is not None else ""
            lines.append(f"{database:<9} {label:<44} {measured['seconds']:>9.2f} {measured['rows_per_s']:>11,.0f} "
                         f"{ratio_text:>7}   {_cpu_columns(measured.get('cpu'), measured['seconds'])}")
        rerun = outcome.get("ours_rerun")
        if rerun:
            lines.append(f"{database:<9} {'ours re-run, already loaded (SHA-256 skip)':<44} {rerun['seconds']:>9.3f} "
                         f"{'':>11} {'':>7}   {_cpu_columns(rerun.get('cpu'), rerun['seconds'])}")
        if "error" in outcome:
            lines.append(f"{database:<9} ERROR: {outcome['error']}")
    lines.append("")
    lines.append("ours/x = ours rows/s divided by x's rows/s (1.00 = as fast; below 1 = ours is slower).")
    lines.append("CPU cores used during each timing (2 = both cores all the time): own = this Python process and its children, "
                 "db = the local database server (counted as other in SQLite rows),")
    lines.append(f"other = every other process; each timing started after other processes had been quiet "
                 f"(< {CPU.quiet_cores} cores) for 2 s, '!' marks other > {CPU.quiet_cores} (a disturbed timing).")
    for database, outcome in results["databases"].items():
        for key in ("ours", "ours_serial", "raw", "to_sql"):
            cpu = (outcome.get(key) or {}).get("cpu")
            if cpu and cpu["other_cores"] > CPU.quiet_cores:
                busiest = ", ".join(f"{name} {cores:.2f}" for name, cores in cpu.get("top_other", []))
                lines.append(f"! {database} {key}: other processes used {cpu['other_cores']:.2f} cores"
                             + (f" (busiest, incl. their finished children: {busiest})" if busiest else " (no process visible at the end: short-lived processes, kernel)"))
    for database, outcome in results["databases"].items():
        for key in ("ours", "ours_serial", "raw", "to_sql"):
            attempts = (outcome.get(key) or {}).get("attempts") or []
            if len(attempts) > 1:
                lines.append(f"  {database} {key}: {len(attempts)} attempts (seconds/other cores: "
                             + ", ".join(f"{a['seconds']:.2f}/{a['other_cores']:.2f}" for a in attempts)
                             + "); the least disturbed is shown")
    worker = results["meta"].get("worker_process")
    if worker is not None:
        lines.append(f"The loader prepares chunks in a worker process for files over "
                     f"{results['meta']['worker_min_bytes'] / 2**20:.0f} MiB: {'used' if worker else 'not used'} here.")
    for database, outcome in results["databases"].items():
        if outcome.get("ours"):
            lines.append(f"{database} ours summary: {outcome['ours']['summary']}")
    for database, profile in results.get("profiles", {}).items():
        lines += ["", f"cProfile of ours on {database}: a separate, untimed load with the worker process off, so "
                      f"that every phase is in this process;",
                  f"profiling overhead inflates Python-heavy parts. {profile['wall_seconds_profiled']:.2f} s wall "
                  f"under the profiler.",
                  f"  {'phase (cumulative)':<48} {'calls':>8} {'cum s':>8}"]
        for phase in profile["phases"]:
            lines.append(f"  {phase['phase']:<48} {phase['calls']:>8,} {phase['cumtime']:>8.2f}")
        lines += ["", f"  {'hot spots by own time (tottime)':<78} {'calls':>10} {'tot s':>7} {'cum s':>7}"]
        for spot in profile["hot_spots_by_tottime"]:
            lines.append(f"  {spot['function'][:78]:<78} {spot['calls']:>10,} {spot['tottime']:>7.2f} "
                         f"{spot['cumtime']:>7.2f}")
    return "\n".join(lines)


def code_state():
    """The commit, the files changed since it, and the SHA-256 of the modules a load runs (others may be editing)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None
    import hashlib
    modules = ("load_transactions.py", "bulk_insert.py", "validation.py", "batches.py", "db_config.py", "schema.py",
               "seed_investors.py", "generate_dummy_data.py", "constants.py", "cli.py")
    digests = {}
    for name in modules:
        with open(os.path.join(ROOT, name), "rb") as handle:
            digests[name] = hashlib.sha256(handle.read()).hexdigest()[:16]
    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "--short", "HEAD"), "changed": status.splitlines() if status else [],
            "module_sha256": digests}


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpu_columns(cpu, seconds):
    if not cpu or seconds < 0.2:  # /proc counts CPU time in 10 ms ticks
        return ""
    flag = "!" if cpu["other_cores"] > CPU.quiet_cores else " "
    return f"{cpu['own_cores']:>19.2f} {cpu['server_cores']:>5.2f} {cpu['other_cores']:>6.2f}{flag}"


def _loadavg(values):
    return "/".join(f"{v:.2f}" for v in values) if values else "n/a"


def server_version(mariadb_url):
    engine = create_engine(make_url(mariadb_url))
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT VERSION()")).scalar()
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------ main

def main(argv=None):
    args = parse_args(argv)
    CPU.quiet_cores, CPU.quiet_timeout = args.quiet_cores, args.quiet_timeout
    run_id = f"{os.getpid()}_{int(time.time())}"
    own_workdir = args.workdir is None
    workdir = tempfile.mkdtemp(prefix="stocketl-bench-") if own_workdir else os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, f"trades_{args.rows}.csv")
    results = {
        "meta": {
            "rows": args.rows, "seed": SEED, "started": datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT)
                                 else sys.executable, *sys.argv]),
            "python": platform.python_version(), "pandas": pd.__version__, "sqlalchemy": sqlalchemy.__version__,
            "pymysql": pymysql.__version__, "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
            "platform": platform.platform(), "workdir": workdir, "databases": args.databases,
            "mariadb_url": db_config.safe_url(args.mariadb_url) if "mariadb" in args.databases else None,
        },
        "databases": {},
        "profiles": {},
    }
    results["meta"]["code"] = code_state()
    results["meta"]["loadavg_start"] = load_average()
    failed = False
    try:
        log(f"generating {args.rows:,} trades into {csv_path}")
        results["generation"] = measure_generation(args.rows, csv_path)
        results["meta"]["worker_process"] = worker_process_used(csv_path)
        results["meta"]["worker_min_bytes"] = getattr(load_transactions, "BACKGROUND_MIN_BYTES", None)
        log(f"generation: {results['generation']['rows_per_s']:,.0f} rows/s")
        for database in args.databases:
            outcome = results["databases"][database] = {"ratios": {}}
            target = Target(database, workdir, args.mariadb_url, run_id)
            CPU.server_in_use = database == "mariadb"
            try:
                if database == "mariadb":
                    results["meta"]["mariadb"] = server_version(args.mariadb_url)
                log(f"{database}: ours (load_file)")
                outcome["ours"], outcome["ours_rerun"] = with_retries(
                    lambda: measure_ours(target, csv_path, args.rows), args.retries, f"{database} ours")
                log(f"{database}: ours {outcome['ours']['rows_per_s']:,.0f} rows/s; "
                    f"re-run {outcome['ours_rerun']['seconds']:.3f} s")
                if worker_process_used(csv_path):
                    log(f"{database}: ours without the worker process")
                    outcome["ours_serial"], _ = with_retries(
                        lambda: measure_ours(target, csv_path, args.rows, serial=True), args.retries,
                        f"{database} ours serial")
                    log(f"{database}: ours serial {outcome['ours_serial']['rows_per_s']:,.0f} rows/s")
                log(f"{database}: raw")
                raw = measure_raw_sqlite if database == "sqlite" else measure_raw_mariadb
                outcome["raw"] = with_retries(lambda: raw(target, csv_path, args.rows), args.retries, f"{database} raw")
                outcome["ratios"]["ours_over_raw"] = outcome["ours"]["rows_per_s"] / outcome["raw"]["rows_per_s"]
                log(f"{database}: raw {outcome['raw']['rows_per_s']:,.0f} rows/s")
                log(f"{database}: pandas to_sql")
                outcome["to_sql"] = with_retries(
                    lambda: measure_to_sql(target, csv_path, args.rows), args.retries, f"{database} to_sql")
                outcome["ratios"]["ours_over_to_sql"] = (
                    outcome["ours"]["rows_per_s"] / outcome["to_sql"]["rows_per_s"])
                log(f"{database}: to_sql {outcome['to_sql']['rows_per_s']:,.0f} rows/s")
                if outcome["ratios"]["ours_over_raw"] < args.profile_below:
                    log(f"{database}: ours/raw {outcome['ratios']['ours_over_raw']:.2f} < {args.profile_below}: "
                        f"profiling ours")
                    results["profiles"][database] = profile_ours(
                        target, csv_path, args.profile_top, os.path.join(workdir, f"ours_{database}.prof"))
            except Exception as error:
                failed = True
                outcome["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                log(f"{database}: {outcome['error']}")
            finally:
                target.drop_all()
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["loadavg_end"] = load_average()
    if "generation" not in results:
        return 1
    report = format_report(results)
    print(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=str)
            handle.write("\n")
        log(f"results written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
