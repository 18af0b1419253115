"""Daily closes (`market_prices`): the one reader of them, and what valuation derives from them per symbol.

Every stage that compares prices over time reads its closes here (update_portfolio's marks and risk metrics,
surveillance's price checks), so that an adjustment of the closes (for splits) has one place to go. A symbol's
marks are its last close on or before the day of the update (else the price of its latest trade), the
annualized volatility of its last VOLATILITY_LOOKBACK_DAYS daily returns, and a digest of everything they and
the risk metrics depend on: when the digest is unchanged, the holders of the symbol need no revaluation.
"""
import hashlib
import math
from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import Date, bindparam, text

import constants
from ledger import to_decimal

CLOSES_SQL = """
SELECT stock_symbol, price_date, close_price
FROM market_prices
WHERE price_date BETWEEN :first_day AND :last_day
ORDER BY stock_symbol, price_date
"""
EARLIEST_DAY = date(1, 1, 1)


class Mark(NamedTuple):
    """What valuation takes from one symbol's closes."""
    stock_symbol: str
    last_price: object  # Decimal, or None without any close or trade
    annual_volatility: float  # None with fewer than two closes
    closes_digest: str


def read_closes(connection, last_day=None, first_day=None):
    """Daily closes from first_day (default: the first) to last_day (default: today): stock_symbol, day
    (datetime64[D]), close_price (float) and close_exact (Decimal), sorted by symbol and day."""
    statement = text(CLOSES_SQL).bindparams(bindparam("first_day", type_=Date), bindparam("last_day", type_=Date))
    rows = connection.execute(statement, {"first_day": first_day or EARLIEST_DAY,
                                          "last_day": last_day or date.today()}).all()
    closes = pd.DataFrame.from_records(rows, columns=["stock_symbol", "price_date", "close_price"])
    closes["close_exact"] = [to_decimal(value) for value in closes["close_price"]]
    closes["close_price"] = closes["close_price"].astype(float)
    closes["day"] = pd.to_datetime(closes.pop("price_date").astype(str)).to_numpy().astype("datetime64[D]")
    return closes[["stock_symbol", "day", "close_price", "close_exact"]]


def close_table(closes):
    """Closes as a table: one row per day, one column per symbol (float; NaN where a symbol has no close)."""
    return closes.pivot(index="day", columns="stock_symbol", values="close_price")


def annual_volatility(prices, lookback_days=constants.VOLATILITY_LOOKBACK_DAYS):
    """Annualized standard deviation of the last `lookback_days` simple daily returns of a price series, as a
    fraction (population variance: mean of squares minus the squared mean); None without a return."""
    prices = np.asarray(prices, dtype=float)
    returns = (prices[1:] / prices[:-1] - 1)[-lookback_days:]
    if not len(returns):
        return None
    mean_return, mean_square = returns.mean(), (returns * returns).mean()
    variance = mean_square - mean_return * mean_return
    return math.sqrt(variance * constants.TRADING_DAYS_PER_YEAR) if variance > 0 else 0.0


def symbol_marks(closes, trade_prices, fingerprint=""):
    """{stock_symbol: Mark} for every symbol with a close or a trade; trade_prices: {symbol: latest trade price}.

    fingerprint: text of anything else the valuation depends on (the scoring parameters), folded into the
    digests so that changing it revalues every holder."""
    marks = {}
    for symbol, rows in closes.groupby("stock_symbol", sort=True):
        lines = "\n".join(f"{day}:{close}" for day, close in zip(rows["day"].astype(str), rows["close_exact"]))
        marks[symbol] = Mark(symbol, rows["close_exact"].iloc[-1], annual_volatility(rows["close_price"]),
                             _digest(fingerprint, lines))
    for symbol, price in trade_prices.items():
        if symbol not in marks:
            marks[symbol] = Mark(symbol, price, None, _digest(fingerprint, f"trade:{price}"))
    return marks


def _digest(fingerprint, lines):
    return hashlib.sha256(f"{fingerprint}\n{lines}".encode()).hexdigest()
