"""Bring portfolios, investor_risk and position alerts up to date with the loaded trades.

Fourth stage of the chain (after load_transactions.py, before surveillance and analyze.py). It works in three
steps, each costing what changed since the last run:
- apply: the corporate actions whose ex_date has come (corporate_actions.csv: splits, dividends) and the trades
  of load batches not applied yet are applied to their positions by the ledger (ledger.py, as
  docs/portfolio-math.md describes: fees, weighted average cost or FIFO lots by --cost-method, an oversold SELL
  changes nothing and raises one OVERSELL alert). A late trade or action (one that sorts before what its
  position already applied) makes that position be replayed from its last weekly checkpoint before it.
- revalue and score: the positions and risk scores (docs/risk-scores.md, in SQL) of the investors whose
  positions changed, and of the holders of symbols whose closes changed since the last run.
- performance history: investor_daily and investor_returns (performance.py, docs/performance.md), rebuilt from
  the earliest day that changed for each investor, and new weekdays appended.
`--full` replays every trade, rebuilds the checkpoints, and revalues and scores every investor. Everything one
run writes is committed in one transaction.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from sqlalchemy import and_, bindparam, delete, select, text, tuple_, update

import action_events
import alerts as alerts_lifecycle
import batches
import cli
import closes
import constants
import corporate_actions
import cost_method
import db_config
import db_retry
import dialects
import ledger
import performance
import risk_metrics
from cli import counted
from ledger import MONEY_STEP, PRICE_STEP, ZERO, to_decimal
from schema import (LEDGER_VERSION, alerts, investor_risk, ledger_settings, load_batches, portfolios,
                    position_checkpoints, position_lots, symbol_last_trades, symbol_marks, transactions)
from schema import corporate_actions as corporate_actions_table

logger = logging.getLogger(__name__)

DECIMAL_DIGITS = 40  # Decimal's default 28 cannot round a market value of 10**22 to 6 places; DECIMAL(38, 6) can
ID_SLICE = 500  # ids per IN (...) list
RATIO_STEP = Decimal("0.00000001")
SCORE_STEP = Decimal("0.01")


@dataclass
class UpdateSummary:
    """What one update did."""
    batches_applied: int = 0
    trades_applied: int = 0
    positions_changed: int = 0
    positions_replayed: int = 0
    oversells: int = 0
    investors_scored: int = 0
    alerts_raised: int = 0
    alerts_withdrawn: int = 0  # OVERSELL alerts whose SELL, replayed after a late trade, no longer oversells
    actions_applied: int = 0  # corporate actions that came due
    cost_method: str = cost_method.DEFAULT
    seconds: float = 0.0
    full: bool = False
    first_run: bool = False  # nothing was built before: every trade is new

    def line(self, seconds=True):
        mode = "full replay" if self.full else "first run" if self.first_run else "incremental"
        return (f"update_portfolio ({mode}): {self._what_was_applied()}, "
                f"{counted(self.oversells, 'oversell')} skipped, {counted(self.investors_scored, 'investor')} scored, "
                f"{counted(self.alerts_raised, 'new alert')}"
                + (f", {counted(self.alerts_withdrawn, 'OVERSELL alert')} withdrawn (no longer oversold)"
                   if self.alerts_withdrawn else "")
                + (f", {counted(self.actions_applied, 'corporate action')} applied" if self.actions_applied else "")
                + (", cost method fifo" if self.cost_method == "fifo" else "")
                + (f" ({self.seconds:.2f} s)" if seconds else ""))

    def _what_was_applied(self):
        """The trades and the positions: a replay of all, or what changed."""
        if self.full:
            return (f"{counted(self.trades_applied, 'trade')} replayed into "
                    f"{counted(self.positions_changed, 'position')}, "
                    f"{counted(self.batches_applied, 'new batch', 'new batches')} among them")
        return (f"{counted(self.trades_applied, 'trade')} from "
                f"{counted(self.batches_applied, 'batch', 'batches')} applied; "
                f"{counted(self.positions_changed, 'position')} changed "
                f"({self.positions_replayed} replayed for late trades or actions)")


# ---------------------------------------------------------------------------------------------- reading

def pending_batches(connection):
    """Ids of loaded batches whose trades have not been applied yet."""
    return connection.execute(select(load_batches.c.batch_id).where(and_(
        load_batches.c.status == "loaded", load_batches.c.applied_at.is_(None))).order_by(load_batches.c.batch_id)
    ).scalars().all()


PENDING_RANGE_SQL = ("WHERE t.batch_id BETWEEN :lowest AND :highest AND t.batch_id IN ("
                     "SELECT b.batch_id FROM load_batches b WHERE b.batch_id BETWEEN :lowest AND :highest "
                     "AND b.status = 'loaded' AND b.applied_at IS NULL)")


def new_trades_filter(batch_ids):
    """(WHERE clause over transactions t, its parameters) selecting the trades of these batches: an IN list, or
    for many small batches (the feed) a range of batch ids narrowed to the pending ones."""
    if len(batch_ids) <= ID_SLICE:
        return "WHERE t.batch_id IN :ids", {"ids": list(batch_ids)}
    return PENDING_RANGE_SQL, {"lowest": min(batch_ids), "highest": max(batch_ids)}


def investors_with_new_trades(connection, batch_ids):
    """Ids of the investors that have trades in these batches: a semi-join, which every database reads by the batches'
    trades (for SELECT DISTINCT over a large batch MariaDB walks the position index and looks up every trade: 10
    times slower). A trade's investor is one of investors (a foreign key)."""
    where, params = new_trades_filter(batch_ids)
    statement = text("SELECT i.investor_id FROM investors i "
                     f"WHERE i.investor_id IN (SELECT t.investor_id FROM transactions t {where})")
    if "ids" in params:
        statement = statement.bindparams(bindparam("ids", expanding=True))
    return sorted(connection.execute(statement, params).scalars())


POSITION_COLUMNS = ("investor_id", "stock_symbol", "quantity", "cost_basis", "realized_pnl", "last_txn_time",
                    "last_txn_id", "trade_count", "last_trade_price", "dividend_income", "fees_paid")


