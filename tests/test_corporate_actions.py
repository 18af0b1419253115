"""corporate_actions.py: loading corporate actions files (docs/corporate-actions.md).

Every database test runs on SQLite and on a fresh MariaDB database (the `seeded_engine` fixture); one runs on
PostgreSQL. Small CSVs are written inline to tmp_path; expected values are spelled out.
"""
import logging
import threading
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

import corporate_actions
import db_config
import db_retry
import load_transactions
import seed_investors
from schema import corporate_actions as actions_table, market_prices, transactions

HEADER = "stock_symbol,ex_date,action,value"
TRADE_HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
VALUE_PROBLEM = "is not a plain decimal > 0 with at most 6 decimals"
SPLIT_VALUE_PROBLEM = VALUE_PROBLEM + " (or a ratio new:old such as 1:3)"
DATE_PROBLEM = "is not a real date YYYY-MM-DD"
CHANGES_NOTHING = "is a split of 1 new share per old share, which changes nothing"
REFUSAL = ("an action already stored cannot be changed because positions may have been built on it "
           "(nothing from this file was loaded)")
# The example of docs/corporate-actions.md: a 4-for-1 split, a 1-for-10 reverse split, a quarterly dividend.
EXAMPLE_LINES = [HEADER, "AAPL,2020-08-31,SPLIT,4", "TSLA,2025-03-10,SPLIT,0.1", "MSFT,2025-02-20,DIVIDEND,0.83"]


def write_csv(directory, name, lines):
    """Write `lines` as a file and return its path as text."""
    path = directory / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def load(engine, path):
    """Load a corporate actions file as load_transactions does, by its header."""
    return corporate_actions.load_actions_file(engine, path, load_transactions.read_layout(path))


@pytest.fixture(params=["sqlite", "mariadb", "postgres"])
def any_engine(request):
    """A seeded fresh database on each of the three databases, for the insert-if-absent statement of each."""
    engine = db_config.get_engine(request.getfixturevalue(f"{request.param}_url"))
    seed_investors.seed_reference_data(engine)
    yield engine
    engine.dispose()


def stored_actions(engine):
    """Every stored action as (stock_symbol, ex_date, action, value as Decimal, applied_at), in key order."""
    c = actions_table.c
    with engine.connect() as connection:
        rows = connection.execute(select(c.stock_symbol, c.ex_date, c.action, c.value, c.applied_at).order_by(
            c.stock_symbol, c.ex_date, c.action))
        return [(symbol, ex_date, action, Decimal(str(value)), applied_at)
                for symbol, ex_date, action, value, applied_at in rows]


def loaded_times(engine):
    with engine.connect() as connection:
        return list(connection.execute(select(actions_table.c.loaded_at).order_by(
            actions_table.c.stock_symbol, actions_table.c.ex_date, actions_table.c.action)).scalars())


# ---------------------------------------------------------------------------------------------- a good file

def test_a_good_file_stores_every_action_with_its_exact_value(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "corporate_actions.csv", EXAMPLE_LINES + [
        " nflx , 2025-05-02 , dividend , 0.123456 ", "goog,2025-07-01,Split,1000000", "AMZN,2025-07-01,SPLIT,0.000001",
        "META,2025-07-01,DIVIDEND,999999999.999999", "META,2025-07-02,DIVIDEND,+.5"])
    started = datetime.now().replace(microsecond=0)

    summary = load(seeded_engine, path)

    assert summary.line() == "corporate_actions.csv: 8 actions read, 8 new, 0 already loaded, 0 rejected"
    assert summary.rejects == []
    assert stored_actions(seeded_engine) == [
        ("AAPL", date(2020, 8, 31), "SPLIT", Decimal("4"), None),
        ("AMZN", date(2025, 7, 1), "SPLIT", Decimal("0.000001"), None),
        ("GOOG", date(2025, 7, 1), "SPLIT", Decimal("1000000"), None),
        ("META", date(2025, 7, 1), "DIVIDEND", Decimal("999999999.999999"), None),
        ("META", date(2025, 7, 2), "DIVIDEND", Decimal("0.5"), None),
        ("MSFT", date(2025, 2, 20), "DIVIDEND", Decimal("0.83"), None),
        ("NFLX", date(2025, 5, 2), "DIVIDEND", Decimal("0.123456"), None),
        ("TSLA", date(2025, 3, 10), "SPLIT", Decimal("0.1"), None),
    ]
    assert all(started <= loaded_at <= datetime.now() for loaded_at in loaded_times(seeded_engine))
    with seeded_engine.connect() as connection:
        assert corporate_actions.read_actions(connection, action="SPLIT")[-1] == corporate_actions.CorporateAction(
            "TSLA", date(2025, 3, 10), "SPLIT", Decimal("0.1"))


