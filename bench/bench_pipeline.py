"""Benchmark the pipeline: master_etl per stage, update_portfolio alone (full replay beside a bare read, and
incremental after 10,000 new trades), and the original project's approach, all measured in the same run.

Usage (from the project folder):
    python bench/bench_pipeline.py                       # 10,000 and 1,000,000 trades, SQLite and MariaDB
    python bench/bench_pipeline.py --rows 10000 --databases sqlite        # quick
    python bench/bench_pipeline.py --json bench/out/pipeline.json

The original project loads with pandas `to_sql` (defaults) and updates with one GROUP BY read into pandas and
written back with `to_sql(if_exists="replace")`; it is reproduced here in `original_pipeline` on its own tables.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import uuid

import matplotlib
import pandas as pd
from sqlalchemy import create_engine, text

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import db_config  # noqa: E402
import ledger  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import master_etl  # noqa: E402
import update_portfolio  # noqa: E402

NEW_TRADES = 10_000


def fresh_database(kind, workdir, mariadb_url):
    """(URL of a new empty database, a function that drops it)."""
    if kind == "sqlite":
        path = os.path.join(workdir, f"bench_{uuid.uuid4().hex[:8]}.db")
        return f"sqlite:///{path}", lambda: None
    name = f"bench_{uuid.uuid4().hex[:8]}"
    server = create_engine(mariadb_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))

    def drop():
        with server.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        server.dispose()

    return f"{mariadb_url.rstrip('/')}/{name}", drop


def split_history(path, history_path, new_path, new_rows):
    """Split a time-ordered trade file into history (all but the last new_rows) and the newest new_rows."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    header, body = lines[0], lines[1:]
    for target, rows in ((history_path, body[:-new_rows]), (new_path, body[-new_rows:])):
        with open(target, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(header)
            handle.writelines(rows)


def bench_master(kind, rows, workdir, mariadb_url):
    """master_etl end to end on a fresh database; per-stage seconds."""
    url, drop = fresh_database(kind, workdir, mariadb_url)
    trades = os.path.join(workdir, f"master_{kind}_{rows}.csv")
    args = master_etl.make_parser().parse_args(
        ["--rows", str(rows), "--seed", "11", "--input", trades, "--reports", os.path.join(workdir, "reports"),
         "--database-url", url, "--quiet"])
    engine = db_config.get_engine(url)
    try:
        timings = master_etl.run_stages(engine, args)
    finally:
        engine.dispose()
        drop()
    return {name: round(seconds, 2) for name, seconds, _ in timings} | {
        "total": round(sum(seconds for _, seconds, _ in timings), 2)}


def bench_update(kind, rows, workdir, mariadb_url):
    """update_portfolio on `rows` trades: full replay beside a bare read; incremental after 10,000 new trades."""
    url, drop = fresh_database(kind, workdir, mariadb_url)
    every = os.path.join(workdir, f"update_{rows}.csv")
    history, new = os.path.join(workdir, "history", "trades.csv"), os.path.join(workdir, "new", "trades.csv")
    os.makedirs(os.path.dirname(history), exist_ok=True)
    os.makedirs(os.path.dirname(new), exist_ok=True)
    generate_dummy_data.write_dummy_data(every, rows + NEW_TRADES, seed=12)
    split_history(every, history, new, NEW_TRADES)
    engine = db_config.get_engine(url)
    try:
        master_etl.stage_seed(engine, None)
        load_transactions.load_prices_file(engine, os.path.join(workdir, "market_prices.csv"))
        load_transactions.load_file(engine, history)
        first = update_portfolio.update_portfolios(engine)
        full = update_portfolio.update_portfolios(engine, full=True)
        read_seconds = bare_read(engine)
        load_transactions.load_file(engine, new)
        incremental = update_portfolio.update_portfolios(engine)
        check = update_portfolio.update_portfolios(engine, full=True)
        return {
            "first_update_s": round(first.seconds, 2), "full_replay_s": round(full.seconds, 2),
            "bare_read_s": round(read_seconds, 2), "incremental_10k_s": round(incremental.seconds, 3),
            "incremental_trades": incremental.trades_applied, "positions_replayed": incremental.positions_replayed,
            "full_after_s": round(check.seconds, 2),
        }
    finally:
        engine.dispose()
        drop()


def bare_read(engine):
    """Seconds to read every trade's replay columns in replay order, doing nothing with them."""
    started = time.perf_counter()
    with engine.connect() as connection:
        result = connection.execute(text(
            f"SELECT {ledger.TRADE_COLUMNS_SQL} FROM transactions t {ledger.REPLAY_ORDER_SQL}"
        ).execution_options(stream_results=True))
        while result.fetchmany(50_000):
            pass
    return time.perf_counter() - started


def original_pipeline(kind, rows, workdir, mariadb_url):
    """The original project's load (to_sql) and update (GROUP BY into pandas, to_sql replace), timed."""
    url, drop = fresh_database(kind, workdir, mariadb_url)
    trades = os.path.join(workdir, f"original_{rows}.csv")
    generate_dummy_data.write_dummy_data(trades, rows, seed=11)
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        frame = pd.read_csv(trades)
        frame.drop(columns=["txn_ref"]).to_sql("transactions", engine, if_exists="append", index=False)
        loaded = time.perf_counter()
        with engine.connect() as connection:
            portfolio = pd.read_sql(text(
                "SELECT investor_id, stock_symbol, SUM(CASE WHEN txn_type = 'BUY' THEN quantity ELSE -quantity END) "
                "AS total_quantity, AVG(price) AS avg_price FROM transactions GROUP BY investor_id, stock_symbol"),
                connection)
        portfolio.to_sql("portfolios", engine, if_exists="replace", index=False)
        updated = time.perf_counter()
        return {"load_s": round(loaded - started, 2), "update_s": round(updated - loaded, 2),
                "total": round(updated - started, 2)}
    finally:
        engine.dispose()
        drop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,1000000", help="comma-separated trade counts")
    parser.add_argument("--databases", default="sqlite,mariadb")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root:@127.0.0.1:3306")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for rows in [int(r) for r in args.rows.split(",")]:
            for kind in args.databases.split(","):
                record = {"database": kind, "rows": rows,
                          "master_etl": bench_master(kind, rows, workdir, args.mariadb_url),
                          "update_portfolio": bench_update(kind, rows, workdir, args.mariadb_url),
                          "original": original_pipeline(kind, rows, workdir, args.mariadb_url)}
                results.append(record)
                print(json.dumps(record), flush=True)
    print_table(results)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


def print_table(results):
    print("\n| database | trades | generate | seed | load | update | surveillance | analyze | master_etl total "
          "| original load + update | update --full | bare read | incremental update, 10k new |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m, u, o = r["master_etl"], r["update_portfolio"], r["original"]
        print(f"| {r['database']} | {r['rows']:,} | {m['generate']} s | {m['seed']} s | {m['load']} s | {m['update']} s "
              f"| {m['surveillance']} s | {m['analyze']} s | {m['total']} s | {o['load_s']} + {o['update_s']} s "
              f"| {u['full_replay_s']} s | {u['bare_read_s']} s | {u['incremental_10k_s']} s |")


if __name__ == "__main__":
    main()
