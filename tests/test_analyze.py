"""analyze.py: the headless dashboard PNG and the plain-text summary, whose numbers are checked by hand.

Every database test runs on SQLite and on a fresh MariaDB database. The chart tests inspect the matplotlib
Figures that the draw_* functions return (axes, ticks, bars, legends), drawn from SAMPLE frames in millions.
"""
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import matplotlib
import pandas as pd
import pytest
from matplotlib import dates as mdates
from matplotlib.legend import Legend
from sqlalchemy import select

import analyze
import load_transactions
import update_portfolio
from schema import RETURN_PERIODS, alerts, corporate_actions, load_batches, market_prices, transactions

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
TRADES = [
    "AN-1,1001,AAPL,BUY,10,100.50,2024-05-02 10:00:00",
    "AN-2,1001,AAPL,SELL,4,110.50,2024-05-03 10:00:00",
    "AN-3,1001,MSFT,BUY,2,300.25,2024-05-02 10:00:00",
    "AN-4,1001,MSFT,SELL,2,290.25,2024-05-03 10:00:00",
    "AN-5,1002,TSLA,BUY,3,200.10,2024-05-02 10:00:00",
]


@pytest.fixture(autouse=True)
def close_figures():
    """The draw_* functions leave their Figure open for the caller: close what a test drew."""
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)


@pytest.fixture
def analyzed(seeded_engine, tmp_path):
    """The small portfolio of TRADES, loaded and updated."""
    path = tmp_path / "t.csv"
    path.write_text("\n".join([HEADER] + TRADES) + "\n", encoding="utf-8")
    assert load_transactions.load_file(seeded_engine, str(path)).rows_loaded == 5
    update_portfolio.update_portfolios(seeded_engine)
    return seeded_engine


