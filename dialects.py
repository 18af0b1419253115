"""What differs between the databases (SQLite, MySQL/MariaDB, PostgreSQL), kept in one place.

Each database is one Dialect record in DIALECTS, read through one small function per difference; a database
not listed gets DEFAULT (standard SQL, the portable bulk insert, no named locks). Adding a database means
adding its record here, and a bulk path in bulk_insert if it has a faster one than the portable insert.
Also here, because every database must compute it alike: a trade's values text, which decides whether two
trades with one txn_ref are the same trade.
"""
import functools
import re
from typing import NamedTuple

from sqlalchemy import func, text, tuple_
from sqlalchemy.dialects import mysql, postgresql, sqlite

LOOKUP_SLICE = 500  # bound parameters per IN (...) lookup: within SQLite's limit (999 before SQLite 3.32)

# "The same trade values", defined once. Two trades with one txn_ref are the same trade when their values texts
# agree: VALUE_COLUMNS joined by commas, each as validation normalizes it (price and fee as validation.price_text
# writes them, with exactly 4 decimals: '10.5000'; txn_time as 'YYYY-MM-DD HH:MM:SS'). A trade given without a fee
# has fee 0 ('0.0000'), stored and validated alike. values_text makes the text in Python from validated rows;
# values_sql makes the same text in the database from stored trades (price and fee are exact there below
# validation.MAX_PRICE). tests/test_dialects.py proves that the two agree on every database.
VALUE_COLUMNS = ("investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time", "fee")
TEXT_VALUE_COLUMNS = ("stock_symbol", "txn_type")  # the others are numbers and a date-time
SQLITE_VALUES_SQL = ("investor_id || ',' || stock_symbol || ',' || txn_type || ',' || quantity || ',' || "
                     "printf('%.4f', price) || ',' || txn_time || ',' || printf('%.4f', fee)")
STANDARD_VALUES_SQL = ("CONCAT_WS(',', investor_id, stock_symbol, txn_type, quantity, "
                       "CAST(price AS DECIMAL(18, 4)), txn_time, CAST(fee AS DECIMAL(18, 4)))")


def values_text(rows):
    """The values text of each validated row (rows: columns by name, as validation.validate_trades gives them)."""
    return [",".join(map(str, values)) for values in zip(*(rows[column] for column in VALUE_COLUMNS))]


class SessionLock(NamedTuple):
    """Statements that take and release a named session-level lock (it outlives a commit); :name binds. take
    returns 1 once the lock is held (MySQL: 0 after its hour of waiting, NULL when the wait was killed).
    take_call and release_call, where given, are the same as calls ({param}: the bound parameter's name) that
    one SELECT can list, in order: several locks for one round trip."""
    take: str
    release: str
    take_call: str = None
    release_call: str = None


class ForeignKeySwitch(NamedTuple):
    """Statements that turn a connection's foreign key checks off and on again, and whether they must run
    outside a transaction (SQLite ignores its pragma inside one)."""
    off: str
    on: str
    outside_transaction: bool = False


class SortMemory(NamedTuple):
    """How to bound the memory a connection's own sort of a whole table takes: `read` returns the setting, `set`
    ({value}) changes it, `small` is the bound."""
    read: str
    set: str
    small: str


class DatabaseCreation(NamedTuple):
    """How to create a missing database: connect to `maintenance_database`, run `statement` with {name}."""
    maintenance_database: str
    statement: str


class Dialect(NamedTuple):
    """What one database does its own way."""
    bulk_path: str  # bulk_insert's path for new trades; 'portable' is a SQLAlchemy insert of the refs not stored
    lookup_slice: int  # txn_refs per IN (...) lookup of stored trades' values texts
    values_sql: str  # a stored trade's values text, over the columns of transactions (see values_text)
    stage_lock: SessionLock  # one stage run at a time; None where the write lock already serializes
    database_creation: DatabaseCreation  # None: no server to create a database on
    refresh_statistics_sql: str  # refreshes optimizer statistics after a bulk load; None where not needed
    packs_rows: bool  # read a row (a trade, a close) as one CONCAT_WS text column: 3x faster through the driver
    small_bulk_path: str = None  # bulk_insert's path for a few rows (a live batch); None: bulk_path
    valuation_lock_file: bool = False  # no named locks: the valuation lock is a file locked beside the database
    foreign_key_switch: ForeignKeySwitch = None  # None: checks stay on (PostgreSQL's need a superuser to skip)
    columns_sql: str = ("SELECT table_name, column_name FROM information_schema.columns "
                        "WHERE table_schema = current_schema()")  # (table, column) of every table of the database
    exact_text_equality: str = None  # SQL true when text columns {a} and {b} hold the same bytes (not so for = under
    # a case- or pad-insensitive collation); None: not known here
    groups_trades: bool = False  # read the trades of whole positions as one text per position (ledger.stream_trades)
    unindexed_scan: str = ""  # after `transactions t` in FROM: read it in storage order, not through its position index
    index_exists_sql: str = None  # unindexed_scan names the index: SQL listing its columns (:name), else None
    sort_memory: SortMemory = None  # None: the server sorts in its own memory, not the client's
    driver_streams: bool = False  # the driver's cursor steps through a result as it is fetched (no server buffers)


