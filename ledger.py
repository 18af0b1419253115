"""The ledger: a position's events as typed records, the one `Position` that applies them
(docs/portfolio-math.md), and the checkpoints that let a late event be replayed from near where it belongs.

update_portfolio.py applies new trades with it, surveillance.py takes opening holdings from its checkpoints
and replays the trades it checks with it, and live mode applies each arriving trade with it. A position's events
are its trades (with their fees) and its symbol's corporate actions (Split, Dividend), applied in event_key
order: (txn_time, txn_id), an action at the start of its ex_date. A Position keeps weighted average cost, or
FIFO lots when it has a list of lots. Adding an event kind is one record class and one branch of
`Position.apply`; an event the position does not know is an error, never a SELL.

A checkpoint is a position's state at the end of a week (Monday to Sunday) in which an event changed it, kept in
`position_checkpoints`. A late trade is replayed from the last checkpoint of an earlier week, not from the
position's first trade; `update_portfolio.py --full` rebuilds them all. SQLite keeps DECIMAL columns as binary
floats, which hold 6 decimals only below 10**9: there a stored state beyond that is never gone on from (it may
have been rounded, and a full update would not round it), the position is replayed from its last checkpoint that
a float holds exactly (mark_rounded).
"""
import bisect
import functools
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import NamedTuple

from sqlalchemy import and_, bindparam, delete, func, or_, select, text, true

import bulk_insert
import dialects
from cli import InputError
from schema import position_checkpoints

ZERO = Decimal(0)
MONEY_STEP = Decimal("0.000001")  # state is kept at 6 decimals after every event, so incremental == full exactly
PRICE_STEP = Decimal("0.0001")
MAX_QUANTITY = 2**63 - 1  # portfolios.quantity is a BIGINT
PRICE_LIMIT = Decimal(10) ** 14  # a DECIMAL(18,4) price column holds less
LOT_STEP = Decimal("0.000000000001")  # a FIFO lot's quantity after a split, 12 decimals (position_lots.quantity)
FLOAT_EXACT_AMOUNT = 10**9  # a binary float (SQLite's DECIMAL) holds an amount's 6 decimals exactly below this ...
FLOAT_EXACT_PRICE = 10**11  # ... and a price's 4 decimals below this: 15 significant digits
AMOUNT_COLUMNS = ("cost_basis", "realized_pnl", "dividend_income", "fees_paid")
FETCH_ROWS = 50_000
ID_SLICE = 500  # values per IN (...) list


class UnknownEvent(ValueError):
    """An event the ledger cannot apply (an unknown record class or trade type)."""


class PositionLimit(InputError):
    """An event would give a position more shares than a BIGINT column holds (exit 2: the data needs fixing)."""


class Trade(NamedTuple):
    """A BUY or SELL of `quantity` shares at `price`, with its fee (currency units, 0 without one)."""
    txn_id: int
    txn_time: str  # 'YYYY-MM-DD HH:MM:SS'
    investor_id: int
    stock_symbol: str
    txn_type: str
    quantity: int
    price: Decimal
    fee: Decimal = ZERO


class CorporateAction(NamedTuple):
    """A SPLIT (value: new shares per old share) or a cash DIVIDEND (value: currency units per share) of a symbol,
    effective at the start of ex_date (docs/corporate-actions.md)."""
    stock_symbol: str
    ex_date: date
    action: str  # 'SPLIT' or 'DIVIDEND'
    value: object  # SPLIT: new shares per old share, an exact Fraction; DIVIDEND: Decimal per share


class Checkpoint(NamedTuple):
    """A position's state at the end of the week starting week_start (a Monday)."""
    investor_id: int
    stock_symbol: str
    week_start: date
    quantity: int
    cost_basis: Decimal
    realized_pnl: Decimal
    last_txn_time: str
    last_txn_id: int
    trade_count: int
    last_trade_price: Decimal  # the price of the last trade applied, an oversold SELL included (split-adjusted)
    dividend_income: Decimal = ZERO
    fees_paid: Decimal = ZERO
    lots: str = None  # FIFO: the open lots as pack_lots writes them; None under weighted average cost


class Oversell(NamedTuple):
    """A SELL that exceeded the holding and was not applied."""
    investor_id: int
    stock_symbol: str
    txn_id: int
    quantity: int
    held: int


class Split(NamedTuple):
    """A SPLIT as the ledger applies it: value new shares per old share at the start of ex_date; lieu_price is
    what a fraction of a new share is paid out at (the last close before ex_date ÷ value, else the last trade
    price before it ÷ value; None when the symbol had neither)."""
    stock_symbol: str
    ex_date: date
    value: Fraction  # exact (a Decimal is taken as its exact Fraction)
    lieu_price: Decimal = None


class Dividend(NamedTuple):
    """A cash DIVIDEND: value currency units per share held at the start of ex_date."""
    stock_symbol: str
    ex_date: date
    value: Decimal


