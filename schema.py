"""The stock-etl schema in SQLAlchemy Core: the one source of truth for every table (docs/data-model.md).

create_tables.sql is rendered from these tables (`python schema.py > create_tables.sql`) and a test keeps
the two equal on MariaDB. Money is DECIMAL everywhere: prices and average costs have 4 decimal places,
amounts 6 (so that a position replayed over thousands of trades still reconciles to the cent).
"""
from sqlalchemy import (
    BigInteger, CheckConstraint, Column, Date, DateTime, Double, ForeignKey, Index, Integer, MetaData, Numeric,
    String, Table, Text,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.schema import CreateTable

# SQLite stores date-times as text; one fixed format without microseconds keeps them comparable as strings.
Timestamp = DateTime().with_variant(
    sqlite.DATETIME(
        storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
        regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)",
    ),
    "sqlite",
)


def exact_text(length):
    """VARCHAR compared byte for byte on every database (MySQL's default collation ignores case)."""
    return String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


TxnRef = exact_text(64)  # an identifier: 'ref-a' and 'REF-A' are two trades
Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite auto-increments only INTEGER PRIMARY KEY
Price = Numeric(18, 4)  # currency units per share
Fee = Numeric(18, 4)  # currency units per trade
ActionValue = Numeric(18, 6)  # new shares per old share (SPLIT), or currency units per share (DIVIDEND)
LotQuantity = Numeric(38, 12)  # a FIFO lot's shares: a split of a lot may leave a fraction
Amount = Numeric(38, 6)  # currency units: a BIGINT holding at the largest price loading accepts fits
Ratio = Numeric(12, 8)  # a share between 0 and 1
Volatility = Numeric(24, 8)  # annualized, a fraction: closes anywhere in the accepted range (0.0001 to 10**9) fit
Score = Numeric(6, 2)  # 0..100
Return = Numeric(30, 10)  # a rate of return, a fraction (0.05 = +5%): wide, as a tiny starting value makes it large
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")  # MySQL's TEXT stops at 64 KB

RISK_PROFILES = ("conservative", "balanced", "aggressive")
RISK_LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
ALERT_SEVERITIES = ("LOW", "MEDIUM", "HIGH")
ALERT_STATUSES = ("OPEN", "RESOLVED")
RETURN_PERIODS = ("1M", "3M", "YTD", "1Y", "ALL")
BATCH_STATUSES = ("running", "loaded", "failed")
CORPORATE_ACTIONS = ("SPLIT", "DIVIDEND")
COST_METHODS = ("wac", "fifo")

# CHECK names are per schema in MySQL 8, so each carries its table name.
metadata = MetaData(naming_convention={"ck": "ck_%(table_name)s_%(constraint_name)s"})


def _one_of(column, values):
    return CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=column)


investors = Table(
    "investors", metadata,
    Column("investor_id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("risk_profile", String(20), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    _one_of("risk_profile", RISK_PROFILES),
)

stocks = Table(
    "stocks", metadata,
    Column("stock_symbol", String(10), primary_key=True),
    Column("company_name", String(100), nullable=False),
    Column("sector", String(50), nullable=False),
)

market_prices = Table(
    "market_prices", metadata,
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("price_date", Date, primary_key=True),
    Column("close_price", Price, nullable=False),
    CheckConstraint("close_price > 0", name="close_price_positive"),
)

load_batches = Table(
    "load_batches", metadata,
    Column("batch_id", Id, primary_key=True, autoincrement=True),
    Column("source", String(500), nullable=False),  # a file path, or 'feed'
    Column("file_sha256", String(64)),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Column("rows_read", Integer, nullable=False, default=0),
    Column("rows_loaded", Integer, nullable=False, default=0),
    Column("rows_duplicate", Integer, nullable=False, default=0),
    Column("rows_rejected", Integer, nullable=False, default=0),
    Column("status", String(10), nullable=False),
    Column("error", String(1000)),  # why a failed batch failed
    Column("runner", String(200)),  # host:pid:process start of the loader, to tell a crashed run from a live one
    Column("applied_at", Timestamp),  # when update_portfolio applied its trades; NULL = pending
    Column("surveilled_at", Timestamp),  # when surveillance checked its trades; NULL = pending
    _one_of("status", BATCH_STATUSES),
    Index("ix_load_batches_sha", "file_sha256"),
    Index("ix_load_batches_pending", "status", "applied_at"),
    Index("ix_load_batches_unsurveilled", "status", "surveilled_at"),
)

transactions = Table(
    "transactions", metadata,
    Column("txn_id", Id, primary_key=True, autoincrement=True),
    Column("txn_ref", TxnRef, nullable=False, unique=True),
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), nullable=False),
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), nullable=False),
    Column("txn_type", String(4), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("price", Price, nullable=False),
    Column("txn_time", Timestamp, nullable=False),
    Column("fee", Fee, nullable=False, server_default="0"),  # commission and taxes of the trade, currency units
    Column("batch_id", Id, ForeignKey("load_batches.batch_id")),
    Column("source_line", Integer),  # line of the source file (1 = header), or record number in a feed batch
    _one_of("txn_type", ("BUY", "SELL")),
    CheckConstraint("quantity > 0", name="quantity_positive"),
    CheckConstraint("price > 0", name="price_positive"),
    CheckConstraint("fee >= 0", name="fee_not_negative"),
    Index("ix_transactions_position_time", "investor_id", "stock_symbol", "txn_time"),
    Index("ix_transactions_batch", "batch_id"),
)