def load_positions(connection, investor_ids=None, keys=None, symbols=None, method=cost_method.DEFAULT):
    """The stored positions of these investors, with these keys, or in these symbols (every position with
    none of them), by (investor_id, stock_symbol); with method 'fifo' their open lots too, exactly as their
    latest checkpoint keeps them (position_lots is for readers: SQLite would hand back its decimals as floats)."""
    query = select(*(portfolios.c[column] for column in POSITION_COLUMNS))
    rows = []
    if investor_ids is None and keys is None and symbols is None:
        rows = connection.execute(query).all()
    for condition in _position_conditions(portfolios, investor_ids, keys, symbols):
        rows += connection.execute(query.where(condition))
    positions = {(row[0], row[1]): _stored_position(row, method) for row in rows}
    ledger.mark_rounded(connection, positions.values())  # SQLite may have rounded a state: it is replayed
    if method == "fifo" and positions:
        conditions = list(_position_conditions(position_checkpoints, investor_ids, keys, symbols)) or [
            position_checkpoints.c.investor_id.is_not(None)]
        for condition in conditions:
            for key, checkpoint in ledger.latest_checkpoints(connection, condition).items():
                if key in positions:
                    positions[key].lots = ledger.unpack_lots(checkpoint.lots) or deque()
    return positions


def _position_conditions(table, investor_ids, keys, symbols):
    """WHERE conditions selecting these investors', keys' or symbols' rows of table, ID_SLICE values each."""
    for start in range(0, len(investor_ids or ()), ID_SLICE):
        yield table.c.investor_id.in_(investor_ids[start:start + ID_SLICE])
    for start in range(0, len(keys or ()), ID_SLICE):
        yield tuple_(table.c.investor_id, table.c.stock_symbol).in_(keys[start:start + ID_SLICE])
    for start in range(0, len(symbols or ()), ID_SLICE):
        yield table.c.stock_symbol.in_(symbols[start:start + ID_SLICE])


def _stored_position(row, method):
    (investor_id, symbol, quantity, cost, pnl, last_time, last_id, count, last_price, dividends, fees) = row
    return ledger.Position(investor_id, symbol, quantity, to_decimal(cost), to_decimal(pnl),
                           ledger.normalize_time(last_time), last_id, count, to_decimal(last_price),
                           to_decimal(dividends), to_decimal(fees), deque() if method == "fifo" else None)


# ---------------------------------------------------------------------------------------------- apply

@dataclass
class ApplyResult:
    """What the apply step changed."""
    changed: set  # keys of positions that applied trades, replayed ones included
    replayed: set  # keys of positions replayed for a late trade
    oversells: list
    latest: dict  # stock_symbol: its latest new trade
    trades: int
    alerts_raised: int = 0  # OVERSELL alerts
    alerts_withdrawn: int = 0
    replay_starts: dict = field(default_factory=dict)  # key: the checkpoint a replay started from (None: the first)


def apply_new_trades(connection, batch_ids, full, now, rules, replayed=None):
    """Apply the trades of these batches (every trade with full=True) and the corporate actions of `rules`
    (ledger.Rules) to their positions and write positions, checkpoints, the latest trade per symbol and OVERSELL
    alerts; return what changed. replayed: a performance.ReplayWithApply that records the days as the ledger walks."""
    if full:
        stored = load_positions(connection)
        for table in (position_checkpoints, symbol_last_trades, position_lots):
            connection.execute(delete(table))
        positions = {}
        applied = ledger.apply_trades(ledger.stream_trades(connection, bulk=True), positions, rules,
                                      watcher=replayed)
        _forget_positions_without_trades(connection, set(stored) - set(positions))
        return write_applied(connection, applied, positions, {key: None for key in positions}, now, stored,
                             sync_alerts=False)
    if not batch_ids:
        return ApplyResult(set(), set(), [], {}, 0)
    return apply_selected_trades(connection, new_trades_filter(batch_ids), now,
                                 investor_ids=investors_with_new_trades(connection, batch_ids), rules=rules,
                                 replayed=replayed, bulk=True, sync_alerts=False)


def apply_selected_trades(connection, trade_filter, now, investor_ids=None, keys=None, rules=None, replayed=None,
                          bulk=False, sync_alerts=True):
    """Apply the new trades that trade_filter selects ((WHERE clause over transactions t, its parameters), all of
    them trades of these investors, or of the positions with these keys) to their positions, with the corporate
    actions of `rules` (default: those in effect on now's day, by the recorded cost method), replaying positions
    where one is late; write as apply_new_trades does. bulk: trade_filter selects whole batches (stream_trades).
    sync_alerts=False: leave the OVERSELL alerts to the caller (sync_oversell_alerts with the returned result)."""
    rules = rules or ledger_rules(connection, now.date())
    positions = load_positions(connection, investor_ids, keys, method=rules.method)
    applied = ledger.apply_trades(ledger.stream_trades(connection, *trade_filter, bulk=bulk), positions, rules,
                                  watcher=replayed)
    replay_starts = replay_late_positions(connection, applied, positions, rules)
    return write_applied(connection, applied, positions, replay_starts, now, sync_alerts=sync_alerts)


def apply_due_actions(connection, now, rules, horizon):
    """Apply the corporate actions not applied yet whose ex_date has come (up to horizon) to the positions of
    their symbols: a position whose history ends before the earliest of them simply takes them, one that traded
    after it is replayed from its last checkpoint before; stamp them applied. Returns (ApplyResult, actions)."""
    due = due_actions(connection, horizon)
    if not due:
        return ApplyResult(set(), set(), [], {}, 0), 0
    pending, earliest = set(due), {}  # earliest: stock_symbol -> its first due action (rules keep them in order)
    for symbol, events in rules.actions.items():
        due_events = [event for _, event in events if (symbol, event.ex_date, ledger.action_kind(event)) in pending]
        if due_events:
            earliest[symbol] = due_events[0]
    positions = load_positions(connection, symbols=sorted(earliest), method=rules.method)
    following = [key for key, position in positions.items() if position.follows(earliest[key[1]])]
    applied = ledger.apply_trades([], positions, rules, others=following)
    applied.late.update({key: earliest[key[1]] for key in set(positions) - set(following)})
    replay_starts = replay_late_positions(connection, applied, positions, rules, applied_only=True)
    result = write_applied(connection, applied, positions, replay_starts, now, sync_alerts=False)
    stamp_actions(connection, due, now)
    if positions:
        logger.info("%s came due: %d positions took them, %d were replayed", counted(len(due), "corporate action"),
                    len(result.changed - result.replayed), len(result.replayed))
    else:  # the first update: the new trades' replay applies them
        logger.info("%s came due before any position of their symbols was built: the new trades apply them",
                    counted(len(due), "corporate action"))
    return result, len(due)


