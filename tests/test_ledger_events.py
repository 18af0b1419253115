"""Fees, splits (with cash in lieu), cash dividends and FIFO lots (docs/portfolio-math.md, docs/corporate-actions.md)
through the database, against an independent reference written here with exact fractions: hypothesis-drawn
histories with fees, forward and reverse splits that leave fractions, dividends and oversells, loaded in two
parts (some trades and actions late), equal the reference to the cent, and `--full` equals the incremental
result, under weighted average cost and FIFO, on SQLite and MariaDB. Also: files without fees or actions give
exactly the portfolios of the version before fees existed.
"""
import csv
import logging
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, text

import cli
import corporate_actions as corporate_actions_module
import load_transactions
import update_portfolio
from schema import corporate_actions, ledger_settings, market_prices, portfolios, position_checkpoints, position_lots
from test_update_portfolio import fraction, fresh_engine

HALF_CENT = Fraction(1, 200)  # "to the cent": an absolute difference below half a cent
GOLDEN = os.path.join(os.path.dirname(__file__), "data", "legacy_wac")
FIRST_DAY = date(2026, 1, 5)  # a Monday
DAYS = [FIRST_DAY + timedelta(days=offset) for offset in range(40)
        if (FIRST_DAY + timedelta(days=offset)).weekday() < 5]
TODAY = DAYS[-1] + timedelta(days=3)
SPLIT_VALUES = ["4", "2", "3", "1.5", "2.5", "0.5", "0.25", "0.1", "0.3", "0.125", "1:3", "2:3", "1:7", "7:3"]


# ---------------------------------------------------------------------------------------------- the reference

@dataclass
class RefPosition:
    quantity: Fraction = Fraction(0)
    cost_basis: Fraction = Fraction(0)
    realized_pnl: Fraction = Fraction(0)
    dividend_income: Fraction = Fraction(0)
    fees_paid: Fraction = Fraction(0)
    lots: list = field(default_factory=list)  # FIFO: [quantity, cost] oldest first


def _round4(value):
    """A Fraction rounded half-even to 4 decimals, as Decimal."""
    scaled = value * 10**4
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        floor += 1
    return Decimal(floor).scaleb(-4)


def lieu_price(symbol_closes, splits, ex_date, value):
    """The last close before ex_date, in the terms of the day before (÷ earlier splits since), ÷ value, rounded."""
    before = [(day, close) for day, close in symbol_closes if day < ex_date]
    day, close = before[-1]
    for other_day, other_value in splits:
        if day < other_day < ex_date:
            close /= other_value
    return Fraction(_round4(close / value))


def reference(trades, actions, closes, method):
    """{(investor_id, symbol): RefPosition} by brute force over every event in time order."""
    events = [((t.day, 1, t.number), "trade", t) for t in trades]
    events += [((a.ex_date, 0, 0 if a.action == "DIVIDEND" else 1), "action", a) for a in actions]
    positions = {}
    for _, kind, event in sorted(events, key=lambda entry: entry[0]):
        if kind == "trade":
            position = positions.setdefault((event.investor_id, "AAPL"), RefPosition())
            apply_trade(position, event, method)
            continue
        for position in positions.values():
            if position.quantity == 0:
                continue
            if event.action == "DIVIDEND":
                position.dividend_income += position.quantity * event.value
            else:
                splits = [(a.ex_date, a.value) for a in actions if a.action == "SPLIT"]
                apply_split(position, event.value, lieu_price(closes, splits, event.ex_date, event.value), method)
    return positions


def apply_trade(position, trade, method):
    if trade.txn_type == "BUY":
        position.quantity += trade.quantity
        position.cost_basis += trade.quantity * trade.price + trade.fee
        position.lots.append([Fraction(trade.quantity), trade.quantity * trade.price + trade.fee])
    elif trade.quantity <= position.quantity:
        if method == "wac":
            average = position.cost_basis / position.quantity
            position.realized_pnl += trade.quantity * (trade.price - average) - trade.fee
            position.cost_basis -= trade.quantity * average
        else:
            cost = take_lots(position.lots, Fraction(trade.quantity), oldest_first=True)
            position.realized_pnl += trade.quantity * trade.price - trade.fee - cost
            position.cost_basis -= cost
        position.quantity -= trade.quantity
    else:
        return
    position.fees_paid += trade.fee


