"""Investor risk metrics (volatility, 1-day 95% VaR and ES by historical simulation of today's holdings, parametric
VaR, max drawdown) against an independent computation, by hand and with numpy."""
import math
from datetime import date

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

import closes
import generate_dummy_data
import load_transactions
import risk_metrics
import update_portfolio
from test_closes import DAYS as SPLIT_DAYS, as_traded, split_history, stored_closes

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
# A hand-made history: 8 weekdays, AAPL and KO; KO has no close on 2025-01-03 (its last close carries forward).
CLOSES = {
    "AAPL": [100, 102, 99, 105, 104, 98, 101, 103],
    "KO": [50, None, 49, 48, 51, 52, 47, 50],
}
DAYS = ["2025-01-02", "2025-01-03", "2025-01-06", "2025-01-07", "2025-01-08", "2025-01-09", "2025-01-10",
        "2025-01-13"]


def load_history(engine, tmp_path, trades):
    prices = ["stock_symbol,price_date,close_price"] + [
        f"{symbol},{day},{close}" for symbol, closes in CLOSES.items() for day, close in zip(DAYS, closes)
        if close is not None]
    (tmp_path / "market_prices.csv").write_text("\n".join(prices) + "\n")
    (tmp_path / "trades.csv").write_text("\n".join([HEADER, *trades]) + "\n")
    assert load_transactions.load_paths(engine, [str(tmp_path / "trades.csv")]) == 0
    update_portfolio.update_portfolios(engine)
    with engine.connect() as connection:
        return {row.investor_id: row for row in connection.execute(text(
            "SELECT investor_id, total_market_value, portfolio_volatility, var_95_1d, expected_shortfall_95_1d, "
            "parametric_var_95_1d, max_drawdown FROM investor_risk"))}


def reference(quantities):
    """The metrics computed directly from the lists above: volatility and drawdown of today's quantities valued at
    each day's closes (KO's gap filled by hand); VaR, ES and parametric VaR of the P&L of today's position values
    under each day's returns, KO's return taken only between two real closes (none on 01-03, 49/50 on 01-06)."""
    ko = [50, 50, 49, 48, 51, 52, 47, 50]
    values = np.array([quantities.get("AAPL", 0) * a + quantities.get("KO", 0) * k
                       for a, k in zip(CLOSES["AAPL"], ko)], dtype=float)
    returns = (values[1:] - values[:-1]) / values[:-1]
    drawdown = max((max(values[:i + 1]) - v) / max(values[:i + 1]) for i, v in enumerate(values))
    aapl = [b / a - 1 for a, b in zip(CLOSES["AAPL"], CLOSES["AAPL"][1:])]
    ko_returns = [0, 49 / 50 - 1] + [b / a - 1 for a, b in zip(ko[2:], ko[3:])]
    pnl = np.array([quantities.get("AAPL", 0) * 103 * a + quantities.get("KO", 0) * 50 * k
                    for a, k in zip(aapl, ko_returns)])
    var = -np.percentile(pnl, 5)
    tail = [p for p in pnl if p <= -var]
    return (np.std(returns, ddof=1) * math.sqrt(252), var, -sum(tail) / len(tail), drawdown,
            1.6448536269514722 * np.std(pnl, ddof=1))