def due_actions(connection, horizon):
    """(stock_symbol, ex_date, action) of the corporate actions not applied yet with ex_date up to horizon."""
    table = corporate_actions_table
    return [(symbol, corporate_actions.as_date(ex_date), action) for symbol, ex_date, action in connection.execute(
        select(table.c.stock_symbol, table.c.ex_date, table.c.action).where(and_(
            table.c.applied_at.is_(None), table.c.ex_date <= horizon)))]


def ledger_rules(connection, horizon, requested=None, full=False):
    """The ledger.Rules of an apply: the cost method (cost_method.method_for_update, recorded when new) and the
    corporate actions with ex_date up to horizon (action_events)."""
    method = cost_method.method_for_update(connection, requested, full, record=True)
    return action_events.read_rules(connection, horizon, method)


def write_applied(connection, applied, positions, replay_starts, now, stored=None, sync_alerts=True):
    """Write what apply_trades changed: positions (and their FIFO lots), checkpoints, latest trades, OVERSELL
    alerts (unless sync_alerts=False). stored: the positions as read before a full replay (one that ends as stored
    is not rewritten)."""
    write_positions(connection, positions, applied.changed, now, stored)
    write_lots(connection, positions, applied.changed)
    ledger.write_checkpoints(connection, applied.checkpoints)
    write_latest_trades(connection, applied.latest)
    alerts_raised, alerts_withdrawn = (sync_oversell_alerts(connection, applied.oversells, replay_starts, now)
                                       if sync_alerts else (0, 0))
    return ApplyResult(applied.changed, set(applied.late), applied.oversells, applied.latest, applied.trades,
                       alerts_raised, alerts_withdrawn, replay_starts)


def both_steps_oversells(connection, due, applied):
    """(oversells, replay starts) of the due actions' and the new trades' applies together, for one
    sync_oversell_alerts. An oversell the due actions found in a position that the new trades replayed again from
    before it is the new trades' to judge (a late BUY among them may cover it); each position counts as replayed
    from its earlier start."""
    keys = trade_keys(connection, [oversell.txn_id for oversell in due.oversells])
    kept = [oversell for oversell in due.oversells
            if (oversell.investor_id, oversell.stock_symbol) not in applied.replay_starts
            or not _after(applied.replay_starts[(oversell.investor_id, oversell.stock_symbol)], *keys[oversell.txn_id])]
    starts = dict(due.replay_starts)
    for key, start in applied.replay_starts.items():
        starts[key] = start if key not in starts else _earlier(starts[key], start)
    return kept + applied.oversells, starts


def _earlier(first, second):
    """The earlier of two replay starts (a Checkpoint, or None: from the first trade)."""
    if first is None or second is None:
        return None
    return min(first, second, key=lambda checkpoint: (checkpoint.last_txn_time, checkpoint.last_txn_id))


def replay_late_positions(connection, applied, positions, rules, applied_only=False):
    """Replay each position with a late event from its last checkpoint before that event's week, adding the
    results to `applied`; return {key: the checkpoint the replay started from (None: from the first trade)}.
    applied_only: replay the trades of applied batches only (the due actions go before the new trades)."""
    weeks = {key: ledger.week_start(ledger.event_key(event)[0][:10]) for key, event in applied.late.items()}
    found = ledger.last_checkpoints_before(connection, weeks)
    starts = {key: found.get(key) for key in weeks}
    ledger.forget_checkpoints_after(connection, starts)
    for key, checkpoint in starts.items():
        positions[key] = ledger.Position.from_checkpoint(checkpoint) if checkpoint else rules.new_position(key)
    replay = ledger.apply_trades(ledger.trades_after(connection, starts, applied_only), positions, rules,
                                 others=starts)
    if starts:
        logger.info("replayed %d trades of %d positions with a late trade (%d from a checkpoint)", replay.trades,
                    len(starts), sum(checkpoint is not None for checkpoint in starts.values()))
    applied.changed |= replay.changed
    applied.oversells += replay.oversells
    applied.checkpoints += replay.checkpoints
    return starts


# ---------------------------------------------------------------------------------------------- writing state

def position_row(position, now):
    """The portfolios columns that the replay owns."""
    return {
        "investor_id": position.investor_id, "stock_symbol": position.stock_symbol,
        "quantity": position.quantity, "avg_cost": position.avg_cost, "cost_basis": position.cost_basis,
        "realized_pnl": position.realized_pnl, "last_txn_time": datetime.fromisoformat(position.last_txn_time),
        "last_txn_id": position.last_txn_id, "trade_count": position.trade_count,
        "last_trade_price": position.last_trade_price, "dividend_income": position.dividend_income,
        "fees_paid": position.fees_paid, "updated_at": now,
    }


REPLAY_COLUMNS = ("quantity", "avg_cost", "cost_basis", "realized_pnl", "last_txn_time", "last_txn_id",
                  "trade_count", "last_trade_price", "dividend_income", "fees_paid")


def write_positions(connection, positions, keys, now, stored=None):
    """Insert new positions and update changed ones: one upsert, so that MySQL sends many rows per statement
    (an UPDATE per row costs a round trip each). A position that ends as in stored ({key: Position}) is left as it
    is: its updated_at is the last time a column changed (docs/data-model.md)."""
    rows = [position_row(positions[key], now) for key in sorted(keys)
            if not _replayed_as_stored((stored or {}).get(key), positions[key])]
    if rows:
        connection.execute(dialects.upsert(connection, portfolios, [*REPLAY_COLUMNS, "updated_at"]), rows)


def _replayed_as_stored(stored, position):
    """Does a replayed position hold what is stored, in every column the replay owns (REPLAY_COLUMNS)?"""
    if stored is None:
        return False
    before, after = position_row(stored, None), position_row(position, None)
    return all(before[column] == after[column] for column in REPLAY_COLUMNS)


