"""load_transactions.py: validation, rejects, de-duplication, legacy files, encodings, errors, atomicity, prices.

Every database test runs on SQLite and on a fresh MariaDB database (the `engine`/`seeded_engine` fixtures).
Small CSVs are written inline to tmp_path; expected values are spelled out, not recomputed by the code under test.
"""
import hashlib
import os
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

import bulk_insert
import cli
import load_transactions
import validation
from schema import load_batches, market_prices, rejected_transactions, transactions

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
LEGACY_HEADER = "investor_id,stock_symbol,txn_type,quantity,price,txn_date"
PRICE_PROBLEM = "is not a plain decimal > 0 ('.' before decimals, no thousands separators)"
TIME_PROBLEM = "is not a real date-time YYYY-MM-DD HH:MM:SS"


def write_csv(directory, name, lines, newline="\n", bom=False):
    """Write `lines` as a file and return its path as text."""
    path = directory / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "".join(line + newline for line in lines).encode("utf-8"))
    return str(path)


def stored_trades(engine):
    """Every stored trade as (txn_ref, investor_id, stock_symbol, txn_type, quantity, price, txn_time), file order."""
    t = transactions.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(
            t.txn_ref, t.investor_id, t.stock_symbol, t.txn_type, t.quantity, t.price, t.txn_time).order_by(t.txn_id))]


def stored_rejects(engine):
    """Every reject as (batch_id, line_number, reason, raw_record), by batch and line."""
    r = rejected_transactions.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(r.batch_id, r.line_number, r.reason, r.raw_record).order_by(r.batch_id, r.line_number))]


def stored_batches(engine):
    """Every load_batches row as a dict, by batch_id."""
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(
            select(load_batches).order_by(load_batches.c.batch_id))]


def count(engine, table):
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar()


def trade(ref, quantity=10, price="100.50", investor="1001", symbol="AAPL", side="BUY", when="2025-01-02 10:00:00"):
    """One canonical CSV line."""
    return f"{ref},{investor},{symbol},{side},{quantity},{price},{when}"


# ---------------------------------------------------------------------------------------------- validation (§4)

# (row as written, expected reason); the good rows of the same file have reason None.
VALIDATION_CASES = [
    (trade(""), "txn_ref: is empty"),
    (trade("r-inv-text", investor="abc"), "investor_id: 'abc' is not an integer"),
    (trade("r-inv-frac", investor="1001.5"), "investor_id: '1001.5' is not an integer"),
    (trade("r-inv-unknown", investor="9999"), "investor_id: 9999 is not a known investor"),
    (trade("r-symbol", symbol="xxxx"), "stock_symbol: 'xxxx' is not a known stock"),
    (trade("r-type", side="HOLD"), "txn_type: 'HOLD' is not BUY or SELL"),
    (trade("r-qty-frac", quantity="2.5"), "quantity: '2.5' is not a whole number > 0"),
    (trade("r-qty-zero", quantity="0"), "quantity: '0' is not a whole number > 0"),
    (trade("r-qty-neg", quantity="-5"), "quantity: '-5' is not a whole number > 0"),
    (trade("r-qty-text", quantity="abc"), "quantity: 'abc' is not a whole number > 0"),
    (trade("r-qty-huge", quantity="3000000000"), "quantity: '3000000000' is not a whole number > 0"),
    (trade("r-price-nan", price="NaN"), f"price: 'NaN' {PRICE_PROBLEM}"),
    (trade("r-price-inf", price="inf"), f"price: 'inf' {PRICE_PROBLEM}"),
    (trade("r-price-zero", price="0"), f"price: '0' {PRICE_PROBLEM}"),
    (trade("r-price-thousands", price='"1,000.00"'), f"price: '1,000.00' {PRICE_PROBLEM}"),
    (trade("r-price-empty", price=""), f"price: '' {PRICE_PROBLEM}"),
    (trade("r-price-exp", price="1e3"), f"price: '1e3' {PRICE_PROBLEM}"),
    (trade("r-price-places", price="1.23456"), "price: '1.23456' has more than 4 decimal places"),
    (trade("x" * 65), f"txn_ref: '{'x' * 65}' is longer than 64 characters"),
    (trade("r-time-feb30", when="2025-02-30 10:00:00"), f"txn_time: '2025-02-30 10:00:00' {TIME_PROBLEM}"),
    (trade("r-time-text", when="yesterday"), f"txn_time: 'yesterday' {TIME_PROBLEM}"),
    # Only ASCII digits are numbers; NUL and Unicode spaces are not trimmed away (issue: rows loaded altered)
    (trade("r-inv-fullwidth", investor="１００１"), "investor_id: '１００１' is not an integer"),
    (trade("r-inv-arabic", investor="١٠٠١"), "investor_id: '١٠٠١' is not an integer"),
    (trade("r-inv-nbsp", investor="\u00a01001"), "investor_id: '\\xa01001' is not an integer"),
    (trade("r-qty-superscript", quantity="1²"), "quantity: '1²' is not a whole number > 0"),
    (trade("r-price-nul", price="10\x00"), f"price: '10\\x00' {PRICE_PROBLEM}"),
    (trade("r-price-fullwidth", price="１０.5"), f"price: '１０.5' {PRICE_PROBLEM}"),
    (trade("r-ref-\x01"), "txn_ref: 'r-ref-\\x01' holds a character other than printable ASCII"),
    (trade("r-ref-é"), "txn_ref: 'r-ref-é' holds a character other than printable ASCII"),
    (trade("r-symbol-dotless", symbol="ıbm"), "stock_symbol: 'ıbm' is not a known stock"),
    # Limits where every database keeps the value exactly
    (trade("r-price-cap", price="1000000000"), "price: '1000000000' is not below 1,000,000,000"),
    (trade("r-notional", quantity="2000000", price="500000"),
     "quantity × price: 2000000 × 500000 is not below 1,000,000,000,000"),
    (trade("r-time-leap-second", when="2025-06-30 23:59:60"), f"txn_time: '2025-06-30 23:59:60' {TIME_PROBLEM}"),
    (trade("r-time-old", when="1899-12-31 10:00:00"), "txn_time: '1899-12-31 10:00:00' is before 1900"),
    ("r-short,1001,AAPL", "record: has 3 fields, too few for the header"),
    (",abc,ZZZ,HOLD,0,0,never",
     "txn_ref: is empty; investor_id: 'abc' is not an integer; stock_symbol: 'ZZZ' is not a known stock; "
     "txn_type: 'HOLD' is not BUY or SELL; quantity: '0' is not a whole number > 0; "
     f"price: '0' {PRICE_PROBLEM}; txn_time: 'never' {TIME_PROBLEM}"),
    (trade("ok-plain"), None),
    (trade("ok-t-separator", when="2025-01-03T11:30:15"), None),
    (trade("ok-lower-case", symbol="msft", side="sell"), None),
    (trade("ok-price-cap", price="999999999.9999", quantity="1"), None),
    (trade("ok-notional", quantity="2147483647", price="465.66"), None),
]