def take_lots(lots, quantity, oldest_first):
    """Take shares off the lots, each lot's cost pro rata; return the cost taken."""
    taken = Fraction(0)
    while quantity:
        lot = lots[0 if oldest_first else -1]
        share = min(quantity, lot[0])
        cost = lot[1] * share / lot[0]
        lot[0], lot[1] = lot[0] - share, lot[1] - cost
        if lot[0] == 0:
            lots.remove(lot)
        quantity, taken = quantity - share, taken + cost
    return taken


def apply_split(position, value, lieu, method):
    scaled = position.quantity * value
    whole = Fraction(scaled.numerator // scaled.denominator)
    fraction_left = scaled - whole
    if method == "wac":
        average = position.cost_basis / scaled
        position.realized_pnl += fraction_left * (lieu - average)
        position.cost_basis -= fraction_left * average
    else:
        for lot in position.lots:
            lot[0] *= value
        cost = take_lots(position.lots, fraction_left, oldest_first=False)
        position.realized_pnl += fraction_left * lieu - cost
        position.cost_basis -= cost
    position.quantity = whole


# ---------------------------------------------------------------------------------------------- histories

@dataclass
class DrawnTrade:
    number: int
    investor_id: int
    txn_type: str
    quantity: int
    price: Fraction
    fee: Fraction
    day_index: int

    @property
    def day(self):
        return DAYS[self.day_index]

    def record(self):
        return {"txn_ref": f"E{self.number:05d}", "investor_id": self.investor_id, "stock_symbol": "AAPL",
                "txn_type": self.txn_type, "quantity": self.quantity, "price": str(Decimal(self.price.numerator)
                                                                                   / self.price.denominator),
                "txn_time": f"{self.day.isoformat()} 10:{self.number // 60 % 60:02d}:{self.number % 60:02d}",
                "fee": str(Decimal(self.fee.numerator) / self.fee.denominator)}


@dataclass
class DrawnAction:
    ex_date: date
    action: str
    value: Fraction


def split_value(text):
    """A split value as an exact Fraction: '1:3' or '0.25'."""
    if ":" in text:
        new, old = text.split(":")
        return Fraction(int(new), int(old))
    return Fraction(Decimal(text))


@st.composite
def histories(draw):
    """Trades of two investors in AAPL over DAYS, corporate actions among them, daily closes, and which trades
    and actions are loaded first (the rest come later, some of them before what was applied: late)."""
    count = draw(st.integers(1, 25))
    days = sorted(draw(st.lists(st.integers(0, len(DAYS) - 1), min_size=count, max_size=count)))
    trades = []
    for number, day_index in enumerate(days, start=1):
        buy = draw(st.booleans()) or number == 1
        trades.append(DrawnTrade(
            number, draw(st.sampled_from([1001, 1002])), "BUY" if buy else "SELL", draw(st.integers(1, 60)),
            Fraction(draw(st.integers(1, 5_000_000)), 10_000), Fraction(draw(st.sampled_from([0, 0, 1, 150, 999]))
                                                                         , 100), day_index))
    action_days = draw(st.lists(st.integers(1, len(DAYS) - 1), max_size=4, unique=True))
    actions = []
    for day_index in sorted(action_days):
        kind = draw(st.sampled_from(["SPLIT", "SPLIT", "DIVIDEND", "BOTH"]))
        if kind in ("DIVIDEND", "BOTH"):
            actions.append(DrawnAction(DAYS[day_index], "DIVIDEND", Fraction(draw(st.integers(1, 300)), 100)))
        if kind in ("SPLIT", "BOTH"):
            actions.append(DrawnAction(DAYS[day_index], "SPLIT", split_value(draw(st.sampled_from(SPLIT_VALUES)))))
    closes = [(day, Fraction(draw(st.integers(100, 5_000_000)), 10_000)) for day in DAYS]
    first_trades = draw(st.sets(st.sampled_from([t.number for t in trades])))
    first_actions = draw(st.sets(st.integers(0, max(len(actions) - 1, 0)), max_size=len(actions)))
    return trades, actions, closes, first_trades, first_actions


def store(engine, trades, actions, closes=()):
    if trades:
        summary = load_transactions.load_records(engine, [trade.record() for trade in trades])
        assert summary.rows_rejected == 0, summary.sample_rejects
    with engine.begin() as connection:
        if closes:
            connection.execute(market_prices.insert(), [
                {"stock_symbol": "AAPL", "price_date": day, "close_price": Decimal(close.numerator) / close.denominator}
                for day, close in closes])
        if actions:
            connection.execute(corporate_actions.insert(), [
                {"stock_symbol": "AAPL", "ex_date": a.ex_date, "action": a.action, "loaded_at": datetime.now(),
                 "value": corporate_actions_module.stored_value(a.value if a.action == "SPLIT" else Decimal(
                     a.value.numerator) / a.value.denominator),
                 "ratio": corporate_actions_module.stored_ratio(a.value) if a.action == "SPLIT" else None}
                for a in actions])


def stored_positions(engine):
    with engine.connect() as connection:
        rows = {(row.investor_id, row.stock_symbol): row for row in connection.execute(select(portfolios))}
        lots = connection.execute(select(position_lots)).all()
    return rows, lots


def assert_equals_reference(engine, expected, method):
    rows, lots = stored_positions(engine)
    assert set(rows) == set(expected)
    for key, want in expected.items():
        row = rows[key]
        assert row.quantity == want.quantity, key
        for column in ("cost_basis", "realized_pnl", "dividend_income", "fees_paid"):
            assert abs(fraction(getattr(row, column)) - getattr(want, column)) < HALF_CENT, (
                key, column, getattr(row, column), float(getattr(want, column)))
        average = want.cost_basis / want.quantity if want.quantity else Fraction(0)
        assert abs(fraction(row.avg_cost) - average) <= Fraction(1, 10_000), (key, row.avg_cost, float(average))
        if method == "fifo":
            own = [lot for lot in lots if (lot.investor_id, lot.stock_symbol) == key]
            assert len(own) == len(want.lots), key
            assert sum(fraction(lot.quantity) for lot in own) == want.quantity
            for lot, (quantity, cost) in zip(sorted(own, key=lambda lot: (lot.acquired_at, lot.txn_id)), want.lots):
                assert abs(fraction(lot.quantity) - quantity) < Fraction(1, 10**9), key
                assert abs(fraction(lot.cost_basis) - cost) < HALF_CENT, key
    if method == "wac":
        assert not lots


def clear(engine):
    with engine.begin() as connection:
        for table in ("alerts", "position_lots", "position_checkpoints", "portfolios", "investor_risk",
                      "symbol_marks", "symbol_last_trades", "rejected_transactions", "transactions", "load_batches",
                      "corporate_actions", "market_prices", "ledger_settings"):
            connection.execute(text(f"DELETE FROM {table}"))


def snapshot(engine):
    """portfolios (without updated_at), the checkpoints and the FIFO lots, as sorted rows."""
    columns = [c for c in portfolios.columns if c.name != "updated_at"]
    with engine.connect() as connection:
        return (sorted(tuple(row) for row in connection.execute(select(*columns))),
                sorted(tuple(row) for row in connection.execute(select(position_checkpoints))),
                sorted(tuple(row) for row in connection.execute(select(position_lots))))


@pytest.mark.parametrize("method", ["wac", "fifo"])
def test_histories_with_fees_splits_and_dividends_equal_the_reference_incremental_and_full(database_url, method):
    examples = 25 if database_url.startswith("sqlite") else 10
    with fresh_engine(database_url) as engine:
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
        @given(histories())
        def check(history):
            trades, actions, closes, first_trades, first_actions = history
            clear(engine)
            store(engine, [t for t in trades if t.number in first_trades],
                  [a for i, a in enumerate(actions) if i in first_actions], closes)
            update_portfolio.update_portfolios(engine, today=TODAY, requested_method=method)
            store(engine, [t for t in trades if t.number not in first_trades],
                  [a for i, a in enumerate(actions) if i not in first_actions])
            update_portfolio.update_portfolios(engine, today=TODAY)
            expected = reference(trades, actions, closes, method)
            expected = {key: position for key, position in expected.items()}
            assert_equals_reference(engine, expected, method)
            incremental = snapshot(engine)
            update_portfolio.update_portfolios(engine, today=TODAY, full=True)
            assert snapshot(engine) == incremental

        check()


# ---------------------------------------------------------------------------------------------- worked examples

def test_a_split_with_cash_in_lieu_and_a_dividend_as_the_docs_work_them(seeded_engine):
    """5 shares bought at 100 with a fee of 5; on one ex_date a dividend of 0.50 and a 3-for-2 split (value 1.5),
    the last close before it 120: the worked example of docs/portfolio-math.md."""
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 5, Fraction(100), Fraction(5), 0)],
          [DrawnAction(DAYS[3], "DIVIDEND", Fraction(1, 2)), DrawnAction(DAYS[3], "SPLIT", Fraction(3, 2))],
          [(DAYS[2], Fraction(120))])
    update_portfolio.update_portfolios(engine, today=TODAY)
    rows, _ = stored_positions(engine)
    row = rows[(1001, "AAPL")]
    # dividend 5 · 0.50 = 2.50 on the pre-split shares; 5 · 1.5 = 7.5 shares: 7 kept, 0.5 paid at 120 / 1.5 = 80;
    # avg' = 505 / 7.5 = 67.3333...; realized = 0.5 · (80 − 67.3333) = 6.333333; cost = 505 − 33.666667 = 471.333333
    assert row.quantity == 7
    assert fraction(row.dividend_income) == Fraction("2.5")
    assert fraction(row.realized_pnl) == Fraction("6.333333")
    assert fraction(row.cost_basis) == Fraction("471.333333")
    assert fraction(row.fees_paid) == 5


