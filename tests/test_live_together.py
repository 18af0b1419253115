"""Batch loads, the inbox, the queue and the feed all at once, for a bounded time: afterwards the portfolios and
risk scores equal those of `update_portfolio.py --full` over the same trades (real RabbitMQ, SQLite and MariaDB).
"""
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import func, select, text

import generate_dummy_data
import update_portfolio
from schema import investor_risk, load_batches, transactions
from test_trade_queue import (STARTED, build_market, no_process_left, queue_totals, replay_columns,  # noqa: F401
                              start_consumer, wait_until)

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SECONDS = 12


def script(name, *arguments):
    process = subprocess.Popen([sys.executable, os.path.join(PROJECT, name), *arguments], cwd=PROJECT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(process)
    return process


def risk_rows(engine):
    with engine.connect() as connection:
        return connection.execute(select(investor_risk.c.investor_id, investor_risk.c.total_market_value,
                                         investor_risk.c.realized_pnl, investor_risk.c.risk_score)
                                  .order_by(investor_risk.c.investor_id)).all()


@pytest.mark.slow_on_servers
def test_batch_inbox_queue_and_feed_at_once_end_equal_to_a_full_replay(engine, database_url, broker, tmp_path):
    channel, created = broker
    queue = f"test-together-{uuid.uuid4().hex[:8]}"
    created += [queue, f"{queue}.rejected"]
    build_market(engine, tmp_path, rows=400, seed=21)
    files = []
    for seed in (22, 23, 24):  # later batch files and inbox files: older trades than the live ones (late)
        folder = tmp_path / f"gen{seed}"
        folder.mkdir()
        generate_dummy_data.write_dummy_data(str(folder / "t.csv"), 150, seed=seed)
        files.append(folder / "t.csv")
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    consumer = start_consumer(database_url, queue)
    watcher = script("load_transactions.py", "--watch", str(inbox), "--database-url", database_url,
                     "--report-every", "0")
    feed = script("pseudo_realtime.py", "--database-url", database_url, "--interval", "0.05", "--count", "60",
                  "--update-every", "7", "--seed", "3")
    publisher = script("pseudo_realtime.py", "--database-url", database_url, "--sink", "rabbitmq", "--queue-name",
                       queue, "--rate", "40", "--count", "300", "--seed", "4")
    started = time.monotonic()
    batch_file = script("load_transactions.py", str(files[0]), "--database-url", database_url)
    for number, path in enumerate(files[1:]):
        staged = inbox / f".incoming{number}.csv"
        shutil.copy(path, staged)
        staged.rename(inbox / f"drop{number}.csv")
        time.sleep(1)
    assert batch_file.wait(timeout=120) == 0, batch_file.stderr.read()
    update = script("update_portfolio.py", "--database-url", database_url)
    assert update.wait(timeout=120) == 0, update.stderr.read()
    for process in (feed, publisher):
        assert process.wait(timeout=120) == 0, process.stderr.read()
    wait_until(lambda: queue_totals(database_url, "queue:")[0] == 300, "the queue's 300 trades")
    wait_until(lambda: len(list((inbox / "processed").glob("*.csv"))) == 2, "the inbox's two files")
    time.sleep(max(0.0, RUN_SECONDS - (time.monotonic() - started)))
    for process in (consumer, watcher):
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err

    update_portfolio.update_portfolios(engine)  # the feed's last trades, if its own update did not come after
    with engine.connect() as connection:
        trades = connection.execute(select(func.count()).select_from(transactions)).scalar()
        running = connection.execute(select(func.count()).select_from(load_batches).where(
            load_batches.c.status == "running")).scalar()
        unapplied = connection.execute(text(
            "SELECT COUNT(*) FROM transactions t JOIN portfolios p ON p.investor_id = t.investor_id "
            "AND p.stock_symbol = t.stock_symbol WHERE p.last_txn_time < t.txn_time")).scalar()
    assert trades == 400 + 3 * 150 + 60 + 300 and running == 0 and unapplied == 0
    live, scores = replay_columns(engine), risk_rows(engine)
    update_portfolio.update_portfolios(engine, full=True)
    assert replay_columns(engine) == live
    assert risk_rows(engine) == scores
