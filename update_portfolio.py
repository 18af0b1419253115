"""Bring portfolios, investor_risk and position alerts up to date with the loaded trades.

Fourth stage of the chain (after load_transactions.py, before surveillance and analyze.py). Positions follow
the weighted-average-cost rules of docs/portfolio-math.md: trades of a position are replayed in (txn_time,
txn_id) order; a SELL of more than is held (an oversell) leaves the position unchanged and raises one OVERSELL alert. Only new
trades are applied: those of load batches not applied yet. A late trade (older than the last trade applied
to its position) makes that position alone be replayed from its first trade. `--full` replays everything.
Valuation, weights and risk scores (docs/risk-scores.md) are then computed in SQL for every position and
investor.
Everything one run writes is committed in one transaction.
"""
import logging
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from sqlalchemy import and_, bindparam, delete, select, text, update

import batches
import cli
import constants
import db_config
import risk_metrics
from schema import alerts, investor_risk, load_batches, portfolios, symbol_last_trades, transactions

logger = logging.getLogger(__name__)

DECIMAL_DIGITS = 40  # Decimal's default 28 cannot round a market value of 10**22 to 6 places; DECIMAL(38, 6) can
MONEY_STEP = Decimal("0.000001")  # state is kept at 6 decimals after every trade, so incremental == full exactly
PRICE_STEP = Decimal("0.0001")
ZERO = Decimal(0)
ID_SLICE = 500  # ids per IN (...) list
FETCH_ROWS = 50_000


# ---------------------------------------------------------------------------------------------- position math

@dataclass
class Position:
    """The replay state of one (investor, symbol): docs/portfolio-math.md weighted average cost."""
    investor_id: int
    stock_symbol: str
    quantity: int = 0
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    last_txn_time: str = ""  # 'YYYY-MM-DD HH:MM:SS' of the last trade applied
    last_txn_id: int = 0
    trade_count: int = 0

    @property
    def avg_cost(self):
        return (self.cost_basis / self.quantity).quantize(PRICE_STEP) if self.quantity else ZERO.quantize(PRICE_STEP)

    def apply(self, txn_id, txn_time, txn_type, quantity, price):
        """Apply one trade; return False for an oversell, which leaves the position unchanged."""
        self.last_txn_time, self.last_txn_id, self.trade_count = txn_time, txn_id, self.trade_count + 1
        if txn_type == "BUY":
            self.quantity += quantity
            self.cost_basis = (self.cost_basis + quantity * price).quantize(MONEY_STEP, ROUND_HALF_EVEN)
            return True
        if quantity > self.quantity:
            return False
        avg_cost = self.cost_basis / self.quantity
        self.realized_pnl = (self.realized_pnl + quantity * (price - avg_cost)).quantize(MONEY_STEP, ROUND_HALF_EVEN)
        self.quantity -= quantity
        self.cost_basis = ZERO if self.quantity == 0 else (
            (self.cost_basis - quantity * avg_cost).quantize(MONEY_STEP, ROUND_HALF_EVEN))
        return True

    def comes_before(self, txn_time, txn_id):
        """Is the last applied trade before (txn_time, txn_id), so that this trade can simply follow it?"""
        return (self.last_txn_time, self.last_txn_id) < (txn_time, txn_id)


@dataclass
class Oversell:
    """A SELL that exceeded the holding and was not applied."""
    investor_id: int
    stock_symbol: str
    txn_id: int
    quantity: int
    held: int


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
    seconds: float = 0.0
    full: bool = False

    def line(self, seconds=True):
        mode = "full replay" if self.full else "incremental"
        return (f"update_portfolio ({mode}): {self.trades_applied} trades from {self.batches_applied} batch(es) applied "
                f"to {self.positions_changed} positions ({self.positions_replayed} replayed for late trades), "
                f"{self.oversells} oversells skipped, {self.investors_scored} investors scored, "
                f"{self.alerts_raised} new alerts" + (f" ({self.seconds:.2f} s)" if seconds else ""))


# ---------------------------------------------------------------------------------------------- reading trades

def normalize_time(value):
    """A txn_time as 'YYYY-MM-DD HH:MM:SS' whatever the driver returned (text on SQLite, datetime elsewhere)."""
    return value if isinstance(value, str) else value.strftime("%Y-%m-%d %H:%M:%S")


def to_decimal(value):
    """A DECIMAL column as Decimal (SQLite returns floats; their shortest repr is the stored decimal)."""
    return value if isinstance(value, Decimal) else Decimal(repr(value))


