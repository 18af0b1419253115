"""A chunk that repeats stored trades is classified in the database (staging.py) with exactly the outcome of the
direct path: the same counts, the same rejects with the same reasons, the new trades in line order."""
from sqlalchemy import create_engine, make_url, text

import bulk_insert
import db_config
import load_transactions
import seed_investors
import staging

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,fee\n"


def trade(number, price="10.50", fee="1.00"):
    return (f"R{number:05d},{1001 + number % 7},AAPL,{'BUY' if number % 3 else 'SELL'},{number % 40 + 1},{price},"
            f"2025-06-{number % 20 + 1:02d} 10:{number % 60:02d}:00,{fee}\n")


def write(path, lines):
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return str(path)


EXPECTED_COUNTS = (601, 300, 299, 2)  # read, loaded, duplicate, rejected


def half_new_outcome(engine, tmp_path):
    """Load the first 300 trades, then a file of 601 lines: 300 repeated (two with other values, one written in
    another but equal form), 300 new, and one new ref again at the end; return (counts, rejects, stored refs)."""
    first = write(tmp_path / "first.csv", [trade(n) for n in range(300)])
    lines = [trade(n) for n in range(600)]
    lines[10] = trade(10, price="10.51")  # conflicts with the stored trade
    lines[250] = trade(250, fee="2.00")  # conflicts too
    lines[20] = lines[20].replace(",10.50,", ",10.5000,").replace(",1.00\n", ",1\n")  # same values, other text
    lines.append(trade(450))  # line 602 repeats line 452 of this file, in the next chunk
    whole = write(tmp_path / "whole.csv", lines)
    load_transactions.load_file(engine, first, chunk_rows=150)
    summary = load_transactions.load_file(engine, whole, chunk_rows=150)
    with engine.connect() as connection:
        rejects = connection.execute(text(
            "SELECT line_number, reason FROM rejected_transactions WHERE batch_id = :b ORDER BY line_number"),
            {"b": summary.batch_id}).all()
        stored = connection.execute(text(
            "SELECT txn_ref, source_line FROM transactions WHERE batch_id = :b ORDER BY txn_id"),
            {"b": summary.batch_id}).all()
    counts = (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected)
    return counts, [tuple(row) for row in rejects], [tuple(row) for row in stored]


def check_outcome(outcome):
    counts, rejects, stored = outcome
    assert counts == EXPECTED_COUNTS
    assert [line for line, _ in rejects] == [12, 252]
    assert rejects[0][1].startswith("txn_ref: 'R00010' conflicts with loaded trade ")
    assert rejects[0][1].endswith(", line 12)")
    assert rejects[1][1].endswith(", line 252)")
    assert stored == [(f"R{n:05d}", n + 2) for n in range(300, 600)]  # new trades only, in line order


def test_half_new_file_is_classified_in_the_database(seeded_engine, tmp_path, monkeypatch):
    chosen = []
    original = staging.holds_stored_refs
    monkeypatch.setattr(staging, "holds_stored_refs", lambda *args: chosen.append(original(*args)) or chosen[-1])
    check_outcome(half_new_outcome(seeded_engine, tmp_path))
    assert chosen == [False, False, True, True, False, False, True]  # 2 chunks, then 4 chunks of 150 and 1 row


def test_the_direct_path_gives_the_same_outcome(seeded_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "holds_stored_refs", lambda *args: False)
    check_outcome(half_new_outcome(seeded_engine, tmp_path))


def test_the_staging_table_is_left_empty(seeded_engine, tmp_path):
    half_new_outcome(seeded_engine, tmp_path)
    with seeded_engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar() == 600


def test_a_fresh_chunk_is_not_staged(seeded_engine):
    with seeded_engine.connect() as connection:
        assert not staging.holds_stored_refs(connection, [f"X{n}" for n in range(5000)])


def test_a_chunk_of_repeats_inserts_nothing(seeded_engine, tmp_path, monkeypatch):
    """The staged chunks of the half-new file hold no new ref: their rows are counted, none inserted."""
    calls = []
    monkeypatch.setattr(staging, "insert_new", lambda connection: calls.append(connection) or 0)
    check_outcome(half_new_outcome(seeded_engine, tmp_path))
    assert calls == []


def test_a_ref_stored_meanwhile_is_classified_like_the_others(seeded_engine, tmp_path, monkeypatch):
    """A new ref that another loader stores between the count and the insert is skipped by the insert, then
    counted again: here a duplicate, as its stored trade has the same values."""
    first = write(tmp_path / "first.csv", [trade(n) for n in range(300)])
    second = write(tmp_path / "second.csv", [trade(n) for n in range(200, 400)])  # one chunk: 100 stored, 100 new
    other_batch = load_transactions.load_file(seeded_engine, first).batch_id
    insert_new = staging.insert_new

    def store_one_meanwhile(connection):
        values = ", ".join(bulk_insert.TRADE_COLUMNS)
        connection.execute(text(f"INSERT INTO transactions ({', '.join(bulk_insert.INSERT_COLUMNS)}) SELECT {values}, "
                                ":batch_id, 9999 FROM staging_transactions WHERE txn_ref = 'R00350'"),
                           {"batch_id": other_batch})
        return insert_new(connection)

    monkeypatch.setattr(staging, "insert_new", store_one_meanwhile)
    summary = load_transactions.load_file(seeded_engine, second, chunk_rows=200)
    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (200, 99, 101, 0)


def test_a_database_created_by_db_config_is_classified_alike(mariadb_url, tmp_path):
    """db_config creates a missing MariaDB database with its own collation; the staging table compares texts in the
    collations of transactions."""
    server = create_engine(mariadb_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {make_url(mariadb_url).database}")
    server.dispose()
    engine = db_config.get_engine(mariadb_url)  # creates the database, then the schema
    try:
        seed_investors.seed_reference_data(engine)
        check_outcome(half_new_outcome(engine, tmp_path))
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------- known chunks

def stored_chunks(engine):
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(
            "SELECT batch_id, first_line, line_count FROM loaded_chunks ORDER BY batch_id, first_line"))]


