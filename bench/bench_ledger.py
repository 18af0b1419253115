"""Benchmark `update_portfolio.py --full` on a history with fees, splits and dividends, by weighted average cost
and by FIFO, beside the same history without fees or corporate actions (the ledger before them), in one run.

Usage (from the project folder):
    python bench/bench_ledger.py                                   # 1,000,000 trades, SQLite and MariaDB
    python bench/bench_ledger.py --rows 50000 --databases sqlite   # quick
    python bench/bench_ledger.py --json bench/results-ledger.json

With --before COMMIT (default: the commit before fees existed), that version of the project is checked out into a
temporary work tree, builds its own database from the plain files, and its update_portfolio.py --full is timed in
the same rounds: the ledger as it was, beside the ledger now.

The generator writes, with one seed, the plain files (`--no-fees --no-corporate-actions`: the trades of earlier
versions) and the full ones (a fee per trade, a few splits, quarterly dividends; after a split, prices and
quantities are in post-split terms). For each database two fresh databases are built (seed, prices, corporate
actions, trades; not timed) and brought up to date once by an incremental update_portfolio.py. Then --repeats
rounds run, each in turn: plain WAC `--full`, full-ledger WAC `--full --cost-method wac`, full-ledger FIFO
`--full --cost-method fifo`, each an update_portfolio.py process. Reported: medians of the wall-clock time and of
the stage's own time (its summary line), and each beside the plain WAC time of the same run. Checks, else exit 1:
each --full gives the portfolios of the incremental update before it (WAC), and under FIFO the open lots of
every position add up to its quantity and cost basis.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from decimal import Decimal

from sqlalchemy import text

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
from bench_pipeline import fresh_database  # noqa: E402
from bench_update import run_process  # noqa: E402

VARIANTS = (("before", "wac"), ("plain", "wac"), ("ledger", "wac"), ("ledger", "fifo"))
BEFORE_FEES = "fda2597480d13f25ac071bbe61c18aab187d1f8c"  # the last commit before issue 14's fees and actions


def write_files(rows, workdir, plain):
    """Generate the trade file (and its prices and corporate actions) into workdir/plain or workdir/ledger."""
    folder = os.path.join(workdir, "plain" if plain else "ledger")
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "transactions.csv")
    options = ["--no-fees", "--no-corporate-actions"] if plain else []
    code = generate_dummy_data.main(["--rows", str(rows), "--seed", "14", "--out", out, "--quiet", *options])
    if code:
        raise SystemExit(f"generate_dummy_data exited {code}")
    return out


def build_before(url, trades_path, tree):
    """Seed, load and update with the earlier version in `tree` (its own processes, not timed)."""
    for arguments in (["seed_investors.py"], ["load_transactions.py", trades_path], ["update_portfolio.py"]):
        done = subprocess.run([sys.executable, *arguments, "--database-url", url], cwd=tree, capture_output=True,
                              text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{arguments[0]} (before) exited {done.returncode}: {done.stderr}")
    return None


def build(url, trades_path):
    """Seed and load the trade file with the files beside it (not timed), then one incremental update."""
    engine = db_config.get_engine(url)
    try:
        seed_investors.seed_reference_data(engine)
        for path in load_transactions.plan_files([trades_path]):
            summary = load_transactions.load_path(engine, path)
            print(f"  {summary.line()}", flush=True)
    finally:
        engine.dispose()
    run_process(["update_portfolio.py", "--database-url", url], url)
    return portfolio_rows(url)


def portfolio_rows(url):
    """Every portfolios row without updated_at, sorted, values as text."""
    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            columns = [name for name in connection.execute(text("SELECT * FROM portfolios LIMIT 1")).keys()
                       if name != "updated_at"]
            return sorted(tuple(_text(value) for value in row) for row in connection.execute(
                text(f"SELECT {', '.join(columns)} FROM portfolios")))
    finally:
        engine.dispose()


def _text(value):
    return str(Decimal(repr(value)) if isinstance(value, float) else value)


def check_lots(url):
    """Exit unless every FIFO position's open lots add up to its quantity and (to the cent) its cost basis."""
    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            mismatched = connection.execute(text("""
                SELECT COUNT(*) FROM portfolios p
                LEFT JOIN (SELECT investor_id, stock_symbol, SUM(quantity) AS quantity, SUM(cost_basis) AS cost
                           FROM position_lots GROUP BY investor_id, stock_symbol) l
                  ON l.investor_id = p.investor_id AND l.stock_symbol = p.stock_symbol
                WHERE COALESCE(l.quantity, 0) <> p.quantity OR ABS(COALESCE(l.cost, 0) - p.cost_basis) > 0.005
            """)).scalar()
            lots = connection.execute(text("SELECT COUNT(*) FROM position_lots")).scalar()
    finally:
        engine.dispose()
    if mismatched:
        raise SystemExit(f"{url}: {mismatched} FIFO positions whose lots do not add up")
    return lots


