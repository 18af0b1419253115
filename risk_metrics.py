"""Risk metrics of each investor's current holdings by historical simulation over the daily closes.

Today's quantities are valued at every past daily close of the investor's symbols (a symbol's missing days carry
its last close forward; days before all of them have a close are left out), giving a value series per investor.
The closes are split-adjusted to today's terms (closes.read_closes), as today's quantities are: a split changes
neither the value series nor its returns.
From it: annualized volatility of the daily returns, the 1-day 95% Value at Risk and Expected Shortfall in
currency, and the maximum drawdown. Used by update_portfolio.py, written to investor_risk.
"""
import math
from collections import namedtuple

import numpy as np

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
    """{investor_id: array of daily values} from closes (day × symbol) and holdings, rows of (investor_id,
    stock_symbol, quantity) sorted by investor and symbol. An investor's days are those on which one of its own
    symbols has a close (a close of a symbol it does not hold changes nothing of its own), from the first day on
    which all of them have had one; a symbol's missing days carry its last close forward. Symbols without any
    close cannot be simulated and are left out."""
    closes = closes.sort_index()
    traded = closes.notna().to_numpy()
    filled = closes.ffill()
    prices, missing = filled.to_numpy(), filled.isna().to_numpy()
    column = {symbol: index for index, symbol in enumerate(closes.columns)}
    held = {}
    for investor_id, symbol, quantity in holdings:
        if symbol in column:
            held.setdefault(investor_id, []).append((column[symbol], float(quantity)))
    histories = {}
    for investor_id, positions in held.items():
        columns, quantities = [index for index, _ in positions], np.array([q for _, q in positions])
        days = ~missing[:, columns].any(axis=1) & traded[:, columns].any(axis=1)
        # C order, as pandas gave it: BLAS sums a row in the same order, so the values are the same to the bit
        histories[investor_id] = np.ascontiguousarray(prices[days][:, columns]) @ quantities
    return histories


def compute_risk_metrics(close_table, holdings):
    """{investor_id: RiskMetrics} for the investors in holdings, rows of (investor_id, stock_symbol, quantity)
    with quantity > 0, sorted by investor and symbol (None where history is too short); close_table:
    closes.close_table's day × symbol table of read_closes' split-adjusted closes."""
    if close_table.empty:
        return {}
    return {investor_id: portfolio_metrics(values)
            for investor_id, values in value_histories(close_table, holdings).items()}
