"""load_transactions.py --queue: trades from RabbitMQ reach portfolios, rejects are kept and dead-lettered, and a
consumer killed at any moment loses nothing and counts nothing twice (real RabbitMQ, SQLite and MariaDB).

Each test uses queues of its own (a random name) and deletes them afterwards. Without a reachable broker the
tests skip, except when CI is set: then they fail.
"""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from decimal import Decimal

import pandas
import pika
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy import func, select, text

import db_config
import db_retry
import generate_dummy_data
import load_transactions
import seed_investors
import trade_queue
import update_portfolio
from schema import alerts, load_batches, portfolios, rejected_transactions, transactions

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_SECONDS = 60


@pytest.fixture
def queue_name(broker):
    channel, created = broker
    name = f"test-trades-{uuid.uuid4().hex[:8]}"
    created += [name, f"{name}.rejected", f"{name}.0", f"{name}.1"]
    return name


def build_market(engine, folder, rows=200, seed=5):
    """Investors, stocks, `rows` generated trades applied and their closes, in this fresh database."""
    seed_investors.seed_reference_data(engine)
    path = folder / "t.csv"
    generate_dummy_data.write_dummy_data(str(path), rows, seed=seed)
    load_transactions.load_prices_file(engine, str(folder / "market_prices.csv"))
    load_transactions.load_file(engine, str(path))
    update_portfolio.update_portfolios(engine)
    return engine


@pytest.fixture
def market(engine, tmp_path):
    """A fresh database (SQLite, then MariaDB) with investors, stocks, 200 generated trades and their closes."""
    return build_market(engine, tmp_path)


def live_trades(count, start=0, investors=(1001, 1002, 1003, 1004), prefix="Q"):
    """Valid BUY trades of today, spread over the investors."""
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 60))
    return [{"txn_ref": f"{prefix}-{n}", "investor_id": investors[n % len(investors)],
             "stock_symbol": ("AAPL", "MSFT", "JPM")[n % 3], "txn_type": "BUY", "quantity": 1 + n % 7,
             "price": f"{100 + n % 13}.25", "txn_time": now} for n in range(start, start + count)]


POISON = [
    b"this is not json",
    b'["a", "list"]',
    json.dumps({"txn_ref": "P-1", "investor_id": 999999, "stock_symbol": "AAPL", "txn_type": "BUY",
                "quantity": 1, "price": "10", "txn_time": "2026-01-05 10:00:00"}).encode(),
    json.dumps({"txn_ref": "P-2", "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY",
                "quantity": 1, "price": "-3", "txn_time": "2026-01-05 10:00:00"}).encode(),
    json.dumps({"txn_ref": "P-3", "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY",
                "quantity": {"n": 1}, "price": "10", "txn_time": "2026-01-05 10:00:00"}).encode(),
    json.dumps({"txn_ref": "P-4", "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY",
                "quantity": 1, "price": "10", "txn_time": "2026-01-05 10:00:00", "fee": "-1.50"}).encode(),
]
POISON_REASONS = ["message: not JSON", "message: a JSON list, not an object",
                  "investor_id: 999999 is not a known investor", "price: '-3' is not a plain decimal > 0",
                  'quantity: {"n": "1"} is not a string or a number',
                  "fee: '-1.50' is not a plain decimal >= 0 ('.' before decimals, no thousands separators)"]


def publish(channel, queue, bodies):
    channel.queue_declare(queue, durable=True)
    for body in bodies:
        channel.basic_publish("", queue, body if isinstance(body, bytes) else json.dumps(body).encode(),
                              pika.BasicProperties(delivery_mode=2))


STARTED = []  # processes a test started: killed after it if still running (a failed test stops nothing itself)


@pytest.fixture(autouse=True)
def no_process_left():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def start_consumer(url, queue, *options, driver=None):
    """load_transactions.py --queue as a process (or a driver script that patches it first)."""
    arguments = ["--queue", "--queue-name", queue, "--database-url", url, "--report-every", "0", *options]
    command = [sys.executable, "-c", driver, *arguments] if driver else \
        [sys.executable, os.path.join(PROJECT, "load_transactions.py"), *arguments]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(process)
    return process