def test_a_fifo_sell_across_two_lots_as_the_docs_work_it(seeded_engine):
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 10, Fraction(100), Fraction(10), 0),
                   DrawnTrade(2, 1001, "BUY", 10, Fraction(120), Fraction(10), 1),
                   DrawnTrade(3, 1001, "SELL", 15, Fraction(130), Fraction(15), 2)], [], [])
    update_portfolio.update_portfolios(engine, today=TODAY, requested_method="fifo")
    rows, lots = stored_positions(engine)
    row = rows[(1001, "AAPL")]
    # lot 1: 10 for 1,010; lot 2: 10 for 1,210. SELL 15 takes lot 1 whole and 5 of lot 2 (605):
    # realized = 15 · 130 − 15 − (1,010 + 605) = 320; left: 5 shares of lot 2 costing 605
    assert (row.quantity, fraction(row.realized_pnl), fraction(row.cost_basis), fraction(row.avg_cost)) == (
        5, 320, 605, 121)
    assert [(fraction(lot.quantity), fraction(lot.cost_basis), fraction(lot.cost_per_share)) for lot in lots] == [
        (5, 605, 121)]


# ---------------------------------------------------------------------------------------------- cost method

def test_switching_the_cost_method_needs_a_full_replay(seeded_engine, capsys):
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 10, Fraction(100), Fraction(0), 0)], [], [])
    update_portfolio.update_portfolios(engine, today=TODAY)
    url = engine.url.render_as_string(hide_password=False)
    assert update_portfolio.main(["--database-url", url, "--cost-method", "fifo"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip().endswith(
        "positions were built with cost method wac, not fifo: switching replays every trade, run "
        "update_portfolio.py --full --cost-method fifo")
    assert update_portfolio.main(["--database-url", url, "--cost-method", "fifo", "--full"]) == cli.EXIT_OK
    with engine.connect() as connection:
        assert connection.execute(select(ledger_settings.c.value).where(
            ledger_settings.c.name == "cost_method")).scalar() == "fifo"
        assert connection.execute(select(position_lots.c.quantity)).scalars().all() == [10]
    assert update_portfolio.main(["--database-url", url]) == cli.EXIT_OK  # asks nothing: the recorded method
    assert update_portfolio.main(["--database-url", url, "--cost-method", "wac", "--full"]) == cli.EXIT_OK
    with engine.connect() as connection:
        assert connection.execute(select(position_lots)).all() == []


def test_an_unknown_cost_method_in_the_environment_is_one_line_and_exit_2(seeded_engine, capsys, monkeypatch):
    monkeypatch.setenv("COST_METHOD", "lifo")
    url = seeded_engine.url.render_as_string(hide_password=False)
    assert update_portfolio.main(["--database-url", url]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "error: update_portfolio: COST_METHOD: 'lifo' is not a cost method: use wac (weighted average cost) or fifo")


# ---------------------------------------------------------------------------------------------- unchanged results

REDEFINED_SINCE_GOLDEN = {"var_95_1d", "expected_shortfall_95_1d"}


def test_files_without_fees_or_actions_give_the_portfolios_of_the_version_before_fees(seeded_engine):
    """tests/data/legacy_wac holds a file without fees or corporate actions and the portfolios and investor_risk
    that the version before fees computed from it (update on 2026-10-30): every value is the same, except VaR and
    ES, which issue 15 redefined on purpose (historical simulation of today's holdings: test_risk_metrics)."""
    engine = seeded_engine
    load_transactions.load_paths(engine, [os.path.join(GOLDEN, "transactions.csv")])
    for full in (False, True):
        update_portfolio.update_portfolios(engine, today=date(2026, 10, 30), full=full)
        for table, key_columns in (("portfolios", 2), ("investor_risk", 1)):
            with open(os.path.join(GOLDEN, f"{table}.csv"), newline="") as handle:
                golden = list(csv.reader(handle))
            header = golden[0]
            with engine.connect() as connection:
                stored = connection.execute(text(f"SELECT {', '.join(header)} FROM {table} "
                                                 f"ORDER BY {', '.join(header[:key_columns])}")).all()
            assert len(stored) == len(golden) - 1
            for want, row in zip(golden[1:], stored):
                for name, expected, value in zip(header, want, row):
                    assert name in REDEFINED_SINCE_GOLDEN or same_value(expected, value), (
                        table, want[:key_columns], name, expected, value)


def same_value(text_value, value):
    if value is None:
        return text_value == ""
    if isinstance(value, (int, float, Decimal)):
        return Decimal(text_value) == Decimal(str(value))
    return text_value == str(value)


# ---------------------------------------------------------------------------------------------- when actions apply

def test_an_action_waits_for_its_ex_date_and_then_applies_to_positions_without_new_trades(seeded_engine):
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 10, Fraction(100), Fraction(0), 0)],
          [DrawnAction(DAYS[5], "SPLIT", Fraction(4)), DrawnAction(DAYS[5], "DIVIDEND", Fraction(1))],
          [(DAYS[0], Fraction(100)), (DAYS[4], Fraction(120))])
    before = update_portfolio.update_portfolios(engine, today=DAYS[4])
    rows, _ = stored_positions(engine)
    assert rows[(1001, "AAPL")].quantity == 10 and before.actions_applied == 0
    assert fraction(rows[(1001, "AAPL")].market_value) == 1200
    summary = update_portfolio.update_portfolios(engine, today=DAYS[5])
    rows, _ = stored_positions(engine)
    row = rows[(1001, "AAPL")]
    assert summary.actions_applied == 2 and summary.positions_replayed == 0
    assert "2 corporate actions applied" in summary.line()
    assert (row.quantity, fraction(row.cost_basis), fraction(row.dividend_income)) == (40, 1000, 10)
    # no close since the split: the last close (120) is split-adjusted, so the value does not drop by 75%
    assert (fraction(row.last_price), fraction(row.market_value)) == (30, 1200)
    with engine.connect() as connection:
        assert None not in connection.execute(select(corporate_actions.c.applied_at)).scalars().all()
    again = update_portfolio.update_portfolios(engine, today=DAYS[6])
    assert again.actions_applied == 0 and again.positions_changed == 0


