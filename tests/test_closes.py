"""closes.py: daily closes split-adjusted to the terms of the last day read (a 4-for-1 and a later 1-for-10 split
leave the returns and the volatility of the same random walk unchanged), the split helpers others use, the
fingerprints a newly loaded split changes, and market_prices kept as traded.

Database tests run on SQLite and on a fresh MariaDB database (conftest fixtures). The reference walk is made in
the test in its post-split terms; the stored closes are that walk multiplied by the splits still to come.
"""
import math
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

import closes
import constants
import load_transactions
import update_portfolio
from schema import corporate_actions, market_prices

DAYS = [day.date() for day in pd.bdate_range("2025-01-01", periods=300)]
FOUR_FOR_ONE = DAYS[100]  # a trading day (a Wednesday or so)
ONE_FOR_TEN = DAYS[200] + timedelta(days=(5 - DAYS[200].weekday()) % 7)  # the Saturday after DAYS[200]


def random_walk(seed=7, sigma=0.02):
    """300 closes with 2 decimals from 100.00, in today's (post-split) terms."""
    rng = np.random.default_rng(seed)
    walk, price = [], Decimal("100.00")
    for step in rng.normal(0, sigma, len(DAYS)):
        walk.append(price)
        price = max(Decimal("5.00"), Decimal(str(round(float(price) * math.exp(step), 2))))
    return walk


def as_traded(walk):
    """The walk as it would have traded: before the 4-for-1 split worth 4 x the terms after it, before the
    1-for-10 split 0.1 x: 0.4 x the walk, then 0.1 x, then the walk itself (at most 3 decimals: exact)."""
    return [price * (Decimal("0.4") if day < FOUR_FOR_ONE else Decimal("0.1") if day < ONE_FOR_TEN else 1)
            for day, price in zip(DAYS, walk)]


def insert_closes(engine, symbol, days, prices):
    with engine.begin() as connection:
        connection.execute(market_prices.insert(), [{"stock_symbol": symbol, "price_date": day, "close_price": price}
                                                    for day, price in zip(days, prices)])


def insert_split(engine, symbol, ex_date, value):
    with engine.begin() as connection:
        connection.execute(corporate_actions.insert(), [{
            "stock_symbol": symbol, "ex_date": ex_date, "action": "SPLIT", "value": Decimal(value),
            "loaded_at": datetime(2025, 1, 1)}])


def split_history(engine):
    """AAPL with a 4-for-1 and a later 1-for-10 split, MSFT the same walk without any; returns the walk."""
    walk = random_walk()
    insert_closes(engine, "AAPL", DAYS, as_traded(walk))
    insert_closes(engine, "MSFT", DAYS, walk)
    insert_split(engine, "AAPL", FOUR_FOR_ONE, "4")
    insert_split(engine, "AAPL", ONE_FOR_TEN, "0.1")
    return walk


def stored_closes(engine):
    with engine.connect() as connection:
        return sorted((symbol, str(day)[:10], Decimal(str(price))) for symbol, day, price in connection.execute(
            select(market_prices.c.stock_symbol, market_prices.c.price_date, market_prices.c.close_price)))


def of(frame, symbol, column):
    return frame.loc[frame["stock_symbol"] == symbol, column].tolist()


# ---------------------------------------------------------------------------------------------- pure helpers

def test_split_factor_multiplies_the_splits_after_from_day_up_to_to_day():
    splits = {"AAPL": [(date(2025, 3, 5), Decimal(4)), (date(2025, 6, 7), Decimal("0.1"))]}

    assert closes.split_factor(splits, "AAPL", date(2025, 3, 4), date(2025, 12, 31)) == Decimal("0.4")
    assert closes.split_factor(splits, "AAPL", date(2025, 3, 4), date(2025, 3, 5)) == 4  # ex_date included
    assert closes.split_factor(splits, "AAPL", date(2025, 3, 5), date(2025, 12, 31)) == Decimal("0.1")  # on it: not
    assert closes.split_factor(splits, "AAPL", date(2025, 3, 4), date(2025, 3, 4)) == 1
    assert closes.split_factor(splits, "MSFT", date(2025, 1, 1), date(2025, 12, 31)) == 1
    # a trade's datetime or text works as well as a date
    assert closes.split_factor(splits, "AAPL", datetime(2025, 6, 6, 23, 59), "2025-06-07 00:01:00") == Decimal("0.1")


