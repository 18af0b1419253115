"""Every row accounted for, whatever arrives: malformed records, huge fields, control characters, limits.

Each test plants one kind of damage in an otherwise good file and checks that exactly the damaged record is
rejected, with its physical line number, reason and text, and that every other row loads unchanged, wherever the
damage sits (first row of a chunk, across a chunk boundary). Runs on SQLite and MariaDB (`seeded_engine`);
PostgreSQL where a case is specific to it.
"""
from decimal import Decimal

import pytest
from sqlalchemy import func, select

import db_config
import load_transactions
import seed_investors
import update_portfolio
from schema import market_prices, rejected_transactions, transactions

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"


def trade(ref, price="100.50", quantity=10):
    return f"{ref},1001,AAPL,BUY,{quantity},{price},2025-01-02 10:00:00"


def write(tmp_path, lines, name="trades.csv", newline="\n"):
    path = tmp_path / name
    path.write_bytes((HEADER + newline + "".join(line + newline for line in lines)).encode("utf-8"))
    return str(path)


def loaded_refs(engine):
    with engine.connect() as connection:
        return connection.execute(select(transactions.c.txn_ref).order_by(transactions.c.txn_id)).scalars().all()


def rejects(engine):
    r = rejected_transactions.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(r.line_number, r.reason, r.raw_record).order_by(r.batch_id, r.line_number))]


def good_rows(count, prefix="g"):
    return [trade(f"{prefix}{number}") for number in range(count)]


def assert_accounted(summary):
    assert summary.rows_read == summary.rows_loaded + summary.rows_duplicate + summary.rows_rejected


# ---------------------------------------------------------------------------------------------- record shape

@pytest.mark.parametrize("extra", [",extra", ",,x"])
def test_extra_field_on_the_first_row_of_a_chunk_rejects_that_row_only(seeded_engine, tmp_path, extra):
    rows = good_rows(12)
    rows[5] += extra  # line 7: the first row of the second chunk of 5
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=5)

    assert rejects(seeded_engine) == [(7, f"record: has {7 + extra.count(',')} fields, the header has 7", rows[5])]
    assert loaded_refs(seeded_engine) == [f"g{n}" for n in range(12) if n != 5]
    assert summary.rows_loaded == 11
    assert_accounted(summary)


def test_a_record_missing_only_an_ignored_trailing_column_is_a_reject(seeded_engine, tmp_path):
    """docs/file-formats.md: a record with fewer fields than the header is rejected, even when the missing field is
    of a column the loader does not read (it loaded before: the line may have been cut short)."""
    rows = [row + ",a note" for row in good_rows(4)]
    rows[1] = rows[1].removesuffix(",a note")
    path = tmp_path / "noted.csv"
    path.write_text(HEADER + ",note\n" + "".join(row + "\n" for row in rows), encoding="utf-8")

    summary = load_transactions.load_file(seeded_engine, str(path), chunk_rows=100)

    assert rejects(seeded_engine) == [(3, "record: has 7 fields, too few for the header", rows[1])]
    assert loaded_refs(seeded_engine) == ["g0", "g2", "g3"]
    assert_accounted(summary)


def test_a_field_too_many_and_one_too_few_in_one_chunk_are_both_rejects(seeded_engine, tmp_path):
    """Regression: the plain-chunk check counts delimiters per line (read as one block); a chunk-wide count would
    take one line with a field too many and another with one too few for a chunk of simple lines."""
    rows = good_rows(8)
    rows[2] += ",x"
    rows[5] = rows[5].replace(",BUY", "", 1)
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=100)

    assert rejects(seeded_engine) == [(4, "record: has 8 fields, the header has 7", rows[2]),
                                      (7, "record: has 6 fields, too few for the header", rows[5])]
    assert loaded_refs(seeded_engine) == [f"g{n}" for n in range(8) if n not in (2, 5)]
    assert_accounted(summary)