def test_metrics_match_an_independent_computation(seeded_engine, tmp_path):
    rows = load_history(seeded_engine, tmp_path, [
        "a1,1001,AAPL,BUY,10,100,2025-01-02 10:00:00",
        "a2,1001,KO,BUY,30,50,2025-01-02 10:00:00",
        "a3,1001,KO,SELL,10,49,2025-01-06 10:00:00",  # today's holding: 10 AAPL and 20 KO
        "b1,1002,AAPL,BUY,5,100,2025-01-02 11:00:00",
    ])

    for investor_id, quantities in ((1001, {"AAPL": 10, "KO": 20}), (1002, {"AAPL": 5})):
        volatility, var, shortfall, drawdown, parametric = reference(quantities)
        row = rows[investor_id]
        assert float(row.parametric_var_95_1d) == pytest.approx(parametric, abs=1e-5)
        assert float(row.portfolio_volatility) == pytest.approx(volatility, abs=1e-7)
        assert float(row.var_95_1d) == pytest.approx(var, abs=1e-5)
        assert float(row.expected_shortfall_95_1d) == pytest.approx(shortfall, abs=1e-5)
        assert float(row.max_drawdown) == pytest.approx(drawdown, abs=1e-7)
    # 1002 holds 5 AAPL, worth 5 × 103 = 515 today. Its two worst days are AAPL's 98/104 - 1 = -3/52 and
    # 99/102 - 1 = -1/34: P&L -1545/52 = -29.7115 and -515/34 = -15.1471. The 5th percentile of the 7 days lies 0.3
    # of the way from the worst to the second: VaR = 1545/52 - 0.3 × (1545/52 - 515/34) = 25.3422; only the worst
    # day is at or beyond it: ES 29.7115. (Valued at past closes instead, the worst day lost 5 × 6 = 30.)
    assert float(rows[1002].var_95_1d) == pytest.approx(1545 / 52 - 0.3 * (1545 / 52 - 515 / 34), abs=1e-5)
    assert float(rows[1002].var_95_1d) == pytest.approx(25.3422, abs=1e-4)
    assert float(rows[1002].expected_shortfall_95_1d) == pytest.approx(1545 / 52, abs=1e-5)
    assert float(rows[1002].max_drawdown) == pytest.approx(7 / 105, abs=1e-7)


def test_closed_portfolio_has_no_metrics(seeded_engine, tmp_path):
    rows = load_history(seeded_engine, tmp_path, [
        "c1,1003,AAPL,BUY,10,100,2025-01-02 10:00:00",
        "c2,1003,AAPL,SELL,10,103,2025-01-13 10:00:00",
    ])
    assert rows[1003].portfolio_volatility is None and rows[1003].var_95_1d is None
    assert float(rows[1003].total_market_value) == 0


def split_holdings(engine, tmp_path):
    """AAPL with a 4-for-1 and a later 1-for-10 split, MSFT the same walk without any (test_closes); 1001 buys 40
    AAPL and 1002 40 MSFT on the last day, at its close: the same holding, its history across both splits."""
    walk = split_history(engine)
    trades = [f"s1,1001,AAPL,BUY,40,{walk[-1]},{SPLIT_DAYS[-1]} 10:00:00",
              f"s2,1002,MSFT,BUY,40,{walk[-1]},{SPLIT_DAYS[-1]} 10:00:00"]
    (tmp_path / "trades.csv").write_text("\n".join([HEADER, *trades]) + "\n")
    assert load_transactions.load_file(engine, str(tmp_path / "trades.csv")).rows_rejected == 0
    return walk


def walk_reference(walk, quantity):
    """The metrics of `quantity` shares over the walk, computed directly, in RiskMetrics order."""
    values = np.array([quantity * float(price) for price in walk])
    returns = values[1:] / values[:-1] - 1
    pnl = returns * values[-1]
    var = -np.percentile(pnl, 5)
    peaks = np.maximum.accumulate(values)
    return (np.std(returns, ddof=1) * math.sqrt(252), var, -pnl[pnl <= -var].mean(),
            1.6448536269514722 * np.std(pnl, ddof=1), ((peaks - values) / peaks).max())


def test_metrics_of_a_holding_across_splits_equal_those_without_splits(seeded_engine, tmp_path):
    walk = split_holdings(seeded_engine, tmp_path)
    with seeded_engine.connect() as connection:
        table = closes.close_table(closes.read_closes(connection, last_day=SPLIT_DAYS[-1]))

    metrics = risk_metrics.compute_risk_metrics(table, [(1001, "AAPL", 40), (1002, "MSFT", 40)])

    for split, plain, expected in zip(metrics[1001], metrics[1002], walk_reference(walk, 40)):
        assert split == pytest.approx(plain, abs=1e-9) and split == pytest.approx(expected, rel=1e-9)
    unadjusted = risk_metrics.value_metrics([40 * float(price) for price in as_traded(walk)])
    assert unadjusted.max_drawdown >= 0.75 > metrics[1001].max_drawdown  # the 4-for-1 split as a loss