def test_a_semicolon_separated_file_loads(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "actions.csv", [line.replace(",", ";") for line in EXAMPLE_LINES] + ["AAPL;x;SPLIT;2"])

    summary = load(seeded_engine, path)

    assert summary.line() == "actions.csv: 4 actions read, 3 new, 0 already loaded, 1 rejected"
    assert summary.rejects == [(5, f"ex_date: 'x' {DATE_PROBLEM}")]
    assert [row[:4] for row in stored_actions(seeded_engine)] == [
        ("AAPL", date(2020, 8, 31), "SPLIT", Decimal("4")),
        ("MSFT", date(2025, 2, 20), "DIVIDEND", Decimal("0.83")),
        ("TSLA", date(2025, 3, 10), "SPLIT", Decimal("0.1")),
    ]


# ---------------------------------------------------------------------------------------------- rejects

# (row as written, expected reason); the good rows of the same file have reason None.
REJECT_CASES = [
    ("NOPE,2025-06-02,SPLIT,2", "stock_symbol: 'NOPE' is not a known stock"),
    ("ıbm,2025-06-02,SPLIT,2", "stock_symbol: 'ıbm' is not a known stock"),
    ("AAPL,2025-02-30,SPLIT,2", f"ex_date: '2025-02-30' {DATE_PROBLEM}"),
    ("AAPL,02/06/2025,SPLIT,2", f"ex_date: '02/06/2025' {DATE_PROBLEM}"),
    ("AAPL,2025-06-02 00:00:00,SPLIT,2", f"ex_date: '2025-06-02 00:00:00' {DATE_PROBLEM}"),
    ("AAPL,,SPLIT,2", f"ex_date: '' {DATE_PROBLEM}"),
    ("AAPL,1899-12-31,DIVIDEND,1", "ex_date: '1899-12-31' is before 1900"),
    ("AAPL,2025-06-02,MERGER,2", "action: 'MERGER' is not SPLIT or DIVIDEND"),
    ("AAPL,2025-06-02,SPLITS,2", "action: 'SPLITS' is not SPLIT or DIVIDEND"),
    ("AAPL,2025-06-03,SPLIT,0", f"value: '0' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-04,SPLIT,-2", f"value: '-2' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-05,SPLIT,abc", f"value: 'abc' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-06,SPLIT,", f"value: '' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-07,SPLIT,1e3", f"value: '1e3' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-08,SPLIT,NaN", f"value: 'NaN' {SPLIT_VALUE_PROBLEM}"),
    ('AAPL,2025-06-09,DIVIDEND,"1,000.00"', f"value: '1,000.00' {VALUE_PROBLEM}"),
    ("AAPL,2025-06-10,SPLIT,0.0000001", f"value: '0.0000001' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-11,DIVIDEND,0.1234567", f"value: '0.1234567' {VALUE_PROBLEM}"),
    ("AAPL,2025-06-12,SPLIT,１０", f"value: '１０' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-13,SPLIT,1000000.000001",
     "value: '1000000.000001' is not a split ratio between 0.000001 and 1,000,000 (new shares per old share)"),
    ("AAPL,2025-06-14,SPLIT,1", f"value: '1' {CHANGES_NOTHING}"),
    ("AAPL,2025-06-15,split,1.000000", f"value: '1.000000' {CHANGES_NOTHING}"),
    ("AAPL,2025-06-16,DIVIDEND,1000000000", "value: '1000000000' is not below 1,000,000,000 (a dividend per share)"),
    ("AAPL,2025-06-17", "record: has 2 fields, too few for the header"),
    ("AAPL,2025-06-18,SPLIT,2,extra", "record: has 5 fields, the header has 4"),
    ("ZZZ,never,HOLD,x",
     f"stock_symbol: 'ZZZ' is not a known stock; ex_date: 'never' {DATE_PROBLEM}; "
     f"action: 'HOLD' is not SPLIT or DIVIDEND; value: 'x' {VALUE_PROBLEM}"),
    ("AAPL,2025-06-20,SPLIT,0:3", "value: '0:3' is not a ratio new:old of whole numbers from 1 to 1,000,000"),
    ("AAPL,2025-06-21,SPLIT,3:3", f"value: '3:3' {CHANGES_NOTHING}"),
    ("AAPL,2025-06-23,DIVIDEND,1:3", f"value: '1:3' {VALUE_PROBLEM}"),
    ("AAPL,2025-06-24,SPLIT,1:3:4", f"value: '1:3:4' {SPLIT_VALUE_PROBLEM}"),
    ("AAPL,2025-06-19,SPLIT,3", None),
    ("AAPL,2025-06-22,SPLIT,1:3", None),
    ("AAPL,2025-06-19,DIVIDEND,0.25", None),
]


