"""Risk metrics of each investor's current holdings over the daily closes (docs/risk-scores.md, Risk metrics).

The closes are split-adjusted to today's terms (closes.read_closes), as today's quantities are: a split changes
neither a value series nor a return.
- Volatility and drawdown: today's quantities are valued at every past daily close of the investor's symbols (a
  symbol's missing days carry its last close forward; days before all of them have a close are left out), giving a
  value series; its annualized volatility of daily returns and its maximum drawdown.
- Value at Risk and Expected Shortfall by historical simulation: each symbol's daily return, taken only between two
  of its real closes, is applied to today's value of the position in it (quantity times its last close), and
  summed per day: the P&L that today's holdings would have made on each of the last VAR_WINDOW_DAYS days. VaR is
  the loss at its 5th percentile, ES the mean loss at or beyond it, and the parametric (variance-covariance) VaR
  is 1.6449 standard deviations of the same P&L (a zero mean, as usual for one day).
Used by update_portfolio.py, written to investor_risk.
"""
import math
from statistics import NormalDist
from typing import NamedTuple, Optional

import numpy as np

import constants

VAR_PERCENTILE = 5  # the worst 5% of days: 95% confidence
VAR_WINDOW_DAYS = 500  # the last 500 daily returns (about two years of trading days) are the scenarios
NORMAL_QUANTILE_95 = NormalDist().inv_cdf(0.95)  # 1.6449: the one-sided 95% quantile of a standard normal
MIN_VALUE_DAYS = 3  # fewer days give no volatility or drawdown (NULL)
MIN_SCENARIOS = 2  # fewer daily P&L give no VaR or ES (NULL)
DEFINITION_VERSION = "risk-metrics-2"  # in the valuation digest: a new definition rescores every investor once


class RiskMetrics(NamedTuple):
    """An investor's risk metrics; None where its history is too short. Money in currency units."""
    portfolio_volatility: Optional[float]  # annualized, a fraction
    var_95_1d: Optional[float]  # historical simulation, a loss (positive)
    expected_shortfall_95_1d: Optional[float]
    parametric_var_95_1d: Optional[float]
    max_drawdown: Optional[float]  # a share of the running peak


class ValueMetrics(NamedTuple):
    """What a value series gives."""
    portfolio_volatility: float
    max_drawdown: float


class LossMetrics(NamedTuple):
    """What the daily P&L of today's holdings gives."""
    var_95_1d: float
    expected_shortfall_95_1d: float
    parametric_var_95_1d: float


def value_metrics(values):
    """ValueMetrics of a series of daily portfolio values (currency), or None if too short: volatility is the
    sample standard deviation of daily returns × √252; drawdown the largest (peak − value) / peak, with peak the
    running maximum."""
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_VALUE_DAYS or values[0] <= 0:
        return None
    returns = np.diff(values) / values[:-1]
    peaks = np.maximum.accumulate(values)
    return ValueMetrics(
        portfolio_volatility=float(np.std(returns, ddof=1) * math.sqrt(constants.TRADING_DAYS_PER_YEAR)),
        max_drawdown=float(((peaks - values) / peaks).max()))


def loss_metrics(pnl):
    """LossMetrics of the daily P&L scenarios (currency), or None with fewer than MIN_SCENARIOS: VaR is minus the
    5th percentile (numpy's linear interpolation), ES minus the mean of the P&L at or below minus the VaR, the
    parametric VaR 1.6449 (the 95% normal quantile) sample standard deviations."""
    pnl = np.asarray(pnl, dtype=float)
    if len(pnl) < MIN_SCENARIOS:
        return None
    var = -np.percentile(pnl, VAR_PERCENTILE)
    return LossMetrics(var_95_1d=float(var), expected_shortfall_95_1d=float(-pnl[pnl <= -var].mean()),
                       parametric_var_95_1d=float(NORMAL_QUANTILE_95 * np.std(pnl, ddof=1)))


def combine(values, losses):
    """RiskMetrics from ValueMetrics and LossMetrics (either may be None); None when both are."""
    if values is None and losses is None:
        return None
    return RiskMetrics(
        portfolio_volatility=values and values.portfolio_volatility,
        var_95_1d=losses and losses.var_95_1d, expected_shortfall_95_1d=losses and losses.expected_shortfall_95_1d,
        parametric_var_95_1d=losses and losses.parametric_var_95_1d, max_drawdown=values and values.max_drawdown)


def _held_columns(closes, holdings):
    """{investor_id: (column indexes, quantities)} of the holdings' symbols that have closes."""
    column = {symbol: index for index, symbol in enumerate(closes.columns)}
    held = {}
    for investor_id, symbol, quantity in holdings:
        if symbol in column:
            held.setdefault(investor_id, []).append((column[symbol], float(quantity)))
    return {investor_id: ([index for index, _ in positions], np.array([q for _, q in positions]))
            for investor_id, positions in held.items()}


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
    histories = {}
    for investor_id, (columns, quantities) in _held_columns(closes, holdings).items():
        days = ~missing[:, columns].any(axis=1) & traded[:, columns].any(axis=1)
        # C order, as pandas gave it: BLAS sums a row in the same order, so the values are the same to the bit
        histories[investor_id] = np.ascontiguousarray(prices[days][:, columns]) @ quantities
    return histories


def scenario_pnl(closes, holdings, window=VAR_WINDOW_DAYS):
    """{investor_id: array of daily P&L} of today's holdings under each of the last `window` days' returns.

    A symbol's return on a day is its close over its previous real close, minus 1, on a day it has a close (none
    on a day without one, and none before its second close); the position's value today is its quantity times the
    symbol's last close. The days are the last `window` on which one of the investor's symbols has a return."""
    closes = closes.sort_index()
    previous = closes.ffill().shift(1).to_numpy()
    prices = closes.to_numpy()
    has_return = ~np.isnan(prices) & ~np.isnan(previous)
    returns = np.where(has_return, prices / np.where(has_return, previous, 1) - 1, 0.0)
    last_close = closes.ffill().to_numpy()[-1] if len(closes) else np.array([])
    scenarios = {}
    for investor_id, (columns, quantities) in _held_columns(closes, holdings).items():
        days = np.flatnonzero(has_return[:, columns].any(axis=1))[-window:]
        scenarios[investor_id] = returns[days][:, columns] @ (quantities * last_close[columns])
    return scenarios


def compute_risk_metrics(close_table, holdings):
    """{investor_id: RiskMetrics} for the investors in holdings, rows of (investor_id, stock_symbol, quantity)
    with quantity > 0, sorted by investor and symbol (None where history is too short); close_table:
    closes.close_table's day × symbol table of read_closes' split-adjusted closes."""
    if close_table.empty:
        return {}
    histories, scenarios = value_histories(close_table, holdings), scenario_pnl(close_table, holdings)
    return {investor_id: combine(value_metrics(values), loss_metrics(scenarios[investor_id]))
            for investor_id, values in histories.items()}