def test_each_validation_rule_rejects_with_field_and_value(seeded_engine, tmp_path):
    lines = [HEADER] + [row for row, _ in VALIDATION_CASES]
    path = write_csv(tmp_path, "trades.csv", lines)

    summary = load_transactions.load_file(seeded_engine, path)

    expected_rejects = [(1, number, reason, row.replace("\x00", "\\x00"))  # NUL kept visibly, see stored_raw_record
                        for number, (row, reason) in enumerate(VALIDATION_CASES, start=2) if reason is not None]
    assert stored_rejects(seeded_engine) == expected_rejects
    assert [ref for ref, *_ in stored_trades(seeded_engine)] == [
        "ok-plain", "ok-t-separator", "ok-lower-case", "ok-price-cap", "ok-notional"]
    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (41, 5, 0, 36)
    stored_prices = {ref: price for ref, _, _, _, _, price, _ in stored_trades(seeded_engine)}
    assert Decimal(str(stored_prices["ok-price-cap"])) == Decimal("999999999.9999")  # exact on every database


def test_batch_row_records_counts_and_status(seeded_engine, tmp_path):
    lines = [HEADER, trade("a"), trade("a"), trade("b", quantity="0"), trade("c"), trade("d", symbol="NOPE")]
    path = write_csv(tmp_path, "trades.csv", lines)

    load_transactions.load_file(seeded_engine, path)

    [batch] = stored_batches(seeded_engine)
    with open(path, "rb") as handle:
        expected_sha = hashlib.sha256(handle.read()).hexdigest()
    assert batch["status"] == "loaded"
    assert batch["source"] == path
    assert batch["file_sha256"] == expected_sha
    assert (batch["rows_read"], batch["rows_loaded"], batch["rows_duplicate"], batch["rows_rejected"]) == (5, 2, 1, 2)
    assert batch["rows_read"] == batch["rows_loaded"] + batch["rows_duplicate"] + batch["rows_rejected"]
    assert batch["finished_at"] is not None and batch["finished_at"] >= batch["started_at"]
    assert batch["error"] is None


