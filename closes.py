"""Daily closes (`market_prices`): the one reader of them, and what valuation derives from them per symbol.

Every stage that compares prices over time reads its closes here (update_portfolio's marks and risk metrics,
surveillance's price checks, live mode's starting prices), so that the adjustment for splits has one place.
Closes are read in the terms of the last day asked for: a close of day d is divided by the values of its symbol's
SPLITs with d < ex_date <= that day (corporate_actions; a 4-for-1 split has value 4), so that returns never jump
at a split; `market_prices` keeps the closes as traded. A symbol's marks are its last close on or before the day
of the update (else the price of its latest trade), the annualized volatility of its last
VOLATILITY_LOOKBACK_DAYS daily returns, and a digest of everything they and the risk metrics depend on, its
splits included: when the digest is unchanged, the holders of the symbol need no revaluation. The digest is taken
from a fingerprint the database computes, so that an update with nothing new does not read the closes themselves.
"""
import hashlib
import math
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import Date, bindparam, text

import constants
import corporate_actions
import dialects
from ledger import PRICE_STEP, to_decimal

CLOSES_SQL = """
SELECT {columns}
FROM market_prices
WHERE price_date BETWEEN :first_day AND :last_day
ORDER BY stock_symbol, price_date
"""
PACKED_CLOSE_SQL = "CONCAT_WS(',', price_date, close_price, stock_symbol)"  # the symbol last: it may hold a comma
# Per symbol, sums that change with any added, removed or changed close: the count, the first and last day, and
# the sums of close, close·n and close·n² over its closes numbered n = 1, 2, ... by day (a swap of two days'
# closes changes those), and of r and close·r with r the rank of the day among all days with a close (a close
# moved to another day changes those). Exact on MySQL and PostgreSQL (DECIMAL). A correction built to cancel out
# in all of them at once (four or more closes changed by matching amounts) would go unseen: run --full after one.
FINGERPRINT_SQL = """
WITH numbered AS (
    SELECT stock_symbol, price_date, close_price,
           ROW_NUMBER() OVER (PARTITION BY stock_symbol ORDER BY price_date) AS day_number,
           DENSE_RANK() OVER (ORDER BY price_date) AS day_rank
    FROM market_prices
    WHERE price_date <= :last_day
)
SELECT stock_symbol, COUNT(*), MIN(price_date), MAX(price_date), SUM(close_price),
       SUM(close_price * day_number), SUM(close_price * day_number * day_number),
       SUM(day_rank), SUM(close_price * day_rank)
FROM numbered
GROUP BY stock_symbol
ORDER BY stock_symbol
"""
EARLIEST_DAY = date(1, 1, 1)
NO_SPLIT = Fraction(1)


class Mark(NamedTuple):
    """What valuation takes from one symbol's closes."""
    stock_symbol: str
    last_price: object  # Decimal, or None without any close or trade
    annual_volatility: float  # None with fewer than two closes
    closes_digest: str


def read_closes(connection, last_day=None, first_day=None):
    """Daily closes from first_day (default: the first) to last_day (default: today), split-adjusted to the terms
    of last_day: stock_symbol, day (datetime64[D]), close_price (float, adjusted), close_exact (Decimal, adjusted
    and rounded half-even to 4 decimals, a price) and close_as_traded (Decimal, as in market_prices), sorted by
    symbol and day."""
    last_day = last_day or date.today()
    packed = dialects.packs_rows(connection.dialect.name)
    columns = PACKED_CLOSE_SQL if packed else "stock_symbol, price_date, close_price"
    statement = text(CLOSES_SQL.format(columns=columns)).bindparams(
        bindparam("first_day", type_=Date), bindparam("last_day", type_=Date))
    rows = connection.execute(statement, {"first_day": first_day or EARLIEST_DAY, "last_day": last_day}).all()
    if packed:
        rows = [_unpack_close(row[0]) for row in rows]
    symbols, days, prices = (list(column) for column in zip(*rows)) if rows else ([], [], [])
    days = [str(day)[:10] for day in days]
    traded = [to_decimal(price) for price in prices]
    factors = close_split_factors(symbols, days, read_splits(connection, last_day), last_day)
    return pd.DataFrame({"stock_symbol": pd.Series(symbols, dtype=object),
                         "day": np.array(days, dtype="datetime64[D]"),
                         "close_price": np.array([float(price if factor == NO_SPLIT else Fraction(price) / factor)
                                                  for price, factor in zip(traded, factors)], dtype=float),
                         "close_exact": pd.Series([adjusted_price(price, factor)
                                                   for price, factor in zip(traded, factors)], dtype=object),
                         "close_as_traded": pd.Series(traded, dtype=object)})


def close_split_factors(symbols, days, splits, last_day):
    """Per close (parallel lists of symbols and days), split_factor from its day to last_day."""
    return [split_factor(splits, symbol, day, last_day) if symbol in splits else NO_SPLIT
            for symbol, day in zip(symbols, days)]


