"""The bulk paths and their fallbacks load the same rows, with the same counts, on every database."""
import os
import re
import stat
import tempfile
from contextlib import contextmanager

from decimal import Decimal

import pymysql
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

import bulk_insert
import db_config
import load_transactions
import seed_investors
import update_portfolio
from private_mariadb import PrivateMariaDB
from schema import transactions

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
LINES = [
    HEADER,
    "t1,1001,AAPL,BUY,10,190.5,2025-01-02 10:00:00",
    "t2,1002,msft,sell,3,410.1234,2025-01-02T10:01:00",
    "t\\3,1003,KO,BUY,7,62,2025-01-02 10:02:00",  # a backslash: LOAD DATA must not read it as an escape
    "t1,1001,AAPL,BUY,10,190.50,2025-01-02 10:00:00",  # a duplicate in the file
    "t4,1004,TSLA,BUY,0,200,2025-01-02 10:03:00",  # rejected
    "t5,1005,NVDA,BUY,1,850,2025-01-02 10:04",
]


def stored(engine):
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT txn_ref, investor_id, stock_symbol, txn_type, quantity, price, txn_time, source_line "
            "FROM transactions ORDER BY txn_id")).all()
    return [(r[0], r[1], r[2], r[3], r[4], float(r[5]), str(r[6])[:19], r[7]) for r in rows]


def load_with(url, path, method, chunk_rows=2):
    engine = db_config.get_engine(url)
    seed_investors.seed_reference_data(engine)
    summary = load_transactions.load_file(engine, str(path), chunk_rows=chunk_rows, method=method)
    rows = stored(engine)
    engine.dispose()
    return (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected), rows


@pytest.mark.parametrize("database", ["sqlite", "mariadb"])
def test_bulk_path_and_portable_fallback_load_the_same_rows(database, request, tmp_path):
    path = tmp_path / "trades.csv"
    path.write_text("\n".join(LINES) + "\n")
    url_bulk = request.getfixturevalue(f"{database}_url")
    url_portable = f"sqlite:///{tmp_path / 'portable.db'}" if database == "sqlite" else request.getfixturevalue(
        "second_mariadb_url")

    bulk = load_with(url_bulk, path, method=None)
    portable = load_with(url_portable, path, method="portable")

    assert bulk == portable
    assert bulk[0] == (6, 4, 1, 1)
    assert [row[0] for row in bulk[1]] == ["t1", "t2", "t\\3", "t5"]
    assert bulk[1][1][2:4] == ("MSFT", "SELL") and bulk[1][1][5] == pytest.approx(410.1234)
    assert bulk[1][3][6] == "2025-01-02 10:04:00"


def test_mariadb_without_local_infile_falls_back_to_insert_ignore(mariadb_url, tmp_path, monkeypatch, caplog):
    path = tmp_path / "trades.csv"
    path.write_text("\n".join(LINES) + "\n")
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    refused = []

    # Simulate a server with local_infile off: error 3948 "Loading local data is disabled".
    def disabled(connection, tsv, table="transactions"):
        refused.append(tsv.count("\n"))
        raise OperationalError("LOAD DATA", {}, pymysql.err.OperationalError(
            3948, "Loading local data is disabled; this must be enabled on both the client and server sides"))

    monkeypatch.setattr(bulk_insert, "_load_data_local_infile", disabled)
    summary = load_transactions.load_file(engine, str(path), chunk_rows=2)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (4, 1, 1)
    assert refused == [2]  # tried once, then the engine remembers the server refuses
    assert "LOAD DATA LOCAL INFILE refused" in caplog.text
    assert [row[0] for row in stored(engine)] == ["t1", "t2", "t\\3", "t5"]
    engine.dispose()


def test_mariadb_load_data_lets_the_server_read_only_its_own_temp_file(mariadb_url, tmp_path, monkeypatch, caplog):
    """Each LOAD DATA allows one file: an owner-only stock-etl-load-<pid>-*.tsv, removed once loaded."""
    path = tmp_path / "trades.csv"
    path.write_text("\n".join(LINES) + "\n")
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    allowed, allow = [], db_config.local_file_allowed

    @contextmanager
    def recording(dbapi_connection, file_path):
        allowed.append((file_path, stat.S_IMODE(os.stat(file_path).st_mode), type(dbapi_connection)))
        with allow(dbapi_connection, file_path):
            yield

    monkeypatch.setattr(db_config, "local_file_allowed", recording)
    summary = load_transactions.load_file(engine, str(path), chunk_rows=2)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (4, 1, 1)
    assert [row[0] for row in stored(engine)] == ["t1", "t2", "t\\3", "t5"]
    assert "LOAD DATA LOCAL INFILE refused" not in caplog.text
    name = re.compile(rf"{re.escape(tempfile.gettempdir())}/stock-etl-load-{os.getpid()}-[^/]+\.tsv")
    assert allowed and all(name.fullmatch(file_path) and mode == 0o600 and kind is db_config.LocalFileGuard
                           for file_path, mode, kind in allowed)
    assert not any(os.path.exists(file_path) for file_path, _, _ in allowed)
    engine.dispose()