def test_dashboard_and_summary(analyzed, database_url, tmp_path, capsys, headless):
    """Without a display, main() writes a PNG and prints totals, the riskiest investors and alerts."""
    reports = tmp_path / "reports"
    assert analyze.main(["--database-url", database_url, "--reports", str(reports)]) == 0
    out = capsys.readouterr().out
    png = (reports / "dashboard.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "10 riskiest investors:" in out
    lines = out.splitlines()
    # 1001 AAPL: BUY 10 @ 100.50 (cost 1005), SELL 4 @ 110.50 -> realized 4 * 10 = 40, 6 held, cost 603;
    #            last price 110.50 (latest AAPL trade) -> market value 663, unrealized 60
    # 1001 MSFT: BUY 2 @ 300.25, SELL 2 @ 290.25 -> realized -20, closed
    # 1002 TSLA: BUY 3 @ 200.10 -> cost 600.30, market value 600.30, unrealized 0
    assert lines[0] == "Investors with positions: 2; open positions: 2 of 3"
    assert lines[1] == "Market value 1,263.30; cost basis 1,203.30; realized P&L 20.00; unrealized P&L 60.00"
    # each holds one open stock: 35 (top weight 1) + 25 (HHI 1) + 20 (one sector) = 80, CRITICAL
    assert lines[2] == "Risk levels: LOW 0, MEDIUM 0, HIGH 0, CRITICAL 2"
    assert lines[3] == "Dividend income 0.00; fees paid 0.00; cost method wac"  # no fee column, no dividends
    riskiest = lines[lines.index("10 riskiest investors:") + 2:][:2]
    assert riskiest[0].split() == ["1001", "Alice", "Johnson", "80.00", "CRITICAL", "663.00", "100.0%", "1.000"]
    assert riskiest[1].split() == ["1002", "Bob", "Smith", "80.00", "CRITICAL", "600.30", "100.0%", "1.000"]
    assert "Alerts: 2 open, 0 resolved" in lines
    assert "CONCENTRATION HIGH 2 (2 open)" in [" ".join(line.split()) for line in lines]
    assert f"written: {reports / 'dashboard.png'}, {reports / 'risk.png'}" in lines
    assert (reports / "risk.png").read_bytes().startswith(PNG_MAGIC)


def test_investor_card(analyzed, database_url, tmp_path, capsys, headless):
    """--investor ID prints the card and draws reports/investor_ID.png; an unknown investor is a usage error."""
    reports = tmp_path / "r"
    assert analyze.main(["--database-url", database_url, "--reports", str(reports), "--investor", "1001"]) == 0
    out = capsys.readouterr().out
    assert (reports / "investor_1001.png").read_bytes().startswith(PNG_MAGIC)
    card = out[out.index("Investor 1001 Alice Johnson:"):].splitlines()
    assert card[0].startswith(
        "Investor 1001 Alice Johnson: risk 80.00 CRITICAL, market value 663.00, realized P&L 20.00")
    assert [line.split()[:2] for line in card if line.startswith("  AAPL") or line.startswith("  MSFT")] == [
        ["AAPL", "6"], ["MSFT", "0"]]
    assert card[1] == "  dividend income 0.00, fees paid 0.00, cost method wac"
    assert [line.split() for line in card if line.lstrip().startswith("dividends")] == [
        ["dividends", "0.00", "fees", "0.00"]] * 2
    assert "CONCENTRATION (HIGH): AAPL is 100.0% of investor 1001's market value (limit 40%)" in out

    assert analyze.main(["--database-url", database_url, "--reports", str(reports), "--investor", "4242"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: analyze: investor 4242 has no portfolio (unknown investor, or no trades applied yet)")


def test_no_plots_prints_only(analyzed, database_url, tmp_path, capsys, headless):
    """--no-plots prints the summary and writes no file."""
    assert analyze.main(["--database-url", database_url, "--reports", str(tmp_path / "r"), "--no-plots"]) == 0
    assert "10 riskiest investors:" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_empty_database(database_url, tmp_path, capsys, headless):
    """Nothing loaded yet: the summary says what to run first, exit 0, no PNG."""
    assert analyze.main(["--database-url", database_url, "--reports", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No portfolios yet: load trades (load_transactions.py) and run update_portfolio.py first.")
    assert not (tmp_path / "r").exists()


def test_unreachable_database_is_exit_1(tmp_path, capsys, headless):
    """A database that cannot be opened: exit 1 and one line naming it, without a password."""
    url = "mysql+pymysql://root:secret-pw@127.0.0.1:1/stock_investments"
    assert analyze.main(["--database-url", url, "--reports", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("error: analyze: cannot use database mysql+pymysql://root:***@127.0.0.1:1/stock_investments")
    assert "secret-pw" not in err


EX_DATE, TODAY = date(2025, 2, 20), date(2025, 3, 3)
DIVIDEND_PER_SHARE = Decimal("0.535")  # MSFT's, cash per share


def record(txn_ref, investor_id, symbol, txn_type, quantity, price, txn_time, fee):
    return {"txn_ref": txn_ref, "investor_id": investor_id, "stock_symbol": symbol, "txn_type": txn_type,
            "quantity": quantity, "price": price, "txn_time": txn_time, "fee": fee}


# Amounts that end in a half cent tell Decimals from floats: 1001 holds 5 MSFT on the ex_date, 5 x 0.535 = 2.675
# shows as 2.68 (a float: 2.67); with 1002's 2 x 0.535 = 1.07 the total 3.745 as 3.74 (3.75); 1001's fees 2.425 as
# 2.42 (2.43); all fees applied, 3.175, as 3.18 (3.17). Half to even, as the ledger rounds.
INCOME_RECORDS = [
    record("FD-1", 1001, "MSFT", "BUY", 7, "300.25", "2025-02-03 10:00:00", "1.5"),
    record("FD-2", 1001, "MSFT", "SELL", 2, "305.00", "2025-02-10 10:00:00", "0.675"),
    record("FD-3", 1001, "AAPL", "BUY", 3, "180.10", "2025-02-05 10:00:00", "0.25"),
    record("FD-4", 1002, "MSFT", "BUY", 2, "301.00", "2025-02-04 10:00:00", "0.5"),
    record("FD-5", 1003, "MSFT", "BUY", 4, "310.00", "2025-02-25 10:00:00", "0.25"),  # after the ex_date
]
PENDING_RECORD = record("FD-6", 1002, "AAPL", "BUY", 1, "181.00", "2025-02-26 10:00:00", "100")  # not applied


def build_income_database(engine, method, actions=()):
    """INCOME_RECORDS loaded with their fees, MSFT's DIVIDEND on EX_DATE (and `actions`: dicts of stock_symbol,
    ex_date, action and value), weekday closes, update_portfolio on TODAY by `method`; then PENDING_RECORD loaded
    and left unapplied."""
    assert load_transactions.load_records(engine, INCOME_RECORDS).rows_loaded == len(INCOME_RECORDS)
    days = [EX_DATE + timedelta(days=offset) for offset in range(-20, 10)]
    with engine.begin() as connection:
        connection.execute(corporate_actions.insert(), [
            {**action, "loaded_at": datetime(2025, 1, 2)} for action in [
                {"stock_symbol": "MSFT", "ex_date": EX_DATE, "action": "DIVIDEND", "value": DIVIDEND_PER_SHARE},
                *actions]])
        connection.execute(market_prices.insert(), [
            {"stock_symbol": symbol, "price_date": day, "close_price": Decimal(base) + day.day}
            for symbol, base in (("MSFT", "290"), ("AAPL", "170")) for day in days if day.weekday() < 5])
    update_portfolio.update_portfolios(engine, today=TODAY, requested_method=method)
    assert load_transactions.load_records(engine, [PENDING_RECORD]).rows_loaded == 1
    return engine


def expected_income(engine):
    """{(investor_id, stock_symbol): (dividend income, fees paid)} as Decimals, independently of the ledger: the
    shares a position held before MSFT's ex_date times the dividend per share; the fees of the applied batches'
    trades."""
    t = transactions.c
    query = (select(t.investor_id, t.stock_symbol, t.txn_type, t.quantity, t.txn_time, t.fee)
             .join(load_batches, load_batches.c.batch_id == t.batch_id).where(load_batches.c.applied_at.is_not(None)))
    with engine.connect() as connection:
        trades = connection.execute(query).all()
    held, fees = {}, {}
    for trade in trades:
        key = (trade.investor_id, trade.stock_symbol)
        before = trade.txn_time < datetime.combine(EX_DATE, time())
        held[key] = held.get(key, 0) + (trade.quantity if trade.txn_type == "BUY" else -trade.quantity) * before
        fees[key] = fees.get(key, Decimal(0)) + Decimal(str(trade.fee))
    return {key: (held[key] * DIVIDEND_PER_SHARE if key[1] == "MSFT" else Decimal(0), fees[key]) for key in held}


def income_totals(income, investor_id=None):
    """(dividend income, fees paid) summed over every position, or over one investor's."""
    chosen = [value for (investor, _symbol), value in income.items() if investor_id in (None, investor)]
    return sum(d for d, _ in chosen), sum(f for _, f in chosen)


@pytest.mark.parametrize("method", ["wac", "fifo"])
def test_dividend_income_and_fees_paid_in_the_summary_and_the_dashboard(seeded_engine, database_url, tmp_path,
                                                                         capsys, headless, method):
    """The summary and the dashboard show the dividend income and the fees paid over every investor, to the cent,
    as an independent computation gives them, and the cost method."""
    engine = build_income_database(seeded_engine, method)
    dividends, fees = income_totals(expected_income(engine))
    assert (dividends, fees) == (Decimal("3.745"), Decimal("3.175"))  # the half cents: see INCOME_RECORDS
    expected = f"Dividend income {dividends:,.2f}; fees paid {fees:,.2f}; cost method {method}"
    assert expected == f"Dividend income 3.74; fees paid 3.18; cost method {method}"

    assert analyze.main(["--database-url", database_url, "--reports", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Investors with positions: 3; open positions: 4 of 4"
    assert lines[3] == expected
    assert (tmp_path / "r" / "dashboard.png").read_bytes().startswith(PNG_MAGIC)
    figure = analyze.draw_dashboard(analyze.read_dashboard_data(engine))
    assert [text.get_text() for text in figure.texts if text.get_gid() == "income"] == [expected]


@pytest.mark.parametrize("method", ["wac", "fifo"])
def test_dividend_income_and_fees_paid_on_the_investor_card(seeded_engine, database_url, tmp_path, capsys,
                                                            headless, method):
    """The card shows the investor's dividend income and fees paid, in all and per position, to the cent as an
    independent computation gives them, and the cost method; printed and in the PNG's text panel."""
    engine = build_income_database(seeded_engine, method)
    income = expected_income(engine)
    assert income[(1001, "MSFT")] == (Decimal("2.675"), Decimal("2.175"))
    assert income_totals(income, 1001) == (Decimal("2.675"), Decimal("2.425"))

    assert analyze.main(["--database-url", database_url, "--reports", str(tmp_path / "r"), "--investor", "1001"]) == 0
    printed = capsys.readouterr().out
    assert "  dividend income 2.68, fees paid 2.42, cost method " + method in printed.splitlines()
    data = analyze.read_dashboard_data(engine)
    for investor_id in (1001, 1002, 1003):
        card = analyze.investor_card_text(data, investor_id).splitlines()
        dividends, fees = income_totals(income, investor_id)
        assert card[1] == f"  dividend income {dividends:,.2f}, fees paid {fees:,.2f}, cost method {method}"
        shown = {line.split()[0]: following.split() for line, following in zip(card, card[1:])
                 if following.lstrip().startswith("dividends")}
        assert shown == {symbol: ["dividends", f"{dividend:,.2f}", "fees", f"{fee:,.2f}"]
                         for (investor, symbol), (dividend, fee) in income.items() if investor == investor_id}
    card = analyze.investor_card_text(data, 1001)
    assert card in printed
    (panel,) = [text.get_text() for ax in analyze.draw_investor_card(data, 1001).axes for text in ax.texts
                if text.get_text().startswith("Investor 1001")]
    assert panel == analyze.fit_card_text(card)
    assert f" dividend income 2.68, fees paid 2.42, cost method {method}" in panel.splitlines()
    assert "MSFT 5 shares" in " ".join(panel.split()) and "dividends 2.68 fees 2.18" in " ".join(panel.split())


CARD_TRADES = [  # investor 1001: a buy before a fall (tests/test_performance.py works the same case by hand)
    record("RC-1", 1001, "AAPL", "BUY", 100, "10", "2024-01-02 10:00:00", "0"),
    record("RC-2", 1001, "AAPL", "BUY", 1000, "8", "2024-03-01 10:00:00", "0"),
]
CARD_CLOSES = {date(2024, 1, 2): 10, date(2024, 2, 1): 8, date(2024, 3, 1): 8, date(2024, 4, 1): 9}


def reference_values(days):
    """{weekday: market value} of CARD_TRADES computed here: shares held at the end of the day times the last
    close on or before it."""
    values = {}
    for day in days:
        shares = sum(row["quantity"] for row in CARD_TRADES if row["txn_time"][:10] <= day.isoformat())
        values[day] = shares * CARD_CLOSES[max(close_day for close_day in CARD_CLOSES if close_day <= day)]
    return values


def reference_irr(flows, end_value, span):
    """The period rate R with -sum(flow (1+R)^(-t/span)) + end_value / (1+R) = 0, by bisection over (-0.99, 10)."""
    low, high = -0.99, 10.0
    for _ in range(200):
        middle = (low + high) / 2
        value = -sum(flow * (1 + middle) ** (-offset / span) for offset, flow in flows) + end_value / (1 + middle)
        low, high = (middle, high) if value > 0 else (low, middle)
    return low


def test_the_investor_card_shows_the_returns_and_the_value_over_time_with_drawdowns(seeded_engine, database_url,
                                                                                    tmp_path, capsys, headless):
    """The card's returns table (printed and in the PNG's text panel) and its chart of the market value per day,
    the drawdowns shaded, against values and returns computed here: TWR chains the daily values, IRR by a bisection
    of its own."""
    load_transactions.load_records(seeded_engine, CARD_TRADES)
    with seeded_engine.begin() as connection:
        connection.execute(market_prices.insert(), [
            {"stock_symbol": "AAPL", "price_date": day, "close_price": Decimal(price)}
            for day, price in CARD_CLOSES.items()])
    update_portfolio.update_portfolios(seeded_engine, today=date(2024, 4, 1))
    days = list(pd.bdate_range("2024-01-02", "2024-04-01").date)
    values = reference_values(days)
    twr = 1.0
    for before, day in zip(days, days[1:]):
        inflow = sum(row["quantity"] * float(row["price"]) for row in CARD_TRADES if row["txn_time"][:10] == str(day))
        twr *= values[day] / (values[before] + inflow)
    irr = reference_irr([(1, 1000.0), (60, 8000.0)], values[days[-1]], 91)
    assert f"{twr - 1:+.2%}" == "-10.00%" and f"{irr:+.2%}" == "+25.64%"

    assert analyze.main(["--database-url", database_url, "--reports", str(tmp_path / "r"), "--investor", "1001"]) == 0
    printed = capsys.readouterr().out.splitlines()
    (first,) = [number for number, line in enumerate(printed) if line.startswith("  returns to 2024-04-01")]
    table = printed[first:first + 4]
    assert table[0].split()[-5:] == list(RETURN_PERIODS) == ["1M", "3M", "YTD", "1Y", "ALL"]
    # 1M: 8,800 on 2024-03-01 to 9,900, no flow: +12.50% both; 3M, YTD and 1Y start before the first trade
    assert [line.split()[-5:] for line in table[1:3]] == [["+12.50%", "n/a", "n/a", "n/a", f"{twr - 1:+.2%}"],
                                                         ["+12.50%", "n/a", "n/a", "n/a", f"{irr:+.2%}"]]
    assert table[1].startswith("    time-weighted (TWR)") and table[2].startswith("    money-weighted (IRR)")

    data = analyze.read_dashboard_data(seeded_engine, 1001)
    figure = analyze.draw_investor_card(data, 1001)
    ax = _axes_titled(figure, "Market value per day")
    (line,) = ax.get_lines()
    assert [mdates.num2date(x).date() for x in line.get_xdata(orig=False)] == days
    assert list(line.get_ydata()) == [values[day] for day in days]
    (shaded,) = ax.collections  # the drawdown: the value under its running peak of 1,000 in February
    below = [day for day in days if values[day] < max(values[other] for other in days if other <= day)]
    assert (below[0], below[-1]) == (date(2024, 2, 1), date(2024, 2, 29))
    corners = shaded.get_paths()[0].vertices
    assert {mdates.num2date(x).date() for x in corners[:, 0]} <= set(below)
    assert (corners[:, 1].min(), corners[:, 1].max()) == (800, 1000)
    (panel,) = [text.get_text() for ax in figure.axes for text in ax.texts if text.get_text().startswith("Investor")]
    assert panel == analyze.fit_card_text(analyze.investor_card_text(data, 1001))
    assert "+25.64%" in panel and "-10.00%" in panel


def test_only_closed_positions(seeded_engine, database_url, tmp_path, capsys, headless):
    """An investor whose every position is closed: zero market value, LOW, no alerts, and still a dashboard."""
    path = tmp_path / "closed.csv"
    path.write_text("\n".join([HEADER, "CL-1,1003,KO,BUY,5,60.50,2024-05-02 10:00:00",
                               "CL-2,1003,KO,SELL,5,61.50,2024-05-03 10:00:00"]) + "\n", encoding="utf-8")
    load_transactions.load_file(seeded_engine, str(path))
    update_portfolio.update_portfolios(seeded_engine)
    assert analyze.main(["--database-url", database_url, "--reports", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Investors with positions: 1; open positions: 0 of 1"
    # BUY 5 @ 60.50, SELL 5 @ 61.50: realized 5 * 1.00 = 5.00, nothing held
    assert lines[1] == "Market value 0.00; cost basis 0.00; realized P&L 5.00; unrealized P&L 0.00"
    assert lines[2] == "Risk levels: LOW 1, MEDIUM 0, HIGH 0, CRITICAL 0"
    assert "Alerts: 0 open, 0 resolved" in lines
    assert (tmp_path / "r" / "dashboard.png").read_bytes().startswith(PNG_MAGIC)


def test_investor_draws_only_the_card(analyzed, database_url, tmp_path, capsys, headless, monkeypatch):
    """--investor ID prints and draws only that investor's card: no summary, no dashboards."""
    def no_dashboard(data):
        raise AssertionError("--investor must not draw the dashboards")

    monkeypatch.setattr(analyze, "draw_dashboard", no_dashboard)
    monkeypatch.setattr(analyze, "draw_risk_dashboard", no_dashboard)
    reports = tmp_path / "r"
    assert analyze.main(["--database-url", database_url, "--reports", str(reports), "--investor", "1002"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Investor 1002 Bob Smith: risk 80.00 CRITICAL, market value 600.30")
    assert "10 riskiest investors:" not in out
    assert out.splitlines()[-1] == f"written: {reports / 'investor_1002.png'}"
    assert sorted(path.name for path in reports.iterdir()) == ["investor_1002.png"]


def _at(text):
    return datetime.fromisoformat(text)


def test_alerts_dated_by_trade_or_position(analyzed, capsys):
    """A trade's alert sits on the trade's date; a position alert (no trade) on the position's last trade; a sector
    alert on the investor's last trade; an alert whose position is gone on detected_at. The axis is a date axis."""
    detected = _at("2024-05-20 12:00:00")
    with analyzed.begin() as connection:
        connection.execute(alerts.insert(), [
            {"alert_key": "LARGE_TRADE:AN-1", "rule": "LARGE_TRADE", "severity": "HIGH", "investor_id": 1001,
             "stock_symbol": "AAPL", "txn_ref": "AN-1", "detected_at": detected, "details": "large"},
            {"alert_key": "SECTOR_CONCENTRATION:1002:Consumer Discretionary", "rule": "SECTOR_CONCENTRATION",
             "severity": "HIGH", "investor_id": 1002, "stock_symbol": None, "txn_ref": None,
             "detected_at": detected, "details": "sector"},
            {"alert_key": "CONCENTRATION:1003:KO", "rule": "CONCENTRATION", "severity": "HIGH", "investor_id": 1003,
             "stock_symbol": "KO", "txn_ref": None, "detected_at": detected, "details": "no position"},
        ])
    data = analyze.read_dashboard_data(analyzed)
    times = {(row.rule, row.investor_id): row.alert_time for row in data["alerts"].itertuples()}
    # TRADES: AN-1 (1001 AAPL) 2024-05-02; 1001 AAPL last traded 2024-05-03 (AN-2); 1002 TSLA only 2024-05-02
    assert times == {
        ("LARGE_TRADE", 1001): pd.Timestamp("2024-05-02 10:00:00"),
        ("CONCENTRATION", 1001): pd.Timestamp("2024-05-03 10:00:00"),  # raised by update_portfolio, detected now
        ("CONCENTRATION", 1002): pd.Timestamp("2024-05-02 10:00:00"),
        ("SECTOR_CONCENTRATION", 1002): pd.Timestamp("2024-05-02 10:00:00"),
        ("CONCENTRATION", 1003): pd.Timestamp(detected),
    }

    ax = _axes_titled(analyze.draw_risk_dashboard(data), "Alerts per day")
    assert isinstance(ax.xaxis.get_major_locator(), mdates.DateLocator)
    assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    assert [mdates.num2date(limit).year for limit in ax.get_xlim()] == [2024, 2024]  # date numbers, not 0..n
    assert _bars_by_day(ax) == {
        "LARGE_TRADE": {"2024-05-02": 1},
        "CONCENTRATION (no trade)": {"2024-05-02": 1, "2024-05-03": 1, "2024-05-20": 1},
        "SECTOR_CONCENTRATION (no trade)": {"2024-05-02": 1},
    }
    assert "position's last trade" in ax.get_xlabel()


def _axes_titled(figure, start):
    (ax,) = [ax for ax in figure.axes if ax.get_title().startswith(start)]
    return ax


def _bars_by_day(ax):
    """{legend label: {day a bar starts: its height}} of a stacked bar chart, zero-height bars left out."""
    return {container.get_label(): {mdates.num2date(bar.get_x()).strftime("%Y-%m-%d"): round(bar.get_height())
                                    for bar in container if bar.get_height() > 0}
            for container in ax.containers}


def test_alerts_over_months_are_counted_per_week():
    """Alerts spanning more than WEEKLY_AFTER_DAYS go in weekly bins starting on Mondays, in date order."""
    rows = pd.DataFrame({"rule": ["BURST", "BURST", "LARGE_TRADE", "BURST"], "txn_ref": ["a", "b", "c", "d"],
                         "alert_time": pd.to_datetime(["2026-12-02 09:00", "2026-02-12 15:00", "2026-02-13 10:00",
                                                       "2026-02-16 10:00"])})
    table, bin_days = analyze.alerts_by_date(rows)
    assert bin_days == 7
    assert (table.index.day_of_week == 0).all() and table.index.is_monotonic_increasing
    # 2026-02-12 (Thu) and 02-13 (Fri) are in the week of Monday 02-09; 02-16 is a Monday; 12-02 in the week of 11-30
    assert table.loc["2026-02-09"].to_dict() == {"BURST": 1, "LARGE_TRADE": 1}
    assert table.loc["2026-02-16"].to_dict() == {"BURST": 1, "LARGE_TRADE": 0}
    assert table.loc["2026-11-30"].to_dict() == {"BURST": 1, "LARGE_TRADE": 0}
    assert table.to_numpy().sum() == 4


SECTORS = [  # symbol, sector, market value: 11 sectors, 6 of them under 3% of 10.2M
    ("AAPL", "Technology", 4_000_000), ("JPM", "Financials", 2_500_000), ("XOM", "Energy", 1_500_000),
    ("UNH", "Health Care", 1_200_000), ("KO", "Consumer Staples", 500_000), ("CAT", "Industrials", 200_000),
    ("NEE", "Utilities", 100_000), ("AMT", "Real Estate", 80_000), ("LIN", "Materials", 60_000),
    ("NFLX", "Communication Services", 40_000), ("TSLA", "Consumer Discretionary", 20_000)]


def sample_data():
    """read_dashboard_data's frames for two investors with positions in millions (matplotlib's '1e6' range), its cost
    method, investor 1001's returns and its market value per day."""
    total = sum(value for _, _, value in SECTORS)
    positions = pd.DataFrame([
        {"investor_id": 1001, "stock_symbol": symbol, "sector": sector, "quantity": 1000, "market_value": value,
         "cost_basis": value * 0.9, "realized_pnl": value * 0.3, "unrealized_pnl": -value * 0.2,
         "dividend_income": Decimal("12.50"), "fees_paid": Decimal("4.95"), "weight": value / total,
         "risk_score": 30.0, "risk_level": "LOW"} for symbol, sector, value in SECTORS]
        + [{"investor_id": 1002, "stock_symbol": "AAPL", "sector": "Technology", "quantity": 9000,
            "market_value": 3_600_000, "cost_basis": 3_000_000, "realized_pnl": 0.0, "unrealized_pnl": 600_000,
            "dividend_income": Decimal("0"), "fees_paid": Decimal("9.90"), "weight": 1.0, "risk_score": 80.0,
            "risk_level": "CRITICAL"}])
    investors = pd.DataFrame([
        {"investor_id": 1001, "name": "Alice Johnson", "total_market_value": total, "total_cost_basis": total * 0.9,
         "realized_pnl": total * 0.3, "unrealized_pnl": -total * 0.2, "dividend_income": Decimal("137.50"),
         "fees_paid": Decimal("54.45"), "open_positions": len(SECTORS),
         "top_position_weight": 4_000_000 / total, "hhi": 0.25, "top_sector_weight": 4_000_000 / total,
         "risk_score": 45.0, "risk_level": "MEDIUM", "portfolio_volatility": 0.18, "var_95_1d": 1_400_000,
         "expected_shortfall_95_1d": 1_900_000, "max_drawdown": 0.22},
        {"investor_id": 1002, "name": "Bob Smith", "total_market_value": 3_600_000, "total_cost_basis": 3_000_000,
         "realized_pnl": 0.0, "unrealized_pnl": 600_000, "dividend_income": Decimal("0"),
         "fees_paid": Decimal("9.90"), "open_positions": 1, "top_position_weight": 1.0,
         "hhi": 1.0, "top_sector_weight": 1.0, "risk_score": 80.0, "risk_level": "CRITICAL",
         "portfolio_volatility": 0.35, "var_95_1d": 2_600_000, "expected_shortfall_95_1d": 3_100_000,
         "max_drawdown": 0.41}])
    alert_rows = pd.DataFrame([
        {"rule": "CONCENTRATION", "severity": "HIGH", "investor_id": 1002, "stock_symbol": "AAPL", "txn_ref": None,
         "details": "AAPL is 100.0%", "detected_at": "2026-12-03 03:00:00",
         "alert_time": pd.Timestamp("2026-02-12 10:00:00")}])
    returns = pd.DataFrame([{"investor_id": 1001, "period": period, "start_date": "2026-01-02",
                             "end_date": "2026-12-03", "twr": 0.05, "irr": 0.07} for period in RETURN_PERIODS])
    days = pd.bdate_range("2026-01-05", periods=60)
    daily = pd.DataFrame({"value_date": days, "market_value": [8_000_000 + 40_000 * (n % 7) for n in range(60)]})
    return {"positions": positions, "investors": investors, "alerts": alert_rows, "cost_method": "fifo",
            "returns": returns, "daily": daily}


@pytest.mark.parametrize("value, text", [
    (0, "$0"), (75, "$75"), (0.5, "$0.5"), (350_000, "$350k"), (1_200_000, "$1.2M"), (1_250_000, "$1.25M"),
    (-40_000, "-$40k"), (2_500_000_000, "$2.5B")])
def test_format_money(value, text):
    assert analyze.format_money(value) == text


def test_money_axes_are_currency_without_offset():
    """Every money axis of the three figures has $ tick labels ($1.2M, $350k) and no '1e6' offset text."""
    data = sample_data()
    figures = [analyze.draw_dashboard(data), analyze.draw_risk_dashboard(data), analyze.draw_investor_card(data, 1001)]
    money_axes = []
    for figure in figures:
        figure.canvas.draw()
        money_axes += [ax.xaxis for ax in figure.axes if ax.get_xlabel() in ("market value", "P&L", "loss")]
        money_axes += [ax.yaxis for ax in figure.axes if ax.get_ylabel() in ("P&L", "market value")]
    # dashboard: value by investor and symbol, P&L, value by symbol; risk: VaR; card: holdings, P&L by symbol, the
    # market value per day
    assert len(money_axes) == 7
    for axis in money_axes:
        labels = [label.get_text() for label in axis.get_ticklabels() if label.get_text()]
        assert axis.get_offset_text().get_text() == ""
        assert labels and all(re.fullmatch(r"-?\$\d+(\.\d+)?[kMB]?", label) for label in labels), labels
        assert any(label.endswith("M") for label in labels), labels


def test_drawdown_scatter_has_colour_and_size_legends():
    """The drawdown/volatility scatter explains its colours (risk level) and sizes (top position weight)."""
    ax = _axes_titled(analyze.draw_risk_dashboard(sample_data()), "Max drawdown vs annualized volatility")
    legends = {legend.get_title().get_text(): legend for legend in ax.get_children() if isinstance(legend, Legend)}
    assert {title: [text.get_text() for text in legend.get_texts()] for title, legend in legends.items()} == {
        "risk level": ["LOW", "MEDIUM", "HIGH", "CRITICAL"], "top position weight": ["25%", "50%", "100%"]}
    colours = [handle.get_markerfacecolor() for handle in legends["risk level"].legend_handles]
    assert colours == list(analyze.RISK_COLORS.values())
    # investor 1002's top weight is 100%: its dot is as big as the legend's 100% marker
    (dots,) = ax.collections
    largest = legends["top position weight"].legend_handles[-1].get_markersize() ** 2
    assert dots.get_sizes()[1] == pytest.approx(largest)


def test_sector_shares_group_small_sectors():
    """Sectors under 3% of the open market value share one 'Other' slice; a lone small sector keeps its name."""
    positions = pd.DataFrame(SECTORS, columns=["stock_symbol", "sector", "market_value"])
    shares = analyze.sector_shares(positions)
    assert shares.index.tolist() == ["Technology", "Financials", "Energy", "Health Care", "Consumer Staples",
                                     "Other (6 sectors)"]
    assert shares["Other (6 sectors)"] == pytest.approx(500_000 / 10_200_000)
    lone = analyze.sector_shares(positions.iloc[:6])  # Industrials is 200k of 9.9M, 2.0%
    assert lone.index[-1] == "Industrials"


def test_sector_pie_labels_do_not_overlap():
    """The card's pie has one wedge per sector of 3% or more plus Other, names with percentages in a legend, and
    no two texts on the pie overlapping."""
    figure = analyze.draw_investor_card(sample_data(), 1001)
    figure.canvas.draw()
    ax = _axes_titled(figure, "Weights by sector")
    assert len(ax.patches) == 6
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "Technology 39.2%", "Financials 24.5%", "Energy 14.7%", "Health Care 11.8%", "Consumer Staples 4.9%",
        "Other (6 sectors) 4.9%"]
    boxes = [text.get_window_extent() for text in ax.texts if text.get_text()]
    assert len(boxes) == 4  # percentages on the wedges of 5% or more only
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_default_reports_folder_is_in_the_project_folder_whatever_the_working_directory(
        analyzed, database_url, tmp_path, capsys, headless, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(analyze.db_config, "PROJECT_FOLDER", str(project))
    monkeypatch.chdir(elsewhere)

    assert analyze.main(["--database-url", database_url, "--investor", "1002"]) == 0

    assert [path.name for path in (project / "reports").iterdir()] == ["investor_1002.png"]
    assert list(elsewhere.iterdir()) == []


def test_card_risk_metrics_show_what_the_investor_has():
    """Each metric is NULL without enough history: the card shows those present, the parametric VaR among them."""
    row = pd.Series({"portfolio_volatility": None, "var_95_1d": 1234.5, "expected_shortfall_95_1d": 1500.0,
                     "parametric_var_95_1d": 1100.256, "max_drawdown": float("nan")})
    assert analyze.risk_metric_texts(row) == ["1-day 95% VaR 1,234.50", "expected shortfall 1,500.00",
                                              "parametric VaR 1,100.26"]
    assert analyze.risk_metric_texts(pd.Series({name: None for name, _ in analyze.RISK_METRIC_TEXTS})) == []


def test_card_of_an_investor_with_every_position_closed(seeded_engine, database_url, tmp_path, headless):
    """No open position: the card still draws (the holdings panel says so) instead of failing."""
    load_transactions.load_records(seeded_engine, [
        record("CL-1", 1006, "KO", "BUY", 5, "60", "2024-01-02 10:00:00", "0"),
        record("CL-2", 1006, "KO", "SELL", 5, "61", "2024-01-03 10:00:00", "0")])
    update_portfolio.update_portfolios(seeded_engine, today=date(2024, 1, 5))
    reports = tmp_path / "r"
    assert analyze.main(["--database-url", database_url, "--reports", str(reports), "--investor", "1006"]) == 0
    assert (reports / "investor_1006.png").stat().st_size > 0


def test_the_summary_counts_open_and_resolved_alerts_apart(analyzed, database_url, tmp_path, capsys, headless):
    """A new user read 'Alerts: 51' as 51 to review, where alerts.py listed 30 open: resolved ones are history."""
    with analyzed.begin() as connection:
        first = connection.execute(select(alerts.c.alert_id).order_by(alerts.c.alert_id)).scalars().first()
        connection.execute(alerts.update().where(alerts.c.alert_id == first).values(status="RESOLVED"))
    assert analyze.main(["--database-url", database_url, "--reports", str(tmp_path / "r"), "--no-plots"]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "Alerts: 1 open, 1 resolved" in lines
    assert "CONCENTRATION HIGH 2 (1 open)" in lines