def queue_totals(url, source_prefix="queue:"):
    """(read, loaded, duplicate, rejected, batches not yet surveilled) over the queue's live batches."""
    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            return tuple(int(value or 0) for value in connection.execute(select(
                func.sum(load_batches.c.rows_read), func.sum(load_batches.c.rows_loaded),
                func.sum(load_batches.c.rows_duplicate), func.sum(load_batches.c.rows_rejected),
                func.sum(text("CASE WHEN surveilled_at IS NULL THEN 1 ELSE 0 END")))
                .where(load_batches.c.source.like(f"{source_prefix}%"))).one())
    finally:
        engine.dispose()


def wait_until(condition, what):
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(process):
    """SIGTERM, then the exit code and output."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def messages_in(channel, queue):
    return channel.queue_declare(queue, passive=True).method.message_count


def replay_columns(engine):
    with engine.connect() as connection:
        return connection.execute(select(
            portfolios.c.investor_id, portfolios.c.stock_symbol, portfolios.c.quantity, portfolios.c.cost_basis,
            portfolios.c.realized_pnl, portfolios.c.last_txn_id, portfolios.c.trade_count, portfolios.c.market_value)
            .order_by(portfolios.c.investor_id, portfolios.c.stock_symbol)).all()


def assert_equals_full_replay(engine):
    live = replay_columns(engine)
    update_portfolio.update_portfolios(engine, full=True)
    assert replay_columns(engine) == live


@pytest.mark.slow_on_servers
def test_messages_load_apply_and_poison_is_recorded_and_dead_lettered(market, database_url, broker, queue_name):
    channel, _ = broker
    trades = live_trades(40)
    publish(channel, queue_name, trades[:20] + POISON + trades[20:])
    consumer = start_consumer(database_url, queue_name)
    wait_until(lambda: queue_totals(database_url)[0] == 46 and queue_totals(database_url)[4] == 0, "46 messages")
    code, out, err = stop(consumer)
    assert code == 0, err
    assert "46 messages, 40 loaded, 0 duplicates, 6 rejected" in out
    assert queue_totals(database_url) == (46, 40, 0, 6, 0)
    with market.connect() as connection:
        stored = connection.execute(select(rejected_transactions.c.line_number, rejected_transactions.c.reason,
                                           rejected_transactions.c.raw_record)
                                    .order_by(rejected_transactions.c.reject_id)).all()
        refs = set(connection.execute(select(transactions.c.txn_ref).where(
            transactions.c.txn_ref.like("Q-%"))).scalars())
    assert refs == {trade["txn_ref"] for trade in trades}
    assert [line for line, _, _ in stored] == [None] * 6
    assert [raw for _, _, raw in stored] == [body.decode() for body in POISON]
    for (_, reason, _), expected in zip(stored, POISON_REASONS):
        assert reason.startswith(expected), reason
    dead = [channel.basic_get(f"{queue_name}.rejected", auto_ack=True) for _ in range(6)]
    assert [body for _, _, body in dead] == POISON
    assert [properties.headers["x-reason"] for _, properties, _ in dead] == [reason for _, reason, _ in stored]
    assert messages_in(channel, queue_name) == 0
    assert_equals_full_replay(market)


def test_positions_and_risk_follow_each_trade(market, database_url, broker, queue_name):
    channel, _ = broker
    trade = live_trades(1, investors=(1007,), prefix="ONE")[0] | {"quantity": 3, "price": "101.50"}
    with market.connect() as connection:
        before = connection.execute(select(portfolios.c.quantity, portfolios.c.cost_basis).where(
            portfolios.c.investor_id == 1007, portfolios.c.stock_symbol == trade["stock_symbol"])).first()
    consumer = start_consumer(database_url, queue_name)
    publish(channel, queue_name, [trade])
    wait_until(lambda: queue_totals(database_url)[1] == 1, "the trade")
    code, _, err = stop(consumer)
    assert code == 0, err
    quantity, cost = before or (0, 0)
    with market.connect() as connection:
        after = connection.execute(select(portfolios.c.quantity, portfolios.c.cost_basis, portfolios.c.market_value,
                                          portfolios.c.last_txn_id).where(
            portfolios.c.investor_id == 1007, portfolios.c.stock_symbol == trade["stock_symbol"])).one()
        txn_id = connection.execute(select(transactions.c.txn_id).where(transactions.c.txn_ref == "ONE-0")).scalar()
        scored = connection.execute(text("SELECT updated_at FROM investor_risk WHERE investor_id = 1007")).scalar()
    assert after.quantity == quantity + 3
    assert float(after.cost_basis) == pytest.approx(float(cost) + 3 * 101.5, abs=0.005)
    assert after.last_txn_id == txn_id and after.market_value is not None and scored is not None
    assert_equals_full_replay(market)


CRASH_AFTER_COMMIT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    import load_transactions, trade_queue
    original = trade_queue.acknowledge
    def acknowledge(session, worker, wait_seconds=0.0):
        if session.waiting:  # a batch is committed and not acknowledged: die here
            os.kill(os.getpid(), signal.SIGKILL)
        return original(session, worker, wait_seconds)
    trade_queue.acknowledge = acknowledge
    sys.exit(load_transactions.main(sys.argv[1:]))
""")
CRASH_BEFORE_COMMIT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    import live_apply, load_transactions
    def apply(self, records):  # messages received, nothing committed: die here
        os.kill(os.getpid(), signal.SIGKILL)
    live_apply.LiveApplier.apply = apply
    sys.exit(load_transactions.main(sys.argv[1:]))