def test_an_action_loaded_after_trades_past_its_ex_date_replays_those_positions(seeded_engine):
    engine = seeded_engine
    trades = [DrawnTrade(1, 1001, "BUY", 10, Fraction(100), Fraction(1), 0),
              DrawnTrade(2, 1001, "SELL", 15, Fraction(70), Fraction(1), 6),  # all 15 after a 3-for-2 split
              DrawnTrade(3, 1002, "BUY", 3, Fraction(100), Fraction(0), 0)]
    closes = [(DAYS[0], Fraction(100)), (DAYS[4], Fraction(101))]
    store(engine, trades, [], closes)
    update_portfolio.update_portfolios(engine, today=TODAY)
    rows, _ = stored_positions(engine)
    assert rows[(1001, "AAPL")].quantity == 10  # without the split the SELL of 15 is an oversell
    split = DrawnAction(DAYS[5], "SPLIT", Fraction(3, 2))
    store(engine, [], [split])
    summary = update_portfolio.update_portfolios(engine, today=TODAY)
    assert summary.positions_replayed == 1  # 1001 traded after the ex_date; 1002 simply takes the split
    assert summary.alerts_withdrawn == 1  # the SELL no longer oversells
    expected = reference(trades, [split], closes, "wac")
    assert_equals_reference(engine, expected, "wac")
    rows, _ = stored_positions(engine)
    assert (rows[(1001, "AAPL")].quantity, rows[(1002, "AAPL")].quantity) == (0, 4)  # 3 × 1.5 = 4.5: 4 kept