def test_values_are_trimmed_and_symbol_and_type_stored_upper_case(seeded_engine, tmp_path):
    lines = [
        HEADER,
        "  t-trim , 1001 , aapl , buy , 10 , 100.5 , 2025-01-02T10:00:00 ",
        "t-mixed,1002,Tsla,Sell,7,200.1234,2025-01-02 15:59:59",
    ]
    path = write_csv(tmp_path, "trades.csv", lines)

    summary = load_transactions.load_file(seeded_engine, path)

    assert summary.rows_loaded == 2 and summary.rows_rejected == 0
    assert stored_trades(seeded_engine) == [
        ("t-trim", 1001, "AAPL", "BUY", 10, Decimal("100.5"), datetime(2025, 1, 2, 10, 0, 0)),
        ("t-mixed", 1002, "TSLA", "SELL", 7, Decimal("200.1234"), datetime(2025, 1, 2, 15, 59, 59)),
    ]


def test_a_file_without_a_fee_column_loads_as_before_with_fee_zero(seeded_engine, tmp_path):
    lines = [HEADER, trade("a"), trade("b", quantity="7", price="+010.5", side="sell", when="2025-01-03T09:30"),
             trade("c", price="-1")]
    path = write_csv(tmp_path, "trades.csv", lines)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=2)
    again = load_transactions.load_file(seeded_engine, path, again=True)

    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (3, 2, 0, 1)
    assert stored_trades(seeded_engine) == [
        ("a", 1001, "AAPL", "BUY", 10, Decimal("100.5"), datetime(2025, 1, 2, 10, 0, 0)),
        ("b", 1001, "AAPL", "SELL", 7, Decimal("10.5"), datetime(2025, 1, 3, 9, 30, 0))]
    assert [reason for _, _, reason, _ in stored_rejects(seeded_engine)][0] == f"price: '-1' {PRICE_PROBLEM}"
    with seeded_engine.connect() as connection:
        assert connection.execute(select(transactions.c.fee)).scalars().all() == [0, 0]
    assert (again.rows_loaded, again.rows_duplicate, again.rows_rejected) == (0, 2, 1)


