"""Corporate actions (splits and cash dividends): the one reader of the corporate_actions table.

See docs/corporate-actions.md.
"""
from datetime import date

from sqlalchemy import select

from ledger import CorporateAction, to_decimal
from schema import corporate_actions


def read_actions(connection, last_day=None, action=None):
    """The stored corporate actions with ex_date up to last_day (default: all), of one kind when `action` is given,
    as CorporateAction records sorted by stock_symbol, ex_date and action."""
    table = corporate_actions
    query = select(table.c.stock_symbol, table.c.ex_date, table.c.action, table.c.value).order_by(
        table.c.stock_symbol, table.c.ex_date, table.c.action)
    if last_day is not None:
        query = query.where(table.c.ex_date <= last_day)
    if action is not None:
        query = query.where(table.c.action == action)
    return [CorporateAction(symbol, _as_date(ex_date), kind, to_decimal(value))
            for symbol, ex_date, kind, value in connection.execute(query)]


def _as_date(value):
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