DEFAULT = Dialect(bulk_path="portable", lookup_slice=10 * LOOKUP_SLICE, values_sql=STANDARD_VALUES_SQL,
                  stage_lock=None, database_creation=None, refresh_statistics_sql=None, packs_rows=False)
DIALECTS = {
    "sqlite": Dialect(  # SQLite plans the surveillance queries well without statistics
        bulk_path="insert_or_ignore", lookup_slice=LOOKUP_SLICE, values_sql=SQLITE_VALUES_SQL,
        stage_lock=None, database_creation=None, refresh_statistics_sql=None, packs_rows=False,
        valuation_lock_file=True, exact_text_equality="{a} = {b}",  # BINARY collation
        unindexed_scan="NOT INDEXED",
        # the sorter runs in our process and takes memory in step with the page cache (10,000,000 trades sorted:
        # 238 MB peak and 21 s with db_config's 64 MiB cache, 124 MB and 17 s with 8 MiB)
        sort_memory=SortMemory("PRAGMA cache_size", "PRAGMA cache_size = {value}", "-8192"), driver_streams=True,
        foreign_key_switch=ForeignKeySwitch("PRAGMA foreign_keys = OFF", "PRAGMA foreign_keys = ON", True),
        columns_sql="SELECT m.name, c.name FROM sqlite_master m "
                                              "JOIN pragma_table_info(m.name) c WHERE m.type = 'table'"),
    "mysql": Dialect(
        bulk_path="load_data", lookup_slice=10 * LOOKUP_SLICE, values_sql=STANDARD_VALUES_SQL,
        stage_lock=SessionLock("SELECT GET_LOCK(:name, 3600)", "SELECT RELEASE_LOCK(:name)",
                               "GET_LOCK(:{param}, 3600)", "RELEASE_LOCK(:{param})"),
        database_creation=DatabaseCreation(
            None, "CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        refresh_statistics_sql="ANALYZE TABLE transactions, stocks, load_batches, portfolios, position_checkpoints",
        packs_rows=True, small_bulk_path="insert_ignore",  # LOAD DATA's temporary file costs more than one row
        foreign_key_switch=ForeignKeySwitch("SET SESSION foreign_key_checks = 0", "SET SESSION foreign_key_checks = 1"),
        columns_sql="SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = DATABASE()",
        exact_text_equality="CAST({a} AS BINARY) = CAST({b} AS BINARY)",  # utf8mb4_unicode_ci: 'ko' = 'KO '
        groups_trades=True,  # PyMySQL reads each row's packet in Python
        unindexed_scan="IGNORE INDEX ({index})",
        index_exists_sql="SHOW INDEX FROM transactions WHERE Key_name = :name"),
    "postgresql": Dialect(
        bulk_path="copy", lookup_slice=10 * LOOKUP_SLICE, values_sql=STANDARD_VALUES_SQL,
        stage_lock=SessionLock("SELECT 1 FROM (SELECT pg_advisory_lock(hashtext(:name))) AS taken",
                               "SELECT pg_advisory_unlock(hashtext(:name))"),
        database_creation=DatabaseCreation("postgres", "CREATE DATABASE {name}"),
        refresh_statistics_sql="ANALYZE transactions",
        packs_rows=True, exact_text_equality="{a} = {b}"),  # deterministic collations compare bytes
}


def dialect(dialect_name):
    """The record of a database by its SQLAlchemy dialect name ('sqlite', 'mysql', 'postgresql'), else DEFAULT."""
    return DIALECTS.get(dialect_name, DEFAULT)


def bulk_path(dialect_name):
    """The name of bulk_insert's path for new trades: 'insert_or_ignore', 'load_data', 'copy' or 'portable'."""
    return dialect(dialect_name).bulk_path


def small_bulk_path(dialect_name):
    """bulk_insert's path for a few rows (a live batch)."""
    record = dialect(dialect_name)
    return record.small_bulk_path or record.bulk_path


def valuation_lock_file(dialect_name):
    """Is the valuation lock (db_config.valuation_session) a locked file beside the database, for want of named
    locks?"""
    return dialect(dialect_name).valuation_lock_file


def lookup_slice(dialect_name):
    """How many txn_refs one IN (...) lookup of stored values texts takes."""
    return dialect(dialect_name).lookup_slice


def values_sql(dialect_name, alias=None):
    """The SQL expression of a stored trade's values text (see values_text), over the columns of transactions, or
    of the table named `alias` (one with the same columns: the staging table)."""
    expression = dialect(dialect_name).values_sql
    return expression if alias is None else _QUALIFIED_COLUMN.sub(rf"{alias}.\1", expression)


def same_values_sql(dialect_name, stored, staged):
    """SQL that is true when the trades of two aliases (tables with the columns of transactions) have the same
    values text. Where text columns can be compared byte for byte, the columns are compared first: trades equal
    column by column have the same texts, and building the two texts costs several times more (SQLite's printf of
    price and fee: about 7 µs a row; comparing the columns: 0.6 µs)."""
    texts = f"{values_sql(dialect_name, stored)} = {values_sql(dialect_name, staged)}"
    text_equality = dialect(dialect_name).exact_text_equality
    if text_equality is None:
        return texts
    columns = [text_equality.format(a=f"{stored}.{column}", b=f"{staged}.{column}") if column in TEXT_VALUE_COLUMNS
               else f"{stored}.{column} = {staged}.{column}" for column in VALUE_COLUMNS]
    return f"({' AND '.join(columns)}) OR {texts}"


_QUALIFIED_COLUMN = re.compile(r"\b(" + "|".join(VALUE_COLUMNS) + r")\b")


def stage_lock(dialect_name):
    """The SessionLock that runs one stage at a time, or None where the write transaction already does."""
    return dialect(dialect_name).stage_lock


def database_creation(dialect_name):
    """The DatabaseCreation of a server database, or None (SQLite: a file is created on first use)."""
    return dialect(dialect_name).database_creation


def refresh_statistics_sql(dialect_name):
    """The statement that refreshes optimizer statistics after a bulk load, or None where none is needed."""
    return dialect(dialect_name).refresh_statistics_sql


def columns_sql(dialect_name):
    """The query listing (table name, column name) of every table of the connected database."""
    return dialect(dialect_name).columns_sql


def foreign_key_switch(dialect_name):
    """The ForeignKeySwitch of a database, or None where its foreign key checks stay on."""
    return dialect(dialect_name).foreign_key_switch


def groups_trades(dialect_name):
    """Should a reader of whole positions' trades read one text per position (GROUP_CONCAT of its packed trades)?"""
    return dialect(dialect_name).groups_trades


def packs_rows(dialect_name):
    """Should a reader of many rows (trades, closes) read each as one CONCAT_WS text column (3x faster)?"""
    return dialect(dialect_name).packs_rows


_CONFLICT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def upsert(connection, table, update_columns):
    """An INSERT of `table` rows that updates `update_columns` where the primary key exists: one atomic
    statement, so that two writers of the same key cannot both insert it."""
    return _upsert(connection.dialect.name, table, tuple(update_columns))


@functools.lru_cache(maxsize=64)
def _upsert(dialect_name, table, update_columns):  # built once: a live batch upserts three tables each time
    if dialect_name == "mysql":
        statement = mysql.insert(table)
        return statement.on_duplicate_key_update({column: statement.inserted[column] for column in update_columns})
    statement = _CONFLICT_INSERTS[dialect_name](table)
    return statement.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                           set_={column: statement.excluded[column] for column in update_columns})