def test_txn_time_more_than_five_minutes_ahead_is_rejected(seeded_engine, tmp_path):
    now = datetime.now().replace(microsecond=0)
    soon = (now + timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S")
    later = (now + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S")
    path = write_csv(tmp_path, "trades.csv", [HEADER, trade("soon", when=soon), trade("later", when=later)])

    load_transactions.load_file(seeded_engine, path)
    finished = datetime.now().replace(microsecond=0)

    assert [ref for ref, *_ in stored_trades(seeded_engine)] == ["soon"]
    [(_, line_number, reason, raw)] = stored_rejects(seeded_engine)
    assert (line_number, raw) == (3, trade("later", when=later))
    prefix = f"txn_time: '{later}' is in the future (later than "
    assert reason.startswith(prefix) and reason.endswith(")")
    limit = datetime.strptime(reason[len(prefix):-1], "%Y-%m-%d %H:%M:%S")
    assert now + timedelta(minutes=5) <= limit <= finished + timedelta(minutes=5)


def test_summary_line_and_exit_code_of_a_load_with_rejects(seeded_engine, database_url, tmp_path, capsys):
    path = write_csv(tmp_path, "trades.csv", [HEADER, trade("a"), trade("a"), trade("b", price="NaN")])

    code = load_transactions.main(["--database-url", database_url, path])

    out, err = capsys.readouterr()
    assert code == 0
    assert out == "trades.csv: 3 read, 1 loaded, 1 duplicate, 1 rejected (batch 1)\n"
    assert f"{path}:4: price: 'NaN' {PRICE_PROBLEM}" in err


# ---------------------------------------------------------------------------------------------- duplicates (§4)

def test_same_ref_same_values_in_one_file_is_a_duplicate(seeded_engine, tmp_path):
    lines = [HEADER, trade("a", price="100.5"), trade("a", price="100.50", symbol="aapl", side="buy",
                                                      when="2025-01-02T10:00:00")]
    path = write_csv(tmp_path, "trades.csv", lines)

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (1, 1, 0)
    assert stored_trades(seeded_engine) == [
        ("a", 1001, "AAPL", "BUY", 10, Decimal("100.5"), datetime(2025, 1, 2, 10, 0, 0))]
    assert stored_rejects(seeded_engine) == []


def test_same_ref_different_values_in_one_file_is_rejected(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "trades.csv", [HEADER, trade("a"), trade("b"), trade("a", quantity=11)])

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (2, 0, 1)
    assert stored_rejects(seeded_engine) == [
        (1, 4, "txn_ref: 'a' is a conflicting duplicate of line 2", trade("a", quantity=11))]
    assert [row[4] for row in stored_trades(seeded_engine)] == [10, 10]


def test_loading_the_same_file_twice_skips_the_second(seeded_engine, database_url, tmp_path, capsys):
    path = write_csv(tmp_path, "trades.csv", [HEADER, trade("a"), trade("b")])
    assert load_transactions.main(["--database-url", database_url, path]) == 0
    before = stored_trades(seeded_engine)
    capsys.readouterr()

    code = load_transactions.main(["--database-url", database_url, path])

    out, _ = capsys.readouterr()
    assert code == 0
    assert out == "trades.csv: already loaded in batch 1, skipped\n"
    assert stored_trades(seeded_engine) == before and len(before) == 2
    assert len(stored_batches(seeded_engine)) == 1


def test_overlapping_file_loads_only_new_refs(seeded_engine, tmp_path):
    first = write_csv(tmp_path, "first.csv", [HEADER, trade("a"), trade("b"), trade("c")])
    second = write_csv(tmp_path, "second.csv", [HEADER, trade("b"), trade("c"), trade("d"), trade("e")])
    load_transactions.load_file(seeded_engine, first)

    summary = load_transactions.load_file(seeded_engine, second)

    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (4, 2, 2, 0)
    assert [ref for ref, *_ in stored_trades(seeded_engine)] == ["a", "b", "c", "d", "e"]
    with seeded_engine.connect() as connection:
        batch_of = dict(connection.execute(select(transactions.c.txn_ref, transactions.c.batch_id)).all())
    assert batch_of == {"a": 1, "b": 1, "c": 1, "d": 2, "e": 2}
    assert [(b["rows_loaded"], b["rows_duplicate"]) for b in stored_batches(seeded_engine)] == [(3, 0), (2, 2)]


def test_same_ref_different_values_than_a_loaded_trade_is_rejected(seeded_engine, tmp_path):
    first = write_csv(tmp_path, "first.csv", [HEADER, trade("a"), trade("b")])
    second = write_csv(tmp_path, "second.csv", [HEADER, trade("c"), trade("b", price="101.00")])
    load_transactions.load_file(seeded_engine, first)
    with seeded_engine.connect() as connection:
        b_id = connection.execute(select(transactions.c.txn_id).where(transactions.c.txn_ref == "b")).scalar()

    summary = load_transactions.load_file(seeded_engine, second)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (1, 0, 1)
    assert stored_rejects(seeded_engine) == [
        (2, 3, f"txn_ref: 'b' conflicts with loaded trade {b_id} (batch 1, line 3)", trade("b", price="101.00"))]
    assert [row[5] for row in stored_trades(seeded_engine) if row[0] == "b"] == [Decimal("100.5")]


def test_duplicates_across_chunk_boundaries(seeded_engine, tmp_path):
    # chunk_rows=2 gives chunks of lines [2, 3], [4, 5], [6, 7], [8].
    lines = [
        HEADER,
        trade("a"),                 # 2
        trade("b"),                 # 3
        trade("a"),                 # 4: same values as line 2, next chunk -> duplicate
        trade("b", quantity=99),    # 5: conflicts with line 3 in the previous chunk
        trade("c"),                 # 6
        trade("c", price="99.00"),  # 7: conflicts with line 6 in the same chunk
        trade("a", side="SELL"),    # 8: conflicts with line 2, three chunks back
    ]
    path = write_csv(tmp_path, "trades.csv", lines)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=2)

    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (7, 3, 1, 3)
    assert stored_rejects(seeded_engine) == [
        (1, 5, "txn_ref: 'b' is a conflicting duplicate of line 3", lines[4]),
        (1, 7, "txn_ref: 'c' is a conflicting duplicate of line 6", lines[6]),
        (1, 8, "txn_ref: 'a' is a conflicting duplicate of line 2", lines[7]),
    ]
    with seeded_engine.connect() as connection:
        source_lines = connection.execute(
            select(transactions.c.txn_ref, transactions.c.source_line).order_by(transactions.c.txn_id)).all()
    assert [tuple(row) for row in source_lines] == [("a", 2), ("b", 3), ("c", 6)]


def test_outcome_does_not_depend_on_chunk_size(seeded_engine, tmp_path):
    load_transactions.load_file(seeded_engine, write_csv(tmp_path, "first.csv", [HEADER, trade("a")]))
    second = [HEADER, trade("a", quantity=99), trade("a", quantity=99)]
    path_small = write_csv(tmp_path, "small.csv", second + [trade("x")])
    path_large = write_csv(tmp_path, "large.csv", second + [trade("y")])

    small = load_transactions.load_file(seeded_engine, path_small, chunk_rows=1)
    large = load_transactions.load_file(seeded_engine, path_large)

    assert (small.rows_loaded, small.rows_duplicate, small.rows_rejected) == \
           (large.rows_loaded, large.rows_duplicate, large.rows_rejected)


def test_refs_differing_only_in_case_are_distinct_trades(seeded_engine, tmp_path):
    # Regression: with MariaDB's default case-insensitive collation 'REF-A' collided with 'ref-a' and the whole
    # file failed ("the database skipped txn_ref 'REF-A' but holds no trade with that ref").
    first = write_csv(tmp_path, "first.csv", [HEADER, trade("ref-a"), trade("REF-A", quantity=11)])
    second = write_csv(tmp_path, "second.csv", [HEADER, trade("Ref-A", quantity=12), trade("ref-a")])

    one = load_transactions.load_file(seeded_engine, first)
    two = load_transactions.load_file(seeded_engine, second)

    assert (one.rows_loaded, one.rows_duplicate, one.rows_rejected) == (2, 0, 0)
    assert (two.rows_loaded, two.rows_duplicate, two.rows_rejected) == (1, 1, 0)
    assert [(row[0], row[4]) for row in stored_trades(seeded_engine)] == [("ref-a", 10), ("REF-A", 11), ("Ref-A", 12)]


# ---------------------------------------------------------------------------------------------- legacy files (§3)

LEGACY_ROWS = ["1001,AAPL,BUY,10,100.5,2025-01-02", "1002,msft,sell,5,400,2025-01-03"]


def legacy_ref(path, line_number):
    with open(path, "rb") as handle:
        return validation.legacy_txn_ref(hashlib.sha256(handle.read()).hexdigest(), line_number)


def test_legacy_file_gets_midnight_and_deterministic_refs(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "legacy.csv", [LEGACY_HEADER] + LEGACY_ROWS)

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_rejected) == (2, 0)
    sha = hashlib.sha256((tmp_path / "legacy.csv").read_bytes()).hexdigest()
    assert legacy_ref(path, 2).startswith("L" + sha[:20]) and legacy_ref(path, 2) != legacy_ref(path, 3)
    assert stored_trades(seeded_engine) == [
        (legacy_ref(path, 2), 1001, "AAPL", "BUY", 10, Decimal("100.5"), datetime(2025, 1, 2, 0, 0, 0)),
        (legacy_ref(path, 3), 1002, "MSFT", "SELL", 5, Decimal("400"), datetime(2025, 1, 3, 0, 0, 0)),
    ]