loaded_chunks = Table(
    "loaded_chunks", metadata,  # chunks of a file's plain lines that one batch inserted every line of (loader)
    Column("chunk_digest", String(64), primary_key=True),  # sha256 of the file's layout and the chunk's bytes
    Column("batch_id", Id, ForeignKey("load_batches.batch_id"), nullable=False),
    Column("first_line", Integer, nullable=False),  # of the chunk in that batch's file (1 = header)
    Column("line_count", Integer, nullable=False),
)

rejected_transactions = Table(
    "rejected_transactions", metadata,
    Column("reject_id", Id, primary_key=True, autoincrement=True),
    Column("batch_id", Id, ForeignKey("load_batches.batch_id"), nullable=False),
    Column("line_number", Integer),  # 1 = header; first data row is 2
    Column("reason", String(1000), nullable=False),
    Column("raw_record", Text),
)

portfolios = Table(
    "portfolios", metadata,
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), primary_key=True),
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("quantity", BigInteger, nullable=False),  # a sum of INT trade quantities may pass 2**31
    Column("avg_cost", Price, nullable=False),
    Column("cost_basis", Amount, nullable=False),
    Column("realized_pnl", Amount, nullable=False),
    Column("dividend_income", Amount, nullable=False, server_default="0"),  # cash dividends received
    Column("fees_paid", Amount, nullable=False, server_default="0"),  # fees of the trades applied
    Column("last_price", Price),
    Column("market_value", Amount),
    Column("unrealized_pnl", Amount),
    Column("weight", Ratio),
    Column("risk_score", Score),
    Column("risk_level", String(10)),
    Column("updated_at", Timestamp, nullable=False),
    # Replay state: the last trade applied, in (txn_time, txn_id) order, so an update applies only what is new.
    Column("last_txn_time", Timestamp, nullable=False),
    Column("last_txn_id", Id, nullable=False),
    Column("trade_count", Integer, nullable=False),
    Column("last_trade_price", Price),  # the last trade's price in today's terms (after splits)
    CheckConstraint("quantity >= 0", name="quantity_not_negative"),
    _one_of("risk_level", RISK_LEVELS),
)

symbol_last_trades = Table(
    "symbol_last_trades", metadata,  # the latest trade per symbol: last_price when there is no close
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("txn_time", Timestamp, nullable=False),
    Column("txn_id", Id, nullable=False),
    Column("price", Price, nullable=False),
)

position_checkpoints = Table(
    "position_checkpoints", metadata,  # a position's state at the end of each week it traded (ledger.py)
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), primary_key=True),
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("week_start", Date, primary_key=True),  # the Monday of the week
    Column("quantity", BigInteger, nullable=False),
    Column("cost_basis", Amount, nullable=False),
    Column("realized_pnl", Amount, nullable=False),
    Column("dividend_income", Amount, nullable=False, server_default="0"),
    Column("fees_paid", Amount, nullable=False, server_default="0"),
    Column("last_txn_time", Timestamp, nullable=False),  # the last event applied by the end of the week
    Column("last_txn_id", Id, nullable=False),
    Column("trade_count", Integer, nullable=False),
    Column("last_trade_price", Price, nullable=False),  # the last trade's price (an oversold SELL included)
    Column("lots", LongText),  # FIFO: the open lots (ledger.pack_lots); NULL under weighted average cost
    sqlite_with_rowid=False,  # the key is the row: no second copy of it on SQLite
)