def bench_database(kind, paths, args, workdir):
    """The medians of each variant's --full on one kind of database."""
    urls, drops = {}, []
    for name, path in paths.items():
        url, drop = fresh_database(kind, workdir, args.mariadb_url)
        drops.append(drop)
        print(f"{kind}: building the {name} history", flush=True)
        urls[name] = (url, build(url, path))
    url, drop = fresh_database(kind, workdir, args.mariadb_url)
    drops.append(drop)
    print(f"{kind}: building the plain history with the version before fees", flush=True)
    urls["before"] = (url, build_before(url, paths["plain"], args.tree))
    runs = {variant: [] for variant in VARIANTS}
    lots = 0
    try:
        for round_number in range(args.repeats):
            for history, method in VARIANTS:
                url, incremental = urls[history]
                if history == "before":
                    runs[(history, method)].append(run_process(["update_portfolio.py", "--full"], url, args.tree))
                    continue
                arguments = ["update_portfolio.py", "--database-url", url, "--full", "--cost-method", method]
                runs[(history, method)].append(run_process(arguments, url))
                if method == "wac" and portfolio_rows(url) != incremental:
                    raise SystemExit(f"{kind} {history}: --full differs from the incremental update")
                if method == "fifo":
                    lots = check_lots(url)
            print(f"  round {round_number + 1}: " + ", ".join(
                f"{h} {m} {runs[(h, m)][-1].seconds:.2f} s" for h, m in VARIANTS), flush=True)
    finally:
        for drop in drops:
            drop()
    return {f"{history}_{method}": {"seconds": round(statistics.median(r.seconds for r in measured), 3),
                                    "own": round(statistics.median(r.own for r in measured), 3)}
            for (history, method), measured in runs.items()} | {"open_lots": lots}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,mariadb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mariadb-url", default=os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306"))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--before", default=BEFORE_FEES, help="the earlier version to time beside (a commit)")
    args = parser.parse_args(argv)
    results = {"rows": args.rows, "before": args.before, "databases": {}}
    with tempfile.TemporaryDirectory(prefix="bench_ledger_") as workdir:
        args.tree = os.path.join(workdir, "before")
        subprocess.run(["git", "-C", PROJECT, "worktree", "add", "--detach", args.tree, args.before], check=True,
                       capture_output=True)
        paths = {"plain": write_files(args.rows, workdir, plain=True),
                 "ledger": write_files(args.rows, workdir, plain=False)}
        try:
            for kind in args.databases.split(","):
                results["databases"][kind] = bench_database(kind, paths, args, workdir)
        finally:
            subprocess.run(["git", "-C", PROJECT, "worktree", "remove", "--force", args.tree], check=False)
    print(f"\nupdate_portfolio.py --full on {args.rows:,} trades (medians of {args.repeats}; own = the stage's time)")
    print("ratio: the time over that of the version before fees (WAC only, plain history) in the same run")
    print("| database | before fees: WAC, plain | now: WAC, plain | ratio | now: fees + actions, WAC | ratio | "
          "now: fees + actions, FIFO | ratio | open lots |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, figures in results["databases"].items():
        before = figures["before_wac"]
        cells = [f"{before['seconds']:.2f} s (own {before['own']:.2f})"]
        for variant in ("plain_wac", "ledger_wac", "ledger_fifo"):
            measured = figures[variant]
            cells += [f"{measured['seconds']:.2f} s (own {measured['own']:.2f})",
                      f"{measured['seconds'] / before['seconds']:.2f}"]
        print(f"| {kind} | {' | '.join(cells)} | {figures['open_lots']:,} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