def test_legacy_file_loaded_twice_loads_nothing_new(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "legacy.csv", [LEGACY_HEADER] + LEGACY_ROWS)
    load_transactions.load_file(seeded_engine, path)

    skipped = load_transactions.load_file(seeded_engine, path)
    # Bypass the SHA-256 shortcut (as --retry-rejects does): the derived refs alone make every row a duplicate.
    forced = load_transactions.load_file(seeded_engine, path, again=True)

    assert skipped.skipped_batch == 1
    assert (forced.rows_read, forced.rows_loaded, forced.rows_duplicate, forced.rows_rejected) == (2, 0, 2, 0)
    assert count(seeded_engine, transactions) == 2


def test_legacy_copy_with_an_extra_row_is_a_new_file_with_new_refs(seeded_engine, tmp_path):
    # docs/file-formats.md: the refs derive from the file's SHA-256, so a file with other bytes gets other refs:
    # all rows load.
    original = write_csv(tmp_path, "legacy.csv", [LEGACY_HEADER] + LEGACY_ROWS)
    extra = "1003,GOOG,BUY,1,140,2025-01-06"
    extended = write_csv(tmp_path, "legacy_more.csv", [LEGACY_HEADER] + LEGACY_ROWS + [extra])
    load_transactions.load_file(seeded_engine, original)

    summary = load_transactions.load_file(seeded_engine, extended)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (3, 0, 0)
    refs = [ref for ref, *_ in stored_trades(seeded_engine)]
    assert refs == [legacy_ref(original, 2), legacy_ref(original, 3),
                    legacy_ref(extended, 2), legacy_ref(extended, 3), legacy_ref(extended, 4)]


def test_legacy_bad_date_reason_names_txn_date(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "legacy.csv", [LEGACY_HEADER, "1001,AAPL,BUY,10,100.5,2025-02-30"])

    load_transactions.load_file(seeded_engine, path)

    [(_, line_number, reason, _)] = stored_rejects(seeded_engine)
    assert line_number == 2
    assert reason.startswith("txn_date: '2025-02-30'")


# ---------------------------------------------------------------------------------------------- encodings, columns

def test_bom_and_crlf_load(seeded_engine, tmp_path):
    lines = [HEADER, trade("a"), trade("b", quantity="x")]
    path = write_csv(tmp_path, "trades.csv", lines, newline="\r\n", bom=True)

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_rejected) == (1, 1)
    assert stored_trades(seeded_engine) == [
        ("a", 1001, "AAPL", "BUY", 10, Decimal("100.5"), datetime(2025, 1, 2, 10, 0, 0))]
    assert stored_rejects(seeded_engine) == [
        (1, 3, "quantity: 'x' is not a whole number > 0", trade("b", quantity="x"))]


