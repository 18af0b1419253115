"""ledger.py: the typed events, the one Position, and the weekly checkpoints apply_trades emits (no database);
and, on SQLite, that a stored state its floats may have rounded is replayed, never gone on from; on MariaDB, that
trades read as one text per position equal those read row by row."""
import random
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, select

import bulk_insert
import db_config
import ledger
import load_transactions
import seed_investors
import update_portfolio
from ledger import Position, Trade
from schema import portfolios

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"


def trade(txn_id, txn_time, txn_type, quantity, price, fee="0", investor_id=1001, symbol="AAPL"):
    return Trade(txn_id, txn_time, investor_id, symbol, txn_type, quantity, Decimal(price), Decimal(fee))


def test_weighted_average_cost_example_of_the_docs():
    """The example table of docs/portfolio-math.md, row by row."""
    position = Position(1001, "AAPL")
    steps = [(trade(1, "2024-06-03 10:00:00", "BUY", 10, "100"), True, 10, "1000", "100", "0"),
             (trade(2, "2024-06-03 11:00:00", "BUY", 10, "110"), True, 20, "2100", "105", "0"),
             (trade(3, "2024-06-03 12:00:00", "SELL", 5, "120"), True, 15, "1575", "105", "75"),
             (trade(4, "2024-06-03 13:00:00", "SELL", 20, "120"), False, 15, "1575", "105", "75"),
             (trade(5, "2024-06-03 14:00:00", "SELL", 15, "100"), True, 0, "0", "0", "0")]
    for event, applied, quantity, cost_basis, avg_cost, realized in steps:
        assert position.apply(event) is applied
        assert (position.quantity, position.cost_basis, position.avg_cost, position.realized_pnl) == (
            quantity, Decimal(cost_basis), Decimal(avg_cost), Decimal(realized))
    assert (position.trade_count, position.last_txn_id, position.last_trade_price) == (5, 5, Decimal("100"))


def test_fees_follow_the_rules_of_weighted_average_cost_with_fees():
    """BUY: cost_basis += q·p + f; SELL: realized += q·(p − avg) − f; an oversold SELL changes nothing, its fee
    included."""
    position = Position(1001, "AAPL")
    position.apply(trade(1, "2024-06-03 10:00:00", "BUY", 10, "100", fee="5"))  # cost 1005, avg 100.5
    assert position.cost_basis == Decimal("1005")
    assert not position.apply(trade(2, "2024-06-03 11:00:00", "SELL", 11, "120", fee="7"))
    assert (position.quantity, position.cost_basis, position.realized_pnl) == (10, Decimal("1005"), Decimal("0"))
    position.apply(trade(3, "2024-06-03 12:00:00", "SELL", 4, "120", fee="3"))  # 4·(120 − 100.5) − 3 = 75
    assert (position.quantity, position.cost_basis, position.realized_pnl) == (6, Decimal("603"), Decimal("75"))


def test_an_unknown_trade_type_is_an_error_never_a_sell():
    position = Position(1001, "AAPL", quantity=10, cost_basis=Decimal("1000"))
    with pytest.raises(ledger.UnknownEvent, match="txn_type 'SHORT' is neither BUY nor SELL"):
        position.apply(trade(1, "2024-06-03 10:00:00", "SHORT", 5, "100"))
    assert (position.quantity, position.trade_count) == (10, 0)


def test_an_unknown_event_kind_is_an_error():
    class Split:
        pass

    with pytest.raises(ledger.UnknownEvent, match="cannot apply a Split"):
        Position(1001, "AAPL").apply(Split())


def test_a_checkpoint_restores_the_position_exactly():
    position = Position(1001, "AAPL")
    position.apply(trade(1, "2024-06-05 10:00:00", "BUY", 3, "33.3333"))
    checkpoint = position.checkpoint()
    assert checkpoint.week_start == date(2024, 6, 3)  # the Monday of Wednesday 5 June 2024
    assert Position.from_checkpoint(checkpoint) == position


def test_apply_trades_emits_one_checkpoint_per_week_traded_with_its_end_state():
    trades = [trade(1, "2024-06-03 10:00:00", "BUY", 10, "100"), trade(2, "2024-06-07 10:00:00", "BUY", 10, "90"),
              trade(3, "2024-06-17 10:00:00", "SELL", 5, "95"),  # a week without trades in between
              trade(4, "2024-06-03 10:00:00", "BUY", 1, "50", symbol="MSFT")]
    positions = {}
    applied = ledger.apply_trades(trades, positions)
    weeks = [(c.stock_symbol, c.week_start, c.quantity, c.last_txn_id) for c in applied.checkpoints]
    assert weeks == [("AAPL", date(2024, 6, 3), 20, 2), ("AAPL", date(2024, 6, 17), 15, 3),
                     ("MSFT", date(2024, 6, 3), 1, 4)]
    assert applied.changed == {(1001, "AAPL"), (1001, "MSFT")} and applied.trades == 4
    assert applied.latest["AAPL"].txn_id == 3