def test_fifo_checkpoints_keep_thousands_of_lots_and_a_late_trade_replays_from_them(seeded_engine):
    """2,000 lots are about 90 KB of checkpoint text (over MySQL's 64 KB TEXT); a late SELL replays from it."""
    engine = seeded_engine
    buys = [DrawnTrade(number, 1001, "BUY", 1, Fraction(100 + number % 7), Fraction(1), number % 5)
            for number in range(1, 2001)]
    store(engine, buys + [DrawnTrade(2001, 1001, "SELL", 700, Fraction(110), Fraction(3), 14)], [], [])
    update_portfolio.update_portfolios(engine, today=TODAY, requested_method="fifo")
    late = DrawnTrade(2002, 1001, "SELL", 600, Fraction(105), Fraction(2), 7)
    store(engine, [late], [])
    summary = update_portfolio.update_portfolios(engine, today=TODAY)
    assert summary.positions_replayed == 1
    trades = buys + [DrawnTrade(2001, 1001, "SELL", 700, Fraction(110), Fraction(3), 14), late]
    assert_equals_reference(engine, reference(trades, [], [], "fifo"), "fifo")
    incremental = snapshot(engine)
    update_portfolio.update_portfolios(engine, today=TODAY, full=True)
    assert snapshot(engine) == incremental


