"""Risk metrics of each investor's current holdings by historical simulation over market_prices.

Today's quantities are valued at every past daily close (a symbol's missing days carry its last close forward;
days before all of an investor's symbols have a close are left out), giving a value series per investor.
From it: annualized volatility of the daily returns, the 1-day 95% Value at Risk and Expected Shortfall in
currency, and the maximum drawdown. Used by update_portfolio.py, written to investor_risk.
"""
import math
from collections import namedtuple

import numpy as np
import pandas as pd

import constants

RiskMetrics = namedtuple("RiskMetrics", "portfolio_volatility var_95_1d expected_shortfall_95_1d max_drawdown")
VAR_PERCENTILE = 5  # the worst 5% of days: 95% confidence
MIN_VALUE_DAYS = 3  # fewer days give no metrics (NULL)


def portfolio_metrics(values):
    """RiskMetrics of a series of daily portfolio values (currency), or None if too short.

    volatility: sample standard deviation of daily returns × √252; VaR: minus the 5th percentile (numpy's linear
    interpolation) of daily P&L; ES: minus the mean P&L of the days at or below minus the VaR; drawdown: the
    largest (peak − value) / peak, with peak the running maximum.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_VALUE_DAYS or values[0] <= 0:
        return None
    pnl = np.diff(values)
    returns = pnl / values[:-1]
    var = -np.percentile(pnl, VAR_PERCENTILE)
    peaks = np.maximum.accumulate(values)
    return RiskMetrics(
        portfolio_volatility=float(np.std(returns, ddof=1) * math.sqrt(constants.TRADING_DAYS_PER_YEAR)),
        var_95_1d=float(var),
        expected_shortfall_95_1d=float(-pnl[pnl <= -var].mean()),
        max_drawdown=float(((peaks - values) / peaks).max()),
    )


def value_histories(closes, holdings):
    """{investor_id: Series of daily values} from closes (date × symbol) and holdings (investor, symbol, quantity).

    Symbols without any close cannot be simulated and are left out.
    """
    closes = closes.sort_index().ffill()
    histories = {}
    for investor_id, held in holdings.groupby("investor_id"):
        quantities = held.set_index("stock_symbol")["quantity"].astype(float)
        quantities = quantities[quantities.index.isin(closes.columns)]
        if quantities.empty:
            continue
        prices = closes[quantities.index].dropna()
        histories[investor_id] = prices.to_numpy() @ quantities.to_numpy()
    return histories


def compute_risk_metrics(close_table, holdings):
    """{investor_id: RiskMetrics} for the investors in holdings, rows of (investor_id, stock_symbol, quantity)
    with quantity > 0 (None where history is too short); close_table: closes.close_table's day × symbol table."""
    holdings = pd.DataFrame.from_records(holdings, columns=["investor_id", "stock_symbol", "quantity"])
    if close_table.empty or holdings.empty:
        return {}
    return {investor_id: portfolio_metrics(values)
            for investor_id, values in value_histories(close_table, holdings).items()}