def test_a_position_with_a_late_first_trade_is_left_for_a_replay_with_all_its_trades():
    """A stored position whose first new trade sorts before its state is untouched, even by its later trades."""
    stored = Position(1001, "AAPL", quantity=10, cost_basis=Decimal("1000"), last_txn_time="2024-06-05 10:00:00",
                      last_txn_id=7, trade_count=1, last_trade_price=Decimal("100"))
    positions = {(1001, "AAPL"): stored}
    before = Position(**vars(stored))
    applied = ledger.apply_trades([trade(8, "2024-06-04 10:00:00", "BUY", 1, "90"),
                                   trade(9, "2024-06-06 10:00:00", "BUY", 1, "90")], positions)
    assert list(applied.late) == [(1001, "AAPL")] and applied.late[(1001, "AAPL")].txn_id == 8
    assert positions[(1001, "AAPL")] == before and applied.changed == set() and applied.checkpoints == []


# ---------------------------------------------------------------------------------------------- SQLite's floats

@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = db_config.get_engine(sqlite_url)
    seed_investors.seed_reference_data(engine)
    yield engine
    engine.dispose()


def load_lines(engine, path, lines):
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    assert load_transactions.load_file(engine, str(path)).rows_rejected == 0


def portfolio_rows(engine):
    columns = [column for column in portfolios.columns if column.name != "updated_at"]
    with engine.connect() as connection:
        return connection.execute(select(*columns)).all()


# After R-3 a cost basis with more digits than SQLite's float holds: BUY 500000 @ 100000 and BUY 1 @ 0.0001 cost
# 50000000000.0001 for 500001 shares; SELL 1 @ 1 realizes 1 - 99999.8 = -99998.8 and leaves 500000 shares at
# 50000000000.0001 · 500000/500001 = 49999900000.200100 (6 decimals), which SQLite hands back as 49999900000.200104.
LARGE_POSITION = ["R-1,1001,AAPL,BUY,500000,100000.0000,2024-03-04 10:00:00",
                  "R-2,1001,AAPL,BUY,1,0.0001,2024-03-04 10:01:00",
                  "R-3,1001,AAPL,SELL,1,1.0000,2024-03-04 10:02:00"]


@pytest.mark.parametrize("first, second, quantity, realized_pnl", [
    # goes on from the stored state: realized (1 - avg) + (500000 - cost basis) = 500001 - 50000000000.0001
    ([], ["R-4,1001,AAPL,SELL,500000,1.0000,2024-03-05 10:00:00"], 0, "-49999499999.0001"),
    # a late BUY 7 @ 3 before R-5 in the week of 11 March, replayed (not from the week of 4 March's checkpoint,
    # rounded too): -99998.8 + 500000 · (1 - (49999900000.2001 + 21) / 500007) = -49998800031.199646
    (["R-5,1001,AAPL,SELL,500000,1.0000,2024-03-11 10:00:00"], ["R-4,1001,AAPL,BUY,7,3.0000,2024-03-11 09:00:00"],
     7, "-49998800031.199646"),
], ids=["continued", "late"])
def test_sqlite_incremental_update_equals_full_above_what_a_float_holds(sqlite_engine, tmp_path, first, second,
                                                                         quantity, realized_pnl):
    """An update that went on from the state SQLite handed back (or replayed from such a checkpoint) gave a
    realized P&L a few millionths off the full update's: the case a hypothesis test found, reduced."""
    load_lines(sqlite_engine, tmp_path / "part0.csv", LARGE_POSITION + first)
    update_portfolio.update_portfolios(sqlite_engine)
    load_lines(sqlite_engine, tmp_path / "part1.csv", second)
    update_portfolio.update_portfolios(sqlite_engine)
    incremental = portfolio_rows(sqlite_engine)
    update_portfolio.update_portfolios(sqlite_engine, full=True)
    assert portfolio_rows(sqlite_engine) == incremental
    assert incremental[0].quantity == quantity
    assert abs(incremental[0].realized_pnl - Decimal(realized_pnl)) < Decimal("0.005")


@pytest.mark.slow_on_servers
def test_updates_one_after_another_keep_the_compiled_statement_cache_flat(seeded_engine, tmp_path):
    """A long-running process (the inbox watcher, a live consumer) updates after every file: the statements that
    read each position's trades differ every time and must not pile up in SQLAlchemy's compiled cache (the
    watcher grew by 15 MB a file)."""
    import generate_dummy_data

    def load_and_update(seed):
        path = tmp_path / f"t{seed}.csv"
        generate_dummy_data.write_files(str(path), 300, seed, corporate_actions=False)
        load_transactions.load_path(seeded_engine, str(path))
        update_portfolio.update_portfolios(seeded_engine)

    for seed in (1, 2):  # warm up: every kind of statement compiled once
        load_and_update(seed)
    cached = len(seeded_engine._compiled_cache)
    for seed in range(3, 9):
        load_and_update(seed)
    assert len(seeded_engine._compiled_cache) <= cached + 3


# ---------------------------------------------------------------------------------------------- writing checkpoints