def test_a_last_line_without_line_ending_and_spaces_around_fields_load(seeded_engine, tmp_path):
    """Regression: the file is read in blocks; its last line may lack a line ending, and a plain chunk with spaces
    around fields is still trimmed."""
    path = tmp_path / "trades.csv"
    path.write_bytes((HEADER + "\n" + trade("a") + "\n" + trade(" b ") + "\r\n" + trade("c")).encode())

    summary = load_transactions.load_file(seeded_engine, str(path))

    assert loaded_refs(seeded_engine) == ["a", "b", "c"]
    assert (summary.rows_read, summary.rows_loaded) == (3, 3)


def test_trailing_empty_fields_are_ignored(seeded_engine, tmp_path):
    rows = good_rows(6)
    rows[0] += ","
    rows[3] += ",,  ,"
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=3)

    assert (summary.rows_loaded, summary.rows_rejected) == (6, 0)
    assert loaded_refs(seeded_engine) == [f"g{n}" for n in range(6)]


def test_quoted_line_break_in_a_field_is_rejected_at_its_first_line_and_later_lines_keep_their_numbers(
        seeded_engine, tmp_path):
    rows = ['"E-nl', 'X",1001,AAPL,BUY,10,100.5,2025-01-02 10:00:00', trade("ok1"), trade("bad", quantity=0),
            trade("ok2")]
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path)

    assert rejects(seeded_engine) == [
        (2, "txn_ref: 'E-nl\\nX' holds a character other than printable ASCII", f"{rows[0]}\n{rows[1]}"),
        (5, "quantity: '0' is not a whole number > 0", rows[3]),
    ]
    assert loaded_refs(seeded_engine) == ["ok1", "ok2"]
    assert (summary.rows_read, summary.rows_loaded, summary.rows_rejected) == (4, 2, 2)


def test_quoted_record_across_a_chunk_boundary_is_read_whole(seeded_engine, tmp_path):
    header = HEADER + ",note"
    rows = [trade("a") + ",plain", trade("b") + ',"two', 'lines"', trade("c") + ",x", trade("d") + ',"multi ""quoted""',
            "", 'note"', trade("e") + ",y"]
    path = tmp_path / "notes.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")

    summary = load_transactions.load_file(seeded_engine, str(path), chunk_rows=2)  # 'b' ends its chunk mid-record

    assert loaded_refs(seeded_engine) == ["a", "b", "c", "d", "e"]
    assert (summary.rows_read, summary.rows_rejected) == (5, 0)


def test_unclosed_quote_rejects_its_line_and_the_next_lines_load(seeded_engine, tmp_path):
    rows = [trade("a"), 'u1,1001,AAPL,BUY,10,"100.5,2025-01-02 10:00:00', *good_rows(12, prefix="n")]
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=4)

    assert rejects(seeded_engine) == [
        (3, f"record: a quoted field is not closed (within {load_transactions.MAX_RECORD_LINES} lines)", rows[1])]
    assert loaded_refs(seeded_engine) == ["a"] + [f"n{n}" for n in range(12)]
    assert_accounted(summary)


def test_bare_carriage_return_in_an_unquoted_field_is_one_reject(seeded_engine, tmp_path):
    rows = [trade("a"), "c\rr,1001,AAPL,BUY,10,100.5,2025-01-02 10:00:00", trade("b")]
    path = write(tmp_path, rows, newline="\r\n")

    summary = load_transactions.load_file(seeded_engine, path)

    assert rejects(seeded_engine) == [(3, "record: holds a carriage return inside the line", rows[1])]
    assert loaded_refs(seeded_engine) == ["a", "b"]
    assert_accounted(summary)


def test_stray_quote_inside_an_unquoted_field_is_not_silently_dropped(seeded_engine, tmp_path):
    rows = [trade("a"), 'q,1001,AAPL,BUY,10,"10"5,2025-01-02 10:00:00', trade("b")]
    path = write(tmp_path, rows)

    load_transactions.load_file(seeded_engine, path)

    [(line, reason, raw)] = rejects(seeded_engine)
    assert (line, raw) == (3, rows[1]) and reason.startswith("record: is not valid CSV (")
    assert loaded_refs(seeded_engine) == ["a", "b"]


