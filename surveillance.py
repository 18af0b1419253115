"""Flag unusual trading in the new trades, and sector concentration in the portfolios, as alerts.

Fifth stage of the chain (after update_portfolio.py, before analyze.py). It checks the trades of loaded batches
that update_portfolio has applied and surveillance has not checked yet (`--full`: every trade) against the
trade-level rules LARGE_TRADE, OFF_MARKET_PRICE, WASH_TRADE, ROUND_TRIP and BURST, reading only the history they
need: per investor with new trades, the last trades before the first new one (LARGE_TRADE's own history, and the
SURVEILLANCE_BASELINE_TRADES that BURST and ROUND_TRIP measure the investor's usual activity over) and the last
SURVEILLANCE_CONTEXT_MINUTES before it, and the earlier trades of that history's first week; each position starts
that week from the ledger's checkpoint (position_checkpoints) and is replayed as ledger.Position applies trades
(running sums of the quantities between corporate actions, which the ledger applies; a position with an oversold
SELL trade by trade); every read is a set of index ranges, one per position. A --full check (and the first run)
reads and checks the trades one slice of investors at a time (about FULL_CHECK_SLICE_TRADES trades, or one bigger
investor): every rule judges a trade by its own investor's trades, so its memory does not grow with the history. A
baseline is taken from a trade's own previous trades only, so an incremental run and a --full run judge every
trade alike.
WASH_TRADE's price tolerance follows the symbol's volatility in the year before the trade (closes.py reads the
split-adjusted closes). Prices are compared in the same terms: a trade with that day's close as traded, and the
legs of a WASH_TRADE on either side of a split's ex_date in the later leg's terms (the earlier price divided by
the split's value, its quantity multiplied by it). Then SECTOR_CONCENTRATION compares each investor's sector
weights (portfolios, as update_portfolio left them) with the limit. Thresholds are in constants.py and explained
in docs/surveillance.md. A trade-level alert is keyed by rule and txn_ref, a sector
alert by rule, investor and sector, so re-running never duplicates one. Alerts and the batches' surveilled_at
commit in one transaction.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import contextlib
import csv
import io
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, select, text

import action_events
import alerts as alerts_lifecycle
import batches
import cli
import closes
import constants
import db_config
import db_retry
import dialects
import ledger
from cli import counted
from schema import Timestamp, alerts, load_batches

logger = logging.getLogger(__name__)

TRADE_RULES = ("LARGE_TRADE", "OFF_MARKET_PRICE", "WASH_TRADE", "ROUND_TRIP", "BURST")
RULES = TRADE_RULES + ("SECTOR_CONCENTRATION",)
ID_SLICE = 500  # values per IN (...) list
GROUP_STRIDE = 10**11  # seconds: keeps each group's time keys apart when windows are counted over all groups
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
CHUNK_CELLS = 5_000_000  # values per block of a rolling median: bounds memory at 1,000,000 trades
VOLATILITY_CALENDAR_DAYS = np.timedelta64(366, "D")  # a trade's symbol volatility: the closes of the year before
MIN_PORTFOLIO_VALUE = 0.01  # currency units: below this the portfolio is empty (float sums leave dust)
STAGE_NAME = "surveillance"  # who resolves a sector alert whose condition this stage sees clear
SECTOR_CLEARED = "condition cleared: the sector is no longer above the limit"
ALERT_COLUMNS = ["rule", "severity", "investor_id", "stock_symbol", "txn_ref", "metric", "threshold", "details"]


@dataclass
class SurveillanceSummary:
    """What one surveillance run did."""
    batches: int = 0
    new_trades: int = 0  # trades of the batches this run surveilled
    trades_checked: int = 0  # the new trades and the earlier trades after an investor's first new one
    context_trades: int = 0  # history read before each investor's first new trade, not checked itself
    investors: int = 0
    new_alerts: dict = field(default_factory=dict)  # rule: alerts raised by this run
    alerts_resolved: int = 0  # SECTOR_CONCENTRATION alerts whose condition cleared (alerts.py)
    seconds: float = 0.0
    full: bool = False
    first_run: bool = False  # nothing was checked before: every stored trade is new

    def line(self, seconds=True):
        """The summary line; seconds=False leaves out the time (master_etl prints its own)."""
        by_rule = ", ".join(f"{rule} {count}" for rule, count in self.new_alerts.items() if count) or "none"
        alerts_text = f"{counted(sum(self.new_alerts.values()), 'new alert')} ({by_rule})" + (
            f", {counted(self.alerts_resolved, 'sector alert')} resolved (condition cleared)"
            if self.alerts_resolved else "")
        timing = f" ({self.seconds:.2f} s)" if seconds else ""
        batches_text = counted(self.batches, "batch", "batches")
        if self.full:
            return (f"surveillance (full re-check): {counted(self.trades_checked, 'trade')} of "
                    f"{counted(self.investors, 'investor')} checked, {self.new_trades} of them new ({batches_text}); "
                    f"{alerts_text}{timing}")
        if self.first_run:
            return (f"surveillance (first run): {counted(self.new_trades, 'trade')} ({batches_text}) of "
                    f"{counted(self.investors, 'investor')} checked; {alerts_text}{timing}")
        rechecked = self.trades_checked - self.new_trades
        earlier = rechecked + self.context_trades
        again = f" ({rechecked} of them re-checked: they follow a late new trade)" if rechecked else ""
        return (f"surveillance (incremental): {counted(self.new_trades, 'new trade')} ({batches_text}) checked with "
                f"{counted(earlier, 'earlier trade')} of {counted(self.investors, 'investor')} as context{again}; "
                f"{alerts_text}{timing}")


# ---------------------------------------------------------------------------------------------- reading

PENDING_CTE = f"""
pending AS (  -- trades of loaded batches that update_portfolio applied and surveillance has not checked
    SELECT t.investor_id, t.txn_time
    FROM transactions t
    WHERE t.batch_id IN (SELECT b.batch_id FROM load_batches b
                         WHERE b.status = 'loaded' AND b.applied_at IS NOT NULL AND b.surveilled_at IS NULL
                           AND b.source NOT LIKE '{batches.LIVE_SOURCE_PREFIX}%')  -- live: live_worker.py's
)"""
LIVE_PENDING_CTE = """
pending AS (  -- the trades a live batch has just loaded and applied (live_apply.py)
    SELECT t.investor_id, t.txn_time
    FROM transactions t
    WHERE t.batch_id = :live_batch_id AND t.source_line > :live_after_line AND t.source_line <= :live_through_line
)"""
FIRST_NEW_CTE = """,
first_new AS (  -- each investor's earliest pending trade: it and every later trade of the investor are checked
    SELECT investor_id, MIN(txn_time) AS first_time
    FROM pending
    GROUP BY investor_id
)"""
PENDING_CTES = PENDING_CTE + FIRST_NEW_CTE
HISTORY_FLOORS_SELECT = """,
position_bounds AS (  -- per position, the time of its LOOKBACK-th newest trade before first_time (an index seek):
                      -- the investor has LOOKBACK trades from there on. Only positions with LOOKBACK trades in all
                      -- (portfolios.trade_count) can have one: fewer positions only lower the floor
    SELECT f.investor_id, f.first_time,
           (SELECT t.txn_time FROM transactions t
            WHERE t.investor_id = f.investor_id AND t.stock_symbol = p.stock_symbol AND t.txn_time < f.first_time
            ORDER BY t.txn_time DESC LIMIT 1 OFFSET :lookback_offset) AS bound
    FROM first_new f
    LEFT JOIN portfolios p ON p.investor_id = f.investor_id AND p.trade_count > :lookback_offset
)
SELECT investor_id, first_time,
       MAX(bound) AS history_floor  -- the investor's last LOOKBACK trades are from here on (NULL: all its trades)
FROM position_bounds
GROUP BY investor_id, first_time
"""
HISTORY_FLOORS_SQL = f"WITH {PENDING_CTES}{HISTORY_FLOORS_SELECT}"
LIVE_HISTORY_FLOORS_SQL = f"WITH {LIVE_PENDING_CTE}{FIRST_NEW_CTE}{HISTORY_FLOORS_SELECT}"
# One investor's first trade of history ({name}: its parameters' prefix, {trades}: its range_condition): the
# first of its last LOOKBACK trades before its first new one, or the first of its trades since the context start
LAST_TRADES_START_SELECT = """
SELECT :{name}_investor AS investor_id, (SELECT MIN(txn_time) FROM (
    SELECT t.txn_time FROM transactions t WHERE {trades}
    ORDER BY t.txn_time DESC, t.txn_id DESC LIMIT :lookback_trades) last_trades) AS history_start"""
RECENT_START_SELECT = """
SELECT :{name}_investor AS investor_id, (SELECT MIN(t.txn_time) FROM transactions t WHERE {trades}) AS history_start"""
PENDING_COUNT_SQL = f"WITH {PENDING_CTE} SELECT COUNT(*) FROM pending"  # the index on batch_id alone
WAITING_SQL = "SELECT COUNT(*) FROM load_batches WHERE status = 'loaded' AND applied_at IS NULL"
SURVEILLED_SQL = "SELECT 1 FROM load_batches WHERE status = 'loaded' AND surveilled_at IS NOT NULL LIMIT 1"
INVESTOR_TRADES_SQL = """
SELECT investor_id, COUNT(*) AS trades, MIN(txn_time) AS first_time, MAX(txn_time) AS last_time
FROM transactions
GROUP BY investor_id
ORDER BY investor_id
"""
COLUMNS = "{columns}"  # in a trade SELECT: where read_trades puts a trade's columns
SORTED_TRADES_SQL = "SELECT {columns} FROM transactions t {unindexed} ORDER BY t.investor_id"
RANGE_TRADES_SELECT = f"SELECT {COLUMNS} FROM transactions t WHERE {{trades}}"  # {trades}: see LAST_TRADES_START_SELECT
TRADE_FIELDS = ("txn_id", "txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time")
TYPED_TRADE_SQL = ", ".join(f"t.{name}" for name in TRADE_FIELDS)
# Where the driver's per-field work dominates (dialects.packs_rows), a trade is read as one text column, its fields
# joined by a tab: validation keeps every text field printable ASCII, so none holds a tab (and a tab would add a
# field, which read_csv refuses rather than misreads)
PACKED_TRADE_SQL = f"CONCAT_WS(:field_separator, {TYPED_TRADE_SQL})"
FIELD_SEPARATOR = "\t"
TEXT_READ_FAILED = "Calling read(nbytes) on source failed"  # pandas' parse error when a signal interrupts its read
PACKED_DTYPES = {"txn_id": np.int64, "txn_ref": str, "investor_id": np.int64, "stock_symbol": str, "txn_type": str,
                 "quantity": np.int64, "price": np.float64, "txn_time": str}
# Where dialects.groups_trades (PyMySQL parses each row's packet in Python; 10,000 new trades on 1,000,000: the
# incremental run's median 0.54 -> 0.50 s), an investor's trades of one range come as one text of their rows; a text the
# server cut (longer than group_concat_max_len) is shorter than text_length, and that investor is read row by row
GROUPED_RANGE_SELECT = f"""
SELECT :{{name}}_investor AS investor_id, COUNT(*) AS trade_count,
       COUNT(*) - 1 + SUM(CHAR_LENGTH({PACKED_TRADE_SQL})) AS text_length,
       GROUP_CONCAT({PACKED_TRADE_SQL} SEPARATOR '\n') AS trades