def test_each_rule_rejects_with_field_and_value_and_the_good_rows_load(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "corporate_actions.csv", [HEADER] + [row for row, _ in REJECT_CASES])

    summary = load(seeded_engine, path)

    expected = [(number, reason) for number, (_, reason) in enumerate(REJECT_CASES, start=2) if reason is not None]
    assert summary.rejects == expected
    assert summary.line() == (f"corporate_actions.csv: {len(REJECT_CASES)} actions read, 3 new, 0 already loaded, "
                              f"{len(expected)} rejected")
    assert [row[:4] for row in stored_actions(seeded_engine)] == [
        ("AAPL", date(2025, 6, 19), "DIVIDEND", Decimal("0.25")),
        ("AAPL", date(2025, 6, 19), "SPLIT", Decimal("3")),
        ("AAPL", date(2025, 6, 22), "SPLIT", Decimal("0.333333")),
    ]


def test_a_long_value_is_cut_in_its_reason(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "corporate_actions.csv", [HEADER, "AAPL,2025-06-02,SPLIT," + "9" * 150 + "x"])

    summary = load(seeded_engine, path)

    assert summary.rejects == [(2, f"value: {'9' * 100!r}… (151 characters) {SPLIT_VALUE_PROBLEM}")]


def test_rejects_are_logged_with_file_and_line_and_a_note_past_ten(seeded_engine, database_url, tmp_path, capsys):
    path = write_csv(tmp_path, "corporate_actions.csv", [HEADER] + [f"AAPL,2025-06-{day:02d},SPLIT,1"
                                                                    for day in range(1, 13)])

    assert load_transactions.main(["--database-url", database_url, path]) == 0

    out, err = capsys.readouterr()
    assert out.splitlines() == ["corporate_actions.csv: 12 actions read, 0 new, 0 already loaded, 12 rejected"]
    warnings = [line.split(" WARNING load_transactions: ")[1] for line in err.splitlines()]
    assert warnings == [f"{path}:{line}: value: '1' {CHANGES_NOTHING}" for line in range(2, 12)] + [
        f"{path}: 12 rejected rows in all; only the first 10 are shown (--verbose shows all): corporate actions are "
        "not a trade batch, their rejects are not stored"]


def test_verbose_shows_every_reject_of_an_actions_file(seeded_engine, database_url, tmp_path, capsys):
    path = write_csv(tmp_path, "corporate_actions.csv", [HEADER] + [f"AAPL,2025-06-{day:02d},SPLIT,1"
                                                                    for day in range(1, 13)])
    assert load_transactions.main(["--database-url", database_url, "--verbose", path]) == 0
    shown = [line for line in capsys.readouterr().err.splitlines() if f"{path}:" in line and CHANGES_NOTHING in line]
    assert [line.split(f"{path}:")[1].split(":")[0] for line in shown] == [str(line) for line in range(2, 14)]


# ---------------------------------------------------------------------------------------------- repeats in a file