def test_one_megabyte_field_on_a_later_row_is_one_reject_kept_cut(seeded_engine, tmp_path):
    huge = "x" * 1_000_000
    rows = [trade("a"), trade("b" + huge), trade("c")]
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path)

    [(line, reason, raw)] = rejects(seeded_engine)
    assert line == 3
    assert reason == "txn_ref: 'b" + "x" * 99 + "… (1,000,001 characters)' is longer than 64 characters"
    limit = load_transactions.MAX_RAW_RECORD_CHARS
    assert raw == rows[1][:limit] + f"… [cut: {len(rows[1]):,} characters in all]"
    assert loaded_refs(seeded_engine) == ["a", "c"]
    assert_accounted(summary)


def test_line_that_is_not_utf8_is_one_reject(seeded_engine, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n{trade('a')}\nl\xe9,1001,AAPL,BUY,1,1,2025-01-02 10:00:00\n{trade('b')}\n"
                     .encode("latin-1"))

    load_transactions.load_file(seeded_engine, str(path))

    assert rejects(seeded_engine) == [(3, "record: is not UTF-8 text", "l\ufffd,1001,AAPL,BUY,1,1,2025-01-02 10:00:00")]
    assert loaded_refs(seeded_engine) == ["a", "b"]


def test_nul_in_txn_ref_is_one_reject_on_postgresql(postgres_url, tmp_path):
    engine = db_config.get_engine(postgres_url)
    seed_investors.seed_reference_data(engine)
    rows = [trade("a"), trade("n\x00ul"), trade("b")]
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(engine, path)

    assert rejects(engine) == [(3, "txn_ref: 'n\\x00ul' holds a character other than printable ASCII",
                                rows[1].replace("\x00", "\\x00"))]
    assert loaded_refs(engine) == ["a", "b"]
    assert_accounted(summary)
    engine.dispose()


# ---------------------------------------------------------------------------------------------- same values

@pytest.mark.parametrize("first, again", [("999999999.9999", "999999999.9999"), ("10.5", "+10.5000")])
def test_the_same_trade_sent_again_in_another_file_is_a_duplicate(seeded_engine, tmp_path, first, again):
    load_transactions.load_file(seeded_engine, write(tmp_path, [trade("p", price=first, quantity=1)], "one.csv"))
    second = write(tmp_path, [trade("q"), trade("p", price=again, quantity=1)], "two.csv")  # another file: no skip
    summary = load_transactions.load_file(seeded_engine, second)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (1, 1, 0)
    with seeded_engine.connect() as connection:
        stored = connection.execute(select(transactions.c.price).where(transactions.c.txn_ref == "p")).scalar()
    assert Decimal(str(stored)) == Decimal(first)


def test_a_price_one_ten_thousandth_apart_is_a_conflict(seeded_engine, tmp_path):
    load_transactions.load_file(seeded_engine,
                                write(tmp_path, [trade("p", price="999999999.9999", quantity=1)], "1.csv"))
    summary = load_transactions.load_file(seeded_engine, write(tmp_path, [trade("p", price="999999999.9998",
                                                                                quantity=1)], "2.csv"))

    assert summary.rows_rejected == 1
    assert rejects(seeded_engine)[0][1] == "txn_ref: 'p' conflicts with loaded trade 1 (batch 1, line 2)"


def test_every_row_is_counted_once(seeded_engine, tmp_path):
    rows = [trade("a"), trade("a"), trade("b", quantity=0), "", trade("c") + ",extra", trade("d")]
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=2)

    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (5, 2, 1, 2)
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(rejected_transactions)).scalar() == 2


# ---------------------------------------------------------------------------------------------- later updates

def test_quantities_summing_past_32_bits_keep_the_update_working(seeded_engine, tmp_path):
    rows = [trade("big", price="1", quantity=2147483647), "one,1001,AAPL,BUY,1,1,2025-01-02 10:00:01"]
    load_transactions.load_file(seeded_engine, write(tmp_path, rows))

    update_portfolio.update_portfolios(seeded_engine)
    update_portfolio.update_portfolios(seeded_engine)  # and every later run

    with seeded_engine.connect() as connection:
        quantity, cost = connection.execute(select(
            update_portfolio.portfolios.c.quantity, update_portfolio.portfolios.c.cost_basis)).one()
    assert (quantity, Decimal(str(cost))) == (2147483648, Decimal(2147483648))


