"""Fees in trade files (docs/file-formats.md, docs/validation.md): the optional `fee` column is validated, stored
exactly and is part of a trade's values for de-duplication. Runs on SQLite and MariaDB (`seeded_engine`).

Small CSVs are written inline; expected fees and reasons are spelled out.
"""
import hashlib
from decimal import Decimal

import pytest
from sqlalchemy import select

import load_transactions
import validation
from schema import rejected_transactions, transactions

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,fee"
LEGACY_HEADER = "investor_id,stock_symbol,txn_type,quantity,price,txn_date,fee"
FEE_PROBLEM = "is not a plain decimal >= 0 ('.' before decimals, no thousands separators)"


def trade(ref, fee, price="100.50", quantity=10):
    """One line of a file with HEADER."""
    return f"{ref},1001,AAPL,BUY,{quantity},{price},2025-01-02 10:00:00,{fee}"


def write(tmp_path, lines, name="trades.csv"):
    path = tmp_path / name
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return str(path)


def stored_fees(engine):
    """{txn_ref: fee as Decimal} of every stored trade."""
    with engine.connect() as connection:
        return {ref: Decimal(str(fee)) for ref, fee in connection.execute(
            select(transactions.c.txn_ref, transactions.c.fee).order_by(transactions.c.txn_id))}


def stored_rejects(engine):
    """Every reject as (line_number, reason, raw_record), by batch and line."""
    r = rejected_transactions.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(r.line_number, r.reason, r.raw_record).order_by(r.batch_id, r.line_number))]


# ---------------------------------------------------------------------------------------------- validation

# (fee as written in the file, expected reason or None)
FEE_CASES = [
    ("-1", f"fee: '-1' {FEE_PROBLEM}"),
    ("-0", f"fee: '-0' {FEE_PROBLEM}"),
    ("abc", f"fee: 'abc' {FEE_PROBLEM}"),
    ("1.23456", "fee: '1.23456' has more than 4 decimal places"),
    ("1.50000", "fee: '1.50000' has more than 4 decimal places"),
    ("NaN", f"fee: 'NaN' {FEE_PROBLEM}"),
    ("inf", f"fee: 'inf' {FEE_PROBLEM}"),
    ("1e3", f"fee: '1e3' {FEE_PROBLEM}"),
    ('"1,000.00"', f"fee: '1,000.00' {FEE_PROBLEM}"),
    ("１", f"fee: '１' {FEE_PROBLEM}"),
    ("1000000000", "fee: '1000000000' is not below 1,000,000,000"),
    ("99999999999999999999", "fee: '99999999999999999999' is not below 1,000,000,000"),
    ("", None),
    ("0", None),
    ("1.5", None),
    ("+2", None),
    (" 3.25 ", None),
    (".5", None),
    ("7.", None),
    ("0.0001", None),
    ("999999999.9999", None),
]
GOOD_FEES = {"": "0", "0": "0", "1.5": "1.5", "+2": "2", " 3.25 ": "3.25", ".5": "0.5", "7.": "7",
             "0.0001": "0.0001", "999999999.9999": "999999999.9999"}


def test_each_fee_rule_rejects_with_field_and_value_and_good_fees_are_stored_exactly(seeded_engine, tmp_path):
    rows = [trade(f"f{number}", fee) for number, (fee, _) in enumerate(FEE_CASES)]
    path = write(tmp_path, [HEADER] + rows)

    summary = load_transactions.load_file(seeded_engine, path)

    assert stored_rejects(seeded_engine) == [(line, reason, row) for line, ((_, reason), row)
                                             in enumerate(zip(FEE_CASES, rows), start=2) if reason is not None]
    assert stored_fees(seeded_engine) == {f"f{number}": Decimal(GOOD_FEES[fee])
                                          for number, (fee, reason) in enumerate(FEE_CASES) if reason is None}
    assert (summary.rows_read, summary.rows_loaded, summary.rows_rejected) == (21, 9, 12)


def test_a_bad_fee_is_named_after_the_other_fields_problems(seeded_engine, tmp_path):
    path = write(tmp_path, [HEADER, trade("both", "-5", price="0")])

    load_transactions.load_file(seeded_engine, path)

    assert [reason for _, reason, _ in stored_rejects(seeded_engine)] == [
        "price: '0' is not a plain decimal > 0 ('.' before decimals, no thousands separators); "
        f"fee: '-5' {FEE_PROBLEM}"]


def test_a_fee_with_a_control_character_is_a_reject_naming_the_fee(seeded_engine, tmp_path):
    path = write(tmp_path, [HEADER, trade("nul", "1\x00"), trade("ok", "1")])

    load_transactions.load_file(seeded_engine, path)

    assert stored_rejects(seeded_engine) == [(2, f"fee: '1\\x00' {FEE_PROBLEM}", trade("nul", "1\\x00"))]
    assert stored_fees(seeded_engine) == {"ok": Decimal("1")}


# ---------------------------------------------------------------------------------------------- layouts

def test_a_fee_column_in_another_position_is_read_on_the_fast_and_the_slow_path(seeded_engine, tmp_path):
    """chunk_rows=2: the first chunk is plain lines (split by pandas), the second holds a quoted field (the csv
    module reads it record by record)."""
    lines = [
        "fee,Note,txn_time,price,quantity,txn_type,stock_symbol,investor_id,txn_ref",
        "1.25,plain,2025-01-02 10:00:00,100.50,10,BUY,AAPL,1001,a",
        ",plain,2025-01-02 10:00:01,100.50,10,BUY,AAPL,1001,b",
        '0.0001,"quoted, with a comma",2025-01-02 10:00:02,100.50,10,BUY,AAPL,1001,c',
        "-3,plain,2025-01-02 10:00:03,100.50,10,BUY,AAPL,1001,d",
    ]
    path = write(tmp_path, lines)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=2)

    assert (summary.rows_loaded, summary.rows_rejected) == (3, 1)
    assert stored_fees(seeded_engine) == {"a": Decimal("1.25"), "b": Decimal("0"), "c": Decimal("0.0001")}
    assert stored_rejects(seeded_engine) == [(5, f"fee: '-3' {FEE_PROBLEM}", lines[4])]