ACTION_ORDER = {"DIVIDEND": -2, "SPLIT": -1}  # sort keys before every txn_id (>= 1): at the start of ex_date


def event_key(event):
    """Where an event sorts in its position's history: (time text, id); a corporate action sorts at midnight of
    its ex_date, before every trade of the day, a DIVIDEND before a SPLIT."""
    if isinstance(event, Trade):
        return event.txn_time, event.txn_id
    return f"{event.ex_date.isoformat()} 00:00:00", ACTION_ORDER[action_kind(event)]


def action_kind(event):
    """'SPLIT' or 'DIVIDEND': the corporate_actions.action of a Split or Dividend."""
    return "SPLIT" if isinstance(event, Split) else "DIVIDEND"


@dataclass
class Lot:
    """A FIFO lot: what is left of one BUY (quantity in today's terms, a split may leave a fraction)."""
    txn_id: int
    acquired_at: str  # the BUY's txn_time, 'YYYY-MM-DD HH:MM:SS'
    quantity: Decimal
    cost_basis: Decimal  # currency units, the BUY's fee share included


@functools.lru_cache(maxsize=4096)
def week_start(day_text):
    """The Monday of the week of 'YYYY-MM-DD'."""
    day = date.fromisoformat(day_text)
    return day - timedelta(days=day.weekday())


def _money(value):
    return value.quantize(MONEY_STEP, ROUND_HALF_EVEN)


def _decimal(fraction):
    """A Fraction as Decimal, to the context's precision (40 digits in an update)."""
    return Decimal(fraction.numerator) / Decimal(fraction.denominator)


def ratio_text(value):
    """A split value as text: 4, 0.1, or 1:3 when no short decimal is it."""
    as_decimal = _decimal(value)
    if Fraction(as_decimal) == value:
        return format(as_decimal.normalize(), "f")
    return f"{value.numerator}:{value.denominator}"


def _lot_quantity(value):
    return value.quantize(LOT_STEP, ROUND_HALF_EVEN)