@pytest.mark.parametrize("bad", ["2025-06-30 23:59:60", "１０.5"])
def test_rows_that_would_break_later_updates_are_rejected(seeded_engine, tmp_path, bad):
    row = (f"x,1001,AAPL,BUY,1,10,{bad}" if ":" in bad else f"x,1001,AAPL,BUY,1,{bad},2025-01-02 10:00:00")
    summary = load_transactions.load_file(seeded_engine, write(tmp_path, [trade("a"), row]))

    assert (summary.rows_loaded, summary.rows_rejected) == (1, 1)
    assert update_portfolio.update_portfolios(seeded_engine).trades_applied == 1


def test_prices_file_rejects_what_trade_rules_reject_and_keeps_the_rest(seeded_engine, tmp_path):
    path = tmp_path / "market_prices.csv"
    path.write_bytes("stock_symbol,price_date,close_price\nAAPL,2024-01-02,190.5\nAAPL,2024-01-03,１９０\n"
                     "AAPL,2024-01-04,190.12345\nAAPL,2024-01-05,1e3\nAA\rPL,2024-01-08,1\nAAPL,２０２４-01-09,1\n"
                     "AAPL,2024-01-10,190.25,\nAAPL,2024-01-11,\"190.5\n".encode("utf-8"))

    summary = load_transactions.load_prices_file(seeded_engine, str(path))

    close_problem = "is not a plain decimal > 0 and below 1,000,000,000 with at most 4 decimals"
    assert summary.rejects == [
        (3, f"close_price: '１９０' {close_problem}"), (4, f"close_price: '190.12345' {close_problem}"),
        (5, f"close_price: '1e3' {close_problem}"), (6, "record: holds a carriage return inside the line"),
        (7, "price_date: '２０２４-01-09' is not a real date YYYY-MM-DD"),
        (9, "record: a quoted field is not closed (within 10 lines)")]
    assert (summary.rows_new, summary.rows_changed) == (2, 0)
    with seeded_engine.connect() as connection:
        assert sorted(Decimal(str(close)) for close in connection.execute(
            select(market_prices.c.close_price)).scalars()) == [Decimal("190.25"), Decimal("190.5")]


def test_prices_rejects_warning_says_where_they_are_and_are_not(seeded_engine, tmp_path, caplog):
    path = tmp_path / "market_prices.csv"
    path.write_text("stock_symbol,price_date,close_price\n"
                    + "".join(f"NOPE,2024-01-{d:02d},1\n" for d in range(1, 13)))
    summary = load_transactions.load_prices_file(seeded_engine, str(path))

    load_transactions.log_rejects(summary)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 11 and messages[0] == f"{path}:2: stock_symbol: 'NOPE' is not a known stock"
    assert messages[-1] == (f"{path}: 12 rejected rows in all; only the first 10 are shown (--verbose shows all): "
                            "prices are not a trade batch, their rejects are not stored")
    assert "rejected_transactions" not in messages[-1]


def test_a_holding_worth_10_to_the_22_keeps_the_update_working(seeded_engine, tmp_path):
    rows = [trade(f"P{n}", price="0.0001", quantity=2147483647) for n in range(4700)]
    rows.append("PLAST,1002,AAPL,BUY,1,999999999.9999,2025-01-03 10:00:00")  # AAPL's last price: no close loaded
    load_transactions.load_file(seeded_engine, write(tmp_path, rows))

    update_portfolio.update_portfolios(seeded_engine)
    update_portfolio.update_portfolios(seeded_engine, full=True)

    p = update_portfolio.portfolios.c
    with seeded_engine.connect() as connection:
        quantity, market_value = connection.execute(
            select(p.quantity, p.market_value).where(p.investor_id == 1001)).one()
    assert quantity == 4700 * 2147483647
    exact = quantity * Decimal("999999999.9999")  # about 1.0e22: beyond the default 28 decimal digits with 6 places
    if seeded_engine.dialect.name == "sqlite":  # 8-byte floats: exact only below 10**13 (README)
        assert abs(Decimal(str(market_value)) - exact) / exact < Decimal("1e-12")
    else:
        assert Decimal(str(market_value)) == exact