def test_stored_risk_of_a_holding_across_splits_equals_the_unsplit_case(seeded_engine, tmp_path):
    walk = split_holdings(seeded_engine, tmp_path)
    stored = stored_closes(seeded_engine)

    update_portfolio.update_portfolios(seeded_engine)

    with seeded_engine.connect() as connection:
        rows = {row.investor_id: row for row in connection.execute(text(
            "SELECT investor_id, total_market_value, portfolio_volatility, var_95_1d, expected_shortfall_95_1d, "
            "parametric_var_95_1d, max_drawdown FROM investor_risk"))}
        marks = dict(connection.execute(text("SELECT stock_symbol, annual_volatility FROM symbol_marks")).all())
    assert rows[1001]._asdict() | {"investor_id": 0} == rows[1002]._asdict() | {"investor_id": 0}
    volatility, var, shortfall, _, drawdown = walk_reference(walk, 40)
    assert float(rows[1001].portfolio_volatility) == pytest.approx(volatility, abs=1e-7)
    assert float(rows[1001].var_95_1d) == pytest.approx(var, abs=1e-5)
    assert float(rows[1001].expected_shortfall_95_1d) == pytest.approx(shortfall, abs=1e-5)
    assert float(rows[1001].max_drawdown) == pytest.approx(drawdown, abs=1e-7)
    assert marks["AAPL"] == pytest.approx(marks["MSFT"], abs=1e-9)
    assert stored_closes(seeded_engine) == stored  # market_prices keeps the closes as traded


LONG_DAYS = 5040  # 20 years of weekdays
CRASH_START, CRASH_DAYS, RECOVERY_DAYS = LONG_DAYS - 420, 60, 300  # inside the last VAR_WINDOW_DAYS


def crash_history():
    """20 years of daily closes of two symbols ending 2026-10-30: AAPL falls to half its value over 60 days within
    the last 500 and recovers over the next 300; KO is a quiet walk. Rounded to cents, as stored."""
    rng = np.random.default_rng(2026)
    drift = np.zeros(LONG_DAYS)
    drift[CRASH_START:CRASH_START + CRASH_DAYS] = -math.log(2) / CRASH_DAYS
    drift[CRASH_START + CRASH_DAYS:CRASH_START + CRASH_DAYS + RECOVERY_DAYS] = math.log(2) / RECOVERY_DAYS
    aapl = np.round(100 * np.exp(np.cumsum(rng.normal(0.0002, 0.012, LONG_DAYS) + drift)), 2)
    ko = np.round(50 * np.exp(np.cumsum(rng.normal(0.0001, 0.008, LONG_DAYS))), 2)
    days = generate_dummy_data.weekdays_ending(date(2026, 10, 30), LONG_DAYS)
    return days, {"AAPL": aapl, "KO": ko}


def numpy_reference(history, quantities, window=500):
    """The definitions, computed directly with numpy: (volatility, VaR, ES, parametric VaR, drawdown)."""
    prices = np.column_stack([history[symbol] for symbol in quantities])
    held = np.array(list(quantities.values()), dtype=float)
    values = prices @ held
    returns = (prices[1:] / prices[:-1] - 1)[-window:]
    pnl = returns @ (held * prices[-1])
    var = -np.percentile(pnl, 5)
    peaks = np.maximum.accumulate(values)
    return (np.std(values[1:] / values[:-1] - 1, ddof=1) * math.sqrt(252), var, -pnl[pnl <= -var].mean(),
            1.6448536269514722 * np.std(pnl, ddof=1), ((peaks - values) / peaks).max())