@dataclass
class Position:
    """The state of one (investor, symbol), built by applying its events in order. lots is None under weighted
    average cost and the open lots, oldest first, under FIFO."""
    investor_id: int
    stock_symbol: str
    quantity: int = 0
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    last_txn_time: str = ""  # event_key of the last event applied: its time text ...
    last_txn_id: int = 0  # ... and its id (a corporate action's is negative, see ACTION_ORDER)
    trade_count: int = 0  # trades applied, oversold SELLs included
    last_trade_price: Decimal = None  # of the last trade applied, divided by the splits since (today's terms)
    dividend_income: Decimal = ZERO
    fees_paid: Decimal = ZERO
    lots: deque = None  # of Lot, oldest first
    rounded: bool = False  # read back from a database that may have rounded it (mark_rounded): replay, never go on

    @classmethod
    def empty(cls, key, method="wac"):
        """A position without history, kept by `method` ('wac' or 'fifo')."""
        return cls(*key, lots=deque() if method == "fifo" else None)

    @property
    def avg_cost(self):
        return (self.cost_basis / self.quantity).quantize(PRICE_STEP) if self.quantity else ZERO.quantize(PRICE_STEP)

    def apply(self, event):
        """Apply one event; return False when it could not change the position (an oversold SELL)."""
        if isinstance(event, Trade):  # a replay applies millions: no further call for a trade's bookkeeping
            if event.txn_type == "BUY":
                applied = self._buy(event)
            elif event.txn_type == "SELL":
                applied = self._sell(event)
            else:
                raise UnknownEvent(f"trade {event.txn_id}: txn_type {event.txn_type!r} is neither BUY nor SELL")
            self.last_txn_time, self.last_txn_id = event.txn_time, event.txn_id
            self.trade_count += 1
            self.last_trade_price = event.price
            return applied
        if isinstance(event, (Split, Dividend)):
            return self._apply_action(event)
        raise UnknownEvent(f"the ledger cannot apply a {type(event).__name__} to a position")

    def _buy(self, trade):
        cost = trade.quantity * trade.price
        if trade.fee:
            cost += trade.fee
            self.fees_paid += trade.fee
        self.quantity += trade.quantity
        self.cost_basis = (self.cost_basis + cost).quantize(MONEY_STEP, ROUND_HALF_EVEN)  # _money inline: per trade
        if self.lots is not None:
            self.lots.append(Lot(trade.txn_id, trade.txn_time, Decimal(trade.quantity), _money(cost)))
        return True

    def _sell(self, trade):
        if trade.quantity > self.quantity:
            return False
        if self.lots is None:
            avg_cost = self.cost_basis / self.quantity
            gain = trade.quantity * (trade.price - avg_cost)
            self.realized_pnl = (self.realized_pnl + (gain - trade.fee if trade.fee else gain)).quantize(
                MONEY_STEP, ROUND_HALF_EVEN)
            self.quantity -= trade.quantity
            self.cost_basis = ZERO if self.quantity == 0 else (self.cost_basis - trade.quantity * avg_cost).quantize(
                MONEY_STEP, ROUND_HALF_EVEN)
        else:
            cost = self._take_oldest_lots(Decimal(trade.quantity))
            self.realized_pnl = _money(self.realized_pnl + trade.quantity * trade.price - trade.fee - cost)
            self.quantity -= trade.quantity
        if trade.fee:
            self.fees_paid += trade.fee
        return True

    def _take_oldest_lots(self, quantity):
        """Take `quantity` shares off the lots, oldest first, each lot's cost pro rata; return the cost taken,
        which leaves cost_basis."""
        taken = ZERO
        while quantity > 0:
            lot = self.lots[0]
            share = min(quantity, lot.quantity)
            cost = lot.cost_basis if share == lot.quantity else _money(lot.cost_basis * share / lot.quantity)
            lot.quantity, lot.cost_basis = lot.quantity - share, lot.cost_basis - cost
            if lot.quantity == 0:
                self.lots.popleft()
            quantity, taken = quantity - share, taken + cost
        self.cost_basis = ZERO if not self.lots else self.cost_basis - taken
        return taken

    def _apply_action(self, action):
        """A corporate action changes only a position that holds shares at the start of its ex_date."""
        if self.quantity == 0:
            return False
        if isinstance(action, Split):
            self._split(action)
        else:
            self.dividend_income = _money(self.dividend_income + self.quantity * action.value)
        self.last_txn_time, self.last_txn_id = event_key(action)
        return True

    def _split(self, split):
        value = Fraction(split.value)
        scaled = self.quantity * value
        whole = int(scaled)  # floor: scaled > 0
        if whole > MAX_QUANTITY:
            raise PositionLimit(
                f"SPLIT of {split.stock_symbol} on {split.ex_date} (value {ratio_text(value)}) would make investor "
                f"{self.investor_id}'s position {whole:,} shares, more than a position can hold ({MAX_QUANTITY:,}): "
                "correct the action (docs/corporate-actions.md, Correcting an action)")
        fraction = scaled - whole
        if self.last_trade_price is not None:
            self.last_trade_price = _decimal(Fraction(self.last_trade_price) / value).quantize(
                PRICE_STEP, ROUND_HALF_EVEN)
        lieu_price = Fraction(split.lieu_price if split.lieu_price is not None else self.last_trade_price)
        if self.lots is None:
            if fraction:
                avg_cost = Fraction(self.cost_basis) / scaled
                self.realized_pnl = _money(_decimal(Fraction(self.realized_pnl) + fraction * (lieu_price - avg_cost)))
                self.cost_basis = ZERO if whole == 0 else _money(_decimal(Fraction(self.cost_basis)
                                                                          - fraction * avg_cost))
        else:
            cost = self._split_lots(value, fraction, whole)
            self.realized_pnl = _money(self.realized_pnl + _decimal(fraction * lieu_price) - cost)
        self.quantity = whole
        self._check_prices(split, value)

    def _check_prices(self, split, value):
        """A split that takes a price the position keeps beyond a price column is a data error (exit 2)."""
        prices = [self.last_trade_price or ZERO] + [lot.cost_basis / lot.quantity for lot in self.lots or ()]
        if max(prices) >= PRICE_LIMIT:
            raise PositionLimit(
                f"SPLIT of {split.stock_symbol} on {split.ex_date} (value {ratio_text(value)}) would make a price "
                f"of investor {self.investor_id}'s position {max(prices):,.4f}, more than a price column holds "
                f"({PRICE_LIMIT:,.0f}): correct the action (docs/corporate-actions.md, Correcting an action)")
    def _split_lots(self, value, fraction, whole):
        """Scale every lot by value, take the fraction of a share (exact) off the newest lots at their own cost,
        and round the lots' quantities to LOT_STEP, the newest taking the rounding so that they add up to whole;
        return the cost taken."""
        scaled = [Fraction(lot.quantity) * value for lot in self.lots]
        taken, remaining = ZERO, fraction
        for index in reversed(range(len(scaled))):
            if remaining == 0:
                break
            share, lot = min(remaining, scaled[index]), self.lots[index]
            cost = lot.cost_basis if share == scaled[index] else _money(
                _decimal(Fraction(lot.cost_basis) * share / scaled[index]))
            lot.cost_basis, scaled[index] = lot.cost_basis - cost, scaled[index] - share
            remaining, taken = remaining - share, taken + cost
        kept = [(lot, exact) for lot, exact in zip(self.lots, scaled) if exact > 0]
        for lot, exact in kept:
            lot.quantity = max(_lot_quantity(_decimal(exact)), LOT_STEP)
        self.lots = deque(lot for lot, _ in kept)
        if self.lots:
            self.lots[-1].quantity += whole - sum(lot.quantity for lot in self.lots)
        self.cost_basis = ZERO if not self.lots else self.cost_basis - taken
        return taken

    def follows(self, event):
        """Does this event sort after everything applied so far, so that it can simply be applied next? Never on a
        rounded state: going on from it would part from a full replay."""
        return not self.rounded and (self.last_txn_time, self.last_txn_id) < event_key(event)

    def fits_a_float(self):
        """Does a binary float hold this state exactly: every amount below 10**9 (6 decimals), the last trade's price
        below 10**11 (4 decimals)? FIFO lots are kept as text, exact anywhere."""
        amounts = (self.cost_basis, self.realized_pnl, self.dividend_income, self.fees_paid)
        return (max(map(abs, amounts)) < FLOAT_EXACT_AMOUNT
                and abs(self.last_trade_price or ZERO) < FLOAT_EXACT_PRICE)

    def checkpoint(self):
        """The state now, as the checkpoint of the week of the last event applied."""
        return Checkpoint(self.investor_id, self.stock_symbol, week_start(self.last_txn_time[:10]), self.quantity,
                          self.cost_basis, self.realized_pnl, self.last_txn_time, self.last_txn_id,
                          self.trade_count, self.last_trade_price, self.dividend_income, self.fees_paid,
                          pack_lots(self.lots))

    @classmethod
    def from_checkpoint(cls, checkpoint):
        """The position as it was at a checkpoint."""
        return cls(checkpoint.investor_id, checkpoint.stock_symbol, checkpoint.quantity, checkpoint.cost_basis,
                   checkpoint.realized_pnl, checkpoint.last_txn_time, checkpoint.last_txn_id,
                   checkpoint.trade_count, checkpoint.last_trade_price, checkpoint.dividend_income,
                   checkpoint.fees_paid, unpack_lots(checkpoint.lots))