# Fees at the edges of DECIMAL(18,4): none (an empty cell), 0, one decimal, the smallest and the largest
FEE_LINES = [HEADER + ",fee"] + [f"f{n},1001,AAPL,BUY,1,10,2025-01-02 10:00:0{n},{fee}"
                                 for n, fee in enumerate(["", "0", "1.5", "0.0001", "999999999.9999"])]
FEES = {"f0": Decimal("0"), "f1": Decimal("0"), "f2": Decimal("1.5"), "f3": Decimal("0.0001"),
        "f4": Decimal("999999999.9999")}


def stored_fees(engine):
    """{txn_ref: fee as Decimal} of every stored trade."""
    with engine.connect() as connection:
        return {ref: Decimal(str(fee)) for ref, fee in connection.execute(
            select(transactions.c.txn_ref, transactions.c.fee))}


def round_trip_fees(engine, path, method):
    """Load the fee file through `method`, then again (as --retry-rejects does): (stored fees, counts of each)."""
    first = load_transactions.load_file(engine, str(path), method=method)
    again = load_transactions.load_file(engine, str(path), method=method, again=True)
    return stored_fees(engine), [(summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected)
                                 for summary in (first, again)]


# None: the dialect's bulk path (SQLite INSERT OR IGNORE, MariaDB LOAD DATA); 'small': a live batch's (MariaDB
# INSERT IGNORE); 'portable': the SQLAlchemy insert
@pytest.mark.parametrize("method", [None, "small", "portable"])
def test_every_bulk_path_stores_fees_exactly_and_reads_them_back_as_the_same_trades(seeded_engine, tmp_path,
                                                                                     method):
    path = tmp_path / "fees.csv"
    path.write_text("\n".join(FEE_LINES) + "\n")

    fees, counts = round_trip_fees(seeded_engine, path, method)

    assert fees == FEES
    assert counts == [(5, 0, 0), (0, 5, 0)]  # loaded again: every trade the same, its fee included


def test_mariadb_insert_ignore_fallback_stores_fees(mariadb_url, tmp_path, monkeypatch):
    path = tmp_path / "fees.csv"
    path.write_text("\n".join(FEE_LINES) + "\n")
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    engine.__dict__["stock_etl_local_infile"] = False  # as after a server refused LOAD DATA LOCAL INFILE
    loads = []
    monkeypatch.setattr(bulk_insert, "_load_data_local_infile", lambda *args: loads.append(args))

    fees, counts = round_trip_fees(engine, path, None)

    assert (fees, counts, loads) == (FEES, [(5, 0, 0), (0, 5, 0)], [])
    engine.dispose()


def test_a_server_with_local_files_off_loads_by_insert_ignore_and_updates_by_upsert(tmp_path, caplog):
    """A real MariaDB with local_infile = 0 (a private server: the shared one is never changed) refuses LOAD DATA
    LOCAL with error 4166: the load falls back to INSERT IGNORE, the update's checkpoints to an upsert, and both
    store what a server that allows it stores."""
    path = tmp_path / "trades.csv"
    path.write_text("\n".join(LINES) + "\n")
    with PrivateMariaDB.create(prefix="stock-etl-no-local-files-") as server:
        server.query("SET GLOBAL local_infile = 0")
        server.query("CREATE DATABASE refused CHARACTER SET utf8mb4")
        engine = db_config.get_engine(server.url("refused"))
        try:
            seed_investors.seed_reference_data(engine)
            summary = load_transactions.load_file(engine, str(path))
            update_portfolio.update_portfolios(engine)
            with engine.connect() as connection:
                checkpoints = connection.execute(text("SELECT COUNT(*) FROM position_checkpoints")).scalar()
            loaded = stored(engine)
        finally:
            engine.dispose()
    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (4, 1, 1)
    assert "LOAD DATA LOCAL INFILE refused (The used command is not allowed" in caplog.text
    assert [row[0] for row in loaded] == ["t1", "t2", "t\\3", "t5"]
    assert checkpoints == 4  # one per position and week traded