def test_adjusted_price_divides_and_rounds_half_even_to_a_price():
    assert closes.adjusted_price(Decimal("401.0000"), Decimal(4)) == Decimal("100.2500")
    assert closes.adjusted_price(Decimal("0.0006"), Decimal(4)) == Decimal("0.0002")  # 0.00015: up to even
    assert closes.adjusted_price(Decimal("0.0002"), Decimal(4)) == Decimal("0.0000")  # 0.00005: down to even
    assert closes.adjusted_price(Decimal("12.3400"), Decimal("0.1")) == Decimal("123.4000")
    assert closes.adjusted_price(12.34, Decimal(1)) == Decimal("12.34")  # a float as SQLite gives it, unchanged


# ---------------------------------------------------------------------------------------------- read_closes

def test_a_split_history_has_the_volatility_and_returns_of_the_same_walk_without_splits(seeded_engine):
    walk = split_history(seeded_engine)

    with seeded_engine.connect() as connection:
        frame = closes.read_closes(connection, last_day=DAYS[-1])

    assert of(frame, "AAPL", "close_exact") == walk == of(frame, "MSFT", "close_exact")
    assert of(frame, "AAPL", "close_as_traded") == as_traded(walk)
    split_prices, plain_prices = np.array(of(frame, "AAPL", "close_price")), np.array(of(frame, "MSFT", "close_price"))
    returns = np.array([float(b / a - 1) for a, b in zip(walk, walk[1:])])[-constants.VOLATILITY_LOOKBACK_DAYS:]
    reference = math.sqrt(np.var(returns) * constants.TRADING_DAYS_PER_YEAR)  # population variance
    assert closes.annual_volatility(split_prices) == pytest.approx(reference, abs=1e-9)
    assert closes.annual_volatility(split_prices) == pytest.approx(closes.annual_volatility(plain_prices), abs=1e-9)
    # no jump: the walk moves 2% a day; as traded the splits are -75% and +900%
    assert np.abs(np.diff(split_prices) / split_prices[:-1]).max() < 0.15
    traded = np.array([float(price) for price in as_traded(walk)])
    assert sorted(np.round(np.diff(traded) / traded[:-1], 1))[0] < -0.7 and (np.diff(traded) / traded[:-1]).max() > 8
    marks = closes.symbol_marks(frame, {}, {"AAPL": "a", "MSFT": "m"})
    assert (marks["AAPL"].last_price, marks["AAPL"].annual_volatility) == (
        marks["MSFT"].last_price, pytest.approx(marks["MSFT"].annual_volatility, abs=1e-9))


def test_read_closes_before_an_ex_date_does_not_adjust_for_it(seeded_engine):
    monday = date(2025, 3, 3)
    insert_closes(seeded_engine, "AAPL", [monday, monday + timedelta(1), monday + timedelta(2)],
                  [Decimal("400"), Decimal("404.02"), Decimal("101")])
    insert_split(seeded_engine, "AAPL", monday + timedelta(2), "4")  # ex_date Wednesday
    insert_split(seeded_engine, "MSFT", monday, "2")  # another symbol's split changes nothing of AAPL's

    with seeded_engine.connect() as connection:
        before = closes.read_closes(connection, last_day=monday + timedelta(1))
        on = closes.read_closes(connection, last_day=monday + timedelta(2))
        only_on = closes.read_closes(connection, last_day=monday + timedelta(2), first_day=monday + timedelta(2))

    assert of(before, "AAPL", "close_exact") == [Decimal("400"), Decimal("404.02")]
    assert of(before, "AAPL", "close_price") == [400.0, 404.02]
    assert of(on, "AAPL", "close_exact") == [Decimal("100"), Decimal("101.005"), Decimal("101")]
    assert of(on, "AAPL", "close_price") == [100.0, 101.005, 101.0]
    assert of(on, "AAPL", "close_as_traded") == [Decimal("400"), Decimal("404.02"), Decimal("101")]
    assert of(only_on, "AAPL", "close_exact") == [Decimal("101")]
    assert stored_closes(seeded_engine) == [("AAPL", "2025-03-03", Decimal("400")),
                                            ("AAPL", "2025-03-04", Decimal("404.02")),
                                            ("AAPL", "2025-03-05", Decimal("101"))]