def test_blank_lines_are_skipped_but_keep_line_numbers(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "trades.csv", [HEADER, trade("a"), "", "   ", trade("b", quantity="-1"), trade("c")])

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_read, summary.rows_loaded, summary.rows_rejected) == (3, 2, 1)
    assert [row[1:3] for row in stored_rejects(seeded_engine)] == [(5, "quantity: '-1' is not a whole number > 0")]


def test_a_line_that_is_not_utf8_is_rejected_alone(seeded_engine, tmp_path):
    path = tmp_path / "trades.csv"
    path.write_bytes(f"{HEADER}\n{trade('a')}\n".encode() + b"b\xe9,1001,AAPL,BUY,1,1,2025-01-02 10:00:00\n")

    summary = load_transactions.load_file(seeded_engine, str(path))

    assert (summary.rows_read, summary.rows_loaded, summary.rows_rejected) == (2, 1, 1)
    assert stored_rejects(seeded_engine) == [
        (1, 3, "record: is not UTF-8 text", "b\ufffd,1001,AAPL,BUY,1,1,2025-01-02 10:00:00")]


def test_legacy_file_with_bom_and_crlf_loads(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "legacy.csv", [LEGACY_HEADER] + LEGACY_ROWS, newline="\r\n", bom=True)

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_rejected) == (2, 0)
    assert [row[6] for row in stored_trades(seeded_engine)] == [datetime(2025, 1, 2), datetime(2025, 1, 3)]


def test_column_order_may_vary_and_extra_columns_are_ignored(seeded_engine, tmp_path):
    lines = [
        "Note,txn_time,price,quantity,txn_type,stock_symbol,investor_id,txn_ref,broker",
        "first,2025-01-02 10:00:00,100.50,10,BUY,AAPL,1001,a,IBKR",
        'second "quoted",2025-01-02 11:00:00,50.25,3,SELL,AAPL,1001,b,',
    ]
    path = write_csv(tmp_path, "trades.csv", lines)

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_rejected) == (2, 0)
    assert stored_trades(seeded_engine) == [
        ("a", 1001, "AAPL", "BUY", 10, Decimal("100.5"), datetime(2025, 1, 2, 10, 0, 0)),
        ("b", 1001, "AAPL", "SELL", 3, Decimal("50.25"), datetime(2025, 1, 2, 11, 0, 0)),
    ]


# ---------------------------------------------------------------------------------------------- errors (§1)

def test_missing_file_exits_2_and_loads_nothing(engine, database_url, tmp_path, capsys):
    path = str(tmp_path / "absent.csv")

    code = load_transactions.main(["--database-url", database_url, path])

    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines() == [f"error: load_transactions: {path}: no such file"]
    assert out == ""
    assert count(engine, load_batches) == 0


def test_wrong_header_exits_2_names_missing_columns_and_loads_nothing(seeded_engine, database_url, tmp_path, capsys):
    header = "txn_ref,investor_id,symbol,txn_type,quantity,price,time"
    path = write_csv(tmp_path, "trades.csv", [header, "a,1001,AAPL,BUY,10,100.5,2025-01-02 10:00:00"])

    code = load_transactions.main(["--database-url", database_url, path])

    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines() == [
        f"error: load_transactions: {path}: line 1: header lacks required column(s) stock_symbol, txn_time; "
        f"expected {HEADER} (or the legacy {LEGACY_HEADER}), found {header}"]
    assert out == ""
    # The refused file is in the audit trail: one failed batch with the reason, nothing loaded.
    [batch] = stored_batches(seeded_engine)
    assert (batch["status"], batch["source"], batch["rows_read"]) == ("failed", path, 0)
    assert batch["error"] == err.splitlines()[0].removeprefix("error: load_transactions: ")
    assert batch["file_sha256"] == validation.file_sha256(path)
    assert count(seeded_engine, transactions) == 0


def test_semicolon_separated_export_is_read_with_its_delimiter(seeded_engine, tmp_path):
    lines = [HEADER.replace(",", ";"), trade("s1").replace(",", ";"), "s2;1001;AAPL;BUY;10;100,50;2025-01-02 10:00:00"]
    path = write_csv(tmp_path, "export.csv", lines)

    summary = load_transactions.load_file(seeded_engine, path)

    assert (summary.rows_loaded, summary.rows_rejected) == (1, 1)
    assert stored_rejects(seeded_engine) == [(1, 3, f"price: '100,50' {PRICE_PROBLEM}", lines[2])]