FROM transactions t WHERE {{trades}}"""
# Where dialects.groups_trades, a full check reads each position's trades as one text, from one scan and sort of the
# table (a text the server cut is shorter than text_length: that position is read row by row)
GROUPED_POSITIONS_SQL = f"""
SELECT t.investor_id, t.stock_symbol, COUNT(*) AS trade_count,
       COUNT(*) - 1 + SUM(CHAR_LENGTH({PACKED_TRADE_SQL})) AS text_length,
       GROUP_CONCAT({PACKED_TRADE_SQL} SEPARATOR '\n') AS trades
FROM transactions t {{unindexed}}
{{after}}
GROUP BY t.investor_id, t.stock_symbol
ORDER BY t.investor_id, t.stock_symbol"""
ONE_POSITION_SQL = (f"SELECT {PACKED_TRADE_SQL} FROM transactions t "
                    "WHERE t.investor_id = :cut_investor AND t.stock_symbol = :cut_symbol")
FRAME_ROWS = 100_000  # rows of a read turned into a frame at once: bounds the driver's row objects alive
FULL_CHECK_SLICE_TRADES = 500_000  # trades a --full check reads and checks at once: bounds its memory
INVESTORS_PER_STATEMENT = 200  # SELECTs per UNION ALL at most (SQLite takes 500)


class BatchState(NamedTuple):
    """The batches one run surveils."""
    pending: list  # ids of loaded batches that update_portfolio applied and surveillance has not checked
    first_run: bool  # every stored trade is theirs: nothing was surveilled yet and nothing waits


class InvestorRange(NamedTuple):
    """One investor's trades from `start` (None: its first) to before `end` (None: its last), datetimes."""
    investor_id: int
    start: datetime = None
    end: datetime = None


class SqlPart(NamedTuple):
    """A piece of a statement: its SQL, its parameters and the bindparams that type them."""
    sql: str
    params: dict
    bindparams: list


def pending_batches(connection):
    """Ids of loaded batches that update_portfolio applied and surveillance has not checked yet; a live batch
    of the queue (source 'queue:...') is its consumer's to value and surveil (live_worker.py), never this stage's."""
    return connection.execute(select(load_batches.c.batch_id).where(
        load_batches.c.status == "loaded", load_batches.c.applied_at.is_not(None),
        load_batches.c.surveilled_at.is_(None), load_batches.c.source.not_like(f"{batches.LIVE_SOURCE_PREFIX}%")
    ).order_by(load_batches.c.batch_id)).scalars().all()


def read_batch_state(connection, full=False):
    """The pending batches, and whether this is the first run: decided from load_batches alone (no loaded batch
    was surveilled yet and none waits for update_portfolio), never by counting transactions."""
    pending = pending_batches(connection)
    waiting = connection.execute(text(WAITING_SQL)).scalar()
    if waiting and not full:
        logger.warning("%s for update_portfolio; they are checked after it applied them",
                       counted(waiting, "loaded batch waits", "loaded batches wait"))
    first_run = bool(pending) and not waiting and connection.execute(text(SURVEILLED_SQL)).first() is None
    return BatchState(pending, first_run)


def count_pending(connection, state):
    """How many trades the pending batches hold."""
    return connection.execute(text(PENDING_COUNT_SQL)).scalar() if state.pending else 0


def _datetime(value):
    """A txn_time as the driver returns it (text on SQLite) as a datetime."""
    return pd.Timestamp(value).to_pydatetime()


def history_trades():
    """How many of an investor's trades before its first new one the rules need: LARGE_TRADE's own history and
    the trades the usual activity is measured over."""
    return max(constants.LARGE_TRADE_LOOKBACK_TRADES, constants.SURVEILLANCE_BASELINE_TRADES)


def read_trades(connection, sql, params, bindparams=()):
    """The trades that `sql` selects (its select lists: COLUMNS, of transactions t; its bindparams typed), typed
    (see typed_trades), in no particular order."""
    packed = dialects.packs_rows(connection.dialect.name)
    statement = text(sql.replace(COLUMNS, PACKED_TRADE_SQL if packed else TYPED_TRADE_SQL)).bindparams(*bindparams)
    result = connection.execute(statement, {**params, "field_separator": FIELD_SEPARATOR} if packed else params,
                                execution_options=ledger.UNCACHED)  # `sql` differs from one set of ranges to the next
    to_frame = unpack_trades if packed else trade_frame
    frames = [to_frame(rows) for rows in (result.scalars() if packed else result).partitions(FRAME_ROWS)]
    return typed_trades(pd.concat(frames, ignore_index=True) if frames else to_frame([]))


def sliced_trades(connection, slices):
    """Yield the trades of each (first investor_id, last investor_id) slice in turn (typed_trades), from one read
    of every trade in investor order, streamed: a table scan and the database's sort, where reading each slice
    through the position index costs a row lookup a trade in a table stored in time order. Where
    dialects.groups_trades, a position's trades come as one text (grouped_partitions)."""
    lasts = [last for _, last in slices]
    if dialects.groups_trades(connection.dialect.name):
        yield from _cut_into_slices(grouped_partitions(connection), unpack_trades, lasts)
        return
    packed = dialects.packs_rows(connection.dialect.name)
    sql = SORTED_TRADES_SQL.format(columns=PACKED_TRADE_SQL if packed else TYPED_TRADE_SQL,
                                   unindexed=dialects.unindexed_scan(connection))
    with bounded_sort_memory(connection):
        yield from _cut_into_slices(sorted_partitions(connection, sql, packed),
                                    unpack_trades if packed else trade_frame, lasts)


def sorted_partitions(connection, sql, packed):
    """SORTED_TRADES_SQL's rows (packed: their texts) in lists of FRAME_ROWS, streamed. Where the driver's cursor
    steps through the rows as they are fetched (dialects.driver_streams), from that cursor: SQLAlchemy's result
    rows cost 1.5 s a million."""
    if not packed and dialects.driver_streams(connection.dialect.name):
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql)
            while rows := cursor.fetchmany(FRAME_ROWS):
                yield rows
        finally:
            cursor.close()
        return
    result = connection.execute(text(sql), {"field_separator": FIELD_SEPARATOR} if packed else {},
                                execution_options={"stream_results": True, "max_row_buffer": FRAME_ROWS})
    yield from (result.scalars() if packed else result).partitions(FRAME_ROWS)


def grouped_partitions(connection):
    """Every trade's PACKED_TRADE_SQL text in investor order, in lists of about FRAME_ROWS, read as one text per
    position (GROUPED_POSITIONS_SQL, one scan and sort of the table); a position whose text the server cut is read
    row by row (ONE_POSITION_SQL), and the positions after it grouped again."""
    connection.exec_driver_sql(ledger.GROUP_TEXT_LIMIT_SQL)
    after = None
    while True:
        cut = yield from _position_partitions(connection, after)
        if cut is None:
            return
        params = {"field_separator": FIELD_SEPARATOR, "cut_investor": cut[0], "cut_symbol": cut[1]}
        yield connection.execute(text(ONE_POSITION_SQL), params).scalars().all()
        after = cut


def _position_partitions(connection, after):
    """grouped_partitions from the position after `after` ((investor_id, stock_symbol), None: the first) up to
    the first text the server cut; return that position (None when no text was cut)."""
    params = {"field_separator": FIELD_SEPARATOR}
    if after is not None:
        params.update(after_investor=after[0], after_symbol=after[1])
    sql = GROUPED_POSITIONS_SQL.format(unindexed=dialects.unindexed_scan(connection),
                                       after="" if after is None else f"WHERE {ledger.AFTER_POSITION_SQL}")
    result = connection.execute(text(sql), params, execution_options={"stream_results": True, "max_row_buffer": 1})
    lines = []
    while row := result.fetchone():  # one text at a time: each may be max_allowed_packet long
        investor_id, symbol, trade_count, text_length, trades = row
        if trades is None or len(trades) != text_length:
            result.close()
            if lines:
                yield lines
            return investor_id, symbol
        lines.extend(trades.split("\n"))
        row = trades = None  # the text goes before the lines are framed
        if len(lines) >= FRAME_ROWS:
            yield lines
            lines = []
    if lines:
        yield lines
    return None


def _cut_into_slices(partitions, to_frame, lasts):
    """The typed trades of each slice (lasts: each slice's last investor_id) from partitions of rows in investor
    order."""
    current, parts = 0, []
    for frame in map(to_frame, partitions):  # a partition's rows go once framed
        start, investor_ids = 0, frame["investor_id"].to_numpy()
        while current < len(lasts) - 1:
            cut = max(start, int(np.searchsorted(investor_ids, lasts[current], side="right")))
            if cut == len(frame):
                break
            trades = pd.concat([*parts, frame.iloc[start:cut]], ignore_index=True)
            parts, start, current = [], cut, current + 1  # the parts go before the slice is checked
            yield typed_trades(trades)
        parts.append(frame.iloc[start:])
    if parts:
        trades, parts = pd.concat(parts, ignore_index=True), None
        yield typed_trades(trades)


