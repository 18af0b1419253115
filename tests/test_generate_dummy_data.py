"""generate_dummy_data.py: realistic, reproducible trades and the daily closes they were priced from.

The properties are checked on the parsed CSV output, independently of the generator's internals; only the
last test needs a database (SQLite and MariaDB through the fixtures).
"""
import csv
import os
from collections import defaultdict
from datetime import date, datetime, time as clock_time, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

import constants
import generate_dummy_data
import load_transactions
from schema import market_prices, transactions

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRADE_HEADER = ["txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time"]
PRICE_HEADER = ["stock_symbol", "price_date", "close_price"]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """5,000 trades with seed 7 as written to CSV: (trade rows as dicts, {(symbol, day): close})."""
    directory = tmp_path_factory.mktemp("generated")
    trade_lines, price_lines = generate_dummy_data.generate(5000, 7)
    generate_dummy_data.write_csv(directory / "trades.csv", generate_dummy_data.TRADE_HEADER, trade_lines)
    generate_dummy_data.write_csv(directory / "market_prices.csv", generate_dummy_data.PRICE_HEADER, price_lines)
    header, rows = read_csv(directory / "trades.csv")
    price_header, price_rows = read_csv(directory / "market_prices.csv")
    assert header == TRADE_HEADER and price_header == PRICE_HEADER
    trades = [dict(zip(header, row)) for row in rows]
    closes = {(symbol, date.fromisoformat(day)): Decimal(close) for symbol, day, close in price_rows}
    return trades, closes


def test_row_count_and_values_are_in_range(generated):
    trades, closes = generated
    symbols = {stock.symbol for stock in constants.STOCKS}
    assert len(trades) == 5000
    assert {t["stock_symbol"] for t in trades} <= symbols
    assert {t["txn_type"] for t in trades} == {"BUY", "SELL"}
    assert all(1001 <= int(t["investor_id"]) <= 1100 for t in trades)
    assert all(int(t["quantity"]) > 0 for t in trades)
    assert len(closes) == len(symbols) * constants.TRADING_DAYS


def test_sells_never_exceed_holdings(generated):
    trades, _ = generated
    held = defaultdict(int)
    for t in trades:
        key = (t["investor_id"], t["stock_symbol"])
        quantity = int(t["quantity"])
        if t["txn_type"] == "SELL":
            assert quantity <= held[key], f"{t['txn_ref']} sells {quantity} but holds {held[key]}"
            held[key] -= quantity
        else:
            held[key] += quantity
    assert sum(t["txn_type"] == "SELL" for t in trades) > 500  # the check above had something to check


def test_trades_happen_on_weekdays_between_open_and_close(generated):
    trades, _ = generated
    for t in trades:
        when = datetime.strptime(t["txn_time"], "%Y-%m-%d %H:%M:%S")
        assert when.weekday() < 5, t
        assert clock_time(9, 30) <= when.time() <= clock_time(16, 0), t


def test_each_price_is_within_one_percent_of_the_days_close(generated):
    trades, closes = generated
    for t in trades:
        close = closes[(t["stock_symbol"], date.fromisoformat(t["txn_time"][:10]))]
        assert abs(Decimal(t["price"]) - close) <= close / 100, t


def test_rows_are_in_time_order_with_unique_refs(generated):
    trades, _ = generated
    times = [t["txn_time"] for t in trades]
    assert times == sorted(times)
    assert len({t["txn_ref"] for t in trades}) == len(trades)


def run_generator(directory, *args):
    out = directory / "transactions.csv"
    assert generate_dummy_data.main([*args, "--out", str(out)]) == 0
    return out.read_bytes(), (directory / "market_prices.csv").read_bytes()


def test_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()

    first = run_generator(tmp_path / "a", "--rows", "2000", "--seed", "3")
    again = run_generator(tmp_path / "b", "--rows", "2000", "--seed", "3")
    other = run_generator(tmp_path / "c", "--rows", "2000", "--seed", "4")

    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_shipped_files_are_the_output_of_rows_10000_seed_42(tmp_path, capsys):
    trades, prices = run_generator(tmp_path, "--rows", "10000", "--seed", "42")

    with open(os.path.join(PROJECT_DIR, "transactions.csv"), "rb") as handle:
        assert trades == handle.read()
    with open(os.path.join(PROJECT_DIR, "market_prices.csv"), "rb") as handle:
        assert prices == handle.read()
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'transactions.csv'}: 10000 trades written; "
                          f"{tmp_path / 'market_prices.csv'}: 6525 daily closes (")
    assert out.endswith(" s, seed 42)\n")


def test_prices_out_option_and_lf_line_endings(tmp_path):
    out, prices_out = tmp_path / "t.csv", tmp_path / "closes.csv"

    assert generate_dummy_data.main(["--rows", "10", "--out", str(out), "--prices-out", str(prices_out)]) == 0

    assert not (tmp_path / "market_prices.csv").exists()
    for path in (out, prices_out):
        data = path.read_bytes()
        assert b"\r" not in data and data.endswith(b"\n")
    assert out.read_bytes().count(b"\n") == 11


def test_end_date_in_the_future_is_a_usage_error(tmp_path, capsys):
    tomorrow = date.today() + timedelta(days=1)

    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--end-date", tomorrow.isoformat(), "--out", str(tmp_path / "t.csv")])

    assert exit_info.value.code == 2
    assert f"--end-date {tomorrow} is not before today" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_generated_files_load_without_rejects(seeded_engine, database_url, tmp_path, capsys):
    out = tmp_path / "trades.csv"
    assert generate_dummy_data.main(["--rows", "3000", "--seed", "11", "--out", str(out)]) == 0
    capsys.readouterr()

    code = load_transactions.main(["--database-url", database_url, str(out)])

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "market_prices.csv: 6525 daily closes read, 6525 new, 0 changed, 0 rejected",
        "trades.csv: 3000 read, 3000 loaded, 0 duplicates, 0 rejected (batch 1)",
    ]
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions)).scalar() == 3000
        assert connection.execute(select(func.count()).select_from(market_prices)).scalar() == 6525

    summary = load_transactions.load_file(seeded_engine, str(out))
    assert summary.skipped_batch == 1


def test_end_date_today_is_refused(tmp_path, capsys):
    # Today's trading hours may not be over: trades until 16:00 today could be later than now, and the loader
    # rejects trades more than 5 minutes in the future. So the last day must be before today.
    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--rows", "10", "--end-date", date.today().isoformat(), "--out", str(tmp_path / "t.csv")])
    assert exit_info.value.code == 2
    assert "is not before today" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()

