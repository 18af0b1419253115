"""Investor risk metrics (volatility, 1-day 95% VaR and ES, max drawdown) against an independent computation."""
import math

import numpy as np
import pytest
from sqlalchemy import text

import closes
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
            "max_drawdown FROM investor_risk"))}


def reference(quantities):
    """The metrics computed directly from the lists above (KO's gap filled by hand)."""
    ko = [50, 50, 49, 48, 51, 52, 47, 50]
    values = np.array([quantities.get("AAPL", 0) * a + quantities.get("KO", 0) * k
                       for a, k in zip(CLOSES["AAPL"], ko)], dtype=float)
    pnl = values[1:] - values[:-1]
    returns = pnl / values[:-1]
    var = -np.percentile(pnl, 5)
    tail = [p for p in pnl if p <= -var]
    drawdown = max((max(values[:i + 1]) - v) / max(values[:i + 1]) for i, v in enumerate(values))
    return np.std(returns, ddof=1) * math.sqrt(252), var, -sum(tail) / len(tail), drawdown


def test_metrics_match_an_independent_computation(seeded_engine, tmp_path):
    rows = load_history(seeded_engine, tmp_path, [
        "a1,1001,AAPL,BUY,10,100,2025-01-02 10:00:00",
        "a2,1001,KO,BUY,30,50,2025-01-02 10:00:00",
        "a3,1001,KO,SELL,10,49,2025-01-06 10:00:00",  # today's holding: 10 AAPL and 20 KO
        "b1,1002,AAPL,BUY,5,100,2025-01-02 11:00:00",
    ])

    for investor_id, quantities in ((1001, {"AAPL": 10, "KO": 20}), (1002, {"AAPL": 5})):
        volatility, var, shortfall, drawdown = reference(quantities)
        row = rows[investor_id]
        assert float(row.portfolio_volatility) == pytest.approx(volatility, abs=1e-7)
        assert float(row.var_95_1d) == pytest.approx(var, abs=1e-5)
        assert float(row.expected_shortfall_95_1d) == pytest.approx(shortfall, abs=1e-5)
        assert float(row.max_drawdown) == pytest.approx(drawdown, abs=1e-7)
    # 1002's value is 5 × AAPL. Daily P&L: +10 -15 +30 -5 -30 +15 +10; the 5th percentile lies 0.3 of the way
    # from -30 to -15: VaR 25.5, and only the -30 day is at or beyond it: ES 30. Deepest fall 105 -> 98: 7/105.
    assert float(rows[1002].var_95_1d) == pytest.approx(25.5, abs=1e-5)
    assert float(rows[1002].expected_shortfall_95_1d) == pytest.approx(30, abs=1e-5)
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
    """The metrics of `quantity` shares over the walk, computed directly."""
    values = np.array([quantity * float(price) for price in walk])
    pnl = values[1:] - values[:-1]
    var = -np.percentile(pnl, 5)
    peaks = np.maximum.accumulate(values)
    return (np.std(pnl / values[:-1], ddof=1) * math.sqrt(252), var, -pnl[pnl <= -var].mean(),
            ((peaks - values) / peaks).max())


def test_metrics_of_a_holding_across_splits_equal_those_without_splits(seeded_engine, tmp_path):
    walk = split_holdings(seeded_engine, tmp_path)
    with seeded_engine.connect() as connection:
        table = closes.close_table(closes.read_closes(connection, last_day=SPLIT_DAYS[-1]))

    metrics = risk_metrics.compute_risk_metrics(table, [(1001, "AAPL", 40), (1002, "MSFT", 40)])

    for split, plain, expected in zip(metrics[1001], metrics[1002], walk_reference(walk, 40)):
        assert split == pytest.approx(plain, abs=1e-9) and split == pytest.approx(expected, rel=1e-9)
    unadjusted = risk_metrics.portfolio_metrics([40 * float(price) for price in as_traded(walk)])
    assert unadjusted.max_drawdown >= 0.75 > metrics[1001].max_drawdown  # the 4-for-1 split as a loss


def test_stored_risk_of_a_holding_across_splits_equals_the_unsplit_case(seeded_engine, tmp_path):
    walk = split_holdings(seeded_engine, tmp_path)
    stored = stored_closes(seeded_engine)

    update_portfolio.update_portfolios(seeded_engine)

    with seeded_engine.connect() as connection:
        rows = {row.investor_id: row for row in connection.execute(text(
            "SELECT investor_id, total_market_value, portfolio_volatility, var_95_1d, expected_shortfall_95_1d, "
            "max_drawdown FROM investor_risk"))}
        marks = dict(connection.execute(text("SELECT stock_symbol, annual_volatility FROM symbol_marks")).all())
    assert rows[1001]._asdict() | {"investor_id": 0} == rows[1002]._asdict() | {"investor_id": 0}
    volatility, var, shortfall, drawdown = walk_reference(walk, 40)
    assert float(rows[1001].portfolio_volatility) == pytest.approx(volatility, abs=1e-7)
    assert float(rows[1001].var_95_1d) == pytest.approx(var, abs=1e-5)
    assert float(rows[1001].expected_shortfall_95_1d) == pytest.approx(shortfall, abs=1e-5)
    assert float(rows[1001].max_drawdown) == pytest.approx(drawdown, abs=1e-7)
    assert marks["AAPL"] == pytest.approx(marks["MSFT"], abs=1e-9)
    assert stored_closes(seeded_engine) == stored  # market_prices keeps the closes as traded
