"""update_portfolio.py: the weighted-average-cost engine of docs/portfolio-math.md, incremental and full, and its
alerts.

Every database test runs on SQLite and on a fresh MariaDB database. The numbers are checked against a
brute-force reference written here from docs/portfolio-math.md with exact fractions (not against the code under
test), and
against hand-computed values.
"""
import contextlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import make_url

import closes
import db_config
import dialects
import ledger
import load_transactions
import seed_investors
import update_portfolio
from schema import alerts, investor_risk, portfolios, position_checkpoints

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
CENT = Fraction(1, 200)  # "to the cent": an absolute difference of at most 0.005 currency units


# ---------------------------------------------------------------------------------------------- helpers

def write_trades(directory, name, rows):
    """Write a canonical trades file of (txn_ref, investor_id, symbol, type, quantity, price, txn_time) rows."""
    path = directory / name
    path.write_text("\n".join([HEADER] + [",".join(str(cell) for cell in row) for row in rows]) + "\n",
                    encoding="utf-8")
    return str(path)


def load(engine, path):
    summary = load_transactions.load_file(engine, path)
    assert summary.rows_rejected == 0, summary.sample_rejects
    return summary


def fraction(value):
    """A DECIMAL column value (Decimal, or float on SQLite) as an exact Fraction of its decimal text."""
    return Fraction(str(value)) if not isinstance(value, Decimal) else Fraction(value)


def table_rows(engine, table, exclude=()):
    """Every row of a table as sorted tuples, without the `exclude` columns."""
    columns = [column for column in table.columns if column.name not in exclude]
    with engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(select(*columns)))


def position_rows(engine):
    """portfolios by (investor_id, stock_symbol) as dicts."""
    with engine.connect() as connection:
        return {(row.investor_id, row.stock_symbol): row._asdict()
                for row in connection.execute(select(portfolios))}


def oversell_alerts(engine):
    """(txn_ref, severity, investor_id, stock_symbol) of every open OVERSELL alert (a withdrawn one is resolved)."""
    with engine.connect() as connection:
        return sorted(connection.execute(select(alerts.c.txn_ref, alerts.c.severity, alerts.c.investor_id,
                                                alerts.c.stock_symbol).where(alerts.c.rule == "OVERSELL",
                                                                             alerts.c.status == "OPEN")).all())


def load_later(engine, tmp_path, action, rows):
    """Load a trades file of `rows` with a corporate_actions.csv of one `action` line beside it."""
    later = tmp_path / "later"
    later.mkdir()
    (later / "corporate_actions.csv").write_text(f"stock_symbol,ex_date,action,value\n{action}\n", encoding="utf-8")
    assert load_transactions.load_paths(engine, [write_trades(later, "later.csv", rows)]) == 0


# ---------------------------------------------------------------------------------------------- the reference

@dataclass
class Trade:
    txn_ref: str
    investor_id: int
    stock_symbol: str
    txn_type: str
    quantity: int
    price: Fraction
    txn_time: datetime
    load_sequence: int = 0  # position in load order: files in the order loaded, each in file order


def reference_positions(trades, closes=None):
    """docs/portfolio-math.md by brute force with exact fractions.

    Returns ({(investor, symbol): dict of quantity, cost_basis, realized_pnl, avg_cost, last_price, market_value,
    unrealized_pnl}, set of oversold txn_refs). last_price is the symbol's close in `closes` (the latest close on
    or before today), else the price of its latest trade.
    """
    ordered = sorted(trades, key=lambda t: (t.txn_time, t.load_sequence))
    state, oversold, last_price = {}, set(), {}
    for trade in ordered:
        last_price[trade.stock_symbol] = trade.price  # the latest trade in the symbol, of any investor, any outcome
        quantity, cost, realized = state.get((trade.investor_id, trade.stock_symbol), (0, Fraction(0), Fraction(0)))
        if trade.txn_type == "BUY":
            quantity, cost = quantity + trade.quantity, cost + trade.quantity * trade.price
        elif trade.quantity > quantity:
            oversold.add(trade.txn_ref)
        else:
            avg_cost = cost / quantity
            realized += trade.quantity * (trade.price - avg_cost)
            quantity -= trade.quantity
            cost = Fraction(0) if quantity == 0 else cost - trade.quantity * avg_cost
        state[(trade.investor_id, trade.stock_symbol)] = (quantity, cost, realized)
    last_price.update(closes or {})
    expected = {}
    for (investor_id, symbol), (quantity, cost, realized) in state.items():
        market_value = quantity * last_price[symbol]
        expected[(investor_id, symbol)] = {
            "quantity": quantity, "cost_basis": cost, "realized_pnl": realized,
            "avg_cost": cost / quantity if quantity else Fraction(0), "last_price": last_price[symbol],
            "market_value": market_value, "unrealized_pnl": market_value - cost,
        }
    return expected, oversold


def assert_matches_reference(engine, trades, closes=None):
    """portfolios and OVERSELL alerts equal the reference over `trades` (quantity exact, money to the cent)."""
    expected, oversold = reference_positions(trades, closes)
    stored = position_rows(engine)
    assert set(stored) == set(expected)
    for key, want in expected.items():
        row = stored[key]
        assert row["quantity"] == want["quantity"], key
        for column in ("cost_basis", "realized_pnl", "avg_cost", "last_price", "market_value", "unrealized_pnl"):
            assert abs(fraction(row[column]) - want[column]) <= CENT, (key, column, row[column], float(want[column]))
    found = oversell_alerts(engine)
    assert {ref for ref, *_ in found} == oversold
    assert len(found) == len(oversold)  # one alert per oversold trade
    assert {severity for _, severity, *_ in found} <= {"HIGH"}


# ---------------------------------------------------------------------------------------------- fresh databases

