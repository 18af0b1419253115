"""Benchmark the performance history (performance.py, investor_daily and investor_returns): its full build inside
`update_portfolio.py --full` on a generated history, beside the rest of that update, and its incremental cost after
10,000 more trades, beside the rest of that update, on SQLite and MariaDB, in one run.

Usage (from the project folder):
    python bench/bench_performance.py                                   # 1,000,000 trades, SQLite and MariaDB
    python bench/bench_performance.py --rows 50000 --databases sqlite   # quick
    python bench/bench_performance.py --json bench/results-performance.json > bench/results-performance.txt

The generator writes --rows + 10,000 trades (seed 15: a fee per trade, splits, quarterly dividends, a close per
symbol and weekday); the newest 10,000 are kept back. For each database a fresh database gets the reference data,
the closes, the corporate actions and the history (not timed), and one update_portfolio.py applies it and builds
the performance history a first time. Then --repeats rounds of `update_portfolio.py --full`, each a process:
reported are the medians of the stage's own time (its summary line), of the performance step's time inside it (its
log line, with --verbose) and of their difference, the update without the step. Then the 10,000 new trades are
loaded (not timed) and one update_portfolio.py applies them: the same three figures, with the days the step wrote
again; then one update with nothing new. Check, else exit 1: after the incremental update, investor_daily and
investor_returns (without updated_at) equal what the next `update_portfolio.py --full` builds. Progress goes to
stderr, the results to stdout.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import text

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
from bench_pipeline import fresh_database, split_history  # noqa: E402
from bench_update import STAGE_SECONDS  # noqa: E402

NEW_TRADES = 10_000
SEED = 15
STEP_LINE = re.compile(r"performance history \((?:full|incremental)\): ([\d,]+) days of ([\d,]+) investors valued, "
                       r"returns of ([\d,]+) investors \((\d+\.\d+) s\)")


class UpdateRun(NamedTuple):
    """One update_portfolio.py process: wall-clock seconds, the stage's own seconds, the performance step's seconds
    and the days it wrote (0 and 0 when it had nothing to do)."""
    seconds: float
    own: float
    step: float
    days: int


def progress(message):
    print(message, file=sys.stderr, flush=True)


def write_files(rows, workdir):
    """Generate rows + NEW_TRADES trades with their closes and actions; return (history path, new trades path)."""
    out = os.path.join(workdir, "generated.csv")
    code = generate_dummy_data.main(["--rows", str(rows + NEW_TRADES), "--seed", str(SEED), "--out", out, "--quiet"])
    if code:
        raise SystemExit(f"generate_dummy_data exited {code}")
    history, new = os.path.join(workdir, "history.csv"), os.path.join(workdir, "new.csv")
    split_history(out, history, new, NEW_TRADES)
    os.remove(out)
    return history, new


def load(url, path):
    """Seed and load a trade file with the closes and actions beside it (not timed)."""
    engine = db_config.get_engine(url)
    try:
        seed_investors.seed_reference_data(engine)
        for planned in load_transactions.plan_files([path]):
            progress(f"  {load_transactions.load_path(engine, planned).line()}")
    finally:
        engine.dispose()


def run_update(url, *options):
    """One update_portfolio.py process with --verbose (the step's log line); exits if it fails."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "update_portfolio.py", "--verbose", *options], cwd=PROJECT,
                          env=os.environ | {"DATABASE_URL": url}, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"update_portfolio.py {' '.join(options)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    step = STEP_LINE.search(done.stderr)
    return UpdateRun(seconds, float(STAGE_SECONDS.search(done.stdout).group(1)),
                     float(step.group(4)) if step else 0.0, int(step.group(1).replace(",", "")) if step else 0)


def history_rows(url):
    """investor_daily and investor_returns without updated_at, sorted, values as text; and the count of days."""
    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            days = sorted(tuple(_text(value) for value in row) for row in connection.execute(text(
                "SELECT * FROM investor_daily")))
            returns = sorted(tuple(_text(value) for value in row[:-1]) for row in connection.execute(text(
                "SELECT investor_id, period, start_date, end_date, start_value, end_value, twr, irr, updated_at "
                "FROM investor_returns")))
    finally:
        engine.dispose()
    return days, returns


def _text(value):
    return str(Decimal(repr(value)) if isinstance(value, float) else value)


def medians(runs):
    """The medians of the runs' own, step and own-without-step seconds (rounded to the millisecond)."""
    return {"own": round(statistics.median(run.own for run in runs), 3),
            "step": round(statistics.median(run.step for run in runs), 3),
            "without_step": round(statistics.median(run.own - run.step for run in runs), 3),
            "days": runs[0].days}


def bench_database(kind, paths, args, workdir):
    """The figures of one kind of database."""
    url, drop = fresh_database(kind, workdir, args.mariadb_url)
    try:
        progress(f"{kind}: loading {args.rows:,} trades")
        load(url, paths[0])
        first = run_update(url)
        progress(f"{kind}: first update {first.own:.2f} s (performance step {first.step:.2f} s, {first.days:,} days)")
        full = []
        for round_number in range(args.repeats):
            full.append(run_update(url, "--full"))
            progress(f"  round {round_number + 1}: --full {full[-1].own:.2f} s, step {full[-1].step:.2f} s")
        progress(f"{kind}: loading {NEW_TRADES:,} new trades")
        load(url, paths[1])
        incremental, nothing = run_update(url), run_update(url)
        after = history_rows(url)
        run_update(url, "--full")
        check = "equal" if history_rows(url) == after else "DIFFERENT"
    finally:
        drop()
    if check != "equal":
        raise SystemExit(f"{kind}: the incremental history differs from --full")
    return {"first_update": medians([first]), "full": medians(full), "incremental": medians([incremental]),
            "nothing_new": medians([nothing]), "investor_days": len(after[0]), "check": check}


def print_results(results):
    rows, repeats = results["rows"], results["repeats"]
    print(f"\nThe performance history at {rows:,} trades (+{NEW_TRADES:,}); own = the stage's time (its summary "
          f"line), step = the performance step's time inside it (its log line)")
    print(f"\n`update_portfolio.py --full` (medians of {repeats})")
    print("| database | investor days | update --full, own | performance step | update without it | step share |")
    print("|---|---|---|---|---|---|")
    for kind, figures in results["databases"].items():
        full = figures["full"]
        print(f"| {kind} | {figures['investor_days']:,} | {full['own']:.2f} s | {full['step']:.2f} s | "
              f"{full['without_step']:.2f} s | {full['step'] / full['own']:.0%} |")
    print(f"\nIncremental: update_portfolio.py after {NEW_TRADES:,} new trades, then with nothing new (one run each)")
    print("| database | update, own | performance step | update without it | days rebuilt | nothing new: own | "
          "nothing new: step | check |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, figures in results["databases"].items():
        new, nothing = figures["incremental"], figures["nothing_new"]
        print(f"| {kind} | {new['own']:.2f} s | {new['step']:.2f} s | {new['without_step']:.2f} s | {new['days']:,} | "
              f"{nothing['own']:.2f} s | {nothing['step']:.2f} s | {figures['check']} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,mariadb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mariadb-url", default=os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = {"rows": args.rows, "new_trades": NEW_TRADES, "repeats": args.repeats, "databases": {}}
    with tempfile.TemporaryDirectory(prefix="bench_performance_") as workdir:
        paths = write_files(args.rows, workdir)
        for kind in args.databases.split(","):
            results["databases"][kind] = bench_database(kind, paths, args, workdir)
    print_results(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