def write_lots(connection, positions, keys):
    """Replace the stored FIFO lots of these positions by their open lots (none under weighted average cost)."""
    keys = sorted(key for key in keys if positions[key].lots is not None)
    for start in range(0, len(keys), ID_SLICE):
        connection.execute(delete(position_lots).where(tuple_(position_lots.c.investor_id, position_lots.c.stock_symbol)
                                                       .in_(keys[start:start + ID_SLICE])))
    rows = [{"investor_id": key[0], "stock_symbol": key[1], "txn_id": lot.txn_id,
             "acquired_at": datetime.fromisoformat(lot.acquired_at), "quantity": lot.quantity,
             "cost_basis": lot.cost_basis, "cost_per_share": (lot.cost_basis / lot.quantity).quantize(PRICE_STEP)}
            for key in keys for lot in positions[key].lots]
    for start in range(0, len(rows), 5_000):
        connection.execute(position_lots.insert(), rows[start:start + 5_000])


def write_latest_trades(connection, latest):
    """Keep symbol_last_trades at the latest trade per symbol (by txn_time, then txn_id): one statement."""
    rows = [{"stock_symbol": symbol, "txn_time": datetime.fromisoformat(trade.txn_time), "txn_id": trade.txn_id,
             "price": trade.price} for symbol, trade in sorted(latest.items())]
    if rows:
        connection.execute(dialects.upsert_if_newer(connection, symbol_last_trades, ("txn_time", "txn_id"),
                                                    ("txn_time", "txn_id", "price")), rows)


STAGE_NAME = "update_portfolio"  # who resolves an alert whose condition this stage sees clear
OVERSELL_CLEARED = "withdrawn: replayed after a late trade or action, the SELL no longer oversells"
STORED_OVERSELLS_SQL = text("""
SELECT a.alert_id, a.alert_key, a.status, a.severity, a.details, a.investor_id, a.stock_symbol, t.txn_time,
       t.txn_id
FROM alerts a
JOIN transactions t ON t.txn_ref = a.txn_ref
WHERE a.rule = 'OVERSELL' AND a.investor_id IN :ids
""").bindparams(bindparam("ids", expanding=True))


def sync_oversell_alerts(connection, oversells, replay_starts, now):
    """Raise one OVERSELL alert per oversold trade not alerted yet, correct the quantity held of those alerted
    already (a late trade before them changes it), and withdraw the alerts of replayed positions whose trade,
    replayed again, no longer oversells (resolved and retired, alerts.py). replay_starts: {key: the checkpoint a
    position was replayed from, None for its first trade}. Returns (new alerts, alerts withdrawn)."""
    refs = txn_refs(connection, [o.txn_id for o in oversells])
    wanted = {f"OVERSELL:{refs[o.txn_id]}": oversell_alert(o, refs[o.txn_id], now) for o in oversells}
    stored = dict(_stored_alert_values(connection, list(wanted)))
    stale = [alert for alert in _replayed_oversell_alerts(connection, replay_starts) if alert.alert_key not in wanted]
    alerts_lifecycle.retire_alerts(connection, stale, now, STAGE_NAME, OVERSELL_CLEARED)
    if stale:
        logger.info("withdrew %d OVERSELL alerts whose SELL no longer oversells: %s", len(stale),
                    ", ".join(alert.alert_key for alert in stale))
    changed = [{"key": key, "threshold": alert["threshold"], "details": alert["details"]}
               for key, alert in wanted.items() if key in stored and stored[key] != alert["details"]]
    if changed:
        connection.execute(update(alerts).where(alerts.c.alert_key == bindparam("key")).values(
            threshold=bindparam("threshold"), details=bindparam("details")), changed)
    new = [alert for key, alert in wanted.items() if key not in stored]
    if new:
        connection.execute(alerts.insert(), new)
    return len(new), len(stale)


def oversell_alert(oversell, txn_ref, now):
    """The OVERSELL alert row of an oversold SELL."""
    return {"alert_key": f"OVERSELL:{txn_ref}", "rule": "OVERSELL", "severity": "HIGH",
            "investor_id": oversell.investor_id, "stock_symbol": oversell.stock_symbol, "txn_ref": txn_ref,
            "detected_at": now, "metric": oversell.quantity, "threshold": oversell.held,
            "details": f"SELL {txn_ref} of {oversell.quantity} {oversell.stock_symbol} by investor "
                       f"{oversell.investor_id} exceeds the {oversell.held} shares held at that time; the trade was "
                       "not applied to the position"}


def _stored_alert_values(connection, keys):
    """(alert_key, details) of the stored alerts with these keys."""
    for start in range(0, len(keys), ID_SLICE):
        yield from connection.execute(select(alerts.c.alert_key, alerts.c.details).where(
            alerts.c.alert_key.in_(keys[start:start + ID_SLICE])))


def _replayed_oversell_alerts(connection, replay_starts):
    """The current OVERSELL alerts (alerts.CurrentAlert) whose trade a replay went over again."""
    investor_ids = sorted({investor_id for investor_id, _ in replay_starts})
    for start in range(0, len(investor_ids), ID_SLICE):
        for row in connection.execute(STORED_OVERSELLS_SQL, {"ids": investor_ids[start:start + ID_SLICE]}):
            position = (row.investor_id, row.stock_symbol)
            if alerts_lifecycle.is_retired(row.alert_key, row.alert_id):
                continue
            if position in replay_starts and _after(replay_starts[position], ledger.normalize_time(row.txn_time),
                                                    row.txn_id):
                yield alerts_lifecycle.CurrentAlert(row.alert_id, row.alert_key, row.status, row.severity,
                                                    row.details)


def _after(checkpoint, txn_time, txn_id):
    return checkpoint is None or (checkpoint.last_txn_time, checkpoint.last_txn_id) < (txn_time, txn_id)


def trade_keys(connection, txn_ids):
    """(txn_time text, txn_id), ledger's order of events, by txn_id."""
    keys = {}
    for start in range(0, len(txn_ids), ID_SLICE):
        keys.update((txn_id, (ledger.normalize_time(txn_time), txn_id)) for txn_id, txn_time in connection.execute(
            select(transactions.c.txn_id, transactions.c.txn_time).where(
                transactions.c.txn_id.in_(txn_ids[start:start + ID_SLICE]))))
    return keys


def txn_refs(connection, txn_ids):
    """txn_ref by txn_id."""
    refs = {}
    for start in range(0, len(txn_ids), ID_SLICE):
        refs.update(connection.execute(select(transactions.c.txn_id, transactions.c.txn_ref).where(
            transactions.c.txn_id.in_(txn_ids[start:start + ID_SLICE]))).all())
    return refs


