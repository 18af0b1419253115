"""surveillance.py: each rule on small hand-made files (fires, and a near miss does not), WASH_TRADE's tolerance
against the symbol's volatility, BURST and ROUND_TRIP against the investor's own usual activity, idempotent and
incremental runs and their summary figures, openings from the ledger's checkpoints (incremental == --full, the
baselines included), the live path's alerts (== the incremental run's), the statements of a run with nothing new,
more investors than one IN list holds, a --full check in slices of investors (== one slice), trades read as packed
text (odd txn_refs), and recall/precision against the ground truth that generate_dummy_data --anomalies plants.

Database tests run on SQLite and on a fresh MariaDB database (conftest fixtures). Expected metrics are worked out
by hand in the comments; the rolling robust z-score is checked against a direct numpy reference.
"""
import csv
import math
import re
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event, func, select, text

import action_events
import constants
import db_config
import dialects
import generate_dummy_data
import ledger
import load_transactions
import seed_investors
import surveillance
import update_portfolio
from schema import alerts, corporate_actions, investors, load_batches, market_prices

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
DAY = datetime(2026, 3, 2)  # a Monday, well in the past
RATE = 0.002  # planted anomalies per trade and rule in the generated-data tests


# ---------------------------------------------------------------------------------------------- helpers

def at(minutes, day=0):
    """DAY + `day` days, 09:00 + `minutes`, as the CSV's txn_time."""
    return (DAY + timedelta(days=day, hours=9, minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")


def at_seconds(seconds, day=0):
    """DAY + `day` days, 09:00 + `seconds`, as the CSV's txn_time."""
    return (DAY + timedelta(days=day, hours=9, seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


def write_trades(directory, name, rows):
    """A canonical trades file of (txn_ref, investor_id, symbol, type, quantity, price, txn_time) rows."""
    path = directory / name
    path.write_text("\n".join([HEADER] + [",".join(str(cell) for cell in row) for row in rows]) + "\n",
                    encoding="utf-8")
    return str(path)


def load(engine, path):
    """Load a trades file; every row must load."""
    summary = load_transactions.load_file(engine, path)
    assert summary.rows_rejected == 0, summary.sample_rejects
    return summary


def load_and_surveil(engine, directory, rows, name="trades.csv", full=False):
    """Load the rows, update portfolios, run surveillance; return the surveillance summary."""
    load(engine, write_trades(directory, name, rows))
    update_portfolio.update_portfolios(engine)
    return surveillance.run_surveillance(engine, full=full)


def alert_rows(engine, rule):
    """The alerts of one rule as dicts, by txn_ref (or investor for position-level ones)."""
    with engine.connect() as connection:
        rows = connection.execute(select(alerts).where(alerts.c.rule == rule).order_by(alerts.c.alert_key)).all()
    return [row._asdict() for row in rows]


def refs(engine, rule):
    return [row["txn_ref"] for row in alert_rows(engine, rule)]


def history(investor_id, symbol="AAPL", cycles=12, start=0):
    """3 * cycles BUYs at 100.00 of 10, 20, 40 shares, 30 minutes apart: ln(notional) has median ln(2000) and
    MAD ln(2), so robust sigma = 1.4826 * ln(2) = 1.0277 and the position is worth 84,000 for 12 cycles."""
    return [(f"H{investor_id}-{n:03d}", investor_id, symbol, "BUY", (10, 20, 40)[n % 3], "100.00", at(30 * n + start))
            for n in range(3 * cycles)]


# ---------------------------------------------------------------------------------------------- pure functions

def test_rolling_robust_z_matches_a_direct_computation():
    rng = np.random.default_rng(3)
    groups = np.repeat([1, 2, 3], [80, 5, 60])
    values = rng.normal(0, 1, len(groups))
    rows = np.arange(len(values))

    z, counts = surveillance.rolling_robust_z(values, groups, rows, lookback=50, min_history=30)

    for row in rows:
        start = np.flatnonzero(groups == groups[row])[0]
        window = values[max(start, row - 50):row]
        assert counts[row] == len(window)
        if len(window) < 30:
            assert np.isnan(z[row])
            continue
        median = np.median(window)
        scale = max(1.4826 * np.median(np.abs(window - median)), constants.LARGE_TRADE_MIN_SCALE)
        assert z[row] == pytest.approx((values[row] - median) / scale)


def test_evaluate_alerts_counts_anomalies_detected_and_alerts_true():
    truth = pd.DataFrame({"txn_ref": ["a", "b1", "b2", "c"], "rule": ["BURST", "WASH_TRADE", "WASH_TRADE", "BURST"],
                          "anomaly_id": [1, 2, 2, 3]})
    found = pd.DataFrame({"rule": ["BURST", "BURST", "WASH_TRADE", "LARGE_TRADE"], "txn_ref": ["a", "x", "b2", "c"]})

    table = surveillance.evaluate_alerts(found, truth).set_index("rule")

    assert table.loc["BURST", ["anomalies", "detected", "alerts", "true_alerts"]].tolist() == [2, 1, 2, 1]
    assert table.loc["WASH_TRADE", ["recall", "precision"]].tolist() == [1.0, 1.0]
    assert table.loc["LARGE_TRADE", "precision"] == 0.0 and math.isnan(table.loc["LARGE_TRADE", "recall"])


# ---------------------------------------------------------------------------------------------- each rule

def test_large_trade_fires_far_above_own_history_and_not_just_below(seeded_engine, tmp_path):
    rows = history(1001) + history(1002) + history(1003, cycles=6)
    rows += [("BIG", 1001, "AAPL", "BUY", 5000, "100.00", at(0, day=2)),  # z = ln(250) / 1.0277 = 5.37
             ("NEAR", 1002, "AAPL", "BUY", 3000, "100.00", at(0, day=2)),  # z = ln(150) / 1.0277 = 4.88
             ("NEW", 1003, "AAPL", "BUY", 5000, "100.00", at(0, day=2))]  # 18 earlier trades: a new account

    load_and_surveil(seeded_engine, tmp_path, rows)

    [alert] = alert_rows(seeded_engine, "LARGE_TRADE")
    assert (alert["txn_ref"], alert["investor_id"], alert["stock_symbol"], alert["severity"]) == (
        "BIG", 1001, "AAPL", "MEDIUM")
    assert float(alert["metric"]) == pytest.approx(math.log(250) / (1.4826 * math.log(2)), abs=1e-6)
    assert float(alert["threshold"]) == constants.LARGE_TRADE_Z
    assert alert["details"] == ("BUY BIG of 5000 AAPL at 100.00 is worth 500,000.00: robust z-score 5.4 of its "
                                "log notional against the investor's last 36 trades (threshold 5)")


def test_large_trade_fires_above_ten_times_the_portfolio_value(seeded_engine, tmp_path):
    rows = []
    for investor_id in (1004, 1005):  # 15 round trips two hours apart, then 1 share: the portfolio is worth 100
        for n in range(15):
            rows += [(f"R{investor_id}-{n}B", investor_id, "MSFT", "BUY", 100, "100.00", at(0, day=n)),
                     (f"R{investor_id}-{n}S", investor_id, "MSFT", "SELL", 100, "101.00", at(120, day=n))]
        rows.append((f"ONE{investor_id}", investor_id, "MSFT", "BUY", 1, "100.00", at(0, day=20)))
    rows += [("TWENTY", 1004, "MSFT", "BUY", 20, "100.00", at(60, day=20)),  # 2,000 = 20 x the portfolio
             ("NINE", 1005, "MSFT", "BUY", 9, "100.00", at(60, day=20))]  # 900 = 9 x

    load_and_surveil(seeded_engine, tmp_path, rows)

    [alert] = alert_rows(seeded_engine, "LARGE_TRADE")
    assert (alert["txn_ref"], alert["severity"]) == ("TWENTY", "MEDIUM")
    assert (float(alert["metric"]), float(alert["threshold"])) == (20.0, constants.LARGE_TRADE_PORTFOLIO_SHARE)
    assert alert["details"].endswith("20.0 times the investor's portfolio value before it (threshold 10)")


def test_off_market_price_fires_beyond_five_percent_of_the_close(seeded_engine, tmp_path):
    with seeded_engine.begin() as connection:
        connection.execute(market_prices.insert(), [{"stock_symbol": "AAPL", "price_date": DAY.date(),
                                                     "close_price": 100}])
    rows = [("UP", 1001, "AAPL", "BUY", 10, "106.00", at(0)),  # +6%: MEDIUM
            ("DOWN", 1002, "AAPL", "BUY", 10, "89.00", at(10)),  # -11%: HIGH
            ("INSIDE", 1003, "AAPL", "BUY", 10, "104.99", at(20)),  # +4.99%
            ("NO_CLOSE", 1004, "AAPL", "BUY", 10, "150.00", at(0, day=1))]  # no close that day: not checked

    load_and_surveil(seeded_engine, tmp_path, rows)

    found = {row["txn_ref"]: row for row in alert_rows(seeded_engine, "OFF_MARKET_PRICE")}
    assert sorted(found) == ["DOWN", "UP"]
    assert (found["UP"]["severity"], float(found["UP"]["metric"]), float(found["UP"]["threshold"])) == (
        "MEDIUM", pytest.approx(0.06), 0.05)
    assert found["DOWN"]["severity"] == "HIGH"
    assert found["DOWN"]["details"] == ("BUY DOWN of 10 AAPL at 89.00 is 11.0% below the 2026-03-02 close of "
                                        "100.00 (threshold 5%)")


def expected_move(annual_volatility, seconds):
    """The expected random move over `seconds` (a fraction), worked out here: the daily volatility
    (annual / sqrt(252)) times sqrt(seconds / 6.5 trading hours)."""
    return annual_volatility / math.sqrt(252) * math.sqrt(seconds / (6.5 * 3600))


def test_wash_trade_tolerance_is_half_the_expected_move_over_the_gap(seeded_engine, tmp_path):
    # MSFT and PFE have no closes: the default 30% a year. Over 2 min half the expected move is
    # 0.5 * 0.30 / sqrt(252) * sqrt(120 / 23400) = 0.068%, 27 cents at 400.00
    rows = [("W-BUY", 1001, "MSFT", "BUY", 10, "400.00", at(0)),
            ("W-SELL", 1001, "MSFT", "SELL", 10, "400.20", at(2)),  # 0.05% apart: a wash trade
            ("P-BUY", 1002, "MSFT", "BUY", 10, "400.00", at(0)),
            ("P-SELL", 1002, "MSFT", "SELL", 10, "400.30", at(2)),  # 0.075%: beyond half the move
            ("T-BUY", 1003, "MSFT", "BUY", 10, "400.00", at(0)),
            ("T-SELL", 1003, "MSFT", "SELL", 10, "400.00", at(4)),  # 4 minutes apart: outside the window
            ("Q-BUY", 1004, "MSFT", "BUY", 10, "400.00", at(0)),
            ("Q-SELL", 1004, "MSFT", "SELL", 9, "400.00", at(1)),  # not the same quantity
            ("C-BUY", 1005, "PFE", "BUY", 10, "10.00", at(0)),  # 3 s: half the move is 0.011%, a tenth of a cent;
            ("C-SELL", 1005, "PFE", "SELL", 10, "10.01", at_seconds(3))]  # one cent is still no price change

    load_and_surveil(seeded_engine, tmp_path, rows)

    found = {row["txn_ref"]: row for row in alert_rows(seeded_engine, "WASH_TRADE")}
    assert sorted(found) == ["C-SELL", "W-SELL"]
    wash = found["W-SELL"]
    assert (wash["severity"], float(wash["metric"])) == ("HIGH", 0.0005)
    assert float(wash["threshold"]) == pytest.approx(0.5 * expected_move(0.30, 120), abs=1e-6)
    assert wash["details"] == ("SELL W-SELL of 10 MSFT at 400.20 reverses W-BUY at 400.00, 2 min earlier: same "
                               "quantity, prices 0.20 (0.0500%) apart, within 0.068% = 0.5 × the 0.135% expected "
                               "move of MSFT over 2 min (default annual volatility 30%: fewer than 20 closes in the "
                               "year before)")
    assert float(found["C-SELL"]["threshold"]) == 0.001  # one cent of 10.00
    assert found["C-SELL"]["details"].endswith("prices 0.01 (0.1000%) apart, within one cent (0.01), more than "
                                               "0.011% = 0.5 × the 0.021% expected move of PFE over 3 s (default "
                                               "annual volatility 30%: fewer than 20 closes in the year before)")


def insert_alternating_closes(engine, symbol, low, high, count=30):
    """`count` closes of `symbol` on the weekdays before DAY, alternating low and high. Returns their annual
    volatility, worked out here: the population standard deviation of the daily returns times sqrt(252)."""
    days = [day for day in (DAY.date() - timedelta(days=n) for n in range(1, 2 * count)) if day.weekday() < 5]
    prices = [low if number % 2 == 0 else high for number in range(count)]
    with engine.begin() as connection:
        connection.execute(market_prices.insert(), [
            {"stock_symbol": symbol, "price_date": day, "close_price": price}
            for day, price in zip(sorted(days[:count]), prices)])
    return float(np.std(np.diff(prices) / np.array(prices[:-1]))) * math.sqrt(252)


def test_wash_trade_tolerance_scales_with_the_symbols_volatility(seeded_engine, tmp_path):
    volatility = {"AAPL": insert_alternating_closes(seeded_engine, "AAPL", 199.00, 202.40),  # 26.9% a year
                  "TSLA": insert_alternating_closes(seeded_engine, "TSLA", 200.00, 207.60),  # 59.2%
                  "KO": insert_alternating_closes(seeded_engine, "KO", 60.00, 60.57)}  # 15.0%
    rows = [("ISSUE-B", 1001, "AAPL", "BUY", 100, "199.00", at(0)),  # the issue's pair: 5 cents (0.025%) in 40 s,
            ("ISSUE-S", 1001, "AAPL", "SELL", 100, "199.05", at_seconds(40)),  # half the 0.070% move is 0.035%
            ("WILD-B", 1002, "TSLA", "BUY", 10, "200.00", at(0)),  # 0.05% in 3 min on a volatile symbol:
            ("WILD-S", 1002, "TSLA", "SELL", 10, "200.10", at(3)),  # half its 0.33% move is 0.16%
            ("CALM-B", 1003, "KO", "BUY", 10, "60.00", at(0)),  # the same on a calm symbol: above half its
            ("CALM-S", 1003, "KO", "SELL", 10, "60.03", at(3)),  # 0.083% move (0.041%)
            ("TRIP-B", 1004, "KO", "BUY", 10, "60.00", at(0)),  # a round trip's 0.5% in 50 s on the calm
            ("TRIP-S", 1004, "KO", "SELL", 10, "60.30", at_seconds(50))]  # symbol: far beyond half its move

    load_and_surveil(seeded_engine, tmp_path, rows)

    found = {row["txn_ref"]: row for row in alert_rows(seeded_engine, "WASH_TRADE")}
    assert sorted(found) == ["ISSUE-S", "WILD-S"]
    assert float(found["ISSUE-S"]["threshold"]) == pytest.approx(0.5 * expected_move(volatility["AAPL"], 40),
                                                                 abs=1e-6)
    assert float(found["WILD-S"]["threshold"]) == pytest.approx(0.5 * expected_move(volatility["TSLA"], 180),
                                                                abs=1e-6)
    assert 0.5 * expected_move(volatility["KO"], 180) < 0.0005  # CALM-S's 0.05% is beyond KO's tolerance
    assert found["ISSUE-S"]["details"] == (
        "SELL ISSUE-S of 100 AAPL at 199.05 reverses ISSUE-B at 199.00, 40 s earlier: same quantity, prices 0.05 "
        "(0.0251%) apart, within 0.035% = 0.5 × the 0.070% expected move of AAPL over 40 s (annual volatility 27%)")


def test_wash_trade_pairs_an_older_matching_leg_behind_a_non_matching_one():
    # Two BUYs of 10 MSFT, then a SELL of 10 at the first one's price: the latest BUY is 1% away, the older one
    # matches. The SELL has 2 other trades in the 5 min up to it, so the tolerance is half the usual one
    rows = [("OLD", 1001, "MSFT", "BUY", 10, 400.00, at(0)),
            ("NEW", 1001, "MSFT", "BUY", 10, 404.00, at(1)),
            ("SELL", 1001, "MSFT", "SELL", 10, 400.00, at(2))]

    found = surveillance.detect_trade_alerts(context_frame(rows, 0), {}, NO_CLOSES)

    wash = found.loc[found["rule"] == "WASH_TRADE"]
    assert wash["txn_ref"].tolist() == ["SELL"]
    assert wash["threshold"].iloc[0] == pytest.approx(0.5 * expected_move(0.30, 120) / 2)
    assert wash["details"].iloc[0] == (
        "SELL SELL of 10 MSFT at 400.00 reverses OLD at 400.00, 2 min earlier: same quantity, prices 0.00 (0.0000%) "
        "apart, within 0.034% = 0.5 × the 0.135% expected move of MSFT over 2 min / 2, the investor's other trades "
        "in the 5 min up to it (default annual volatility 30%: fewer than 20 closes in the year before)")


def insert_split(engine, symbol, ex_date, value):
    """A SPLIT stored as load_transactions would store it."""
    with engine.begin() as connection:
        connection.execute(corporate_actions.insert(), [{"stock_symbol": symbol, "ex_date": ex_date, "action": "SPLIT",
                                                         "value": Decimal(value), "loaded_at": DAY}])


def market_price_rows(engine):
    with engine.connect() as connection:
        return [(symbol, str(day)[:10], Decimal(str(close))) for symbol, day, close in connection.execute(
            select(market_prices).order_by(market_prices.c.stock_symbol, market_prices.c.price_date))]


def test_off_market_price_compares_a_trade_with_its_days_close_across_a_split(seeded_engine, tmp_path):
    # AAPL closes at 400.00 on Monday, splits 4-for-1 on Tuesday and closes at 100.00. The closes of the run are
    # read in Tuesday's terms (Monday's: 100.00), but each trade is compared with its own day's close as traded
    with seeded_engine.begin() as connection:
        connection.execute(market_prices.insert(), [
            {"stock_symbol": "AAPL", "price_date": DAY.date(), "close_price": 400},
            {"stock_symbol": "AAPL", "price_date": DAY.date() + timedelta(days=1), "close_price": 100}])
    insert_split(seeded_engine, "AAPL", DAY.date() + timedelta(days=1), "4")
    rows = [("PRE", 1001, "AAPL", "BUY", 10, "401.00", at(0)),  # Monday at Monday's close: no alert
            ("POST", 1002, "AAPL", "BUY", 40, "100.50", at(0, day=1)),  # right after the split, at its close
            ("STALE", 1003, "AAPL", "BUY", 10, "400.00", at(5, day=1))]  # at the close before the split: +300%

    load_and_surveil(seeded_engine, tmp_path, rows)

    [alert] = alert_rows(seeded_engine, "OFF_MARKET_PRICE")
    assert (alert["txn_ref"], alert["severity"], float(alert["metric"])) == ("STALE", "HIGH", 3.0)
    assert alert["details"] == ("BUY STALE of 10 AAPL at 400.00 is 300.0% above the 2026-03-03 close of 100.00 "
                                "(threshold 5%)")
    assert market_price_rows(seeded_engine) == [("AAPL", "2026-03-02", Decimal(400)),
                                                ("AAPL", "2026-03-03", Decimal(100))]


def test_wash_trade_across_a_split_compares_the_legs_in_the_later_ones_terms(seeded_engine, tmp_path):
    # A 4-for-1 split at midnight between the legs: 10 bought at 400.00 are 40 at 100.00 after it
    insert_split(seeded_engine, "AAPL", DAY.date() + timedelta(days=1), "4")
    rows = [("W-BUY", 1001, "AAPL", "BUY", 10, "400.00", at(899)),  # 23:59
            ("W-SELL", 1001, "AAPL", "SELL", 40, "100.00", at(901)),  # 00:01 on the ex_date: a wash trade
            ("N-BUY", 1002, "AAPL", "BUY", 10, "100.00", at(899)),  # 10 at 100.00 are 40 at 25.00 after it:
            ("N-SELL", 1002, "AAPL", "SELL", 10, "100.00", at(901))]  # neither the same quantity nor price

    load_and_surveil(seeded_engine, tmp_path, rows)

    [alert] = alert_rows(seeded_engine, "WASH_TRADE")
    assert (alert["txn_ref"], float(alert["metric"])) == ("W-SELL", 0.0)
    assert alert["details"].startswith("SELL W-SELL of 40 AAPL at 100.00 reverses W-BUY at 400.00 (100.00 "
                                       "split-adjusted), 2 min earlier: same quantity, prices 0.00 (0.0000%) apart, "
                                       "within 0.068% = 0.5 × the 0.135% expected move of AAPL over 2 min")


def round_trips(investor_id, holds, day=0, symbol="TSLA"):
    """One round trip per hold (minutes) in `symbol`, an hour apart, the SELL 0.5% above the BUY."""
    rows = []
    for n, hold in enumerate(holds):
        ref = f"{investor_id}-{symbol}-{day}-{n}"
        rows += [(f"{ref}B", investor_id, symbol, "BUY", 5 + n, "200.00", at(60 * n, day)),
                 (f"{ref}S", investor_id, symbol, "SELL", 5 + n, "201.00", at(60 * n + hold, day))]
    return rows


def test_round_trip_fires_on_the_third_quick_round_trip_of_a_position_in_a_day(seeded_engine, tmp_path):
    rows = (round_trips(1001, [10, 5, 14, 3])  # the 3rd and 4th closes fire
            + round_trips(1002, [10, 5, 16])  # the 3rd is held 16 minutes
            + round_trips(1003, [10, 5]) + round_trips(1003, [3], day=1)  # the 3rd is on the next day
            + round_trips(1004, [10, 5]) + round_trips(1004, [3], symbol="NVDA"))  # the 3rd in another symbol

    load_and_surveil(seeded_engine, tmp_path, rows)

    found = alert_rows(seeded_engine, "ROUND_TRIP")
    assert [(row["txn_ref"], float(row["metric"]), row["severity"]) for row in found] == [
        ("1001-TSLA-0-2S", 3.0, "MEDIUM"), ("1001-TSLA-0-3S", 4.0, "MEDIUM")]
    assert found[0]["details"] == ("SELL 1001-TSLA-0-2S of 7 TSLA at 201.00 closes a position opened 14 min earlier: "
                                   "round trip number 3 in TSLA of at most 15 min on 2026-03-02 (limit 3, the floor: "
                                   "fewer than 20 earlier trades to know the investor's usual rate)")


def test_burst_fires_once_on_the_eleventh_trade_within_five_minutes(seeded_engine, tmp_path):
    def burst(investor_id, count, step_seconds=20):
        return [(f"B{investor_id}-{n:02d}", investor_id, "KO", "BUY", n + 1, "60.00",
                 (DAY + timedelta(hours=10, seconds=step_seconds * n)).strftime("%Y-%m-%d %H:%M:%S"))
                for n in range(count)]

    rows = burst(1001, 14) + burst(1002, 10) + burst(1003, 11, step_seconds=30)  # 1003: 11 in exactly 5 min

    load_and_surveil(seeded_engine, tmp_path, rows)

    [alert] = alert_rows(seeded_engine, "BURST")
    assert (alert["txn_ref"], float(alert["metric"]), float(alert["threshold"]), alert["severity"]) == (
        "B1001-10", 11.0, 10.0, "LOW")
    assert alert["details"] == ("BUY B1001-10 of 11 KO at 60.00 is investor 1001's 11th trade within 5 min "
                                "(more than 10, the floor: fewer than 20 earlier trades to know the investor's usual "
                                "count)")


def bursts(investor_id, sizes, first_day=0, symbol="KO"):
    """One burst per size, on consecutive days from first_day at 10:00, a BUY every 5 seconds."""
    return [(f"B{investor_id}-{day}-{n:02d}", investor_id, symbol, "BUY", n + 1, "60.00", at_seconds(3600 + 5 * n, day))
            for day, size in enumerate(sizes, start=first_day) for n in range(size)]


BURSTY_HISTORY = bursts(1001, [15] * 14)  # 210 trades, all in bursts of 15


def test_burst_is_judged_against_the_investors_usual_count_in_five_minutes():
    # 1001 always trades in bursts of 15: its usual count in 5 minutes is the median of 1..15 over its last 200
    # trades outside the window, 8, and its limit 4 x 8 = 32. Another burst of 15 is usual; one of 40 fires on its
    # 33rd trade. 1002 has no history: the floor of 10 applies
    rows = BURSTY_HISTORY + bursts(1001, [15, 40], first_day=14) + bursts(1002, [12], first_day=15)

    found = surveillance.detect_trade_alerts(context_frame(rows, len(BURSTY_HISTORY)), {}, NO_CLOSES)

    burst = found.loc[found["rule"] == "BURST"]
    assert burst[["txn_ref", "metric", "threshold"]].values.tolist() == [["B1001-15-32", 33, 32],
                                                                         ["B1002-15-10", 11, 10]]
    assert burst["details"].iloc[0] == ("BUY B1001-15-32 of 33 KO at 60.00 is investor 1001's 33rd trade within 5 "
                                        "min (more than 32 = 4 × the investor's usual 8 in 5 min)")


def test_round_trip_is_judged_against_how_often_the_investor_round_trips():
    # 1001's 40 trades before are 20 quick NVDA round trips: half its trades close one, so 3 TSLA round trips in a
    # day are usual for it (limit 5 x 0.5 x the 6 TSLA trades that day = 15). 1002's 42 trades before close none:
    # its 3rd round trip fires at the floor. 1003 closes one in 2 of its 40 trades (5%): 8 round trips in a day
    # fire from the 3rd close on, the limit 5 x 0.05 x the position's trades that day above the floor from the
    # 7th; its own day never raises that rate
    rows = []
    for day in range(-10, 0):
        rows += round_trips(1001, [5, 5], day=day, symbol="NVDA")
    rows += history(1002, cycles=14) + round_trips(1003, [5, 5], day=-6, symbol="NVDA")
    rows += [(f"K1003-{n}", 1003, "KO", "BUY", 1, "60.00", at(10 * n, day=-5)) for n in range(36)]
    day_rows = (round_trips(1001, [10, 5, 14], day=1) + round_trips(1002, [10, 5, 14], day=1)
                + round_trips(1003, [10] * 8, day=1))

    found = surveillance.detect_trade_alerts(context_frame(rows + day_rows, len(rows)), {}, NO_CLOSES)

    round_trip = found.loc[found["rule"] == "ROUND_TRIP"]
    assert round_trip["txn_ref"].tolist() == ["1002-TSLA-1-2S"] + [f"1003-TSLA-1-{n}S" for n in range(2, 8)]
    assert round_trip["threshold"].tolist() == [3, 3, 3, 3, 3, 3.5, 4]  # 5 x 0.05 x 14 at the 7th close
    assert round_trip["details"].iloc[0].endswith(
        "(limit 3, the floor; 5 × the 0.00 that the investor's usual rate (0.0% of its trades close a quick round "
        "trip) expects in its 6 TSLA trades that day)")
    assert round_trip["details"].iloc[-1].endswith(
        "(limit 4.00 = 5 × the 0.80 that the investor's usual rate (5.0% of its trades close a quick round trip) "
        "expects in its 16 TSLA trades that day)")


def test_incremental_runs_with_baselines_raise_the_alerts_of_one_full_run(seeded_engine, tmp_path):
    # 1001's history: 10 days of bursts of 15, then 40 single trades over 4 days. The second file's baselines need
    # all 190 of them (its last 200 trades, not the 25 hours before): the median count is 6 and the limit 24, so
    # the burst of 15 is usual and the one of 40 fires on its 25th trade (with only its last 50 trades, 40 of them
    # single, the usual count would be 1 and both bursts would fire at 11). A late trade in the history's last
    # day then re-checks every trade after it
    singles = [(f"S{n:02d}", 1001, "KO", "BUY", 1, "60.00", at(30 * (n % 10), day=10 + n // 10)) for n in range(40)]
    load_and_surveil(seeded_engine, tmp_path, bursts(1001, [15] * 10) + singles, name="first.csv")
    load_and_surveil(seeded_engine, tmp_path, bursts(1001, [15, 40], first_day=14) + bursts(1002, [12], first_day=15)
                     + round_trips(1003, [10, 5, 14], day=15), name="second.csv")
    late = load_and_surveil(seeded_engine, tmp_path, [("LATE", 1001, "KO", "BUY", 1, "60.00", at(400, day=13))],
                            name="late.csv")
    incremental = trade_alerts(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(alerts.delete().where(alerts.c.rule.in_(surveillance.TRADE_RULES)))

    surveillance.run_surveillance(seeded_engine, full=True)

    assert late.trades_checked == 1 + 15 + 40  # the late trade and 1001's trades after it
    assert [key for key, _, _ in incremental if key.startswith(("BURST:B1001-14", "BURST:B1001-15"))] == [
        "BURST:B1001-15-24"]
    assert {"BURST:B1002-15-10", "ROUND_TRIP:1003-TSLA-15-2S"} <= {key for key, _, _ in incremental}
    assert trade_alerts(seeded_engine) == incremental


def test_sector_concentration_fires_above_the_limit_once_per_investor_and_sector(seeded_engine, tmp_path):
    rows = [("T1", 1001, "AAPL", "BUY", 10, "100.00", at(0)), ("T2", 1001, "MSFT", "BUY", 10, "100.00", at(1)),
            ("H1", 1002, "AAPL", "BUY", 10, "100.00", at(0)), ("H2", 1002, "JPM", "BUY", 10, "100.00", at(1)),
            ("S1", 1003, "AAPL", "BUY", 7, "100.00", at(0)), ("S2", 1003, "JPM", "BUY", 3, "100.00", at(1))]

    load_and_surveil(seeded_engine, tmp_path, rows)
    surveillance.run_surveillance(seeded_engine)

    found = alert_rows(seeded_engine, "SECTOR_CONCENTRATION")
    assert [(row["alert_key"], row["severity"], float(row["metric"]), row["txn_ref"]) for row in found] == [
        ("SECTOR_CONCENTRATION:1001:Technology", "HIGH", 1.0, None),
        ("SECTOR_CONCENTRATION:1003:Technology", "MEDIUM", 0.7, None)]
    assert found[1]["details"] == "Technology is 70.0% of investor 1003's market value (limit 60%)"


# ---------------------------------------------------------------------------------------------- runs

def every_rule_rows():
    """A file on which every trade-level rule fires once."""
    return (history(1001) + [("BIG", 1001, "AAPL", "BUY", 5000, "100.00", at(0, day=2)),
                             ("FAR", 1002, "AAPL", "BUY", 1, "150.00", at(0, day=2))]
            + [("W-BUY", 1003, "MSFT", "BUY", 10, "400.00", at(0, 3)),
               ("W-SELL", 1003, "MSFT", "SELL", 10, "400.01", at(2, 3))]
            + round_trips(1004, [10, 5, 14])
            + [(f"B{n}", 1005, "KO", "BUY", n + 1, "60.00", at(n / 4, day=4)) for n in range(11)])


def test_every_rule_once_and_rerunning_or_full_never_duplicates(seeded_engine, database_url, tmp_path, capsys):
    with seeded_engine.begin() as connection:
        connection.execute(market_prices.insert(), [{
            "stock_symbol": "AAPL", "price_date": (DAY + timedelta(days=2)).date(), "close_price": 100}])
    first = load_and_surveil(seeded_engine, tmp_path, every_rule_rows())
    # 1001 and 1002 hold only AAPL, 1005 only KO: 100% of one sector; 1003 and 1004 closed their positions
    assert first.new_alerts == {"LARGE_TRADE": 1, "OFF_MARKET_PRICE": 1, "WASH_TRADE": 1, "ROUND_TRIP": 1,
                                "BURST": 1, "SECTOR_CONCENTRATION": 3}
    assert (first.trades_checked, first.batches, first.investors) == (len(every_rule_rows()), 1, 5)

    again = surveillance.run_surveillance(seeded_engine)
    assert (again.trades_checked, again.batches, sum(again.new_alerts.values())) == (0, 0, 0)
    assert surveillance.main(["--database-url", database_url, "--full"]) == 0
    assert surveillance.main(["--database-url", database_url]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"surveillance (full re-check): {len(every_rule_rows())} trades of 5 investors "
                             f"checked, 0 of them new (0 batches); 0 new alerts (none) (")
    assert out[1].startswith("surveillance (incremental): 0 new trades (0 batches) checked with 0 earlier trades "
                             "of 0 investors as context; 0 new alerts (none) (")
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(alerts).where(
            alerts.c.rule.in_(surveillance.RULES))).scalar() == 8
        assert connection.execute(select(func.count()).select_from(load_batches).where(
            load_batches.c.surveilled_at.is_(None))).scalar() == 0


def test_first_run_summary_line(seeded_engine, tmp_path):
    """It used to say 'incremental', '1 batches' and '1 investors'."""
    summary = load_and_surveil(seeded_engine, tmp_path, history(1001, cycles=1))

    assert summary.line(seconds=False) == ("surveillance (first run): 3 trades (1 batch) of 1 investor checked; "
                                           "1 new alert (SECTOR_CONCENTRATION 1)")
    assert re.fullmatch(re.escape(summary.line(seconds=False)) + r" \(\d+\.\d\d s\)", summary.line())


def test_summary_counts_new_trades_apart_from_the_earlier_ones_read_as_context(seeded_engine, tmp_path):
    kept = [(f"K{n}", 1002, "KO", "BUY", 1, "60.00", at(10 * n, day=3)) for n in range(5)]  # 09:00 .. 09:40
    load_and_surveil(seeded_engine, tmp_path, history(1001) + kept, name="first.csv")
    load(seeded_engine, write_trades(tmp_path, "second.csv", [
        ("N1", 1001, "AAPL", "BUY", 10, "100.00", at(0, day=5)),
        ("N2", 1001, "AAPL", "BUY", 20, "100.00", at(30, day=5))]))
    load(seeded_engine, write_trades(tmp_path, "late.csv", [
        ("L1", 1002, "KO", "BUY", 1, "60.00", at(5, day=3))]))  # late: between K0 and K1
    update_portfolio.update_portfolios(seeded_engine)

    summary = surveillance.run_surveillance(seeded_engine)

    # new: N1, N2, L1 from 2 batches. Re-checked: K1..K4, later than the late L1. History before each investor's
    # first new trade: 1001's 36 trades (fewer than the 50 of LARGE_TRADE_LOOKBACK_TRADES), 1002's K0.
    # Earlier trades read: 4 + 36 + 1 = 41. No new alert: both investors' sector alerts were raised by the first run
    assert (summary.batches, summary.new_trades, summary.trades_checked, summary.context_trades,
            summary.investors) == (2, 3, 7, 37, 2)
    assert summary.line(seconds=False) == (
        "surveillance (incremental): 3 new trades (2 batches) checked with 41 earlier trades of 2 investors as "
        "context (4 of them re-checked: they follow a late new trade); 0 new alerts (none)")


def test_incremental_checks_only_new_trades_with_their_history(seeded_engine, tmp_path):
    first = load_and_surveil(seeded_engine, tmp_path, history(1001) + [
        ("W-BUY", 1002, "MSFT", "BUY", 10, "400.00", at(0, day=5))], name="first.csv")
    assert first.trades_checked == 37 and sum(first.new_alerts.values()) == 2  # 1001 and 1002: one sector each

    second = load_and_surveil(seeded_engine, tmp_path, [
        ("BIG", 1001, "AAPL", "BUY", 5000, "100.00", at(0, day=5)),
        ("W-SELL", 1002, "MSFT", "SELL", 10, "400.00", at(3, day=5))], name="second.csv")

    assert (second.new_trades, second.trades_checked, second.batches, second.context_trades) == (2, 2, 1, 37)
    assert refs(seeded_engine, "LARGE_TRADE") == ["BIG"]
    assert refs(seeded_engine, "WASH_TRADE") == ["W-SELL"]
    assert "against the investor's last 36 trades" in alert_rows(seeded_engine, "LARGE_TRADE")[0]["details"]


def test_live_alerts_of_a_batchs_lines_are_those_of_the_incremental_run(seeded_engine, tmp_path):
    load_and_surveil(seeded_engine, tmp_path, history(1001) + [
        ("W-BUY", 1002, "MSFT", "BUY", 10, "400.00", at(0, day=5))], name="first.csv")
    load(seeded_engine, write_trades(tmp_path, "second.csv", [
        ("BIG", 1001, "AAPL", "BUY", 5000, "100.00", at(0, day=5)),
        ("W-SELL", 1002, "MSFT", "SELL", 10, "400.00", at(3, day=5))]))
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.connect() as connection:
        batch_id = connection.execute(select(func.max(load_batches.c.batch_id))).scalar()
        live = surveillance.find_live_alerts(connection, batch_id, 1, 3, datetime.fromisoformat(at(0, day=5)))

    surveillance.run_surveillance(seeded_engine)

    assert sorted(live["alert_key"]) == ["LARGE_TRADE:BIG", "WASH_TRADE:W-SELL"]
    assert live.sort_values("alert_key")["details"].tolist() == [
        alert_rows(seeded_engine, rule)[0]["details"] for rule in ("LARGE_TRADE", "WASH_TRADE")]


def test_a_late_trade_is_checked_with_the_trades_after_it(seeded_engine, tmp_path):
    load_and_surveil(seeded_engine, tmp_path, [(f"B{n}", 1005, "KO", "BUY", n + 1, "60.00", at(n / 4))
                                               for n in range(1, 11)], name="first.csv")
    assert refs(seeded_engine, "BURST") == []

    late = load_and_surveil(seeded_engine, tmp_path, [("B0", 1005, "KO", "BUY", 1, "60.00", at(0))], name="late.csv")

    assert (late.new_trades, late.trades_checked) == (1, 11)  # the late trade and the 10 after it, whose windows
    # now hold it
    assert refs(seeded_engine, "BURST") == ["B10"]


def split_generated(directory, rows, seed, rate, share=0.6):
    """Generated trades with anomalies in two files (the first `share` of the rows, then the rest)."""
    trades, prices, _ = generate_dummy_data.generate_with_anomalies(rows, seed, rate)
    paths = []
    for name, lines in (("a", trades[:int(len(trades) * share)]), ("b", trades[int(len(trades) * share):])):
        (directory / name).mkdir()
        generate_dummy_data.write_csv(directory / name / "trades.csv", generate_dummy_data.TRADE_HEADER, lines)
        generate_dummy_data.write_csv(directory / name / "market_prices.csv", generate_dummy_data.PRICE_HEADER, prices)
        paths.append(str(directory / name / "trades.csv"))
    return paths


def trade_alerts(engine):
    """(alert_key, severity, metric) of every trade-level alert of this stage."""
    with engine.connect() as connection:
        return sorted(connection.execute(select(alerts.c.alert_key, alerts.c.severity, alerts.c.metric).where(
            alerts.c.rule.in_(surveillance.TRADE_RULES))).all())


@pytest.mark.slow_on_servers
def test_two_incremental_runs_raise_the_same_trade_alerts_as_one_full_run(seeded_engine, tmp_path):
    for path in split_generated(tmp_path, 20_000, 5, 0.003):
        assert load_transactions.load_paths(seeded_engine, [path]) == 0
        update_portfolio.update_portfolios(seeded_engine)
        surveillance.run_surveillance(seeded_engine)
    incremental = trade_alerts(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(alerts.delete().where(alerts.c.rule.in_(surveillance.TRADE_RULES)))

    full = surveillance.run_surveillance(seeded_engine, full=True)

    assert full.trades_checked > 20_000 and len(incremental) > 250
    assert [key for key, _, _ in trade_alerts(seeded_engine)] == [key for key, _, _ in incremental]
    assert trade_alerts(seeded_engine) == incremental


@pytest.fixture
def fifty_trades_of_history(monkeypatch):
    """The history read before an investor's first new trade is LARGE_TRADE's 50 trades: the usual activity is
    measured over as many (these tests push older trades out of that history)."""
    monkeypatch.setattr(constants, "SURVEILLANCE_BASELINE_TRADES", constants.LARGE_TRADE_LOOKBACK_TRADES)


def rerun_full(engine, rule):
    """The txn_refs of one rule's alerts after deleting them and re-checking every trade (--full)."""
    with engine.begin() as connection:
        connection.execute(alerts.delete().where(alerts.c.rule == rule))
    surveillance.run_surveillance(engine, full=True)
    return refs(engine, rule)


def test_the_opening_is_the_checkpoint_a_late_trade_replayed(seeded_engine, tmp_path, fifty_trades_of_history):
    # The week before: A1 BUY 10 AAPL. This week: 60 KO trades, then B1 BUY 2 and S1 SELL 20 AAPL, an oversell of
    # the 12 held. A late A0 BUY 8 in the week before makes update_portfolio replay AAPL: S1 now sells all 20. The
    # third file's 3 quick AAPL round trips open from flat. Their history starts at the 50th trade back (K12), and
    # AAPL's holding there comes from the week before's checkpoint (18), then K0..K11, B1 and S1 are replayed
    first = [("A1", 1001, "AAPL", "BUY", 10, "100.00", at(0, day=-7))]
    first += [(f"K{n}", 1001, "KO", "BUY", 1 + n % 3, "60.00", at(10 * n, day=1)) for n in range(60)]
    first += [("B1", 1001, "AAPL", "BUY", 2, "100.00", at(0, day=4)),
              ("S1", 1001, "AAPL", "SELL", 20, "101.00", at(60, day=4))]
    load_and_surveil(seeded_engine, tmp_path, first, name="first.csv")
    load_and_surveil(seeded_engine, tmp_path, [("A0", 1001, "AAPL", "BUY", 8, "100.00", at(60, day=-7))],
                     name="late.csv")

    third = load_and_surveil(seeded_engine, tmp_path, round_trips(1001, [10, 5, 14], day=7, symbol="AAPL"),
                             name="third.csv")

    assert third.context_trades == 62  # the last 50 trades (S1, B1, K59..K12) and the week's earlier K0..K11
    assert refs(seeded_engine, "ROUND_TRIP") == ["1001-AAPL-7-2S"]
    assert rerun_full(seeded_engine, "ROUND_TRIP") == ["1001-AAPL-7-2S"]


def test_an_incremental_run_mid_week_finds_the_trade_alerts_of_a_full_run(seeded_engine, tmp_path,
                                                                          fifty_trades_of_history):
    # The week before: A1 BUY 10 AAPL, and 1002's history. Monday: A2 BUY 5 and A3 SELL 15 AAPL. Tuesday: 60 KO
    # trades. Wednesday, loaded second: 3 quick AAPL round trips, which open from flat, and 1002's large trade.
    # 1001's history starts on Tuesday: AAPL is flat there only with both the checkpoint before the week (10) and
    # the earlier trades of the week (A2, A3: without the checkpoint, A3 would be an oversell)
    first = [("A1", 1001, "AAPL", "BUY", 10, "100.00", at(0, day=-7)),
             ("A2", 1001, "AAPL", "BUY", 5, "100.00", at(0, day=0)),
             ("A3", 1001, "AAPL", "SELL", 15, "101.00", at(60, day=0))]
    first += [(f"K{n}", 1001, "KO", "BUY", 1 + n % 3, "60.00", at(10 * n, day=1)) for n in range(60)]
    first += history(1002, start=-7 * 24 * 60)
    load_and_surveil(seeded_engine, tmp_path, first, name="first.csv")

    second = load_and_surveil(seeded_engine, tmp_path, round_trips(1001, [10, 5, 14], day=2, symbol="AAPL") + [
        ("BIG", 1002, "AAPL", "BUY", 5000, "100.00", at(0, day=2))], name="second.csv")

    assert second.context_trades == 62 + 36  # 1001: K0..K59, A2 and A3; 1002: its 36 trades
    assert refs(seeded_engine, "ROUND_TRIP") == ["1001-AAPL-2-2S"] and refs(seeded_engine, "LARGE_TRADE") == ["BIG"]
    incremental = trade_alerts(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(alerts.delete().where(alerts.c.rule.in_(surveillance.TRADE_RULES)))
    surveillance.run_surveillance(seeded_engine, full=True)
    assert trade_alerts(seeded_engine) == incremental


def executed_statements(engine, work):
    """The SQL statements that work() runs on the engine."""
    statements = []

    def record(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return statements


def test_the_first_run_reads_every_trade_without_selecting_history(seeded_engine, tmp_path, monkeypatch):
    load(seeded_engine, write_trades(tmp_path, "trades.csv", every_rule_rows()))
    update_portfolio.update_portfolios(seeded_engine)
    reads = counted_full_reads(monkeypatch)

    statements = executed_statements(seeded_engine, lambda: surveillance.run_surveillance(seeded_engine))

    assert not [statement for statement in statements if "position_bounds" in statement]
    assert sum(surveillance.INVESTOR_TRADES_SQL in statement for statement in statements) == 1
    assert reads == [1]  # one sorted read of every trade


def counted_full_reads(monkeypatch):
    """A list that gets a 1 each time a full check starts its read of every trade in investor order (on SQLite
    from the driver's cursor, which SQLAlchemy's statement events do not see)."""
    reads = []
    for name in ("sorted_partitions", "grouped_partitions"):
        def counted(*args, original=getattr(surveillance, name)):
            reads.append(1)
            return original(*args)
        monkeypatch.setattr(surveillance, name, counted)
    return reads


def test_packed_trades_keep_every_field_whatever_the_txn_ref():
    rows = ["7\tA,1 \"quoted\" it's\t1001\tAAPL\tBUY\t10\t199.1000\t2026-03-02 09:00:00",
            "8\tNA\t1002\tKO\tSELL\t3\t60.0000\t2026-03-02 09:01:00",
            "9\t007\t1003\tMSFT\tBUY\t1\t0.1000\t2026-03-02 09:02:00"]

    trades = surveillance.typed_trades(surveillance.unpack_trades(rows))

    assert trades["txn_ref"].tolist() == ['A,1 "quoted" it\'s', "NA", "007"]
    assert trades["price"].tolist() == [199.1, 60.0, 0.1] and trades["quantity"].tolist() == [10, 3, 1]
    assert trades["seconds"].diff().tolist()[1:] == [60, 60]
    assert surveillance.unpack_trades([]).columns.tolist() == list(surveillance.TRADE_FIELDS)


def test_a_signal_during_the_parse_of_packed_trades_is_an_interrupt_not_a_bad_csv(monkeypatch):
    # pandas' C parser reports a KeyboardInterrupt raised in its read of the text as a ParserError (seen with
    # SIGINT during a MariaDB --full): the stage must say "interrupted", not "unreadable CSV" with exit 2
    def interrupted(*args, **kwargs):
        raise pd.errors.ParserError("Error tokenizing data. C error: Calling read(nbytes) on source failed. "
                                    "Try engine='python'.")
    monkeypatch.setattr(surveillance.pd, "read_csv", interrupted)

    with pytest.raises(KeyboardInterrupt):
        surveillance.unpack_trades(["7\tA\t1001\tAAPL\tBUY\t10\t199.1000\t2026-03-02 09:00:00"])


def test_odd_txn_refs_come_back_from_the_database_as_loaded(seeded_engine, tmp_path):
    # on MariaDB and PostgreSQL the trades are read packed into one text column (a comma, quotes, 'NA')
    path = tmp_path / "trades.csv"
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER.split(","))
        writer.writerows([('W,"1"', 1003, "MSFT", "BUY", 10, "400.00", at(0, 3)),
                          ("NA", 1003, "MSFT", "SELL", 10, "400.01", at(2, 3))])
    load(seeded_engine, str(path))
    update_portfolio.update_portfolios(seeded_engine)

    surveillance.run_surveillance(seeded_engine, full=True)

    assert refs(seeded_engine, "WASH_TRADE") == ["NA"]
    details = alert_rows(seeded_engine, "WASH_TRADE")[0]["details"]
    assert details.startswith('SELL NA of 10 MSFT at 400.01 reverses W,"1" at 400.00')


def test_investor_slices_hold_about_the_size_and_a_bigger_investor_alone():
    counts = [(1001, 3), (1002, 4), (1003, 12), (1004, 1), (1005, 2), (1006, 5)]

    assert surveillance.investor_slices(counts, 8) == [(1001, 1002), (1003, 1003), (1004, 1006)]
    assert surveillance.investor_slices(counts, 100) == [(1001, 1006)]
    assert surveillance.investor_slices(counts, 1) == [(investor_id, investor_id) for investor_id, _ in counts]
    assert surveillance.investor_slices([], 8) == []


def full_trade_alerts(engine):
    """Every trade-level alert of a --full check, as (alert_key, severity, metric, threshold, details), after
    deleting those stored."""
    with engine.begin() as connection:
        connection.execute(alerts.delete().where(alerts.c.rule.in_(surveillance.TRADE_RULES)))
    surveillance.run_surveillance(engine, full=True)
    with engine.connect() as connection:
        return sorted(connection.execute(select(
            alerts.c.alert_key, alerts.c.severity, alerts.c.metric, alerts.c.threshold, alerts.c.details).where(
            alerts.c.rule.in_(surveillance.TRADE_RULES))).all())


def test_a_full_check_in_slices_of_investors_finds_the_alerts_of_one_slice(seeded_engine, tmp_path, monkeypatch):
    load_and_surveil(seeded_engine, tmp_path, every_rule_rows())
    whole = full_trade_alerts(seeded_engine)
    monkeypatch.setattr(surveillance, "FULL_CHECK_SLICE_TRADES", 1)  # each investor alone

    checked, detect = [], surveillance.detect_trade_alerts
    monkeypatch.setattr(surveillance, "detect_trade_alerts",
                        lambda trades, *args, **kwargs: checked.append(set(trades["investor_id"]))
                        or detect(trades, *args, **kwargs))
    reads = counted_full_reads(monkeypatch)

    sliced = full_trade_alerts(seeded_engine)

    assert reads == [1]  # one sorted read of every trade
    assert checked == [{1001}, {1002}, {1003}, {1004}, {1005}]  # cut into one slice per investor
    assert sliced == whole and len(whole) == 4  # no close: no OFF_MARKET_PRICE


@pytest.mark.parametrize("partition_rows", [1, 2, 3, 4, 7, 20])
def test_trades_in_investor_order_are_cut_into_their_slices_whatever_the_partitions(partition_rows):
    investor_ids = [1, 1, 2, 3, 3, 3, 5, 6, 6, 8]  # slices (1, 2), (3, 3), (4, 6), (7, 9)
    rows = [(number, f"R{number}", investor_id, "KO", "BUY", 1, 1.0, "2026-03-02 09:00:00")
            for number, investor_id in enumerate(investor_ids)]
    partitions = (rows[first:first + partition_rows] for first in range(0, len(rows), partition_rows))

    sliced = list(surveillance._cut_into_slices(partitions, surveillance.trade_frame, [2, 3, 6, 9]))

    assert [trades["investor_id"].tolist() for trades in sliced] == [[1, 1, 2], [3, 3, 3], [5, 6, 6], [8]]
    assert all(trades["seconds"].notna().all() for trades in sliced)  # typed


def test_a_full_check_on_sqlite_sorts_in_a_small_page_cache_and_restores_the_connections(tmp_path):
    seen, engine = [], db_config.get_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    with engine.connect() as connection:
        before = connection.exec_driver_sql("PRAGMA cache_size").scalar()
        with surveillance.bounded_sort_memory(connection):
            seen.append(connection.exec_driver_sql("PRAGMA cache_size").scalar())
        after = connection.exec_driver_sql("PRAGMA cache_size").scalar()

    assert (before, seen, after) == (-65536, [-8192], -65536)


def test_an_interrupt_during_the_sorted_read_is_what_surfaces_not_the_cache_restore(tmp_path):
    engine = db_config.get_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    with engine.connect() as connection:
        with pytest.raises(KeyboardInterrupt):
            with surveillance.bounded_sort_memory(connection):
                connection.invalidate()  # as an interrupt in the driver leaves it
                raise KeyboardInterrupt
    with engine.connect() as connection:  # a fresh connection, its own cache size
        assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -65536


@pytest.mark.slow_on_servers
def test_a_full_check_of_generated_trades_in_slices_finds_the_alerts_of_one_slice(seeded_engine, tmp_path,
                                                                                  monkeypatch):
    # 20,000 trades of 100 investors (about 200 each; the busiest several times that) with every rule planted,
    # and the generator's splits: slices of at most 2,000 trades, or one investor alone
    for path in split_generated(tmp_path, 20_000, 5, 0.003):
        assert load_transactions.load_paths(seeded_engine, [path]) == 0
    update_portfolio.update_portfolios(seeded_engine)
    surveillance.run_surveillance(seeded_engine)
    whole = full_trade_alerts(seeded_engine)
    monkeypatch.setattr(surveillance, "FULL_CHECK_SLICE_TRADES", 2_000)

    sliced = full_trade_alerts(seeded_engine)

    assert {key.split(":")[0] for key, *_ in whole} == set(surveillance.TRADE_RULES) and len(whole) > 250
    assert sliced == whole


@pytest.mark.parametrize("text_limit", [None, 120])
def test_history_read_as_one_text_per_investor_equals_the_rows(mariadb_url, tmp_path, monkeypatch, text_limit):
    """On MariaDB each investor's range of trades comes as one GROUP_CONCAT text; a text the server cuts (a limit
    of 120 characters cuts every investor of two trades or more) is read row by row instead."""
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    load_and_surveil(engine, tmp_path, every_rule_rows())
    with engine.connect() as connection:
        times = dict(connection.execute(text("SELECT txn_ref, txn_time FROM transactions")).all())
        ranges = [surveillance.InvestorRange(1001, start=times["BIG"] - timedelta(days=1)),
                  surveillance.InvestorRange(1003), surveillance.InvestorRange(1004, end=times["BIG"]),
                  surveillance.InvestorRange(1006)]  # no trades
        symbols = surveillance.read_symbols(connection)
        if text_limit:
            monkeypatch.setattr(ledger, "GROUP_TEXT_LIMIT_SQL", f"SET SESSION group_concat_max_len = {text_limit}")
        row_reads, read_rows = [], surveillance.read_trades
        monkeypatch.setattr(surveillance, "read_trades", lambda *args: row_reads.append(args[1]) or read_rows(*args))
        grouped = surveillance.read_ranges(connection, ranges, symbols)
        cut_reads = len(row_reads)
        monkeypatch.setattr(surveillance.dialects, "groups_trades", lambda dialect_name: False)
        by_rows = surveillance.read_ranges(connection, ranges, symbols)
    engine.dispose()

    def ordered(trades):
        return trades.sort_values("txn_id", ignore_index=True)

    pd.testing.assert_frame_equal(ordered(grouped), ordered(by_rows))
    assert set(by_rows["investor_id"]) == {1001, 1003, 1004} and len(by_rows) < len(times)
    assert cut_reads == (1 if text_limit else 0)  # the cut investors, in one statement


@pytest.mark.parametrize("text_limit", [None, 400, 120])
def test_a_full_read_as_one_text_per_position_equals_the_rows(mariadb_url, tmp_path, monkeypatch, text_limit):
    """On MariaDB a full check reads each position's trades as one GROUP_CONCAT text; a text the server cuts (400
    characters cut the long positions, 120 every position of two trades or more) is read row by row, and the
    positions after it grouped again."""
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    load_and_surveil(engine, tmp_path, every_rule_rows())
    slices = [(1001, 1002), (1003, 1003), (1004, 1010)]
    if text_limit:
        monkeypatch.setattr(ledger, "GROUP_TEXT_LIMIT_SQL", f"SET SESSION group_concat_max_len = {text_limit}")
    grouped = []
    statements = executed_statements(engine, lambda: grouped.extend(_read_sliced(engine, slices)))
    monkeypatch.setattr(surveillance.dialects, "groups_trades", lambda dialect_name: False)
    by_rows = _read_sliced(engine, slices)
    engine.dispose()

    assert len(grouped) == len(by_rows) == 3
    for grouped_slice, row_slice in zip(grouped, by_rows):
        pd.testing.assert_frame_equal(grouped_slice.sort_values("txn_id", ignore_index=True),
                                      row_slice.sort_values("txn_id", ignore_index=True))
    with engine.connect() as connection:
        lengths = connection.execute(text(  # each position's text: its packed trades and a line break between two
            f"SELECT COUNT(*) - 1 + SUM(CHAR_LENGTH({surveillance.PACKED_TRADE_SQL})) FROM transactions t "
            "GROUP BY t.investor_id, t.stock_symbol"), {"field_separator": "\t"}).scalars().all()
    cut_positions = {limit: sum(length > (limit or math.inf) for length in lengths) for limit in (None, 400, 120)}
    assert 0 < cut_positions[400] < cut_positions[120] < len(lengths)
    assert sum("GROUP_CONCAT" in statement for statement in statements) == 1 + cut_positions[text_limit]


def _read_sliced(engine, slices):
    with engine.connect() as connection:
        return list(surveillance.sliced_trades(connection, slices))


def test_with_nothing_new_no_statement_reads_transactions_or_refreshes_statistics(seeded_engine, tmp_path):
    load_and_surveil(seeded_engine, tmp_path, every_rule_rows())

    statements = executed_statements(seeded_engine, lambda: surveillance.run_surveillance(seeded_engine))

    assert any("portfolios" in statement for statement in statements)  # the sector check still runs
    assert [statement for statement in statements
            if re.search(r"\btransactions\b|\bANALYZE\b", statement, re.IGNORECASE)] == []


# ---------------------------------------------------------------------------------------------- generated data

def generated_database(engine, directory, rows, seed, rate):
    """Generate, load, update and surveil; return (alerts as a DataFrame, ground truth, trades loaded)."""
    out = str(directory / "trades.csv")
    if rate:
        generate_dummy_data.write_anomalous_data(out, rows, seed, rate)
        truth = pd.read_csv(directory / "trades_anomalies.csv")
    else:
        generate_dummy_data.write_dummy_data(out, rows, seed)
        truth = pd.DataFrame(columns=["txn_ref", "rule", "anomaly_id"])
    load_transactions.load_prices_file(engine, str(directory / "market_prices.csv"))
    summary = load_transactions.load_file(engine, out)
    update_portfolio.update_portfolios(engine)
    surveillance.run_surveillance(engine)
    with engine.connect() as connection:
        found = pd.read_sql_query(text("SELECT rule, txn_ref FROM alerts"), connection)
    return found, truth, summary.rows_loaded


@pytest.mark.slow_on_servers
def test_recall_and_precision_on_100000_generated_trades_with_anomalies(seeded_engine, tmp_path):
    found, truth, loaded = generated_database(seeded_engine, tmp_path, 100_000, 42, RATE)

    table = surveillance.evaluate_alerts(found, truth).set_index("rule")

    assert loaded == 100_000 + len(truth)
    assert table["anomalies"].tolist() == [round(RATE * 100_000)] * len(surveillance.TRADE_RULES)
    assert (table["recall"] >= 0.95).all(), table
    assert (table["precision"] >= 0.95).all(), table


@pytest.mark.slow_on_servers
def test_clean_generated_data_raises_fewer_than_one_alert_per_1000_trades(seeded_engine, tmp_path):
    found, _, loaded = generated_database(seeded_engine, tmp_path, 100_000, 42, 0)

    assert loaded == 100_000
    assert len(found) < loaded / 1000, found["rule"].value_counts()  # every rule, CONCENTRATION included


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 3, 7])
def test_recall_and_precision_hold_for_other_seeds(sqlite_url, tmp_path, seed):
    engine = db_config.get_engine(sqlite_url)
    seed_investors.seed_reference_data(engine)
    found, truth, _ = generated_database(engine, tmp_path, 100_000, seed, RATE)

    table = surveillance.evaluate_alerts(found, truth)

    assert (table["recall"] >= 0.95).all() and (table["precision"] >= 0.95).all(), table


# ---------------------------------------------------------------------------------------------- the generator

def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_anomalies_leave_the_clean_trades_as_they_were(tmp_path):
    clean, clean_prices = generate_dummy_data.generate(5000, 9)
    trades, prices, truth = generate_dummy_data.generate_with_anomalies(5000, 9, 0.004)

    planted = {line.split(",")[0] for line in truth}
    assert [line for line in trades if line.split(",")[0] not in planted] == clean
    assert prices == clean_prices
    assert len(trades) == 5000 + len(truth) and len(planted) == len(truth)


def test_planted_trades_are_valid_rows_for_the_loader(tmp_path):
    out = tmp_path / "trades.csv"
    assert generate_dummy_data.main(["--rows", "20000", "--seed", "4", "--anomalies", "0.005",
                                     "--out", str(out)]) == 0
    trades, truth = read_rows(out), read_rows(tmp_path / "trades_anomalies.csv")
    splits = defaultdict(list)  # a split makes a holding floor(holding x value) at the start of its ex_date
    for action in read_rows(tmp_path / "corporate_actions.csv"):
        if action["action"] == "SPLIT":
            splits[action["stock_symbol"]].append((action["ex_date"], Decimal(action["value"])))

    held, splits_applied = defaultdict(int), defaultdict(int)
    ordered = sorted(enumerate(trades), key=lambda item: (item[1]["txn_time"], item[0]))  # the loader's order
    for _, trade in ordered:
        key, quantity = (trade["investor_id"], trade["stock_symbol"]), int(trade["quantity"])
        assert 0 < quantity < 2**31 and float(trade["price"]) > 0, trade
        when = datetime.strptime(trade["txn_time"], "%Y-%m-%d %H:%M:%S")
        assert when.weekday() < 5 and "09:30:00" <= trade["txn_time"][11:] <= "16:00:00", trade
        due = [value for ex_date, value in sorted(splits[key[1]])[splits_applied[key]:]
               if ex_date <= trade["txn_time"][:10]]
        for value in due:
            held[key] = math.floor(held[key] * value)
        splits_applied[key] += len(due)
        if trade["txn_type"] == "SELL":
            assert quantity <= held[key], trade
        held[key] += quantity if trade["txn_type"] == "BUY" else -quantity
    events = {(row["rule"], row["anomaly_id"]) for row in truth}
    assert sorted({rule for rule, _ in events}) == sorted(surveillance.TRADE_RULES)
    assert all(sum(rule == r for r, _ in events) == 100 for rule in surveillance.TRADE_RULES)
    assert {row["txn_ref"] for row in truth} <= {trade["txn_ref"] for trade in trades}


def test_anomalies_option_writes_the_sidecar_and_rejects_a_bad_rate(tmp_path, capsys):
    out = tmp_path / "t.csv"

    assert generate_dummy_data.main(["--rows", "3000", "--anomalies", "0.002", "--out", str(out)]) == 0
    assert (tmp_path / "t_anomalies.csv").read_text().splitlines()[0] == "txn_ref,rule,anomaly_id"
    assert f"{tmp_path / 't_anomalies.csv'}: ground truth" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--anomalies", "0.5", "--out", str(tmp_path / "u.csv")])
    assert exit_info.value.code == 2
    assert "--anomalies 0.5 is out of range; give a rate from 0 to 0.02, e.g. 0.001" in capsys.readouterr().err

    assert generate_dummy_data.main(["--rows", "100", "--out", str(tmp_path / "clean.csv")]) == 0
    assert not (tmp_path / "clean_anomalies.csv").exists()


def checkpoint(investor_id, symbol, quantity, last_trade_price, week_start=date(2026, 2, 23)):
    """A hand-made ledger checkpoint: `quantity` held at the end of the week of week_start, last traded at
    last_trade_price."""
    price = Decimal(last_trade_price)
    return ledger.Checkpoint(investor_id, symbol, week_start, quantity, quantity * price, Decimal(0),
                             f"{week_start + timedelta(days=4)} 15:00:00", 1, 1, price)


def test_position_states_skip_an_oversell_and_start_from_the_opening_checkpoint():
    trades = pd.DataFrame({
        "txn_id": [1, 2, 3, 4, 5], "txn_ref": list("abcde"), "investor_id": [7] * 5,
        "stock_symbol": ["X", "X", "X", "Y", "Y"], "txn_type": ["BUY", "SELL", "SELL", "SELL", "BUY"],
        "quantity": [10, 15, 10, 4, 1], "price": [1.0, 2.0, 3.0, 4.0, 5.0], "seconds": [1, 2, 3, 4, 5]})
    opening = {(7, "Y"): checkpoint(7, "Y", 4, "3.5"), (7, "Z"): checkpoint(7, "Z", 9, "1")}

    states = surveillance.position_states(trades, opening).set_index("txn_ref")

    assert states["holding_before"].tolist() == [0, 10, 10, 4, 0]
    assert states["holding_after"].tolist() == [10, 10, 0, 0, 1]
    assert states["applied"].tolist() == [True, False, True, True, True]
    assert states["last_price"].tolist() == [1.0, 1.0, 2.0, 3.5, 4.0]  # the oversold SELL's price counts


def test_position_states_replay_exact_decimal_prices():
    # 3 x 0.1 is 0.30000000000000004 in floats; the ledger applies the stored decimals, so selling what it
    # bought leaves exactly nothing and the SELL applies
    trades = pd.DataFrame({
        "txn_id": [1, 2], "txn_ref": ["a", "b"], "investor_id": [7, 7], "stock_symbol": ["X", "X"],
        "txn_type": ["BUY", "SELL"], "quantity": [3, 3], "price": [0.1, 0.1], "seconds": [1, 2]})

    states = surveillance.position_states(trades, {})

    assert states["applied"].tolist() == [True, True] and states["holding_after"].tolist() == [3, 0]
    assert [trade.price for trade in surveillance.ledger_trades(states)] == [Decimal("0.1")] * 2
    assert [trade.txn_time for trade in surveillance.ledger_trades(states)] == ["1970-01-01 00:00:01",
                                                                                "1970-01-01 00:00:02"]


def context_frame(rows, checked_from):
    """A trades DataFrame as surveillance reads it, from (txn_ref, investor_id, symbol, type, quantity, price,
    txn_time) rows; the rows before index checked_from are history, not checked."""
    frame = pd.DataFrame(rows, columns=["txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price",
                                        "txn_time"])
    frame.insert(0, "txn_id", range(1, len(rows) + 1))
    frame["checked"] = [number >= checked_from for number in range(len(rows))]
    return surveillance.in_replay_order(surveillance.typed_trades(frame))


NO_CLOSES = pd.DataFrame(columns=["stock_symbol", "day", "close_price", "close_exact", "close_as_traded"])


@pytest.mark.parametrize("held, fires", [(0, True), (5, False)])
def test_detect_round_trips_only_from_flat_at_the_opening_checkpoint(held, fires):
    rows = round_trips(1001, [10, 5, 14], day=7)
    opening = {(1001, "TSLA"): checkpoint(1001, "TSLA", held, "199.00")} if held else {}

    found = surveillance.detect_trade_alerts(context_frame(rows, 0), opening, NO_CLOSES)

    assert found.loc[found["rule"] == "ROUND_TRIP", "txn_ref"].tolist() == (["1001-TSLA-7-2S"] if fires else [])


@pytest.mark.parametrize("held, fires", [(0, True), (1000, False)])
def test_detect_large_trade_values_the_positions_at_their_opening_checkpoints(held, fires):
    # 15 round trips of 100 MSFT (notionals about 10,000: BUY 20 is no outlier), then 1 share: worth 100 without
    # the checkpoint of 1,000 KO at 60.00 (60,000), which makes the 2,000 of BUY 20 a small trade
    rows = []
    for n in range(15):
        rows += [(f"R{n}B", 1004, "MSFT", "BUY", 100, 100.0, at(0, day=n)),
                 (f"R{n}S", 1004, "MSFT", "SELL", 100, 101.0, at(120, day=n))]
    rows += [("ONE", 1004, "MSFT", "BUY", 1, 100.0, at(0, day=20)), ("TWENTY", 1004, "MSFT", "BUY", 20, 100.0,
                                                                       at(60, day=20))]
    opening = {(1004, "KO"): checkpoint(1004, "KO", held, "60.00")} if held else {}

    found = surveillance.detect_trade_alerts(context_frame(rows, len(rows) - 1), opening, NO_CLOSES)

    large = found.loc[found["rule"] == "LARGE_TRADE"]
    assert large["txn_ref"].tolist() == (["TWENTY"] if fires else [])
    assert large["metric"].tolist() == ([20.0] if fires else [])


@pytest.mark.parametrize("second_sell, fires", [(10, True), (15, False)])
def test_holdings_before_the_history_come_from_the_ledger_checkpoints(seeded_engine, tmp_path, second_sell, fires,
                                                                      fifty_trades_of_history):
    # The week before: AAPL BUY 10, then SELL 10 (flat) or SELL 15 (an oversell: 10 still held). This week: 60 KO
    # trades push them out of the history read for the second file, whose 3 quick AAPL round trips open from
    # flat only in the first case
    first = [("A1", 1001, "AAPL", "BUY", 10, "100.00", at(0, day=-7)),
             ("A2", 1001, "AAPL", "SELL", second_sell, "101.00", at(60, day=-7))]
    first += [(f"K{n}", 1001, "KO", "BUY", 1 + n % 3, "60.00", at(10 * n, day=1)) for n in range(60)]
    load_and_surveil(seeded_engine, tmp_path, first, name="first.csv")
    assert refs(seeded_engine, "OVERSELL") == ([] if fires else ["A2"])

    second = load_and_surveil(seeded_engine, tmp_path, round_trips(1001, [10, 5, 14], day=7, symbol="AAPL"),
                              name="second.csv")

    # the last 50 KO trades and the 10 before them in their week; A1 and A2 only through the week's checkpoint
    assert second.context_trades == 60
    assert refs(seeded_engine, "ROUND_TRIP") == (["1001-AAPL-7-2S"] if fires else [])
    with seeded_engine.begin() as connection:
        connection.execute(alerts.delete().where(alerts.c.rule == "ROUND_TRIP"))
    surveillance.run_surveillance(seeded_engine, full=True)
    assert refs(seeded_engine, "ROUND_TRIP") == (["1001-AAPL-7-2S"] if fires else [])


@pytest.mark.slow_on_servers
def test_more_investors_with_history_than_one_in_list_holds(seeded_engine, tmp_path, monkeypatch):
    # 600 investors with history and new trades: the checkpoints and the earlier trades of the week are read for
    # all of them (more than one IN list of 500). Per investor: the week before, AAPL bought, then sold to flat
    # (even ids) or to 5 held (odd ids); 3 KO trades; then 3 quick AAPL round trips, which open from flat, and so
    # fire ROUND_TRIP, only for the even ids. An own history of 3 trades keeps the files small and leaves the
    # AAPL trades out of the history read: they count only through the checkpoints
    monkeypatch.setattr(constants, "LARGE_TRADE_LOOKBACK_TRADES", 3)
    monkeypatch.setattr(constants, "SURVEILLANCE_BASELINE_TRADES", 3)
    investor_ids = range(2001, 2601)
    with seeded_engine.begin() as connection:
        connection.execute(investors.insert(), [
            {"investor_id": investor_id, "name": f"Investor {investor_id}", "risk_profile": "balanced",
             "created_at": DAY} for investor_id in investor_ids])
    first, second = [], []
    for investor_id in investor_ids:
        sold = 10 if investor_id % 2 == 0 else 5
        first += [(f"A{investor_id}-1", investor_id, "AAPL", "BUY", 10, "100.00", at(0, day=-7)),
                  (f"A{investor_id}-2", investor_id, "AAPL", "SELL", sold, "101.00", at(60, day=-7))]
        first += [(f"K{investor_id}-{n}", investor_id, "KO", "BUY", 1 + n, "60.00", at(10 * n, day=1))
                  for n in range(3)]
        second += round_trips(investor_id, [10, 5, 14], day=7, symbol="AAPL")
    load_and_surveil(seeded_engine, tmp_path, first, name="first.csv")

    summary = load_and_surveil(seeded_engine, tmp_path, second, name="second.csv")

    assert (summary.investors, summary.new_trades, summary.context_trades) == (600, 3600, 1800)
    assert refs(seeded_engine, "ROUND_TRIP") == [f"{investor_id}-AAPL-7-2S" for investor_id in investor_ids
                                                 if investor_id % 2 == 0]


def test_a_sell_of_the_split_quantity_after_a_split_is_no_oversell_and_the_holding_is_post_split():
    """A replay that crosses an ex_date applies the split: SELL 40 after a 4-for-1 split of 10 shares is a full
    close (ROUND_TRIP sees flat to flat), not an oversell."""
    trades = context_frame([("a", 1001, "AAPL", "BUY", 10, 400.0, "2024-06-07 15:00:00"),
                            ("b", 1001, "AAPL", "SELL", 40, 101.0, "2024-06-10 09:35:00")], 0)
    rules = action_events.split_events({"AAPL": [(date(2024, 6, 10), Decimal(4))]})
    states = surveillance.position_states(trades, {}, rules)
    assert states["holding_before"].tolist() == [0, 40]
    assert states["holding_after"].tolist() == [10, 0]
    assert states["applied"].tolist() == [True, True]
    assert states["last_price"].tolist() == [400.0, 100.0]  # the BUY's price in post-split terms
    without = surveillance.position_states(trades, {})
    assert without["applied"].tolist() == [True, False]  # the reason the split must be applied


def ledger_states(trades, opening, rules):
    """The reference: position_states' columns from the ledger applying every trade one by one."""
    by_position = surveillance.in_replay_order(trades).sort_values(["investor_id", "stock_symbol", "seconds",
                                                                    "txn_id"], ignore_index=True)
    before, after, applied, last_price = surveillance.replay_with_ledger(surveillance.ledger_trades(by_position),
                                                                         opening, rules)
    return {"holding_before": before.tolist(), "holding_after": after.tolist(), "applied": applied.tolist(),
            "last_price": last_price.tolist()}


def test_position_states_in_segments_between_splits_are_the_ledgers_trade_by_trade():
    """A 1-for-10 split between a checkpoint and the first trade (25 shares -> 2, half a share paid out) and
    between two trades, a 4-for-1 between two trades, and an oversell after it that only the ledger's
    trade-by-trade replay skips: every column of position_states (running sums between the splits) equals the
    ledger's."""
    rows = [("a", 1001, "PFE", "BUY", 17, 300.0, "2024-06-03 10:00:00"),
            ("b", 1001, "PFE", "SELL", 76, 75.25, "2024-06-11 10:00:00"),  # 19 x 4 = 76: flat
            ("c", 1001, "PFE", "BUY", 3, 75.5, "2024-06-21 10:00:00"),
            ("d", 1002, "PFE", "BUY", 10, 30.0, "2024-06-03 10:00:00"),
            ("e", 1002, "PFE", "SELL", 50, 7.6, "2024-06-11 10:00:00"),  # oversold: 40 held
            ("f", 1002, "PFE", "SELL", 40, 7.7, "2024-06-12 10:00:00"),
            ("g", 1002, "PFE", "BUY", 2, 7.5, "2024-06-21 10:00:00"),
            ("h", 1003, "PFE", "BUY", 25, 30.0, "2024-05-31 10:00:00"),  # 25 -> 2 on 2024-06-01
            ("i", 1003, "PFE", "SELL", 1, 301.0, "2024-06-03 10:00:00"),  # 1 -> 4 on 2024-06-10
            ("j", 1003, "PFE", "SELL", 4, 75.0, "2024-06-11 10:00:00")]
    trades = context_frame(rows, 0)
    rules = action_events.split_events({"PFE": [(date(2024, 6, 1), Decimal("0.1")), (date(2024, 6, 10), Decimal(4))]})
    opening = {(1001, "PFE"): checkpoint(1001, "PFE", 25, "29.50", week_start=date(2024, 5, 27))}

    states = surveillance.position_states(trades, opening, rules)

    assert {column: states[column].tolist() for column in ("holding_before", "holding_after", "applied",
                                                           "last_price")} == ledger_states(trades, opening, rules)
    assert states["holding_before"].tolist() == [2, 76, 0, 0, 40, 40, 0, 0, 2, 4]
    assert states["holding_after"].tolist() == [19, 0, 3, 10, 40, 0, 2, 25, 1, 0]
    assert states["applied"].tolist() == [True, True, True, True, False, True, True, True, True, True]
    assert states["last_price"].tolist() == [295.0, 75.0, 75.25, 30.0, 7.5, 7.6, 7.7, 30.0, 300.0, 75.25]


@pytest.mark.parametrize("opening_quantity", [None, 18])
def test_the_portfolio_value_drops_the_fraction_a_reverse_split_pays_out(opening_quantity):
    # 18 PFE at 30.00, then a 1-for-10 split: 1 share at 300.00 and 0.8 of a share paid out as cash in lieu. The
    # value before a later PFE trade is 1 x 300 + the KO bought meanwhile, whether the 18 shares come from a trade
    # of the same check or from an opening checkpoint (an incremental check), as the ledger's checkpoints say
    rows = [("k", 7, "KO", "BUY", 1, 50.0, "2024-06-04 10:00:00"),
            ("p", 7, "PFE", "BUY", 1, 300.0, "2024-06-05 10:00:00")]
    if opening_quantity is None:
        rows.insert(0, ("b", 7, "PFE", "BUY", 18, 30.0, "2024-05-31 10:00:00"))
        opening = {}
    else:
        opening = {(7, "PFE"): checkpoint(7, "PFE", opening_quantity, "30", week_start=date(2024, 5, 27))}
    trades = context_frame(rows, 0)
    rules = action_events.split_events({"PFE": [(date(2024, 6, 3), Decimal("0.1"))]})

    value = surveillance.portfolio_value_before(trades, surveillance.position_states(trades, opening, rules), opening)

    by_ref = dict(zip(trades["txn_ref"], value.tolist()))
    assert (by_ref["k"], by_ref["p"]) == (540.0, 350.0)  # before the KO trade PFE is valued as it last traded


def test_position_states_of_generated_trades_with_splits_are_the_ledgers():
    """On generated trades across a split, with a checkpoint for every other position: position_states (running
    sums per segment) equals the ledger's replay trade by trade."""
    rows = [(f"T{number}", 1001 + number % 3, symbol, side, quantity, price,
             (datetime(2024, 6, 3, 10) + timedelta(hours=7 * number)).strftime("%Y-%m-%d %H:%M:%S"))
            for number, (symbol, side, quantity, price) in enumerate(
                (("NVDA", "BUY", 3, 120.0), ("NVDA", "SELL", 2, 121.0), ("KO", "BUY", 5, 60.0),
                 ("NVDA", "SELL", 9, 30.5), ("KO", "SELL", 5, 61.0)) * 12)]
    trades = context_frame(rows, 0)
    rules = action_events.split_events({"NVDA": [(date(2024, 6, 10), Decimal(4))]})
    week = date(2024, 5, 27)
    opening = {(1001, "NVDA"): checkpoint(1001, "NVDA", 7, "118.25", week),
               (1002, "KO"): checkpoint(1002, "KO", 1, "59", week)}

    states = surveillance.position_states(trades, opening, rules)

    assert {column: states[column].tolist() for column in ("holding_before", "holding_after", "applied",
                                                           "last_price")} == ledger_states(trades, opening, rules)


@pytest.mark.parametrize("change", [
    "ALTER TABLE transactions RENAME INDEX ix_transactions_position_time TO ix_renamed",
    "ALTER TABLE transactions ALTER INDEX ix_transactions_position_time IGNORED",  # MariaDB's trial of a drop
])
def test_mariadb_full_checks_work_when_an_administrator_renamed_the_position_index(mariadb_url, tmp_path, change):
    """The full check and update --full named ix_transactions_position_time in IGNORE INDEX: with it renamed or
    marked IGNORED (break-it trial), the server refused both statements ("Key ... doesn't exist"). They now name it
    only where it exists and is used, and find the same positions and alerts."""
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    load_and_surveil(engine, tmp_path, every_rule_rows())
    with engine.connect() as connection:
        assert dialects.unindexed_scan(connection) == "IGNORE INDEX (ix_transactions_position_time)"
    before = update_portfolio.update_portfolios(engine, full=True), surveillance.run_surveillance(engine, full=True)
    with engine.begin() as connection:
        connection.exec_driver_sql(change)
        assert dialects.unindexed_scan(connection) == ""
        stored = connection.execute(select(alerts.c.rule, alerts.c.txn_ref).order_by(alerts.c.alert_id)).all()
    after = update_portfolio.update_portfolios(engine, full=True), surveillance.run_surveillance(engine, full=True)
    assert [summary.line(seconds=False) for summary in after] == [summary.line(seconds=False) for summary in before]
    assert before[1].trades_checked == len(every_rule_rows())
    with engine.connect() as connection:
        assert connection.execute(select(alerts.c.rule, alerts.c.txn_ref).order_by(alerts.c.alert_id)).all() == stored
    engine.dispose()
