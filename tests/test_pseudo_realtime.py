"""pseudo_realtime.py: streamed trades are valid, committed one at a time, and never oversell.

Each test seeds a fresh database (SQLite and MariaDB), loads a small generated file with its prices, then
streams trades with --interval 0.
"""
import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

import db_config
import generate_dummy_data
import load_transactions
import pseudo_realtime
import seed_investors
import update_portfolio
from schema import alerts, load_batches, transactions


@pytest.fixture
def market(engine, tmp_path):
    """The fresh database with investors, stocks, a small generated file of trades and its daily closes."""
    seed_investors.seed_reference_data(engine)
    path = tmp_path / "t.csv"
    generate_dummy_data.write_dummy_data(str(path), 300, seed=8)
    load_transactions.load_prices_file(engine, str(tmp_path / "market_prices.csv"))
    summary = load_transactions.load_file(engine, str(path))
    assert (summary.rows_loaded, summary.rows_rejected) == (300, 0)
    return engine


def realtime_trades(url):
    """Streamed trades (txn_ref, txn_type, batch_id), read through a brand-new engine: only committed rows."""
    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(transactions.c.txn_ref, transactions.c.txn_type, transactions.c.batch_id)
                                      .where(transactions.c.txn_ref.like("RT-%"))
                                      .order_by(transactions.c.txn_id)).all()
    finally:
        engine.dispose()


def count_trades(engine):
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(transactions)).scalar()


def oversold_refs(engine):
    with engine.connect() as connection:
        return connection.execute(select(alerts.c.txn_ref).where(alerts.c.rule == "OVERSELL")).scalars().all()


def test_five_trades_are_committed(market, database_url, capsys):
    """--count 5 adds exactly 5 committed trades (one feed batch each) that a new connection sees."""
    before = count_trades(market)
    code = pseudo_realtime.main(["--interval", "0", "--count", "5", "--seed", "1", "--database-url", database_url])
    out = capsys.readouterr().out
    assert code == 0
    assert count_trades(market) == before + 5
    streamed = realtime_trades(database_url)
    assert len(streamed) == 5 and all(ref.startswith("RT-") for ref, _, _ in streamed)
    assert len({batch for _, _, batch in streamed}) == 5  # committed one at a time
    with market.connect() as connection:
        sources = connection.execute(select(load_batches.c.source, load_batches.c.status).where(
            load_batches.c.batch_id.in_([batch for _, _, batch in streamed]))).all()
    assert set(sources) == {("feed", "loaded")}
    assert [line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("committed ")] == [
        ref for ref, _, _ in streamed]
    assert "stopped: 5 trades committed" in out

    update_portfolio.update_portfolios(market)
    assert not [ref for ref in oversold_refs(market) if ref.startswith("RT-")]


def test_longer_stream_never_oversells(market, database_url, capsys):
    """Thirty streamed trades (with SELLs of what is held), updated every 10: no OVERSELL alert at all."""
    code = pseudo_realtime.main(["--interval", "0", "--count", "30", "--seed", "4", "--update-every", "10",
                                 "--database-url", database_url])
    out = capsys.readouterr().out
    assert code == 0
    streamed = realtime_trades(database_url)
    assert len(streamed) == 30
    assert {kind for _, kind, _ in streamed} == {"BUY", "SELL"}
    assert out.count("update_portfolio (first run)") + out.count("update_portfolio (incremental)") == 3
    update_portfolio.update_portfolios(market)
    assert oversold_refs(market) == []


def test_same_seed_streams_the_same_trades(sqlite_url, tmp_path):
    """--seed makes the stream reproducible (apart from the clock): the same refs on two fresh databases."""
    refs = []
    for name in ("one", "two"):
        engine = db_config.get_engine(f"sqlite:///{tmp_path / name}.db")
        seed_investors.seed_reference_data(engine)
        assert pseudo_realtime.stream(engine, interval=0, count=3, seed=21) == 3
        with engine.connect() as connection:
            refs.append(connection.execute(select(transactions.c.txn_ref, transactions.c.investor_id,
                                                  transactions.c.stock_symbol, transactions.c.quantity)
                                           .order_by(transactions.c.txn_id)).all())
        engine.dispose()
    assert refs[0] == refs[1] and len(refs[0]) == 3


def test_empty_database_is_an_input_error_like_the_loaders(sqlite_url, capsys):
    """Without investors and stocks the stream cannot start: exit 2 (as load_transactions) and a one-line hint."""
    code = pseudo_realtime.main(["--interval", "0", "--count", "1", "--database-url", sqlite_url])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: pseudo_realtime: no investors or stocks in the database: run seed_investors.py first"]


def test_no_oversell_when_a_loaded_buy_is_minutes_ahead(engine, tmp_path):
    """Holdings bought at a txn_time slightly in the future (within the loader's 5 minutes) are not yet held
    'now': the stream must not sell them at an earlier txn_time."""
    seed_investors.seed_reference_data(engine, investor_count=5)  # the five named investors only
    ahead = (datetime.now() + timedelta(minutes=3)).strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / "ahead.csv"
    path.write_text("txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n" + "".join(
        f"AH-{investor},{investor},AAPL,BUY,50,190.00,{ahead}\n" for investor in range(1001, 1006)), encoding="utf-8")
    assert load_transactions.load_file(engine, str(path)).rows_loaded == 5
    assert pseudo_realtime.stream(engine, interval=0, count=10, seed=1) == 10
    update_portfolio.update_portfolios(engine)
    assert [ref for ref in oversold_refs(engine) if ref.startswith("RT-")] == []


@pytest.mark.parametrize("quantity, price, fee", [
    (1, "10.00", "1.00"),  # 0.005: the minimum
    (3, "666.66", "1.00"),  # 0.99999: still the minimum
    (4, "500.00", "1.00"),  # exactly 1.00
    (100, "250.00", "12.50"),
    (1000, "190.11", "95.06"),  # 95.055: half a cent rounds up
    (7, "123.45", "1.00"),
    (20000, "999.99", "9999.90"),
])
def test_the_simulated_fee_is_005_percent_of_the_notional_at_least_one(quantity, price, fee):
    assert pseudo_realtime.broker_fee(quantity, price) == Decimal(fee)
    assert str(pseudo_realtime.broker_fee(quantity, price)) == fee  # written with cents, as a file would


def test_simulated_trades_carry_their_fee():
    simulator = pseudo_realtime.TradeSimulator([1001], {"AAPL": 190.0}, {}, random.Random(3))
    trades = [simulator.next_trade() for _ in range(20)]
    assert all(trade["fee"] == str(pseudo_realtime.broker_fee(trade["quantity"], trade["price"])) for trade in trades)
    assert {trade["txn_type"] for trade in trades} == {"BUY", "SELL"}


def test_streamed_trades_store_their_fees(market, database_url, capsys):
    assert pseudo_realtime.main(["--interval", "0", "--count", "8", "--seed", "2", "--database-url",
                                 database_url]) == 0
    out = capsys.readouterr().out
    with market.connect() as connection:
        rows = connection.execute(select(transactions.c.quantity, transactions.c.price, transactions.c.fee)
                                  .where(transactions.c.txn_ref.like("RT-%"))).all()
    assert len(rows) == 8
    for quantity, price, fee in rows:  # the schedule, worked out here on its own
        notional_fee = (Decimal(quantity) * Decimal(str(price)) * 5 / 10_000).quantize(Decimal("0.01"), "ROUND_HALF_UP")
        assert Decimal(str(fee)) == max(Decimal("1.00"), notional_fee) >= 1
    assert out.count(", fee ") == 8