""")


CRASH_BEFORE_DEAD_LETTER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    import load_transactions, trade_queue
    def dead_letter(channel, queue_name, body, reason):  # rejects committed, not dead-lettered yet: die here
        os.kill(os.getpid(), signal.SIGKILL)
    trade_queue.dead_letter = dead_letter
    sys.exit(load_transactions.main(sys.argv[1:]))
""")


@pytest.mark.slow_on_servers
def test_rejects_committed_before_a_crash_are_recorded_once_and_dead_lettered_after_it(market, database_url, broker,
                                                                                       queue_name):
    channel, _ = broker
    first = live_trades(1, prefix="C")[0]
    publish(channel, queue_name, [first])
    consumer = start_consumer(database_url, queue_name)
    wait_until(lambda: queue_totals(database_url)[1] == 1, "the first trade")
    assert stop(consumer)[0] == 0
    conflict = json.dumps({**first, "quantity": first["quantity"] + 1}).encode()  # same txn_ref, other values
    publish(channel, queue_name, [conflict, POISON[0]])
    crashing = start_consumer(database_url, queue_name, "--batch-ms", "200", driver=CRASH_BEFORE_DEAD_LETTER)
    assert crashing.wait(timeout=60) == -signal.SIGKILL
    assert messages_in(channel, f"{queue_name}.rejected") == 0
    consumer = start_consumer(database_url, queue_name)
    wait_until(lambda: queue_totals(database_url)[0] == 5 and queue_totals(database_url)[4] == 0, "the redelivery")
    code, out, err = stop(consumer)
    assert code == 0, err
    assert "2 messages, 0 loaded, 2 duplicates, 0 rejected" in out
    assert queue_totals(database_url)[:4] == (5, 1, 2, 2)
    with market.connect() as connection:
        reasons = connection.execute(select(rejected_transactions.c.reason)).scalars().all()
    assert len(reasons) == 2 and reasons[0].startswith("txn_ref: 'C-0' conflicts with loaded trade")
    dead = [channel.basic_get(f"{queue_name}.rejected", auto_ack=True) for _ in range(2)]
    assert [body for _, _, body in dead] == [conflict, POISON[0]]
    assert [properties.headers["x-reason"] for _, properties, _ in dead] == reasons


@pytest.mark.slow_on_servers
@pytest.mark.parametrize("driver, redelivered_as_duplicates", [(CRASH_AFTER_COMMIT, True),
                                                               (CRASH_BEFORE_COMMIT, False)])