def _forget_positions_without_trades(connection, keys):
    for investor_id, symbol in keys:
        connection.execute(delete(portfolios).where(and_(
            portfolios.c.investor_id == investor_id, portfolios.c.stock_symbol == symbol)))


# ---------------------------------------------------------------------------------------------- marks

def repriced_symbols(connection, params, full):
    """(symbols whose marks changed since the last update, every symbol with full=True; their new digests;
    the latest trade price of each symbol, divided by the splits since) without reading the closes themselves."""
    splits = closes.read_splits(connection, params["today"])
    trade_prices = {symbol: closes.adjusted_price(price, closes.split_factor(splits, symbol, txn_time, params["today"]))
                    for symbol, txn_time, price in connection.execute(text(
                        "SELECT stock_symbol, txn_time, price FROM symbol_last_trades"))}
    digests = closes.mark_digests(closes.read_fingerprints(connection, params["today"]), trade_prices,
                                  valuation_fingerprint(params))
    stored = dict(connection.execute(select(symbol_marks.c.stock_symbol, symbol_marks.c.closes_digest)).all())
    changed = sorted(symbol for symbol, digest in digests.items() if full or stored.get(symbol) != digest)
    return changed, digests, trade_prices


def write_marks(connection, marks, symbols, now):
    """Store the marks of these symbols; InputError (exit 2) for a split-adjusted last price that a price
    column cannot hold (0 at 4 decimals, or 10^14 and more)."""
    for symbol in symbols:
        price = marks[symbol].last_price
        if price is not None and not 0 < price < ledger.PRICE_LIMIT:
            raise cli.InputError(
                f"{symbol}: its last price, split-adjusted, is {price:,.4f}, which a price column cannot hold "
                "(0.0001 up to 10^14): correct the split (docs/corporate-actions.md, Correcting an action)")
    rows = [{**marks[symbol]._asdict(), "updated_at": now} for symbol in symbols]
    if rows:
        connection.execute(dialects.upsert(connection, symbol_marks, ["last_price", "annual_volatility",
                                                                      "closes_digest", "updated_at"]), rows)


def valuation_fingerprint(params):
    """The scoring parameters as text (today aside: the closes read already stop at today)."""
    return repr(sorted((name, value) for name, value in params.items() if name != "today")) + \
        repr(constants.RISK_LEVEL_FLOORS) + risk_metrics.DEFINITION_VERSION


def holders(connection, symbols):
    """Ids of the investors with a position (open or closed) in these symbols."""
    found = set()
    for start in range(0, len(symbols), ID_SLICE):
        found.update(connection.execute(select(portfolios.c.investor_id).distinct().where(
            portfolios.c.stock_symbol.in_(symbols[start:start + ID_SLICE]))).scalars())
    return found


def all_investors(connection):
    """Ids of every investor with a position."""
    return set(connection.execute(select(portfolios.c.investor_id).distinct()).scalars())


# ---------------------------------------------------------------------------------------------- valuation and risk

# Valuation and scores in SQL, for the investors in :investor_ids; a symbol's last price and volatility are its
# symbol_marks (closes.py). 1.0E0 turns integer division into floating point on every database.
POSITION_RISK_SQL = """
WITH valued AS (
    SELECT p.investor_id, p.stock_symbol, p.quantity, p.cost_basis, m.last_price,
           p.quantity * m.last_price AS market_value,
           COALESCE(m.annual_volatility, 0) AS annual_volatility
    FROM portfolios p
    JOIN symbol_marks m ON m.stock_symbol = p.stock_symbol
    WHERE p.investor_id IN :investor_ids
),
weighted AS (  -- weight: share of the investor's market value, 0..1
    SELECT valued.*,
           market_value - cost_basis AS unrealized_pnl,
           CASE WHEN SUM(market_value) OVER (PARTITION BY investor_id) > 0
                THEN market_value * 1.0E0 / SUM(market_value) OVER (PARTITION BY investor_id) ELSE 0 END AS weight
    FROM valued
),
components AS (  -- each component scaled to 0..1, see constants.py
    SELECT weighted.*,
           CASE WHEN annual_volatility >= :position_volatility_full_at THEN 1
                ELSE annual_volatility / :position_volatility_full_at END AS volatility_share,
           CASE WHEN unrealized_pnl >= 0 OR cost_basis <= 0 THEN 0
                WHEN -unrealized_pnl * 1.0E0 / cost_basis >= :position_loss_full_at THEN 1
                ELSE -unrealized_pnl * 1.0E0 / cost_basis / :position_loss_full_at END AS loss_share
    FROM weighted
)
SELECT investor_id, stock_symbol, last_price, market_value, unrealized_pnl, weight,
       CASE WHEN quantity = 0 THEN 0
            ELSE :position_weight_points * weight
                 + :position_volatility_points * volatility_share
                 + :position_loss_points * loss_share END AS risk_score
FROM components
ORDER BY investor_id, stock_symbol
"""

