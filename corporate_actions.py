"""Corporate actions (splits and cash dividends): loading a corporate actions file, and the one reader of the
corporate_actions table.

A corporate actions file (header stock_symbol,ex_date,action,value) is loaded by load_transactions.py, beside a
trade file or named on the command line, before the trades; update_portfolio.py applies the stored actions to
positions. See docs/corporate-actions.md.
"""
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import NamedTuple

from sqlalchemy import select

import batches
import cli
import db_config
import db_retry
import dialects
import validation
from ledger import CorporateAction, to_decimal
from schema import CORPORATE_ACTIONS, corporate_actions, stocks

logger = logging.getLogger(__name__)

LOGGED_REJECTS = 10  # rejects shown in the log per file; they are not stored anywhere
EARLIEST_EX_DATE = date(1900, 1, 1)  # as for trades: every database's DATE holds it
MIN_SPLIT, MAX_SPLIT = Decimal("0.000001"), Decimal(1_000_000)  # new shares per old share
PLAIN_VALUE = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]{0,6})?|\.[0-9]{1,6})")  # ASCII digits, at most 6 decimals
RATIO = re.compile(r"([0-9]{1,7}):([0-9]{1,7})")  # a SPLIT as 'new:old' shares, exact: 1:3 is a 1-for-3
VALUE_STEP = Decimal("0.000001")
PLAIN_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_SHOWN_CHARS = 100  # a value quoted in a reason is cut after this many characters


class OfferedAction(NamedTuple):
    """A valid action of a file and the line it is on."""
    line_number: int
    action: CorporateAction


@dataclass
class ActionsSummary:
    """What loading one corporate actions file did. rows_read counts each action once (a line repeating an
    earlier line's action and value is the same action), plus every rejected line: read = new + already + rejected."""
    source: str
    rows_new: int = 0
    rows_already: int = 0
    rejects: list = field(default_factory=list)  # (line_number, reason)

    @property
    def rows_read(self):
        return self.rows_new + self.rows_already + self.rows_rejected

    @property
    def rows_rejected(self):
        return len(self.rejects)

    @property
    def sample_rejects(self):
        return self.rejects[:LOGGED_REJECTS]

    def where_rejects_are(self):
        return (f"only the first {LOGGED_REJECTS} are shown (--verbose shows all): corporate actions are not a trade "
                "batch, their rejects are not stored")

    def line(self):
        return (f"{os.path.basename(self.source)}: {cli.counted(self.rows_read, 'action')} read, {self.rows_new} new, "
                f"{self.rows_already} already loaded, {self.rows_rejected} rejected")


# ------------------------------------------------------------------------------------------------ loading a file

def load_actions_file(engine, path, layout=None):
    """Store the new corporate actions of a file (stock_symbol,ex_date,action,value) in one transaction.

    A bad row is a reject, the rest load; a row already stored counts as already loaded. InputError, with nothing
    from the file stored, when a row gives another value for an action already stored (same symbol, ex_date and
    action).
    """
    import load_transactions  # it imports this module: read files through it only once both are loaded

    layout = layout or load_transactions.read_layout(path)
    if layout.kind != "actions":
        raise cli.InputError(f"{path}: header is not {','.join(validation.ACTION_COLUMNS)}")
    with engine.connect() as connection:
        symbols = set(connection.execute(select(stocks.c.stock_symbol)).scalars())
    summary = ActionsSummary(path)
    offered, summary.rejects = read_file_actions(load_transactions.iter_records(path, layout), layout, symbols)
    new = db_retry.with_retries(lambda: _store_in_transaction(engine, path, offered), f"{path}: corporate actions")
    summary.rows_new, summary.rows_already = len(new), len(offered) - len(new)
    log_due(path, new)
    return summary


def read_file_actions(records, layout, symbols):
    """(the valid actions of a file's records as OfferedAction, in file order, each once; the rejects as
    (line_number, reason), bad records and repeats of an action with another value)."""
    offered, rejects = {}, []
    for record in records:
        if record.fields is None and not record.problem:
            continue  # a blank line
        parsed = record.problem or parse_action(record.fields, layout, symbols)
        if isinstance(parsed, str):
            rejects.append((record.line_number, parsed))
            continue
        key = action_key(parsed)
        earlier = offered.get(key)
        if earlier is None:
            offered[key] = OfferedAction(record.line_number, parsed)
        elif earlier.action.value != parsed.value:
            rejects.append((record.line_number, f"value: {value_text(parsed.value)} for {describe(parsed)} "
                                                f"conflicts with line {earlier.line_number}, which gives "
                                                f"{value_text(earlier.action.value)}"))
        else:
            logger.debug("line %d repeats line %d (%s): counted once", record.line_number, earlier.line_number,
                         describe(parsed))
    return list(offered.values()), rejects