def stored_checkpoint(week, quantity, lots=None, symbol="AAPL"):
    return ledger.Checkpoint(1001, symbol, week, quantity, Decimal("1234.567891"), Decimal("-0.000001"),
                             f"{week.isoformat()} 10:00:00", 7, 2, Decimal("99.1234"), Decimal("0.5"),
                             Decimal("1.25"), lots)


def read_checkpoints(connection, weeks):
    return [checkpoint for week in weeks for checkpoint in ledger.latest_checkpoints(
        connection, ledger.position_checkpoints.c.week_start == week).values()]


def write_twice(engine):
    """Write two checkpoints, then one of them changed (its lots gone) and a new one; return what is stored."""
    weeks = [date(2024, 6, 3), date(2024, 6, 10), date(2024, 6, 17)]
    first = [stored_checkpoint(weeks[0], 10, "7,2024-06-03 10:00:00,10,1234.567891"), stored_checkpoint(weeks[1], 5)]
    second = [stored_checkpoint(weeks[0], 4), stored_checkpoint(weeks[2], 3, "8,2024-06-17 10:00:00,0.5,12.5")]
    with engine.begin() as connection:
        ledger.write_checkpoints(connection, first)
        ledger.write_checkpoints(connection, second)
        return read_checkpoints(connection, weeks), [second[0], first[1], second[1]]


def test_written_checkpoints_are_inserted_or_replace_the_stored_ones_whole(seeded_engine):
    """Every column of a checkpoint written again replaces the stored one (on MariaDB by LOAD DATA), lots too."""
    stored, expected = write_twice(seeded_engine)
    assert stored == expected


def test_checkpoints_are_upserted_where_the_connection_refuses_local_files(mariadb_url):
    """A MariaDB connection made without db_config cannot LOAD DATA LOCAL: the checkpoints are upserted instead."""
    seed_investors.seed_reference_data(db_config.get_engine(mariadb_url))
    plain = create_engine(mariadb_url)
    stored, expected = write_twice(plain)
    plain.dispose()
    assert stored == expected


@pytest.mark.parametrize("text_limit", [None, 120])
def test_trades_read_grouped_by_position_equal_those_read_row_by_row(mariadb_url, tmp_path, monkeypatch, text_limit):
    """On MariaDB whole positions' trades are read as one text per position (GROUP_CONCAT); they are the trades read
    row by row, in the same order, for every trade and for a batch's. A text the server cuts (a limit of 120
    characters cuts a position of three trades or more, at any point of a line) is read row by row, and the
    positions after it grouped again."""
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    rng = random.Random(7)
    symbols = ["AAPL", "MSFT", "KO", "TSLA"]
    lines = [f"T{number:05d},{1001 + rng.randrange(4)},{rng.choice(symbols)},BUY,{rng.randrange(1, 50)},"
             f"{rng.randrange(100, 99999) / 100:.2f},2024-0{1 + number % 3}-{10 + number % 17} 10:{number % 60:02d}:00"
             for number in range(300)]
    lines.append("T99999,1002,GS,BUY,1,10.00,2024-01-02 09:30:00")  # a position of one trade: its text is not cut
    load_lines(engine, tmp_path / "first.csv", lines[:200])
    load_lines(engine, tmp_path / "second.csv", lines[200:])
    if text_limit:
        monkeypatch.setattr(ledger, "GROUP_TEXT_LIMIT_SQL", f"SET SESSION group_concat_max_len = {text_limit}")
    reads, read_texts = [], ledger._position_texts
    monkeypatch.setattr(ledger, "_position_texts", lambda *args: reads.append(args[3]) or read_texts(*args))
    with engine.connect() as connection:
        for where, params in (("", None), ("WHERE t.batch_id IN :ids", {"ids": [2]})):
            by_rows = list(ledger.stream_trades(connection, where, params))
            reads.clear()
            grouped = list(ledger.stream_trades(connection, where, params, bulk=True))
            assert grouped == by_rows and len(by_rows) == (301 if not where else 101)
            assert reads[0] is None and (len(reads) > 10 if text_limit else len(reads) == 1)  # again after each cut
    engine.dispose()


@pytest.mark.parametrize("checkpoint", [
    stored_checkpoint(date(2024, 6, 3), 10, "7,2024-06-03 10:00:00,10,1234.567891"),
    stored_checkpoint(date(2024, 6, 3), 0)._replace(last_trade_price=None, cost_basis=Decimal("1E+2"),
                                                    realized_pnl=Decimal("-0.000001"), fees_paid=Decimal("0")),
    stored_checkpoint(date(2024, 6, 3), 5, "a\\b\tc\nd", symbol="BRK.B"),
])
def test_a_checkpoint_line_holds_each_field_as_the_driver_would_send_it(checkpoint):
    """checkpoint_line is one format string over the named fields: the same text as escaping each field in turn
    (mysql_field of a Decimal in plain notation), NULL as \\N."""
    fields = [bulk_insert.mysql_field(format(value, "f") if isinstance(value, Decimal) else value)
              for value in checkpoint]
    assert ledger.checkpoint_line(checkpoint) == "\t".join(fields) + "\n"
    assert len(fields) == len(ledger.CHECKPOINT_COLUMNS)