@contextlib.contextmanager
def fresh_engine(database_url):
    """A seeded engine on a brand-new database of the same kind as `database_url`, dropped afterwards."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        directory = tempfile.mkdtemp(prefix="etl_hyp_")
        engine = db_config.get_engine(f"sqlite:///{directory}/hyp.db")
        cleanup = lambda: shutil.rmtree(directory, ignore_errors=True)  # noqa: E731
    else:
        name = f"etl_hyp_{uuid.uuid4().hex[:10]}"
        maintenance_database, create = dialects.database_creation(url.get_backend_name())
        server = create_engine(url.set(database=maintenance_database), isolation_level="AUTOCOMMIT")
        with server.connect() as connection:
            connection.execute(text(create.format(name=name)))
        engine = db_config.get_engine(url.set(database=name).render_as_string(hide_password=False))

        def cleanup():
            force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
            with server.connect() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
            server.dispose()
    try:
        seed_investors.seed_reference_data(engine, investor_count=5)
        yield engine
    finally:
        engine.dispose()
        cleanup()


# ---------------------------------------------------------------------------------------------- 1. property test

POSITION_POOL = [(investor, symbol) for investor in (1001, 1002, 1003) for symbol in ("AAPL", "TSLA")]
BASE_TIME = datetime(2024, 3, 4, 9, 30, 0)
# What the loader accepts (validation): a price below 10**9 with at most 4 decimals, and a trade's quantity ×
# price below 10**12. Prices are drawn in ten-thousandths of a currency unit.
MAX_NOTIONAL_UNITS = 10**16  # 10**12 currency units, exclusive
MAX_QUANTITY = 2**31 - 1
# (largest price in ten-thousandths, largest BUY quantity): the whole accepted range on MariaDB, which stores
# exact decimals; on SQLite, which stores 8-byte floats, the range where every amount stays below 10**13 (exact
# to the cent there, as the README says): 30 trades of at most 10**6 shares at 100,000.0000.
DRAWN_RANGES = {"exact": (10**13 - 1, MAX_QUANTITY), "sqlite": (10**9, 10**6)}


def log_uniform(most):
    """Integers from 1 to `most`, log-uniform-ish: a number of digits, then digits of that length."""
    return st.integers(1, len(str(most))).flatmap(
        lambda digits: st.integers(10 ** (digits - 1), min(10 ** digits - 1, most)))


def price_units(most, quantity=1):
    """A price in ten-thousandths from 0.0001 up to `most` with quantity × price below 10**12."""
    return log_uniform(min(most, (MAX_NOTIONAL_UNITS - 1) // quantity))


@st.composite
def trade_scenarios(draw, most_price_units, most_buy_quantity):
    """Trades of a few positions in time order (with ties), split over files, with a load order and updates."""
    keys = draw(st.lists(st.sampled_from(POSITION_POOL), min_size=1, max_size=4, unique=True))
    count = draw(st.integers(1, 30))
    slot, holdings, trades = 0, {}, []
    for number in range(count):
        slot += draw(st.sampled_from([0, 0, 1, 1, 2, 30]))  # 0: a same-timestamp tie
        investor_id, symbol = draw(st.sampled_from(keys))
        held = holdings.get((investor_id, symbol), 0)
        kind = draw(st.sampled_from(["BUY", "BUY", "SELL_PART", "SELL_ALL", "SELL_MORE"]))
        if kind == "BUY" or (held == 0 and kind != "SELL_MORE"):  # the price first, then a quantity it allows
            ten_thousandths = draw(price_units(most_price_units))
            txn_type = "BUY"
            quantity = draw(log_uniform(min(most_buy_quantity, (MAX_NOTIONAL_UNITS - 1) // ten_thousandths)))
        else:  # the quantity first, then a price it allows; a trade's quantity fits an INT
            if kind == "SELL_ALL" and held <= MAX_QUANTITY:
                txn_type, quantity = "SELL", held  # sell to flat (if the replay order matches generation order)
            elif kind != "SELL_MORE" or held + 50 > MAX_QUANTITY:
                txn_type, quantity = "SELL", draw(st.integers(1, min(held, MAX_QUANTITY)))
            else:
                txn_type, quantity = "SELL", held + draw(st.integers(1, 50))  # an oversell
            ten_thousandths = draw(price_units(most_price_units, quantity))
        if txn_type == "BUY":
            holdings[(investor_id, symbol)] = held + quantity
        elif quantity <= held:
            holdings[(investor_id, symbol)] = held - quantity
        trades.append(Trade(f"H{number:03d}", investor_id, symbol, txn_type, quantity,
                            Fraction(ten_thousandths, 10_000), BASE_TIME + timedelta(minutes=slot)))
    file_count = draw(st.integers(1, 4))
    files = [[] for _ in range(file_count)]
    for trade in trades:
        files[draw(st.integers(0, file_count - 1))].append(trade)
    files = [draw(st.permutations(content)) for content in files if content]  # a file need not be in time order
    load_order = draw(st.permutations(range(len(files))))
    update_after = draw(st.lists(st.booleans(), min_size=len(files), max_size=len(files)))
    # sometimes a daily close (on or before today) prices a symbol instead of its latest trade
    closes = draw(st.dictionaries(st.sampled_from(["AAPL", "TSLA"]),
                                  price_units(most_price_units).map(lambda n: Fraction(n, 10_000))))
    return files, load_order, update_after, closes


def price_text(price):
    """A price with at most 4 decimals as plain text with exactly 4 ('12.3400')."""
    ten_thousandths = int(price * 10_000)
    return f"{ten_thousandths // 10_000}.{ten_thousandths % 10_000:04d}"


@pytest.mark.slow_on_servers
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_replay_matches_brute_force_reference(database_url, data):
    """Random trade sequences over shuffled files, updated at random points, equal the docs/portfolio-math.md
    reference to the cent, prices and quantities over the range the database keeps exactly; the incremental
    result equals a full replay."""
    ranges = DRAWN_RANGES["sqlite" if database_url.startswith("sqlite") else "exact"]
    files, load_order, update_after, closes = data.draw(trade_scenarios(*ranges))
    with fresh_engine(database_url) as engine, tempfile.TemporaryDirectory() as directory:
        if closes:
            prices = Path(directory) / "closes.csv"
            prices.write_text("stock_symbol,price_date,close_price\n" + "".join(
                f"{symbol},2024-01-02,{price_text(close)}\n" for symbol, close in closes.items()), encoding="utf-8")
            assert load_transactions.load_prices_file(engine, str(prices)).rows_new == len(closes)
        loaded, sequence = [], 0
        for step, file_index in enumerate(load_order):
            rows = [(t.txn_ref, t.investor_id, t.stock_symbol, t.txn_type, t.quantity, price_text(t.price),
                     t.txn_time.strftime("%Y-%m-%d %H:%M:%S")) for t in files[file_index]]
            path = write_trades(Path(directory), f"part{file_index}.csv", rows)
            assert load(engine, path).rows_loaded == len(rows)
            for trade in files[file_index]:
                sequence += 1
                trade.load_sequence = sequence
                loaded.append(trade)
            if update_after[step]:
                update_portfolio.update_portfolios(engine)
                assert_matches_reference(engine, loaded, closes)
        update_portfolio.update_portfolios(engine)
        assert_matches_reference(engine, loaded, closes)

        incremental = table_rows(engine, portfolios, exclude={"updated_at"})
        incremental_risk = table_rows(engine, investor_risk, exclude={"updated_at"})
        incremental_alerts = sorted(oversell_alerts(engine))
        update_portfolio.update_portfolios(engine, full=True)
        assert table_rows(engine, portfolios, exclude={"updated_at"}) == incremental
        assert table_rows(engine, investor_risk, exclude={"updated_at"}) == incremental_risk
        assert sorted(oversell_alerts(engine)) == incremental_alerts


def test_reference_itself_on_a_known_case():
    """The reference is right on a case small enough to check by eye (oversell, flat, tie by load order)."""
    t0 = BASE_TIME
    trades = [
        Trade("a", 1001, "AAPL", "BUY", 10, Fraction(10), t0, 1),
        Trade("b", 1001, "AAPL", "SELL", 20, Fraction(11), t0 + timedelta(minutes=1), 2),  # oversell
        Trade("c", 1001, "AAPL", "SELL", 10, Fraction(12), t0 + timedelta(minutes=2), 4),  # flat: after d
        Trade("d", 1001, "AAPL", "BUY", 10, Fraction(14), t0 + timedelta(minutes=2), 3),
    ]
    expected, oversold = reference_positions(trades)
    # BUY 10 @ 10; BUY 10 @ 14 -> 20 held, cost 240, avg 12; SELL 10 @ 12 -> realized 0, 10 held, cost 120
    assert expected[(1001, "AAPL")]["quantity"] == 10
    assert expected[(1001, "AAPL")]["cost_basis"] == 120
    assert expected[(1001, "AAPL")]["realized_pnl"] == 0
    assert expected[(1001, "AAPL")]["last_price"] == 12  # the latest trade: c (load sequence 4)
    assert oversold == {"b"}


# ---------------------------------------------------------------------------------------------- 2. by hand

HAND_ROWS = [
    ("HC-1", 1001, "AAPL", "BUY", 100, "10.00", "2024-05-01 10:00:00"),
    ("HC-2", 1001, "AAPL", "BUY", 50, "13.50", "2024-05-01 11:00:00"),
    ("HC-3", 1001, "AAPL", "SELL", 30, "15.00", "2024-05-02 10:00:00"),
    ("HC-4", 1001, "AAPL", "SELL", 500, "20.00", "2024-05-02 11:00:00"),  # oversell: 120 held
    ("HC-5", 1001, "AAPL", "SELL", 120, "9.00", "2024-05-03 10:00:00"),  # to flat
    ("HC-6", 1001, "AAPL", "BUY", 10, "20.00", "2024-05-06 10:00:00"),
    ("HC-7", 1001, "AAPL", "BUY", 5, "21.00", "2024-05-06 11:00:00"),
    ("HC-8", 1001, "AAPL", "SELL", 3, "25.00", "2024-05-07 10:00:00"),
    ("HC-9", 1002, "AAPL", "BUY", 5, "22.00", "2024-05-08 10:00:00"),  # another investor: the latest AAPL trade
]


def test_hand_computed_position(seeded_engine, tmp_path):
    """Quantity, average cost, cost basis, P&L and the OVERSELL alert of a small file, computed by hand."""
    load(seeded_engine, write_trades(tmp_path, "hand.csv", HAND_ROWS))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert (summary.trades_applied, summary.oversells, summary.positions_changed) == (9, 1, 2)
    position = position_rows(seeded_engine)[(1001, "AAPL")]
    # HC-1 BUY 100 @ 10     -> 100 held, cost 1000
    # HC-2 BUY 50 @ 13.50   -> 150 held, cost 1000 + 675 = 1675, avg 11.1666...
    # HC-3 SELL 30 @ 15     -> realized 30 * (15 - 11.1666...) = 450 - 335 = 115; 120 held, cost 1675 - 335 = 1340
    # HC-4 SELL 500 @ 20    -> oversell (120 held): position unchanged
    # HC-5 SELL 120 @ 9     -> realized 115 + 120 * (9 - 11.1666...) = 115 + 1080 - 1340 = -145; flat, cost 0
    # HC-6 BUY 10 @ 20      -> 10 held, cost 200
    # HC-7 BUY 5 @ 21       -> 15 held, cost 305, avg 20.3333...
    # HC-8 SELL 3 @ 25      -> realized -145 + 3 * (25 - 20.3333...) = -145 + 75 - 61 = -131; 12 held, cost 244
    # last price: HC-9 (investor 1002) at 22 is the latest AAPL trade -> market value 12 * 22 = 264, unrealized 20
    assert position["quantity"] == 12
    assert Decimal(str(position["avg_cost"])) == Decimal("20.3333")
    assert abs(Decimal(str(position["cost_basis"])) - Decimal("244")) <= Decimal("0.005")
    assert abs(Decimal(str(position["realized_pnl"])) - Decimal("-131")) <= Decimal("0.005")
    assert Decimal(str(position["last_price"])) == Decimal("22")
    assert abs(Decimal(str(position["market_value"])) - Decimal("264")) <= Decimal("0.005")
    assert abs(Decimal(str(position["unrealized_pnl"])) - Decimal("20")) <= Decimal("0.005")
    other = position_rows(seeded_engine)[(1002, "AAPL")]
    assert (other["quantity"], Decimal(str(other["cost_basis"])), Decimal(str(other["unrealized_pnl"]))) == (
        5, Decimal("110"), Decimal("0"))
    assert oversell_alerts(seeded_engine) == [("HC-4", "HIGH", 1001, "AAPL")]


def test_update_twice_changes_nothing(seeded_engine, tmp_path):
    """A second update without new trades writes nothing: no duplicate alerts, every row as it was."""
    load(seeded_engine, write_trades(tmp_path, "hand.csv", HAND_ROWS))
    update_portfolio.update_portfolios(seeded_engine)
    before = {table.name: table_rows(seeded_engine, table) for table in (portfolios, investor_risk, alerts)}
    second = update_portfolio.update_portfolios(seeded_engine)
    assert (second.trades_applied, second.alerts_raised, second.positions_changed) == (0, 0, 0)
    after = {table.name: table_rows(seeded_engine, table) for table in (portfolios, investor_risk, alerts)}
    assert after == before
    assert len([row for row in after["alerts"] if row[2] == "OVERSELL"]) == 1


def test_loading_the_same_file_again_changes_nothing(seeded_engine, tmp_path):
    """Re-loading a file (skipped by its SHA-256) and updating leaves the results as they were."""
    path = write_trades(tmp_path, "hand.csv", HAND_ROWS)
    load(seeded_engine, path)
    update_portfolio.update_portfolios(seeded_engine)
    before = table_rows(seeded_engine, portfolios)
    assert load_transactions.load_file(seeded_engine, path).skipped_batch is not None
    update_portfolio.update_portfolios(seeded_engine)
    assert table_rows(seeded_engine, portfolios) == before


# ---------------------------------------------------------------------------------------------- 3. late trades

def test_late_trade_replays_only_its_position(seeded_engine, tmp_path):
    """A trade older than its position's last trade replays that position alone, to the full-replay result."""
    load(seeded_engine, write_trades(tmp_path, "first.csv", [
        ("LT-1", 1001, "AAPL", "BUY", 10, "100.00", "2024-06-03 10:00:00"),
        ("LT-2", 1001, "AAPL", "SELL", 15, "110.00", "2024-06-04 10:00:00"),  # oversell now: only 10 held
        ("LT-3", 1002, "MSFT", "BUY", 20, "300.00", "2024-06-03 10:00:00"),
        ("LT-4", 1003, "TSLA", "BUY", 7, "200.00", "2024-06-03 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    assert [ref for ref, *_ in oversell_alerts(seeded_engine)] == ["LT-2"]
    untouched_before = position_rows(seeded_engine)[(1003, "TSLA")]

    load(seeded_engine, write_trades(tmp_path, "late.csv", [
        ("LT-5", 1001, "AAPL", "BUY", 5, "90.00", "2024-06-03 12:00:00"),  # late: before LT-2
        ("LT-6", 1002, "MSFT", "SELL", 5, "310.00", "2024-06-05 10:00:00"),  # newer: simply follows
        ("LT-7", 1004, "GOOG", "BUY", 3, "150.00", "2024-06-01 10:00:00"),  # a new position
    ]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.positions_replayed == 1
    assert summary.positions_changed == 3
    assert summary.alerts_withdrawn == 1 and "1 OVERSELL alert withdrawn (no longer oversold)" in summary.line()

    aapl = position_rows(seeded_engine)[(1001, "AAPL")]
    # BUY 10 @ 100, BUY 5 @ 90 -> 15 held, cost 1450, avg 96.6667; SELL 15 @ 110 -> realized 1650 - 1450 = 200, flat
    assert (aapl["quantity"], fraction(aapl["cost_basis"]), fraction(aapl["realized_pnl"])) == (0, 0, 200)
    assert oversell_alerts(seeded_engine) == []  # LT-2 is no longer an oversell: its alert is withdrawn
    with seeded_engine.connect() as connection:
        withdrawn = connection.execute(select(alerts.c.alert_key, alerts.c.alert_id, alerts.c.status,
                                              alerts.c.resolved_by, alerts.c.resolution_note).where(
            alerts.c.txn_ref == "LT-2")).one()
    assert withdrawn.alert_key == f"{withdrawn.alert_id}#OVERSELL:LT-2" and withdrawn.status == "RESOLVED"
    assert withdrawn.resolved_by == "update_portfolio" and "no longer oversells" in withdrawn.resolution_note
    assert position_rows(seeded_engine)[(1003, "TSLA")] == untouched_before  # not rewritten, updated_at included

    incremental = table_rows(seeded_engine, portfolios, exclude={"updated_at"})
    incremental_risk = table_rows(seeded_engine, investor_risk, exclude={"updated_at"})
    full = update_portfolio.update_portfolios(seeded_engine, full=True)
    assert full.trades_applied == 7
    assert table_rows(seeded_engine, portfolios, exclude={"updated_at"}) == incremental
    assert table_rows(seeded_engine, investor_risk, exclude={"updated_at"}) == incremental_risk


def test_late_sell_turns_a_later_sell_into_an_oversell(seeded_engine, tmp_path):
    """A late SELL can make a SELL applied earlier an oversell: the replay raises its alert and skips it."""
    load(seeded_engine, write_trades(tmp_path, "first.csv", [
        ("LS-1", 1001, "NFLX", "BUY", 10, "600.00", "2024-06-03 10:00:00"),
        ("LS-2", 1001, "NFLX", "SELL", 8, "610.00", "2024-06-05 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    load(seeded_engine, write_trades(tmp_path, "late.csv", [
        ("LS-3", 1001, "NFLX", "SELL", 5, "620.00", "2024-06-04 10:00:00"),  # late: before LS-2
    ]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.positions_replayed == 1
    position = position_rows(seeded_engine)[(1001, "NFLX")]
    # BUY 10 @ 600; SELL 5 @ 620 -> realized 100, 5 held, cost 3000; SELL 8 > 5 held -> oversell, skipped
    assert (position["quantity"], fraction(position["cost_basis"]), fraction(position["realized_pnl"])) == (
        5, 3000, 100)
    assert oversell_alerts(seeded_engine) == [("LS-2", "HIGH", 1001, "NFLX")]


def test_a_due_action_replays_without_the_new_trades_so_a_late_buy_leaves_no_false_oversell(seeded_engine,
                                                                                              tmp_path):
    """The due actions are applied before the new trades: a position replayed for a dividend must not meet a new
    SELL before the new, late BUY before it (an OVERSELL alert was raised and withdrawn in the same run)."""
    load(seeded_engine, write_trades(tmp_path, "first.csv", [
        ("DA-1", 1001, "JNJ", "BUY", 10, "60.00", "2026-03-02 10:00:00"),
        ("DA-2", 1001, "JNJ", "BUY", 1, "60.00", "2026-03-17 10:00:00"),
        ("DA-3", 1001, "JNJ", "BUY", 1, "60.00", "2026-04-06 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    load_later(seeded_engine, tmp_path, "JNJ,2026-03-24,DIVIDEND,0.5", [
        ("DA-4", 1001, "JNJ", "BUY", 20, "60.00", "2026-03-10 10:00:00"),  # late: before DA-2
        ("DA-5", 1001, "JNJ", "SELL", 25, "61.00", "2026-03-31 10:00:00"),  # 31 held by then
    ])

    summary = update_portfolio.update_portfolios(seeded_engine)

    assert (summary.oversells, summary.alerts_raised, summary.alerts_withdrawn) == (0, 0, 0)
    with seeded_engine.connect() as connection:
        assert connection.execute(select(alerts.c.alert_key).where(alerts.c.rule == "OVERSELL")).all() == []
    incremental = position_rows(seeded_engine)[(1001, "JNJ")]
    assert (incremental["quantity"], fraction(incremental["dividend_income"])) == (7, Fraction(31, 2))
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert position_rows(seeded_engine)[(1001, "JNJ")] | {"updated_at": None} == incremental | {"updated_at": None}


def test_a_late_split_and_a_late_buy_in_one_run_leave_no_false_oversell(seeded_engine, tmp_path):
    """The due split replays the applied trades alone (1 share left after it: SELL 2 oversells there); the new, late
    BUY before the SELL covers it. One alert sync after both steps: nothing raised, nothing withdrawn."""
    load(seeded_engine, write_trades(tmp_path, "first.csv", [
        ("LS-1", 1008, "PFE", "BUY", 10, "25.00", "2025-12-01 10:00:00"),
        ("LS-2", 1008, "PFE", "SELL", 2, "250.00", "2025-12-20 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    load_later(seeded_engine, tmp_path, "PFE,2025-12-12,SPLIT,0.1", [
        ("LS-3", 1008, "PFE", "BUY", 10, "250.00", "2025-12-15 10:00:00"),  # late: before LS-2
    ])

    summary = update_portfolio.update_portfolios(seeded_engine)

    assert (summary.oversells, summary.alerts_raised, summary.alerts_withdrawn) == (0, 0, 0)
    with seeded_engine.connect() as connection:
        assert connection.execute(select(alerts.c.alert_key).where(alerts.c.rule == "OVERSELL")).all() == []
    assert position_rows(seeded_engine)[(1008, "PFE")]["quantity"] == 9  # 10 -> 1 at the split, +10, -2


def test_an_oversell_a_due_action_finds_is_raised_when_the_new_trades_do_not_replay_it(seeded_engine, tmp_path):
    """A reverse split due now makes an applied SELL oversell; the new trade comes after it (no replay of the new
    trades): the alert is raised once, from the due actions' replay."""
    load(seeded_engine, write_trades(tmp_path, "first.csv", [
        ("RS-1", 1008, "PFE", "BUY", 10, "25.00", "2025-12-01 10:00:00"),
        ("RS-2", 1008, "PFE", "SELL", 5, "250.00", "2025-12-20 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    load_later(seeded_engine, tmp_path, "PFE,2025-12-12,SPLIT,0.1", [
        ("RS-3", 1008, "PFE", "BUY", 3, "250.00", "2025-12-22 10:00:00"),  # after RS-2: follows
    ])

    summary = update_portfolio.update_portfolios(seeded_engine)

    assert (summary.oversells, summary.alerts_raised, summary.alerts_withdrawn) == (1, 1, 0)
    assert oversell_alerts(seeded_engine) == [("RS-2", "HIGH", 1008, "PFE")]
    incremental = position_rows(seeded_engine)[(1008, "PFE")]
    assert incremental["quantity"] == 4  # 10 -> 1 at the split, SELL 5 skipped, +3
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert oversell_alerts(seeded_engine) == [("RS-2", "HIGH", 1008, "PFE")]


def test_same_time_in_a_later_file_keeps_load_order(seeded_engine, tmp_path):
    """Trades of one position with the same txn_time in two files apply in load order (docs/portfolio-math.md)."""
    load(seeded_engine, write_trades(tmp_path, "a.csv", [
        ("ST-1", 1001, "KO", "BUY", 10, "60.00", "2024-06-03 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    load(seeded_engine, write_trades(tmp_path, "b.csv", [
        ("ST-2", 1001, "KO", "SELL", 10, "61.00", "2024-06-03 10:00:00"),  # same second, loaded later: after ST-1
    ]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.positions_replayed == 0
    position = position_rows(seeded_engine)[(1001, "KO")]
    assert (position["quantity"], fraction(position["realized_pnl"])) == (0, 10)
    assert oversell_alerts(seeded_engine) == []


# ---------------------------------------------------------------------------------------------- prices, many batches

def test_last_price_is_latest_close_on_or_before_today(seeded_engine, tmp_path):
    """last_price: the latest close not after `today`, else the latest trade's price (docs/portfolio-math.md)."""
    tomorrow = (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%d")
    prices = tmp_path / "closes.csv"
    prices.write_text("stock_symbol,price_date,close_price\n"
                      f"AAPL,2024-06-03,50.00\nAAPL,2024-06-04,55.00\nAAPL,{tomorrow},999.00\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("LP-1", 1001, "AAPL", "BUY", 10, "40.00", "2024-06-05 10:00:00"),
        ("LP-2", 1001, "MSFT", "BUY", 4, "300.00", "2024-06-05 10:00:00"),
        ("LP-3", 1002, "MSFT", "SELL", 9, "333.00", "2024-06-06 10:00:00"),  # an oversell still sets the price
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    rows = position_rows(seeded_engine)
    # AAPL: close of 2024-06-04 (the future close is ignored): 10 * 55 = 550, unrealized 550 - 400 = 150
    assert (fraction(rows[(1001, "AAPL")]["last_price"]), fraction(rows[(1001, "AAPL")]["market_value"]),
            fraction(rows[(1001, "AAPL")]["unrealized_pnl"])) == (55, 550, 150)
    # MSFT has no close: the latest MSFT trade (LP-3, 333) prices it: 4 * 333 = 1332, unrealized 1332 - 1200 = 132
    assert (fraction(rows[(1001, "MSFT")]["last_price"]), fraction(rows[(1001, "MSFT")]["market_value"]),
            fraction(rows[(1001, "MSFT")]["unrealized_pnl"])) == (333, 1332, 132)
    update_portfolio.update_portfolios(seeded_engine, today=datetime(2024, 6, 3).date())
    assert fraction(position_rows(seeded_engine)[(1001, "AAPL")]["last_price"]) == 50


def test_many_small_batches(seeded_engine, monkeypatch):
    """Feed batches (one trade each) beyond the IN-list size take the range path and give the full result."""
    monkeypatch.setattr(update_portfolio, "ID_SLICE", 2)
    records = [
        ("MB-1", 1001, "JPM", "BUY", 10, "190.00", "2024-06-03 10:00:00"),
        ("MB-2", 1001, "JPM", "SELL", 4, "195.00", "2024-06-03 11:00:00"),
        ("MB-3", 1002, "JPM", "SELL", 1, "196.00", "2024-06-03 12:00:00"),  # oversell
        ("MB-4", 1001, "JPM", "BUY", 2, "180.00", "2024-06-02 10:00:00"),  # late, in the same update
        ("MB-5", 1002, "BAC", "BUY", 100, "37.00", "2024-06-03 10:00:00"),
    ]
    columns = HEADER.split(",")
    for record in records[:2]:
        assert load_transactions.load_records(seeded_engine, [dict(zip(columns, record))]).rows_loaded == 1
    update_portfolio.update_portfolios(seeded_engine)
    for record in records[2:]:
        assert load_transactions.load_records(seeded_engine, [dict(zip(columns, record))]).rows_loaded == 1
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert (summary.batches_applied, summary.trades_applied, summary.positions_replayed) == (3, 3, 1)
    jpm = position_rows(seeded_engine)[(1001, "JPM")]
    # BUY 2 @ 180, BUY 10 @ 190 -> 12 held, cost 2260, avg 188.3333; SELL 4 @ 195 -> realized 780 - 753.3333 = 26.6667
    assert jpm["quantity"] == 8
    assert abs(fraction(jpm["realized_pnl"]) - Fraction(80, 3)) <= CENT
    assert abs(fraction(jpm["cost_basis"]) - Fraction(4520, 3)) <= CENT
    assert [ref for ref, *_ in oversell_alerts(seeded_engine)] == ["MB-3"]
    incremental = table_rows(seeded_engine, portfolios, exclude={"updated_at"})
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert table_rows(seeded_engine, portfolios, exclude={"updated_at"}) == incremental


def test_oversells_whose_refs_differ_only_in_case(seeded_engine, tmp_path, request):
    """txn_refs are case-sensitive (schema.TxnRef): 'os-1' and 'OS-1' are two trades, two oversells, two alerts."""
    load(seeded_engine, write_trades(tmp_path, "case.csv", [
        ("os-1", 1001, "AAPL", "SELL", 5, "100.00", "2024-06-03 10:00:00"),
        ("OS-1", 1001, "AAPL", "SELL", 6, "100.00", "2024-06-03 11:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    assert sorted(ref for ref, *_ in oversell_alerts(seeded_engine)) == ["OS-1", "os-1"]


def test_new_closes_alone_revalue_positions(seeded_engine, tmp_path):
    """Closes loaded after the trades, with no new trade, change last price and market value on the next update."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("NC-1", 1001, "GS", "BUY", 4, "450.25", "2024-06-03 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    assert fraction(position_rows(seeded_engine)[(1001, "GS")]["market_value"]) == Fraction("1801")
    prices = tmp_path / "closes.csv"
    prices.write_text("stock_symbol,price_date,close_price\nGS,2024-06-04,440.10\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.trades_applied == 0
    position = position_rows(seeded_engine)[(1001, "GS")]
    # 4 * 440.10 = 1760.40; unrealized 1760.40 - 1801.00 = -40.60
    assert (fraction(position["last_price"]), fraction(position["market_value"]),
            fraction(position["unrealized_pnl"])) == (Fraction("440.1"), Fraction("1760.4"), Fraction("-40.6"))


# ---------------------------------------------------------------------------------------------- costs what changed

def checkpoint_rows(engine):
    return table_rows(engine, position_checkpoints)


def test_late_trade_replays_from_the_checkpoint_before_its_week(seeded_engine, tmp_path, monkeypatch):
    """Only the trades from the late trade's week on are read again; the result, the checkpoints included, equals
    --full, and an oversell alert of an earlier week stays."""
    load(seeded_engine, write_trades(tmp_path, "history.csv", [
        ("CP-1", 1001, "AAPL", "BUY", 10, "100.00", "2024-06-03 10:00:00"),  # week of 3 June
        ("CP-2", 1001, "AAPL", "SELL", 30, "100.00", "2024-06-04 10:00:00"),  # an oversell, same week
        ("CP-3", 1001, "AAPL", "BUY", 10, "120.00", "2024-06-11 10:00:00"),  # week of 10 June
        ("CP-4", 1001, "AAPL", "SELL", 5, "130.00", "2024-06-18 10:00:00"),  # week of 17 June
        ("CP-5", 1001, "AAPL", "BUY", 2, "125.00", "2024-06-20 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    assert len(checkpoint_rows(seeded_engine)) == 3
    replayed = []
    stream = ledger.trades_after

    def spied(connection, starts, applied_only=False):
        trades = list(stream(connection, starts, applied_only))
        replayed.extend(trade.txn_id for trade in trades)
        return iter(trades)

    monkeypatch.setattr(ledger, "trades_after", spied)
    load(seeded_engine, write_trades(tmp_path, "late.csv", [
        ("CP-6", 1001, "AAPL", "SELL", 16, "140.00", "2024-06-19 10:00:00"),  # late, week of 17 June
    ]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.positions_replayed == 1
    assert len(replayed) == 3  # CP-4, CP-6, CP-5: not the two earlier weeks
    aapl = position_rows(seeded_engine)[(1001, "AAPL")]
    # 10 @ 100 + 10 @ 120 = 20 for 2200 (avg 110); SELL 5 @ 130: +100, 15 left for 1650; SELL 16 > 15: oversell;
    # BUY 2 @ 125: 17 for 1900
    assert (aapl["quantity"], fraction(aapl["cost_basis"]), fraction(aapl["realized_pnl"])) == (17, 1900, 100)
    assert sorted(ref for ref, *_ in oversell_alerts(seeded_engine)) == ["CP-2", "CP-6"]

    incremental = (table_rows(seeded_engine, portfolios, exclude={"updated_at"}), checkpoint_rows(seeded_engine),
                   oversell_alerts(seeded_engine))
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert (table_rows(seeded_engine, portfolios, exclude={"updated_at"}), checkpoint_rows(seeded_engine),
            oversell_alerts(seeded_engine)) == incremental


def count_statements(engine):
    """A list that collects every SQL statement the engine runs from now on."""
    statements = []
    event.listen(engine, "before_cursor_execute",
                 lambda connection, cursor, statement, *args: statements.append(statement))
    return statements


def test_nothing_new_reads_no_trade_and_writes_nothing(seeded_engine, tmp_path):
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("NN-1", 1001, "AAPL", "BUY", 10, "100.00", "2024-06-03 10:00:00"),
        ("NN-2", 1002, "MSFT", "BUY", 10, "300.00", "2024-06-03 10:00:00"),
    ]))
    update_portfolio.update_portfolios(seeded_engine)
    before = table_rows(seeded_engine, portfolios), table_rows(seeded_engine, investor_risk)
    statements = count_statements(seeded_engine)
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.investors_scored == 0 and summary.trades_applied == 0
    assert not [s for s in statements if "transactions" in s or s.lstrip().upper().startswith(
        ("INSERT", "UPDATE", "DELETE"))]
    assert (table_rows(seeded_engine, portfolios), table_rows(seeded_engine, investor_risk)) == before


def test_one_new_trade_revalues_and_scores_its_investor_only(seeded_engine, tmp_path):
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        (f"ON-{n}", investor_id, symbol, "BUY", 10, "100.00", "2024-06-03 10:00:00")
        for n, (investor_id, symbol) in enumerate([(1001, "AAPL"), (1002, "AAPL"), (1003, "MSFT")])]))
    prices = tmp_path / "closes.csv"  # with a close, a trade does not move the symbol's last price
    prices.write_text("stock_symbol,price_date,close_price\nAAPL,2024-06-03,101\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    update_portfolio.update_portfolios(seeded_engine)
    others = {key: row for key, row in position_rows(seeded_engine).items() if key[0] != 1001}
    load(seeded_engine, write_trades(tmp_path, "one.csv", [
        ("ON-9", 1001, "AAPL", "BUY", 5, "110.00", "2024-06-04 10:00:00")]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert (summary.trades_applied, summary.positions_changed, summary.investors_scored) == (1, 1, 1)
    assert {key: row for key, row in position_rows(seeded_engine).items() if key[0] != 1001} == others
    incremental = table_rows(seeded_engine, portfolios, exclude={"updated_at"}), \
        table_rows(seeded_engine, investor_risk, exclude={"updated_at"})
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert (table_rows(seeded_engine, portfolios, exclude={"updated_at"}),
            table_rows(seeded_engine, investor_risk, exclude={"updated_at"})) == incremental


def test_a_changed_close_rescores_the_holders_of_its_symbol_only(seeded_engine, tmp_path):
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("CC-1", 1001, "GS", "BUY", 4, "450.00", "2024-06-03 10:00:00"),
        ("CC-2", 1001, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00"),
        ("CC-3", 1002, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00"),
    ]))
    prices = tmp_path / "closes.csv"
    prices.write_text("stock_symbol,price_date,close_price\nGS,2024-06-03,450\nKO,2024-06-03,60\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    update_portfolio.update_portfolios(seeded_engine)
    prices.write_text("stock_symbol,price_date,close_price\nGS,2024-06-04,440\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.investors_scored == 1
    assert fraction(position_rows(seeded_engine)[(1001, "GS")]["market_value"]) == 1760
    incremental = table_rows(seeded_engine, portfolios, exclude={"updated_at"}), \
        table_rows(seeded_engine, investor_risk, exclude={"updated_at"})
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert (table_rows(seeded_engine, portfolios, exclude={"updated_at"}),
            table_rows(seeded_engine, investor_risk, exclude={"updated_at"})) == incremental


def test_two_closes_swapped_by_a_correction_revalue_the_holders(seeded_engine, tmp_path):
    """A correction that swaps two days' closes keeps their count and sum: the fingerprint still sees it, and
    the volatility it changes reaches the holder's risk."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("SW-1", 1001, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00")]))
    prices = tmp_path / "closes.csv"
    rows = ["KO,2024-06-03,60", "KO,2024-06-04,66", "KO,2024-06-05,60.5", "KO,2024-06-06,61"]
    prices.write_text("stock_symbol,price_date,close_price\n" + "\n".join(rows) + "\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    update_portfolio.update_portfolios(seeded_engine)
    before = table_rows(seeded_engine, investor_risk, exclude={"updated_at"})
    prices.write_text("stock_symbol,price_date,close_price\nKO,2024-06-04,60.5\nKO,2024-06-05,66\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.investors_scored == 1
    after = table_rows(seeded_engine, investor_risk, exclude={"updated_at"})
    assert after != before
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert table_rows(seeded_engine, investor_risk, exclude={"updated_at"}) == after


def test_a_trade_reprices_the_holders_of_a_symbol_without_closes(seeded_engine, tmp_path):
    """Without a close, a symbol's last price is its latest trade's: a new trade revalues every holder."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("NP-1", 1001, "AMZN", "BUY", 10, "100.00", "2024-06-03 10:00:00"),
        ("NP-2", 1002, "AMZN", "BUY", 10, "100.00", "2024-06-03 11:00:00")]))
    update_portfolio.update_portfolios(seeded_engine)
    load(seeded_engine, write_trades(tmp_path, "one.csv", [
        ("NP-3", 1001, "AMZN", "BUY", 1, "120.00", "2024-06-04 10:00:00")]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.investors_scored == 2
    assert fraction(position_rows(seeded_engine)[(1002, "AMZN")]["market_value"]) == 1200


def test_many_late_positions_replay_in_slices_to_the_full_result(seeded_engine, tmp_path, monkeypatch):
    """Late trades of several positions, some with a checkpoint before them and some without, replayed a few
    positions per statement."""
    monkeypatch.setattr(ledger, "REPLAY_SLICE", 2)
    symbols = ["AAPL", "MSFT", "KO", "GS", "TSLA"]
    load(seeded_engine, write_trades(tmp_path, "history.csv", [
        (f"MS-{n}-{week}", 1001 + n % 2, symbol, "BUY" if week % 3 else "SELL", 5 + n, f"{100 + week}.25",
         f"2024-06-{3 + 7 * week:02d} 10:00:00") for n, symbol in enumerate(symbols) for week in range(4)]))
    update_portfolio.update_portfolios(seeded_engine)
    load(seeded_engine, write_trades(tmp_path, "late.csv", [
        (f"ML-{n}", 1001 + n % 2, symbol, "SELL", 3, "99.50", f"2024-06-{3 + 7 * (n % 4):02d} 09:00:00")
        for n, symbol in enumerate(symbols)]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.positions_replayed == 5
    incremental = (table_rows(seeded_engine, portfolios, exclude={"updated_at"}), checkpoint_rows(seeded_engine),
                   oversell_alerts(seeded_engine))
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert (table_rows(seeded_engine, portfolios, exclude={"updated_at"}), checkpoint_rows(seeded_engine),
            oversell_alerts(seeded_engine)) == incremental


def test_a_database_without_checkpoints_is_replayed_once_to_build_them(seeded_engine, tmp_path):
    """Positions built before checkpoints existed: the next update replays everything, so late trades and
    surveillance find the checkpoints they start from."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("UP-1", 1001, "AAPL", "BUY", 10, "100.00", "2024-06-03 10:00:00"),
        ("UP-2", 1001, "AAPL", "SELL", 4, "110.00", "2024-06-12 10:00:00")]))
    update_portfolio.update_portfolios(seeded_engine)
    built = checkpoint_rows(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(position_checkpoints.delete())
    load(seeded_engine, write_trades(tmp_path, "late.csv", [
        ("UP-3", 1001, "AAPL", "BUY", 1, "90.00", "2024-06-20 10:00:00")]))
    summary = update_portfolio.update_portfolios(seeded_engine)
    assert summary.full and summary.trades_applied == 3
    assert [row[:4] for row in checkpoint_rows(seeded_engine)][:2] == [row[:4] for row in built]
    assert len(checkpoint_rows(seeded_engine)) == 3
    assert update_portfolio.update_portfolios(seeded_engine).full is False


def test_a_late_buy_before_an_oversell_corrects_the_quantity_held_in_its_alert(seeded_engine, tmp_path):
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("OH-1", 1001, "AAPL", "BUY", 10, "100.00", "2024-06-03 10:00:00"),
        ("OH-2", 1001, "AAPL", "SELL", 15, "110.00", "2024-06-05 10:00:00")]))  # oversold: 10 held
    update_portfolio.update_portfolios(seeded_engine)
    load(seeded_engine, write_trades(tmp_path, "late.csv", [
        ("OH-3", 1001, "AAPL", "BUY", 2, "90.00", "2024-06-04 10:00:00")]))  # still oversold: 12 held
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.connect() as connection:
        threshold, details = connection.execute(select(alerts.c.threshold, alerts.c.details).where(
            alerts.c.alert_key == "OVERSELL:OH-2")).one()
    assert int(threshold) == 12 and "exceeds the 12 shares held" in details
    incremental = table_rows(seeded_engine, alerts, exclude={"alert_id", "detected_at"})
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert table_rows(seeded_engine, alerts, exclude={"alert_id", "detected_at"}) == incremental


def test_a_symbols_volatility_is_stored_as_the_double_the_scores_use(seeded_engine, tmp_path):
    """symbol_marks keeps the volatility to the last bit on every database (a 4-byte FLOAT would not)."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("VD-1", 1001, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00")]))
    prices = tmp_path / "closes.csv"
    prices.write_text("stock_symbol,price_date,close_price\nKO,2024-06-03,60\nKO,2024-06-04,61.37\n"
                      "KO,2024-06-05,59.99\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.connect() as connection:
        stored = connection.execute(text("SELECT annual_volatility FROM symbol_marks WHERE stock_symbol = 'KO'")
                                    ).scalar()
    assert stored == closes.annual_volatility([60, 61.37, 59.99])


def test_a_close_of_a_symbol_not_held_changes_nothing_of_an_investor(seeded_engine, tmp_path):
    """A new close day of one symbol revalues its holders only; the others' value series (and so their VaR and
    drawdown) gain no day from it, so the incremental result equals --full."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("ND-1", 1001, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00"),
        ("ND-2", 1002, "GS", "BUY", 4, "450.00", "2024-06-03 10:00:00")]))
    prices = tmp_path / "closes.csv"
    prices.write_text("stock_symbol,price_date,close_price\n" + "".join(
        f"KO,2024-06-0{d},{60 + d}\nGS,2024-06-0{d},{450 - 3 * d}\n" for d in (3, 4, 5, 6)), encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    update_portfolio.update_portfolios(seeded_engine)
    prices.write_text("stock_symbol,price_date,close_price\nGS,2024-06-07,470\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    assert update_portfolio.update_portfolios(seeded_engine).investors_scored == 1
    incremental = table_rows(seeded_engine, investor_risk, exclude={"updated_at"})
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert table_rows(seeded_engine, investor_risk, exclude={"updated_at"}) == incremental


def test_a_close_moved_to_another_day_revalues_the_holders(seeded_engine, tmp_path):
    """Same closes, same count, one of them on another day (an edit by hand): the fingerprint sees the day."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("MD-1", 1001, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00"),
        ("MD-2", 1002, "GS", "BUY", 4, "450.00", "2024-06-03 10:00:00")]))
    prices = tmp_path / "closes.csv"
    prices.write_text("stock_symbol,price_date,close_price\n" + "".join(
        f"GS,2024-06-0{d},{450 - 3 * d}\n" for d in (3, 4, 5, 6, 7)) + "KO,2024-06-03,60\nKO,2024-06-04,66\n"
        "KO,2024-06-06,61\n", encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(prices))
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(text("UPDATE market_prices SET price_date = '2024-06-05' "
                                "WHERE stock_symbol = 'KO' AND price_date = '2024-06-04'"))
    assert update_portfolio.update_portfolios(seeded_engine).investors_scored == 1
    incremental = table_rows(seeded_engine, investor_risk, exclude={"updated_at"})
    update_portfolio.update_portfolios(seeded_engine, full=True)
    assert table_rows(seeded_engine, investor_risk, exclude={"updated_at"}) == incremental


def test_full_forgets_the_risk_of_an_investor_whose_trades_were_deleted(seeded_engine, tmp_path):
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("DL-1", 1001, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00"),
        ("DL-2", 1002, "GS", "BUY", 4, "450.00", "2024-06-03 10:00:00")]))
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(text("DELETE FROM transactions WHERE investor_id = 1002"))
    update_portfolio.update_portfolios(seeded_engine, full=True)
    with seeded_engine.connect() as connection:
        assert connection.execute(select(investor_risk.c.investor_id)).scalars().all() == [1001]
        assert connection.execute(select(portfolios.c.investor_id)).scalars().all() == [1001]


def test_full_rewrites_only_the_positions_whose_columns_change(seeded_engine, tmp_path):
    """portfolios.updated_at is the last time a column of the row changed (docs/data-model.md): a --full replay
    that ends where a position was stored leaves its row alone."""
    load(seeded_engine, write_trades(tmp_path, "t.csv", [
        ("UA-1", 1001, "KO", "BUY", 4, "60.00", "2024-06-03 10:00:00"),
        ("UA-2", 1002, "GS", "BUY", 4, "450.00", "2024-06-03 10:00:00"),
        ("UA-3", 1002, "GS", "BUY", 2, "452.00", "2024-06-04 10:00:00")]))
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(text("UPDATE portfolios SET updated_at = '2000-01-03 00:00:00'"))
        connection.execute(text("DELETE FROM transactions WHERE txn_ref = 'UA-3'"))
    update_portfolio.update_portfolios(seeded_engine, full=True)
    with seeded_engine.connect() as connection:
        stamps = dict(connection.execute(select(portfolios.c.investor_id, portfolios.c.updated_at)).all())
        quantity = connection.execute(select(portfolios.c.quantity).where(portfolios.c.investor_id == 1002)).scalar()
    assert str(stamps[1001])[:10] == "2000-01-03"
    assert str(stamps[1002])[:10] != "2000-01-03" and quantity == 4