def pack_lots(lots):
    """FIFO lots as the text a checkpoint keeps ('txn_id,acquired_at,quantity,cost_basis;...'), None for WAC."""
    if lots is None:
        return None
    return ";".join(f"{lot.txn_id},{lot.acquired_at},{_plain(lot.quantity)},{_plain(lot.cost_basis)}"
                    for lot in lots)


def _plain(value):
    """A Decimal as the shortest plain text of its value (29, not 29.000000000000): the same state, the same text."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def unpack_lots(text):
    """The lots of pack_lots' text (None: weighted average cost)."""
    if text is None:
        return None
    lots = deque()
    for packed in filter(None, text.split(";")):
        txn_id, acquired_at, quantity, cost_basis = packed.split(",")
        lots.append(Lot(int(txn_id), acquired_at, Decimal(quantity), Decimal(cost_basis)))
    return lots


# ---------------------------------------------------------------------------------------------- corporate actions

@dataclass
class Rules:
    """What a replay applies besides trades: the corporate actions in effect (ex_date up to the update's day),
    {stock_symbol: [(event_key, Split or Dividend), ...] in order}, and the cost method of new positions."""
    actions: dict = field(default_factory=dict)
    method: str = "wac"

    def new_position(self, key):
        return Position.empty(key, self.method)

    def actions_between(self, symbol, after, until=None):
        """The actions of a symbol that sort after the key `after` and, when given, not after `until`."""
        events = self.actions.get(symbol)
        if not events:
            return []
        first = bisect.bisect_right(events, after, key=lambda entry: entry[0])
        last = len(events) if until is None else bisect.bisect_right(events, until, key=lambda entry: entry[0])
        return [event for _, event in events[first:last]]

    def next_action_key(self, symbol, after):
        """The event_key of the symbol's first action that sorts after the key `after`, None when there is none."""
        events = self.actions.get(symbol, ())
        index = bisect.bisect_right(events, after, key=lambda entry: entry[0])
        return events[index][0] if index < len(events) else None


def rules_for(actions, method="wac"):
    """Rules from Split and Dividend events (any order)."""
    by_symbol = {}
    for event in sorted(actions, key=lambda event: (event.stock_symbol, event_key(event))):
        by_symbol.setdefault(event.stock_symbol, []).append((event_key(event), event))
    return Rules(by_symbol, method)


# ---------------------------------------------------------------------------------------------- applying a stream

@dataclass
class Applied:
    """What apply_trades did."""
    changed: set  # keys (investor_id, stock_symbol) of positions that applied trades or corporate actions
    late: dict  # key: the first new trade of a position it did not follow (the position needs a replay)
    oversells: list
    checkpoints: list  # the end-of-week states of the weeks in which events were applied
    latest: dict  # stock_symbol: its latest trade in the stream
    trades: int = 0


