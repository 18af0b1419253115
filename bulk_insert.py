"""Insert validated trades through each database's own bulk path, skipping txn_refs that already exist.

One interface, `insert_columns(connection, columns) -> rows inserted`, over:
SQLite `INSERT OR IGNORE` executemany; MySQL/MariaDB `LOAD DATA LOCAL INFILE ... IGNORE` (falling back to
`INSERT IGNORE` executemany when the server or client has local_infile off; the server may read only the
temporary file written for the statement, see db_config.local_file_allowed); PostgreSQL `COPY` into a staging
table then `INSERT ... ON CONFLICT DO NOTHING`; any other database a portable SQLAlchemy insert of the refs
not yet present. Skipping rather than failing on an existing txn_ref keeps two loaders at once safe; the
caller reconciles the count (see load_transactions).
"""
import glob
import logging
import os
import tempfile
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

import batches
import db_config
import dialects
from schema import transactions

logger = logging.getLogger(__name__)

TRADE_COLUMNS = ("txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time", "fee")
INSERT_COLUMNS = TRADE_COLUMNS + ("batch_id", "source_line")  # price and fee as validation's 4-decimal text
MYSQL_BATCH_ROWS = 10_000
MYSQL_LOCAL_INFILE_REFUSED = {1148, 2068, 3948, 4166}  # not allowed / rejected by the client / disabled on the server
# (MySQL 3948, MariaDB 4166)
TEMP_FILE_PREFIX = "stock-etl-load-"  # then the writer's pid: stock-etl-load-<pid>-<random>.tsv


def insert_columns(connection, columns, method=None, tsv=None):
    """Insert trades given as one list per INSERT_COLUMNS entry; return how many were inserted.

    Columns rather than row tuples: drivers zip them as they go. tsv: the same rows as tab_separated(columns) made
    in advance (the validating process does it for MySQL); then columns are read only if LOAD DATA is refused.
    method: None picks the dialect's bulk path; 'portable' forces the SQLAlchemy fallback (tests, benchmarks);
    'small' is for a few rows (MySQL: INSERT IGNORE rather than LOAD DATA's temporary file).
    """
    if not (tsv or columns[0]):  # with tsv, columns are used only if LOAD DATA is refused
        return 0
    paths = {"portable": lambda _name: "portable", "small": dialects.small_bulk_path}
    path = paths.get(method, dialects.bulk_path)(connection.dialect.name)
    return _BULK_PATHS[path](connection, columns, tsv)


def prepared_text(dialect_name, columns):
    """What the validating process can prepare for a dialect's bulk path: LOAD DATA's text (MySQL), else None."""
    return tab_separated(columns) if dialects.bulk_path(dialect_name) == "load_data" else None


def tab_separated(columns):
    """The rows as LOAD DATA text: tab-separated, one per line, with backslash escapes where needed."""
    text_columns = [[mysql_field(value) for value in column] if _needs_escaping(column) else list(map(str, column))
                    for column in columns]
    return "\n".join(map("\t".join, zip(*text_columns))) + "\n"


def trade_columns(trades, batch_id):
    """Plain Python lists in INSERT_COLUMNS order (drivers do not take numpy scalars)."""
    return [trades[c].tolist() for c in TRADE_COLUMNS] + [[batch_id] * len(trades), trades["line_number"].tolist()]


def _insert_sqlite(connection, columns, _tsv=None, table="transactions"):
    placeholders = ", ".join("?" * len(INSERT_COLUMNS))
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.executemany(
            f"INSERT OR IGNORE INTO {table} ({', '.join(INSERT_COLUMNS)}) VALUES ({placeholders})", zip(*columns))
        return cursor.rowcount
    finally:
        cursor.close()


def _insert_mysql(connection, columns, tsv=None, table="transactions"):
    engine_state = connection.engine.__dict__
    if engine_state.get("stock_etl_local_infile", True):
        try:
            return _load_data_local_infile(connection, tsv or tab_separated(columns), table)
        except OperationalError as error:
            if not local_infile_refused(error):
                raise
            engine_state["stock_etl_local_infile"] = False
            logger.warning("LOAD DATA LOCAL INFILE refused (%s); loading with INSERT IGNORE, which is slower",
                           error.orig.args[-1])
    return _insert_ignore_mysql(connection, list(zip(*columns)), table)


def _load_data_local_infile(connection, tsv, table="transactions"):
    return load_data_local(connection, tsv, table, INSERT_COLUMNS)


