"""Performance history: each investor's value day by day (investor_daily) and its time- and money-weighted returns
over 1M, 3M, YTD, 1Y and all (investor_returns), as docs/performance.md defines them.

A step of the update stage: update_portfolio.py calls update_performance after it applied and valued the positions,
in the same transaction, with the same corporate actions and cost method. For every weekday from an investor's first
trade through the update's day, its positions are replayed by the ledger (ledger.Position, from the last weekly
checkpoint before the days rebuilt) and valued at that day's closes (closes.read_closes; a symbol without a close yet
at its last trade's price). An update rebuilds an investor's days only from the earliest day that changed since the
last build, which three tables of schema.py record:
- investor_daily_builds: per investor, its trades covered (their count, the highest txn_id) and its first and last
  day: a new or late trade, whether an update or a live consumer applied it, shows in portfolios.trade_count;
- performance_closes: the closes the days were valued with; the earliest one added, changed or removed since is
  where the holders of its symbol are rebuilt from;
- performance_actions: the corporate actions the days applied; the earliest ex_date added or changed since.
New weekdays are appended. `update_portfolio.py --full` rebuilds every day; it and the first update replay the days
as the apply's ledger walks each position (ReplayWithApply), rather than read and replay the trades twice. Returns
are recomputed for the investors whose days changed, which is everyone when the update's day moves on.
"""
import bisect
import calendar
import functools
import logging
import math
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from itertools import groupby
from operator import attrgetter, itemgetter
from typing import NamedTuple

import numpy as np
from sqlalchemy import Date, bindparam, delete, func, select, text

import bulk_insert
import closes
import dialects
import ledger
from ledger import MONEY_STEP, ZERO, stream_trades, to_decimal
from schema import (RETURN_PERIODS, investor_daily, investor_daily_builds, investor_returns, market_prices,
                    performance_actions, performance_closes, portfolios, transactions)

logger = logging.getLogger(__name__)

DECIMAL_DIGITS = 40  # as update_portfolio: a market value of 10**22 rounds to 6 places
ONE_DAY = timedelta(days=1)
WHOLE = date.min  # a rebuild from the investor's first trade: all its days
ID_SLICE = 500  # values per IN (...) list
INSERT_ROWS = 5_000
PERIOD_MONTHS = {"1M": 1, "3M": 3, "1Y": 12}
DAYS_PER_YEAR = 365  # IRR: actual/365
RETURN_STEP = Decimal("0.0000000001")  # investor_returns keeps 10 decimals
RETURN_LIMIT = 1e19  # a Return column (DECIMAL(30, 10)) holds less than 10**20
# IRR: the log growth of the period, h = ln(1 + the period's rate), is searched for a sign change of the net present
# value on a grid from 0 outwards to +-30 (the period's value divided or multiplied by e**30), densest near 0, in
# chunks: the first chunk with a root holds the root nearest 0.
IRR_GRID = 0.01 * np.sinh(np.linspace(0, math.asinh(3000), 301))
IRR_CHUNK = 50
REFINE_STEPS = 200


# ---------------------------------------------------------------------------------------------- calendar

def weekday_on_or_after(day):
    """The day itself on a weekday, else the Monday after."""
    return day + timedelta(days=7 - day.weekday()) if day.weekday() >= 5 else day


def weekday_on_or_before(day):
    """The day itself on a weekday, else the Friday before."""
    return day - timedelta(days=day.weekday() - 4) if day.weekday() >= 5 else day


def weekdays(first, last):
    """The weekdays from first to last, both included."""
    count = (last - first).days + 1
    return [day for day in (first + timedelta(days=offset) for offset in range(max(count, 0))) if day.weekday() < 5]


def first_counted_day(day):
    """The earliest calendar day whose events count on this weekday: the Saturday before a Monday, else itself."""
    return weekday_on_or_before(day - ONE_DAY) + ONE_DAY


@functools.lru_cache(maxsize=8192)
def _value_day(day_text):
    return weekday_on_or_after(date.fromisoformat(day_text))


def value_day(event):
    """The weekday whose row an event (ledger.Trade, Split or Dividend) counts in: its day, a weekend's on Monday."""
    return _value_day(event.txn_time[:10] if type(event) is ledger.Trade else event.ex_date.isoformat())


def months_before(day, months):
    """The same date `months` calendar months earlier (the month's last day when it is shorter: Mar 31 -> Feb 28)."""
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def period_start(period, end, first_day):
    """The day whose value starts a period ending on `end`: its return counts the days after it."""
    if period == "ALL":
        return weekday_on_or_before(first_day - ONE_DAY)
    if period == "YTD":
        return weekday_on_or_before(date(end.year - 1, 12, 31))
    return weekday_on_or_before(months_before(end, PERIOD_MONTHS[period]))


# ---------------------------------------------------------------------------------------------- replay

class DayState(NamedTuple):
    """A position at the end of a day, as investor_daily sums it (money in currency units)."""
    quantity: int = 0
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    dividend_income: Decimal = ZERO
    fees_paid: Decimal = ZERO


class PositionDay(NamedTuple):
    """A day with events of one position: its state at the end of the day and the money they moved in and out."""
    value_date: date
    state: DayState
    inflow: Decimal
    outflow: Decimal


class PositionHistory(NamedTuple):
    """One position over the days rebuilt: its state at the start of the first, then each day with an event."""
    stock_symbol: str
    opening: DayState
    days: list  # of PositionDay, by day


def state_of(position):
    """The DayState of a ledger.Position now."""
    return DayState(position.quantity, position.cost_basis, position.realized_pnl, position.dividend_income,
                    position.fees_paid)