class _Walk:
    """One position's run of events in apply_trades: applies them and emits the state at the end of each week in
    which one changed the position."""

    def __init__(self, position, applied, rules, watch=None):
        self.position, self.applied, self.week, self.day_text = position, applied, None, None
        self.watch = watch  # before(event) and after(event, applied) around each event applied, or None
        self.has_actions = position.stock_symbol in rules.actions
        self.next_action = rules.next_action_key(position.stock_symbol, self._cursor()) if self.has_actions else None

    def apply(self, event):
        position = self.position
        if type(event) is Trade:
            if event.txn_time[:10] != self.day_text:  # most trades share the calendar day of the one before
                self._enter(week_start(event.txn_time[:10]), event.txn_time[:10])
        elif position.quantity == 0:
            return  # a corporate action changes nothing without shares
        else:
            self._enter(week_start(event.ex_date.isoformat()), None)
        held, watch = position.quantity, self.watch
        if watch is not None:
            watch.before(event)
        applied = position.apply(event)
        if not applied:
            self.applied.oversells.append(Oversell(event.investor_id, event.stock_symbol, event.txn_id,
                                                   event.quantity, held))
        if watch is not None:
            watch.after(event, applied)

    def _enter(self, event_week, day_text):
        """An event of a new day: emit the state at the end of the week before when the week changes."""
        if self.week is not None and event_week != self.week:
            self.applied.checkpoints.append(self.position.checkpoint())
        self.week, self.day_text = event_week, day_text

    def finish(self, rules):
        """Apply the corporate actions after the last event, then emit the last week's state."""
        if self.has_actions:
            for action in rules.actions_between(self.position.stock_symbol, self._cursor()):
                self.apply(action)
        if self.week is not None:  # an event changed the position
            self.applied.checkpoints.append(self.position.checkpoint())
            self.applied.changed.add((self.position.investor_id, self.position.stock_symbol))

    def catch_up(self, rules, event):
        """Apply the corporate actions after the last event up to this one; next_action becomes the key of the first
        action after it (None: no more)."""
        key = event_key(event)
        for action in rules.actions_between(self.position.stock_symbol, self._cursor(), key):
            self.apply(action)
        self.next_action = rules.next_action_key(self.position.stock_symbol, key)

    def _cursor(self):
        return self.position.last_txn_time, self.position.last_txn_id


def apply_trades(trades, positions, rules=None, others=(), watcher=None):
    """Apply trades, sorted by (investor_id, stock_symbol, txn_time, txn_id), and the corporate actions of
    `rules` before, between and after them, to `positions` in place. The positions keyed in `others` get the
    actions after their last event even without a trade. A position whose first new trade does not follow its
    state is left untouched and listed as late. watcher: an object whose watch(position), called as the walk of a
    position with trades starts, returns what is told before and after each of its events is applied (the
    performance history records its days so, from the one replay)."""
    rules = rules or Rules()
    applied = Applied(set(), {}, [], [], {})
    walk, key, visited = None, None, set()
    for trade in trades:
        applied.trades += 1
        latest = applied.latest.get(trade.stock_symbol)
        if latest is None or (latest.txn_time, latest.txn_id) < (trade.txn_time, trade.txn_id):
            applied.latest[trade.stock_symbol] = trade
        if key != (trade.investor_id, trade.stock_symbol):
            if walk is not None:
                walk.finish(rules)
            key = (trade.investor_id, trade.stock_symbol)
            visited.add(key)
            walk = _start(positions, key, trade, applied, rules, watcher)
        if walk is not None:
            if walk.next_action is not None and walk.next_action < (trade.txn_time, trade.txn_id):
                walk.catch_up(rules, trade)  # most trades have no action before them: no call
            walk.apply(trade)
    if walk is not None:
        walk.finish(rules)
    for key in sorted(set(others) - visited - set(applied.late)):
        _Walk(positions.setdefault(key, rules.new_position(key)), applied, rules).finish(rules)
    return applied


def _start(positions, key, trade, applied, rules, watcher=None):
    """The walk of the position a new run of trades continues, or None when it is late."""
    if key in applied.late:
        return None
    position = positions.get(key)
    if position is None:
        position = positions[key] = rules.new_position(key)
    elif not position.follows(trade):
        applied.late.setdefault(key, trade)
        return None
    return _Walk(position, applied, rules, watcher.watch(position) if watcher is not None else None)


# ---------------------------------------------------------------------------------------------- reading trades

TRADE_COLUMNS_SQL = "t.txn_id, t.txn_time, t.investor_id, t.stock_symbol, t.txn_type, t.quantity, t.price, t.fee"
# Over the network one text column per trade is read 3 times faster than seven typed ones (the driver's per-field
# work dominates the replay). The symbol goes last, so a comma in it cannot shift a field.
PACKED_TRADE_SQL = ("CONCAT_WS(',', t.txn_id, t.txn_time, t.investor_id, t.txn_type, t.quantity, t.price, "
                    "t.fee, t.stock_symbol)")