def test_a_consumer_killed_loses_nothing_and_counts_nothing_twice(market, database_url, broker, queue_name, driver,
                                                                  redelivered_as_duplicates):
    channel, _ = broker
    trades = live_trades(30)
    publish(channel, queue_name, trades + POISON[:2])
    crashing = start_consumer(database_url, queue_name, "--batch-size", "1000", "--batch-ms", "200", driver=driver)
    assert crashing.wait(timeout=60) == -signal.SIGKILL
    committed = queue_totals(database_url)
    assert committed[:4] == ((32, 30, 0, 2) if redelivered_as_duplicates else (0, 0, 0, 0))
    consumer = start_consumer(database_url, queue_name)
    wait_until(lambda: queue_totals(database_url)[0] == (64 if redelivered_as_duplicates else 32)
               and queue_totals(database_url)[4] == 0, "the redelivered messages")
    code, _, err = stop(consumer)
    assert code == 0, err
    read, loaded, duplicate, rejected, unsurveilled = queue_totals(database_url)
    assert (loaded, rejected, unsurveilled) == (30, 2, 0)
    assert duplicate == (32 if redelivered_as_duplicates else 0)
    with market.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions).where(
            transactions.c.txn_ref.like("Q-%"))).scalar() == 30
        assert connection.execute(select(func.count()).select_from(rejected_transactions)).scalar() == 2
    assert messages_in(channel, queue_name) == 0
    assert messages_in(channel, f"{queue_name}.rejected") >= 2
    assert_equals_full_replay(market)


def test_two_consumers_on_partitions_apply_interleaved_investors(mariadb_url, broker, queue_name, tmp_path):
    """On MariaDB: partitions run at once on a server database (SQLite lets one writer in at a time)."""
    database_url = mariadb_url
    market = build_market(db_config.get_engine(mariadb_url), tmp_path)
    channel, _ = broker
    publisher = trade_queue.Publisher(queue_name, partitions=2)
    trades = live_trades(120, investors=(1001, 1002, 1003, 1004, 1005, 1006))
    for trade in trades:
        publisher.publish(trade)
    publisher.close()
    consumers = [start_consumer(database_url, queue_name, "--partitions", "2", "--partition", str(k))
                 for k in (0, 1)]
    wait_until(lambda: queue_totals(database_url)[1] == 120 and queue_totals(database_url)[4] == 0, "120 trades")
    for consumer in consumers:
        code, out, err = stop(consumer)
        assert code == 0, err
    engine = market
    with engine.connect() as connection:
        sources = dict(connection.execute(text(
            "SELECT source, SUM(rows_loaded) FROM load_batches WHERE source LIKE 'queue:%' GROUP BY source")).all())
        by_investor = connection.execute(text(
            "SELECT t.investor_id, b.source FROM transactions t JOIN load_batches b ON b.batch_id = t.batch_id "
            "WHERE t.txn_ref LIKE 'Q-%' GROUP BY t.investor_id, b.source")).all()
    assert {source: int(n) for source, n in sources.items()} == {f"queue:{queue_name}.0": 60,
                                                                f"queue:{queue_name}.1": 60}
    assert all(source.endswith(f".{investor % 2}") for investor, source in by_investor)
    assert_equals_full_replay(engine)
    engine.dispose()