def upsert_if_newer(connection, table, order_columns, update_columns):
    """An INSERT of `table` rows that, where the primary key exists, updates `update_columns` only when the row
    offered is newer by `order_columns` (compared as a tuple): one statement for many rows, whatever their order
    against what is stored."""
    return _upsert_if_newer(connection.dialect.name, table, tuple(order_columns), tuple(update_columns))


@functools.lru_cache(maxsize=16)
def _upsert_if_newer(dialect_name, table, order_columns, update_columns):
    if dialect_name == "mysql":  # assignments run left to right: the order columns last, the first of them last
        statement = mysql.insert(table)
        newer = tuple_(*(statement.inserted[c] for c in order_columns)) > tuple_(*(table.c[c] for c in order_columns))
        assigned = [c for c in update_columns if c not in order_columns] + list(order_columns[::-1])
        return statement.on_duplicate_key_update(
            [(c, func.if_(newer, statement.inserted[c], table.c[c])) for c in assigned])
    statement = _CONFLICT_INSERTS[dialect_name](table)
    newer = tuple_(*(statement.excluded[c] for c in order_columns)) > tuple_(*(table.c[c] for c in order_columns))
    return statement.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                           set_={c: statement.excluded[c] for c in update_columns}, where=newer)


POSITION_INDEX = "ix_transactions_position_time"  # schema.transactions' index by (investor_id, stock_symbol, txn_time)


def unindexed_scan(connection):
    """What follows `transactions t` in FROM to read it in storage order, never through its position index ('' where
    the planner needs no hint, or where the hint would name an index an administrator renamed, dropped or marked
    ignored: the server would refuse the statement)."""
    record = dialect(connection.dialect.name)
    if record.index_exists_sql is None:
        return record.unindexed_scan
    columns = connection.execute(text(record.index_exists_sql), {"name": POSITION_INDEX}).mappings().all()
    # an index MariaDB marks IGNORED (MySQL: not Visible) is refused in a hint as if it did not exist
    usable = columns and all(column.get("Ignored", "NO") == "NO" and column.get("Visible", "YES") == "YES"
                             for column in columns)
    return record.unindexed_scan.format(index=POSITION_INDEX) if usable else ""


def sort_memory(dialect_name):
    """The SortMemory statements of a database that sorts in the client's process, else None."""
    return dialect(dialect_name).sort_memory


def driver_streams(dialect_name):
    """Does the driver's own cursor step through a result as it is fetched, so that a big read can take it from
    there, without a server-side cursor?"""
    return dialect(dialect_name).driver_streams