REPLAY_ORDER_SQL = "ORDER BY t.investor_id, t.stock_symbol, t.txn_time, t.txn_id"
# For statements with one condition per position: their text differs from call to call, and SQLAlchemy's cache of
# compiled statements kept every form (a long-running inbox watcher grew by 15 MB a file).
UNCACHED = {"compiled_cache": None}


def normalize_time(value):
    """A txn_time as 'YYYY-MM-DD HH:MM:SS' whatever the driver returned (text on SQLite, datetime elsewhere)."""
    return value if isinstance(value, str) else value.strftime("%Y-%m-%d %H:%M:%S")


def to_decimal(value):
    """A DECIMAL column as Decimal (SQLite and pandas give floats; their shortest repr is the stored decimal)."""
    return value if isinstance(value, Decimal) or value is None else Decimal(repr(float(value)))


def stream_trades(connection, where="", params=None, bulk=False):
    """Yield the trades matching `where` (SQL over alias t, starting WHERE) as Trade records in replay order,
    streamed from the server rather than read whole. A list parameter named ids expands into IN (...).
    bulk: `where` selects every trade or whole batches, not ranges of positions: where dialects.groups_trades, each
    position's trades are read as one text, from one pass of the table."""
    if bulk and dialects.groups_trades(connection.dialect.name):
        yield from _grouped_trades(connection, where, params or {})
        return
    packed = dialects.packs_rows(connection.dialect.name)
    columns = PACKED_TRADE_SQL if packed else TRADE_COLUMNS_SQL
    result = connection.execute(_statement(f"SELECT {columns} FROM transactions t {where} {REPLAY_ORDER_SQL}",
                                           params), params or {},
                                execution_options={"stream_results": True, **UNCACHED})
    while rows := result.fetchmany(FETCH_ROWS):
        yield from map(_unpack_trade if packed else _typed_trade, rows)


def _statement(sql, params):
    statement = text(sql)
    if params and isinstance(params.get("ids"), list):
        statement = statement.bindparams(bindparam("ids", expanding=True))
    return statement


# MySQL sends each row in a packet of its own, which PyMySQL reads in Python, and reading a table through the position
# index costs a primary-key lookup a trade: a position's trades go as one text (their packed texts in replay order),
# from one pass of the table (3.5 s instead of 6.4 s for 1,000,000 trades, Trade records made). The server cuts a
# text longer than group_concat_max_len: its length tells, and that position is read row by row (as one whose
# trades would not split into as many lines).
GROUPED_TRADES_SQL = f"""
SELECT t.investor_id, t.stock_symbol, COUNT(*) AS trade_count,
       COUNT(*) - 1 + SUM(CHAR_LENGTH({PACKED_TRADE_SQL})) AS text_length,
       GROUP_CONCAT({PACKED_TRADE_SQL} ORDER BY t.txn_time, t.txn_id SEPARATOR '\n') AS trades
FROM transactions t {{unindexed}}
{{where}}
GROUP BY t.investor_id, t.stock_symbol
ORDER BY t.investor_id, t.stock_symbol"""
AFTER_POSITION_SQL = ("(t.investor_id > :after_investor OR (t.investor_id = :after_investor "
                      "AND t.stock_symbol > :after_symbol))")
ONE_POSITION_SQL = "t.investor_id = :cut_investor AND t.stock_symbol = :cut_symbol"
GROUPS_FETCHED = 16  # positions per fetch: each text is up to group_concat_max_len
GROUP_TEXT_LIMIT_SQL = "SET SESSION group_concat_max_len = @@max_allowed_packet"  # the longest text a row can carry


def _grouped_trades(connection, where, params):
    """stream_trades, a position's trades read as one text (GROUPED_TRADES_SQL); a position whose text the server
    cut is read row by row, and the rest grouped again after it."""
    connection.exec_driver_sql(GROUP_TEXT_LIMIT_SQL)
    after = None
    while True:
        cut = yield from _position_texts(connection, where, params, after)
        if cut is None:
            return
        yield from stream_trades(connection, _and(where, ONE_POSITION_SQL),
                                 {**params, "cut_investor": cut[0], "cut_symbol": cut[1]})
        after = cut


def _position_texts(connection, where, params, after):
    """Yield the trades of the positions after `after` ((investor_id, stock_symbol); None: from the first) from
    their texts, up to the first text the server cut; return that position (None when no text was cut)."""
    if after is not None:
        where = _and(where, AFTER_POSITION_SQL)
        params = {**params, "after_investor": after[0], "after_symbol": after[1]}
    sql = GROUPED_TRADES_SQL.format(where=where, unindexed=dialects.unindexed_scan(connection))
    result = connection.execute(_statement(sql, params), params, execution_options={"stream_results": True, **UNCACHED})
    while rows := result.fetchmany(GROUPS_FETCHED):
        for investor_id, symbol, trade_count, text_length, trades in rows:
            lines = trades.split("\n") if trades is not None and len(trades) == text_length else ()
            if len(lines) != trade_count:
                result.close()
                return investor_id, symbol
            yield from (_unpack_trade((line,)) for line in lines)
    return None