def test_parse_message_names_the_problem():
    whole = {"txn_ref": "A", "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY", "quantity": 3,
             "price": 12.5, "txn_time": "2026-01-05 10:00:00"}
    record = trade_queue.parse_message(json.dumps(whole).encode())
    assert record.fields["investor_id"] == "1001" and record.fields["price"] == "12.5" and record.problem is None
    assert trade_queue.parse_message(json.dumps({**whole, "quantity": None}).encode()).problem == \
        "quantity: missing (null)"
    assert trade_queue.parse_message(json.dumps({"txn_ref": "A"}).encode()).problem == "investor_id: missing"
    assert trade_queue.parse_message(b"\xff\xfe").problem.startswith("message: not JSON")
    assert trade_queue.parse_message(b"null").problem == "message: a JSON NoneType, not an object"
    assert trade_queue.parse_message(json.dumps({**whole, "txn_ref": True}).encode()).problem == \
        "txn_ref: true is not a string or a number"
    assert trade_queue.parse_message(json.dumps({**whole, "fee": 0}).encode()).fields["fee"] == "0"
    assert "fee" not in trade_queue.parse_message(json.dumps(whole).encode()).fields
    assert trade_queue.parse_message(b"[" * 100_000).problem.startswith("message: 100,000 characters")
    assert trade_queue.parse_message(b'{"quantity": 1, "quantity": 100}').problem == \
        "message: the field 'quantity' is given twice"
    assert trade_queue.parse_message(b"[" * 5_000).problem.startswith("message: not JSON")


