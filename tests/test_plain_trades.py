"""The fast lane of validation (plain_trades) gives exactly what validate_trades gives: for the rows it is sure of,
the same values; for a whole chunk, the same columns, raw records, repeats, rejects and LOAD DATA text."""
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constants
import generate_dummy_data
import load_transactions
import plain_trades
import validation

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,fee"
LATEST = datetime(2026, 1, 1, 12, 0, 0, 500_000)
CONTEXT = validation.ValidationContext(  # the latest allowed txn_time is half a second past 12:00:00
    frozenset({1001, 1002, 1250}), frozenset(stock.symbol for stock in constants.STOCKS), LATEST)

# each field: forms validation takes as they are, then odd, bad and edge forms
REFS = (["T1", "T2", "T3", "T7", "T8", "T9", "R" * 64, "a\\b", "T 4"], ["t1", " T5", "T6 ", "", "R" * 65])
INVESTORS = (["1001", "1002", "0001250"], ["+1001", "1001.0", "1003", "", "abc", "1e3", "999999999", "1234567890"])
SYMBOLS = (["KO", "AAPL", "META"], ["ko", "Meta", " KO", "KO ", "XXX", ""])
TYPES = (["BUY", "SELL"], ["sell", "Buy ", " BUY", "HOLD", ""])
QUANTITIES = (["1", "100", "1000", "007", "2147483647"], ["0", "-5", "+7", "2147483648", "5.0", "", " 5"])
PRICES = (["62.23", "0.5", "476.08", "0.0001", "00012.3400", "999999999.9999", "7"],
          [".5", "5.", "0", "1000000000", "1.23456", "nan", "1e3", "+3.2", "1.2.3", "", " 9.5", "9.5 "])
TIMES = (["2025-10-31 09:30:01", "2024-02-29 10:00:00", "2000-02-29 10:00:00", "1900-01-01 00:00:00",
          "2026-01-01 12:00:00"],
         ["2025-02-29 10:00:00", "2025-10-31T09:30:01", "2025-10-31 09:30", "2025-13-01 00:00:00",
          "2025-10-31 24:00:00", "2025-10-31 23:59:60", "1899-12-31 23:59:59", "2026-01-01 12:00:01",
          "2025-04-31 10:00:00", "2100-02-29 10:00:00", "2025-1-31 09:30:01", "", " 2025-10-31 09:30:01"])
FEES = (["", "0", "1.00", "12.62"], ["0.00001", "-1", " 2.5", "1000000000", "+1"])


def mostly_usual(forms):
    """A field's cell: one of the usual forms about four times in five."""
    usual, odd = forms
    return st.sampled_from(usual * max(1, 4 * len(odd) // len(usual)) + odd)


row = st.tuples(*map(mostly_usual, (REFS, INVESTORS, SYMBOLS, TYPES, QUANTITIES, PRICES, TIMES, FEES)))


def plain_chunk(lines, header=HEADER, ending="\n", final_ending=True, first_number=2):
    """A PlainChunk of these lines under this header, as the reader makes it."""
    data = ending.join(lines) + (ending if final_ending else "")
    layout = validation.detect_layout(header, "test.csv")
    plain = load_transactions._plain_data(data.encode("ascii"), layout)
    assert plain is not None, "the test's lines must be plain"
    return load_transactions.PlainChunk(plain, first_number, len(lines), layout, "0" * 64)


def assert_same_preparation(plain, dialect="mysql"):
    """The fast lane and the whole validation prepare the chunk alike."""
    fast = load_transactions.prepare_plain_chunk(plain, CONTEXT, 7, dialect)
    slow = load_transactions.prepare_chunk(*plain.frames(), CONTEXT, 7, dialect)
    assert fast.rows_read == slow.rows_read
    assert list(fast.columns) == list(slow.columns)
    assert [type(value) for column in fast.columns for value in column[:1]] == \
        [type(value) for column in slow.columns for value in column[:1]]
    assert list(fast.raw_records) == list(slow.raw_records)
    assert fast.sample_refs == slow.sample_refs
    assert fast.bulk_text == slow.bulk_text
    pd.testing.assert_frame_equal(fast.rejects.reset_index(drop=True), slow.rejects.reset_index(drop=True),
                                  check_dtype=False)
    assert fast.repeats.empty == slow.repeats.empty
    if not slow.repeats.empty:
        pd.testing.assert_frame_equal(fast.repeats.reset_index(drop=True), slow.repeats.reset_index(drop=True))
    return fast


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=1, max_size=40), ending=st.sampled_from(["\n", "\r\n"]),
       final_ending=st.booleans())
