"""Corporate actions as the events the ledger applies (ledger.Split, ledger.Dividend): the stored actions with
ex_date up to a day, each split with the price a fraction of a new share is paid out at (cash in lieu,
docs/portfolio-math.md#corporate-actions), fixed in corporate_actions.lieu_price when first needed.
"""
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from sqlalchemy import and_, bindparam, select, text, update

import closes
import corporate_actions
import ledger
from cli import InputError
from ledger import PRICE_STEP, to_decimal
from schema import corporate_actions as corporate_actions_table
from schema import market_prices, transactions

LAST_CLOSE_BEFORE_SQL = text("""
SELECT price_date, close_price FROM market_prices
WHERE stock_symbol = :symbol AND price_date < :ex_date
ORDER BY price_date DESC LIMIT 1
""").bindparams(bindparam("ex_date", type_=market_prices.c.price_date.type))
LAST_TRADE_BEFORE_SQL = text("""
SELECT txn_time, price FROM transactions
WHERE stock_symbol = :symbol AND txn_time < :ex_date
ORDER BY txn_time DESC, txn_id DESC LIMIT 1
""").bindparams(bindparam("ex_date", type_=transactions.c.txn_time.type))


def read_rules(connection, horizon, method):
    """ledger.Rules: the corporate actions with ex_date up to horizon, and the cost method of new positions. A
    split's cash-in-lieu price is computed the first time it is needed and stored with the action, so that
    every later apply, replay and --full uses the same price."""
    actions = corporate_actions.read_actions(connection, last_day=horizon)
    splits = {}
    for action in actions:
        if action.action == "SPLIT":
            splits.setdefault(action.stock_symbol, []).append((action.ex_date, action.value))
    stored = stored_lieu_prices(connection, horizon)
    events = []
    for action in actions:
        if action.action == "DIVIDEND":
            events.append(ledger.Dividend(action.stock_symbol, action.ex_date, action.value))
            continue
        price = stored.get((action.stock_symbol, action.ex_date))
        if price is None:
            price = lieu_price(connection, action, splits)
            store_lieu_price(connection, action, price)
        events.append(ledger.Split(action.stock_symbol, action.ex_date, action.value, price))
    return ledger.rules_for(events, method)


def stored_lieu_prices(connection, horizon):
    """{(stock_symbol, ex_date): lieu_price} of the splits up to horizon whose price is fixed already."""
    table = corporate_actions_table
    rows = connection.execute(select(table.c.stock_symbol, table.c.ex_date, table.c.lieu_price).where(and_(
        table.c.action == "SPLIT", table.c.ex_date <= horizon, table.c.lieu_price.is_not(None))))
    return {(symbol, corporate_actions.as_date(ex_date)): to_decimal(price) for symbol, ex_date, price in rows}


def store_lieu_price(connection, split, price):
    """Fix a split's cash-in-lieu price (unless another process fixed it first); None stays unfixed."""
    if price is None:
        return
    table = corporate_actions_table
    connection.execute(update(table).where(and_(
        table.c.stock_symbol == split.stock_symbol, table.c.ex_date == split.ex_date, table.c.action == "SPLIT",
        table.c.lieu_price.is_(None))).values(lieu_price=price))


def split_events(splits):
    """ledger.Rules holding only these splits (closes.read_splits' form), without cash-in-lieu prices: for a
    replay that needs the quantities, not the money (surveillance)."""
    return ledger.rules_for([ledger.Split(symbol, ex_date, value)
                             for symbol, symbol_splits in splits.items() for ex_date, value in symbol_splits])


def lieu_price(connection, split, splits):
    """What a fraction of a new share is paid at: the last close before the ex_date (else the last trade price
    before it), in the terms of the day before (÷ the symbol's splits since), ÷ the split's value, rounded to a
    price; None when the symbol has neither. InputError (exit 2) for a price a price column cannot hold."""
    row = connection.execute(LAST_CLOSE_BEFORE_SQL, {"symbol": split.stock_symbol, "ex_date": split.ex_date}).first()
    if row is None:
        row = connection.execute(LAST_TRADE_BEFORE_SQL, {
            "symbol": split.stock_symbol, "ex_date": datetime.combine(split.ex_date, datetime.min.time())}).first()
    if row is None:
        return None
    day_before = split.ex_date - timedelta(days=1)
    price = closes.adjusted_price(row[1], closes.split_factor(splits, split.stock_symbol, row[0], day_before))
    exact = Fraction(to_decimal(price)) / Fraction(split.value)
    lieu = (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(PRICE_STEP, ROUND_HALF_EVEN)
    if lieu >= ledger.PRICE_LIMIT:
        raise InputError(
            f"SPLIT of {split.stock_symbol} on {split.ex_date} (value {ledger.ratio_text(Fraction(split.value))}) "
            f"would make its cash-in-lieu price {lieu:,.4f}, more than a price column holds "
            f"({ledger.PRICE_LIMIT:,.0f}): correct the action (docs/corporate-actions.md, Correcting an action)")
    return lieu