def load_recording_chunks(engine, path, monkeypatch):
    """Load `path` in chunks of 100 rows; return (counts, [(first line, 'known' or 'checked')] of its chunks)."""
    chunks, store = [], load_transactions.store_chunk

    def recorded_store(connection, chunk, summary, *args, **kwargs):
        known = isinstance(chunk, load_transactions.KnownChunk)
        chunks.append((chunk.plain.first_number if known else chunk.first_line, "known" if known else "checked"))
        return store(connection, chunk, summary, *args, **kwargs)

    monkeypatch.setattr(load_transactions, "store_chunk", recorded_store)
    summary = load_transactions.load_file(engine, path, chunk_rows=100)
    monkeypatch.setattr(load_transactions, "store_chunk", store)
    return (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected), chunks


def test_a_file_resent_with_rows_added_counts_the_chunks_a_batch_inserted_whole_as_duplicates(seeded_engine,
                                                                                               tmp_path, monkeypatch):
    first = write(tmp_path / "first.csv", [trade(n) for n in range(300)])
    whole = write(tmp_path / "whole.csv", [trade(n) for n in range(600)])
    assert load_recording_chunks(seeded_engine, first, monkeypatch)[0] == (300, 300, 0, 0)

    counts, chunks = load_recording_chunks(seeded_engine, whole, monkeypatch)

    assert counts == (600, 300, 300, 0)
    assert chunks == [(2, "known"), (102, "known"), (202, "known"), (302, "checked"), (402, "checked"),
                      (502, "checked")]
    assert stored_chunks(seeded_engine) == [(1, 2, 100), (1, 102, 100), (1, 202, 100), (2, 302, 100),
                                            (2, 402, 100), (2, 502, 100)]
    with seeded_engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar() == 600


def test_a_chunk_with_one_line_changed_is_checked_and_the_change_rejected(seeded_engine, tmp_path, monkeypatch):
    write(tmp_path / "first.csv", [trade(n) for n in range(300)])
    load_transactions.load_file(seeded_engine, str(tmp_path / "first.csv"), chunk_rows=100)
    lines = [trade(n) for n in range(600)]
    lines[150] = trade(150, price="10.51")

    counts, chunks = load_recording_chunks(seeded_engine, write(tmp_path / "whole.csv", lines), monkeypatch)

    assert counts == (600, 300, 299, 1)
    assert chunks[:3] == [(2, "known"), (102, "checked"), (202, "known")]
    with seeded_engine.connect() as connection:
        reason = connection.execute(text("SELECT reason FROM rejected_transactions")).scalar_one()
    assert reason.startswith("txn_ref: 'R00150' conflicts with loaded trade ")


def test_a_batch_whose_trades_were_deleted_by_hand_has_its_chunks_checked_again(seeded_engine, tmp_path,
                                                                                 monkeypatch):
    load_transactions.load_file(seeded_engine, write(tmp_path / "first.csv", [trade(n) for n in range(300)]),
                                chunk_rows=100)
    with seeded_engine.begin() as connection:
        connection.execute(text("DELETE FROM transactions WHERE txn_ref = 'R00005'"))

    counts, chunks = load_recording_chunks(
        seeded_engine, write(tmp_path / "whole.csv", [trade(n) for n in range(600)]), monkeypatch)

    assert counts == (600, 301, 299, 0)  # R00005 is stored again
    assert [kind for _, kind in chunks] == ["checked"] * 6


def test_a_chunk_whose_trades_were_all_deleted_by_hand_is_recorded_for_the_batch_that_loads_it_again(
        seeded_engine, tmp_path, monkeypatch):
    load_transactions.load_file(seeded_engine, write(tmp_path / "first.csv", [trade(n) for n in range(300)]),
                                chunk_rows=100)
    with seeded_engine.begin() as connection:
        connection.execute(text("DELETE FROM transactions WHERE source_line BETWEEN 102 AND 201"))  # chunk 2, whole

    counts, chunks = load_recording_chunks(
        seeded_engine, write(tmp_path / "whole.csv", [trade(n) for n in range(600)]), monkeypatch)

    assert counts == (600, 400, 200, 0)  # chunk 2 inserted whole again: its record moves to batch 2
    assert stored_chunks(seeded_engine) == [(1, 2, 100), (1, 202, 100), (2, 102, 100), (2, 302, 100),
                                            (2, 402, 100), (2, 502, 100)]


def test_a_chunk_with_a_reject_or_a_repeat_is_not_recorded(seeded_engine, tmp_path):
    lines = [trade(n) for n in range(300)]
    lines[120] = lines[120].replace(",AAPL,", ",NOPE,")  # an unknown symbol: rejected
    lines[250] = trade(210)  # repeats line 212 in its chunk

    load_transactions.load_file(seeded_engine, write(tmp_path / "first.csv", lines), chunk_rows=100)

    assert stored_chunks(seeded_engine) == [(1, 2, 100)]


def test_the_same_bytes_read_by_another_layout_have_another_digest():
    names = ["txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time", "fee"]
    layout = load_transactions.validation.FileLayout("canonical", list(range(8)), 8, ",", names)
    swapped = layout._replace(columns=[0, 1, 2, 3, 5, 4, 6, 7])
    data = trade(1).encode()

    assert load_transactions.chunk_digest(layout, data) != load_transactions.chunk_digest(swapped, data)
    assert load_transactions.chunk_digest(layout, data) == load_transactions.chunk_digest(layout._replace(), data)
