"""Benchmark surveillance.py: recall and precision per rule, alerts per 1,000 clean trades, and the stage's time.

Usage (from the project root, with the project's virtualenv):
    python bench/bench_surveillance.py --quick                       # 20,000 / 100,000 trades, SQLite only
    python bench/bench_surveillance.py --databases sqlite,mariadb    # the figures in README.md (Surveillance)

What one run measures (generate_dummy_data in-process, --seed 42 unless --seed):
1. quality (SQLite): --rows Q (100,000) trades with --anomalies RATE (0.002: RATE * Q planted anomalies of each
   trade-level rule, as extra trades); load, update_portfolio, one surveillance run over everything; then
   surveillance.evaluate_alerts against the generator's ground truth (<out stem>_anomalies.csv). An anomaly is
   detected when an alert of its rule names one of its trades; an alert is true when its trade is part of an
   anomaly of its rule.
2. clean (SQLite): the same Q trades without anomalies; alerts per 1,000 trades, of every rule in `alerts`
   (update_portfolio's CONCENTRATION included) and of this stage alone.
3. scale (each of --databases; MariaDB in a fresh database, created and dropped here): --scale-rows S
   (1,000,000) trades with anomalies at RATE, split into all but the last --tail (10,000) trades and the tail.
   Load + update the first part, then time surveillance (every trade new); load + update the tail, time
   surveillance (only the tail new, the rest is history); time `--full` (re-check of everything); time a re-run
   with nothing new. Recall and precision at that scale are shown for information.

The report goes to stdout, progress to stderr. The machine may be shared: the load average before and after
each timing and the stage's CPU seconds are printed beside the wall-clock seconds. Exit code 0 when every run
finished and the quality figures meet the targets (recall >= 0.95, precision >= 0.9, clean < 1 per 1,000).
"""
import argparse
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sqlalchemy  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import constants  # noqa: E402
import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
import surveillance  # noqa: E402
import update_portfolio  # noqa: E402

DATABASES = ("sqlite", "mariadb")
TARGET_RECALL, TARGET_PRECISION, TARGET_CLEAN_PER_1000 = 0.95, 0.9, 1.0