def test_a_repeat_in_the_file_counts_once_or_is_rejected_naming_the_earlier_line(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "corporate_actions.csv", [
        HEADER,
        "AAPL,2020-08-31,SPLIT,4",
        "aapl,2020-08-31,split,4.000000",  # the same action: counted once
        "AAPL,2020-08-31,SPLIT,2",  # another value: rejected
        "AAPL,2020-08-31,DIVIDEND,0.2",  # another action on the same day: its own row
        "AAPL,2020-08-31,SPLIT,4",
    ])

    summary = load(seeded_engine, path)

    assert summary.rejects == [(4, "value: 2 for AAPL 2020-08-31 SPLIT conflicts with line 2, which gives 4")]
    assert summary.line() == "corporate_actions.csv: 3 actions read, 2 new, 0 already loaded, 1 rejected"
    assert [row[:4] for row in stored_actions(seeded_engine)] == [
        ("AAPL", date(2020, 8, 31), "DIVIDEND", Decimal("0.2")),
        ("AAPL", date(2020, 8, 31), "SPLIT", Decimal("4")),
    ]


def test_a_rejected_row_does_not_hold_its_key_for_a_later_good_row(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "corporate_actions.csv", [HEADER, "AAPL,2020-08-31,SPLIT,1", "AAPL,2020-08-31,SPLIT,4"])

    summary = load(seeded_engine, path)

    assert summary.rejects == [(2, f"value: '1' {CHANGES_NOTHING}")]
    assert [row[3] for row in stored_actions(seeded_engine)] == [Decimal("4")]


# ---------------------------------------------------------------------------------------------- idempotence, refusal

def test_loading_again_changes_nothing(any_engine, tmp_path):
    path = write_csv(tmp_path, "corporate_actions.csv", EXAMPLE_LINES)
    load(any_engine, path)
    first, first_times = stored_actions(any_engine), loaded_times(any_engine)
    same_values = write_csv(tmp_path, "again.csv", [HEADER, "aapl,2020-08-31,split,4.000000",
                                                    "TSLA,2025-03-10,SPLIT,.1", "MSFT,2025-02-20,DIVIDEND,0.830"])

    again = load(any_engine, path)
    written_otherwise = load(any_engine, same_values)

    assert again.line() == "corporate_actions.csv: 3 actions read, 0 new, 3 already loaded, 0 rejected"
    assert written_otherwise.line() == "again.csv: 3 actions read, 0 new, 3 already loaded, 0 rejected"
    assert stored_actions(any_engine) == first
    assert loaded_times(any_engine) == first_times


def test_a_changed_value_refuses_the_whole_file_with_exit_2(seeded_engine, database_url, tmp_path, capsys):
    write_csv(tmp_path, "first.csv", EXAMPLE_LINES)
    assert load_transactions.main(["--database-url", database_url, str(tmp_path / "first.csv")]) == 0
    capsys.readouterr()
    before = stored_actions(seeded_engine)
    changed = write_csv(tmp_path, "changed.csv", [
        HEADER,
        "NFLX,2025-05-02,DIVIDEND,0.5",  # new, but the file is refused: not stored
        "AAPL,2020-08-31,SPLIT,4",  # already loaded
        "NOPE,2025-06-02,SPLIT,2",  # a reject does not save the file
        "MSFT,2025-02-20,DIVIDEND,0.84",  # the change
        "TSLA,2025-03-10,SPLIT,0.2",  # a second change: the first one is named
    ])

    code = load_transactions.main(["--database-url", database_url, changed])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: load_transactions: {changed}: line 5: MSFT 2025-02-20 DIVIDEND is stored with value 0.83, the file "
        f"gives 0.84; {REFUSAL}")
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.splitlines()[-1]]
    assert stored_actions(seeded_engine) == before


def stored_meanwhile(monkeypatch):
    """Make the next load read no stored action before it inserts, as if another loader stored them meanwhile."""
    real_stored_values, reads = corporate_actions.stored_values, []

    def not_yet_seen_first(connection):
        reads.append(connection)
        return {} if len(reads) == 1 else real_stored_values(connection)

    monkeypatch.setattr(corporate_actions, "stored_values", not_yet_seen_first)


