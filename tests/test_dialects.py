"""dialects: the table of what differs between databases, and the one definition of "the same trade values"."""
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import select, text

import bulk_insert
import db_config
import dialects
import seed_investors
import validation
from schema import symbol_last_trades

# (txn_ref, price as a file writes it, txn_time as a file writes it, fee as a file writes it): prices and fees at
# the edges of DECIMAL(18,4) text (whole, one decimal, the smallest, the largest, a sign and padding, an empty fee
# and zeros), times at midnight
TRICKY = [
    ("whole", "1", "2025-01-02 00:00:00", ""),
    ("half", "1.5", "2025-01-02T00:00", "1.5"),
    ("smallest", "0.0001", "2024-02-29 23:59:59", "0.0001"),
    ("largest", "999999999.9999", "1900-01-01 00:00:00", "999999999.9999"),
    ("padded", "+010.50", "2025-12-31 00:00", "+007.25"),
    ("zero", "2", "2025-01-02 00:00:00", "0"),
    ("zeros", "2", "2025-01-02 00:00:00", "0.00"),
]
STAGE_FILES = ("load_transactions.py", "bulk_insert.py", "db_config.py", "pseudo_realtime.py", "validation.py")


def validated(rows, with_fee=True):
    """validate_trades of text rows (txn_ref, price, txn_time, fee) for investor 1001's AAPL; all must be valid.
    with_fee=False: a batch without the fee column, as from a file whose header has none."""
    columns = validation.RECORD_COLUMNS if with_fee else validation.TRADE_COLUMNS
    batch = pd.DataFrame([[ref, "1001", "AAPL", "BUY", "1", price, time, fee][:len(columns)]
                          for ref, price, time, fee in rows], columns=list(columns), dtype=object)
    batch["line_number"], batch["raw_record"] = range(2, len(batch) + 2), ""
    context = validation.make_context([1001], ["AAPL"], datetime(2030, 1, 1))
    valid, rejected = validation.validate_trades(batch, context)
    assert rejected.empty, rejected["reason"].tolist()
    return valid


def stored_values_texts(engine):
    """{txn_ref: values text} as the database computes it with dialects.values_sql."""
    with engine.connect() as connection:
        statement = text(f"SELECT txn_ref, {dialects.values_sql(engine.dialect.name)} FROM transactions")
        return dict(connection.execute(statement).all())


FEELESS_INSERT = text("INSERT INTO transactions (txn_ref, investor_id, stock_symbol, txn_type, quantity, price, "
                      "txn_time) VALUES ('feeless', 1001, 'AAPL', 'BUY', 1, 2, :txn_time)")


def assert_python_and_database_agree(engine, method):
    valid = validated(TRICKY)
    with db_config.write_transaction(engine) as connection:
        assert bulk_insert.insert_columns(connection, bulk_insert.trade_columns(valid, None), method) == len(TRICKY)
        connection.execute(FEELESS_INSERT, {"txn_time": datetime(2025, 1, 2)})  # a trade stored before fees: fee 0

    stored = stored_values_texts(engine)
    assert stored.pop("feeless") == stored["zero"] == stored["zeros"]
    assert stored == dict(zip(valid["txn_ref"], dialects.values_text(valid)))


@pytest.mark.parametrize("method", [None, "portable"])
def test_values_text_in_python_and_in_the_database_agree(seeded_engine, method):
    assert_python_and_database_agree(seeded_engine, method)


def test_values_text_in_python_and_in_the_database_agree_on_postgresql(postgres_url):
    engine = db_config.get_engine(postgres_url)
    seed_investors.seed_reference_data(engine)
    try:
        assert_python_and_database_agree(engine, None)
    finally:
        engine.dispose()


def test_same_values_sql_agrees_with_the_values_texts(seeded_engine):
    """For every pair of stored trades (self-join), same_values_sql is true exactly when their values texts are
    equal, also where it compares the columns first (SQLite)."""
    assert_python_and_database_agree(seeded_engine, None)
    texts = stored_values_texts(seeded_engine)
    same = dialects.same_values_sql(seeded_engine.dialect.name, "t", "s")
    statement = text(f"SELECT t.txn_ref, s.txn_ref, CASE WHEN {same} THEN 1 ELSE 0 END "
                     "FROM transactions t CROSS JOIN transactions s")
    with seeded_engine.connect() as connection:
        pairs = connection.execute(statement).all()
    assert len(pairs) == len(texts) ** 2
    assert {(first, second): bool(same) for first, second, same in pairs} == {
        (first, second): texts[first] == texts[second] for first in texts for second in texts}
    assert sum(same for _, _, same in pairs) == len(texts) + 6  # zero, zeros and feeless are one trade's values


def test_values_text_writes_the_normalized_values_joined_by_commas():
    valid = validated(TRICKY)

    assert dialects.values_text(valid) == [
        "1001,AAPL,BUY,1,1.0000,2025-01-02 00:00:00,0.0000", "1001,AAPL,BUY,1,1.5000,2025-01-02 00:00:00,1.5000",
        "1001,AAPL,BUY,1,0.0001,2024-02-29 23:59:59,0.0001",
        "1001,AAPL,BUY,1,999999999.9999,1900-01-01 00:00:00,999999999.9999",
        "1001,AAPL,BUY,1,10.5000,2025-12-31 00:00:00,7.2500", "1001,AAPL,BUY,1,2.0000,2025-01-02 00:00:00,0.0000",
        "1001,AAPL,BUY,1,2.0000,2025-01-02 00:00:00,0.0000"]