def load_data_local(connection, tsv, table, columns, duplicates="IGNORE"):
    """LOAD DATA LOCAL INFILE of `tsv` (lines as tab_separated makes them) into these columns of table, through a
    temporary file readable by its owner only; duplicates: IGNORE or REPLACE a row of a stored key. Returns the
    rows the server reports."""
    handle = tempfile.NamedTemporaryFile(  # readable by its owner only (0600), as NamedTemporaryFile makes it
        "w", encoding="utf-8", newline="\n", prefix=f"{TEMP_FILE_PREFIX}{os.getpid()}-", suffix=".tsv", delete=False)
    try:
        with handle:
            handle.write(tsv)
        with db_config.local_file_allowed(connection.connection.dbapi_connection, handle.name):
            result = connection.exec_driver_sql(
                f"LOAD DATA LOCAL INFILE %s {duplicates} INTO TABLE {table} CHARACTER SET utf8mb4 FIELDS TERMINATED "
                f"BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({', '.join(columns)})",
                (handle.name,),
            )
        return result.rowcount
    finally:
        os.unlink(handle.name)


def loaded_by_file(connection, table, columns, lines, duplicates="IGNORE"):
    """Write rows by LOAD DATA LOCAL INFILE where the database loads files (MySQL: its driver escapes each value of
    an INSERT in Python, about 2 s for 30,000 rows of ten amounts); `lines` (an iterable of lines as mysql_field
    makes their fields, only read here) go into these columns of table. Returns False, having written nothing,
    where the database does not load files or the server or the connection refuses local files: the caller
    inserts them."""
    if dialects.bulk_path(connection.dialect.name) != "load_data":
        return False
    remove_stale_temp_files()  # of a loader or update killed during its LOAD DATA
    try:
        load_data_local(connection, "".join(lines), table, columns, duplicates)
        return True
    except OperationalError as error:
        if not local_infile_refused(error):
            raise
        logger.warning("LOAD DATA LOCAL INFILE refused (%s); writing %s with INSERT, which is slower",
                       error.orig.args[-1], table)
        return False


def decimal_field(value):
    """A LOAD DATA field of a DECIMAL column: a Decimal in plain notation (never 1E+2), None as \\N."""
    return "\\N" if value is None else format(value, "f")


def local_infile_refused(error):
    """Is this OperationalError the server or the client refusing LOAD DATA LOCAL INFILE?"""
    return error.orig is not None and bool(error.orig.args) and error.orig.args[0] in MYSQL_LOCAL_INFILE_REFUSED