def test_a_line_over_the_limit_is_one_reject_read_in_pieces(seeded_engine, tmp_path):
    limit = load_transactions.MAX_LINE_BYTES
    rows = [trade("a"), "b,1001,AAPL,BUY,1,1," + "9" * (3 * limit), 'c,1001,AAPL,BUY,1,1,"2025',
            "x" * (limit + 5) + '"', trade("d")]
    path = write(tmp_path, rows)

    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=2)

    length = len(rows[1]) + 1  # with its line ending
    assert [(line, reason) for line, reason, _ in rejects(seeded_engine)] == [
        (3, f"record: the line is {length:,} bytes long, over the limit of {limit:,}"),
        (4, f"record: a quoted field runs on to a line that is over {limit:,} bytes long"),
        (5, f"record: the line is {limit + 7:,} bytes long, over the limit of {limit:,}")]
    assert rejects(seeded_engine)[0][2].endswith(f"… [cut: {length:,} bytes in all]")
    assert loaded_refs(seeded_engine) == ["a", "d"]
    assert_accounted(summary)


@pytest.mark.parametrize("header, ending, problem", [
    (HEADER + ",price", "\n", "header names column(s) price more than once"),
    (HEADER, "\r", "header holds a carriage return inside the line (old Mac line endings?); "
                   "save the file with LF or CRLF line endings"),
])
def test_header_problems_refuse_the_file_with_its_name_and_the_next_file_loads(
        seeded_engine, database_url, tmp_path, capsys, header, ending, problem):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(f"{header}{ending}{trade('x')}{ending}".encode())
    good = write(tmp_path, [trade("g")], "good.csv")

    code = load_transactions.main(["--database-url", database_url, str(bad), good])

    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines() == [f"error: load_transactions: {bad}: line 1: {problem}"]
    assert out.splitlines() == ["good.csv: 1 read, 1 loaded, 0 duplicates, 0 rejected (batch 2)"]
    assert loaded_refs(seeded_engine) == ["g"]


def test_a_missing_file_does_not_load_the_prices_beside_it(seeded_engine, database_url, tmp_path, capsys):
    (tmp_path / "market_prices.csv").write_text("stock_symbol,price_date,close_price\nAAPL,2024-01-02,190\n")

    assert load_transactions.main(["--database-url", database_url, str(tmp_path / "absent.csv")]) == 2

    assert capsys.readouterr().out == ""
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(market_prices)).scalar() == 0


def test_a_continuation_line_that_is_not_utf8_is_named_plainly(seeded_engine, tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(f'{HEADER}\n{trade("a")}\nq,1001,AAPL,BUY,1,1,"2025\nl\xe9"\n{trade("b")}\n'.encode("latin-1"))

    load_transactions.load_file(seeded_engine, str(path))

    assert [(line, reason) for line, reason, _ in rejects(seeded_engine)] == [
        (3, "record: a quoted field runs on to a line that is not UTF-8 text"), (4, "record: is not UTF-8 text")]
    assert loaded_refs(seeded_engine) == ["a", "b"]


@pytest.mark.parametrize("content, problem", [(b"", "is empty"),
                                              (b"\n" + HEADER.encode(), "line 1: the header is blank")])
def test_an_empty_file_or_blank_header_says_so(seeded_engine, database_url, tmp_path, capsys, content, problem):
    path = tmp_path / "t.csv"
    path.write_bytes(content)

    assert load_transactions.main(["--database-url", database_url, str(path)]) == 2

    assert capsys.readouterr().err.splitlines() == [f"error: load_transactions: {path}: {problem}"]


def test_changed_closes_are_named_in_a_warning(seeded_engine, tmp_path, caplog):
    path = tmp_path / "market_prices.csv"
    path.write_text("stock_symbol,price_date,close_price\nAAPL,2024-01-02,190\nAAPL,2024-01-03,191\n")
    load_transactions.load_prices_file(seeded_engine, str(path))
    path.write_text("stock_symbol,price_date,close_price\nAAPL,2024-01-02,190\nAAPL,2024-01-03,195\n")

    summary = load_transactions.load_prices_file(seeded_engine, str(path))

    assert (summary.rows_new, summary.rows_changed) == (0, 1)
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: 1 stored daily closes changed value (the same symbol and day, another close): risk is revalued by "
        "the next update, but alerts already raised on the old closes stay; surveillance.py --full checks every "
        "trade again"]