def test_a_conflict_found_after_inserting_rolls_back_the_new_rows(any_engine, tmp_path, monkeypatch):
    """Another loader stored the action between this load's read and its insert: the insert does not fail on the
    primary key, and the values are compared again."""
    load(any_engine, write_csv(tmp_path, "first.csv", [HEADER, "MSFT,2025-02-20,DIVIDEND,0.83"]))
    stored_meanwhile(monkeypatch)
    path = write_csv(tmp_path, "second.csv", [HEADER, "AAPL,2020-08-31,SPLIT,4", "MSFT,2025-02-20,DIVIDEND,0.84"])

    with pytest.raises(corporate_actions.cli.InputError) as refused:
        load(any_engine, path)

    assert str(refused.value) == (f"{path}: line 3: MSFT 2025-02-20 DIVIDEND is stored with value 0.83, the file "
                                  f"gives 0.84; {REFUSAL}")
    assert [row[:4] for row in stored_actions(any_engine)] == [("MSFT", date(2025, 2, 20), "DIVIDEND",
                                                                  Decimal("0.83"))]


def test_an_action_stored_meanwhile_with_the_same_value_is_absorbed(any_engine, tmp_path, monkeypatch):
    load(any_engine, write_csv(tmp_path, "first.csv", [HEADER, "MSFT,2025-02-20,DIVIDEND,0.83"]))
    first_times = loaded_times(any_engine)
    stored_meanwhile(monkeypatch)

    summary = load(any_engine, write_csv(tmp_path, "second.csv", [HEADER, "MSFT,2025-02-20,DIVIDEND,0.830000"]))

    assert summary.rows_read == 1
    assert [row[:4] for row in stored_actions(any_engine)] == [("MSFT", date(2025, 2, 20), "DIVIDEND",
                                                                  Decimal("0.83"))]
    assert loaded_times(any_engine) == first_times


@pytest.mark.parametrize("server", ["mariadb", "postgres"])
def test_two_loaders_at_once_store_each_action_once(server, request, tmp_path, monkeypatch):
    """Both loaders read the table before either inserts (a barrier holds them): the second insert waits for the
    first loader's commit, then meets its rows instead of failing on the primary key."""
    engine = db_config.get_engine(request.getfixturevalue(f"{server}_url"))
    seed_investors.seed_reference_data(engine)
    both_read, real_stored_values, passed = threading.Barrier(2, timeout=30), corporate_actions.stored_values, set()

    def read_together(connection):
        values = real_stored_values(connection)
        if threading.get_ident() not in passed:
            passed.add(threading.get_ident())
            both_read.wait()
        return values

    monkeypatch.setattr(corporate_actions, "stored_values", read_together)
    path = write_csv(tmp_path, "corporate_actions.csv", EXAMPLE_LINES)
    outcomes = []
    loaders = [threading.Thread(target=lambda: outcomes.append(load(engine, path).line())) for _ in range(2)]
    try:
        for loader in loaders:
            loader.start()
        for loader in loaders:
            loader.join(60)
        assert outcomes == ["corporate_actions.csv: 3 actions read, 3 new, 0 already loaded, 0 rejected"] * 2
        assert [row[:4] for row in stored_actions(engine)] == [
            ("AAPL", date(2020, 8, 31), "SPLIT", Decimal("4")),
            ("MSFT", date(2025, 2, 20), "DIVIDEND", Decimal("0.83")),
            ("TSLA", date(2025, 3, 10), "SPLIT", Decimal("0.1")),
        ]
    finally:
        engine.dispose()


def test_a_transient_database_error_is_tried_again(seeded_engine, tmp_path, monkeypatch):
    real_store = corporate_actions.store_actions
    attempts = []

    def locked_once(connection, path, offered):
        attempts.append(path)
        if len(attempts) == 1:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_store(connection, path, offered)

    monkeypatch.setattr(corporate_actions, "store_actions", locked_once)
    monkeypatch.setattr(db_retry.time, "sleep", lambda seconds: None)

    summary = load(seeded_engine, write_csv(tmp_path, "corporate_actions.csv", EXAMPLE_LINES))

    assert len(attempts) == 2
    assert summary.line() == "corporate_actions.csv: 3 actions read, 3 new, 0 already loaded, 0 rejected"