def test_the_cash_in_lieu_price_is_fixed_when_the_split_is_first_applied(seeded_engine):
    """A close before the ex_date loaded later, then a late trade that replays the position, change nothing:
    the lieu price is stored with the split (incremental and --full agree)."""
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 3, Fraction(100), Fraction(0), 0)],
          [DrawnAction(DAYS[5], "SPLIT", Fraction(1, 2))], [(DAYS[0], Fraction(150))])
    update_portfolio.update_portfolios(engine, today=TODAY)
    rows, _ = stored_positions(engine)
    assert (rows[(1001, "AAPL")].quantity, fraction(rows[(1001, "AAPL")].realized_pnl)) == (1, 50)  # 0.5·(300 − 200)
    store(engine, [DrawnTrade(2, 1001, "BUY", 1, Fraction(100), Fraction(0), 1),
                   DrawnTrade(3, 1001, "SELL", 1, Fraction(100), Fraction(0), 2)], [], [(DAYS[4], Fraction(120))])
    summary = update_portfolio.update_portfolios(engine, today=TODAY)
    assert summary.positions_replayed == 1
    rows, _ = stored_positions(engine)
    assert fraction(rows[(1001, "AAPL")].realized_pnl) == 50
    with engine.connect() as connection:
        assert fraction(connection.execute(select(corporate_actions.c.lieu_price)).scalar()) == 300
    update_portfolio.update_portfolios(engine, today=TODAY, full=True)
    rows, _ = stored_positions(engine)
    assert fraction(rows[(1001, "AAPL")].realized_pnl) == 50


def test_a_split_beyond_what_a_position_can_hold_is_one_line_and_exit_2(seeded_engine, capsys):
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 2_147_483_647, Fraction(1, 10_000), Fraction(0), 0)],
          [DrawnAction(DAYS[3], "SPLIT", Fraction(1_000_000)), DrawnAction(DAYS[4], "SPLIT", Fraction(1_000_000))],
          [(DAYS[0], Fraction(1, 10_000))])
    url = engine.url.render_as_string(hide_password=False)
    assert update_portfolio.main(["--database-url", url]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"error: update_portfolio: SPLIT of AAPL on {DAYS[4]} (value 1000000) would make investor 1001's position "
        "2,147,483,647,000,000,000,000 shares, more than a position can hold (9,223,372,036,854,775,807): correct "
        "the action (docs/corporate-actions.md, Correcting an action)\n")


@pytest.mark.parametrize("method", ["wac", "fifo"])
def test_a_one_for_three_split_given_as_a_ratio_is_exact(seeded_engine, method):
    """300 shares in three lots, a 1:3 split: exactly 100 shares, nothing paid in lieu, the cost basis kept."""
    engine = seeded_engine
    store(engine, [DrawnTrade(number, 1001, "BUY", 100, Fraction(10 * number), Fraction(0), number)
                   for number in (1, 2, 3)], [DrawnAction(DAYS[5], "SPLIT", Fraction(1, 3))], [(DAYS[4], Fraction(25))])
    update_portfolio.update_portfolios(engine, today=TODAY, requested_method=method)
    rows, lots = stored_positions(engine)
    row = rows[(1001, "AAPL")]
    assert (row.quantity, fraction(row.cost_basis), fraction(row.realized_pnl), fraction(row.avg_cost)) == (
        100, 6000, 0, 60)
    if method == "fifo":
        assert sum(fraction(lot.quantity) for lot in lots) == 100
        assert sorted(fraction(lot.cost_per_share) for lot in lots) == [30, 60, 90]