def lieu_cash(position, split, held):
    """The cash in lieu a split just paid the position that held `held` shares: the fraction of a new share left
    over at the price the ledger paid it (the split's lieu price, else the position's last trade price)."""
    fraction = held * Fraction(split.value) - position.quantity
    if not fraction:
        return ZERO
    exact = fraction * Fraction(split.lieu_price if split.lieu_price is not None else position.last_trade_price)
    return (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(MONEY_STEP, ROUND_HALF_EVEN)


def position_events(position, trades, rules):
    """The position's trades merged with its symbol's corporate actions after its last event, in ledger order."""
    actions = rules.actions_between(position.stock_symbol, (position.last_txn_time, position.last_txn_id))
    return _merged(trades, actions) if actions else trades


def _merged(trades, actions):
    keys, index = [ledger.event_key(action) for action in actions], 0
    for trade in trades:
        key = (trade.txn_time, trade.txn_id)
        while index < len(actions) and keys[index] < key:
            yield actions[index]
            index += 1
        yield trade
    yield from actions[index:]


class DayRecorder:
    """A position's PositionHistory from first_day to last_day, recorded as its events are applied: before(event)
    and after(event, applied) around each one (walk_position's loop, or the ledger's own walk in an update that
    replays once). A corporate action is told only when it applies (the ledger skips it on a position without
    shares, which changes nothing on any day)."""

    def __init__(self, position, first_day, last_day):
        self.position, self.first_day, self.last_day = position, first_day, last_day
        self.opening, self.closing, self.days, self.day, self.day_text = None, None, [], None, None
        self.inflow, self.outflow, self.shown, self.trades = ZERO, ZERO, False, 0
        self.held, self.dividends = 0, ZERO  # before the action being applied

    def before(self, event):
        """Count the event on its day; False (and nothing recorded from then on) once it is after last_day."""
        is_trade = type(event) is ledger.Trade
        self.trades += is_trade
        if self.closing is not None:
            return False
        if not is_trade or event.txn_time[:10] != self.day_text:  # most trades share the calendar day of the last
            event_day, self.day_text = value_day(event), event.txn_time[:10] if is_trade else None
            if event_day != self.day:
                if event_day > self.last_day:
                    self._close()
                    return False
                self._end_day()
                if self.opening is None and event_day >= self.first_day:
                    self.opening = state_of(self.position)
                self.day, self.inflow, self.outflow, self.shown = event_day, ZERO, ZERO, False
        if not is_trade:
            self.held, self.dividends = self.position.quantity, self.position.dividend_income
        return True

    def after(self, event, applied):
        """Add the money the event moved in or out; any trade shows, an oversold SELL included (it moves none)."""
        if self.closing is not None:
            return
        if type(event) is ledger.Trade:
            self.shown = True
            if applied:
                if event.txn_type == "BUY":
                    self.inflow += event.quantity * event.price + event.fee
                else:
                    self.outflow += event.quantity * event.price - event.fee
        elif applied:
            self.shown = True
            self.outflow += (self.position.dividend_income - self.dividends if isinstance(event, ledger.Dividend)
                             else lieu_cash(self.position, event, self.held))

    def history(self):
        """The PositionHistory recorded (the position's state now is its closing state if nothing passed last_day)."""
        if self.closing is None:
            self._close()
        return PositionHistory(self.position.stock_symbol, self.opening or self.closing, self.days)

    def _end_day(self):
        if self.shown and self.day >= self.first_day:
            self.days.append(PositionDay(self.day, state_of(self.position), self.inflow, self.outflow))

    def _close(self):
        self._end_day()
        self.closing = state_of(self.position)


def walk_position(position, trades, rules, first_day, last_day):
    """Replay a position's trades (after its state) and actions up to last_day; return its PositionHistory from
    first_day (WHOLE: from its first event)."""
    recorder = DayRecorder(position, first_day, last_day)
    for event in position_events(position, trades, rules):
        if not recorder.before(event):
            break
        recorder.after(event, position.apply(event))
    return recorder.history()


def investor_histories(trades, positions, rules, starts, last_day):
    """Yield (investor_id, [PositionHistory]) for the investors of `positions` ({investor_id: {key: Position}}):
    `trades` (in replay order) are the trades after each position's state; starts: {investor_id: first day}."""
    pending = dict(positions)
    for investor_id, investor_trades in groupby(trades, key=attrgetter("investor_id")):
        own = dict(pending.pop(investor_id, {}))
        histories = []
        for symbol, position_trades in groupby(investor_trades, key=attrgetter("stock_symbol")):
            position = own.pop((investor_id, symbol), None) or rules.new_position((investor_id, symbol))
            histories.append(walk_position(position, position_trades, rules, starts[investor_id], last_day))
        histories += [walk_position(position, (), rules, starts[investor_id], last_day) for position in own.values()]
        yield investor_id, histories
    for investor_id, own in pending.items():  # nothing traded after their checkpoints
        yield investor_id, [walk_position(position, (), rules, starts[investor_id], last_day)
                            for position in own.values()]


# ---------------------------------------------------------------------------------------------- prices

class Marks(NamedTuple):
    """A symbol's prices as recorded (closes, or trades), by day: parallel lists."""
    days: list
    prices: list


class PriceBook:
    """Each symbol's price on the weekdays from first_day to last_day: its last close on or before the day, else the
    price of its last trade (of any investor) up to the day, divided by the values of its splits after that close or
    trade, up to the day."""

    def __init__(self, close_marks, trade_marks, splits, first_day, last_day):
        self.close_marks, self.trade_marks, self.splits = close_marks, trade_marks, splits
        self.days = weekdays(first_day, last_day)
        self.index = {day: number for number, day in enumerate(self.days)}
        self.by_symbol = {}

    def prices(self, symbol):
        """The symbol's price (Decimal, 4 decimals, None before its first close or trade) on each of self.days."""
        if symbol not in self.by_symbol:
            self.by_symbol[symbol] = [self._price(symbol, day) for day in self.days]
        return self.by_symbol[symbol]

    def _price(self, symbol, day):
        for marks in (self.close_marks.get(symbol), self.trade_marks.get(symbol)):
            index = bisect.bisect_right(marks.days, day) - 1 if marks else -1
            if index >= 0:
                factor = closes.split_factor(self.splits, symbol, marks.days[index], day)
                return closes.adjusted_price(marks.prices[index], factor)
        return None


def close_marks(frame):
    """{stock_symbol: Marks} of closes.read_closes' frame, as traded."""
    marks = {}
    for symbol, day, price in zip(frame["stock_symbol"], frame["day"], frame["close_as_traded"]):
        entry = marks.setdefault(symbol, Marks([], []))
        entry.days.append(day.date())
        entry.prices.append(price)
    return marks


def rule_splits(rules):
    """{stock_symbol: [(ex_date, value), ...]} of the SPLITs in ledger.Rules (closes.split_factor's form)."""
    return {symbol: [(event.ex_date, event.value) for _, event in events if isinstance(event, ledger.Split)]
            for symbol, events in rules.actions.items()}


# The last close before the first day rebuilt values the days up to the next close: read from the earliest of them.
CLOSES_FROM_SQL = text("""
WITH last_before AS (
    SELECT stock_symbol, MAX(price_date) AS price_date
    FROM market_prices
    WHERE price_date < :first_day
    GROUP BY stock_symbol
)
SELECT MIN(price_date) FROM last_before
""").bindparams(bindparam("first_day", type_=Date))
FIRST_CLOSES_SQL = text("""
SELECT stock_symbol, MIN(price_date)
FROM market_prices
WHERE price_date <= :last_day
GROUP BY stock_symbol
""").bindparams(bindparam("last_day", type_=Date))
SYMBOL_TRADES_SQL = text("""
SELECT t.txn_time, t.price
FROM transactions t
WHERE t.stock_symbol = :symbol AND t.txn_time < :before
ORDER BY t.txn_time, t.txn_id
""").bindparams(bindparam("before", type_=transactions.c.txn_time.type))


def first_closes(connection, last_day):
    """{stock_symbol: the day of its first close} over the closes up to last_day."""
    return {symbol: _day(day) for symbol, day in connection.execute(FIRST_CLOSES_SQL, {"last_day": last_day})}


def price_book(connection, first_days, end, rules):
    """The PriceBook of a rebuild whose positions need prices from first_days ({key: day}) through end."""
    first_day = min(first_days.values())
    closes_from = connection.execute(CLOSES_FROM_SQL, {"first_day": first_day}).scalar()
    frame = closes.read_closes(connection, last_day=end, first_day=_day(closes_from) if closes_from else first_day)
    started = first_closes(connection, end)
    lacking = {symbol: started.get(symbol) for (_, symbol), day in first_days.items()
               if started.get(symbol) is None or started[symbol] > day}  # days before the symbol's first close
    return PriceBook(close_marks(frame), {symbol: trade_marks(connection, symbol, until or end + ONE_DAY)
                                          for symbol, until in lacking.items()}, rule_splits(rules),
                     weekday_on_or_after(first_day), end)


def trade_marks(connection, symbol, until):
    """Marks of a symbol's trades (any investor's) before the day `until`, in (txn_time, txn_id) order."""
    before = datetime.combine(until, datetime.min.time())
    marks = Marks([], [])
    for txn_time, price in connection.execute(SYMBOL_TRADES_SQL, {"symbol": symbol, "before": before}):
        marks.days.append(_day(ledger.normalize_time(txn_time)))
        marks.prices.append(to_decimal(price))
    return marks


def _day(value):
    return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(
        str(value)[:10])


# ---------------------------------------------------------------------------------------------- daily rows

@dataclass
class Totals:
    """An investor's sums over its positions (money in currency units)."""
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    dividend_income: Decimal = ZERO
    fees_paid: Decimal = ZERO

    def move(self, old, new):
        """A position's state went from old to new (DayState)."""
        self.cost_basis += new.cost_basis - old.cost_basis
        self.realized_pnl += new.realized_pnl - old.realized_pnl
        self.dividend_income += new.dividend_income - old.dividend_income
        self.fees_paid += new.fees_paid - old.fees_paid


def changes_by_day(histories):
    """{value_date: [(stock_symbol, PositionDay), ...]} of the positions' histories."""
    changes = {}
    for history in histories:
        for change in history.days:
            changes.setdefault(change.value_date, []).append((history.stock_symbol, change))
    return changes


def investor_rows(investor_id, histories, book, first_day):
    """investor_daily rows of one investor for the weekdays from first_day (WHOLE: its first event's) to the book's
    last day."""
    changes = changes_by_day(histories)
    first_day = min(changes, default=None) if first_day == WHOLE else first_day
    if first_day is None:
        return []
    states, totals, rows = {history.stock_symbol: history.opening for history in histories}, Totals(), []
    for state in states.values():
        totals.move(DayState(), state)
    held = {symbol: state.quantity for symbol, state in states.items() if state.quantity}
    prices = {symbol: book.prices(symbol) for symbol in states}
    for number in range(book.index[first_day], len(book.days)):
        day, inflow, outflow = book.days[number], ZERO, ZERO
        for symbol, change in changes.get(day, ()):
            totals.move(states[symbol], change.state)
            states[symbol] = change.state
            if change.state.quantity:
                held[symbol] = change.state.quantity
            else:
                held.pop(symbol, None)
            inflow, outflow = inflow + change.inflow, outflow + change.outflow
        value = sum((quantity * prices[symbol][number] for symbol, quantity in held.items()), ZERO)
        rows.append({"investor_id": investor_id, "value_date": day, "market_value": value.quantize(MONEY_STEP),
                     "cost_basis": totals.cost_basis, "realized_pnl": totals.realized_pnl,
                     "dividend_income": totals.dividend_income, "fees_paid": totals.fees_paid, "inflow": inflow,
                     "outflow": outflow, "net_flow": inflow - outflow})
    return rows


# ---------------------------------------------------------------------------------------------- what changed

class Build(NamedTuple):
    """What an investor's rows of investor_daily cover (investor_daily_builds)."""
    first_day: date
    built_through: date
    trade_count: int
    txn_id_through: int


class Plan(NamedTuple):
    """What an update rebuilds and recomputes."""
    end: date  # the last day: the last weekday on or before the update's day
    starts: dict  # investor_id: the first weekday rebuilt (WHOLE: every day, from its first trade)
    returns_for: set  # investor ids whose returns are recomputed
    counts: dict  # investor_id: its trades (the sum of its portfolios.trade_count)
    builds: dict  # investor_id: Build, as stored before this update
    full: bool  # rebuild everything
    closes_changed: dict  # stock_symbol: the first day of a close added, changed or removed
    actions_changed: set  # symbols whose corporate actions changed


TRADE_COUNTS_SQL = text("SELECT investor_id, SUM(trade_count) FROM portfolios GROUP BY investor_id")
# By the primary key alone: what it reads is what is new (with the investors too, MySQL scans their whole index).
NEW_TRADES_SQL = text("""
SELECT t.investor_id, t.stock_symbol, t.txn_id, t.txn_time
FROM transactions t
WHERE t.txn_id > :after_id
""")
FIRST_TRADES_SQL = text("""
SELECT t.investor_id, t.stock_symbol, MIN(t.txn_time)
FROM transactions t
WHERE t.investor_id IN :investor_ids
GROUP BY t.investor_id, t.stock_symbol
""").bindparams(bindparam("investor_ids", expanding=True))
# A close counts up to the last day; one the days were valued with that differs now, or is new or gone, is a change.
CHANGED_CLOSES_SQL = text("""
WITH current_closes AS (
    SELECT stock_symbol, price_date, close_price
    FROM market_prices
    WHERE price_date <= :last_day
),
new_or_changed AS (
    SELECT c.stock_symbol, c.price_date
    FROM current_closes c
    LEFT JOIN performance_closes p ON p.stock_symbol = c.stock_symbol AND p.price_date = c.price_date
    WHERE p.close_price IS NULL OR p.close_price <> c.close_price
),
removed AS (
    SELECT p.stock_symbol, p.price_date
    FROM performance_closes p
    LEFT JOIN current_closes c ON c.stock_symbol = p.stock_symbol AND c.price_date = p.price_date
    WHERE c.close_price IS NULL
),
changed AS (
    SELECT stock_symbol, price_date FROM new_or_changed
    UNION ALL
    SELECT stock_symbol, price_date FROM removed
)
SELECT stock_symbol, MIN(price_date)
FROM changed
GROUP BY stock_symbol
""").bindparams(bindparam("last_day", type_=Date))
HOLDERS_SQL = text("""
SELECT investor_id, stock_symbol, quantity, last_txn_time
FROM portfolios
WHERE stock_symbol IN :symbols
""").bindparams(bindparam("symbols", expanding=True))


def plan_update(connection, end, rules, full):
    """The Plan of this update: from which day each investor's days are rebuilt, and whose returns change."""
    counts = {investor_id: int(count) for investor_id, count in connection.execute(TRADE_COUNTS_SQL)}
    builds = {} if full else read_builds(connection)
    if full or (counts and not builds):
        return Plan(end, dict.fromkeys(counts, WHOLE), set(counts), counts, builds, True, {}, set())
    starts, traded = trade_changes(connection, builds, counts)
    closes_changed = changed_closes(connection, end)
    actions_changed = changed_actions(connection, rules)
    symbol_days = _earliest_by_key(closes_changed, actions_changed, fallback_changes(connection, traded, end))
    for investor_id, day in holders_since(connection, symbol_days).items():
        starts[investor_id] = min(day, starts.get(investor_id, day))
    for investor_id, build in builds.items():
        if build.built_through < end and investor_id in counts:  # new weekdays
            day = weekday_on_or_after(build.built_through + ONE_DAY)
            starts[investor_id] = min(day, starts.get(investor_id, day))
    starts = {investor_id: day if investor_id in builds and day > builds[investor_id].first_day else WHOLE
              for investor_id, day in starts.items() if day <= end}
    moved = {investor_id for investor_id, build in builds.items()
             if build.built_through != end and investor_id in counts}
    return Plan(end, starts, set(starts) | moved, counts, builds, False, closes_changed, set(actions_changed))


def read_builds(connection):
    """{investor_id: Build} of investor_daily_builds."""
    table = investor_daily_builds
    return {row.investor_id: Build(_day(row.first_day), _day(row.built_through), row.trade_count, row.txn_id_through)
            for row in connection.execute(select(table))}


def trade_changes(connection, builds, counts):
    """({investor_id: the weekday of its earliest trade not covered yet, WHOLE for a new investor and one whose
    count does not add up}, {(investor_id, stock_symbol): the day of its earliest such trade})."""
    changed = sorted(investor_id for investor_id, count in counts.items()
                     if investor_id in builds and builds[investor_id].trade_count != count)
    found, earliest = {}, {}
    after_id = min((builds[investor_id].txn_id_through for investor_id in changed), default=0)
    rows = connection.execute(NEW_TRADES_SQL, {"after_id": after_id}) if changed else ()
    for investor_id, symbol, txn_id, txn_time in rows:
        if investor_id in builds and investor_id in counts and txn_id > builds[investor_id].txn_id_through:
            found[investor_id] = found.get(investor_id, 0) + 1
            day = _day(ledger.normalize_time(txn_time))
            earliest[(investor_id, symbol)] = min(day, earliest.get((investor_id, symbol), day))
    whole = [investor_id for investor_id in counts if investor_id not in builds] + [
        investor_id for investor_id in changed  # some trade below its txn_id_through was committed after its build
        if builds[investor_id].trade_count + found.get(investor_id, 0) != counts[investor_id]]
    starts = {investor_id: weekday_on_or_after(day) for investor_id, day in _earliest_by_key(
        (investor_id, day) for (investor_id, _), day in earliest.items()).items()}
    starts.update(dict.fromkeys(whole, WHOLE))
    if whole:
        logger.debug("%d investors rebuilt from their first trade (new, or a trade committed out of order)", len(whole))
    earliest.update(first_trades(connection, whole))
    return starts, earliest


def first_trades(connection, investor_ids):
    """{(investor_id, stock_symbol): the day of the position's first trade} of these investors."""
    found = {}
    for ids in _slices(sorted(investor_ids)):
        for investor_id, symbol, first in connection.execute(FIRST_TRADES_SQL, {"investor_ids": ids}):
            found[(investor_id, symbol)] = _day(ledger.normalize_time(first))
    return found


def changed_closes(connection, end):
    """{stock_symbol: the day of its earliest close up to end added, changed or removed since the last build}."""
    return {symbol: _day(day) for symbol, day in connection.execute(CHANGED_CLOSES_SQL, {"last_day": end})}


def current_actions(rules):
    """{(stock_symbol, ex_date, action): (value as an exact fraction's text, lieu_price)} of ledger.Rules."""
    return {(symbol, event.ex_date, ledger.action_kind(event)): (
        str(Fraction(event.value)), getattr(event, "lieu_price", None))
        for symbol, events in rules.actions.items() for _, event in events}


def changed_actions(connection, rules):
    """{stock_symbol: the earliest ex_date of an action added, changed or removed since the last build}."""
    table = performance_actions
    stored = {(symbol, _day(ex_date), action): (value, to_decimal(lieu)) for symbol, ex_date, action, value, lieu in
              connection.execute(select(table.c.stock_symbol, table.c.ex_date, table.c.action, table.c.value,
                                        table.c.lieu_price))}
    current = current_actions(rules)
    differing = {key for key in set(stored) | set(current) if stored.get(key) != current.get(key)}
    return _earliest_by_key((symbol, ex_date) for symbol, ex_date, _ in differing)


def fallback_changes(connection, traded, end):
    """{stock_symbol: the earliest day of a new trade in it on a day before its first close}: its price on the days
    after is the last trade's, so every holder's value may change."""
    if not traded:
        return {}
    started = first_closes(connection, end)
    return _earliest_by_key((symbol, day) for (_, symbol), day in traded.items()
                            if started.get(symbol) is None or started[symbol] > day)


def holders_since(connection, symbol_days):
    """{investor_id: the first weekday to rebuild} for the investors that held a symbol of symbol_days ({symbol:
    day}) on or after its day: an open position, or one whose last event falls on or after that day."""
    found, symbols = {}, sorted(symbol_days)
    for first in range(0, len(symbols), ID_SLICE):
        for investor_id, symbol, quantity, last_time in connection.execute(
                HOLDERS_SQL, {"symbols": symbols[first:first + ID_SLICE]}):
            day = symbol_days[symbol]
            if quantity > 0 or ledger.normalize_time(last_time) >= day.isoformat():
                start = weekday_on_or_after(day)
                found[investor_id] = min(start, found.get(investor_id, start))
    return found


def _earliest_by_key(*sources):
    """{key: its earliest day} over (key, day) pairs: dicts or iterables of pairs."""
    merged = {}
    for source in sources:
        for key, day in (source.items() if isinstance(source, dict) else source):
            merged[key] = min(day, merged.get(key, day))
    return merged


def _slices(values):
    return [values[first:first + ID_SLICE] for first in range(0, len(values), ID_SLICE)]


# ---------------------------------------------------------------------------------------------- rebuilding days

def rebuild_days(connection, plan, rules, replayed=None):
    """(investor_daily rows of plan.starts' investors from their first day rebuilt, {investor_id: its first day}
    for those rebuilt whole): reads checkpoints, closes and trades, replays and values; or takes them from
    `replayed` (a ReplayWithApply) when it replayed every position the plan rebuilds."""
    keys = position_keys(connection, sorted(plan.starts))
    if replayed is not None and replayed.covers(connection, plan, keys):
        return replayed.rows, replayed.first_rows
    whole = [investor_id for investor_id, day in plan.starts.items() if day == WHOLE]
    first_days = {key: plan.starts[key[0]] for key in keys if plan.starts[key[0]] != WHOLE}
    first_days.update(first_trades(connection, whole))
    if not first_days:
        return [], {}
    starts = replay_starts(connection, plan, keys)
    positions = starting_positions(starts, rules)
    book = price_book(connection, first_days, plan.end, rules)
    trades = stream_trades(connection, bulk=True) if plan.full else replay_trades(connection, starts)
    rows, first_rows = [], {}
    for investor_id, histories in investor_histories(trades, positions, rules, plan.starts, plan.end):
        rebuilt = investor_rows(investor_id, histories, book, plan.starts[investor_id])
        if rebuilt:
            first_rows[investor_id] = rebuilt[0]["value_date"]
        rows += rebuilt
    return rows, first_rows


class ReplayWithApply:
    """The days of every investor rebuilt whole, recorded as the apply's ledger walks each position (its watcher):
    an update whose rebuild starts from every position's first trade reads and replays the trades once."""

    def __init__(self, connection, end, rules):
        self.end, self.first_rows, self.trades, self.recorded = end, {}, 0, set()
        self._rows, self.investor_id, self.recorders = [], None, []
        investor_ids = connection.execute(select(transactions.c.investor_id).distinct()).scalars().all()
        self.first_days = first_trades(connection, investor_ids)
        self.book = price_book(connection, self.first_days, end, rules) if self.first_days else None

    def watch(self, position):
        """The DayRecorder of a position the ledger starts to walk (in replay order: an investor's walks are done
        when the next investor's first starts)."""
        if position.investor_id != self.investor_id:
            self._finish_investor()
            self.investor_id = position.investor_id
        self.recorded.add((position.investor_id, position.stock_symbol))
        recorder = DayRecorder(position, WHOLE, self.end)
        self.recorders.append(recorder)
        return recorder

    @property
    def rows(self):
        """investor_daily rows of every investor recorded (once the apply is done)."""
        self._finish_investor()
        return self._rows

    def _finish_investor(self):
        if not self.recorders:
            return
        histories = [recorder.history() for recorder in self.recorders]
        self.trades += sum(recorder.trades for recorder in self.recorders)
        rebuilt = investor_rows(self.investor_id, histories, self.book, WHOLE)
        if rebuilt:
            self.first_rows[self.investor_id] = rebuilt[0]["value_date"]
        self._rows += rebuilt
        self.recorders = []

    def covers(self, connection, plan, keys):
        """Did the apply walk what this plan rebuilds: every trade, and every position from its first one?"""
        self._finish_investor()
        return plan.full and set(keys) == set(self.first_days) == self.recorded and self.trades == connection.execute(
            select(func.count()).select_from(transactions)).scalar()


def replay_with_apply(connection, today, rules, full):
    """A ReplayWithApply when this update's rebuild will replay every trade from its position's start, as its
    apply does (a full update, or the first one: no positions nor days built yet); else None."""
    if not full and any(connection.execute(select(table.c.investor_id).limit(1)).first() is not None
                        for table in (portfolios, investor_daily_builds)):
        return None
    return ReplayWithApply(connection, weekday_on_or_before(today), rules)


def position_keys(connection, investor_ids):
    """The (investor_id, stock_symbol) of these investors' positions."""
    keys = []
    for ids in _slices(investor_ids):
        keys += connection.execute(select(portfolios.c.investor_id, portfolios.c.stock_symbol).where(
            portfolios.c.investor_id.in_(ids))).all()
    return [tuple(key) for key in keys]


def replay_starts(connection, plan, keys):
    """{key: the Checkpoint its replay starts from, None from its first trade}: the position's last checkpoint of a
    week before the first event counted on its investor's first day rebuilt (a Monday's count from the Saturday
    before); where the database may have rounded it (ledger.mark_rounded's rule), the last one kept exactly. None
    for an investor rebuilt whole."""
    weeks = {investor_id: ledger.week_start(first_counted_day(day).isoformat())
             for investor_id, day in plan.starts.items() if day != WHOLE}
    found = ledger.checkpoints_before(connection, sorted(weeks), weeks) if weeks else {}
    if ledger.rounds_decimals(connection):
        rounded = {key: weeks[key[0]] for key, checkpoint in found.items()
                   if not ledger.Position.from_checkpoint(checkpoint).fits_a_float()}
        exact = ledger.last_checkpoints_before(connection, rounded) if rounded else {}
        found.update({key: exact.get(key) for key in rounded})
    return {key: found.get(key) for key in keys}


def starting_positions(starts, rules):
    """{investor_id: {key: ledger.Position}} at the checkpoints of starts (nothing held without one)."""
    positions = {}
    for key, checkpoint in starts.items():
        positions.setdefault(key[0], {})[key] = (ledger.Position.from_checkpoint(checkpoint) if checkpoint
                                                 else rules.new_position(key))
    return positions


def replay_trades(connection, starts):
    """The trades of each position after its checkpoint in starts, in replay order, every investor's in one
    statement. As ledger.trades_after, but each position's condition is a plain range from its checkpoint's time
    (the trades of that second up to the checkpoint are dropped here): with the exclusion in SQL, MariaDB reads
    some statements of 200 positions by a full scan."""
    by_investor = {}
    for key in sorted(starts):
        by_investor.setdefault(key[0], []).append(key)
    batch, last = [], max(by_investor, default=None)
    for investor_id in sorted(by_investor):
        batch += by_investor[investor_id]
        if len(batch) >= ledger.REPLAY_SLICE or investor_id == last:
            for trade in stream_trades(connection, *_position_ranges(batch, starts)):
                checkpoint = starts[(trade.investor_id, trade.stock_symbol)]
                if checkpoint is None or (trade.txn_time, trade.txn_id) > (checkpoint.last_txn_time,
                                                                           checkpoint.last_txn_id):
                    yield trade
            batch = []


def _position_ranges(keys, starts):
    """(WHERE over transactions t, its parameters) selecting each position's trades from its checkpoint's time."""
    conditions, params = [], {}
    for number, key in enumerate(keys):
        params.update({f"investor_{number}": key[0], f"symbol_{number}": key[1]})
        condition = f"t.investor_id = :investor_{number} AND t.stock_symbol = :symbol_{number}"
        if starts[key] is not None:
            params[f"from_{number}"] = datetime.fromisoformat(starts[key].last_txn_time)
            condition += f" AND t.txn_time >= :from_{number}"
        conditions.append(f"({condition})")
    return "WHERE " + " OR ".join(conditions), params


# ---------------------------------------------------------------------------------------------- writing

def write_days(connection, plan, rows):
    """Replace the rebuilt days of investor_daily by rows, and drop days after the last one."""
    if plan.full:
        connection.execute(delete(investor_daily))
    else:
        by_start = {}
        for investor_id, day in plan.starts.items():
            by_start.setdefault(day, []).append(investor_id)
        for day, investor_ids in sorted(by_start.items()):
            for ids in _slices(sorted(investor_ids)):
                condition = investor_daily.c.investor_id.in_(ids)
                connection.execute(delete(investor_daily).where(
                    condition if day == WHOLE else condition & (investor_daily.c.value_date >= day)))
    if any(build.built_through > plan.end for build in plan.builds.values()):  # an update of an earlier day
        connection.execute(delete(investor_daily).where(investor_daily.c.value_date > plan.end))
    if rows and bulk_insert.loaded_by_file(connection, "investor_daily", DAY_COLUMNS, map(day_line, rows),
                                           "REPLACE"):  # a rebuilt day is the truth (LOCAL would ignore it)
        return
    for first in range(0, len(rows), INSERT_ROWS):
        connection.execute(investor_daily.insert(), rows[first:first + INSERT_ROWS])


DAY_COLUMNS = tuple(investor_daily.c.keys())  # investor_id, value_date, then amounts (investor_rows' keys)


def day_line(row):
    """An investor_daily row (investor_rows) as a LOAD DATA line of DAY_COLUMNS."""
    return "\t".join([str(row["investor_id"]), str(row["value_date"]),
                       *(bulk_insert.decimal_field(row[column]) for column in DAY_COLUMNS[2:])]) + "\n"


def write_builds(connection, plan, first_rows, now):
    """Record what the days of the investors rebuilt or moved to the new last day now cover."""
    if plan.full:
        connection.execute(delete(investor_daily_builds))
    if not plan.returns_for:
        return
    txn_id_through = connection.execute(select(func.max(transactions.c.txn_id))).scalar() or 0
    rows = []
    for investor_id in sorted(plan.returns_for):
        rebuilt_whole = plan.starts.get(investor_id) == WHOLE
        first_day = first_rows.get(investor_id) if rebuilt_whole else plan.builds[investor_id].first_day
        if first_day is not None:
            rows.append({"investor_id": investor_id, "first_day": first_day, "built_through": plan.end,
                         "trade_count": plan.counts[investor_id], "txn_id_through": txn_id_through,
                         "updated_at": now})
    if rows:
        connection.execute(dialects.upsert(connection, investor_daily_builds, [
            "first_day", "built_through", "trade_count", "txn_id_through", "updated_at"]), rows)


CLOSE_COLUMNS = ("stock_symbol", "price_date", "close_price")


def sync_closes(connection, plan):
    """Make performance_closes the closes up to the last day again, where they changed (all with plan.full)."""
    table, source = performance_closes, select(*(market_prices.c[column] for column in CLOSE_COLUMNS)).where(
        market_prices.c.price_date <= plan.end)
    if plan.full:
        connection.execute(delete(table))
        connection.execute(table.insert().from_select(CLOSE_COLUMNS, source))
    by_day = {}
    for symbol, day in plan.closes_changed.items():
        by_day.setdefault(day, []).append(symbol)
    for day, symbols in sorted(by_day.items()):
        for chunk in _slices(sorted(symbols)):
            connection.execute(delete(table).where(table.c.stock_symbol.in_(chunk), table.c.price_date >= day))
            connection.execute(table.insert().from_select(CLOSE_COLUMNS, source.where(
                market_prices.c.stock_symbol.in_(chunk), market_prices.c.price_date >= day)))


def sync_actions(connection, plan, rules):
    """Make performance_actions the corporate actions of `rules` again, for the symbols whose actions changed."""
    table = performance_actions
    if plan.full:
        connection.execute(delete(table))
    elif plan.actions_changed:
        connection.execute(delete(table).where(table.c.stock_symbol.in_(sorted(plan.actions_changed))))
    rows = [{"stock_symbol": symbol, "ex_date": ex_date, "action": action, "value": value, "lieu_price": lieu}
            for (symbol, ex_date, action), (value, lieu) in sorted(current_actions(rules).items())
            if plan.full or symbol in plan.actions_changed]
    if rows:
        connection.execute(table.insert(), rows)


# ---------------------------------------------------------------------------------------------- returns

class DailySeries(NamedTuple):
    """An investor's days, in order: dates and market values as stored, and numpy arrays of floats for returns."""
    dates: list
    market_values: list  # Decimal
    value: np.ndarray
    inflow: np.ndarray
    outflow: np.ndarray
    net_flow: np.ndarray


class PeriodReturn(NamedTuple):
    """One period's returns (None where the period has no value)."""
    period: str
    start_date: date
    start_value: Decimal
    twr: float
    irr: float


SERIES_SQL = """
SELECT {columns}
FROM investor_daily
WHERE investor_id IN :investor_ids
ORDER BY investor_id, value_date
"""
SERIES_COLUMNS = "investor_id, value_date, market_value, inflow, outflow, net_flow"


def read_series(connection, investor_ids):
    """{investor_id: DailySeries} of these investors' rows of investor_daily (on MySQL and PostgreSQL each row read
    as one text column, as ledger.stream_trades reads trades: the driver's per-field work dominates)."""
    packed = dialects.packs_rows(connection.dialect.name)
    statement = text(SERIES_SQL.format(columns=f"CONCAT_WS(',', {SERIES_COLUMNS})" if packed else SERIES_COLUMNS)
                     ).bindparams(bindparam("investor_ids", expanding=True))
    found = {}
    for ids in _slices(sorted(investor_ids)):
        rows = connection.execute(statement, {"investor_ids": ids}).all()
        rows = [_unpack_day(row[0]) for row in rows] if packed else rows
        for investor_id, own in groupby(rows, key=itemgetter(0)):
            days, values, inflows, outflows, flows = zip(*(row[1:] for row in own))
            found[investor_id] = DailySeries([_day(day) for day in days], [_amount(value) for value in values],
                                             *(np.array(column, dtype=float) for column in (
                                                 values, inflows, outflows, flows)))
    return found


def _unpack_day(packed):
    investor_id, *values = packed.split(",")
    return int(investor_id), *values


def _amount(value):
    """An amount read as text (packed), Decimal or float (SQLite) as Decimal."""
    return Decimal(value) if isinstance(value, str) else to_decimal(value)


def period_return(series, period):
    """The returns of one period ending on the series' last day."""
    first_day, end = series.dates[0], series.dates[-1]
    start = period_start(period, end, first_day)
    if start < first_day and period != "ALL":  # the investor is younger than the period
        return PeriodReturn(period, start, None, None, None)
    after = bisect.bisect_right(series.dates, start)  # the index of the first day after the start
    start_value = series.market_values[after - 1] if after else ZERO
    return PeriodReturn(period, start, start_value, time_weighted(series, after),
                        money_weighted(series, after, start, float(start_value)))


def time_weighted(series, after):
    """The product of (1 + r_d) - 1 over the days from index `after` on, r_d = (V_d + outflow_d) / (V_d-1 +
    inflow_d) - 1; a day with V_d-1 + inflow_d = 0 adds nothing; None when no day had money invested."""
    previous = np.concatenate(([0.0], series.value[:-1]))[after:]
    base = previous + series.inflow[after:]
    invested = base > 0
    if not invested.any():
        return None
    return float(np.prod((series.value[after:][invested] + series.outflow[after:][invested]) / base[invested])) - 1


def money_weighted(series, after, start, start_value):
    """The IRR of the period from `start` to the last day: the rate (actual/365) that discounts its net flows and
    end value to its start value; the period's own rate up to 365 days, annualized beyond; None without a root."""
    span = (series.dates[-1] - start).days
    times = np.array([(day - start).days for day in series.dates[after:]], dtype=float) / span
    flows = series.net_flow[after:]
    moving = flows != 0
    growth = solve_log_growth(start_value, times[moving], flows[moving], float(series.value[-1]))
    if growth is None:
        return None
    return math.expm1(growth if span <= DAYS_PER_YEAR else growth * DAYS_PER_YEAR / span)


def solve_log_growth(start_value, times, flows, end_value):
    """h = ln(1 + the period's rate) solving -start_value - sum(flow * e^(-h * t)) + end_value * e^(-h) = 0 (t: a
    flow's time as a share of the period): the root nearest 0 among the sign changes on IRR_GRID and -IRR_GRID, to
    float precision; None when there is none (no money, or no sign change)."""
    scale = max(abs(start_value), abs(end_value), float(np.abs(flows).max(initial=0.0)))
    if scale == 0:
        return None

    def present_value(growth):
        growth = np.atleast_1d(growth)
        return (-start_value - np.exp(-np.outer(growth, times)) @ flows + end_value * np.exp(-growth)) / scale

    for first in range(0, len(IRR_GRID) - 1, IRR_CHUNK):
        points = IRR_GRID[first:first + IRR_CHUNK + 1]
        roots = [root for side in (points, -points) for root in _roots(present_value, side)]
        if roots:
            return min(roots, key=abs)
    return None


def _roots(function, points):
    """The roots of function at or between consecutive points (one per sign change)."""
    values = function(points)
    signs = np.sign(values)
    roots = list(points[signs == 0])
    for index in np.flatnonzero(signs[:-1] * signs[1:] < 0):
        roots.append(_refine(function, points[index], values[index], points[index + 1], values[index + 1]))
    return roots


def _refine(function, low, f_low, high, f_high):
    """The root between low and high (f_low and f_high of opposite signs) by regula falsi with the Illinois rule: the
    bracket always holds it, and it converges superlinearly."""
    for _ in range(REFINE_STEPS):
        middle = high - f_high * (high - low) / (f_high - f_low)
        f_middle = function(middle)[0]
        if f_middle == 0 or middle in (low, high) or abs(high - low) <= 1e-15 * max(1.0, abs(middle)):
            return middle
        if (f_middle < 0) == (f_high < 0):
            f_low /= 2  # the end kept twice: halve its weight, or it would be kept forever
        else:
            low, f_low = high, f_high
        high, f_high = middle, f_middle
    return high


def storable(value):
    """A return as investor_returns keeps it (10 decimals); None for none, or one too large for the column."""
    if value is None or not math.isfinite(value) or abs(value) >= RETURN_LIMIT:
        return None
    return Decimal(repr(value)).quantize(RETURN_STEP, ROUND_HALF_EVEN)


def return_rows(investor_id, series, now):
    """investor_returns rows of one investor, one per period."""
    rows = []
    for result in (period_return(series, period) for period in RETURN_PERIODS):
        rows.append({"investor_id": investor_id, "period": result.period, "start_date": result.start_date,
                     "end_date": series.dates[-1], "start_value": result.start_value,
                     "end_value": series.market_values[-1], "twr": storable(result.twr),
                     "irr": storable(result.irr), "updated_at": now})
    return rows


def write_returns(connection, plan, now):
    """Recompute investor_returns of plan.returns_for (all with plan.full); return how many investors."""
    if plan.full:
        connection.execute(delete(investor_returns))
    series = read_series(connection, plan.returns_for)
    if not plan.full:
        for ids in _slices(sorted(plan.returns_for)):
            connection.execute(delete(investor_returns).where(investor_returns.c.investor_id.in_(ids)))
    rows = [row for investor_id, days in sorted(series.items()) for row in return_rows(investor_id, days, now)]
    for first in range(0, len(rows), INSERT_ROWS):
        connection.execute(investor_returns.insert(), rows[first:first + INSERT_ROWS])
    return len(series)


# ---------------------------------------------------------------------------------------------- the step

@dataclass
class PerformanceSummary:
    """What one update of the performance history did."""
    full: bool = False
    investors_rebuilt: int = 0
    days_written: int = 0
    investors_with_returns: int = 0
    seconds: float = 0.0

    def line(self):
        mode = "full" if self.full else "incremental"
        return (f"performance history ({mode}): {self.days_written:,} days of {self.investors_rebuilt:,} investors "
                f"valued, returns of {self.investors_with_returns:,} investors ({self.seconds:.2f} s)")


def update_performance(connection, today, now, rules, full=False, replayed=None):
    """Bring investor_daily and investor_returns up to date on `today` with the positions as the update left them
    (rules: its ledger.Rules, the corporate actions and cost method); full=True rebuilds every day; replayed: the
    update's ReplayWithApply, if any. Returns a PerformanceSummary."""
    started = time.perf_counter()
    with localcontext(prec=DECIMAL_DIGITS):
        plan = plan_update(connection, weekday_on_or_before(today), rules, full)
        rows, first_rows = rebuild_days(connection, plan, rules, replayed) if plan.starts else ([], {})
        write_days(connection, plan, rows)
        write_builds(connection, plan, first_rows, now)
        sync_closes(connection, plan)
        sync_actions(connection, plan, rules)
        returned = write_returns(connection, plan, now) if plan.returns_for or plan.full else 0
    summary = PerformanceSummary(plan.full, len(plan.starts), len(rows), returned, time.perf_counter() - started)
    if plan.starts or returned:
        logger.info(summary.line())
    return summary
