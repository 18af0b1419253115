"""Benchmark surveillance.py: recall and precision per rule, alerts per 1,000 clean trades, and the stage's time.

Usage (from the project root, with the project's virtualenv):
    python bench/bench_surveillance.py --quick                       # 20,000 / 100,000 trades, SQLite only
    python bench/bench_surveillance.py --databases sqlite,mariadb    # quality at 100,000 (seed 42) and timings
    python bench/bench_surveillance.py --seeds 42,7,2026 --sizes 100000,1000000 --no-timing
                                                                     # the quality table of docs/surveillance.md

What one run measures (generate_dummy_data in-process):
1. quality (SQLite), for every size of --sizes (default: --rows, 100,000) and seed of --seeds (default: --seed,
   42): that many trades with --anomalies RATE (0.002: RATE * size planted anomalies of each trade-level rule, as
   extra trades); load, update_portfolio, one surveillance run over everything; then surveillance.evaluate_alerts
   against the generator's ground truth (<out stem>_anomalies.csv). An anomaly is detected when an alert of its
   rule names one of its trades; an alert is true when its trade is part of an anomaly of its rule.
2. clean (SQLite), for the same sizes and seeds: the trades without anomalies; alerts per 1,000 trades, of every
   rule in `alerts` (update_portfolio's CONCENTRATION included) and of this stage alone.
3. scale (each of --databases, unless --no-timing; MariaDB in a fresh database, created and dropped here):
   --scale-rows S (1,000,000) trades of --seed with anomalies at RATE, split into all but the last --tail (10,000)
   trades and the tail. Load + update the first part, then time surveillance (every trade new); load + update the
   tail, time surveillance (only the tail new, the rest is history; the median of --incremental-runs runs, 5, each
   after the one before was undone: the batch not surveilled, its alerts deleted); time `--full` (re-check of
   everything); time a re-run with nothing new. Recall and precision at that scale are shown for information.

The report goes to stdout and to RESULTS.txt, the figures to RESULTS.json (--results, default
bench/results-surveillance; none with --quick unless given); progress to stderr. The machine may be shared: the
load average before and after each timing and the stage's CPU seconds are printed beside the wall-clock seconds.
Exit code 0 when every run finished and every quality figure meets its target (recall >= 0.95 and precision >=
0.95 for every rule, size and seed; fewer than 1 alert per 1,000 clean trades), 1 otherwise.
"""
import argparse
import json
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
import timing  # noqa: E402
import update_portfolio  # noqa: E402

DATABASES = ("sqlite", "mariadb")
TARGET_RECALL, TARGET_PRECISION, TARGET_CLEAN_PER_1000 = 0.95, 0.95, 1.0
RESULTS = os.path.join(ROOT, "bench", "results-surveillance")