def test_long_history_with_a_crash_matches_numpy(seeded_engine, tmp_path):
    days, history = crash_history()
    prices = ["stock_symbol,price_date,close_price"] + [
        f"{symbol},{day},{close:.2f}" for symbol, series in history.items() for day, close in zip(days, series)]
    (tmp_path / "market_prices.csv").write_text("\n".join(prices) + "\n")
    (tmp_path / "trades.csv").write_text("\n".join([
        HEADER, f"l1,1001,AAPL,BUY,300,{history['AAPL'][-1]:.2f},2026-10-30 10:00:00",
        f"l2,1001,KO,BUY,500,{history['KO'][-1]:.2f},2026-10-30 10:00:00"]) + "\n")
    assert load_transactions.load_paths(seeded_engine, [str(tmp_path / "trades.csv")]) == 0

    update_portfolio.update_portfolios(seeded_engine, today=date(2026, 10, 30))

    with seeded_engine.connect() as connection:
        row = connection.execute(text(
            "SELECT portfolio_volatility, var_95_1d, expected_shortfall_95_1d, parametric_var_95_1d, max_drawdown "
            "FROM investor_risk WHERE investor_id = 1001")).one()
    expected = numpy_reference(history, {"AAPL": 300, "KO": 500})
    assert [float(value) for value in row] == pytest.approx(expected, rel=1e-6)
    assert float(row.max_drawdown) > 0.4  # the crash


def test_var_scales_past_returns_to_todays_value():
    """The issue's case: valued at past closes, a loss on a day when the holding was worth half counts half; by
    historical simulation each past return applies to today's value, so VaR grows with the value at risk today."""
    days, history = crash_history()
    table = pd.DataFrame(history, index=pd.to_datetime(days))
    quantities = {"AAPL": 300, "KO": 500}
    metrics = risk_metrics.compute_risk_metrics(table, [(1001, symbol, q) for symbol, q in quantities.items()])[1001]
    values = np.column_stack([history["AAPL"], history["KO"]]) @ np.array([300.0, 500.0])
    in_currency = -np.percentile(np.diff(values)[-500:], 5)  # the earlier definition
    assert metrics.var_95_1d == pytest.approx(numpy_reference(history, quantities)[1], rel=1e-9)
    assert metrics.var_95_1d > 1.1 * in_currency


def test_var_window_takes_only_the_last_days():
    """A crash older than VAR_WINDOW_DAYS leaves VaR and ES; the drawdown keeps it."""
    days, history = crash_history()
    late = {symbol: series[:LONG_DAYS - 700] for symbol, series in history.items()}  # crash ~ 280 days before
    calm = {symbol: np.concatenate([series, series[-1] * np.exp(np.cumsum(
        np.random.default_rng(5).normal(0, 0.001, 600)))]) for symbol, series in late.items()}
    table = pd.DataFrame(calm, index=pd.RangeIndex(len(calm["AAPL"])))
    metrics = risk_metrics.compute_risk_metrics(table, [(1001, "AAPL", 300)])[1001]
    expected = numpy_reference(calm, {"AAPL": 300})
    assert (metrics.var_95_1d, metrics.expected_shortfall_95_1d, metrics.max_drawdown) == pytest.approx(
        (expected[1], expected[2], expected[4]), rel=1e-9)
    assert metrics.var_95_1d < 0.003 * 300 * calm["AAPL"][-1] and metrics.max_drawdown > 0.4


def test_a_symbol_with_a_gap_has_one_return_across_it():
    """No return on a day without a close; the next real close's return spans the gap (not a 0 then a jump)."""
    table = pd.DataFrame({"AAPL": [100.0, np.nan, np.nan, 90.0, 99.0], "KO": [10.0, 11.0, 12.0, 11.0, 11.0]})
    pnl = risk_metrics.scenario_pnl(table, [(1, "AAPL", 10), (1, "KO", 100)])[1]
    # today's values: AAPL 990, KO 1100. Days 1 and 2: KO only; day 3: AAPL 90/100 - 1 and KO 11/12 - 1; day 4.
    expected = [1100 * 0.1, 1100 * (12 / 11 - 1), 990 * -0.1 + 1100 * (11 / 12 - 1), 990 * 0.1]
    assert pnl.tolist() == pytest.approx(expected, rel=1e-12)
    assert risk_metrics.scenario_pnl(table, [(2, "AAPL", 10)])[2].tolist() == pytest.approx([-99.0, 99.0])