INVESTOR_RISK_SQL = """
WITH positions AS (
    SELECT p.investor_id, p.quantity, p.market_value, p.cost_basis, p.realized_pnl, p.unrealized_pnl, p.weight,
           p.dividend_income, p.fees_paid,
           s.sector, COALESCE(m.annual_volatility, 0) AS annual_volatility
    FROM portfolios p
    JOIN stocks s ON s.stock_symbol = p.stock_symbol
    LEFT JOIN symbol_marks m ON m.stock_symbol = p.stock_symbol
    WHERE p.investor_id IN :investor_ids
),
sector_weights AS (
    SELECT investor_id, sector, SUM(weight) AS sector_weight
    FROM positions
    GROUP BY investor_id, sector
),
totals AS (
    SELECT investor_id,
           SUM(market_value) AS total_market_value,
           SUM(cost_basis) AS total_cost_basis,
           SUM(realized_pnl) AS realized_pnl,
           SUM(unrealized_pnl) AS unrealized_pnl,
           SUM(dividend_income) AS dividend_income,
           SUM(fees_paid) AS fees_paid,
           SUM(CASE WHEN quantity > 0 THEN 1 ELSE 0 END) AS open_positions,
           MAX(weight) AS top_position_weight,
           SUM(weight * weight) AS hhi,  -- Herfindahl index of the weights, 0..1
           SUM(weight * annual_volatility) AS weighted_volatility
    FROM positions
    GROUP BY investor_id
),
top_sectors AS (
    SELECT investor_id, MAX(sector_weight) AS top_sector_weight
    FROM sector_weights
    GROUP BY investor_id
),
components AS (
    SELECT t.*, ts.top_sector_weight,
           CASE WHEN t.weighted_volatility >= :investor_volatility_full_at THEN 1
                ELSE t.weighted_volatility / :investor_volatility_full_at END AS volatility_share,
           CASE WHEN t.unrealized_pnl >= 0 OR t.total_cost_basis <= 0 THEN 0
                WHEN -t.unrealized_pnl * 1.0E0 / t.total_cost_basis >= :investor_loss_full_at THEN 1
                ELSE -t.unrealized_pnl * 1.0E0 / t.total_cost_basis / :investor_loss_full_at END AS loss_share
    FROM totals t
    JOIN top_sectors ts ON ts.investor_id = t.investor_id
)
SELECT investor_id, total_market_value, total_cost_basis, realized_pnl, unrealized_pnl, open_positions,
       top_position_weight, hhi, top_sector_weight, weighted_volatility,
       :investor_top_weight_points * top_position_weight
       + :investor_hhi_points * hhi
       + :investor_sector_points * CASE WHEN top_sector_weight <= :investor_sector_free_up_to THEN 0
             ELSE (top_sector_weight - :investor_sector_free_up_to) / (1 - :investor_sector_free_up_to) END
       + :investor_volatility_points * volatility_share
       + :investor_loss_points * loss_share AS risk_score,
       dividend_income, fees_paid
FROM components
ORDER BY investor_id
"""


def risk_parameters(today=None):
    """The bound parameters of the risk queries, from constants.py."""
    names = ("position_weight_points", "position_volatility_points", "position_volatility_full_at",
             "position_loss_points", "position_loss_full_at", "investor_top_weight_points", "investor_hhi_points",
             "investor_sector_points", "investor_sector_free_up_to", "investor_volatility_points",
             "investor_volatility_full_at", "investor_loss_points", "investor_loss_full_at")
    params = {name: float(getattr(constants, name.upper())) for name in names}
    params.update(today=today or date.today(), lookback_days=constants.VOLATILITY_LOOKBACK_DAYS,
                  trading_days=constants.TRADING_DAYS_PER_YEAR)
    return params


def risk_level(score):
    """'LOW', 'MEDIUM', 'HIGH' or 'CRITICAL' for a 0..100 score (floors in constants.py)."""
    for level, floor in constants.RISK_LEVEL_FLOORS:
        if score >= floor:
            return level
    return "LOW"


def _rounded(value, step):
    return ZERO.quantize(step) if value is None else to_decimal(value).quantize(step, ROUND_HALF_EVEN)


def _for_investors(sql):
    return text(sql).bindparams(bindparam("investor_ids", expanding=True))


def in_slices(investor_ids):
    """The investor ids, sorted, ID_SLICE at a time."""
    ordered = sorted(investor_ids)
    return [ordered[start:start + ID_SLICE] for start in range(0, len(ordered), ID_SLICE)]


POSITION_VALUE_COLUMNS = ("last_price", "market_value", "unrealized_pnl", "weight", "risk_score", "risk_level")


def revalue_positions(connection, params, now, investor_ids):
    """Write last price, market value, unrealized P&L, weight and risk of these investors' positions; return
    the rows changed."""
    changes = position_value_changes(connection, params, now, investor_ids)
    write_position_values(connection, changes)
    return len(changes)


def position_value_changes(connection, params, now, investor_ids):
    """The rows of these investors' positions whose values (POSITION_VALUE_COLUMNS) differ from the stored ones,
    as write_position_values takes them; reads only."""
    changes = []
    for ids in in_slices(investor_ids):
        stored = {(row.investor_id, row.stock_symbol): row for row in connection.execute(_for_investors(
            f"SELECT investor_id, stock_symbol, {', '.join(POSITION_VALUE_COLUMNS)}, {', '.join(REPLAY_COLUMNS)} "
            "FROM portfolios WHERE investor_id IN :investor_ids"), {"investor_ids": ids})}
        for investor_id, symbol, *figures in connection.execute(_for_investors(POSITION_RISK_SQL),
                                                                {**params, "investor_ids": ids}):
            values, row = _position_values(*figures), stored[(investor_id, symbol)]
            if _differs(tuple(row)[2:2 + len(POSITION_VALUE_COLUMNS)], values):
                changes.append({**_replay_values(row), **dict(zip(POSITION_VALUE_COLUMNS, values)),
                                "investor_id": investor_id, "stock_symbol": symbol, "updated_at": now})
    return changes


def write_position_values(connection, changes):
    """Store position values: an upsert of rows that exist (on MySQL many rows per statement, unlike UPDATE),
    which changes only the value columns."""
    if changes:
        connection.execute(dialects.upsert(connection, portfolios, [*POSITION_VALUE_COLUMNS, "updated_at"]), changes)


def _replay_values(row):
    """The replay columns of a stored portfolios row, typed for writing back."""
    return {"quantity": row.quantity, "avg_cost": to_decimal(row.avg_cost), "cost_basis": to_decimal(row.cost_basis),
            "realized_pnl": to_decimal(row.realized_pnl),
            "last_txn_time": datetime.fromisoformat(ledger.normalize_time(row.last_txn_time)),
            "last_txn_id": row.last_txn_id, "trade_count": row.trade_count}


def _position_values(last_price, market_value, unrealized_pnl, weight, score):
    score = _rounded(score, SCORE_STEP)
    return (_rounded(last_price, PRICE_STEP), _rounded(market_value, MONEY_STEP), _rounded(unrealized_pnl, MONEY_STEP),
            _rounded(weight, RATIO_STEP), score, risk_level(score))


def _differs(stored, values):
    """Does a stored row differ from freshly computed values (compared at the stored precision)?"""
    if stored is None:
        return True
    return any(
        (to_decimal(old) if old is not None else None) != new if isinstance(new, Decimal) else old != new
        for old, new in zip(stored, values)
    )