@contextlib.contextmanager
def bounded_sort_memory(connection):
    """Within it, a sort of a whole table takes little memory where it runs in this process (dialects.sort_memory);
    the connection's setting comes back after."""
    bound = dialects.sort_memory(connection.dialect.name)
    if bound is None:
        yield
        return
    before = connection.exec_driver_sql(bound.read).scalar()
    connection.exec_driver_sql(bound.set.format(value=bound.small))
    try:
        yield
    except BaseException:  # an interrupt or a database error: it is what the user sees, not a failed restore
        if not connection.invalidated:  # an invalidated connection is discarded, its setting with it
            with contextlib.suppress(Exception):
                connection.exec_driver_sql(bound.set.format(value=before))
        raise
    connection.exec_driver_sql(bound.set.format(value=before))


def trade_frame(rows):
    """TYPED_TRADE_SQL's rows as a frame of TRADE_FIELDS (from tuples: pandas builds that faster than from Rows)."""
    return pd.DataFrame(list(map(tuple, rows)), columns=list(TRADE_FIELDS))


def unpack_trades(rows):
    """PACKED_TRADE_SQL's texts as a frame of TRADE_FIELDS, parsed in bulk (read_csv, not a loop per row)."""
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in PACKED_DTYPES.items()})
    try:
        return pd.read_csv(io.StringIO("\n".join(rows)), sep=FIELD_SEPARATOR, header=None, names=list(TRADE_FIELDS),
                           dtype=PACKED_DTYPES, quoting=csv.QUOTE_NONE, na_filter=False)
    except pd.errors.ParserError as error:
        if TEXT_READ_FAILED in str(error):  # a text in memory cannot fail to be read: Ctrl+C or SIGTERM came then
            raise KeyboardInterrupt("interrupted while reading trades") from error
        raise


def typed_trades(trades):
    """Trades as the SQL returns them with price (float) and quantity (int64), and the time as seconds since the
    epoch and day (datetime64[D]) added."""
    trades["price"] = trades["price"].astype(float)
    trades["quantity"] = trades["quantity"].astype(np.int64)
    times = pd.to_datetime(trades["txn_time"].astype(str), format="%Y-%m-%d %H:%M:%S")
    trades["seconds"] = times.to_numpy().astype("datetime64[s]").astype(np.int64)
    trades["day"] = times.to_numpy().astype("datetime64[D]")
    return trades


def in_replay_order(trades):
    """Trades sorted by investor, time and txn_id."""
    return trades.sort_values(["investor_id", "seconds", "txn_id"], ignore_index=True)


def read_symbols(connection):
    """Every stock symbol: with an investor, they enumerate its positions, each one index range."""
    return connection.execute(text("SELECT stock_symbol FROM stocks ORDER BY stock_symbol")).scalars().all()


def range_condition(investor_range, name):
    """SqlPart: the condition (over alias t) selecting one InvestorRange's trades, each of its positions (every
    symbol, :symbols) one range of ix_transactions_position_time; its parameters are named name_..."""
    conditions = [f"t.investor_id = :{name}_investor", "t.stock_symbol IN :symbols"]
    params, typed = {f"{name}_investor": investor_range.investor_id}, []
    for bound_name, operator, bound in (("start", ">=", investor_range.start), ("end", "<", investor_range.end)):
        if bound is not None:
            conditions.append(f"t.txn_time {operator} :{name}_{bound_name}")
            params[f"{name}_{bound_name}"] = bound
            typed.append(bindparam(f"{name}_{bound_name}", type_=Timestamp))
    return SqlPart(" AND ".join(conditions), params, typed)


def union_all(parts, symbols):
    """(SQL, parameters, bindparams) of SqlParts joined by UNION ALL, every stock symbol bound as :symbols. One
    SELECT per investor: one whose WHERE ORs the investors costs MariaDB the whole OR for every row it reads."""
    return ("\nUNION ALL\n".join(part.sql for part in parts),
            {"symbols": list(symbols), **{name: value for part in parts for name, value in part.params.items()}},
            [bindparam("symbols", expanding=True), *(typed for part in parts for typed in part.bindparams)])


def statement_slices(connection, items, symbols):
    """`items` (one per investor) in slices of as many investors as one statement reads: each binds every symbol
    and three values, within the database's bound parameters per statement (dialects.lookup_slice)."""
    fitting = dialects.lookup_slice(connection.dialect.name) // (len(symbols) + 3)
    step = max(1, min(INVESTORS_PER_STATEMENT, fitting))
    return [items[first:first + step] for first in range(0, len(items), step)]


def union_of_ranges(select, ranges, symbols):
    """(SQL, parameters, bindparams): `select` for each InvestorRange (its {name}: a prefix for its parameters,
    its {trades}: its range_condition), joined by UNION ALL."""
    parts = []
    for number, investor_range in enumerate(ranges):
        condition = range_condition(investor_range, f"r{number}")
        parts.append(SqlPart(select.replace("{name}", f"r{number}").replace("{trades}", condition.sql),
                             condition.params, condition.bindparams))
    return union_all(parts, symbols)


def read_ranges(connection, ranges, symbols):
    """The trades of these InvestorRanges (read_trades), a slice of investors per statement; where
    dialects.groups_trades, each investor's as one text (GROUPED_RANGE_SELECT)."""
    if dialects.groups_trades(connection.dialect.name):
        return read_grouped_ranges(connection, ranges, symbols)
    return read_row_ranges(connection, ranges, symbols)


def read_row_ranges(connection, ranges, symbols):
    """The trades of these InvestorRanges read row by row (read_trades), a slice of investors per statement."""
    return pd.concat([read_trades(connection, *union_of_ranges(RANGE_TRADES_SELECT, part, symbols))
                      for part in statement_slices(connection, ranges, symbols)], ignore_index=True)


def read_grouped_ranges(connection, ranges, symbols):
    """read_ranges, each investor's trades read as one text; an investor whose text the server cut, row by row."""
    connection.exec_driver_sql(ledger.GROUP_TEXT_LIMIT_SQL)
    texts, cut = [], set()
    for part in statement_slices(connection, ranges, symbols):
        sql, params, bindparams = union_of_ranges(GROUPED_RANGE_SELECT, part, symbols)
        rows = connection.execute(text(sql).bindparams(*bindparams), {**params, "field_separator": FIELD_SEPARATOR},
                                  execution_options=ledger.UNCACHED)
        for investor_id, trade_count, text_length, trades in rows:
            if trades is not None and len(trades) == text_length:
                texts.append(trades)
            elif trade_count:
                cut.add(investor_id)
    frames = [typed_trades(unpack_trades(texts))]
    if cut:
        frames.append(read_row_ranges(connection, [each for each in ranges if each.investor_id in cut], symbols))
    return pd.concat(frames, ignore_index=True)


def read_context(connection, floors, first_new):
    """The trades to check (each investor's from its first pending one: floors, read_history_floors') and their
    history, with each investor's earlier trades of the week of its first history trade, in replay order; and the
    opening: {(investor_id, stock_symbol): ledger.Checkpoint}, each position's last checkpoint before that week
    (none: nothing held). first_new: the earliest pending trade's time. Every read is a set of index ranges per
    position: no plan scans the table."""
    symbols = read_symbols(connection)
    since = first_new - timedelta(minutes=constants.SURVEILLANCE_CONTEXT_MINUTES)
    starts = read_history_starts(connection, floors, symbols, since)
    weeks = {investor_id: ledger.week_start(str(starts.get(investor_id, first_time))[:10])
             for investor_id, (first_time, _) in floors.items()}
    opening = ledger.checkpoints_before(connection, list(weeks), weeks)
    trades = read_ranges(connection, [InvestorRange(investor_id, datetime.combine(week, datetime.min.time()))
                                      for investor_id, week in weeks.items()], symbols)
    first_seconds = {investor_id: np.datetime64(first_time, "s").astype(np.int64)
                     for investor_id, (first_time, _) in floors.items()}
    checked = trades["seconds"].to_numpy() >= trades["investor_id"].map(first_seconds).to_numpy()
    return in_replay_order(trades.assign(checked=checked)), opening


def read_history_floors(connection, floors_sql=HISTORY_FLOORS_SQL, pending_params=None):
    """{investor_id: (its first pending trade's time, its history floor or None)}, datetimes, of the investors
    with pending trades (floors_sql: HISTORY_FLOORS_SQL, or LIVE_HISTORY_FLOORS_SQL with its pending_params)."""
    lookback = history_trades()
    rows = connection.execute(text(floors_sql), {"lookback_offset": lookback - 1, **(pending_params or {})})
    return {investor_id: (_datetime(first_time), None if floor is None else _datetime(floor))
            for investor_id, first_time, floor in rows}


def read_history_starts(connection, floors, symbols, since):
    """{investor_id: the time of its first trade of history} for the investors with trades before their first
    pending one: the first of its last LOOKBACK trades, unless a trade since `since` is earlier (then they all
    are at or after `since`, and the first of those is)."""
    last = read_starts(connection, LAST_TRADES_START_SELECT, symbols, [
        InvestorRange(investor_id, floor, first_time) for investor_id, (first_time, floor) in floors.items()
        if floor is None or floor < since])  # a later floor: its last trades are all since `since`
    starts = {investor_id: start for investor_id, start in last.items() if start is not None and start < since}
    recent = read_starts(connection, RECENT_START_SELECT, symbols, [
        InvestorRange(investor_id, since, first_time) for investor_id, (first_time, _) in floors.items()
        if investor_id not in starts])
    return {**starts, **{investor_id: start for investor_id, start in recent.items() if start is not None}}


def read_starts(connection, select, symbols, ranges):
    """{investor_id: its start (datetime or None)} by `select` (LAST_TRADES_START_SELECT or RECENT_START_SELECT)
    over each of these InvestorRanges, a slice of investors per statement."""
    starts = {}
    for part in statement_slices(connection, ranges, symbols):
        sql, params, bindparams = union_of_ranges(select, part, symbols)
        rows = connection.execute(text(sql).bindparams(*bindparams), {"lookback_trades": history_trades(), **params},
                                  execution_options=ledger.UNCACHED)
        starts.update((investor_id, None if start is None else _datetime(start)) for investor_id, start in rows)
    return starts


# ---------------------------------------------------------------------------------------------- shared arrays

def trailing_counts(group_codes, seconds, window_seconds):
    """For rows sorted by (group, time): rows of the same group in (t - window, t], this one included."""
    key = group_codes.astype(np.int64) * GROUP_STRIDE + seconds
    return np.arange(len(key)) - np.searchsorted(key, key - window_seconds, side="right") + 1