def test_header_with_another_delimiter_and_missing_columns_names_the_delimiter(seeded_engine, database_url,
                                                                                 tmp_path, capsys):
    path = write_csv(tmp_path, "export.csv", ["txn_ref;investor;stock_symbol;txn_type;quantity;price;txn_time"])

    assert load_transactions.main(["--database-url", database_url, path]) == 2

    assert capsys.readouterr().err.rstrip().endswith(
        "header lacks required column(s) investor_id; expected txn_ref,investor_id,stock_symbol,txn_type,quantity,"
        "price,txn_time (or the legacy investor_id,stock_symbol,txn_type,quantity,price,txn_date), found "
        "txn_ref;investor;stock_symbol;txn_type;quantity;price;txn_time (it is separated by semicolons, not commas)")


def test_a_refused_file_does_not_stop_the_next(seeded_engine, database_url, tmp_path, capsys):
    good = write_csv(tmp_path, "good.csv", [HEADER, trade("a")])
    absent = str(tmp_path / "absent.csv")

    code = load_transactions.main(["--database-url", database_url, absent, good])

    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines() == [f"error: load_transactions: {absent}: no such file"]
    assert out == "good.csv: 1 read, 1 loaded, 0 duplicates, 0 rejected (batch 1)\n"
    assert count(seeded_engine, transactions) == 1


def run_script(args, cwd):
    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "load_transactions.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, "DATABASE_URL": ""})


UNREACHABLE_URL = "mysql+pymysql://root:secretpw@127.0.0.1:1/x"


def test_unreachable_database_exits_1_with_one_line_and_no_password(tmp_path):
    result = run_script(["--database-url", UNREACHABLE_URL, "trades.csv"], cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: load_transactions: cannot use database mysql+pymysql://root:***@127.0.0.1:1/x: ")
    assert "Traceback" not in result.stderr
    assert "secretpw" not in result.stderr


def test_verbose_shows_the_traceback_but_not_the_password(tmp_path):
    result = run_script(["--verbose", "--database-url", UNREACHABLE_URL, "trades.csv"], cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "secretpw" not in result.stderr + result.stdout
    assert result.stderr.splitlines()[-1].startswith("error: load_transactions: cannot use database ")


# ---------------------------------------------------------------------------------------------- atomicity

def fail_on_call(monkeypatch, error, failing_call=2):
    """Make the loader's bulk insert raise `error` on its `failing_call`-th call; return the list of calls.

    Patches bulk_insert.insert_columns, which every load goes through.
    """
    name = "insert_columns"
    real = getattr(bulk_insert, name)
    calls = []

    def failing_insert(*args, **kwargs):
        calls.append(name)
        if len(calls) == failing_call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(bulk_insert, name, failing_insert)
    return calls


ATOMIC_LINES = [HEADER, trade("a"), trade("b", quantity="0"), trade("c"), trade("d"), trade("e")]


def test_a_load_failing_midway_keeps_nothing_and_marks_the_batch_failed(seeded_engine, tmp_path, monkeypatch):
    path = write_csv(tmp_path, "trades.csv", ATOMIC_LINES)
    calls = fail_on_call(monkeypatch, RuntimeError("disk full in chunk 2"))

    with pytest.raises(RuntimeError, match="disk full in chunk 2"):
        load_transactions.load_file(seeded_engine, path, chunk_rows=2)

    assert len(calls) == 2  # chunk 1 was inserted before the failure
    assert count(seeded_engine, transactions) == 0
    assert count(seeded_engine, rejected_transactions) == 0
    [batch] = stored_batches(seeded_engine)
    assert (batch["status"], batch["error"]) == ("failed", "disk full in chunk 2")
    assert batch["finished_at"] is not None

    monkeypatch.undo()  # a failed batch does not count as loaded: the same file loads in full afterwards
    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=2)
    assert (summary.batch_id, summary.rows_loaded, summary.rows_rejected) == (2, 4, 1)
    assert [b["status"] for b in stored_batches(seeded_engine)] == ["failed", "loaded"]


def test_a_failed_stage_exits_1_with_one_line(seeded_engine, database_url, tmp_path, monkeypatch, capsys):
    path = write_csv(tmp_path, "trades.csv", ATOMIC_LINES)
    fail_on_call(monkeypatch, cli.StageError("simulated failure"), failing_call=1)

    code = load_transactions.main(["--database-url", database_url, path])

    out, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines() == ["error: load_transactions: simulated failure"]
    assert out == ""
    assert count(seeded_engine, transactions) == 0
    assert [(b["status"], b["error"]) for b in stored_batches(seeded_engine)] == [("failed", "simulated failure")]


# ---------------------------------------------------------------------------------------------- prices beside trades

PRICE_LINES = ["stock_symbol,price_date,close_price", "AAPL,2025-01-02,190.00", "aapl,2025-01-03,191.23",
               "MSFT,2025-01-02,410.5", "NOPE,2025-01-02,1.00"]


def stored_closes(engine):
    c = market_prices.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(c.stock_symbol, c.price_date, c.close_price).order_by(c.stock_symbol, c.price_date))]