INVESTOR_RISK_COLUMNS = ("total_market_value", "total_cost_basis", "realized_pnl", "unrealized_pnl", "open_positions",
                         "top_position_weight", "hhi", "top_sector_weight", "weighted_volatility", "risk_score",
                         "risk_level", *risk_metrics.RiskMetrics._fields, "dividend_income", "fees_paid")
INVESTOR_RISK_STEPS = (MONEY_STEP, MONEY_STEP, MONEY_STEP, MONEY_STEP, None) + (RATIO_STEP,) * 4
METRIC_STEPS = (RATIO_STEP, MONEY_STEP, MONEY_STEP, MONEY_STEP, RATIO_STEP)  # risk_metrics.RiskMetrics
HOLDINGS_SQL = ("SELECT investor_id, stock_symbol, quantity FROM portfolios "
                "WHERE quantity > 0 AND investor_id IN :investor_ids ORDER BY investor_id, stock_symbol")


def score_investors(connection, params, now, investor_ids, close_table):
    """Write investor_risk for these investors; return (investors scored, rows changed)."""
    scores = investor_scores(connection, params, now, investor_ids, close_table)
    write_investor_scores(connection, scores)
    return scores.scored, len(scores.inserts) + len(scores.updates)


class InvestorScores(NamedTuple):
    """investor_risk rows to write: new ones, changed ones (keyed by key_investor), and how many were scored."""
    inserts: list
    updates: list
    scored: int


def investor_scores(connection, params, now, investor_ids, close_table):
    """Score these investors from their stored positions (InvestorScores); reads only."""
    inserts, updates, scored = [], [], 0
    for ids in in_slices(investor_ids):
        stored = {r[0]: tuple(r[1:]) for r in connection.execute(_for_investors(
            f"SELECT investor_id, {', '.join(INVESTOR_RISK_COLUMNS)} FROM investor_risk "
            "WHERE investor_id IN :investor_ids"), {"investor_ids": ids})}
        holdings = connection.execute(_for_investors(HOLDINGS_SQL), {"investor_ids": ids}).all()
        metrics = risk_metrics.compute_risk_metrics(close_table, holdings)
        for row in connection.execute(_for_investors(INVESTOR_RISK_SQL), {**params, "investor_ids": ids}):
            investor_id, values = row[0], _investor_values(row, metrics.get(row[0]))
            scored += 1
            record = dict(zip(INVESTOR_RISK_COLUMNS, values), updated_at=now)
            if investor_id not in stored:
                inserts.append({**record, "investor_id": investor_id})
            elif _differs(stored[investor_id], values):
                updates.append({**record, "key_investor": investor_id})
    return InvestorScores(inserts, updates, scored)


def write_investor_scores(connection, scores):
    """Store InvestorScores."""
    if scores.inserts:
        connection.execute(investor_risk.insert(), scores.inserts)
    if scores.updates:
        connection.execute(update(investor_risk).where(investor_risk.c.investor_id == bindparam("key_investor"))
                           .values({c: bindparam(c) for c in (*INVESTOR_RISK_COLUMNS, "updated_at")}),
                           scores.updates)


def _investor_values(row, metrics):
    """investor_risk values, in INVESTOR_RISK_COLUMNS order, from an INVESTOR_RISK_SQL row and RiskMetrics."""
    score = _rounded(row[10], SCORE_STEP)
    values = tuple(int(v) if step is None else _rounded(v, step) for v, step in zip(row[1:10], INVESTOR_RISK_STEPS))
    return values + (score, risk_level(score)) + (
        tuple(None if v is None else _rounded(v, step) for v, step in zip(metrics, METRIC_STEPS)) if metrics
        else (None,) * len(METRIC_STEPS)
    ) + (_rounded(row[11], MONEY_STEP), _rounded(row[12], MONEY_STEP))


CONCENTRATION_SQL = """
SELECT p.investor_id, p.stock_symbol, p.weight
FROM portfolios p
WHERE p.quantity > 0 AND p.weight > :limit AND p.investor_id IN :investor_ids
"""
CONCENTRATION_CLEARED = "condition cleared: the position is no longer above the weight limit"


def sync_concentration_alerts(connection, now, investor_ids, resolver=STAGE_NAME):
    """One open CONCENTRATION alert per open position of these investors above the weight limit; the alert of a
    position no longer above it is resolved (by `resolver`) and retired (alerts.py). Returns alerts.Synced."""
    return alerts_lifecycle.sync_condition_alerts(
        connection, "CONCENTRATION", concentration_alerts(connection, now, investor_ids), now, investor_ids,
        resolver=resolver, cleared_note=CONCENTRATION_CLEARED)


def concentration_alerts(connection, now, investor_ids):
    """The CONCENTRATION alert rows these investors' positions call for now; reads only."""
    limit = constants.CONCENTRATION_WEIGHT_LIMIT
    rows = []
    for ids in in_slices(investor_ids):
        rows += connection.execute(_for_investors(CONCENTRATION_SQL), {"limit": limit, "investor_ids": ids}).all()
    return [
        {"alert_key": f"CONCENTRATION:{investor_id}:{symbol}", "rule": "CONCENTRATION",
         "severity": "HIGH" if to_decimal(weight) >= Decimal("0.75") else "MEDIUM", "investor_id": investor_id,
         "stock_symbol": symbol, "txn_ref": None, "detected_at": now, "metric": to_decimal(weight),
         "threshold": Decimal(str(limit)),
         "details": f"{symbol} is {to_decimal(weight):.1%} of investor {investor_id}'s market value "
                    f"(limit {limit:.0%})"}
        for investor_id, symbol, weight in rows
    ]


# ---------------------------------------------------------------------------------------------- the stage

def update_portfolios(engine, full=False, today=None, requested_method=None):
    """Apply the corporate actions that came due and the new trades (or replay all with full=True), then
    revalue and score what changed; one transaction. requested_method: 'wac', 'fifo' or None (the recorded one,
    see cost_method). Returns a summary."""
    with localcontext(prec=DECIMAL_DIGITS):  # again after a deadlock or a Galera certification failure
        return db_retry.with_retries(lambda: _update_portfolios(engine, full, today, requested_method),
                                     "update_portfolio")