def _unpack_close(packed):
    day, price, symbol = packed.split(",", 2)
    return symbol, day, Decimal(price)


LATEST_CLOSES_SQL = """
WITH latest_days AS (
    SELECT stock_symbol, MAX(price_date) AS price_date
    FROM market_prices
    GROUP BY stock_symbol
)
SELECT mp.stock_symbol, mp.price_date, mp.close_price
FROM market_prices mp
JOIN latest_days d ON d.stock_symbol = mp.stock_symbol AND d.price_date = mp.price_date
"""


def latest_closes(connection, last_day=None):
    """{stock_symbol: its latest close (Decimal)}, whatever its date, split-adjusted to the terms of last_day
    (default: today)."""
    last_day = last_day or date.today()
    splits = read_splits(connection, last_day)
    return {symbol: adjusted_price(price, split_factor(splits, symbol, day, last_day))
            for symbol, day, price in connection.execute(text(LATEST_CLOSES_SQL))}


def read_splits(connection, last_day=None):
    """{stock_symbol: [(ex_date, value), ...]} of the SPLITs with ex_date up to last_day (default: today), by
    ex_date; value (Decimal) is new shares per old share."""
    splits = {}
    for action in corporate_actions.read_actions(connection, _as_day(last_day or date.today()), action="SPLIT"):
        splits.setdefault(action.stock_symbol, []).append((action.ex_date, action.value))
    return splits


def split_factor(splits, symbol, from_day, to_day):
    """The product (Decimal) of the values of the symbol's splits (read_splits) with from_day < ex_date <= to_day:
    a price of from_day divided by it is in the terms of to_day; 1 without such a split. The days may be dates,
    datetimes or 'YYYY-MM-DD...' text."""
    from_day, to_day = _as_day(from_day), _as_day(to_day)
    factor = NO_SPLIT
    for ex_date, value in splits.get(symbol, ()):
        if from_day < ex_date <= to_day:
            factor *= Fraction(value)
    return factor


def adjusted_price(price, factor):
    """A price (Decimal, or a float as a driver returns it) divided by a split factor, rounded half-even to 4
    decimals; the price itself (as Decimal) when the factor is 1."""
    price = to_decimal(price)
    if factor == NO_SPLIT:
        return price
    exact = Fraction(price) / Fraction(factor)
    return (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(PRICE_STEP, ROUND_HALF_EVEN)


def _as_day(value):
    if isinstance(value, datetime):  # pandas' Timestamp too
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def read_fingerprints(connection, last_day=None):
    """{stock_symbol: text that changes whenever any of its closes up to last_day (default: today) does, or a
    split of it with ex_date up to last_day is added, removed or changed}. Two queries: the closes' sums, the
    splits."""
    last_day = last_day or date.today()
    statement = text(FINGERPRINT_SQL).bindparams(bindparam("last_day", type_=Date))
    splits = read_splits(connection, last_day)
    return {row[0]: ",".join(map(str, row[1:])) + _splits_text(splits.get(row[0]))
            for row in connection.execute(statement, {"last_day": last_day})}


def _splits_text(symbol_splits):
    """A symbol's splits as fingerprint text; nothing without any (the fingerprints of earlier versions)."""
    if not symbol_splits:
        return ""
    return ";splits:" + ",".join(f"{ex_date}x{value}" for ex_date, value in symbol_splits)


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


def mark_digests(fingerprints, trade_prices, parameters=""):
    """{stock_symbol: digest} of every symbol with a close or a trade, from read_fingerprints and {symbol: its
    latest trade's price} (the last price of a symbol without closes). parameters: text of anything else the
    valuation depends on (the scoring parameters), folded in so that changing it revalues every holder."""
    digests = {symbol: _digest(parameters, f"closes:{fingerprint}") for symbol, fingerprint in fingerprints.items()}
    for symbol, price in trade_prices.items():
        digests.setdefault(symbol, _digest(parameters, f"trade:{price}"))
    return digests


def symbol_marks(closes, trade_prices, digests):
    """{stock_symbol: Mark} for every symbol in digests (mark_digests), from its closes, else its latest
    trade's price in trade_prices."""
    marks = {}
    symbols = closes["stock_symbol"].tolist()  # sorted, then by day
    starts = [index for index in range(len(symbols)) if index == 0 or symbols[index] != symbols[index - 1]]
    for first, end in zip(starts, starts[1:] + [len(symbols)]):
        symbol = symbols[first]
        marks[symbol] = Mark(symbol, closes["close_exact"].iat[end - 1],
                             annual_volatility(closes["close_price"].to_numpy()[first:end]), digests[symbol])
    for symbol, price in trade_prices.items():
        if symbol not in marks:
            marks[symbol] = Mark(symbol, price, None, digests[symbol])
    return marks


def _digest(parameters, fingerprint):
    return hashlib.sha256(f"{parameters}\n{fingerprint}".encode()).hexdigest()