TRADE_COLUMNS_SQL = "t.investor_id, t.stock_symbol, t.txn_id, t.txn_time, t.txn_type, t.quantity, t.price"
ORDER_SQL = "ORDER BY t.investor_id, t.stock_symbol, t.txn_time, t.txn_id"
# Over the network one text column per trade is read 3 times faster than seven typed ones (the driver's
# per-field work dominates the replay). The symbol goes last, so a comma in it cannot shift a field.
PACKED_DIALECTS = ("mysql", "postgresql")
PACKED_COLUMNS_SQL = "CONCAT_WS(',', t.investor_id, t.txn_id, t.txn_time, t.txn_type, t.quantity, t.price{batch}, " \
                     "t.stock_symbol)"


def stream_trades(connection, where="", params=None, with_batch=False):
    """Yield trades (investor_id, stock_symbol, txn_id, txn_time, txn_type, quantity, price[, batch_id]) in
    replay order, streamed from the server rather than read whole."""
    packed = connection.dialect.name in PACKED_DIALECTS
    if packed:
        columns = PACKED_COLUMNS_SQL.format(batch=", t.batch_id" if with_batch else "")
    else:
        columns = TRADE_COLUMNS_SQL + (", t.batch_id" if with_batch else "")
    statement = text(f"SELECT {columns} FROM transactions t {where} {ORDER_SQL}")
    if params and isinstance(params.get("ids"), list):
        statement = statement.bindparams(bindparam("ids", expanding=True))
    result = connection.execute(statement.execution_options(stream_results=True), params or {})
    unpack = _unpack_packed_batch if with_batch else _unpack_packed
    while rows := result.fetchmany(FETCH_ROWS):
        if packed:
            yield from map(unpack, rows)
        else:
            for row in rows:
                yield (row[0], row[1], row[2], normalize_time(row[3]), row[4], row[5], to_decimal(row[6])) + tuple(row[7:])


def _unpack_packed(row):
    investor_id, txn_id, txn_time, txn_type, quantity, price, symbol = row[0].split(",", 6)
    return int(investor_id), symbol, int(txn_id), txn_time, txn_type, int(quantity), Decimal(price)


def _unpack_packed_batch(row):
    investor_id, txn_id, txn_time, txn_type, quantity, price, batch_id, symbol = row[0].split(",", 7)
    return int(investor_id), symbol, int(txn_id), txn_time, txn_type, int(quantity), Decimal(price), int(batch_id)


def pending_batches(connection):
    """Ids of loaded batches whose trades have not been applied yet."""
    return connection.execute(select(load_batches.c.batch_id).where(and_(
        load_batches.c.status == "loaded", load_batches.c.applied_at.is_(None))).order_by(load_batches.c.batch_id)
    ).scalars().all()


def new_trades(connection, batch_ids):
    """The trades of these batches, in replay order (a position's trades may span several batches)."""
    if not batch_ids:
        return
    if len(batch_ids) <= ID_SLICE:
        yield from stream_trades(connection, "WHERE t.batch_id IN :ids", {"ids": list(batch_ids)})
        return
    wanted = set(batch_ids)  # many small batches (the feed): one range scan, filtered here
    params = {"lowest": min(batch_ids), "highest": max(batch_ids)}
    for trade in stream_trades(connection, "WHERE t.batch_id BETWEEN :lowest AND :highest", params, with_batch=True):
        if trade[-1] in wanted:
            yield trade[:-1]


# ---------------------------------------------------------------------------------------------- replay

def load_positions(connection):
    """The stored replay state of every position, by (investor_id, stock_symbol)."""
    rows = connection.execute(text(
        "SELECT investor_id, stock_symbol, quantity, cost_basis, realized_pnl, last_txn_time, last_txn_id, trade_count "
        "FROM portfolios"))
    return {
        (investor_id, symbol): Position(investor_id, symbol, quantity, to_decimal(cost), to_decimal(pnl),
                                        normalize_time(last_time), last_id, count)
        for investor_id, symbol, quantity, cost, pnl, last_time, last_id, count in rows
    }