def test_due_actions_are_logged(seeded_engine, tmp_path, caplog):
    today = date.today()
    path = write_csv(tmp_path, "corporate_actions.csv", [
        HEADER, f"AAPL,{today},SPLIT,4", f"MSFT,{today - timedelta(days=30)},DIVIDEND,0.83",
        f"TSLA,{today + timedelta(days=1)},SPLIT,3"])

    with caplog.at_level(logging.INFO, logger="corporate_actions"):
        load(seeded_engine, path)

    assert caplog.messages == [f"{path}: 2 of 3 new actions have an ex_date on or before today; the next "
                               "update_portfolio.py applies them, replaying the positions that traded after them"]


# ------------------------------------------------------------------------------------------ through load_transactions

def test_a_file_beside_a_trade_file_loads_after_the_prices_and_before_the_trades(
        seeded_engine, database_url, tmp_path, capsys):
    trades = write_csv(tmp_path, "trades.csv", [TRADE_HEADER, "t1,1001,AAPL,BUY,10,190.00,2025-01-02 10:00:00"])
    write_csv(tmp_path, "market_prices.csv", ["stock_symbol,price_date,close_price", "AAPL,2025-01-02,190.00"])
    write_csv(tmp_path, "corporate_actions.csv", EXAMPLE_LINES)
    argv = ["--database-url", database_url, trades]

    assert load_transactions.main(argv) == 0
    first = capsys.readouterr().out
    assert load_transactions.main(argv) == 0
    second = capsys.readouterr().out

    assert first.splitlines() == [
        "market_prices.csv: 1 daily close read, 1 new, 0 changed, 0 unchanged, 0 rejected",
        "corporate_actions.csv: 3 actions read, 3 new, 0 already loaded, 0 rejected",
        "trades.csv: 1 read, 1 loaded, 0 duplicates, 0 rejected (batch 1)",
    ]
    assert second.splitlines()[1] == "corporate_actions.csv: 3 actions read, 0 new, 3 already loaded, 0 rejected"
    assert len(stored_actions(seeded_engine)) == 3
    with seeded_engine.connect() as connection:
        assert len(connection.execute(select(transactions.c.txn_ref)).all()) == 1
        assert len(connection.execute(select(market_prices.c.price_date)).all()) == 1


def test_a_refused_file_beside_trades_does_not_stop_the_trades(seeded_engine, database_url, tmp_path, capsys):
    write_csv(tmp_path, "corporate_actions.csv", [HEADER, "MSFT,2025-02-20,DIVIDEND,0.83"])
    trades = write_csv(tmp_path, "trades.csv", [TRADE_HEADER, "t1,1001,AAPL,BUY,10,190.00,2025-01-02 10:00:00"])
    assert load_transactions.main(["--database-url", database_url, trades]) == 0
    capsys.readouterr()
    beside = write_csv(tmp_path, "corporate_actions.csv", [HEADER, "MSFT,2025-02-20,DIVIDEND,0.9"])
    more = write_csv(tmp_path, "more.csv", [TRADE_HEADER, "t2,1001,AAPL,SELL,5,191.00,2025-01-03 10:00:00"])

    code = load_transactions.main(["--database-url", database_url, more])

    out, err = capsys.readouterr()
    assert code == 2
    assert out.splitlines() == ["more.csv: 1 read, 1 loaded, 0 duplicates, 0 rejected (batch 2)"]
    assert err.splitlines() == [
        f"error: load_transactions: {beside}: line 2: MSFT 2025-02-20 DIVIDEND is stored with value 0.83, the file "
        f"gives 0.9; {REFUSAL}"]


def test_a_missing_file_exits_2_with_one_line(database_url, tmp_path, capsys):
    missing = str(tmp_path / "corporate_actions.csv")

    code = load_transactions.main(["--database-url", database_url, missing])

    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"error: load_transactions: {missing}: no such file"]


def test_a_file_without_the_value_column_exits_2_with_one_line(seeded_engine, database_url, tmp_path, capsys):
    path = write_csv(tmp_path, "corporate_actions.csv", ["stock_symbol,ex_date,action", "AAPL,2020-08-31,SPLIT"])

    code = load_transactions.main(["--database-url", database_url, path])

    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err == (f"error: load_transactions: {path}: line 1: header lacks required column(s) value; expected "
                   "stock_symbol,ex_date,action,value (a corporate actions file), found stock_symbol,ex_date,action\n")
    assert stored_actions(seeded_engine) == []