def log(message):
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="trades of the quality runs (default: %(default)s)")
    parser.add_argument("--sizes", help="comma-separated trades of the quality runs, e.g. 100000,1000000 "
                                        "(default: --rows)")
    parser.add_argument("--seeds", help="comma-separated generator seeds of the quality runs, e.g. 42,7,2026 "
                                        "(default: --seed)")
    parser.add_argument("--scale-rows", type=int, default=1_000_000,
                        help="trades of the timed runs (default: %(default)s)")
    parser.add_argument("--tail", type=int, default=10_000, help="trades of the incremental run (default: %(default)s)")
    parser.add_argument("--incremental-runs", type=int, default=5,
                        help="times the incremental run is timed, each on the same state; the median is shown "
                             "(default: %(default)s)")
    parser.add_argument("--rate", type=float, default=0.002, help="--anomalies of the generator (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="20,000 quality trades, 100,000 timed, SQLite only")
    parser.add_argument("--no-timing", action="store_true", help="the quality runs only")
    parser.add_argument("--databases", default="sqlite", help="for the timed runs, from: sqlite, mariadb "
                                                              "(default: %(default)s)")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root:@127.0.0.1:3306",
                        help="server URL without a database (default: %(default)s)")
    parser.add_argument("--results", help="write the report to RESULTS.txt and the figures to RESULTS.json "
                                          "(default: bench/results-surveillance; none with --quick)")
    parser.add_argument("--workdir", help="where files go (default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.scale_rows, args.databases = 20_000, 100_000, "sqlite"
    args.results = args.results or (None if args.quick else RESULTS)
    args.sizes = numbers(parser, "--sizes", args.sizes) or [args.rows]
    args.seeds = numbers(parser, "--seeds", args.seeds) or [args.seed]
    args.databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    if not args.databases or any(name not in DATABASES for name in args.databases):
        parser.error(f"--databases: choose from {', '.join(DATABASES)}")
    if args.incremental_runs < 1:
        parser.error("--incremental-runs must be at least 1")
    if args.tail >= args.scale_rows:
        parser.error("--tail must be smaller than --scale-rows")
    return args


def numbers(parser, option, text):
    """A comma-separated list of whole numbers (None: none given); parser.error names the option otherwise."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        parser.error(f"{option} {text}: give comma-separated whole numbers, e.g. 42,7,2026")


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


def quality_run(databases, workdir, rows, seed, rate):
    """Recall and precision per rule on `rows` trades of `seed` with anomalies planted at `rate`: a dict."""
    out = os.path.join(workdir, "quality", "trades.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    generate_dummy_data.write_anomalous_data(out, rows, seed, rate)
    engine = databases.fresh("sqlite", "quality")
    loaded = load_and_update(engine, out, os.path.join(os.path.dirname(out), "market_prices.csv"))
    surveillance.run_surveillance(engine)
    truth = pd.read_csv(generate_dummy_data.anomalies_path_for(out))
    table = surveillance.evaluate_alerts(alert_frame(engine), truth)
    engine.dispose()
    return {"size": rows, "seed": seed, "loaded": loaded, "planted_trades": len(truth),
            "rules": table.to_dict("records")}


def clean_run(databases, workdir, rows, seed):
    """Alerts by rule on `rows` trades of `seed` without anomalies: a dict."""
    out = os.path.join(workdir, "clean", "trades.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    generate_dummy_data.write_dummy_data(out, rows, seed)
    engine = databases.fresh("sqlite", "clean")
    loaded = load_and_update(engine, out, os.path.join(os.path.dirname(out), "market_prices.csv"))
    surveillance.run_surveillance(engine)
    alerts = alert_frame(engine)["rule"].value_counts()
    engine.dispose()
    return {"size": rows, "seed": seed, "loaded": loaded, "alerts": {rule: int(count) for rule, count in
                                                                      alerts.sort_index().items()}}


def quality_runs(databases, workdir, args):
    """quality_run and clean_run for every size and seed."""
    quality, clean = [], []
    for rows in args.sizes:
        for seed in args.seeds:
            log(f"quality: {rows:,} trades, seed {seed}")
            quality.append(quality_run(databases, workdir, rows, seed, args.rate))
            log(f"clean: {rows:,} trades, seed {seed}")
            clean.append(clean_run(databases, workdir, rows, seed))
    return quality, clean


def timed(work):
    """(result, wall seconds, CPU seconds of this process, load average before, after)."""
    before = os.getloadavg()[0]
    cpu = time.process_time()
    wall, result = timing.timed(work)
    return result, wall, time.process_time() - cpu, before, os.getloadavg()[0]


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


def scale_run(databases, kind, paths, runs=1):
    """Timed surveillance runs on one database; returns (rows of the timing table, alerts at that scale)."""
    engine = databases.fresh(kind, "scale")
    log(f"{kind}: loading and updating the head")
    head = load_and_update(engine, paths["head"], paths["market_prices"])
    log(f"{kind}: first run")
    rows = [(kind, f"first run: all {head:,} trades new") + timed(lambda: surveillance.run_surveillance(engine))]
    log(f"{kind}: loading and updating the tail")
    tail = load_and_update(engine, paths["tail"])
    label = f"incremental: {tail:,} new, {head:,} before" + (f" (median of {runs})" if runs > 1 else "")
    log(f"{kind}: {label}")
    rows.append((kind, label) + incremental_runs(engine, runs))
    for label, full in ((f"--full re-check of all {head + tail:,}", True), ("re-run, nothing new", False)):
        log(f"{kind}: {label}")
        rows.append((kind, label) + timed(lambda: surveillance.run_surveillance(engine, full=full)))
    found = alert_frame(engine)
    engine.dispose()
    return rows, found


def incremental_runs(engine, runs):
    """The incremental run, `runs` times on the same state: before each one after the first, the tail's batch is
    marked not surveilled again and the alerts the run before raised are deleted (a SECTOR_CONCENTRATION alert it
    resolved stays resolved). The timed tuple of the median run (by wall-clock seconds)."""
    results, since = [], None
    for _ in range(runs):
        if since is not None:
            undo_surveillance(engine, since)
        since = datetime.now().replace(microsecond=0)
        results.append(timed(lambda: surveillance.run_surveillance(engine)))
    return sorted(results, key=lambda result: result[1])[len(results) // 2]


def undo_surveillance(engine, since):
    """The newest batch not surveilled, and the alerts detected from `since` on gone."""
    with engine.begin() as connection:
        connection.execute(text("UPDATE load_batches SET surveilled_at = NULL WHERE batch_id = "
                                "(SELECT newest FROM (SELECT MAX(batch_id) AS newest FROM load_batches) newest_batch)"))
        connection.execute(text("DELETE FROM alerts WHERE detected_at >= :since"), {"since": since})


# ------------------------------------------------------------------------------------------------ report

def quality_lines(quality, args):
    """The table rule x size x seed, rules in TRADE_RULES order."""
    lines = [f"Recall and precision: generated trades + planted (--anomalies {args.rate:g}), SQLite, one "
             f"surveillance run each",
             f"{'rule':<18}{'size':>11}{'seed':>6}{'anomalies':>11}{'detected':>10}{'recall':>8}{'alerts':>8}"
             f"{'true':>7}{'precision':>11}",
             "-" * 90]
    for rule in surveillance.TRADE_RULES:
        for case in quality:
            row = next(row for row in case["rules"] if row["rule"] == rule)
            lines.append(f"{rule:<18}{case['size']:>11,}{case['seed']:>6}{row['anomalies']:>11,}"
                         f"{row['detected']:>10,}{row['recall']:>8.3f}{row['alerts']:>8,}{row['true_alerts']:>7,}"
                         f"{row['precision']:>11.3f}")
    return lines


def clean_lines(clean):
    """Alerts per 1,000 clean trades, per size and seed."""
    lines = ["Clean data (no anomalies), SQLite: alerts per 1,000 trades",
             f"{'size':>11}{'seed':>6}{'every alert':>13}{'per 1,000':>11}{'trade-level':>13}{'per 1,000':>11}"
             "  by rule", "-" * 90]
    for case in clean:
        total, trade_level = clean_counts(case)
        by_rule = ", ".join(f"{rule} {count}" for rule, count in case["alerts"].items()) or "none"
        lines.append(f"{case['size']:>11,}{case['seed']:>6}{total:>13,}{1000 * total / case['loaded']:>11.2f}"
                     f"{trade_level:>13,}{1000 * trade_level / case['loaded']:>11.2f}  {by_rule}")
    return lines


def clean_counts(case):
    """(every alert, the trade-level alerts) of a clean run."""
    counts = case["alerts"]
    return sum(counts.values()), sum(counts.get(rule, 0) for rule in surveillance.TRADE_RULES)


def timing_lines(rows, args, total):
    lines = [f"Stage time: {args.scale_rows:,} generated trades + planted = {total:,} (seed {args.seed}, "
             f"--anomalies {args.rate:g}); surveillance.run_surveillance, wall-clock",
             f"{'database':<9}{'run':<58}{'checked':>10}{'history':>9}{'seconds':>9}{'trades/s':>10}"
             f"{'cpu s':>7}{'new alerts':>11}  load avg",
             "-" * 132]
    for kind, label, summary, wall, cpu, before, after in rows:
        rate = f"{summary.trades_checked / wall:,.0f}" if summary.trades_checked else ""
        lines.append(f"{kind:<9}{label:<58}{summary.trades_checked:>10,}{summary.context_trades:>9,}{wall:>9.2f}"
                     f"{rate:>10}{cpu:>7.1f}{sum(summary.new_alerts.values()):>11,}  {before:.2f} -> {after:.2f}")
    return lines


def scale_quality_lines(scale_table, args, total):
    lines = [f"At {total:,} trades, seed {args.seed} (information only)",
             f"{'rule':<18}{'anomalies':>10}{'detected':>10}{'recall':>8}{'alerts':>8}{'true':>7}{'precision':>11}"]
    return lines + [f"{row.rule:<18}{row.anomalies:>10,}{row.detected:>10,}{row.recall:>8.3f}{row.alerts:>8,}"
                    f"{row.true_alerts:>7,}{row.precision:>11.3f}" for row in scale_table.itertuples()]


def timing_runs(databases, workdir, args):
    """The timed runs on each database: (timing rows, recall/precision at that scale, trades generated)."""
    log(f"generating {args.scale_rows:,} trades")
    paths, total = scale_files(workdir, args)
    timings, scale_table = [], None
    for kind in args.databases:
        rows, found = scale_run(databases, kind, paths, args.incremental_runs)
        timings += rows
        if scale_table is None:
            scale_table = surveillance.evaluate_alerts(found, pd.read_csv(paths["truth"]))
    return timings, scale_table, total


def missed_targets(quality, clean):
    """Each quality figure that misses its target, as text."""
    missed = [f"{row['rule']} {row[name]:.3f} {name} at {case['size']:,} trades, seed {case['seed']}"
              for case in quality for row in case["rules"]
              for name, target in (("recall", TARGET_RECALL), ("precision", TARGET_PRECISION))
              if not row[name] >= target]
    missed += [f"{clean_counts(case)[0]} alerts on {case['loaded']:,} clean trades, seed {case['seed']}"
               for case in clean if clean_counts(case)[0] >= case["loaded"] * TARGET_CLEAN_PER_1000 / 1000]
    return missed


def write_results(prefix, report, figures):
    with open(f"{prefix}.txt", "w", encoding="utf-8") as handle:
        handle.write("\n".join(report) + "\n")
    with open(f"{prefix}.json", "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=1)
        handle.write("\n")


def timing_figures(timings):
    return [{"database": kind, "run": label, "trades_checked": summary.trades_checked,
             "history": summary.context_trades, "seconds": round(wall, 3), "cpu_seconds": round(cpu, 2),
             "new_alerts": sum(summary.new_alerts.values()), "load_average": [before, after]}
            for kind, label, summary, wall, cpu, before, after in timings]


def main(argv=None):
    args = parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_surveillance_")
    os.makedirs(workdir, exist_ok=True)
    databases = Databases(workdir, args.mariadb_url)
    started = datetime.now()
    timings, scale_table, total = [], None, 0
    try:
        quality, clean = quality_runs(databases, workdir, args)
        if not args.no_timing:
            timings, scale_table, total = timing_runs(databases, workdir, args)
    finally:
        databases.drop_all()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    command = f"{sys.executable} {' '.join(sys.argv) if argv is None else ' '.join(argv)}"
    report = [f"stock-etl surveillance benchmark, {started:%Y-%m-%dT%H:%M:%S}", f"command: {command}", versions(args),
              thresholds_line(), ""] + quality_lines(quality, args) + [""] + clean_lines(clean) + [""]
    if timings:
        report += timing_lines(timings, args, total) + [""] + scale_quality_lines(scale_table, args, total) + [""]
    missed = missed_targets(quality, clean)
    report.append("targets met" if not missed else "targets missed: " + "; ".join(missed))
    print("\n".join(report))
    if args.results:
        write_results(args.results, report, {
            "started": f"{started:%Y-%m-%dT%H:%M:%S}", "command": command, "rate": args.rate,
            "targets": {"recall": TARGET_RECALL, "precision": TARGET_PRECISION,
                        "clean_per_1000": TARGET_CLEAN_PER_1000},
            "quality": quality, "clean": clean, "timing": timing_figures(timings), "missed": missed})
    return 1 if missed else 0


def thresholds_line():
    return (f"thresholds: LARGE_TRADE z >= {constants.LARGE_TRADE_Z:g} over {constants.LARGE_TRADE_LOOKBACK_TRADES} "
            f"trades (min {constants.LARGE_TRADE_MIN_HISTORY}) or > {constants.LARGE_TRADE_PORTFOLIO_SHARE:g}x "
            f"portfolio; OFF_MARKET_PRICE > {constants.OFF_MARKET_PRICE_THRESHOLD:.0%}; WASH_TRADE "
            f"{constants.WASH_TRADE_WINDOW_MINUTES} min, {constants.WASH_TRADE_MOVE_SHARE:g} x the expected move or "
            f"{constants.WASH_TRADE_PRICE_TICK}; ROUND_TRIP max({constants.ROUND_TRIP_MIN_COUNT}, "
            f"{constants.ROUND_TRIP_USUAL_MULTIPLE:g} x expected) x <= {constants.ROUND_TRIP_MAX_HOLD_MINUTES} min a "
            f"day; BURST > max({constants.BURST_MAX_TRADES}, {constants.BURST_USUAL_MULTIPLE:g} x usual) in "
            f"{constants.BURST_WINDOW_MINUTES} min; baselines over {constants.SURVEILLANCE_BASELINE_TRADES} trades; "
            f"SECTOR_CONCENTRATION > {constants.SECTOR_CONCENTRATION_LIMIT:.0%}")


if __name__ == "__main__":
    sys.exit(main())