def replay(trades, positions):
    """Apply trades (in replay order) to `positions` in place.

    Returns (keys of positions changed, keys of positions with a late trade, oversells, latest trade per symbol).
    A late position is left untouched here: it must be replayed from its first trade.
    """
    changed, late, oversells, latest = set(), set(), [], {}
    for investor_id, symbol, txn_id, txn_time, txn_type, quantity, price in trades:
        if (txn_time, txn_id) > latest.get(symbol, ("", 0, None))[:2]:
            latest[symbol] = (txn_time, txn_id, price)
        key = (investor_id, symbol)
        if key in late:
            continue
        position = positions.get(key)
        if position is None:
            position = positions[key] = Position(investor_id, symbol)
        elif key not in changed and not position.comes_before(txn_time, txn_id):
            late.add(key)
            continue
        changed.add(key)
        held = position.quantity
        if not position.apply(txn_id, txn_time, txn_type, quantity, price):
            oversells.append(Oversell(investor_id, symbol, txn_id, quantity, held))
    return changed, late, oversells, latest


def replay_positions(connection, keys, positions):
    """Replay these positions from their first trade; return their oversells."""
    oversells = []
    for investor_id, symbol in sorted(keys):
        positions[(investor_id, symbol)] = Position(investor_id, symbol)
        trades = stream_trades(connection, "WHERE t.investor_id = :investor_id AND t.stock_symbol = :symbol",
                               {"investor_id": investor_id, "symbol": symbol})
        _, _, found, _ = replay(list(trades), positions)
        oversells += found
    return oversells


# ---------------------------------------------------------------------------------------------- writing state

def position_row(position, now):
    """The portfolios columns that the replay owns."""
    return {
        "investor_id": position.investor_id, "stock_symbol": position.stock_symbol,
        "quantity": position.quantity, "avg_cost": position.avg_cost, "cost_basis": position.cost_basis,
        "realized_pnl": position.realized_pnl, "last_txn_time": datetime.fromisoformat(position.last_txn_time),
        "last_txn_id": position.last_txn_id, "trade_count": position.trade_count, "updated_at": now,
    }


def write_positions(connection, positions, keys, stored_keys, now):
    """Insert new positions and update changed ones."""
    rows = [position_row(positions[key], now) for key in sorted(keys)]
    new = [row for row in rows if (row["investor_id"], row["stock_symbol"]) not in stored_keys]
    changed = [{**row, "key_investor": row["investor_id"], "key_symbol": row["stock_symbol"]}
               for row in rows if (row["investor_id"], row["stock_symbol"]) in stored_keys]
    if new:
        connection.execute(portfolios.insert(), new)
    if changed:
        columns = ("quantity", "avg_cost", "cost_basis", "realized_pnl", "last_txn_time", "last_txn_id",
                   "trade_count", "updated_at")
        connection.execute(
            update(portfolios).where(and_(portfolios.c.investor_id == bindparam("key_investor"),
                                          portfolios.c.stock_symbol == bindparam("key_symbol")))
            .values({column: bindparam(column) for column in columns}),
            changed)


def write_latest_trades(connection, latest):
    """Keep symbol_last_trades at the latest trade per symbol (by txn_time, then txn_id)."""
    stored = {symbol: (normalize_time(t), i) for symbol, t, i in connection.execute(text(
        "SELECT stock_symbol, txn_time, txn_id FROM symbol_last_trades"))}
    for symbol, (txn_time, txn_id, price) in sorted(latest.items()):
        values = {"txn_time": datetime.fromisoformat(txn_time), "txn_id": txn_id, "price": price}
        if symbol not in stored:
            connection.execute(symbol_last_trades.insert().values(stock_symbol=symbol, **values))
        elif (txn_time, txn_id) > stored[symbol]:
            connection.execute(update(symbol_last_trades).where(
                symbol_last_trades.c.stock_symbol == symbol).values(**values))


def sync_oversell_alerts(connection, oversells, replayed_keys, now):
    """Raise one OVERSELL alert per oversold trade; drop stale ones of replayed positions. Returns new alerts."""
    refs = txn_refs(connection, [o.txn_id for o in oversells])
    wanted = {f"OVERSELL:{refs[o.txn_id]}": o for o in oversells}
    stored = {}
    for key, investor_id, symbol in connection.execute(text(
            "SELECT alert_key, investor_id, stock_symbol FROM alerts WHERE rule = 'OVERSELL'")):
        stored[key] = (investor_id, symbol)
    stale = [key for key, position in stored.items() if position in replayed_keys and key not in wanted]
    for start in range(0, len(stale), ID_SLICE):
        connection.execute(delete(alerts).where(alerts.c.alert_key.in_(stale[start:start + ID_SLICE])))
    new = [
        {"alert_key": key, "rule": "OVERSELL", "severity": "HIGH", "investor_id": o.investor_id,
         "stock_symbol": o.stock_symbol, "txn_ref": refs[o.txn_id], "detected_at": now,
         "metric": o.quantity, "threshold": o.held,
         "details": f"SELL {refs[o.txn_id]} of {o.quantity} {o.stock_symbol} by investor {o.investor_id} exceeds "
                    f"the {o.held} shares held at that time; the trade was not applied to the position"}
        for key, o in wanted.items() if key not in stored
    ]
    if new:
        connection.execute(alerts.insert(), new)
    return len(new)