def test_a_fee_header_in_capitals_with_spaces_is_the_fee_column(seeded_engine, tmp_path):
    path = write(tmp_path, [HEADER.replace(",fee", ", FEE "), trade("a", "2.5")])

    load_transactions.load_file(seeded_engine, path)

    assert stored_fees(seeded_engine) == {"a": Decimal("2.5")}


def test_a_legacy_file_with_a_fee_column_stores_its_fees(seeded_engine, tmp_path):
    path = write(tmp_path, [LEGACY_HEADER, "1001,AAPL,BUY,10,100.5,2025-01-02,4.95",
                            "1002,msft,sell,5,400,2025-01-03,", "1003,AAPL,BUY,1,10,2025-01-03,1.23456"])
    sha = hashlib.sha256((tmp_path / "trades.csv").read_bytes()).hexdigest()

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_rejected) == (2, 1)
    assert stored_fees(seeded_engine) == {validation.legacy_txn_ref(sha, 2): Decimal("4.95"),
                                          validation.legacy_txn_ref(sha, 3): Decimal("0")}
    assert stored_rejects(seeded_engine) == [
        (4, "fee: '1.23456' has more than 4 decimal places", "1003,AAPL,BUY,1,10,2025-01-03,1.23456")]


def test_a_legacy_file_with_a_fee_loaded_again_is_all_duplicates(seeded_engine, tmp_path):
    path = write(tmp_path, [LEGACY_HEADER, "1001,AAPL,BUY,10,100.5,2025-01-02,4.95"])
    load_transactions.load_file(seeded_engine, path)

    again = load_transactions.load_file(seeded_engine, path, again=True)

    assert (again.rows_loaded, again.rows_duplicate, again.rows_rejected) == (0, 1, 0)


# ---------------------------------------------------------------------------------------------- same trade values

def test_same_ref_same_fee_is_a_duplicate_other_fee_a_conflict_within_a_file(seeded_engine, tmp_path):
    lines = [HEADER, trade("a", "1.5"), trade("a", "+1.50"), trade("a", "1.5001"), trade("b", ""), trade("b", "0.00"),
             trade("b", "0.01")]
    path = write(tmp_path, lines)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=2)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (2, 2, 2)
    assert stored_rejects(seeded_engine) == [(4, "txn_ref: 'a' is a conflicting duplicate of line 2", lines[3]),
                                             (7, "txn_ref: 'b' is a conflicting duplicate of line 5", lines[6])]
    assert stored_fees(seeded_engine) == {"a": Decimal("1.5"), "b": Decimal("0")}


def test_same_ref_other_fee_than_a_loaded_trade_is_a_conflict(seeded_engine, tmp_path):
    load_transactions.load_file(seeded_engine, write(tmp_path, [HEADER, trade("a", "999999999.9999")], "one.csv"))
    second = [HEADER, trade("a", "999999999.9999"), trade("a", "999999999.9998")]

    summary = load_transactions.load_file(seeded_engine, write(tmp_path, second, "two.csv"))

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (0, 1, 1)
    assert stored_rejects(seeded_engine) == [(3, "txn_ref: 'a' conflicts with loaded trade 1 (batch 1, line 2)",
                                              second[2])]


def test_a_trade_loaded_without_a_fee_column_is_the_same_trade_as_one_with_fee_zero(seeded_engine, tmp_path):
    without = ["txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time",
               "a,1001,AAPL,BUY,10,100.50,2025-01-02 10:00:00", "b,1001,AAPL,BUY,10,100.50,2025-01-02 10:00:00"]
    load_transactions.load_file(seeded_engine, write(tmp_path, without, "without.csv"))

    summary = load_transactions.load_file(seeded_engine, write(tmp_path, [HEADER, trade("a", "0.00"),
                                                                          trade("b", "0.0001")], "with.csv"))

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (0, 1, 1)
    assert [reason for _, reason, _ in stored_rejects(seeded_engine)] == [
        "txn_ref: 'b' conflicts with loaded trade 2 (batch 1, line 3)"]
    assert stored_fees(seeded_engine) == {"a": Decimal("0"), "b": Decimal("0")}


# ---------------------------------------------------------------------------------------------- the feed

@pytest.mark.parametrize("fee, stored", [("2.50", "2.5"), (None, "0"), ("", "0"), (3, "3")])
def test_feed_records_carry_their_fee(seeded_engine, fee, stored):
    record = {"txn_ref": "feed-1", "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY", "quantity": 1,
              "price": "10", "txn_time": "2025-01-02 10:00:00", "fee": fee}

    summary = load_transactions.load_records(seeded_engine, [record])

    assert summary.rows_loaded == 1
    assert stored_fees(seeded_engine) == {"feed-1": Decimal(stored)}


def test_a_feed_record_with_a_bad_fee_is_a_reject_keeping_the_fee_in_its_record(seeded_engine):
    record = {"txn_ref": "feed-1", "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY", "quantity": 1,
              "price": "10", "txn_time": "2025-01-02 10:00:00", "fee": "-1"}

    summary = load_transactions.load_records(seeded_engine, [record])

    assert summary.rows_rejected == 1
    assert stored_rejects(seeded_engine) == [
        (1, f"fee: '-1' {FEE_PROBLEM}", "feed-1,1001,AAPL,BUY,1,10,2025-01-02 10:00:00,-1")]