def absurd_close_then_update(engine, tmp_path):
    """Trades priced near 190, then a close of 0.001 among closes near 190: a volatility in the thousands."""
    prices = tmp_path / "market_prices.csv"
    prices.write_text("stock_symbol,price_date,close_price\n" + "".join(
        f"AAPL,2024-01-{day:02d},{'0.001' if day == 10 else '190'}\n" for day in range(2, 20)))
    load_transactions.load_file(engine, write(tmp_path, [trade("a", price="190"), trade("b", price="190") + ",",
                                                         "c,1002,MSFT,BUY,1,400,2025-01-02 10:00:00"]))
    load_transactions.load_prices_file(engine, str(prices))
    update_portfolio.update_portfolios(engine)
    update_portfolio.update_portfolios(engine, full=True)
    with engine.connect() as connection:
        return connection.execute(select(update_portfolio.investor_risk.c.weighted_volatility).where(
            update_portfolio.investor_risk.c.investor_id == 1001)).scalar()


def test_a_typo_close_far_from_the_others_keeps_the_update_working(seeded_engine, tmp_path):
    assert float(absurd_close_then_update(seeded_engine, tmp_path)) > 10_000  # it used to overflow DECIMAL(12, 8)


def test_a_typo_close_far_from_the_others_keeps_the_update_working_on_postgresql(postgres_url, tmp_path):
    engine = db_config.get_engine(postgres_url)
    seed_investors.seed_reference_data(engine)
    assert float(absurd_close_then_update(engine, tmp_path)) > 10_000
    engine.dispose()


def test_a_file_without_line_breaks_is_refused_by_its_header_without_reading_it_whole(sqlite_url, tmp_path, capsys):
    path = tmp_path / "no_breaks.csv"
    with open(path, "wb") as handle:
        for _ in range(64):
            handle.write(b"x" * (1 << 20))  # 64 MiB of one line: read whole, this was 64 MiB and more in memory
    code = load_transactions.main(["--database-url", sqlite_url, str(path)])
    assert code == 2
    assert capsys.readouterr().err == (f"error: load_transactions: {path}: line 1: the header is longer than "
                                       "1,048,576 bytes (is this a CSV file?)\n")


@pytest.mark.parametrize("change", ["truncated", "appended"])
def test_a_file_that_changes_while_it_is_loaded_is_refused_whole_and_loads_later(seeded_engine, tmp_path,
                                                                                  monkeypatch, change):
    """Regression: a file cut or grown during its load was recorded as loaded under the SHA-256 of its earlier
    bytes, so the complete file was then skipped as already loaded and its other trades were lost."""
    path = write(tmp_path, good_rows(50))
    complete = open(path, "rb").read()
    read_in_chunks = load_transactions.iter_batches

    def changed_after_the_first_chunk(*args, **kwargs):
        for number, chunk in enumerate(read_in_chunks(*args, **kwargs)):
            yield chunk
            if number == 0:
                with open(path, "r+b" if change == "truncated" else "ab") as file:
                    file.truncate(len(complete) // 2) if change == "truncated" else file.write(b"x1,1001,AAPL,BUY,1,1,"
                                                                                               b"2025-01-02 10:00:00\n")

    monkeypatch.setattr(load_transactions, "iter_batches", changed_after_the_first_chunk)
    with pytest.raises(load_transactions.cli.InputError, match="the file changed while it was being loaded; "
                                                               "nothing of it was kept"):
        load_transactions.load_file(seeded_engine, path, chunk_rows=10)
    assert loaded_refs(seeded_engine) == []
    monkeypatch.setattr(load_transactions, "iter_batches", read_in_chunks)
    open(path, "wb").write(complete)
    summary = load_transactions.load_file(seeded_engine, path, chunk_rows=10)
    assert (summary.rows_read, summary.rows_loaded) == (50, 50)