def previous_in_group(values, group_codes, first_value=0):
    """Each row's previous value within its group (rows sorted by group); first_value for a group's first row."""
    previous = np.roll(values, 1)
    previous[group_starts(group_codes)] = first_value
    return previous


def sorted_group_codes(*keys):
    """For rows sorted by these keys (arrays): each row's group, numbered from 0, a new one wherever a key changes."""
    changed = np.zeros(len(keys[0]), dtype=bool)
    for key in keys:
        changed[1:] |= key[1:] != key[:-1]
    return np.cumsum(changed)


def group_starts(group_codes):
    """True for the first row of each group (rows sorted by group)."""
    starts = np.ones(len(group_codes), dtype=bool)
    starts[1:] = group_codes[1:] != group_codes[:-1]
    return starts


def first_rows(group_codes):
    """Each row's index of the first row of its group (rows sorted by group)."""
    return np.maximum.accumulate(np.where(group_starts(group_codes), np.arange(len(group_codes)), 0))


def previous_sums(values, group_codes, lookback):
    """For rows sorted by group: the sum of integer `values` over each row's previous `lookback` rows of its
    group (itself excluded), and how many rows that is (exact: integer sums)."""
    cumulative = np.concatenate([[0], np.cumsum(values.astype(np.int64))])
    rows = np.arange(len(values))
    first = np.maximum(first_rows(group_codes), rows - lookback)
    return cumulative[rows] - cumulative[first], rows - first


def position_states(trades, opening, rules=None):
    """Each trade's position before and after it, replayed from the position's opening checkpoint (none: nothing
    held), an oversold SELL changing nothing, through the splits of `rules` (ledger.Rules; none: no split)
    (docs/portfolio-math.md), as ledger.Position applies them (replay_positions).

    Returns the trades sorted by position in replay order with holding_before, holding_after, applied,
    last_price (the price the position last traded at before the trade; for a position's first trade without a
    checkpoint, its own price), position_code and row (the trade's row in `trades`)."""
    by_position = trades.assign(row=np.arange(len(trades))).sort_values(
        ["investor_id", "stock_symbol", "seconds", "txn_id"], ignore_index=True)
    code = sorted_group_codes(by_position["investor_id"].to_numpy(), by_position["stock_symbol"].to_numpy())
    before, after, applied, last_price = replay_positions(by_position, code, opening, rules or ledger.Rules())
    return by_position.assign(holding_before=before, holding_after=after, applied=applied, last_price=last_price,
                              position_code=code)


def replay_positions(by_position, position_codes, opening, rules):
    """Holding before and after, applied and the last price before each trade of by_position (sorted by position
    in replay order), as ledger.Position gives them: a segment of a position's trades with no corporate action
    between them holds its entry holding (segment_entries: the ledger applies the actions) plus the running sum of
    its BUY and SELL quantities; a position in which a SELL would oversell is replayed trade by trade."""
    types, quantity = by_position["txn_type"].to_numpy(), by_position["quantity"].to_numpy()
    signed = np.where(types == "BUY", quantity, -quantity)
    starts = segment_starts(by_position, position_codes, rules)
    segment = np.cumsum(starts) - 1
    running = np.cumsum(signed)
    within = running - (running - signed)[starts][segment]  # the segment's running sum, this trade included
    entry_quantity, entry_price, irregular = segment_entries(by_position, position_codes, starts, within, opening,
                                                             rules)
    after = entry_quantity[segment] + within
    price = by_position["price"].to_numpy(dtype=float)
    last_price = np.where(starts, np.where(np.isnan(entry_price[segment]), price, entry_price[segment]),
                          np.roll(price, 1))
    irregular.update(position_codes[(types != "BUY") & (types != "SELL")].tolist())  # the ledger names the error
    states = (after - signed, after, np.ones(len(after), dtype=bool), last_price)
    return replay_irregular(by_position, position_codes, states, irregular, opening, rules)


def segment_starts(by_position, position_codes, rules):
    """True for a trade that starts a segment: a position's first trade, or one after a corporate action of
    `rules` (at the start of its ex_date) that the position's previous trade is before."""
    starts = group_starts(position_codes)
    symbols, seconds = by_position["stock_symbol"].to_numpy(), by_position["seconds"].to_numpy()
    for symbol, events in rules.actions.items():
        rows = np.flatnonzero(symbols == symbol)
        ex_seconds = np.array([key[0].replace(" ", "T") for key, _ in events], dtype="datetime64[s]").astype(np.int64)
        actions_before = np.searchsorted(ex_seconds, seconds[rows], side="right")
        starts[rows[1:]] |= actions_before[1:] != actions_before[:-1]
    return starts


def segment_entries(by_position, position_codes, starts, within, opening, rules):
    """Per segment (segment_starts): the holding and the last trade price (float, NaN: none) at its entry, after
    the ledger applied the corporate actions since the position's previous event (its opening checkpoint, or its
    previous trade); and the codes of the positions in which a SELL would oversell."""
    rows = np.flatnonzero(starts)
    lowest = np.minimum.reduceat(within, rows).tolist()  # the segment's lowest running sum
    codes, new_position = position_codes[rows].tolist(), group_starts(position_codes[rows])
    previous = zip(event_keys(by_position, rows - 1), by_position["price"].to_numpy()[rows - 1].tolist(),
                   within[rows - 1].tolist())  # each segment's previous trade (of the previous segment)
    positions = zip(by_position["investor_id"].to_numpy()[rows].tolist(),
                    by_position["stock_symbol"].to_numpy()[rows].tolist())
    quantities, prices, oversold = np.zeros(len(rows), dtype=np.int64), np.full(len(rows), np.nan), set()
    position = None
    for number, (key, previous_trade, investor_symbol) in enumerate(zip(event_keys(by_position, rows), previous,
                                                                        positions)):
        if codes[number] in oversold:
            continue
        position = (opening_position(opening, *investor_symbol) if new_position[number]
                    else segment_exit(position, *previous_trade))
        for action in rules.actions_between(position.stock_symbol, (position.last_txn_time, position.last_txn_id),
                                            key):
            position.apply(action)
        quantities[number] = position.quantity
        prices[number] = np.nan if position.last_trade_price is None else float(position.last_trade_price)
        if position.quantity + lowest[number] < 0:
            oversold.add(codes[number])
    return quantities, prices, oversold


def segment_exit(position, last_key, last_price, running_sum):
    """The position a segment leaves (a ledger.Position with the quantity and last trade, which is what a split
    changes): `position` at the segment's entry, plus the running sum of its trades, last traded at last_price."""
    return ledger.Position(position.investor_id, position.stock_symbol, position.quantity + running_sum,
                           last_txn_time=last_key[0], last_txn_id=last_key[1],
                           last_trade_price=ledger.to_decimal(last_price))


def event_keys(by_position, rows):
    """ledger.event_key of the trades at these rows: (txn_time text, txn_id)."""
    times = np.datetime_as_string(by_position["seconds"].to_numpy()[rows].astype("datetime64[s]"))
    return list(zip([time_text.replace("T", " ") for time_text in times.tolist()],
                    by_position["txn_id"].to_numpy()[rows].tolist()))


def replay_irregular(by_position, position_codes, states, irregular, opening, rules):
    """`states` (arrays) with the trades of the positions whose codes are in `irregular` replayed one by one by
    the ledger (replay_with_ledger), which skips an oversold SELL and names a txn_type it does not know."""
    rows = np.flatnonzero(np.isin(position_codes, list(irregular)))
    if len(rows):
        for state, exact in zip(states, replay_with_ledger(ledger_trades(by_position.iloc[rows]), opening, rules)):
            state[rows] = exact
    return states


def ledger_trades(trades):
    """The rows as ledger.Trade records: txn_time as text, the price as the exact Decimal it is stored as."""
    times = np.datetime_as_string(trades["seconds"].to_numpy().astype("datetime64[s]")).tolist()
    price_codes, prices = pd.factorize(trades["price"])  # prices repeat: one Decimal per distinct price
    decimals = [ledger.to_decimal(price) for price in prices.tolist()]
    return map(ledger.Trade, trades["txn_id"].tolist(), [time_text.replace("T", " ") for time_text in times],
               trades["investor_id"].tolist(), trades["stock_symbol"].tolist(), trades["txn_type"].tolist(),
               trades["quantity"].tolist(), [decimals[code] for code in price_codes.tolist()])


def replay_with_ledger(trades, opening, rules=None):
    """Apply ledger trades, sorted by position in replay order, to positions that start from their checkpoint
    in `opening` ({(investor_id, stock_symbol): Checkpoint}) or empty, with the corporate actions of `rules`
    between them (a split changes the holding and the last price).

    Returns arrays of, per trade: holding before, holding after, applied, and the last price before it."""
    rules = rules or ledger.Rules()
    before, after, applied, last_price = [], [], [], []
    investor_id = stock_symbol = position = None
    for trade in trades:
        if trade.stock_symbol != stock_symbol or trade.investor_id != investor_id:  # the next position
            investor_id, stock_symbol = trade.investor_id, trade.stock_symbol
            position = opening_position(opening, investor_id, stock_symbol)
        if stock_symbol in rules.actions:
            for action in rules.actions_between(stock_symbol, (position.last_txn_time, position.last_txn_id),
                                                ledger.event_key(trade)):
                position.apply(action)
        before.append(position.quantity)
        last_price.append(trade.price if position.last_trade_price is None else position.last_trade_price)
        applied.append(position.apply(trade))
        after.append(position.quantity)
    return (np.array(before, dtype=np.int64), np.array(after, dtype=np.int64), np.array(applied, dtype=bool),
            np.array(last_price, dtype=float))


def opening_position(opening, investor_id, stock_symbol):
    """The position as its opening checkpoint left it, or empty without one."""
    checkpoint = opening.get((investor_id, stock_symbol))
    return ledger.Position(investor_id, stock_symbol) if checkpoint is None else ledger.Position.from_checkpoint(
        checkpoint)


def rolling_robust_z(values, group_codes, rows, lookback, min_history):
    """Robust z of values[rows] against the previous `lookback` values of the same group (rows sorted by group):
    (value - median) / max(1.4826 * MAD, LARGE_TRADE_MIN_SCALE).

    Returns (z, history counts); z is NaN with fewer than min_history previous values."""
    first = np.maximum(first_rows(group_codes)[rows], rows - lookback)
    z = np.full(len(rows), np.nan)
    for begin, window in previous_windows(values, first, rows, lookback):
        median = _sorted_median(window)
        scale = np.maximum(MAD_TO_SIGMA * _sorted_median(np.abs(window - median[:, None])),
                           constants.LARGE_TRADE_MIN_SCALE)
        z[begin:begin + len(window)] = (values[rows[begin:begin + len(window)]] - median) / scale
    counts = rows - first
    z[counts < min_history] = np.nan
    return z, counts