def log(message):
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="trades of the quality runs (default: %(default)s)")
    parser.add_argument("--scale-rows", type=int, default=1_000_000,
                        help="trades of the timed runs (default: %(default)s)")
    parser.add_argument("--tail", type=int, default=10_000, help="trades of the incremental run (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=0.002, help="--anomalies of the generator (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="20,000 quality trades, 100,000 timed, SQLite only")
    parser.add_argument("--databases", default="sqlite", help="for the timed runs, from: sqlite, mariadb "
                                                              "(default: %(default)s)")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root:@127.0.0.1:3306",
                        help="server URL without a database (default: %(default)s)")
    parser.add_argument("--workdir", help="where files go (default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.scale_rows, args.databases = 20_000, 100_000, "sqlite"
    args.databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    if not args.databases or any(name not in DATABASES for name in args.databases):
        parser.error(f"--databases: choose from {', '.join(DATABASES)}")
    if args.tail >= args.scale_rows:
        parser.error("--tail must be smaller than --scale-rows")
    return args


# ------------------------------------------------------------------------------------------------ databases

class Databases:
    """Fresh databases: SQLite files in the work directory, MariaDB databases created and dropped on the server."""

    def __init__(self, workdir, mariadb_url):
        self.workdir, self.mariadb_url, self.created = workdir, mariadb_url, []

    def fresh(self, kind, name):
        if kind == "sqlite":
            path = os.path.join(self.workdir, f"{name}.db")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
            engine = db_config.get_engine(f"sqlite:///{path}")
        else:
            database = f"bench_surv_{uuid.uuid4().hex[:8]}"
            self.created.append(database)
            engine = db_config.get_engine(make_url(self.mariadb_url).set(database=database))
        seed_investors.seed_reference_data(engine)
        return engine

    def drop_all(self):
        if not self.created:
            return
        server = create_engine(self.mariadb_url, isolation_level="AUTOCOMMIT")
        with server.connect() as connection:
            for database in self.created:
                connection.execute(text(f"DROP DATABASE IF EXISTS {database}"))
        server.dispose()


def versions(args):
    parts = [f"python {platform.python_version()}", f"pandas {pd.__version__}", f"numpy {np.__version__}",
             f"SQLAlchemy {sqlalchemy.__version__}", f"SQLite {sqlite3.sqlite_version}"]
    if "mariadb" in args.databases:
        server = create_engine(args.mariadb_url)
        with server.connect() as connection:
            parts.append(f"MariaDB {connection.execute(text('SELECT VERSION()')).scalar()}")
        server.dispose()
    return ", ".join(parts) + f"; {os.cpu_count()} CPUs"


# ------------------------------------------------------------------------------------------------ runs

def load_and_update(engine, trades_path, prices_path=None):
    if prices_path:
        load_transactions.load_prices_file(engine, prices_path)
    summary = load_transactions.load_file(engine, trades_path)
    if summary.rows_rejected:
        raise SystemExit(f"{trades_path}: {summary.rows_rejected} rows rejected: {summary.sample_rejects[:3]}")
    update_portfolio.update_portfolios(engine)
    return summary.rows_loaded


def alert_frame(engine):
    with engine.connect() as connection:
        return pd.read_sql_query(text("SELECT rule, txn_ref FROM alerts"), connection)


def quality_run(databases, workdir, args):
    """Recall/precision table on Q trades with anomalies, and the alerts of the clean Q trades."""
    out = os.path.join(workdir, "quality", "trades.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    generate_dummy_data.write_anomalous_data(out, args.rows, args.seed, args.rate)
    engine = databases.fresh("sqlite", "quality")
    loaded = load_and_update(engine, out, os.path.join(os.path.dirname(out), "market_prices.csv"))
    surveillance.run_surveillance(engine)
    truth = pd.read_csv(generate_dummy_data.anomalies_path_for(out))
    table = surveillance.evaluate_alerts(alert_frame(engine), truth)
    engine.dispose()

    clean_out = os.path.join(workdir, "clean", "trades.csv")
    os.makedirs(os.path.dirname(clean_out), exist_ok=True)
    generate_dummy_data.write_dummy_data(clean_out, args.rows, args.seed)
    engine = databases.fresh("sqlite", "clean")
    clean_loaded = load_and_update(engine, clean_out, os.path.join(os.path.dirname(clean_out), "market_prices.csv"))
    surveillance.run_surveillance(engine)
    clean_alerts = alert_frame(engine)["rule"].value_counts()
    engine.dispose()
    return table, loaded, len(truth), clean_alerts, clean_loaded


def timed(work):
    """(result, wall seconds, CPU seconds of this process, load average before, after)."""
    before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu, before, os.getloadavg()[0]


def scale_files(workdir, args):
    """The scale file split into head and tail, the prices file and the ground truth path."""
    directory = os.path.join(workdir, "scale")
    os.makedirs(directory, exist_ok=True)
    trades, prices, truth = generate_dummy_data.generate_with_anomalies(args.scale_rows, args.seed, args.rate)
    paths = {name: os.path.join(directory, f"{name}.csv") for name in ("head", "tail", "market_prices", "truth")}
    generate_dummy_data.write_csv(paths["head"], generate_dummy_data.TRADE_HEADER, trades[:-args.tail])
    generate_dummy_data.write_csv(paths["tail"], generate_dummy_data.TRADE_HEADER, trades[-args.tail:])
    generate_dummy_data.write_csv(paths["market_prices"], generate_dummy_data.PRICE_HEADER, prices)
    generate_dummy_data.write_csv(paths["truth"], generate_dummy_data.ANOMALY_HEADER, truth)
    return paths, len(trades)


def scale_run(databases, kind, paths):
    """Timed surveillance runs on one database; returns (rows of the timing table, alerts at that scale)."""
    engine = databases.fresh(kind, "scale")
    log(f"{kind}: loading and updating the head")
    head = load_and_update(engine, paths["head"], paths["market_prices"])
    log(f"{kind}: first run")
    rows = [(kind, f"first run: all {head:,} trades new") + timed(lambda: surveillance.run_surveillance(engine))]
    log(f"{kind}: loading and updating the tail")
    tail = load_and_update(engine, paths["tail"])
    for label, full in ((f"incremental: {tail:,} new, {head:,} before", False),
                        (f"--full re-check of all {head + tail:,}", True), ("re-run, nothing new", False)):
        log(f"{kind}: {label}")
        rows.append((kind, label) + timed(lambda: surveillance.run_surveillance(engine, full=full)))
    found = alert_frame(engine)
    engine.dispose()
    return rows, found


# ------------------------------------------------------------------------------------------------ report

def quality_lines(table, loaded, planted, args):
    lines = [f"Recall and precision: {args.rows:,} generated trades + {planted:,} planted ({loaded:,} loaded), "
             f"seed {args.seed}, --anomalies {args.rate:g}, SQLite, one surveillance run",
             f"{'rule':<18}{'anomalies':>10}{'detected':>10}{'recall':>8}{'alerts':>8}{'true':>7}{'precision':>11}",
             "-" * 72]
    for row in table.itertuples():
        lines.append(f"{row.rule:<18}{row.anomalies:>10,}{row.detected:>10,}{row.recall:>8.3f}{row.alerts:>8,}"
                     f"{row.true_alerts:>7,}{row.precision:>11.3f}")
    return lines


def clean_lines(clean_alerts, clean_loaded):
    stage = int(clean_alerts.reindex(list(surveillance.RULES)).fillna(0).sum())
    trade_level = int(clean_alerts.reindex(list(surveillance.TRADE_RULES)).fillna(0).sum())
    by_rule = ", ".join(f"{rule} {count}" for rule, count in clean_alerts.sort_index().items()) or "none"
    total = int(clean_alerts.sum())
    return [f"Clean data: {clean_loaded:,} generated trades, no anomalies, SQLite",
            f"  every alert in the table: {total} = {1000 * total / clean_loaded:.2f} per 1,000 trades ({by_rule})",
            f"  this stage's alerts:      {stage} = {1000 * stage / clean_loaded:.2f} per 1,000 trades",
            f"  trade-level alerts:       {trade_level} = {1000 * trade_level / clean_loaded:.2f} per 1,000 trades"]


def timing_lines(rows, args, total):
    lines = [f"Stage time: {args.scale_rows:,} generated trades + planted = {total:,} (seed {args.seed}, "
             f"--anomalies {args.rate:g}); surveillance.run_surveillance, wall-clock",
             f"{'database':<9}{'run':<44}{'checked':>10}{'history':>9}{'seconds':>9}{'trades/s':>10}"
             f"{'cpu s':>7}{'new alerts':>11}  load avg",
             "-" * 118]
    for kind, label, summary, wall, cpu, before, after in rows:
        rate = f"{summary.trades_checked / wall:,.0f}" if summary.trades_checked else ""
        lines.append(f"{kind:<9}{label:<44}{summary.trades_checked:>10,}{summary.context_trades:>9,}{wall:>9.2f}"
                     f"{rate:>10}{cpu:>7.1f}{sum(summary.new_alerts.values()):>11,}  {before:.2f} -> {after:.2f}")
    return lines


def main(argv=None):
    args = parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_surveillance_")
    os.makedirs(workdir, exist_ok=True)
    databases = Databases(workdir, args.mariadb_url)
    started = datetime.now()
    try:
        log(f"quality runs on {args.rows:,} trades")
        table, loaded, planted, clean_alerts, clean_loaded = quality_run(databases, workdir, args)
        log(f"generating {args.scale_rows:,} trades")
        paths, total = scale_files(workdir, args)
        timings, scale_table = [], None
        for kind in args.databases:
            rows, found = scale_run(databases, kind, paths)
            timings += rows
            scale_table = scale_table if scale_table is not None else surveillance.evaluate_alerts(
                found, pd.read_csv(paths["truth"]))
    finally:
        databases.drop_all()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report = [f"stock-etl surveillance benchmark, {started:%Y-%m-%dT%H:%M:%S}",
              f"command: {sys.executable} {' '.join(sys.argv) if argv is None else ' '.join(argv)}",
              versions(args), thresholds_line(), ""]
    report += quality_lines(table, loaded, planted, args) + [""] + clean_lines(clean_alerts, clean_loaded) + [""]
    report += timing_lines(timings, args, total) + [""]
    report += [f"At {total:,} trades (information only: coincidental patterns grow with the busiest investors' "
               f"trading density)"] + quality_lines(scale_table, total, total - args.scale_rows, args)[1:]
    print("\n".join(report))
    met = ((table["recall"] >= TARGET_RECALL) & (table["precision"] >= TARGET_PRECISION)).all()
    return 0 if met and clean_alerts.sum() < clean_loaded * TARGET_CLEAN_PER_1000 / 1000 else 1


def thresholds_line():
    return (f"thresholds: LARGE_TRADE z >= {constants.LARGE_TRADE_Z:g} over {constants.LARGE_TRADE_LOOKBACK_TRADES} "
            f"trades (min {constants.LARGE_TRADE_MIN_HISTORY}) or > {constants.LARGE_TRADE_PORTFOLIO_SHARE:g}x "
            f"portfolio; OFF_MARKET_PRICE > {constants.OFF_MARKET_PRICE_THRESHOLD:.0%}; WASH_TRADE "
            f"{constants.WASH_TRADE_WINDOW_MINUTES} min, {constants.WASH_TRADE_PRICE_TOLERANCE:.2%} or "
            f"{constants.WASH_TRADE_PRICE_TICK}; ROUND_TRIP {constants.ROUND_TRIP_MIN_COUNT} x <= "
            f"{constants.ROUND_TRIP_MAX_HOLD_MINUTES} min a day; BURST > {constants.BURST_MAX_TRADES} in "
            f"{constants.BURST_WINDOW_MINUTES} min; SECTOR_CONCENTRATION > {constants.SECTOR_CONCENTRATION_LIMIT:.0%}")


if __name__ == "__main__":
    sys.exit(main())