def remove_stale_temp_files():
    """Remove the LOAD DATA files of loaders that are gone (killed mid-load); return how many were removed."""
    removed = 0
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{TEMP_FILE_PREFIX}*.tsv")):
        pid = os.path.basename(path)[len(TEMP_FILE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and batches.process_start(int(pid)) is None:
            try:
                os.unlink(path)
                removed += 1
            except OSError:  # removed by another loader meanwhile, or another user's file
                continue
    return removed


def _needs_escaping(column):
    """Does a column hold a value that LOAD DATA would misread (None, backslash, tab, line break)?"""
    if None in column:
        return True
    if not column or not isinstance(column[0], str):
        return False
    joined = "".join(column)
    return "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined


def mysql_field(value):
    """A LOAD DATA field: backslash, tab and newline escaped; None as \\N."""
    if value is None:
        return "\\N"
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _insert_ignore_mysql(connection, rows, table="transactions"):
    statement = (f"INSERT IGNORE INTO {table} ({', '.join(INSERT_COLUMNS)}) "
                 f"VALUES ({', '.join(['%s'] * len(INSERT_COLUMNS))})")
    cursor = connection.connection.dbapi_connection.cursor()
    inserted = 0
    try:
        for start in range(0, len(rows), MYSQL_BATCH_ROWS):
            inserted += cursor.executemany(statement, rows[start:start + MYSQL_BATCH_ROWS])
        return inserted
    finally:
        cursor.close()


def _insert_postgresql(connection, columns, _tsv=None):
    names = ", ".join(INSERT_COLUMNS)
    copy_to_staging(connection, columns)
    result = connection.exec_driver_sql(
        f"INSERT INTO transactions ({names}) SELECT {names} FROM staging_transactions "
        f"ORDER BY source_line ON CONFLICT (txn_ref) DO NOTHING"
    )
    connection.exec_driver_sql("TRUNCATE staging_transactions")
    return result.rowcount


def copy_to_staging(connection, columns):
    """PostgreSQL: COPY the rows into the transaction's temporary table staging_transactions (created here)."""
    connection.exec_driver_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS staging_transactions (txn_ref VARCHAR(64), investor_id INTEGER, "
        "stock_symbol VARCHAR(10), txn_type VARCHAR(4), quantity INTEGER, price NUMERIC(18, 4), "
        "txn_time TIMESTAMP, fee NUMERIC(18, 4), batch_id BIGINT, source_line INTEGER) ON COMMIT DROP"
    )
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        with cursor.copy(f"COPY staging_transactions ({', '.join(INSERT_COLUMNS)}) FROM STDIN") as copy:
            for row in zip(*columns):
                copy.write_row(row)
    finally:
        cursor.close()


STAGING_TABLE_SQL = {  # by bulk path; PostgreSQL's is made by copy_to_staging
    "insert_or_ignore": "CREATE TEMPORARY TABLE IF NOT EXISTS staging_transactions (txn_ref TEXT, "
                        "investor_id INTEGER, stock_symbol TEXT, txn_type TEXT, quantity INTEGER, price NUMERIC, "
                        "txn_time TEXT, fee NUMERIC, batch_id INTEGER, source_line INTEGER)",
    # MySQL: the columns of transactions as they are, collations included (texts of two collations cannot be
    # compared), keyed by line: rows arrive in line order, and ORDER BY source_line then needs no sort
    "load_data": "CREATE TEMPORARY TABLE IF NOT EXISTS staging_transactions (PRIMARY KEY (source_line)) "
                 f"AS SELECT {', '.join(INSERT_COLUMNS)} FROM transactions LIMIT 0",
}
STAGING_EMPTYING_SQL = {  # by bulk path; none commits the transaction
    "insert_or_ignore": "DELETE FROM staging_transactions",  # SQLite truncates on a DELETE without WHERE
    "load_data": "DROP TEMPORARY TABLE staging_transactions",  # MySQL's TRUNCATE commits; DELETE undoes row by row
    "copy": "TRUNCATE staging_transactions",
}


def can_stage(dialect_name):
    """Has the database a bulk path into the temporary table staging_transactions (see stage_columns)?"""
    return dialects.bulk_path(dialect_name) in ("insert_or_ignore", "load_data", "copy")


def stage_columns(connection, columns, tsv=None):
    """Put the rows into the transaction's temporary table staging_transactions (made here, emptied by the
    caller with empty_staging) by the database's bulk path."""
    path = dialects.bulk_path(connection.dialect.name)
    if path == "copy":
        copy_to_staging(connection, columns)
        return
    connection.exec_driver_sql(STAGING_TABLE_SQL[path])
    staged = _insert_mysql(connection, columns, tsv, "staging_transactions") if path == "load_data" else \
        _insert_sqlite(connection, columns, table="staging_transactions")
    if staged != len(columns[0]):
        raise RuntimeError(f"staging kept {staged} of {len(columns[0])} rows")


def empty_staging(connection):
    """Empty the temporary table staging_transactions, inside the transaction."""
    connection.exec_driver_sql(STAGING_EMPTYING_SQL[dialects.bulk_path(connection.dialect.name)])


def _insert_portable(connection, columns, _tsv=None):
    records = [dict(zip(INSERT_COLUMNS, row)) for row in zip(*columns)]
    refs = [record["txn_ref"] for record in records]
    existing = set()
    for start in range(0, len(refs), dialects.LOOKUP_SLICE):
        chunk = refs[start:start + dialects.LOOKUP_SLICE]
        existing.update(connection.execute(
            select(transactions.c.txn_ref).where(transactions.c.txn_ref.in_(chunk))).scalars())
    new_rows = [
        {**record, "price": Decimal(record["price"]), "fee": Decimal(record["fee"]),
         "txn_time": datetime.fromisoformat(record["txn_time"])}
        for record in records if record["txn_ref"] not in existing
    ]
    if new_rows:
        connection.execute(transactions.insert(), new_rows)
    return len(new_rows)


# By dialects.bulk_path. Each takes (connection, columns, tsv); only load_data uses tsv, the rows as LOAD DATA
# text made in advance by the validating process (see prepared_text).
_BULK_PATHS = {"insert_or_ignore": _insert_sqlite, "load_data": _insert_mysql, "copy": _insert_postgresql,
               "insert_ignore": lambda connection, columns, _tsv: _insert_ignore_mysql(connection, [*zip(*columns)]),
               "portable": _insert_portable}