def _and(where, condition):
    """A WHERE clause with one more condition."""
    return f"WHERE ({where.removeprefix('WHERE ')}) AND {condition}" if where else f"WHERE {condition}"


def _unpack_trade(row):
    """A Trade from PACKED_TRADE_SQL's text (the symbol last: a comma in it cannot shift a field)."""
    txn_id, txn_time, investor_id, txn_type, quantity, price, fee, symbol = row[0].split(",", 7)
    return Trade(int(txn_id), txn_time, int(investor_id), symbol, txn_type, int(quantity), Decimal(price),
                 _fee(fee))


def _typed_trade(row):
    txn_id, txn_time, investor_id, symbol, txn_type, quantity, price, fee = row
    return Trade(txn_id, normalize_time(txn_time), investor_id, symbol, txn_type, quantity, to_decimal(price),
                 _fee(fee))


@functools.lru_cache(maxsize=4096)
def _fee_of(text_value):
    value = Decimal(text_value)
    return ZERO if value == 0 else value


def _fee(value):
    """A stored fee as Decimal; zero is the one ZERO (most trades of a file without fees)."""
    if not value:
        return ZERO
    return _fee_of(value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value))


REPLAY_SLICE = 200  # positions per statement when replaying from checkpoints


# A trade of a batch loaded but not applied yet: update_portfolio applies the due corporate actions before the new
# trades, and a replay for an action must not meet a new trade before the new trades before it (a late BUY)
NOT_PENDING_SQL = (" AND (t.batch_id IS NULL OR t.batch_id NOT IN (SELECT b.batch_id FROM load_batches b "
                   "WHERE b.status = 'loaded' AND b.applied_at IS NULL))")


def trades_after(connection, starts, applied_only=False):
    """The trades of each position in starts ({key: Checkpoint, or None for all its trades}) after its
    checkpoint, in replay order; applied_only: only those of batches applied already (NOT_PENDING_SQL). The SQL
    selects from the checkpoint's second on, a plain index range per position (a condition on txn_id too makes
    MariaDB scan the table for a few hundred positions); the trades of that second up to the checkpoint's are
    dropped here."""
    keys = sorted(starts)
    for first in range(0, len(keys), REPLAY_SLICE):
        conditions, params = [], {}
        for number, key in enumerate(keys[first:first + REPLAY_SLICE]):
            conditions.append(_after_checkpoint_sql(number, starts[key]))
            params.update({f"investor_{number}": key[0], f"symbol_{number}": key[1]})
            if starts[key] is not None:
                params[f"time_{number}"] = datetime.fromisoformat(starts[key].last_txn_time)
        where = f"WHERE ({' OR '.join(conditions)})" + (NOT_PENDING_SQL if applied_only else "")
        for trade in stream_trades(connection, where, params):
            start = starts[(trade.investor_id, trade.stock_symbol)]
            if start is None or (start.last_txn_time, start.last_txn_id) < event_key(trade):
                yield trade


def _after_checkpoint_sql(number, checkpoint):
    position = f"t.investor_id = :investor_{number} AND t.stock_symbol = :symbol_{number}"
    if checkpoint is None:
        return f"({position})"
    return f"({position} AND t.txn_time >= :time_{number})"


# ---------------------------------------------------------------------------------------------- checkpoints

CHECKPOINT_COLUMNS = Checkpoint._fields
CHECKPOINT_ROWS = 5_000  # rows per upsert statement


def _checkpoint(row):
    values = dict(zip(CHECKPOINT_COLUMNS, row))
    values.update(week_start=_as_date(values["week_start"]), cost_basis=to_decimal(values["cost_basis"]),
                  realized_pnl=to_decimal(values["realized_pnl"]),
                  last_txn_time=normalize_time(values["last_txn_time"]),
                  last_trade_price=to_decimal(values["last_trade_price"]))
    return Checkpoint(**values)


def _as_date(value):
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def rounds_decimals(connection):
    """Does this database keep DECIMAL columns as binary floats, exact to 15 significant digits only (SQLite,
    docs/data-model.md#decimals-on-sqlite)?"""
    return connection.dialect.name == "sqlite"


def mark_rounded(connection, positions):
    """Mark the positions just read from this database whose state it may have rounded (rounds_decimals and not
    fits_a_float): an update replays them from a checkpoint kept exactly, as a full update would compute them."""
    if rounds_decimals(connection):
        for position in positions:
            position.rounded = not position.fits_a_float()