def test_a_file_of_another_kind_is_refused_by_the_loader_of_actions(seeded_engine, tmp_path):
    path = write_csv(tmp_path, "market_prices.csv", ["stock_symbol,price_date,close_price", "AAPL,2025-01-02,1"])

    with pytest.raises(corporate_actions.cli.InputError) as refused:
        corporate_actions.load_actions_file(seeded_engine, path)

    assert str(refused.value) == f"{path}: header is not stock_symbol,ex_date,action,value"


def test_an_actions_file_named_on_the_command_line_loads_alone(seeded_engine, database_url, tmp_path, capsys):
    """The files beside are loaded with a trade file only: a named actions file does not pull in the prices."""
    write_csv(tmp_path, "market_prices.csv", ["stock_symbol,price_date,close_price", "AAPL,2020-08-28,499.23"])
    path = write_csv(tmp_path, "x_actions.csv", [HEADER, "AAPL,2020-08-31,SPLIT,4"])
    assert load_transactions.plan_files([path]) == [path]

    assert load_transactions.main(["--database-url", database_url, path]) == 0

    assert capsys.readouterr().out == "x_actions.csv: 1 action read, 1 new, 0 already loaded, 0 rejected\n"
    with seeded_engine.connect() as connection:
        assert connection.execute(select(market_prices)).all() == []


def test_a_fee_column_under_another_name_is_named_in_a_warning(seeded_engine, database_url, tmp_path, capsys):
    path = write_csv(tmp_path, "t.csv", ["txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,commission",
                                         "C1,1001,AAPL,BUY,1,100,2024-06-03 10:00:00,4.95"])
    assert load_transactions.main(["--database-url", database_url, path]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "are not read" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"WARNING load_transactions: {path}: column(s) commission are not read: the fee column must be named fee "
        "(these trades load with fee 0)")


def test_a_split_given_as_a_ratio_is_exact_and_loads_again_as_the_same_action(seeded_engine, database_url, tmp_path,
                                                                              capsys):
    path = write_csv(tmp_path, "corporate_actions.csv",
                     [HEADER, "AAPL,2020-08-31,SPLIT,2:6", "MSFT,2020-09-01,SPLIT,1:4"])
    load(seeded_engine, path)
    with seeded_engine.connect() as connection:
        assert [action.value for action in corporate_actions.read_actions(connection)] == [
            Fraction(1, 3), Fraction(1, 4)]
        stored = connection.execute(select(actions_table.c.value, actions_table.c.ratio).order_by(
            actions_table.c.stock_symbol)).all()
    assert [(Decimal(str(value)), ratio) for value, ratio in stored] == [
        (Decimal("0.333333"), "1:3"), (Decimal("0.25"), None)]
    again = write_csv(tmp_path, "again.csv", [HEADER, "AAPL,2020-08-31,SPLIT,1:3", "MSFT,2020-09-01,SPLIT,0.25"])
    assert load(seeded_engine, again).line() == "again.csv: 2 actions read, 0 new, 2 already loaded, 0 rejected"
    changed = write_csv(tmp_path, "changed.csv", [HEADER, "AAPL,2020-08-31,SPLIT,0.333333"])
    assert load_transactions.main(["--database-url", database_url, changed]) == 2
    assert "AAPL 2020-08-31 SPLIT is stored with value 1:3, the file gives 0.333333;" in capsys.readouterr().err


def test_an_ex_date_more_than_a_year_ahead_is_stored_with_a_warning(seeded_engine, database_url, tmp_path, capsys):
    path = write_csv(tmp_path, "corporate_actions.csv", [HEADER, "AAPL,9999-12-31,SPLIT,2", "MSFT,2020-01-06,SPLIT,2"])
    assert load_transactions.main(["--database-url", database_url, path]) == 0
    err = capsys.readouterr().err
    assert (f"{path}: 1 new actions have an ex_date more than a year ahead (the first 9999-12-31): they wait until "
            "that day; if a date is a typo, see docs/corporate-actions.md, Correcting an action") in err
    assert len(stored_actions(seeded_engine)) == 2