def previous_windows(values, first, end, lookback):
    """Yield (offset, window): for blocks of rows, values[first:end] of each row (end - first <= lookback) as a
    row of `lookback` cells, NaN-padded on the left; blocks of CHUNK_CELLS cells bound the memory."""
    block_rows = max(1, CHUNK_CELLS // lookback)
    windows = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.full(lookback, np.nan), values]), lookback)
    for begin in range(0, len(end), block_rows):
        stop, start = end[begin:begin + block_rows], first[begin:begin + block_rows]
        window = windows[stop]  # values[stop - lookback:stop] of each row, a copy
        short = np.flatnonzero(stop - start < lookback)  # rows whose window reaches before `first`
        window[short] = np.where(stop[short, None] - lookback + np.arange(lookback) >= start[short, None],
                                 window[short], np.nan)
        yield begin, window


def _sorted_median(window):
    """Median of each row, ignoring NaN (a row has at least one value where it matters)."""
    ordered = np.sort(window, axis=1)  # NaN sort last
    valid = np.maximum((~np.isnan(ordered)).sum(axis=1), 1)
    low = np.take_along_axis(ordered, ((valid - 1) // 2)[:, None], axis=1)[:, 0]
    high = np.take_along_axis(ordered, (valid // 2)[:, None], axis=1)[:, 0]
    return (low + high) / 2


# ---------------------------------------------------------------------------------------------- rules

def _alerts(rule, rows, severity, metric, threshold, details):
    """Alert candidates of one rule for the trades in `rows` (a DataFrame)."""
    return pd.DataFrame({
        "rule": rule, "severity": severity, "investor_id": rows["investor_id"].to_numpy(),
        "stock_symbol": rows["stock_symbol"].to_numpy(), "txn_ref": rows["txn_ref"].to_numpy(),
        "metric": np.asarray(metric, dtype=float), "threshold": np.asarray(threshold, dtype=float),
        "details": list(details)}, columns=ALERT_COLUMNS)


def money(value):
    """A stored price or amount as text: 2 decimals, 4 when it has them."""
    amount = ledger.to_decimal(value)
    return f"{amount:,.2f}" if amount == amount.quantize(Decimal("0.01")) else f"{amount:,.4f}"


def _trade_text(row):
    return f"{row.txn_type} {row.txn_ref} of {row.quantity} {row.stock_symbol} at {money(row.price)}"


def large_trade_alerts(trades, by_position, opening):
    """LARGE_TRADE: ln(notional) far above the investor's own history (robust z), or notional above a multiple
    of the investor's portfolio value just before the trade; both need LARGE_TRADE_MIN_HISTORY earlier trades."""
    notional = trades["quantity"].to_numpy() * trades["price"].to_numpy()
    rows = np.flatnonzero(trades["checked"].to_numpy())
    z, counts = rolling_robust_z(np.log(notional), trades["investor_id"].to_numpy(), rows,
                                 constants.LARGE_TRADE_LOOKBACK_TRADES, constants.LARGE_TRADE_MIN_HISTORY)
    value = portfolio_value_before(trades, by_position, opening)[rows]
    valued = (value >= MIN_PORTFOLIO_VALUE) & (counts >= constants.LARGE_TRADE_MIN_HISTORY)
    share = np.where(valued, notional[rows] / np.where(valued, value, 1), np.nan)
    by_z, by_share = z >= constants.LARGE_TRADE_Z, share > constants.LARGE_TRADE_PORTFOLIO_SHARE
    hit = by_z | by_share
    flagged = trades.iloc[rows[hit]]
    details = [_large_trade_details(row, zz, s, n) for row, zz, s, n in
               zip(flagged.itertuples(), z[hit], share[hit], counts[hit])]
    return _alerts("LARGE_TRADE", flagged, np.where(by_z[hit] & by_share[hit], "HIGH", "MEDIUM"),
                   np.where(by_z[hit], z[hit], share[hit]),
                   np.where(by_z[hit], constants.LARGE_TRADE_Z, constants.LARGE_TRADE_PORTFOLIO_SHARE), details)


def _large_trade_details(row, z, share, history):
    reasons = []
    if z >= constants.LARGE_TRADE_Z:
        reasons.append(f"robust z-score {z:.1f} of its log notional against the investor's last {history} trades "
                       f"(threshold {constants.LARGE_TRADE_Z:g})")
    if share > constants.LARGE_TRADE_PORTFOLIO_SHARE:
        reasons.append(f"{share:.1f} times the investor's portfolio value before it "
                       f"(threshold {constants.LARGE_TRADE_PORTFOLIO_SHARE:g})")
    notional = int(row.quantity) * ledger.to_decimal(row.price)
    return f"{_trade_text(row)} is worth {money(notional)}: {'; '.join(reasons)}"


def portfolio_value_before(trades, by_position, opening):
    """The investor's portfolio value just before each trade (rows of `trades`), each position valued at the
    price it last traded at: the positions at their opening checkpoints, plus the change of value trade by trade.
    A trade's position comes to it as the corporate actions since its previous event left it (holding_before at
    last_price): a split's fraction of a share, paid out as cash in lieu, leaves the value there, as it leaves a
    checkpoint written after the split."""
    after = by_position["holding_after"].to_numpy() * by_position["price"].to_numpy()
    before = by_position["holding_before"].to_numpy() * by_position["last_price"].to_numpy()
    first = group_starts(by_position["position_code"].to_numpy())
    left = np.roll(after, 1)  # what the position's previous event left
    left[first] = [_checkpoint_value(opening.get(key)) for key in zip(by_position["investor_id"].to_numpy()[first],
                                                                      by_position["stock_symbol"].to_numpy()[first])]
    own, through_actions = after - before, before - left  # through_actions: 0 unless an action came in between

    def by_trade(values):
        return pd.Series(values, index=by_position["txn_id"].to_numpy()).reindex(trades["txn_id"]).to_numpy()

    own, through_actions = by_trade(own), by_trade(through_actions)
    running = pd.Series(own + through_actions).groupby(trades["investor_id"].to_numpy()).cumsum().to_numpy() - own
    return trades["investor_id"].map(opening_values(opening)).fillna(0).to_numpy() + running


def _checkpoint_value(checkpoint):
    """A position's value at its opening checkpoint (0.0: none), at its last trade price."""
    return 0.0 if checkpoint is None else checkpoint.quantity * float(checkpoint.last_trade_price)


def opening_values(opening):
    """Each investor's portfolio value at its opening checkpoints (positions at their last trade price), by
    investor_id."""
    values = {}
    for (investor_id, _), checkpoint in opening.items():
        values[investor_id] = values.get(investor_id, 0.0) + _checkpoint_value(checkpoint)
    return pd.Series(values, dtype=float)


def off_market_price_alerts(trades, closes):
    """OFF_MARKET_PRICE: the price more than OFF_MARKET_PRICE_THRESHOLD away from that day's close as traded
    (closes: read_closes' frame; a trade and the close of its day are in the same terms, whatever split came
    later)."""
    checked = trades.loc[trades["checked"]].merge(closes, how="inner", on=["stock_symbol", "day"])
    deviation = (checked["price"] / checked["close_as_traded"].astype(float) - 1).to_numpy()
    flagged = checked.loc[np.abs(deviation) > constants.OFF_MARKET_PRICE_THRESHOLD]
    deviation = deviation[np.abs(deviation) > constants.OFF_MARKET_PRICE_THRESHOLD]
    details = [f"{_trade_text(row)} is {abs(d):.1%} {'above' if d > 0 else 'below'} the "
               f"{pd.Timestamp(row.day):%Y-%m-%d} close of "
               f"{money(row.close_as_traded)} (threshold {constants.OFF_MARKET_PRICE_THRESHOLD:.0%})"
               for row, d in zip(flagged.itertuples(), deviation)]
    severity = np.where(np.abs(deviation) >= constants.OFF_MARKET_PRICE_HIGH, "HIGH", "MEDIUM")
    return _alerts("OFF_MARKET_PRICE", flagged, severity, np.abs(deviation), constants.OFF_MARKET_PRICE_THRESHOLD,
                   details)


def wash_trade_alerts(trades, activity, year_closes, splits=None, last_day=None):
    """WASH_TRADE: a trade that, with an earlier opposite trade of the same investor, symbol and quantity at most
    WASH_TRADE_WINDOW_MINUTES before, buys and sells at no real price change: prices within the wash tolerance
    (wash_tolerances; year_closes: a function returning the closes it needs) of each other. Across a split
    (splits: closes.read_splits) the earlier leg's quantity and price are taken in the later leg's terms. One alert
    per later leg: its nearest pair (difference / tolerance). last_day: see split_factors."""
    pairs = reversing_pairs(trades, constants.WASH_TRADE_WINDOW_MINUTES * 60, splits, last_day)
    if pairs.empty:
        return pd.DataFrame(columns=ALERT_COLUMNS)
    other_price = (pairs["other_price"] * pairs["split_factor"] / pairs["other_split_factor"]).to_numpy()
    difference = np.abs(pairs["price"].to_numpy() - other_price)
    pairs = pairs.assign(spread=difference / other_price, **wash_tolerances(pairs, activity, year_closes(),
                                                                            other_price))
    near = pairs.loc[difference <= pairs["tolerance"].to_numpy() * other_price + 1e-9]
    nearest = near.assign(ratio=near["spread"] / near["tolerance"]).sort_values(
        ["txn_id", "ratio", "other_txn_id"]).drop_duplicates("txn_id")
    details = [_wash_trade_details(row, _other_leg_price(row, splits)) for row in nearest.itertuples()]
    return _alerts("WASH_TRADE", nearest, "HIGH", nearest["spread"], nearest["tolerance"], details)


def wash_tolerances(pairs, activity, daily_closes, other_price):
    """Per pair of reversing_pairs: the symbol's annual volatility in the year before the later leg's day (NaN:
    too few closes, WASH_TRADE_DEFAULT_VOLATILITY is used), its expected random move over the gap between the legs
    (a fraction: daily volatility x sqrt(gap / TRADING_SECONDS_PER_DAY)), the investor's other trades in the
    BURST window up to the later leg (at least 1: the earlier leg), and the tolerance (a fraction of the earlier
    leg's price): the larger of WASH_TRADE_PRICE_TICK and WASH_TRADE_MOVE_SHARE x the expected move / those other
    trades, since each of them is a chance of a coincidental match."""
    volatility = symbol_volatilities(daily_closes, pairs["stock_symbol"], pairs["day"])
    gap = (pairs["seconds"] - pairs["other_seconds"]).to_numpy()
    daily = np.where(np.isnan(volatility), constants.WASH_TRADE_DEFAULT_VOLATILITY, volatility) / np.sqrt(
        constants.TRADING_DAYS_PER_YEAR)
    move = daily * np.sqrt(gap / constants.TRADING_SECONDS_PER_DAY)
    others = np.maximum(1, activity.count[pairs["row"].to_numpy()] - 1)
    band = constants.WASH_TRADE_MOVE_SHARE * move / others
    return {"volatility": volatility, "gap": gap, "move": move, "others": others, "band": band,
            "tolerance": np.maximum(band, constants.WASH_TRADE_PRICE_TICK / other_price)}


def symbol_volatilities(daily_closes, symbols, days):
    """Per (symbol, day): closes.annual_volatility of the symbol's closes in the VOLATILITY_CALENDAR_DAYS before
    the day, NaN with fewer than WASH_TRADE_MIN_CLOSES of them (the same for a trade whatever else a run read)."""
    keys = pd.DataFrame({"stock_symbol": np.asarray(symbols), "day": np.asarray(days).astype("datetime64[D]")})
    unique = keys.drop_duplicates(ignore_index=True)
    series = {symbol: (group["day"].to_numpy().astype("datetime64[D]"), group["close_price"].to_numpy(dtype=float))
              for symbol, group in daily_closes.groupby("stock_symbol")}
    unique["volatility"] = [_volatility_before(series.get(symbol), day)
                            for symbol, day in zip(unique["stock_symbol"], unique["day"].to_numpy())]
    return keys.merge(unique, how="left", on=["stock_symbol", "day"])["volatility"].to_numpy(dtype=float)


def _volatility_before(series, day):
    if series is None:
        return np.nan
    days, prices = series
    window = prices[np.searchsorted(days, day - VOLATILITY_CALENDAR_DAYS):np.searchsorted(days, day)]
    return closes.annual_volatility(window) if len(window) >= constants.WASH_TRADE_MIN_CLOSES else np.nan


def _wash_trade_details(row, other):
    return (f"{_trade_text(row)} reverses {row.other_txn_ref} at {money(row.other_price)}"
            f"{_split_adjusted_text(row.other_price, other)}, {_duration_text(row.gap)} earlier: same quantity, "
            f"prices {money(abs(ledger.to_decimal(row.price) - other))} ({row.spread:.4%}) apart, within "
            f"{_wash_tolerance_text(row)}")


def _wash_tolerance_text(row):
    """Why the tolerance is what it is: the expected move it comes from, or the one-cent floor."""
    others = (f" / {row.others}, the investor's other trades in the {constants.BURST_WINDOW_MINUTES} min up to it"
              if row.others > 1 else "")
    volatility = (f"annual volatility {row.volatility:.0%}" if not np.isnan(row.volatility) else
                  f"default annual volatility {constants.WASH_TRADE_DEFAULT_VOLATILITY:.0%}: fewer than "
                  f"{constants.WASH_TRADE_MIN_CLOSES} closes in the year before")
    band = (f"{constants.WASH_TRADE_MOVE_SHARE:g} × the {row.move:.3%} expected move of {row.stock_symbol} over "
            f"{_duration_text(row.gap)}{others} ({volatility})")
    if row.band >= row.tolerance:
        return f"{row.band:.3%} = {band}"
    return f"one cent ({money(constants.WASH_TRADE_PRICE_TICK)}), more than {row.band:.3%} = {band}"


def _duration_text(seconds):
    """40 s, 2 min, 2 min 5 s."""
    minutes, rest = divmod(int(seconds), 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min" + (f" {rest} s" if rest else "")


def _other_leg_price(row, splits):
    """The earlier leg's price (Decimal) in the terms of the later leg's day."""
    factor = closes.split_factor(splits or {}, row.stock_symbol, pd.Timestamp(row.other_seconds, unit="s"),
                                 pd.Timestamp(row.seconds, unit="s"))
    return closes.adjusted_price(row.other_price, factor)


def _split_adjusted_text(price, adjusted):
    return "" if adjusted == ledger.to_decimal(price) else f" ({money(adjusted)} split-adjusted)"


def split_factors(trades, splits, last_day=None):
    """Per trade, the product (float) of the values of its symbol's splits with its day < ex_date <= last_day
    (none: the last trade's day): its price divided by it, or its quantity multiplied by it, is in the terms of
    that day."""
    factors = np.ones(len(trades))
    if not splits or trades.empty:
        return factors
    last_day = trades["day"].max() if last_day is None else last_day
    symbols, days = trades["stock_symbol"].to_numpy(), trades["day"].to_numpy()
    for symbol in set(splits) & set(symbols.tolist()):
        for ex_date, value in splits[symbol]:
            if np.datetime64(ex_date, "D") <= last_day:
                factors[(symbols == symbol) & (days < np.datetime64(ex_date, "D"))] *= float(value)
    return factors


def reversing_pairs(trades, window_seconds, splits=None, last_day=None):
    """Each checked trade with every earlier opposite trade (BUY for a SELL, SELL for a BUY) of the same
    investor, symbol and quantity (in the same terms across a split: `lot`) at most window_seconds before it;
    that trade's columns are prefixed other_. row: the later trade's row in `trades`; split_factor: see
    split_factors (to last_day)."""
    factors = split_factors(trades, splits, last_day)
    lots = trades["quantity"] if (factors == 1).all() else np.round(trades["quantity"] * factors, 6)
    legs = trades.assign(row=np.arange(len(trades)), split_factor=factors, lot=lots)
    order, groups = leg_order(legs)
    later, earlier = earlier_rows_within(groups, legs["seconds"].to_numpy()[order], window_seconds)
    later, earlier = order[later], order[earlier]  # rows of legs
    sides = legs["txn_type"].to_numpy()
    keep = legs["checked"].to_numpy()[later] & (sides[later] != sides[earlier])
    other = legs.iloc[earlier[keep]][["seconds", "txn_id", "txn_ref", "price", "split_factor"]]
    return pd.concat([legs.iloc[later[keep]].reset_index(drop=True),
                      other.add_prefix("other_").reset_index(drop=True)], axis=1)


def leg_order(legs):
    """The order of the legs by investor, symbol, lot, time and txn_id (a sort of their values alone, not of the
    frame), and in that order each leg's group code: one per investor, symbol and lot."""
    keys = [legs["investor_id"].to_numpy(), pd.factorize(legs["stock_symbol"])[0], legs["lot"].to_numpy()]
    order = np.lexsort([legs["txn_id"].to_numpy(), legs["seconds"].to_numpy()] + keys[::-1])  # the last key first
    return order, sorted_group_codes(*(key[order] for key in keys))


def earlier_rows_within(group_codes, seconds, window_seconds):
    """For rows sorted by (group, time): every (later row, earlier row) pair of one group at most window_seconds
    apart, as two index arrays (memory: one entry per pair)."""
    key = group_codes.astype(np.int64) * GROUP_STRIDE + seconds
    rows = np.arange(len(key))
    counts = rows - np.searchsorted(key, key - window_seconds, side="left")
    later = np.repeat(rows, counts)
    back = np.arange(len(later)) - np.repeat(np.cumsum(counts) - counts, counts) + 1  # 1 .. count per later row
    return later, later - back


def round_trip_alerts(trades, by_position):
    """ROUND_TRIP: the close of a position opened from flat at most ROUND_TRIP_MAX_HOLD_MINUTES before, when the
    quick round trips in that position on that trading day so far reach the limit: the larger of
    ROUND_TRIP_MIN_COUNT and ROUND_TRIP_USUAL_MULTIPLE x the number the investor's usual rate expects (the share of
    its previous trades that closed a quick round trip x the position's trades that day so far)."""
    quick, hold = quick_round_trips(by_position)
    position_days = by_position.groupby(["position_code", "day"], sort=False).ngroup().to_numpy()
    count = pd.Series(quick).groupby(position_days).cumsum().to_numpy()
    trades_that_day = pd.Series(quick).groupby(position_days).cumcount().to_numpy() + 1
    rate = usual_round_trip_rate(trades, by_position, quick, position_days)
    limit = np.fmax(constants.ROUND_TRIP_MIN_COUNT, constants.ROUND_TRIP_USUAL_MULTIPLE * rate * trades_that_day)
    hit = quick & (count >= limit) & by_position["checked"].to_numpy()
    flagged = by_position.loc[hit].assign(hold=hold[hit], round_trips=count[hit], limit=limit[hit], rate=rate[hit],
                                          trades_that_day=trades_that_day[hit])
    details = [_round_trip_details(row) for row in flagged.itertuples()]
    return _alerts("ROUND_TRIP", flagged, "MEDIUM", flagged["round_trips"], flagged["limit"], details)


def quick_round_trips(by_position):
    """Per row of position_states: does it close to flat a position opened from flat at most
    ROUND_TRIP_MAX_HOLD_MINUTES before, and the seconds since that opening (NaN: no opening seen)."""
    applied, before, after = (by_position[column] for column in ("applied", "holding_before", "holding_after"))
    opened = applied & (before == 0) & (after > 0)
    closed = applied & (before > 0) & (after == 0)
    hold = (by_position["seconds"] - by_position["seconds"].where(opened).groupby(
        by_position["position_code"]).ffill()).to_numpy()
    return (closed.to_numpy() & (hold <= constants.ROUND_TRIP_MAX_HOLD_MINUTES * 60)), hold


def usual_round_trip_rate(trades, by_position, quick, position_days):
    """Per row of position_states: the share of the investor's previous SURVEILLANCE_BASELINE_TRADES trades
    (`trades` in replay order) that closed a quick round trip, leaving out those of the row's own position and day
    (a day of round trips never raises its own baseline); NaN with fewer than SURVEILLANCE_BASELINE_MIN_TRADES
    left."""
    rows = by_position["row"].to_numpy()
    in_replay_order = np.zeros(len(rows), dtype=np.int64)
    in_replay_order[rows] = quick
    sums, counts = previous_sums(in_replay_order, trades["investor_id"].to_numpy(),
                                 constants.SURVEILLANCE_BASELINE_TRADES)
    same_sums, same_counts = same_day_predecessors(rows, quick, position_days, rows - counts[rows])
    left = counts[rows] - same_counts
    return np.where(left >= constants.SURVEILLANCE_BASELINE_MIN_TRADES,
                    (sums[rows] - same_sums) / np.maximum(left, 1), np.nan)


def same_day_predecessors(rows, quick, position_days, first):
    """Per row of position_states (replay rows `rows`, position-day codes ascending): how many of its
    position-day's earlier trades have a replay row >= first, and how many of those are `quick`."""
    stride = len(rows) + 1
    key = position_days.astype(np.int64) * stride + rows
    low = np.searchsorted(key, position_days.astype(np.int64) * stride + first, side="left")
    cumulative = np.concatenate([[0], np.cumsum(quick.astype(np.int64))])
    here = np.arange(len(rows))
    return cumulative[here] - cumulative[low], here - low


def _round_trip_details(row):
    return (f"{_trade_text(row)} closes a position opened {row.hold / 60:.0f} min earlier: round trip number "
            f"{row.round_trips} in {row.stock_symbol} of at most {constants.ROUND_TRIP_MAX_HOLD_MINUTES} min on "
            f"{pd.Timestamp(row.day):%Y-%m-%d} ({_round_trip_limit_text(row)})")


def _round_trip_limit_text(row):
    if np.isnan(row.rate):
        return (f"limit {constants.ROUND_TRIP_MIN_COUNT}, the floor: fewer than "
                f"{constants.SURVEILLANCE_BASELINE_MIN_TRADES} earlier trades to know the investor's usual rate")
    expected = (f"the {row.rate * row.trades_that_day:.2f} that the investor's usual rate ({row.rate:.1%} of its "
                f"trades close a quick round trip) expects in its {row.trades_that_day} {row.stock_symbol} trades "
                f"that day")
    if row.limit > constants.ROUND_TRIP_MIN_COUNT:
        return f"limit {row.limit:.2f} = {constants.ROUND_TRIP_USUAL_MULTIPLE:g} × {expected}"
    return f"limit {constants.ROUND_TRIP_MIN_COUNT}, the floor; {constants.ROUND_TRIP_USUAL_MULTIPLE:g} × {expected}"


class Activity(NamedTuple):
    """Per trade (trades in replay order): its investor's trades in the BURST window ending at it, itself
    included, and the row of the investor's first trade."""
    count: np.ndarray
    first: np.ndarray


def investor_activity(trades):
    """The Activity of trades in replay order."""
    codes = trades["investor_id"].to_numpy()
    return Activity(trailing_counts(codes, trades["seconds"].to_numpy(), constants.BURST_WINDOW_MINUTES * 60),
                    first_rows(codes))


def usual_counts(activity, rows):
    """The investor's usual count in a BURST window before each of `rows`: the median count of its previous
    SURVEILLANCE_BASELINE_TRADES trades that are outside the row's own window (so a burst never raises its own
    baseline); NaN with fewer than SURVEILLANCE_BASELINE_MIN_TRADES of them."""
    lookback = constants.SURVEILLANCE_BASELINE_TRADES
    first = np.maximum(activity.first[rows], rows - lookback)
    end = np.maximum(rows - activity.count[rows] + 1, first)  # the first row of the row's own window
    usual = np.full(len(rows), np.nan)
    for begin, window in previous_windows(activity.count.astype(float), first, end, lookback):
        usual[begin:begin + len(window)] = _sorted_median(window)
    usual[end - first < constants.SURVEILLANCE_BASELINE_MIN_TRADES] = np.nan
    return usual


def burst_alerts(trades, activity):
    """BURST: the trade that takes its investor's trades within BURST_WINDOW_MINUTES over the limit: the larger of
    BURST_MAX_TRADES and BURST_USUAL_MULTIPLE x the investor's usual count in such a window (usual_counts). One
    alert per burst: only when the trade before was not over its own limit."""
    limit, usual = burst_limits(activity)
    over = activity.count > limit
    hit = over & ~previous_in_group(over, trades["investor_id"].to_numpy(), False) & trades["checked"].to_numpy()
    flagged = trades.loc[hit].assign(trades_in_window=activity.count[hit], limit=limit[hit], usual=usual[hit])
    details = [f"{_trade_text(row)} is investor {row.investor_id}'s {_ordinal(row.trades_in_window)} trade within "
               f"{constants.BURST_WINDOW_MINUTES} min ({_burst_limit_text(row)})" for row in flagged.itertuples()]
    return _alerts("BURST", flagged, "LOW", flagged["trades_in_window"], flagged["limit"], details)


def burst_limits(activity):
    """Per trade: the BURST limit, and the investor's usual count where the floor alone is exceeded (else NaN)."""
    limit = np.full(len(activity.count), float(constants.BURST_MAX_TRADES))
    usual = np.full(len(activity.count), np.nan)
    rows = np.flatnonzero(activity.count > constants.BURST_MAX_TRADES)
    usual[rows] = usual_counts(activity, rows)
    limit[rows] = np.fmax(limit[rows], constants.BURST_USUAL_MULTIPLE * usual[rows])
    return limit, usual


def _burst_limit_text(row):
    if np.isnan(row.usual):
        return (f"more than {constants.BURST_MAX_TRADES}, the floor: fewer than "
                f"{constants.SURVEILLANCE_BASELINE_MIN_TRADES} earlier trades to know the investor's usual count")
    usual = f"the investor's usual {row.usual:g} in {constants.BURST_WINDOW_MINUTES} min"
    if row.limit > constants.BURST_MAX_TRADES:
        return f"more than {row.limit:g} = {constants.BURST_USUAL_MULTIPLE:g} × {usual}"
    return f"more than {constants.BURST_MAX_TRADES}, the floor; {constants.BURST_USUAL_MULTIPLE:g} × {usual}"


def _ordinal(number):
    """1st, 2nd, 3rd, 11th, 21st."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def detect_trade_alerts(trades, opening, closes, splits=None, year_closes=None, last_day=None):
    """Every trade-level alert for the checked trades (in replay order), as a DataFrame of ALERT_COLUMNS (pure: no
    database); closes: read_closes' frame of the checked days at least, splits: read_splits' (none: no split),
    year_closes: a function that returns read_closes' frame from VOLATILITY_CALENDAR_DAYS before the first checked
    day, called only when a WASH_TRADE pair needs a volatility (none: `closes` holds that year); last_day: the day
    whose terms WASH_TRADE compares split legs in (none: the last trade's; a slice of a full check: the full's)."""
    if trades.empty:
        return pd.DataFrame(columns=ALERT_COLUMNS)
    by_position = position_states(trades, opening, action_events.split_events(splits or {}))
    activity = investor_activity(trades)
    found = [large_trade_alerts(trades, by_position, opening), off_market_price_alerts(trades, closes),
             wash_trade_alerts(trades, activity, year_closes or (lambda: closes), splits, last_day),
             round_trip_alerts(trades, by_position), burst_alerts(trades, activity)]
    return pd.concat([frame for frame in found if not frame.empty] or [found[0]], ignore_index=True)


def evaluate_alerts(found, truth):
    """Recall and precision per planted rule, against generate_dummy_data's ground truth (txn_ref, rule,
    anomaly_id). An anomaly counts as detected when an alert of its rule names one of its trades (a wash trade,
    round trip or burst is several trades); an alert is true when its trade belongs to an anomaly of its rule."""
    rows = []
    for rule in TRADE_RULES:
        planted = truth.loc[truth["rule"] == rule]
        raised = found.loc[found["rule"] == rule, "txn_ref"]
        anomalies = planted["anomaly_id"].nunique()
        detected = planted.loc[planted["txn_ref"].isin(raised), "anomaly_id"].nunique()
        true_alerts = int(raised.isin(planted["txn_ref"]).sum())
        rows.append({"rule": rule, "anomalies": anomalies, "detected": detected,
                     "recall": detected / anomalies if anomalies else float("nan"), "alerts": len(raised),
                     "true_alerts": true_alerts,
                     "precision": true_alerts / len(raised) if len(raised) else float("nan")})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- position level

SECTOR_WEIGHTS_SQL = """
WITH open_positions AS (
    SELECT p.investor_id, s.sector, p.weight  -- weight: share of the investor's market value, 0..1
    FROM portfolios p
    JOIN stocks s ON s.stock_symbol = p.stock_symbol
    WHERE p.quantity > 0 AND p.weight IS NOT NULL {investors}
),
sector_weights AS (
    SELECT investor_id, sector, SUM(weight) AS sector_weight
    FROM open_positions
    GROUP BY investor_id, sector
)
SELECT investor_id, sector, sector_weight
FROM sector_weights
WHERE sector_weight > :limit
ORDER BY investor_id, sector
"""


def sector_concentration_alerts(connection, investor_ids=None):
    """SECTOR_CONCENTRATION: one sector above SECTOR_CONCENTRATION_LIMIT of an investor's market value (of these
    investors only, when given)."""
    limit = constants.SECTOR_CONCENTRATION_LIMIT
    if investor_ids is None:
        rows = connection.execute(text(SECTOR_WEIGHTS_SQL.format(investors="")), {"limit": limit}).all()
    else:
        statement = text(SECTOR_WEIGHTS_SQL.format(investors="AND p.investor_id IN :ids")).bindparams(
            bindparam("ids", expanding=True))
        rows = []
        for start in range(0, len(investor_ids), ID_SLICE):
            rows += connection.execute(statement, {"limit": limit, "ids": investor_ids[start:start + ID_SLICE]})
    return pd.DataFrame([
        {"alert_key": f"SECTOR_CONCENTRATION:{investor_id}:{sector}", "rule": "SECTOR_CONCENTRATION",
         "severity": "HIGH" if float(weight) >= constants.SECTOR_CONCENTRATION_HIGH else "MEDIUM",
         "investor_id": investor_id, "stock_symbol": None, "txn_ref": None, "metric": float(weight),
         "threshold": limit,
         "details": f"{sector} is {float(weight):.1%} of investor {investor_id}'s market value (limit {limit:.0%})"}
        for investor_id, sector, weight in rows], columns=["alert_key"] + ALERT_COLUMNS)


# ---------------------------------------------------------------------------------------------- writing

def write_alerts(connection, candidates, now):
    """Insert the trade alert candidates whose alert_key is not stored yet; return new alerts by rule."""
    keys = candidates["alert_key"].tolist()
    stored = set()
    for start in range(0, len(keys), ID_SLICE):
        stored.update(connection.execute(select(alerts.c.alert_key).where(
            alerts.c.alert_key.in_(keys[start:start + ID_SLICE]))).scalars())
    new = candidates.loc[~candidates["alert_key"].isin(stored)].drop_duplicates("alert_key")
    records = alert_records(new, now)
    if records:
        connection.execute(alerts.insert(), records)
    return new["rule"].value_counts().to_dict()


def alert_records(candidates, now):
    """Alert candidates (a DataFrame) as rows of alerts, detected now."""
    return [{**record, "investor_id": int(record["investor_id"]), "detected_at": now,
             "metric": _decimal(record["metric"]), "threshold": _decimal(record["threshold"])}
            for record in candidates.to_dict("records")]


def sync_sector_alerts(connection, now, investor_ids=None, resolver=STAGE_NAME):
    """One open SECTOR_CONCENTRATION alert per sector above the limit (of these investors, when given); the alert
    of a sector no longer above it is resolved (by `resolver`) and retired (alerts.py). Returns alerts.Synced."""
    wanted = alert_records(sector_concentration_alerts(connection, investor_ids), now)
    return alerts_lifecycle.sync_condition_alerts(connection, "SECTOR_CONCENTRATION", wanted, now, investor_ids,
                                                  resolver=resolver, cleared_note=SECTOR_CLEARED)


def _decimal(value):
    """A metric as DECIMAL(24, 6)."""
    return Decimal(f"{float(value):.6f}")


# ---------------------------------------------------------------------------------------------- the stage

class TradeCheck(NamedTuple):
    """What check_trades found and read."""
    found: pd.DataFrame  # alert candidates: alert_key and ALERT_COLUMNS
    trades_checked: int  # new trades and the earlier trades after each investor's first new one (late trades)
    context_trades: int  # history read and not checked
    investors: int  # investors with checked trades
    new_trades: int = 0  # trades of the batches being surveilled


def check_trades(connection, state, full=False):
    """Check the trades of the pending batches with their history (every trade with full=True or on the first
    run); find alerts."""
    new = count_pending(connection, state)
    check = check_every_trade(connection) if full or state.first_run else check_new_trades(connection, state)
    logger.info("checked %s (%d new) with %s of history; %s", counted(check.trades_checked, "trade"), new,
                counted(check.context_trades, "trade"), counted(len(check.found), "candidate alert"))
    return check._replace(new_trades=new)


def check_new_trades(connection, state):
    """Check each investor's trades from its first pending one with their history and the positions' opening
    checkpoints (read_context)."""
    floors = read_history_floors(connection) if state.pending else {}
    if not floors:
        return TradeCheck(no_alerts(), 0, 0, 0)
    trades, opening = read_context(connection, floors, min(first_time for first_time, _ in floors.values()))
    checked = trades["checked"].to_numpy()
    return TradeCheck(checked_trade_alerts(connection, trades, opening), int(checked.sum()), int((~checked).sum()),
                      trades.loc[checked, "investor_id"].nunique())


def check_every_trade(connection):
    """Check every trade, each position from nothing, one slice of investors at a time (investor_slices), cut
    from one read of every trade in investor order (sliced_trades): every rule judges a trade by its own investor's
    trades alone, so the slices find the alerts of one check of every trade in a fraction of its memory. The
    closes and splits are those of the whole history, read once."""
    investors = pd.DataFrame(connection.execute(text(INVESTOR_TRADES_SQL)).all(),
                             columns=["investor_id", "trades", "first_time", "last_time"])
    if investors.empty:
        return TradeCheck(no_alerts(), 0, 0, 0)
    first_day, last_day = closes_days(investors)
    daily_closes = closes.read_closes(connection, last_day=last_day, first_day=first_day)
    splits = closes.read_splits(connection, last_day)
    slices = investor_slices(zip(investors["investor_id"], investors["trades"]), FULL_CHECK_SLICE_TRADES)
    found = [detect_trade_alerts(in_replay_order(trades.assign(checked=True)), {}, daily_closes, splits,
                                 last_day=np.datetime64(last_day, "D"))
             for trades in sliced_trades(connection, slices)]
    candidates = [frame for frame in found if not frame.empty] or [pd.DataFrame(columns=ALERT_COLUMNS)]
    return TradeCheck(keyed_alerts(pd.concat(candidates, ignore_index=True)),
                      int(investors["trades"].sum()), 0, len(investors))


def closes_days(investors):
    """(first day, last day), dates, of the closes that the trades of INVESTOR_TRADES_SQL's investors need: from
    VOLATILITY_CALENDAR_DAYS before their first day (WASH_TRADE's volatility) to their last."""
    first_day = np.datetime64(_datetime(investors["first_time"].min()), "D") - VOLATILITY_CALENDAR_DAYS
    return pd.Timestamp(first_day).date(), _datetime(investors["last_time"].max()).date()


def investor_slices(trade_counts, size):
    """[(first investor_id, last investor_id)] of consecutive investors with at most `size` trades together, or
    one investor alone with more; trade_counts: (investor_id, trades) in investor_id order."""
    slices, total = [], 0
    for investor_id, trades in trade_counts:
        if slices and total + trades <= size:
            slices[-1], total = (slices[-1][0], investor_id), total + trades
        else:
            slices.append((investor_id, investor_id))
            total = trades
    return slices


def no_alerts():
    """No trade alert candidates: an empty frame of alert_key and ALERT_COLUMNS."""
    return pd.DataFrame(columns=["alert_key"] + ALERT_COLUMNS)


def keyed_alerts(found):
    """Trade alert candidates with their alert_key (rule:txn_ref) in front."""
    found.insert(0, "alert_key", found["rule"] + ":" + found["txn_ref"].astype(str))
    return found


def read_checked_closes(connection, trades, days_before=np.timedelta64(0, "D")):
    """The daily closes from `days_before` the first day of the checked trades to their last."""
    days = trades.loc[trades["checked"], "day"].to_numpy().astype("datetime64[D]")
    return closes.read_closes(connection, last_day=pd.Timestamp(days.max()).date(),
                              first_day=pd.Timestamp(days.min() - days_before).date())


def checked_trade_alerts(connection, trades, opening):
    """Trade alert candidates (alert_key and ALERT_COLUMNS) of the checked trades, with the closes of their days,
    those of the year before when a WASH_TRADE pair needs a volatility (a year of closes for every symbol is a
    read a live batch seldom needs), and the splits up to the last trade's day."""
    splits = closes.read_splits(connection, pd.Timestamp(trades["day"].max()).date())
    return keyed_alerts(detect_trade_alerts(trades, opening, read_checked_closes(connection, trades), splits,
                                            lambda: read_checked_closes(connection, trades, VOLATILITY_CALENDAR_DAYS)))


def find_live_alerts(connection, live_batch_id, after_line, through_line, first_new):
    """Trade alert candidates (alert_key and ALERT_COLUMNS) for the trades of lines after_line + 1 ...
    through_line of a live batch (the earliest at first_new, a datetime), checked with their history; reads only
    (live_worker.py writes them, with the investors' sector alerts once their positions are revalued)."""
    pending = {"live_batch_id": live_batch_id, "live_after_line": after_line, "live_through_line": through_line}
    floors = read_history_floors(connection, LIVE_HISTORY_FLOORS_SQL, pending)
    if not floors:
        return no_alerts()
    trades, opening = read_context(connection, floors, first_new)
    return checked_trade_alerts(connection, trades, opening)


def has_pending_batches(engine):
    """Is there a batch to surveil? A look at load_batches before the stage's transaction."""
    with engine.connect() as connection:
        return bool(pending_batches(connection))


def refresh_statistics(engine):
    """Refresh the optimizer's table statistics where a bulk load leaves them stale (MySQL/MariaDB: an index seek
    may turn into a full scan until InnoDB recounts in the background). Its own transaction: ANALYZE TABLE commits
    implicitly."""
    statement = dialects.refresh_statistics_sql(engine.dialect.name)
    if statement:
        with engine.connect() as connection:
            result = connection.execute(text(statement))
            if result.returns_rows:
                result.all()
            connection.commit()


def run_surveillance(engine, full=False):
    """Check new trades (every trade with full=True) and sector weights; write alerts; one transaction, run again
    after a deadlock or a Galera certification failure (db_retry)."""
    return db_retry.with_retries(lambda: _run_surveillance(engine, full), "surveillance")


def _run_surveillance(engine, full):
    started = time.perf_counter()
    if full or has_pending_batches(engine):  # with nothing to check, no statistics to refresh
        refresh_statistics(engine)
    with db_config.stage_transaction(engine, "surveillance") as connection:
        clock = cli.StepClock(logger)
        now = datetime.now().replace(microsecond=0)
        state = read_batch_state(connection, full)
        check = check_trades(connection, state, full)
        clock.lap(f"checked {counted(check.trades_checked, 'trade')}")
        new = write_alerts(connection, check.found, now)
        sectors = sync_sector_alerts(connection, now)
        batches.stamp_batches(connection, state.pending, "surveilled_at", now)
        clock.lap("wrote the alerts and synced the sector alerts")
    return SurveillanceSummary(
        batches=len(state.pending), new_trades=check.new_trades, trades_checked=check.trades_checked,
        context_trades=check.context_trades, investors=check.investors,
        new_alerts={**{rule: int(new.get(rule, 0)) for rule in TRADE_RULES}, "SECTOR_CONCENTRATION": sectors.raised},
        alerts_resolved=sectors.resolved, seconds=time.perf_counter() - started, full=full,
        first_run=state.first_run)


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="re-check every trade instead of only the new ones")
    args = parser.parse_args(argv)
    cli.setup_logging(args)

    def work():
        engine = db_config.get_engine(args.database_url)
        summary = run_surveillance(engine, full=args.full)
        print(summary.line())
        return cli.EXIT_OK

    return cli.run(work, args, "surveillance")


if __name__ == "__main__":
    sys.exit(main())
