"""analyze.py: the headless dashboard PNG and the plain-text summary, whose numbers are checked by hand.

Every database test runs on SQLite and on a fresh MariaDB database.
"""

import pytest

import analyze
import load_transactions
import update_portfolio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
TRADES = [
    "AN-1,1001,AAPL,BUY,10,100.50,2024-05-02 10:00:00",
    "AN-2,1001,AAPL,SELL,4,110.50,2024-05-03 10:00:00",
    "AN-3,1001,MSFT,BUY,2,300.25,2024-05-02 10:00:00",
    "AN-4,1001,MSFT,SELL,2,290.25,2024-05-03 10:00:00",
    "AN-5,1002,TSLA,BUY,3,200.10,2024-05-02 10:00:00",
]


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
    riskiest = lines[lines.index("10 riskiest investors:") + 2:][:2]
    assert riskiest[0].split() == ["1001", "Alice", "Johnson", "80.00", "CRITICAL", "663.00", "100.0%", "1.000"]
    assert riskiest[1].split() == ["1002", "Bob", "Smith", "80.00", "CRITICAL", "600.30", "100.0%", "1.000"]
    assert "Alerts: 2" in lines
    assert "CONCENTRATION HIGH 2" in [" ".join(line.split()) for line in lines]
    assert f"written: {reports / 'dashboard.png'}, {reports / 'risk.png'}" in lines
    assert (reports / "risk.png").read_bytes().startswith(PNG_MAGIC)


def test_investor_card(analyzed, database_url, tmp_path, capsys, headless):
    """--investor ID prints the card and draws reports/investor_ID.png; an unknown investor is a usage error."""
    reports = tmp_path / "r"
    assert analyze.main(["--database-url", database_url, "--reports", str(reports), "--investor", "1001"]) == 0
    out = capsys.readouterr().out
    assert (reports / "investor_1001.png").read_bytes().startswith(PNG_MAGIC)
    card = out[out.index("Investor 1001 Alice Johnson:"):].splitlines()
    assert card[0].startswith("Investor 1001 Alice Johnson: risk 80.00 CRITICAL, market value 663.00, realized P&L 20.00")
    assert [line.split()[:2] for line in card if line.startswith("  AAPL") or line.startswith("  MSFT")] == [
        ["AAPL", "6"], ["MSFT", "0"]]
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
    assert "Alerts: 0" in lines
    assert (tmp_path / "r" / "dashboard.png").read_bytes().startswith(PNG_MAGIC)