@pytest.mark.parametrize("arguments, message", [
    (["--queue", "--watch", "inbox"], "--watch and --queue run one at a time"),
    (["--queue", "--partitions", "2"], "--partitions N needs --partition K"),
    (["--partitions", "2", "--partition", "0"], "--partitions, --partition apply to --queue only"),
    (["--watch", "inbox", "--batch-ms", "3"], "--batch-ms apply to --queue only"),
    (["t.csv", "--report-every", "3"], "--report-every applies to --queue and --watch only"),
    (["--queue", "--retry-rejects"], "--retry-rejects applies to trade files only"),
    (["--queue", "t.csv"], "trade files and --watch/--queue run one at a time"),
    (["--queue", "--partition", "2", "--partitions", "2"], "--partition 2 needs --partitions N with 0 <= K < N"),
    (["--queue", "--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_contradictory_live_options_exit_2(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_transactions.main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow_on_servers
def test_alerts_of_live_trades_are_raised(market, database_url, broker, queue_name):
    channel, _ = broker
    burst = live_trades(25, investors=(1009,), prefix="BURST")
    consumer = start_consumer(database_url, queue_name)
    publish(channel, queue_name, burst)
    wait_until(lambda: queue_totals(database_url)[1] == 25 and queue_totals(database_url)[4] == 0, "the burst")
    code, _, err = stop(consumer)
    assert code == 0, err
    with market.connect() as connection:
        rules = connection.execute(select(alerts.c.rule).where(alerts.c.txn_ref.like("BURST-%"))).scalars().all()
    assert "BURST" in rules


def test_a_held_partition_lock_stops_only_its_investors(mariadb_url, broker, queue_name, tmp_path):
    """Partitions are not serialized on one lock: while another session holds the lock of investor 1001's
    partition, the consumer of investor 1002's applies on, and 1001's trades follow once it is released."""
    engine = build_market(db_config.get_engine(mariadb_url), tmp_path)
    held = db_config.partition_lock_name(engine, 1001 % db_config.PARTITION_LOCKS)
    publisher = trade_queue.Publisher(queue_name, partitions=2)
    consumers = [start_consumer(mariadb_url, queue_name, "--partitions", "2", "--partition", str(k)) for k in (0, 1)]
    with engine.connect() as holder:
        assert holder.execute(text("SELECT GET_LOCK(:name, 10)"), {"name": held}).scalar() == 1
        for trade in live_trades(20, investors=(1001, 1002)):
            publisher.publish(trade)
        wait_until(lambda: applied_refs(engine) >= {f"Q-{n}" for n in range(1, 20, 2)}, "investor 1002's trades")
        assert not applied_refs(engine) & {f"Q-{n}" for n in range(0, 20, 2)}  # 1001's wait for the lock
        holder.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": held})
    wait_until(lambda: len(applied_refs(engine)) == 20, "investor 1001's trades")
    publisher.close()
    for consumer in consumers:
        assert stop(consumer)[0] == 0
    engine.dispose()


def applied_refs(engine):
    """txn_refs of the live trades that are in their positions."""
    with engine.connect() as connection:
        return set(connection.execute(text(
            "SELECT t.txn_ref FROM transactions t JOIN portfolios p ON p.investor_id = t.investor_id "
            "AND p.stock_symbol = t.stock_symbol AND p.last_txn_id >= t.txn_id WHERE t.txn_ref LIKE 'Q-%'")).scalars())


@pytest.mark.parametrize("url, message", [
    ("not a url", "AMQP_URL 'not a url': not an amqp:// or amqps:// URL"),
    ("http://guest:secret@127.0.0.1:5672/", "AMQP_URL 'http://guest:***@127.0.0.1:5672/': not an amqp"),
    ("amqp://guest:secret@127.0.0.1:notaport/", "AMQP_URL 'amqp://guest:***@127.0.0.1:notaport/': "),
])
def test_an_amqp_url_that_cannot_work_exits_2_with_one_line(url, message, seeded_engine, database_url, monkeypatch,
                                                            capsys):
    monkeypatch.setenv("AMQP_URL", url)
    assert load_transactions.main(["--queue", "--database-url", database_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: load_transactions: {message}") and err.count("\n") == 1 and "secret" not in err


def test_wrong_credentials_exit_1_at_once_without_a_traceback(market, database_url, monkeypatch, queue_name):
    monkeypatch.setenv("AMQP_URL", "amqp://guest:wrong-password@127.0.0.1:5672/")
    consumer = start_consumer(database_url, queue_name)
    code, _, err = consumer.wait(timeout=60), *consumer.communicate()
    assert code == 1 and "Traceback" not in err and "wrong-password" not in err
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:5672/ refused the login" in err


def test_a_consumer_on_a_database_without_investors_takes_no_message(engine, database_url, capsys):
    assert load_transactions.main(["--queue", "--database-url", database_url]) == 2
    assert "the database has no investors and no stocks; run seed_investors.py first (no message was taken)" in \
        capsys.readouterr().err


def test_a_consumer_on_positions_an_earlier_version_built_takes_no_message(seeded_engine, database_url, capsys):
    load_transactions.load_records(seeded_engine, [{"txn_ref": "E1", "investor_id": 1001, "stock_symbol": "AAPL",
                                                   "txn_type": "BUY", "quantity": 1, "price": "100",
                                                   "txn_time": "2024-06-03 10:00:00"}])
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(text("DELETE FROM ledger_settings WHERE name = 'ledger_version'"))
    assert load_transactions.main(["--queue", "--database-url", database_url]) == 2
    assert capsys.readouterr().err.endswith(
        "the positions were built by an earlier version of stock-etl; run update_portfolio.py once first (it "
        "replays every trade by the current rules; no message was taken)\n")


def trade_json(**changes):
    whole = {"txn_ref": "A", "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY", "quantity": 3,
             "price": "12.5", "txn_time": "2026-01-05 10:00:00"}
    return json.dumps({**whole, **changes}).encode()


@pytest.mark.parametrize("body, problem", [
    (trade_json(txn_ref="S-\ud800"), 'txn_ref: "S-\\ud800" holds a lone surrogate'),
    (trade_json(stock_symbol="\udfff"), 'stock_symbol: "\\udfff" holds a lone surrogate'),
    (b'{"txn_ref": "A", "investor_id": NaN}', "message: not JSON (NaN is not a JSON number)"),
    (trade_json(fee=True), "fee: true is not a string or a number"),
    (trade_json(fee=["1"]), 'fee: ["1"] is not a string or a number'),
    (trade_json(fee="\udfff"), 'fee: "\\udfff" holds a lone surrogate'),
])
def test_hostile_values_are_rejects_with_their_reason(body, problem):
    assert trade_queue.parse_message(body).problem.startswith(problem)


@pytest.mark.parametrize("fee, text", [(0, "0"), ("0", "0"), ("0.000", "0.000"), ("", ""), (0.0, "0.0"),
                                       (1.5, "1.5"), ("2.25", "2.25"), ("-1", "-1")])
def test_a_fee_is_passed_on_as_the_text_it_is_written_with(fee, text):
    """Its value is validation's business (as a file's cell): parse_message only takes strings and numbers."""
    record = trade_queue.parse_message(trade_json(fee=fee))
    assert (record.problem, record.fields["fee"]) == (None, text)


def test_a_null_fee_is_no_fee():
    record = trade_queue.parse_message(trade_json(fee=None))
    assert record.problem is None and "fee" not in record.fields


@pytest.mark.slow_on_servers
def test_messages_with_fees_store_them(market, database_url, broker, queue_name):
    """A fee as a JSON string or number is stored exactly; null, missing or "" is 0; a bad fee is a reject
    naming it; the same trade again with another fee conflicts."""
    channel, _ = broker
    trades = live_trades(6, prefix="FEE")
    bodies = [{**trades[0], "fee": "1.25"}, {**trades[1], "fee": 2.5}, {**trades[2], "fee": None}, trades[3],
              {**trades[4], "fee": ""}, {**trades[5], "fee": "-1"},
              {**trades[0], "fee": "1.2500"},  # the same trade: a duplicate
              {**trades[0], "fee": 1.26}]  # another fee: a conflict
    publish(channel, queue_name, bodies)
    consumer = start_consumer(database_url, queue_name)
    wait_until(lambda: queue_totals(database_url)[0] == 8 and queue_totals(database_url)[4] == 0, "8 messages")
    code, out, err = stop(consumer)
    assert code == 0, err
    assert "8 messages, 5 loaded, 1 duplicate, 2 rejected" in out
    with market.connect() as connection:
        stored = dict(connection.execute(select(transactions.c.txn_ref, transactions.c.fee).where(
            transactions.c.txn_ref.like("FEE-%"))).all())
        reasons = connection.execute(select(rejected_transactions.c.reason).order_by(
            rejected_transactions.c.reject_id)).scalars().all()
    assert {ref: Decimal(str(fee)) for ref, fee in stored.items()} == {
        "FEE-0": Decimal("1.25"), "FEE-1": Decimal("2.5"), "FEE-2": Decimal("0"), "FEE-3": Decimal("0"),
        "FEE-4": Decimal("0")}
    assert reasons[0] == "fee: '-1' is not a plain decimal >= 0 ('.' before decimals, no thousands separators)"
    assert re.fullmatch(r"txn_ref: 'FEE-0' (is a conflicting duplicate of line 1|conflicts with loaded trade \d+ "
                        r"\(batch \d+, line 1\))", reasons[1])  # the same live batch or a later one


def test_json_numbers_keep_the_text_they_are_written_with():
    fields = trade_queue.parse_message(b'{"txn_ref": "A", "investor_id": 1001.0, "stock_symbol": "AAPL", '
                                       b'"txn_type": "BUY", "quantity": 1e2, "price": 190.10, '
                                       b'"txn_time": "2026-01-05 10:00:00"}').fields
    assert (fields["investor_id"], fields["quantity"], fields["price"]) == ("1001.0", "1e2", "190.10")


@pytest.mark.slow_on_servers
def test_a_poison_surrogate_next_to_a_good_message_blocks_nothing(market, database_url, broker, queue_name):
    channel, _ = broker
    good = live_trades(1, prefix="OK")[0]
    publish(channel, queue_name, [good, trade_json(txn_ref="S-\ud800")])
    consumer = start_consumer(database_url, queue_name)
    wait_until(lambda: queue_totals(database_url)[0] == 2 and queue_totals(database_url)[4] == 0, "both messages")
    code, out, err = stop(consumer)
    assert code == 0, err
    assert "2 messages, 1 loaded, 0 duplicates, 1 rejected" in out
    assert messages_in(channel, queue_name) == 0


def test_a_lost_connection_wrapped_by_pandas_is_an_outage():
    lost = OperationalError("SELECT 1", {}, Exception())
    lost.orig.args = (2013, "Lost connection to MySQL server during query")
    try:
        raise pandas.errors.DatabaseError("Execution failed on sql 'WITH\n...'") from lost
    except pandas.errors.DatabaseError as wrapped:
        assert db_retry.is_unreachable(wrapped) and not db_retry.is_unreachable(pandas.errors.DatabaseError("x"))