def test_an_action_committed_while_an_update_runs_is_left_for_the_next_update(server_url, monkeypatch):
    """MariaDB: an UPDATE sees rows committed after the update read its actions; only the actions read are
    stamped applied, so one loaded meanwhile is applied by the next update (SQLite serializes the two writers;
    PostgreSQL must hold the same)."""
    with fresh_engine(server_url) as engine:
        store(engine, [DrawnTrade(1, 1001, "BUY", 10, Fraction(100), Fraction(0), 0)],
              [DrawnAction(DAYS[2], "DIVIDEND", Fraction(1))], [(DAYS[0], Fraction(100))])
        original, calls = update_portfolio.write_applied, []

        def load_an_action_meanwhile(*args, **kwargs):  # after the due actions were read, before their stamp
            if not calls:
                store(engine, [], [DrawnAction(DAYS[3], "DIVIDEND", Fraction(2))])  # its own transaction
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(update_portfolio, "write_applied", load_an_action_meanwhile)
        first = update_portfolio.update_portfolios(engine, today=TODAY)
        monkeypatch.setattr(update_portfolio, "write_applied", original)
        assert first.actions_applied == 1
        with engine.connect() as connection:
            assert connection.execute(select(corporate_actions.c.applied_at).where(
                corporate_actions.c.ex_date == DAYS[3])).scalar() is None
        second = update_portfolio.update_portfolios(engine, today=TODAY)
        assert second.actions_applied == 1
        rows, _ = stored_positions(engine)
        assert fraction(rows[(1001, "AAPL")].dividend_income) == 30



def test_fifo_lots_after_inexact_splits_add_up_and_a_later_sell_of_everything_applies(seeded_engine):
    """Lots of 18, 17 and 11 shares through splits of 0.333333, 0.142857 and 2.5 (each lot rounded to 12
    decimals): the lots still add up to the position, so selling all of it, incrementally, is no error."""
    engine = seeded_engine
    store(engine, [DrawnTrade(number, 1001, "BUY", quantity, Fraction(10), Fraction(0), 0)
                   for number, quantity in ((1, 18), (2, 17), (3, 11))],
          [DrawnAction(DAYS[2], "SPLIT", Fraction("0.333333")), DrawnAction(DAYS[3], "SPLIT", Fraction("0.142857")),
           DrawnAction(DAYS[4], "SPLIT", Fraction("2.5"))], [(DAYS[0], Fraction(10))])
    update_portfolio.update_portfolios(engine, today=TODAY, requested_method="fifo")
    rows, lots = stored_positions(engine)
    held = rows[(1001, "AAPL")].quantity
    assert held == 5 and sum(fraction(lot.quantity) for lot in lots) == held
    store(engine, [DrawnTrade(4, 1001, "SELL", held, Fraction(10), Fraction(1), 8)], [])
    update_portfolio.update_portfolios(engine, today=TODAY)
    rows, lots = stored_positions(engine)
    assert (rows[(1001, "AAPL")].quantity, lots) == (0, [])
    incremental = snapshot(engine)
    update_portfolio.update_portfolios(engine, today=TODAY, full=True)
    assert snapshot(engine) == incremental


def test_fifo_lots_with_many_digits_survive_between_updates_on_every_database(seeded_engine):
    """47618.999999952381 shares have more digits than SQLite's floats keep: the lots an update continues from
    are the exact ones of the checkpoint, so selling them all is no error."""
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 1_000_001, Fraction(1), Fraction(0), 0),
                   DrawnTrade(2, 1001, "BUY", 7, Fraction(1), Fraction(0), 0)],
          [DrawnAction(DAYS[2], "SPLIT", Fraction("0.333333")), DrawnAction(DAYS[3], "SPLIT", Fraction("0.142857"))],
          [(DAYS[0], Fraction(1))])
    update_portfolio.update_portfolios(engine, today=TODAY, requested_method="fifo")
    rows, _ = stored_positions(engine)
    held = rows[(1001, "AAPL")].quantity
    store(engine, [DrawnTrade(3, 1001, "SELL", held, Fraction(21), Fraction(0), 9)], [])
    update_portfolio.update_portfolios(engine, today=TODAY)
    rows, lots = stored_positions(engine)
    assert (rows[(1001, "AAPL")].quantity, lots) == (0, [])
    incremental = snapshot(engine)
    update_portfolio.update_portfolios(engine, today=TODAY, full=True)
    assert snapshot(engine) == incremental



def test_a_database_whose_positions_an_earlier_version_built_is_replayed_once(seeded_engine, caplog):
    """Positions without the current ledger_version (an earlier version built them, whatever recorded a cost
    method since, a live consumer included) are replayed once by the next update, which records it."""
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 10, Fraction(100), Fraction(0), 0)], [], [])
    update_portfolio.update_portfolios(engine, today=TODAY)
    with engine.begin() as connection:
        connection.execute(delete(ledger_settings).where(ledger_settings.c.name == "ledger_version"))
        connection.execute(text("UPDATE portfolios SET last_trade_price = NULL"))
    with caplog.at_level(logging.WARNING):
        assert update_portfolio.update_portfolios(engine, today=TODAY).full
    assert "replaying every trade once" in caplog.text
    rows, _ = stored_positions(engine)
    assert fraction(rows[(1001, "AAPL")].last_trade_price) == 100
    assert not update_portfolio.update_portfolios(engine, today=TODAY).full