def test_prices_file_beside_trades_is_loaded_and_updated(seeded_engine, database_url, tmp_path, capsys):
    trades_path = write_csv(tmp_path, "trades.csv", [HEADER, trade("a")])
    write_csv(tmp_path, "market_prices.csv", PRICE_LINES)
    argv = ["--database-url", database_url, trades_path]

    assert load_transactions.main(argv) == 0
    first_out = capsys.readouterr().out
    first = stored_closes(seeded_engine)
    assert load_transactions.main(argv) == 0
    second_out = capsys.readouterr().out
    second = stored_closes(seeded_engine)
    write_csv(tmp_path, "market_prices.csv", PRICE_LINES[:2] + ["AAPL,2025-01-03,195.0001"] + PRICE_LINES[3:])
    assert load_transactions.main(argv) == 0
    third_out = capsys.readouterr().out

    assert first_out.splitlines() == [
        "market_prices.csv: 4 daily closes read, 3 new, 0 changed, 0 unchanged, 1 rejected",
        "trades.csv: 1 read, 1 loaded, 0 duplicates, 0 rejected (batch 1)",
    ]
    assert first == [
        ("AAPL", datetime(2025, 1, 2).date(), Decimal("190.00")),
        ("AAPL", datetime(2025, 1, 3).date(), Decimal("191.23")),
        ("MSFT", datetime(2025, 1, 2).date(), Decimal("410.5")),
    ]
    assert second_out.splitlines() == [
        "market_prices.csv: 4 daily closes read, 0 new, 0 changed, 3 unchanged, 1 rejected",
        "trades.csv: already loaded in batch 1, skipped",
    ]
    assert second == first
    assert third_out.splitlines()[0] == (
        "market_prices.csv: 4 daily closes read, 0 new, 1 changed, 2 unchanged, 1 rejected")
    assert stored_closes(seeded_engine) == [first[0], ("AAPL", first[1][1], Decimal("195.0001")), first[2]]


@pytest.mark.parametrize("count", [0, 1, 2, 5, 8])
def test_background_workers_hand_back_every_item_in_order(count):
    """A reading worker and a preparing worker: the items come back in order, whatever their number."""
    assert list(load_transactions.in_background(iter(range(count)), then=lambda item: item * 10)) == [
        item * 10 for item in range(count)]


def _fail_at_three(items):
    for item in items:
        if item == 3:
            raise ValueError("bad item 3")
        yield item


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle this item")


@pytest.mark.parametrize("where", ["reader", "preparer"])
def test_an_item_a_worker_cannot_send_stops_the_load_rather_than_vanish(where):
    """The queue's feeder thread used to print the pickling error and drop the item: a load went on without a chunk
    (a whole file read as 0 rows under cProfile, exit 0)."""
    items = iter([0, _Unpicklable(), 2]) if where == "reader" else iter(range(3))
    then = (lambda item: item) if where == "reader" else (lambda item: _Unpicklable() if item == 1 else item)
    received = []
    with pytest.raises(TypeError, match="cannot pickle this item"):
        for item in load_transactions.in_background(items, then=then):
            received.append(item)
    assert received == [0]


def test_an_error_a_worker_cannot_send_arrives_as_a_stage_error():
    class UnsendableError(Exception):
        def __reduce__(self):
            raise TypeError("cannot pickle this error")

    def failing(items):
        yield next(items)
        raise UnsendableError("bad item 1")

    with pytest.raises(cli.StageError, match=r"the parsing process failed: UnsendableError: bad item 1 \(and could "
                                             r"not send it: cannot pickle this error\)"):
        list(load_transactions.in_background(failing(iter(range(3)))))


@pytest.mark.parametrize("where", ["reader", "preparer"])
def test_an_error_in_a_background_worker_is_raised_after_the_items_before_it(where):
    items = _fail_at_three(range(6)) if where == "reader" else iter(range(6))
    then = (lambda item: item) if where == "reader" else (lambda item: next(_fail_at_three([item])))
    received = []
    with pytest.raises(ValueError, match="bad item 3"):
        for item in load_transactions.in_background(items, then=then):
            received.append(item)
    assert received == [0, 1, 2]


def test_a_file_named_twice_is_loaded_once_and_said_so(tmp_path, caplog):
    """`load_transactions.py t.csv t.csv` printed one line and said nothing of the second name (new-user trial)."""
    path = write_csv(tmp_path, "t.csv", ATOMIC_LINES)
    (tmp_path / "market_prices.csv").write_text("stock_symbol,price_date,close_price\n")
    prices = str(tmp_path / "market_prices.csv")
    assert load_transactions.plan_files([str(path), prices, str(path)]) == [prices, str(path)]
    assert caplog.messages == [f"{path} is named more than once: it is loaded once"]  # not the prices file: planned