def test_a_trade_without_a_fee_column_is_the_same_trade_as_one_with_fee_zero():
    without = validated([("a", "2", "2025-01-02 00:00:00", None)], with_fee=False)
    given = validated([("a", "2", "2025-01-02 00:00:00", fee) for fee in ("0", "0.00", "", "+0.0000")])

    assert set(dialects.values_text(given)) == set(dialects.values_text(without)) == {
        "1001,AAPL,BUY,1,2.0000,2025-01-02 00:00:00,0.0000"}


def test_prices_one_ten_thousandth_apart_have_different_values_texts():
    texts = dialects.values_text(validated([("a", "999999999.9999", "2025-01-02 00:00", ""),
                                            ("b", "999999999.9998", "2025-01-02 00:00", "")]))

    assert texts[0] != texts[1]


def test_fees_one_ten_thousandth_apart_have_different_values_texts():
    texts = dialects.values_text(validated([("a", "10", "2025-01-02 00:00", "999999999.9999"),
                                            ("b", "10", "2025-01-02 00:00", "999999999.9998"),
                                            ("c", "10", "2025-01-02 00:00", "0.0001"),
                                            ("d", "10", "2025-01-02 00:00", "")]))

    assert len(set(texts)) == 4


def test_refresh_statistics_sql_per_database():
    assert dialects.refresh_statistics_sql("mysql") == \
        "ANALYZE TABLE transactions, stocks, load_batches, portfolios, position_checkpoints"
    assert dialects.refresh_statistics_sql("postgresql") == "ANALYZE transactions"
    assert dialects.refresh_statistics_sql("sqlite") is None


def test_packs_rows_on_the_servers_only():
    assert [dialects.packs_rows(name) for name in ("mysql", "postgresql", "sqlite")] == [True, True, False]


def test_a_database_not_in_the_table_gets_the_portable_defaults():
    assert dialects.dialect("oracle") == dialects.DEFAULT
    assert (dialects.bulk_path("oracle"), dialects.stage_lock("oracle"), dialects.database_creation("oracle"),
            dialects.values_sql("oracle")) == ("portable", None, None, dialects.STANDARD_VALUES_SQL)


@pytest.mark.parametrize("name", [*dialects.DIALECTS, "oracle"])
def test_every_bulk_path_in_the_table_has_a_function_in_bulk_insert(name):
    assert dialects.bulk_path(name) in bulk_insert._BULK_PATHS


def test_only_load_data_takes_text_prepared_in_advance():
    columns = [["t1"], [1001], ["AAPL"], ["BUY"], [1], ["1.0000"], ["2025-01-02 00:00:00"], ["0.5000"], [1], [2]]

    assert bulk_insert.prepared_text("mysql", columns) == \
        "t1\t1001\tAAPL\tBUY\t1\t1.0000\t2025-01-02 00:00:00\t0.5000\t1\t2\n"
    assert [bulk_insert.prepared_text(name, columns) for name in ("sqlite", "postgresql", "oracle")] == [None] * 3


@pytest.mark.parametrize("path", STAGE_FILES)
def test_the_stages_do_not_branch_on_the_dialect(path):
    source = open(db_config.project_path(path), encoding="utf-8").read()

    assert not re.findall(r"""dialect(?:\.name|_name)?\s*(?:==|!=|in\b|not in\b)\s*[("'\[A-Z_]""", source)


def latest_after(engine, offers):
    """symbol_last_trades' AAPL row after offering these (seconds after 10:00, txn_id, price) one by one."""
    statement_for = lambda connection: dialects.upsert_if_newer(  # noqa: E731
        connection, symbol_last_trades, ("txn_time", "txn_id"), ("txn_time", "txn_id", "price"))
    with engine.begin() as connection:
        for seconds, txn_id, price in offers:
            connection.execute(statement_for(connection), [{
                "stock_symbol": "AAPL", "txn_time": datetime(2026, 1, 5, 10, 0) + timedelta(seconds=seconds),
                "txn_id": txn_id, "price": Decimal(price)}])
        row = connection.execute(select(symbol_last_trades.c.txn_time, symbol_last_trades.c.txn_id,
                                        symbol_last_trades.c.price)).one()
    return row.txn_time.second, row.txn_id, str(Decimal(row.price).normalize())


@pytest.mark.parametrize("offers, kept", [
    ([(0, 5, "1"), (0, 4, "2")], (0, 5, "1")),  # same time, lower txn_id: older
    ([(0, 5, "1"), (0, 6, "3")], (0, 6, "3")),  # same time, higher txn_id: newer
    ([(0, 5, "1"), (-1, 9, "4")], (0, 5, "1")),  # earlier time, whatever its txn_id
    ([(0, 5, "1"), (1, 2, "5")], (1, 2, "5")),  # later time, whatever its txn_id
])
def test_upsert_if_newer_keeps_the_latest_by_time_then_id(seeded_engine, offers, kept):
    assert latest_after(seeded_engine, offers) == kept


def test_upsert_if_newer_on_postgresql(postgres_url):
    engine = db_config.get_engine(postgres_url)
    seed_investors.seed_reference_data(engine)
    try:
        assert latest_after(engine, [(0, 5, "1"), (0, 4, "2"), (1, 2, "5"), (0, 9, "6")]) == (1, 2, "5")
    finally:
        engine.dispose()