position_lots = Table(
    "position_lots", metadata,  # FIFO: each position's open lots, oldest first (ledger.py)
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), primary_key=True),
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("txn_id", Id, primary_key=True),  # the BUY that opened the lot
    Column("acquired_at", Timestamp, nullable=False),  # its txn_time
    Column("quantity", LotQuantity, nullable=False),  # shares left, in today's terms (after splits)
    Column("cost_basis", Amount, nullable=False),  # their cost, the BUY's fee share included
    Column("cost_per_share", Price, nullable=False),  # cost_basis / quantity, rounded
    CheckConstraint("quantity > 0", name="quantity_positive"),
)

corporate_actions = Table(
    "corporate_actions", metadata,  # splits and cash dividends (docs/corporate-actions.md)
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("ex_date", Date, primary_key=True),
    Column("action", String(10), primary_key=True),
    Column("value", ActionValue, nullable=False),  # SPLIT: new shares per old share; DIVIDEND: cash per share
    Column("ratio", String(20)),  # SPLIT given as 'new:old' whose value is no 6-decimal number ('1:3'); else NULL
    Column("lieu_price", Price),  # SPLIT: the cash-in-lieu price, fixed when the split is first applied
    Column("loaded_at", Timestamp, nullable=False),
    Column("applied_at", Timestamp),  # when update_portfolio applied it to positions; NULL = not yet
    _one_of("action", CORPORATE_ACTIONS),
    CheckConstraint("value > 0", name="value_positive"),
    Index("ix_corporate_actions_pending", "applied_at", "ex_date"),
)

# The rules positions are built by: a database whose positions an earlier version built (fees, corporate actions
# and the state they need did not exist) records none, and its next update replays every trade once.
LEDGER_VERSION = "2"

ledger_settings = Table(
    "ledger_settings", metadata,  # how positions were built: cost_method ('wac', 'fifo'), ledger_version
    Column("name", String(50), primary_key=True),
    Column("value", String(200), nullable=False),
)

symbol_marks = Table(
    "symbol_marks", metadata,  # what valuation takes from a symbol's closes, as of the last update (closes.py)
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("last_price", Price),  # the latest close on or before the update's day, else the latest trade's price
    Column("annual_volatility", Double),  # of the last daily returns, a fraction, unrounded as the scores use it
    Column("closes_digest", String(64), nullable=False),  # SHA-256 of everything above depends on
    Column("updated_at", Timestamp, nullable=False),
)

investor_risk = Table(
    "investor_risk", metadata,
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), primary_key=True),
    Column("total_market_value", Amount, nullable=False),
    Column("total_cost_basis", Amount, nullable=False),
    Column("realized_pnl", Amount, nullable=False),
    Column("unrealized_pnl", Amount, nullable=False),
    Column("dividend_income", Amount, nullable=False, server_default="0"),
    Column("fees_paid", Amount, nullable=False, server_default="0"),
    Column("open_positions", Integer, nullable=False),
    Column("top_position_weight", Ratio, nullable=False),
    Column("hhi", Ratio, nullable=False),
    Column("top_sector_weight", Ratio, nullable=False),
    Column("weighted_volatility", Volatility, nullable=False),  # annualized, weighted by market value
    # Historical simulation: today's holdings valued over the price history (see update_portfolio.risk_metrics).
    Column("portfolio_volatility", Volatility),  # annualized standard deviation of the daily returns
    Column("var_95_1d", Amount),  # 1-day 95% Value at Risk, currency units (a loss, positive)
    Column("expected_shortfall_95_1d", Amount),  # mean loss on the days at or beyond the VaR, currency units
    Column("parametric_var_95_1d", Amount),  # variance-covariance VaR of the same daily P&L, currency units
    Column("max_drawdown", Ratio),  # largest fall from a running peak of the value, as a share of that peak
    Column("risk_score", Score, nullable=False),
    Column("risk_level", String(10), nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    _one_of("risk_level", RISK_LEVELS),
)

alerts = Table(
    "alerts", metadata,
    Column("alert_id", Id, primary_key=True, autoincrement=True),
    Column("alert_key", exact_text(200), nullable=False, unique=True),  # rule + subject: makes re-runs idempotent
    Column("rule", String(30), nullable=False),
    Column("severity", String(10), nullable=False),
    Column("investor_id", Integer, ForeignKey("investors.investor_id")),
    Column("stock_symbol", String(10)),
    Column("txn_ref", TxnRef),  # NULL for position-level alerts
    Column("detected_at", Timestamp, nullable=False),
    Column("metric", Numeric(24, 6)),
    Column("threshold", Numeric(24, 6)),
    Column("details", String(1000), nullable=False),
    Column("status", String(10), nullable=False, server_default="OPEN"),  # OPEN or RESOLVED (alerts.py)
    Column("resolved_at", Timestamp),
    Column("resolved_by", String(100)),  # the login of the person, or 'update_portfolio' for a cleared condition
    Column("resolution_note", String(1000)),
    _one_of("severity", ALERT_SEVERITIES),
    _one_of("status", ALERT_STATUSES),
    Index("ix_alerts_investor", "investor_id", "stock_symbol"),
)

