"""Crashes, locks and concurrency: a killed loader leaves no worker and no batch 'running' forever, two loaders at
once both succeed, deadlocks are retried, a database without reference data is refused, and rejected rows can be
offered again."""
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

import batches
import db_retry
import load_transactions
import seed_investors
from schema import investors, load_batches, market_prices, transactions

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"


def write_trades(path, count, prefix="t"):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(HEADER + "\n")
        handle.writelines(f"{prefix}{n:09d},{1001 + n % 5},AAPL,BUY,{1 + n % 90},{100 + n % 50}.25,"
                          f"2025-01-02 10:{n % 60:02d}:00\n" for n in range(count))
    return str(path)


def loader(url, *args):
    return subprocess.Popen([sys.executable, os.path.join(PROJECT_DIR, "load_transactions.py"), "--quiet",
                             "--database-url", url, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_big_load(database_url, tmp_path):
    """A loader subprocess on a file over 8 MB, once its worker process runs: (path, process, worker pids)."""
    big = write_trades(tmp_path / "big.csv", 160_000)
    assert os.path.getsize(big) > load_transactions.BACKGROUND_MIN_BYTES
    process = loader(database_url, big)
    deadline = time.monotonic() + 60
    while not children(process.pid) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    workers = children(process.pid)
    assert workers, "the loader never started its worker"
    return big, process, workers


def batch_rows(engine):
    with engine.connect() as connection:
        return [dict(row._mapping)
                for row in connection.execute(select(load_batches).order_by(load_batches.c.batch_id))]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc to find the worker process")
def test_killed_loader_leaves_no_worker_and_its_batch_is_marked_interrupted(seeded_engine, database_url, tmp_path):
    big, process, workers = start_big_load(database_url, tmp_path)

    process.send_signal(signal.SIGKILL)
    process.wait(10)
    deadline = time.monotonic() + 5
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, workers)), "the worker outlived the loader"
    [batch] = batch_rows(seeded_engine)
    assert batch["status"] == "running"

    summary = load_transactions.load_file(seeded_engine, write_trades(tmp_path / "small.csv", 3, prefix="s"))

    first, second = batch_rows(seeded_engine)
    assert first["status"] == "failed"
    assert first["error"].startswith("interrupted: its loader stopped without finishing")
    assert second["status"] == "loaded" and summary.rows_loaded == 3
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions)).scalar() == 3
    # The big file was never loaded completely, so it is not skipped: it loads now.
    assert load_transactions.load_file(seeded_engine, big).rows_loaded == 160_000


def test_a_running_batch_of_a_live_loader_is_left_alone(seeded_engine):
    live = batches.start_batch(seeded_engine, "live.csv", None, batches.now())  # this process: alive

    assert batches.recover_stale_batches(seeded_engine) == []
    assert batch_rows(seeded_engine)[0]["batch_id"] == live and batch_rows(seeded_engine)[0]["status"] == "running"


def test_runner_on_another_host_is_interrupted_only_after_a_day():
    started = batches.now()
    assert not batches.runner_is_gone("elsewhere:1:1", started, started + batches.STALE_AFTER / 2)
    assert batches.runner_is_gone("elsewhere:1:1", started, started + batches.STALE_AFTER * 2)


def test_two_loaders_of_the_same_files_at_once_both_succeed(seeded_engine, database_url, tmp_path):
    first = write_trades(tmp_path / "a.csv", 20_000)
    overlapping = write_trades(tmp_path / "b.csv", 30_000)  # shares the first 20,000 txn_refs
    (tmp_path / "market_prices.csv").write_text(
        "stock_symbol,price_date,close_price\n" + "".join(f"AAPL,2024-01-{day:02d},1{day}.5\n" for day in range(1, 29)))

    processes = [loader(database_url, path) for path in (first, overlapping, first)]
    outcomes = [(process.wait(120), process.stderr.read()) for process in processes]

    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions)).scalar() == 30_000
        assert connection.execute(select(func.count()).select_from(market_prices)).scalar() == 28


def test_deadlock_is_retried_with_a_log_line(caplog):
    calls = []

    def work():
        calls.append(1)
        if len(calls) < 3:
            raise Exception(1213, "Deadlock found when trying to get lock; try restarting transaction")
        return "done"

    assert db_retry.with_retries(work, "trades.csv: load", pause_seconds=0) == "done"
    assert len(calls) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"trades.csv: load: (1213, 'Deadlock found when trying to get lock; try restarting transaction'); "
        f"trying again (attempt {n} of 5)" for n in (2, 3)]