def txn_refs(connection, txn_ids):
    """txn_ref by txn_id."""
    refs = {}
    for start in range(0, len(txn_ids), ID_SLICE):
        refs.update(connection.execute(select(transactions.c.txn_id, transactions.c.txn_ref).where(
            transactions.c.txn_id.in_(txn_ids[start:start + ID_SLICE]))).all())
    return refs


# ---------------------------------------------------------------------------------------------- valuation and risk

# Shared CTEs: the last price of every symbol (docs/portfolio-math.md) and its annualized volatility from daily closes.
# Ratios multiply by 1.0E0 first: SQLite keeps whole-number DECIMALs as integers and would divide as integers.
PRICE_CTES = """
latest_close_days AS (
    SELECT stock_symbol, MAX(price_date) AS price_date
    FROM market_prices
    WHERE price_date <= :today
    GROUP BY stock_symbol
),
last_prices AS (  -- the latest close on or before today, else the latest trade's price
    SELECT s.stock_symbol, COALESCE(mp.close_price, lt.price) AS last_price
    FROM stocks s
    LEFT JOIN latest_close_days d ON d.stock_symbol = s.stock_symbol
    LEFT JOIN market_prices mp ON mp.stock_symbol = d.stock_symbol AND mp.price_date = d.price_date
    LEFT JOIN symbol_last_trades lt ON lt.stock_symbol = s.stock_symbol
),
daily_returns AS (  -- simple daily returns, newest first numbered by days_back
    SELECT stock_symbol,
           close_price * 1.0E0 / LAG(close_price) OVER (PARTITION BY stock_symbol ORDER BY price_date) - 1
               AS daily_return,
           ROW_NUMBER() OVER (PARTITION BY stock_symbol ORDER BY price_date DESC) AS days_back
    FROM market_prices
    WHERE price_date <= :today
),
return_moments AS (
    SELECT stock_symbol, AVG(daily_return) AS mean_return, AVG(daily_return * daily_return) AS mean_square
    FROM daily_returns
    WHERE days_back <= :lookback_days AND daily_return IS NOT NULL
    GROUP BY stock_symbol
),
volatility AS (  -- annualized standard deviation of daily returns, as a fraction
    SELECT stock_symbol,
           SQRT(CASE WHEN mean_square > mean_return * mean_return
                     THEN (mean_square - mean_return * mean_return) * :trading_days ELSE 0 END) AS annual_volatility
    FROM return_moments
)"""