def test_latest_closes_are_in_the_terms_of_the_day_asked_for(seeded_engine):
    insert_closes(seeded_engine, "AAPL", [date(2025, 3, 3)], [Decimal("401")])
    insert_closes(seeded_engine, "MSFT", [date(2025, 3, 3)], [Decimal("300")])
    insert_split(seeded_engine, "AAPL", date(2025, 3, 4), "4")  # after the last close

    with seeded_engine.connect() as connection:
        assert closes.latest_closes(connection) == {"AAPL": Decimal("100.25"), "MSFT": Decimal("300")}
        assert closes.latest_closes(connection, last_day=date(2025, 3, 3)) == {"AAPL": Decimal("401"),
                                                                                "MSFT": Decimal("300")}


# ---------------------------------------------------------------------------------------------- fingerprints

def test_a_split_changes_its_symbols_fingerprint_from_its_ex_date_on(seeded_engine):
    insert_closes(seeded_engine, "AAPL", DAYS[:5], [Decimal(400 + n) for n in range(5)])
    insert_closes(seeded_engine, "MSFT", DAYS[:5], [Decimal(300 + n) for n in range(5)])
    with seeded_engine.connect() as connection:
        unsplit = closes.read_fingerprints(connection, DAYS[4])

    insert_split(seeded_engine, "AAPL", DAYS[5], "4")  # after last_day: nothing yet
    with seeded_engine.connect() as connection:
        assert closes.read_fingerprints(connection, DAYS[4]) == unsplit
        later = closes.read_fingerprints(connection, DAYS[5])
    assert later["AAPL"] != unsplit["AAPL"] and later["MSFT"] == unsplit["MSFT"]

    insert_split(seeded_engine, "AAPL", DAYS[2], "2")  # a split loaded late, among the closes
    with seeded_engine.connect() as connection:
        late = closes.read_fingerprints(connection, DAYS[4])
    assert late["AAPL"] != unsplit["AAPL"] and late["MSFT"] == unsplit["MSFT"]


def test_a_split_loaded_after_the_marks_reprices_its_symbol(seeded_engine, tmp_path):
    insert_closes(seeded_engine, "AAPL", DAYS[:3], [Decimal("400"), Decimal("402"), Decimal("404")])
    insert_closes(seeded_engine, "MSFT", DAYS[:3], [Decimal("300"), Decimal("301"), Decimal("302")])
    trades = tmp_path / "trades.csv"
    trades.write_text("txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"
                      f"S1,1001,AAPL,BUY,10,400.00,{DAYS[0]} 10:00:00\n"
                      f"S2,1002,MSFT,BUY,10,300.00,{DAYS[0]} 10:00:00\n", encoding="utf-8")
    assert load_transactions.load_file(seeded_engine, str(trades)).rows_rejected == 0
    update_portfolio.update_portfolios(seeded_engine)
    params = update_portfolio.risk_parameters()
    with seeded_engine.connect() as connection:
        assert update_portfolio.repriced_symbols(connection, params, False)[0] == []

    insert_split(seeded_engine, "AAPL", DAYS[2], "4")

    with seeded_engine.connect() as connection:
        assert update_portfolio.repriced_symbols(connection, params, False)[0] == ["AAPL"]
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.connect() as connection:
        assert update_portfolio.repriced_symbols(connection, params, False)[0] == []
    assert stored_closes(seeded_engine) == sorted(
        [("AAPL", str(day), Decimal(price)) for day, price in zip(DAYS, ("400", "402", "404"))]
        + [("MSFT", str(day), Decimal(price)) for day, price in zip(DAYS, ("300", "301", "302"))])