def test_fast_lane_prepares_any_plain_chunk_as_validation_does(rows, ending, final_ending):
    assert_same_preparation(plain_chunk([",".join(fields) for fields in rows], ending=ending,
                                        final_ending=final_ending))


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=30))
def test_fast_lane_takes_other_column_orders_extra_columns_and_no_fee(rows):
    """Header order, an unread column and a file without fees."""
    header = "note,price,txn_time,stock_symbol,txn_ref,quantity,txn_type,investor_id"
    lines = [",".join(["x", fields[5], fields[6], fields[2], fields[0], fields[4], fields[3], fields[1]])
             for fields in rows]
    assert_same_preparation(plain_chunk(lines, header=header))


def test_every_row_of_a_generated_file_is_sure(tmp_path):
    """The fast lane is the usual path: a generated file's rows are all taken by it, with their values."""
    path = tmp_path / "trades.csv"
    generate_dummy_data.write_files(str(path), 3000, 7)
    lines = path.read_text().splitlines()
    context = validation.make_context([investor.investor_id for investor in constants.default_investors(
        constants.DEFAULT_INVESTOR_COUNT)], [stock.symbol for stock in constants.STOCKS], datetime(2100, 1, 1))
    plain = plain_chunk(lines[1:], header=lines[0])
    sure = plain_trades.sure_trades(plain.data, plain.layout, context)
    assert len(sure.rows) == 3000
    valid, rejected = validation.validate_trades(plain.frames()[0], context)
    assert rejected.empty
    assert sure.columns[0].astype(str).tolist() == valid["txn_ref"].tolist()
    assert sure.columns[5].astype(str).tolist() == valid["price"].tolist()
    assert sure.columns[4].tolist() == valid["quantity"].tolist()


@pytest.mark.parametrize("cell, sure", [
    ("2024-02-29 23:59:59", True), ("2023-02-29 00:00:00", False), ("2000-02-29 00:00:00", True),
    ("1900-02-29 00:00:00", False), ("2025-06-31 00:00:00", False), ("2025-12-31 23:59:59", True),
    ("2026-01-01 12:00:00", True), ("2026-01-01 12:00:01", False), ("1900-01-01 00:00:00", True),
    ("1899-12-31 23:59:59", False), ("2025-00-10 00:00:00", False), ("2025-01-00 00:00:00", False),
    ("2025-01-01 00:60:00", False), ("2025-01-01 00:00:60", False), ("2025-01-01 24:00:00", False),
    ("2025/01/01 00:00:00", False), ("20a5-01-01 00:00:00", False),
])
def test_times_are_sure_only_when_real_and_in_range(cell, sure):
    plain = plain_chunk([f"T1,1001,KO,BUY,1,1.5,{cell},"])
    assert len(plain_trades.sure_trades(plain.data, plain.layout, CONTEXT).rows) == int(sure)
    assert_same_preparation(plain)


@pytest.mark.parametrize("quantity, price, sure", [
    ("1000", "999999999.9999", False), ("1000", "999999998.0000", True), ("2", "499999999999", False),
    ("1", "0.0001", True), ("1", "0.00001", False), ("1", "999999999.9999", True), ("1", "1000000000", False),
])
def test_price_bounds_and_notional_leave_the_edge_to_validation(quantity, price, sure):
    plain = plain_chunk([f"T1,1001,KO,BUY,{quantity},{price},2025-01-01 00:00:00,"])
    assert len(plain_trades.sure_trades(plain.data, plain.layout, CONTEXT).rows) == int(sure)
    assert_same_preparation(plain)


def test_repeated_refs_and_a_bad_row_keep_line_order_in_the_columns():
    """Sure rows and rows validated the long way are inserted in line order, repeats set aside."""
    lines = ["A1,1001,KO,BUY,1,1.5,2025-01-01 00:00:00,", "A2,+1001,KO,BUY,1,1.5,2025-01-01 00:00:00,",
             "A3,1001,KO,BUY,0,1.5,2025-01-01 00:00:00,", "A4,1001,ko,sell,2,1.50,2025-01-01T00:00:00,0",
             "A2,1001,KO,BUY,1,1.5,2025-01-01 00:00:00,", "A5,1001,KO,BUY,3,7,2025-01-01 00:00:00,0.5"]
    fast = assert_same_preparation(plain_chunk(lines))
    assert fast.columns[-1] == [2, 3, 5, 7]
    assert fast.columns[0] == ["A1", "A2", "A4", "A5"]
    assert fast.repeats["line_number"].tolist() == [6]
    assert fast.rejects["line_number"].tolist() == [4]


def test_column_arrays_send_arrays_not_lists():
    """ColumnArrays pickles its arrays only: lists made in the validating process are not sent again."""
    import pickle
    columns = load_transactions.ColumnArrays([np.array([b"A", b"BC"]), np.array([1, 2])])
    assert columns[0] == ["A", "BC"] and columns[1] == [1, 2]
    copy = pickle.loads(pickle.dumps(columns))
    assert copy.lists == {} and list(copy) == [["A", "BC"], [1, 2]]