POSITION_RISK_SQL = f"""
WITH {PRICE_CTES},
valued AS (
    SELECT p.investor_id, p.stock_symbol, p.quantity, p.cost_basis, lp.last_price,
           p.quantity * lp.last_price AS market_value,
           COALESCE(v.annual_volatility, 0) AS annual_volatility
    FROM portfolios p
    JOIN last_prices lp ON lp.stock_symbol = p.stock_symbol
    LEFT JOIN volatility v ON v.stock_symbol = p.stock_symbol
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

INVESTOR_RISK_SQL = f"""
WITH {PRICE_CTES},
positions AS (
    SELECT p.investor_id, p.quantity, p.market_value, p.cost_basis, p.realized_pnl, p.unrealized_pnl, p.weight,
           s.sector, COALESCE(v.annual_volatility, 0) AS annual_volatility
    FROM portfolios p
    JOIN stocks s ON s.stock_symbol = p.stock_symbol
    LEFT JOIN volatility v ON v.stock_symbol = p.stock_symbol
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
           SUM(CASE WHEN quantity > 0 THEN 1 ELSE 0 END) AS open_positions,
           MAX(weight) AS top_position_weight,
           SUM(weight * weight) AS hhi,  -- Herfindahl index of the weights, 0..1
           SUM(weight * annual_volatility) AS weighted_volatility
    FROM positions
    GROUP BY investor_id
),
components AS (
    SELECT t.*,
           (SELECT MAX(sw.sector_weight) FROM sector_weights sw WHERE sw.investor_id = t.investor_id)
               AS top_sector_weight,
           CASE WHEN t.weighted_volatility >= :investor_volatility_full_at THEN 1
                ELSE t.weighted_volatility / :investor_volatility_full_at END AS volatility_share,
           CASE WHEN t.unrealized_pnl >= 0 OR t.total_cost_basis <= 0 THEN 0
                WHEN -t.unrealized_pnl * 1.0E0 / t.total_cost_basis >= :investor_loss_full_at THEN 1
                ELSE -t.unrealized_pnl * 1.0E0 / t.total_cost_basis / :investor_loss_full_at END AS loss_share
    FROM totals t
)
SELECT investor_id, total_market_value, total_cost_basis, realized_pnl, unrealized_pnl, open_positions,
       top_position_weight, hhi, top_sector_weight, weighted_volatility,
       :investor_top_weight_points * top_position_weight
       + :investor_hhi_points * hhi
       + :investor_sector_points * CASE WHEN top_sector_weight <= :investor_sector_free_up_to THEN 0
             ELSE (top_sector_weight - :investor_sector_free_up_to) / (1 - :investor_sector_free_up_to) END
       + :investor_volatility_points * volatility_share
       + :investor_loss_points * loss_share AS risk_score
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


def revalue_positions(connection, params, now):
    """Write last price, market value, unrealized P&L, weight and risk of every position; return rows changed."""
    stored = {(r[0], r[1]): tuple(r[2:]) for r in connection.execute(text(
        "SELECT investor_id, stock_symbol, last_price, market_value, unrealized_pnl, weight, risk_score, risk_level "
        "FROM portfolios"))}
    changes = []
    for investor_id, symbol, last_price, market_value, unrealized_pnl, weight, score in connection.execute(
            text(POSITION_RISK_SQL), params):
        score = _rounded(score, Decimal("0.01"))
        values = (_rounded(last_price, PRICE_STEP), _rounded(market_value, MONEY_STEP),
                  _rounded(unrealized_pnl, MONEY_STEP), _rounded(weight, Decimal("0.00000001")), score,
                  risk_level(score))
        if _differs(stored.get((investor_id, symbol)), values):
            changes.append(dict(zip(("last_price", "market_value", "unrealized_pnl", "weight", "risk_score",
                                     "risk_level"), values), key_investor=investor_id, key_symbol=symbol, updated_at=now))
    if changes:
        connection.execute(update(portfolios).where(and_(
            portfolios.c.investor_id == bindparam("key_investor"), portfolios.c.stock_symbol == bindparam("key_symbol")
        )).values({c: bindparam(c) for c in ("last_price", "market_value", "unrealized_pnl", "weight",
                                              "risk_score", "risk_level", "updated_at")}), changes)
    return len(changes)


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
                         "risk_level", *risk_metrics.RiskMetrics._fields)
RATIO_STEP = Decimal("0.00000001")
INVESTOR_RISK_STEPS = (MONEY_STEP, MONEY_STEP, MONEY_STEP, MONEY_STEP, None) + (RATIO_STEP,) * 4
METRIC_STEPS = (RATIO_STEP, MONEY_STEP, MONEY_STEP, RATIO_STEP)


def score_investors(connection, params, now):
    """Write investor_risk for every investor with a position; return (investors scored, rows changed)."""
    stored = {r[0]: tuple(r[1:]) for r in connection.execute(text(
        f"SELECT investor_id, {', '.join(INVESTOR_RISK_COLUMNS)} FROM investor_risk"))}
    metrics = risk_metrics.compute_risk_metrics(connection, params["today"])
    inserts, updates, scored = [], [], 0
    for row in connection.execute(text(INVESTOR_RISK_SQL), params):
        investor_id, figures, score = row[0], row[1:10], _rounded(row[10], Decimal("0.01"))
        values = tuple(int(v) if step is None else _rounded(v, step) for v, step in zip(figures, INVESTOR_RISK_STEPS))
        found = metrics.get(investor_id)
        values += (score, risk_level(score)) + (
            tuple(_rounded(v, step) for v, step in zip(found, METRIC_STEPS)) if found else (None,) * len(METRIC_STEPS))
        scored += 1
        record = dict(zip(INVESTOR_RISK_COLUMNS, values), updated_at=now)
        if investor_id not in stored:
            inserts.append({**record, "investor_id": investor_id})
        elif _differs(stored[investor_id], values):
            updates.append({**record, "key_investor": investor_id})
    if inserts:
        connection.execute(investor_risk.insert(), inserts)
    if updates:
        connection.execute(update(investor_risk).where(investor_risk.c.investor_id == bindparam("key_investor"))
                           .values({c: bindparam(c) for c in (*INVESTOR_RISK_COLUMNS, "updated_at")}), updates)
    return scored, len(inserts) + len(updates)