def test_a_split_that_prices_a_position_beyond_a_price_column_is_one_line_and_exit_2(seeded_engine, capsys):
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 1, Fraction(999_999_999), Fraction(0), 0),
                   DrawnTrade(2, 1001, "BUY", 999_999, Fraction(1), Fraction(0), 0)],
          [DrawnAction(DAYS[3], "SPLIT", Fraction(1, 1_000_000))], [(DAYS[0], Fraction(1))])
    url = engine.url.render_as_string(hide_password=False)
    assert update_portfolio.main(["--database-url", url, "--cost-method", "fifo"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: update_portfolio: SPLIT of AAPL on {DAYS[3]} (value 0.000001) would make a price "
                          "of investor 1001's position 999,999,999,000,000.0000, more than a price column holds")


def test_a_split_whose_cash_in_lieu_price_is_beyond_a_price_column_is_one_line_and_exit_2(seeded_engine, capsys):
    # the close before the ex_date is 999,999,999 and the split 1 for 1,000,000: a fraction of a new share would
    # be paid at 10^15 (MariaDB refused to store it with error 1264; SQLite stored it)
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 1000, Fraction(1), Fraction(0), 0)],
          [DrawnAction(DAYS[3], "SPLIT", Fraction(1, 1_000_000))], [(DAYS[0], Fraction(999_999_999))])
    url = engine.url.render_as_string(hide_password=False)
    assert update_portfolio.main(["--database-url", url]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"error: update_portfolio: SPLIT of AAPL on {DAYS[3]} (value 0.000001) would make its cash-in-lieu price "
        "999,999,999,000,000.0000, more than a price column holds (100,000,000,000,000): correct the action "
        "(docs/corporate-actions.md, Correcting an action)\n")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT lieu_price FROM corporate_actions")).scalars().all() == [None]


def test_a_lieu_price_fixed_before_a_late_trade_stays_until_cleared_and_replayed(seeded_engine):
    # no close: the lieu price comes from the last trade before the ex_date, of any investor; 1002's trade comes
    # after the split was applied (docs/portfolio-math.md: one of the two ways the results depend on when the
    # update ran)
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 10, Fraction(30), Fraction(0), 0)],
          [DrawnAction(DAYS[3], "SPLIT", Fraction(1, 3))])
    update_portfolio.update_portfolios(engine, today=TODAY)
    store(engine, [DrawnTrade(2, 1002, "BUY", 1, Fraction(90), Fraction(0), 2)], [])
    update_portfolio.update_portfolios(engine, today=TODAY)
    update_portfolio.update_portfolios(engine, full=True, today=TODAY)

    def lieu_and_realized():
        rows, _ = stored_positions(engine)
        with engine.connect() as connection:
            lieu = connection.execute(text("SELECT lieu_price FROM corporate_actions")).scalar_one()
        return fraction(lieu), {investor_id: fraction(row.realized_pnl) for (investor_id, _), row in rows.items()}

    assert lieu_and_realized() == (90, {1001: 0, 1002: -60})  # 30 in post-split terms, kept by --full
    with engine.begin() as connection:
        connection.execute(text("UPDATE corporate_actions SET lieu_price = NULL"))
    update_portfolio.update_portfolios(engine, full=True, today=TODAY)
    assert lieu_and_realized() == (270, {1001: 60, 1002: 0})  # as one update of both trades prices it


def test_a_split_adjusted_last_price_of_0_is_one_line_and_exit_2(seeded_engine, capsys):
    engine = seeded_engine
    store(engine, [DrawnTrade(1, 1001, "BUY", 1000, Fraction(1, 2), Fraction(0), 0)],
          [DrawnAction(DAYS[3], "SPLIT", Fraction(100_000))], [(DAYS[0], Fraction(1, 2))])
    url = engine.url.render_as_string(hide_password=False)
    assert update_portfolio.main(["--database-url", url]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "error: update_portfolio: AAPL: its last price, split-adjusted, is 0.0000, which a price column cannot hold "
        "(0.0001 up to 10^14): correct the split (docs/corporate-actions.md, Correcting an action)\n")