def parse_action(row, layout, symbols):
    """A CorporateAction from a row's fields, or the reason it is bad ('; ' between the problems of several
    fields)."""
    symbol, day, action, value = (row[i].strip(" \t") for i in layout.columns)
    ex_date, date_problem = _parse_ex_date(day)
    amount, value_problem = _parse_value(value, action.upper())
    problems = [
        f"stock_symbol: {_shown(symbol)} is not a known stock"
        if symbol.upper() not in symbols or not symbol.isascii() else None,
        date_problem,
        f"action: {_shown(action)} is not {' or '.join(CORPORATE_ACTIONS)}"
        if action.upper() not in CORPORATE_ACTIONS or not action.isascii() else None,
        value_problem,
    ]
    if any(problems):
        return "; ".join(problem for problem in problems if problem)
    return CorporateAction(symbol.upper(), ex_date, action.upper(), amount)


def _parse_ex_date(text):
    """(the date of an ex_date field, None), or (None, the reason it is bad)."""
    try:
        day = date.fromisoformat(text) if PLAIN_DATE.fullmatch(text) else None
    except ValueError:
        day = None
    if day is None:
        return None, f"ex_date: {_shown(text)} is not a real date YYYY-MM-DD"
    if day < EARLIEST_EX_DATE:
        return None, f"ex_date: {_shown(text)} is before {EARLIEST_EX_DATE.year}"
    return day, None


def _parse_value(text, action):
    """(the value, None), or (None, the reason it is bad for this action). A SPLIT's value is an exact Fraction
    (from a decimal or a 'new:old' ratio), a DIVIDEND's a Decimal."""
    ratio = RATIO.fullmatch(text) if action == "SPLIT" else None
    if ratio:
        new, old = (int(number) for number in ratio.groups())
        if not (0 < new <= MAX_SPLIT and 0 < old <= MAX_SPLIT):
            return None, f"value: {_shown(text)} is not a ratio new:old of whole numbers from 1 to {MAX_SPLIT:,}"
        return _split_value(text, Fraction(new, old))
    if not PLAIN_VALUE.fullmatch(text) or not Decimal(text) > 0:
        return None, f"value: {_shown(text)} is not a plain decimal > 0 with at most 6 decimals" + (
            " (or a ratio new:old such as 1:3)" if action == "SPLIT" else "")
    if action == "SPLIT":
        return _split_value(text, Fraction(Decimal(text)))
    amount = Decimal(text)
    if action == "DIVIDEND" and amount >= validation.MAX_PRICE:
        return None, f"value: {_shown(text)} is not below {validation.MAX_PRICE:,} (a dividend per share)"
    return amount, None


def _split_value(text, amount):
    """(a split's value as a Fraction, None), or (None, why it is out of range)."""
    if not MIN_SPLIT <= amount <= MAX_SPLIT:
        return None, (f"value: {_shown(text)} is not a split ratio between {MIN_SPLIT} and {MAX_SPLIT:,} "
                      "(new shares per old share)")
    if amount == 1:
        return None, f"value: {_shown(text)} is a split of 1 new share per old share, which changes nothing"
    return amount, None


def _shown(text):
    """A field as a reason quotes it: repr, cut after MAX_SHOWN_CHARS characters."""
    if len(text) <= MAX_SHOWN_CHARS:
        return repr(text)
    return f"{text[:MAX_SHOWN_CHARS]!r}… ({len(text):,} characters)"


def value_text(value):
    """A value as messages show it: plain decimal notation without trailing zeros (4.000000 -> 4), or a split
    ratio that no 6-decimal number is as new:old (1:3)."""
    if isinstance(value, Fraction):
        if value != Fraction(stored_value(value)):
            return f"{value.numerator}:{value.denominator}"
        value = stored_value(value)
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def stored_value(value):
    """What the value column keeps: the value rounded to 6 decimals (a split's exact ratio goes in ratio)."""
    if isinstance(value, Fraction):
        return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(VALUE_STEP, ROUND_HALF_EVEN)
    return value