def raise_concentration_alerts(connection, now):
    """One CONCENTRATION alert per open position above the weight limit (kept once raised); return new alerts."""
    limit = constants.CONCENTRATION_WEIGHT_LIMIT
    rows = connection.execute(text(
        "SELECT p.investor_id, p.stock_symbol, p.weight FROM portfolios p "
        "WHERE p.quantity > 0 AND p.weight > :limit AND NOT EXISTS ("
        "  SELECT 1 FROM alerts a WHERE a.rule = 'CONCENTRATION' AND a.investor_id = p.investor_id"
        "  AND a.stock_symbol = p.stock_symbol)"), {"limit": limit}).all()
    new = [
        {"alert_key": f"CONCENTRATION:{investor_id}:{symbol}", "rule": "CONCENTRATION",
         "severity": "HIGH" if to_decimal(weight) >= Decimal("0.75") else "MEDIUM", "investor_id": investor_id,
         "stock_symbol": symbol, "txn_ref": None, "detected_at": now, "metric": to_decimal(weight),
         "threshold": Decimal(str(limit)),
         "details": f"{symbol} is {to_decimal(weight):.1%} of investor {investor_id}'s market value "
                    f"(limit {limit:.0%})"}
        for investor_id, symbol, weight in rows
    ]
    if new:
        connection.execute(alerts.insert(), new)
    return len(new)


# ---------------------------------------------------------------------------------------------- the stage

def update_portfolios(engine, full=False, today=None):
    """Apply new trades (or replay all with full=True), then revalue and score; one transaction. Returns a summary."""
    with localcontext(prec=DECIMAL_DIGITS):
        return _update_portfolios(engine, full, today)


def _update_portfolios(engine, full, today):
    started = time.perf_counter()
    summary = UpdateSummary(full=full)
    with db_config.stage_transaction(engine, "update_portfolio") as connection:
        now = datetime.now().replace(microsecond=0)
        batch_ids = pending_batches(connection)
        positions = {} if full else load_positions(connection)
        stored_keys = set(map(tuple, connection.execute(text("SELECT investor_id, stock_symbol FROM portfolios"))))
        trades = stream_trades(connection) if full else new_trades(connection, batch_ids)
        counted = _counting(trades, summary)
        changed, late, oversells, latest = replay(counted, positions)
        oversells += replay_positions(connection, late, positions)
        if full:
            _forget_positions_without_trades(connection, stored_keys - set(positions))
            connection.execute(delete(symbol_last_trades))
        write_positions(connection, positions, changed | late, stored_keys, now)
        write_latest_trades(connection, latest)
        summary.alerts_raised = sync_oversell_alerts(connection, oversells, late | (changed if full else set()), now)
        batches.stamp_batches(connection, batch_ids, "applied_at", now)
        params = risk_parameters(today)
        revalue_positions(connection, params, now)
        summary.investors_scored, _ = score_investors(connection, params, now)
        summary.alerts_raised += raise_concentration_alerts(connection, now)
    summary.batches_applied, summary.positions_changed = len(batch_ids), len(changed | late)
    summary.positions_replayed, summary.oversells = len(late), len(oversells)
    summary.seconds = time.perf_counter() - started
    return summary


def _counting(trades, summary):
    for trade in trades:
        summary.trades_applied += 1
        yield trade


def _forget_positions_without_trades(connection, keys):
    for investor_id, symbol in keys:
        connection.execute(delete(portfolios).where(and_(
            portfolios.c.investor_id == investor_id, portfolios.c.stock_symbol == symbol)))


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="replay every trade instead of only the new ones")
    args = parser.parse_args(argv)
    cli.setup_logging(args)

    def work():
        engine = db_config.get_engine(args.database_url)
        summary = update_portfolios(engine, full=args.full)
        print(summary.line())
        return cli.EXIT_OK

    return cli.run(work, args, "update_portfolio")


if __name__ == "__main__":
    sys.exit(main())
