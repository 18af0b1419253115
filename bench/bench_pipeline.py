"""Benchmark the pipeline: master_etl per stage, update_portfolio alone (full replay beside a bare read, and
incremental after 10,000 new trades), and the original project's approach, all measured in the same run.

Figures and their references (each pair measured in the same run, on the same fresh database):
- master_etl total beside its own load stage: time_ratio = total / load (target <= 2.2 on MariaDB), the median
  of --runs master_etl runs (each on a fresh database, generating its file);
- update_portfolio --full beside a bare read of every trade in replay order;
- the original project's load (pandas `to_sql` defaults) + update (one GROUP BY read into pandas, written back
  with `to_sql(if_exists="replace")`), reproduced in `original_pipeline` on its own tables.

Usage (from the project folder):
    python bench/bench_pipeline.py                       # 10,000 and 1,000,000 trades, SQLite, MariaDB, PostgreSQL
    python bench/bench_pipeline.py --rows 10000 --databases sqlite        # quick
    python bench/bench_pipeline.py --runs 3 --json bench/results-pipeline.json
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import uuid

import matplotlib
import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import db_config  # noqa: E402
import ledger  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import master_etl  # noqa: E402
import timing  # noqa: E402
import update_portfolio  # noqa: E402

NEW_TRADES = 10_000
MARIADB_URL = "mysql+pymysql://root:@127.0.0.1:3306"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"  # the maintenance database
DATABASES = ("sqlite", "mariadb", "postgresql")
SERVER_STATEMENTS = {  # (create, drop) of a benchmark database on each server
    "mariadb": ("CREATE DATABASE {name} CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS {name}"),
    "postgresql": ("CREATE DATABASE {name}", "DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
}
MASTER_OVER_LOAD_TARGET = 2.2  # on MariaDB


def fresh_database(kind, workdir, mariadb_url=MARIADB_URL, postgres_url=POSTGRES_URL):
    """(URL of a new empty database, a function that drops it): a SQLite file in workdir, or a database created on
    the MariaDB server or on the PostgreSQL server (through its maintenance database postgres_url, AUTOCOMMIT)."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        path = os.path.join(workdir, f"{name}.db")
        return f"sqlite:///{path}", lambda: remove_sqlite(path)
    if kind not in SERVER_STATEMENTS:
        raise ValueError(f"unknown database {kind!r}: choose from {', '.join(DATABASES)}")
    server_url = mariadb_url if kind == "mariadb" else postgres_url
    create, drop = SERVER_STATEMENTS[kind]
    server = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(create.format(name=name)))

    def drop_database():
        with server.connect() as connection:
            connection.execute(text(drop.format(name=name)))
        server.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop_database