def stored_ratio(value):
    """The ratio column of a value: 'new:old' for a split no 6-decimal number is, else None."""
    exact = isinstance(value, Fraction) and value != Fraction(stored_value(value))
    return f"{value.numerator}:{value.denominator}" if exact else None


def action_key(action):
    """What identifies a stored action (the table's primary key): (stock_symbol, ex_date, action)."""
    return action.stock_symbol, action.ex_date, action.action


def describe(action):
    """'AAPL 2025-06-02 SPLIT': the key of an action, as messages name it."""
    return f"{action.stock_symbol} {action.ex_date.isoformat()} {action.action}"


# ------------------------------------------------------------------------------------------------ storing

def _store_in_transaction(engine, path, offered):
    with db_config.write_transaction(engine) as connection:
        return store_actions(connection, path, offered)


def store_actions(connection, path, offered):
    """Insert the offered actions not stored yet (loaded_at now, applied_at NULL); return the new ones as
    CorporateAction records. InputError when one is stored with another value: raised inside the caller's
    transaction, so that nothing of the file is kept."""
    before = stored_values(connection)
    refuse_changes(path, offered, before)
    new = [item.action for item in offered if action_key(item.action) not in before]
    if new:
        loaded_at = batches.now()
        # Insert-if-absent in one atomic statement: where another loader stored the key meanwhile, the "update"
        # sets a key column to the value it already has, and the check below compares the values.
        connection.execute(dialects.upsert(connection, corporate_actions, ["action"]), [
            {**action._asdict(), "value": stored_value(action.value), "ratio": stored_ratio(action.value),
             "loaded_at": loaded_at, "applied_at": None} for action in new])
        refuse_changes(path, offered, stored_values(connection))
    return new


def stored_values(connection):
    """{(stock_symbol, ex_date, action): value} of every stored action."""
    return {action_key(action): action.value for action in read_actions(connection)}


def refuse_changes(path, offered, stored):
    """InputError naming the first offered action (in file order) stored with another value."""
    for line_number, action in offered:
        value = stored.get(action_key(action))
        if value is not None and value != action.value:
            raise cli.InputError(
                f"{path}: line {line_number}: {describe(action)} is stored with value {value_text(value)}, the file "
                f"gives {value_text(action.value)}; an action already stored cannot be changed because positions "
                "may have been built on it (nothing from this file was loaded)")


FAR_AHEAD_DAYS = 366  # an ex_date further ahead than this is most likely a typo (9999-12-31, 2062 for 2026)


def log_due(path, new):
    """Log how many new actions are due (ex_date on or before today), and warn of those far ahead."""
    if not new:
        return
    due = sum(action.ex_date <= date.today() for action in new)
    logger.info("%s: %d of %d new actions have an ex_date on or before today; the next update_portfolio.py applies "
                "them, replaying the positions that traded after them", path, due, len(new))
    far = sorted(action.ex_date for action in new if (action.ex_date - date.today()).days > FAR_AHEAD_DAYS)
    if far:
        logger.warning("%s: %d new actions have an ex_date more than a year ahead (the first %s): they wait until "
                       "that day; if a date is a typo, see docs/corporate-actions.md, Correcting an action", path,
                       len(far), far[0])


# ------------------------------------------------------------------------------------------------ reading

def read_actions(connection, last_day=None, action=None):
    """The stored corporate actions with ex_date up to last_day (default: all), of one kind when `action` is given,
    as CorporateAction records sorted by stock_symbol, ex_date and action."""
    table = corporate_actions
    query = select(table.c.stock_symbol, table.c.ex_date, table.c.action, table.c.value, table.c.ratio).order_by(
        table.c.stock_symbol, table.c.ex_date, table.c.action)
    if last_day is not None:
        query = query.where(table.c.ex_date <= last_day)
    if action is not None:
        query = query.where(table.c.action == action)
    return [CorporateAction(symbol, as_date(ex_date), kind, exact_value(kind, value, ratio))
            for symbol, ex_date, kind, value, ratio in connection.execute(query)]


def exact_value(action, value, ratio):
    """A stored action's value: a SPLIT's as an exact Fraction (its ratio when it has one), a DIVIDEND's as
    Decimal."""
    if action != "SPLIT":
        return to_decimal(value)
    if ratio:
        new, old = ratio.split(":")
        return Fraction(int(new), int(old))
    return Fraction(to_decimal(value))


def as_date(value):
    """A DATE or DATETIME column value as a date (SQLite gives text, the servers a date or a datetime)."""
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