def test_a_lasting_or_other_error_is_not_retried_for_ever():
    calls = []

    def always(code):
        def work():
            calls.append(code)
            raise Exception(code, "x")
        return work

    with pytest.raises(Exception):
        db_retry.with_retries(always(1213), "x", pause_seconds=0)
    with pytest.raises(Exception):
        db_retry.with_retries(always(1146), "x", pause_seconds=0)  # table does not exist: not transient
    assert calls == [1213] * db_retry.ATTEMPTS + [1146]


def test_concurrent_prices_upserts_do_not_collide(seeded_engine):
    closes = {("AAPL", date(2024, 1, day)): Decimal(f"1{day}.5000") for day in range(1, 29)}
    errors = []

    def upsert():
        try:
            db_retry.with_retries(lambda: load_transactions._upsert_in_transaction(seeded_engine, closes), "prices")
        except Exception as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=upsert) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(market_prices)).scalar() == 28


def test_load_before_seeding_is_refused_and_the_file_loads_after_seeding(engine, database_url, tmp_path, capsys):
    path = write_trades(tmp_path / "trades.csv", 4)

    code = load_transactions.main(["--database-url", database_url, path])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: load_transactions: {path}: the database has no investors; run seed_investors.py first "
        "(nothing was loaded)"]
    [refused] = batch_rows(engine)
    assert refused["status"] == "failed"
    seed_investors.seed_reference_data(engine)
    assert load_transactions.load_file(engine, path).rows_loaded == 4


def test_retry_rejects_loads_rows_rejected_for_a_missing_investor(seeded_engine, database_url, tmp_path, capsys):
    path = tmp_path / "trades.csv"
    path.write_text(f"{HEADER}\na,1001,AAPL,BUY,1,10,2025-01-02 10:00:00\nb,4242,AAPL,BUY,2,10,2025-01-02 10:00:00\n")
    assert load_transactions.main(["--database-url", database_url, str(path)]) == 0
    with seeded_engine.begin() as connection:
        connection.execute(investors.insert().values(investor_id=4242, name="Late Arrival", risk_profile="balanced",
                                                     created_at=batches.now()))
    assert load_transactions.main(["--database-url", database_url, str(path)]) == 0  # skipped: loaded before

    assert load_transactions.main(["--database-url", database_url, "--retry-rejects", str(path)]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out == ["trades.csv: 2 read, 1 loaded, 0 duplicates, 1 rejected (batch 1)",
                   "trades.csv: already loaded in batch 1, skipped",
                   "trades.csv: 2 read, 1 loaded, 1 duplicate, 0 rejected (batch 2)"]
    with seeded_engine.connect() as connection:
        stored = connection.execute(text("SELECT txn_ref FROM transactions ORDER BY txn_id")).scalars().all()
    assert stored == ["a", "b"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc to find the worker process")
@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_sigterm_during_a_big_load_ends_it_in_one_line_and_marks_the_batch_failed(seeded_engine, database_url,
                                                                                   tmp_path, delay):
    _, process, workers = start_big_load(database_url, tmp_path)
    time.sleep(delay)

    process.send_signal(signal.SIGTERM)
    code = process.wait(30)  # it used to hang for ever: the worker blocked on a full pipe

    assert (code, process.stderr.read().splitlines()) == (1, ["error: load_transactions: interrupted"])
    assert not any(map(alive, workers))
    [batch] = batch_rows(seeded_engine)
    assert (batch["status"], batch["error"]) == ("failed", "terminated (SIGTERM)")


@pytest.mark.slow_on_servers
@pytest.mark.parametrize("victim", [0, 1], ids=["reader", "preparer"])
def test_a_killed_worker_ends_the_load_in_one_line_and_nothing_is_kept(seeded_engine, database_url, tmp_path, victim):
    """The loader reads in one worker process and validates in another; either one killed ends the load."""
    big, process, workers = start_big_load(database_url, tmp_path)
    deadline = time.monotonic() + 10
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = children(process.pid)
    assert len(workers) == 2, "the loader reads and validates in two worker processes"
    os.kill(sorted(workers)[victim], signal.SIGKILL)
    code = process.wait(60)
    stderr = process.stderr.read().splitlines()
    assert code == 1 and len(stderr) == 1 and "the parsing process died" in stderr[0], stderr
    assert not any(map(alive, workers))
    [batch] = batch_rows(seeded_engine)
    assert batch["status"] == "failed"
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions)).scalar() == 0
    assert load_transactions.load_file(seeded_engine, big).rows_loaded == 160_000