def remove_sqlite(path):
    """Remove a SQLite database file and its WAL and shared-memory files, those that exist."""
    for suffix in ("", "-wal", "-shm", ".valuation-lock"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def split_history(path, history_path, new_path, new_rows):
    """Split a time-ordered trade file into history (all but the last new_rows) and the newest new_rows."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    header, body = lines[0], lines[1:]
    for target, rows in ((history_path, body[:-new_rows]), (new_path, body[-new_rows:])):
        with open(target, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(header)
            handle.writelines(rows)


def master_run(kind, rows, workdir, servers):
    """One master_etl run end to end on a fresh database: (total seconds, {stage: seconds})."""
    url, drop = fresh_database(kind, workdir, *servers)
    trades = os.path.join(workdir, f"master_{kind}_{rows}.csv")
    args = master_etl.make_parser().parse_args(
        ["--rows", str(rows), "--seed", "11", "--input", trades, "--reports", os.path.join(workdir, "reports"),
         "--database-url", url, "--quiet"])
    engine = db_config.get_engine(url)
    try:
        total, timings = timing.timed(master_etl.run_stages, engine, args)
    finally:
        engine.dispose()
        drop()
    return total, {name: seconds for name, seconds, _ in timings}


def bench_master(kind, rows, workdir, servers, runs):
    """master_etl `runs` times: the median seconds of each stage and of the total, and the total beside its own
    load stage (timing.Figure)."""
    total = timing.median_of(lambda: master_run(kind, rows, workdir, servers), runs)
    loads = tuple(stages["load"] for stages in total.results)
    figure = timing.Figure("master_etl total", total.seconds, "load stage", statistics.median(loads), total.runs, loads)
    medians = {name: round(statistics.median(stages[name] for stages in total.results), 2) for name in total.results[0]}
    return medians | {"total": round(figure.seconds, 2), "total_over_load": figure.as_dict()}


def bench_update(kind, rows, workdir, servers):
    """update_portfolio on `rows` trades: full replay beside a bare read; incremental after 10,000 new trades."""
    url, drop = fresh_database(kind, workdir, *servers)
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
        read_seconds, _ = timing.timed(bare_read, engine)
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
    """Read every trade's replay columns in replay order, doing nothing with them."""
    with engine.connect() as connection:
        result = connection.execute(text(
            f"SELECT {ledger.TRADE_COLUMNS_SQL} FROM transactions t {ledger.REPLAY_ORDER_SQL}"
        ).execution_options(stream_results=True))
        while result.fetchmany(50_000):
            pass


def original_load(engine, trades):
    """The original project's load: pandas read_csv, then to_sql with its defaults."""
    frame = pd.read_csv(trades)
    frame.drop(columns=["txn_ref"]).to_sql("transactions", engine, if_exists="append", index=False)


def original_update(engine):
    """The original project's update: one GROUP BY read into pandas, written back with to_sql replace."""
    with engine.connect() as connection:
        portfolio = pd.read_sql(text(
            "SELECT investor_id, stock_symbol, SUM(CASE WHEN txn_type = 'BUY' THEN quantity ELSE -quantity END) "
            "AS total_quantity, AVG(price) AS avg_price FROM transactions GROUP BY investor_id, stock_symbol"),
            connection)
    portfolio.to_sql("portfolios", engine, if_exists="replace", index=False)


def original_pipeline(kind, rows, workdir, servers):
    """The original project's load and update, timed."""
    url, drop = fresh_database(kind, workdir, *servers)
    trades = os.path.join(workdir, f"original_{rows}.csv")
    generate_dummy_data.write_dummy_data(trades, rows, seed=11)
    engine = create_engine(url)
    try:
        load_seconds, _ = timing.timed(original_load, engine, trades)
        update_seconds, _ = timing.timed(original_update, engine)
        return {"load_s": round(load_seconds, 2), "update_s": round(update_seconds, 2),
                "total": round(load_seconds + update_seconds, 2)}
    finally:
        engine.dispose()
        drop()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,1000000", help="comma-separated trade counts (default: %(default)s)")
    parser.add_argument("--databases", default=",".join(DATABASES),
                        help="comma-separated, from: sqlite, mariadb, postgresql (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=1,
                        help="master_etl runs per database and size; the median is shown (default: %(default)s)")
    parser.add_argument("--mariadb-url", default=MARIADB_URL, help="MariaDB server URL (default: %(default)s)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL maintenance database URL (default: %(default)s)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    args.rows = [int(rows) for rows in args.rows.split(",")]
    args.databases = args.databases.split(",")
    unknown = set(args.databases) - set(DATABASES)
    if unknown:
        parser.error(f"--databases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(DATABASES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    matplotlib.use("Agg")
    servers = (args.mariadb_url, args.postgres_url)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for rows in args.rows:
            for kind in args.databases:
                record = {"database": kind, "rows": rows,
                          "master_etl": bench_master(kind, rows, workdir, servers, args.runs),
                          "update_portfolio": bench_update(kind, rows, workdir, servers),
                          "original": original_pipeline(kind, rows, workdir, servers)}
                results.append(record)
                print(json.dumps(record), flush=True)
    machine = timing.machine_line(server_urls(args))
    print_table(results, machine)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "runs": args.runs, "results": results}, handle, indent=2)
    return 0


def server_urls(args):
    """The server URLs of the databases measured, for the machine line."""
    return [url for kind, url in (("mariadb", args.mariadb_url), ("postgresql", args.postgres_url))
            if kind in args.databases]


def print_table(results, machine):
    print(f"\n{machine}")
    print(timing.markdown_header([
        "database", "trades", "generate", "seed", "load", "update", "surveillance", "analyze", "master_etl total",
        f"total / load (target <= {MASTER_OVER_LOAD_TARGET} on MariaDB)", "original load + update", "update --full",
        "bare read", "incremental update, 10k new"]))
    for r in results:
        m, u, o = r["master_etl"], r["update_portfolio"], r["original"]
        print(timing.markdown_row([
            r["database"], f"{r['rows']:,}", f"{m['generate']} s", f"{m['seed']} s", f"{m['load']} s",
            f"{m['update']} s", f"{m['surveillance']} s", f"{m['analyze']} s", f"{m['total']} s",
            f"{m['total_over_load']['time_ratio']:.2f}", f"{o['load_s']} + {o['update_s']} s",
            f"{u['full_replay_s']} s", f"{u['bare_read_s']} s", f"{u['incremental_10k_s']} s"]))


if __name__ == "__main__":
    sys.exit(main())