def _update_portfolios(engine, full, today, requested_method):
    started = time.perf_counter()
    summary = UpdateSummary(full=full)
    params = risk_parameters(today)
    with db_config.stage_transaction(engine, "update_portfolio") as connection:
        clock = cli.StepClock(logger)
        summary.full = full = full or built_by_earlier_version(connection)
        now = datetime.now().replace(microsecond=0)
        rules = ledger_rules(connection, params["today"], requested_method, full)
        summary.cost_method = rules.method
        due = ApplyResult(set(), set(), [], {}, 0)
        if not full:
            due, summary.actions_applied = apply_due_actions(connection, now, rules, params["today"])
        batch_ids = pending_batches(connection)
        replayed = performance.replay_with_apply(connection, params["today"], rules, full)
        summary.first_run = replayed is not None and not full
        clock.lap(f"read the rules and {counted(len(batch_ids), 'pending batch', 'pending batches')}")
        applied = apply_new_trades(connection, batch_ids, full, now, rules, replayed)
        if full:
            summary.actions_applied = stamp_actions(connection, rules_actions(rules), now)
            record_ledger_version(connection)
        clock.lap(f"applied {counted(applied.trades, 'trade')} and wrote positions and checkpoints")
        oversells, replay_starts = both_steps_oversells(connection, due, applied)
        summary.alerts_raised, summary.alerts_withdrawn = sync_oversell_alerts(connection, oversells, replay_starts,
                                                                               now)
        summary.oversells = len(oversells)
        batches.stamp_batches(connection, batch_ids, "applied_at", now)
        changed = applied.changed | due.changed
        investors = revalue_and_score(connection, params, now, {investor_id for investor_id, _ in changed}, full,
                                      summary)
        clock.lap(f"revalued and scored {counted(len(investors), 'investor')}")
        performance.update_performance(connection, params["today"], now, rules, full, replayed)  # daily, returns
        clock.lap("updated the daily history and returns")
    summary.batches_applied, summary.trades_applied = len(batch_ids), applied.trades
    summary.positions_changed = len(changed)
    summary.positions_replayed = len(applied.replayed | due.replayed)
    summary.seconds = time.perf_counter() - started
    logger.info("revalued and scored %d investors", len(investors))
    return summary


def stamp_actions(connection, keys, now):
    """Mark these corporate actions ((stock_symbol, ex_date, action), the ones this run read and applied)
    applied, never one that a loader committed meanwhile; return how many were not marked before."""
    table = corporate_actions_table
    horizon = max((day for _, day, _ in keys), default=None)
    pending = sorted(set(keys) & set(due_actions(connection, horizon))) if keys else []
    if pending:
        connection.execute(update(table).where(and_(
            table.c.stock_symbol == bindparam("symbol"), table.c.ex_date == bindparam("day"),
            table.c.action == bindparam("kind"))).values(applied_at=now),
            [{"symbol": symbol, "day": day, "kind": kind} for symbol, day, kind in pending])
    return len(pending)


def rules_actions(rules):
    """(stock_symbol, ex_date, action) of every corporate action in ledger.Rules."""
    return [(symbol, event.ex_date, ledger.action_kind(event))
            for symbol, events in rules.actions.items() for _, event in events]


def built_by_earlier_version(connection):
    """Does the database hold positions built by an earlier version of this program (without checkpoints, or
    by earlier rules: no current ledger_version)? Then this update replays everything once to rebuild them."""
    positions = connection.execute(select(portfolios.c.investor_id).limit(1)).first() is not None
    earlier = positions and (
        connection.execute(select(position_checkpoints.c.investor_id).limit(1)).first() is None
        or recorded_ledger_version(connection) != LEDGER_VERSION)
    if earlier:
        logger.warning("positions built by an earlier version (without checkpoints, fees or corporate actions): "
                       "replaying every trade once to rebuild them")
    return earlier


def recorded_ledger_version(connection):
    """The rules the positions were built by (schema.LEDGER_VERSION), or None: an earlier version built them."""
    return connection.execute(select(ledger_settings.c.value).where(
        ledger_settings.c.name == "ledger_version")).scalar()


def record_ledger_version(connection):
    """Record that the positions are now built by the current rules (after a full replay)."""
    connection.execute(dialects.upsert(connection, ledger_settings, ["value"]),
                       [{"name": "ledger_version", "value": LEDGER_VERSION}])


def revalue_and_score(connection, params, now, changed_investors, full, summary):
    """Revalue and score the investors whose positions changed and the holders of symbols whose marks changed
    (everyone with full=True); return their ids."""
    repriced, digests, trade_prices = repriced_symbols(connection, params, full)
    if full:
        investors = all_investors(connection)
        connection.execute(delete(investor_risk).where(investor_risk.c.investor_id.not_in(
            select(portfolios.c.investor_id))))  # investors whose every trade was deleted
    else:
        investors = set(changed_investors) | holders(connection, repriced)
    if not investors and not repriced:
        return investors
    daily_closes = closes.read_closes(connection, last_day=params["today"])
    write_marks(connection, closes.symbol_marks(daily_closes, trade_prices, digests), repriced, now)
    scored, raised = value_investors(connection, params, now, investors, closes.close_table(daily_closes))
    summary.investors_scored = scored
    summary.alerts_raised += raised
    return investors


def value_investors(connection, params, now, investor_ids, close_table):
    """Revalue the positions of these investors, score them and raise their CONCENTRATION alerts, with the
    stored marks and this close table (closes.close_table); return (investors scored, new alerts)."""
    if not investor_ids:
        return 0, 0
    revalue_positions(connection, params, now, investor_ids)
    scored, _ = score_investors(connection, params, now, investor_ids, close_table)
    return scored, sync_concentration_alerts(connection, now, investor_ids).raised


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--full", action="store_true",
                        help="replay every trade and rebuild the checkpoints, instead of applying only the new ones")
    parser.add_argument("--cost-method", choices=cost_method.METHODS, type=str.lower,
                        help="wac (weighted average cost) or fifo (default: $COST_METHOD, else the method the "
                             "positions were built with, else wac); switching needs --full")
    args = parser.parse_args(argv)
    cli.setup_logging(args)

    def work():
        requested = cost_method.requested_method(args.cost_method)
        engine = db_config.get_engine(args.database_url)
        summary = update_portfolios(engine, full=args.full, requested_method=requested)
        print(summary.line())
        return cli.EXIT_OK

    return cli.run(work, args, "update_portfolio")


if __name__ == "__main__":
    sys.exit(main())