investor_daily = Table(
    "investor_daily", metadata,  # one row per investor and weekday from its first trade on (performance.py)
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), primary_key=True),
    Column("value_date", Date, primary_key=True),
    Column("market_value", Amount, nullable=False),  # holdings at that day's closes, currency units
    Column("cost_basis", Amount, nullable=False),
    Column("realized_pnl", Amount, nullable=False),  # cumulative, as in portfolios
    Column("dividend_income", Amount, nullable=False),  # cumulative
    Column("fees_paid", Amount, nullable=False),  # cumulative
    Column("inflow", Amount, nullable=False),  # that day: buy notionals and their fees
    Column("outflow", Amount, nullable=False),  # that day: sell proceeds net of fees, dividends, cash in lieu
    Column("net_flow", Amount, nullable=False),  # inflow - outflow
)

investor_returns = Table(
    "investor_returns", metadata,  # time- and money-weighted returns per investor and period (performance.py)
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), primary_key=True),
    Column("period", String(3), primary_key=True),
    Column("start_date", Date),  # the day whose close starts the period (its value is the period's start value)
    Column("end_date", Date),
    Column("start_value", Amount),
    Column("end_value", Amount),
    Column("twr", Return),  # time-weighted return, a fraction; NULL where the period has no value
    Column("irr", Return),  # money-weighted return, annualized only for periods longer than a year
    Column("updated_at", Timestamp, nullable=False),
    _one_of("period", RETURN_PERIODS),
)

# What investor_daily was built from (performance.py): an update compares it with what is stored now and rebuilds
# an investor's days only from the earliest day that changed.
investor_daily_builds = Table(
    "investor_daily_builds", metadata,  # per investor: what its rows of investor_daily cover
    Column("investor_id", Integer, ForeignKey("investors.investor_id"), primary_key=True),
    Column("first_day", Date, nullable=False),  # its first row: the weekday of its first trade
    Column("built_through", Date, nullable=False),  # its last row: the last weekday up to the update's day
    Column("trade_count", BigInteger, nullable=False),  # its trades covered (the sum of its portfolios.trade_count)
    Column("txn_id_through", Id, nullable=False),  # the highest txn_id stored when it was built
    Column("updated_at", Timestamp, nullable=False),
)

performance_closes = Table(
    "performance_closes", metadata,  # the daily closes investor_daily was valued with, up to its last day
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("price_date", Date, primary_key=True),
    Column("close_price", Price, nullable=False),  # as in market_prices when the days were built
    sqlite_with_rowid=False,
)

performance_actions = Table(
    "performance_actions", metadata,  # the corporate actions investor_daily applied
    Column("stock_symbol", String(10), ForeignKey("stocks.stock_symbol"), primary_key=True),
    Column("ex_date", Date, primary_key=True),
    Column("action", String(10), primary_key=True),
    Column("value", String(60), nullable=False),  # the exact value as a fraction, '3/2' (a 3-for-2 SPLIT)
    Column("lieu_price", Price),  # SPLIT: the cash-in-lieu price applied
    _one_of("action", CORPORATE_ACTIONS),
)


def mysql_ddl(database="stock_investments"):
    """Render the schema as MySQL/MariaDB DDL (the text of create_tables.sql)."""
    dialect = mysql.dialect()
    lines = [
        "-- stock-etl schema for MySQL/MariaDB, rendered from schema.py by `python schema.py > create_tables.sql`.",
        "-- Usage: mysql -u root -p < create_tables.sql   (idempotent: creates only what is missing)",
        f"CREATE DATABASE IF NOT EXISTS {database} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;",
        f"USE {database};",
    ]
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip()
        # Indexes go inside CREATE TABLE: MySQL 8 has no CREATE INDEX IF NOT EXISTS.
        indexes = [
            f"\tINDEX {index.name} ({', '.join(column.name for column in index.columns)})"
            for index in sorted(table.indexes, key=lambda i: i.name)
        ]
        if indexes:
            ddl = ddl[: ddl.rindex(")")].rstrip() + ",\n" + ",\n".join(indexes) + "\n)"
        lines.append(f"\n{ddl} ENGINE=InnoDB;")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(mysql_ddl(), end="")