def _kept_exactly(connection, table):
    """The condition that a row of table holds the state the ledger wrote, not a float's rounding of it."""
    if not rounds_decimals(connection):
        return true()
    return and_(*(func.abs(table.c[column]) < FLOAT_EXACT_AMOUNT for column in AMOUNT_COLUMNS),
                table.c.last_trade_price < FLOAT_EXACT_PRICE)


def last_checkpoints_before(connection, weeks):
    """{key: the position's last checkpoint of a week before weeks[key] (a Monday)} for the keys that have one;
    where the database rounds decimals, the last one it kept exactly (a replay starts from it)."""
    keys, found, table = sorted(weeks), {}, position_checkpoints
    for first in range(0, len(keys), REPLAY_SLICE):
        found.update(latest_checkpoints(connection, and_(_kept_exactly(connection, table), or_(*(
            and_(table.c.investor_id == key[0], table.c.stock_symbol == key[1], table.c.week_start < weeks[key])
            for key in keys[first:first + REPLAY_SLICE])))))
    return found


def checkpoints_before(connection, investor_ids, week_by_investor):
    """{(investor_id, stock_symbol): Checkpoint}: each position's last checkpoint of a week before its investor's
    week in week_by_investor (a Monday), for these investors."""
    by_week, found, table = {}, {}, position_checkpoints
    for investor_id in investor_ids:
        by_week.setdefault(week_by_investor[investor_id], []).append(investor_id)
    for week, ids in sorted(by_week.items()):
        for start in range(0, len(ids), ID_SLICE):
            found.update(latest_checkpoints(connection, and_(
                table.c.investor_id.in_(ids[start:start + ID_SLICE]), table.c.week_start < week)))
    return found


def latest_checkpoints(connection, condition):
    """{key: Checkpoint}: per position, the latest of its checkpoints that meet `condition`."""
    table = position_checkpoints
    latest = select(table.c.investor_id, table.c.stock_symbol, func.max(table.c.week_start).label("week_start")
                    ).where(condition).group_by(table.c.investor_id, table.c.stock_symbol).subquery()
    query = select(*(table.c[column] for column in CHECKPOINT_COLUMNS)).join(latest, and_(
        latest.c.investor_id == table.c.investor_id, latest.c.stock_symbol == table.c.stock_symbol,
        latest.c.week_start == table.c.week_start))
    checkpoints = (_checkpoint(row) for row in connection.execute(query, execution_options=UNCACHED))
    return {(checkpoint.investor_id, checkpoint.stock_symbol): checkpoint for checkpoint in checkpoints}


def write_checkpoints(connection, checkpoints):
    """Insert or replace these checkpoints: by a file where the database loads files (bulk_insert.loaded_by_file),
    else by an upsert of CHECKPOINT_ROWS a statement (a replay of every trade has a checkpoint per position and
    week)."""
    if checkpoints and bulk_insert.loaded_by_file(connection, "position_checkpoints", CHECKPOINT_COLUMNS,
                                                  map(checkpoint_line, checkpoints), "REPLACE"):
        return
    update_columns = [column for column in CHECKPOINT_COLUMNS
                      if column not in ("investor_id", "stock_symbol", "week_start")]
    for start in range(0, len(checkpoints), CHECKPOINT_ROWS):
        connection.execute(dialects.upsert(connection, position_checkpoints, update_columns), [
            {**checkpoint._asdict(), "last_txn_time": datetime.fromisoformat(checkpoint.last_txn_time)}
            for checkpoint in checkpoints[start:start + CHECKPOINT_ROWS]])


def checkpoint_line(checkpoint):
    """A checkpoint as a LOAD DATA line of CHECKPOINT_COLUMNS, NULL as \\N, the texts escaped (one format: a replay
    of every trade writes 100,000 lines a million trades; a join over the fields took 2 s of them)."""
    c, decimal, text_field = checkpoint, bulk_insert.decimal_field, bulk_insert.mysql_field
    return (f"{c.investor_id}\t{text_field(c.stock_symbol)}\t{c.week_start}\t{c.quantity}\t{c.cost_basis:f}\t"
            f"{c.realized_pnl:f}\t{text_field(c.last_txn_time)}\t{c.last_txn_id}\t{c.trade_count}\t"
            f"{decimal(c.last_trade_price)}\t{c.dividend_income:f}\t{c.fees_paid:f}\t{text_field(c.lots)}\n")


def forget_checkpoints_after(connection, starts):
    """Delete each position's checkpoints after its checkpoint in starts ({key: Checkpoint, None for all of
    them}): a replay from there writes them again."""
    keys = sorted(starts)
    for first in range(0, len(keys), REPLAY_SLICE):
        connection.execute(delete(position_checkpoints).where(or_(*(
            and_(position_checkpoints.c.investor_id == key[0], position_checkpoints.c.stock_symbol == key[1],
                 *([] if starts[key] is None else [position_checkpoints.c.week_start > starts[key].week_start]))
            for key in keys[first:first + REPLAY_SLICE]))), execution_options=UNCACHED)
