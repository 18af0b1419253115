"""html_report.py and `analyze.py --html`: the self-contained page, rendered in a real headless browser (Debian's
chromium) and its numbers checked against independent queries; report_refresh.ReportRefresher's scheduling.

Without chromium the browser tests skip on a developer machine and fail when CI is set (.ci/run installs it).
"""
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import date, datetime
from decimal import Decimal
from html.parser import HTMLParser

import matplotlib
import pytest
from sqlalchemy import func, select, update

import alerts as alert_lifecycle
import analyze
import html_report
import load_transactions
import report_refresh
import update_portfolio
from schema import alerts, corporate_actions, investor_risk, investors, load_batches, rejected_transactions, stocks
from test_analyze import TODAY, build_income_database, expected_income, income_totals

matplotlib.use("Agg")

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
TRADES = [
    "AN-1,1001,AAPL,BUY,10,100.50,2024-05-02 10:00:00",
    "AN-2,1001,AAPL,SELL,4,110.50,2024-05-03 10:00:00",
    "AN-3,1002,TSLA,BUY,3,200.10,2024-05-02 10:00:00",
    "BIG-1,4242,KO,BUY,1000,1234.5678,2024-05-02 11:00:00",
    "<script>alert(2)</script>,1002,TSLA,BUY,1,200.10,2024-05-03 11:00:00",
]
HOSTILE_RECORD = "<script>alert(1)</script>"  # too few fields: a reject whose raw record is this line
HOSTILE_NAME = "Eve <b>Evil</b> & Co"
HOSTILE_DETAILS = '<img src=x onerror="document.title=1"> is a large trade'
CHROMIUM_TIMEOUT_SECONDS = 60


def chromium_path():
    """Debian's chromium, or a failure under CI and a skip elsewhere when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (apt-get install chromium): the page cannot be checked in a browser"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: the browser test must not skip)")
        pytest.skip(message)
    return path


def rendered_dom(page, tmp_path):
    """The page's DOM as headless chromium renders it from disk (no network, no profile of the user)."""
    result = subprocess.run(
        [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_SECONDS, check=False)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


class PageParser(HTMLParser):
    """What the tests read from a DOM: tables by id (rows of cell texts), element counts, attributes, texts by id."""

    def __init__(self):
        super().__init__()
        self.tables, self.tags, self.sources, self.links, self.metas, self.texts = {}, {}, [], [], [], {}
        self._table, self._row, self._cell, self._text_ids = None, None, None, []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.sources += [value for name, value in attrs if name in ("src", "srcset", "data")]
        self.links += [value for name, value in attrs if name == "href"]
        if tag == "meta":
            self.metas.append(attributes)
        if tag == "table":
            self._table = self.tables.setdefault(attributes.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        if "id" in attributes:
            self._text_ids.append((tag, attributes["id"], []))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        if self._text_ids and self._text_ids[-1][0] == tag:
            _tag, element_id, parts = self._text_ids.pop()
            self.texts[element_id] = "".join(parts)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        for _tag, _id, parts in self._text_ids:
            parts.append(data)

    def rows(self, table_id):
        """The table's body rows as {header: cell text}."""
        header, *body = self.tables[table_id]
        return [dict(zip(header, row)) for row in body]


def parse(dom):
    parser = PageParser()
    parser.feed(dom)
    return parser


@pytest.fixture
def reported(seeded_engine, tmp_path):
    """TRADES (one investor with a hostile name), one hostile reject, one hostile alert, VaR figures set by hand."""
    with seeded_engine.begin() as connection:
        connection.execute(investors.insert(), {"investor_id": 4242, "name": HOSTILE_NAME,
                                                "risk_profile": "balanced", "created_at": datetime.now()})
    path = tmp_path / "t.csv"
    path.write_text("\n".join([HEADER, *TRADES, HOSTILE_RECORD]) + "\n", encoding="utf-8")
    summary = load_transactions.load_file(seeded_engine, str(path))
    assert (summary.rows_loaded, summary.rows_rejected) == (5, 1)
    update_portfolio.update_portfolios(seeded_engine)
    with seeded_engine.begin() as connection:
        connection.execute(alerts.insert(), {
            "alert_key": "LARGE_TRADE:hostile", "rule": "LARGE_TRADE", "severity": "HIGH", "investor_id": 1002,
            "stock_symbol": "TSLA", "txn_ref": "<script>alert(2)</script>", "details": HOSTILE_DETAILS,
            "detected_at": datetime(2030, 1, 1, 12)})  # the newest alert
        # 1002.675 rounds to 1,002.68 from the Decimal, to 1,002.67 from a float: the page must show the former
        connection.execute(update(investor_risk).where(investor_risk.c.investor_id == 4242).values(
            var_95_1d=Decimal("1002.675"), expected_shortfall_95_1d=Decimal("12345.675")))
    return seeded_engine


def expected_risks(engine):
    """The riskiest investors by an independent query, their money as the page must write it (Decimal to the cent)."""
    query = (select(investor_risk, investors.c.name).join(investors)
             .order_by(investor_risk.c.risk_score.desc(), investor_risk.c.total_market_value.desc(),
                       investor_risk.c.investor_id))
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [{"investor": str(row.investor_id), "name": row.name, "score": f"{row.risk_score:.2f}",
             "market value": f"{row.total_market_value:,.2f}", "realized P&L": f"{row.realized_pnl:,.2f}",
             "1-day 95% VaR": "" if row.var_95_1d is None else f"{row.var_95_1d:,.2f}"} for row in rows]


def test_page_in_a_browser_shows_the_database(reported, database_url, tmp_path, capsys):
    """`analyze.py --html --no-plots` writes only index.html; chromium shows the same numbers as the database."""
    reports = tmp_path / "reports"
    assert analyze.main(["--database-url", database_url, "--reports", str(reports), "--html", "--no-plots",
                         "--refresh", "7"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"written: {reports / 'index.html'}"
    assert sorted(path.name for path in reports.iterdir()) == ["index.html"]  # no PNG files, no temporary file
    page = parse(rendered_dom(reports / "index.html", tmp_path))

    shown = [{key: row[key] for key in expected} for row, expected in
             zip(page.rows("risk-table"), expected_risks(reported))]
    assert shown == expected_risks(reported)
    assert {"investor": "4242", "name": HOSTILE_NAME, "score": "80.00", "market value": "1,234,567.80",
            "realized P&L": "0.00", "1-day 95% VaR": "1,002.68"} in shown  # 1000 x 1234.5678, by hand
    shortfalls = {row["investor"]: row["expected shortfall"] for row in page.rows("risk-table")}
    assert shortfalls["4242"] == "12,345.68"

    with reported.connect() as connection:
        alert_count = connection.execute(select(func.count()).select_from(alerts)).scalar_one()
        batches = connection.execute(select(load_batches).order_by(load_batches.c.batch_id.desc())).all()
        reject = connection.execute(select(rejected_transactions)).one()
    assert len(page.rows("alert-table")) == alert_count == 4  # CONCENTRATION for 1001, 1002, 4242 and the hostile
    assert f"all {alert_count} alerts" in page.texts["alerts"]
    newest = page.rows("alert-table")[0]
    assert (newest["txn_ref"], newest["details"], newest["created"]) == (
        "<script>alert(2)</script>", HOSTILE_DETAILS, "2030-01-01 12:00:00")
    assert [(row["batch"], row["status"], row["read"], row["loaded"], row["duplicate"], row["rejected"])
            for row in page.rows("batch-table")] == [
        (str(b.batch_id), b.status, str(b.rows_read), str(b.rows_loaded), str(b.rows_duplicate), str(b.rows_rejected))
        for b in batches] == [(str(batches[0].batch_id), "loaded", "6", "5", "0", "1")]
    assert page.rows("reject-table") == [{"batch": str(reject.batch_id), "line": "7", "reason": reject.reason,
                                          "raw record": HOSTILE_RECORD}]

    assert page.tags.get("script", 0) == 0 and page.tags.get("b", 0) == 0  # hostile text stayed text
    assert {"http-equiv": "refresh", "content": "7"} in page.metas
    assert page.texts["generated"].startswith("Generated 20") and "reloads every 7 s" in page.texts["generated"]
    assert page.tags["img"] == 2 and page.tags.get("link", 0) == 0
    assert page.sources and all(source.startswith("data:image/png;base64,") for source in page.sources)
    assert all(link.startswith("#") for link in page.links)


def test_alerts_are_cut_newest_first_and_counted(reported, tmp_path, monkeypatch):
    """More alerts than the page shows: the newest first, and the note says how many there are in all."""
    monkeypatch.setattr(html_report, "LATEST_ALERTS", 2)
    path = html_report.write_html_report(reported, str(tmp_path / "r" / "index.html"), {}, refresh_seconds=0)
    page = parse((tmp_path / "r" / "index.html").read_text(encoding="utf-8"))
    with reported.connect() as connection:
        newest = connection.execute(select(alerts.c.alert_id).order_by(alerts.c.detected_at.desc(),
                                                                       alerts.c.alert_id.desc()).limit(2)).scalars()
        assert [row["alert"] for row in page.rows("alert-table")] == [str(alert_id) for alert_id in newest]
    assert path == str(tmp_path / "r" / "index.html")
    assert "2 of 4 alerts" in page.texts["alerts"]
    assert not any(meta.get("http-equiv") == "refresh" for meta in page.metas)  # refresh 0: no reload
    assert page.tags.get("img", 0) == 0


def test_a_persons_decision_is_shown_with_the_alert(reported, tmp_path):
    """A resolved alert shows its status, when, by whom and the note, escaped like any other text."""
    with reported.begin() as connection:
        alert_id = connection.execute(select(alerts.c.alert_id).where(alerts.c.rule == "CONCENTRATION")
                                      .order_by(alerts.c.alert_id).limit(1)).scalar_one()
        alert_lifecycle.resolve_alerts(connection, [alert_id], "<b>ok</b> per desk", "ana <i>",
                                       datetime(2030, 1, 2, 9, 30))
    html_report.write_html_report(reported, str(tmp_path / "r" / "index.html"), {}, refresh_seconds=0)
    page = parse((tmp_path / "r" / "index.html").read_text(encoding="utf-8"))

    rows = {row["alert"]: row for row in page.rows("alert-table")}
    assert {key: rows[str(alert_id)][key] for key in ("status", "resolved", "by", "decision")} == {
        "status": "RESOLVED", "resolved": "2030-01-02 09:30:00", "by": "ana <i>", "decision": "<b>ok</b> per desk"}
    assert sum(row["status"] == "OPEN" for row in rows.values()) == 3
    assert "all 4 alerts, 3 of them open" in page.texts["alerts"]
    assert [{key: row[key] for key in ("alert", "by", "decision")} for row in page.rows("decision-table")] == [
        {"alert": str(alert_id), "by": "ana <i>", "decision": "<b>ok</b> per desk"}]
    assert "all 1 resolved alerts" in page.texts["decisions"]
    assert page.tags.get("b", 0) == 0 and page.tags.get("i", 0) == 0


def test_empty_database_page(engine, tmp_path, capsys):
    """Nothing loaded: the page still comes, saying what to run first, with empty tables left out."""
    reports = tmp_path / "r"
    assert analyze.main(["--reports", str(reports), "--html", "--no-plots", "--database-url",
                         engine.url.render_as_string(hide_password=False)]) == 0
    page = parse((reports / "index.html").read_text(encoding="utf-8"))
    assert "No portfolios yet" in page.texts["charts"] and page.tables == {}
    assert "No portfolios yet" in page.texts["totals"]
    assert "no corporate actions applied" in page.texts["actions"]
    assert "no batches" in page.texts["batches"]


HOSTILE_SYMBOL = "<i>K</i>"
# (stock_symbol, ex_date, action, value, the value as the page shows it): symbols nobody holds, besides MSFT's
# dividend of build_income_database (ex_date 2025-02-20, 0.535); GS's comes after TODAY, so it is not applied yet.
ACTIONS = [
    ("KO", date(2025, 3, 3), "DIVIDEND", "0.123456", "0.123456"),
    (HOSTILE_SYMBOL, date(2025, 3, 1), "DIVIDEND", "0.5", "0.50"),
    ("NVDA", date(2025, 2, 28), "SPLIT", "4", "4.00"),
    ("NVDA", date(2025, 2, 28), "DIVIDEND", "0.01", "0.01"),
    ("TSLA", date(2025, 2, 27), "SPLIT", "1.5", "1.50"),
    ("AMD", date(2025, 2, 26), "SPLIT", "0.1", "0.10"),
    ("JPM", date(2025, 2, 25), "DIVIDEND", "1234.5", "1,234.50"),
    ("PG", date(2025, 2, 24), "DIVIDEND", "1.0075", "1.0075"),
    ("XOM", date(2025, 2, 21), "DIVIDEND", "0.99", "0.99"),
    ("CVX", date(2025, 2, 19), "DIVIDEND", "1.63", "1.63"),
    ("WMT", date(2025, 1, 10), "DIVIDEND", "0.2", "0.20"),
    ("GS", date(2025, 3, 10), "DIVIDEND", "3", "3.00"),
]
SHOWN_VALUES = {(symbol, ex_date, action): shown for symbol, ex_date, action, _value, shown in ACTIONS} | {
    ("MSFT", date(2025, 2, 20), "DIVIDEND"): "0.535"}


def test_totals_and_the_corporate_actions_applied(seeded_engine, tmp_path):
    """The page's totals of dividend income and fees paid equal an independent computation to the cent, with the
    cost method; the 10 corporate actions applied with the latest ex_dates are listed, escaped, the count of all
    applied in the note, an action not yet due left out."""
    with seeded_engine.begin() as connection:
        connection.execute(stocks.insert(), {"stock_symbol": HOSTILE_SYMBOL, "company_name": "K", "sector": "Energy"})
    engine = build_income_database(seeded_engine, "fifo", actions=[
        {"stock_symbol": symbol, "ex_date": ex_date, "action": action, "value": Decimal(value)}
        for symbol, ex_date, action, value, _shown in ACTIONS])
    path = tmp_path / "r" / "index.html"
    html_report.write_html_report(engine, str(path), {}, refresh_seconds=0)
    page = parse(path.read_text(encoding="utf-8"))

    dividends, fees = income_totals(expected_income(engine))
    assert page.rows("totals-table") == [{"investors": "3", "dividend income": f"{dividends:,.2f}",
                                          "fees paid": f"{fees:,.2f}", "cost method": "fifo"}]
    assert (f"{dividends:,.2f}", f"{fees:,.2f}") == ("3.74", "3.18")  # 3.745 and 3.175, half to even

    with engine.connect() as connection:
        applied = connection.execute(select(corporate_actions.c.stock_symbol, corporate_actions.c.ex_date,
                                            corporate_actions.c.action)
                                     .where(corporate_actions.c.applied_at.is_not(None))).all()
    assert len(applied) == 12 and all(ex_date <= TODAY for _symbol, ex_date, _action in applied)
    latest = sorted(applied, key=lambda row: (-row.ex_date.toordinal(), row.stock_symbol, row.action))[:10]
    shown = [(row["symbol"], row["ex_date"], row["action"], row["value"]) for row in page.rows("action-table")]
    assert shown == [(symbol, ex_date.isoformat(), action, SHOWN_VALUES[(symbol, ex_date, action)])
                     for symbol, ex_date, action in latest]
    assert shown[:4] == [("KO", "2025-03-03", "DIVIDEND", "0.123456"),
                         (HOSTILE_SYMBOL, "2025-03-01", "DIVIDEND", "0.50"),
                         ("NVDA", "2025-02-28", "DIVIDEND", "0.01"), ("NVDA", "2025-02-28", "SPLIT", "4.00")]
    assert ("MSFT", "2025-02-20", "DIVIDEND", "0.535") in shown and "GS" not in [row[0] for row in shown]
    assert "10 of 12 corporate actions applied" in page.texts["actions"]
    assert page.tags.get("i", 0) == 0  # the hostile symbol stayed text


def test_page_is_replaced_atomically(engine, tmp_path, monkeypatch):
    """The page is renamed over the old one; a write that fails leaves the previous page whole, no temporary file."""
    target = tmp_path / "r" / "index.html"
    html_report.replace_file(str(target), "previous page")
    assert target.read_text(encoding="utf-8") == "previous page"

    def disk_full(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        html_report.write_html_report(engine, str(target), {})
    assert target.read_text(encoding="utf-8") == "previous page"
    assert [path.name for path in target.parent.iterdir()] == ["index.html"]


def test_html_and_investor_do_not_combine(capsys):
    """--html is the dashboards' page: with --investor it is a usage error, as is a negative --refresh."""
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(["--html", "--investor", "1001"])
    assert exit_info.value.code == 2
    assert "--html writes the dashboards' page and --investor one investor's card" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze.main(["--html", "--refresh", "-1"])
    assert "--refresh must be 0 (no reload) or a number of seconds, not -1" in capsys.readouterr().err


FAKE_CHILD = """
import os, sys, time
with open(sys.argv[1], "a") as log:
    log.write(f"start {os.getpid()} {time.time()}\\n")
time.sleep(float(sys.argv[2]))
with open(sys.argv[1], "a") as log:
    log.write(f"end {os.getpid()} {time.time()}\\n")
"""


def fake_refresher(monkeypatch, tmp_path, every_seconds, child_seconds):
    """A ReportRefresher whose child only logs its start and end (times in seconds) to a file, and sleeps between."""
    log = tmp_path / "children.log"
    monkeypatch.setattr(report_refresh.ReportRefresher, "command",
                        lambda self: [sys.executable, "-c", FAKE_CHILD, str(log), str(child_seconds)])
    return report_refresh.ReportRefresher(None, every_seconds, tmp_path / "reports"), log


def child_events(log):
    """[(event, pid, time)] from the fake children's log."""
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [(event, int(pid), float(at)) for event, pid, at in (line.split() for line in lines)]


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_pokes_make_at_most_one_regeneration_per_interval(monkeypatch, tmp_path):
    """Pokes within an interval start one child; the pokes after it are not lost but served once, when due."""
    refresher, log = fake_refresher(monkeypatch, tmp_path, every_seconds=1.0, child_seconds=0.1)
    with refresher:
        for _ in range(10):  # over about 0.5 s
            refresher.poke()
            time.sleep(0.05)
        wait_for(lambda: len([e for e in child_events(log) if e[0] == "end"]) == 2)
        time.sleep(1.5)  # no poke since: nothing more starts
    starts = [at for event, _pid, at in child_events(log) if event == "start"]
    assert len(starts) == refresher.started == 2
    assert starts[1] - starts[0] >= 0.7  # 1 s from start to start, less the children's start-up times, which vary


def test_late_poke_waits_for_the_running_child(monkeypatch, tmp_path):
    """A poke while a child runs (past the interval) starts the next one only when it has ended: never two at once."""
    refresher, log = fake_refresher(monkeypatch, tmp_path, every_seconds=0.1, child_seconds=0.8)
    with refresher:
        refresher.poke()
        wait_for(lambda: child_events(log))
        time.sleep(0.3)
        refresher.poke()  # due, but the first child is still running
        wait_for(lambda: len(child_events(log)) == 4)
    (start_1, _, t1), (end_1, _, t2), (start_2, _, t3), (end_2, _, t4) = child_events(log)
    assert (start_1, end_1, start_2, end_2) == ("start", "end", "start", "end") and t2 <= t3


def test_close_waits_then_stops_the_child(monkeypatch, tmp_path):
    """close() waits for a running child up to its timeout, then kills it: no child is left running."""
    refresher, log = fake_refresher(monkeypatch, tmp_path, every_seconds=5, child_seconds=60)
    refresher.poke()
    wait_for(lambda: child_events(log))
    began = time.monotonic()
    refresher.close(timeout=0.5)
    assert time.monotonic() - began < 5
    (_event, pid, _at), = child_events(log)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    refresher.poke()  # after close: ignored
    time.sleep(0.3)
    assert refresher.started == 1

    refresher, log = fake_refresher(monkeypatch, tmp_path / "b", every_seconds=5, child_seconds=0.5)
    (tmp_path / "b").mkdir()
    refresher.poke()
    refresher.close()
    assert [event for event, _pid, _at in child_events(log)] == ["start", "end"]  # waited for it to finish


def test_disabled_refresher_starts_nothing(monkeypatch, tmp_path):
    """every_seconds 0: pokes do nothing; a negative interval is refused."""
    refresher, log = fake_refresher(monkeypatch, tmp_path, every_seconds=0, child_seconds=0)
    refresher.poke()
    refresher.close()
    assert refresher.started == 0 and not log.exists()
    with pytest.raises(ValueError, match="every_seconds must be 0"):
        report_refresh.ReportRefresher(None, -1)


def test_failing_child_is_logged_once_per_streak(tmp_path, caplog):
    """A regeneration that fails (an unreachable database) is one WARNING with its exit code and error line, without
    the password; the next failure in a row is not logged again; the caller never sees an exception."""
    url = "mysql+pymysql://root:secret-pw@127.0.0.1:1/stock_investments"
    refresher = report_refresh.ReportRefresher(url, 0.1, tmp_path / "reports")
    with caplog.at_level(logging.DEBUG, logger="report_refresh"):
        refresher.poke()
        wait_for(lambda: refresher.failed == 1, seconds=60)
        refresher.poke()
        wait_for(lambda: refresher.failed == 2, seconds=60)
        refresher.close()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("report regeneration failed (exit code 1: error: analyze: cannot use database "
                                  "mysql+pymysql://root:***@127.0.0.1:1/stock_investments")
    assert "secret-pw" not in caplog.text
    assert not (tmp_path / "reports").exists()


def test_refresher_writes_the_page(reported, database_url, tmp_path):
    """The real child: one poke on a database with trades regenerates reports/index.html, and close() waits for it."""
    reports = tmp_path / "live-reports"
    with report_refresh.ReportRefresher(database_url, 5, reports) as refresher:
        refresher.poke()
    assert (refresher.started, refresher.failed) == (1, 0)
    page = parse((reports / "index.html").read_text(encoding="utf-8"))
    assert page.tags["img"] == 2 and len(page.rows("risk-table")) == 3
    assert sorted(path.name for path in reports.iterdir()) == ["index.html"]


def test_a_record_cut_when_stored_shows_its_original_length():
    stored = load_transactions.stored_raw_record("x" * 10_214)
    assert html_report.raw_record(stored).endswith("… [10,214 characters in all]")
    assert html_report.raw_record("y" * 800).endswith("… [800 characters in all]")


def test_a_rewritten_page_keeps_the_permissions_a_person_gave_it(tmp_path):
    page = tmp_path / "index.html"
    html_report.replace_file(str(page), "first")
    page.chmod(0o640)  # shared with a group by hand
    html_report.replace_file(str(page), "second")
    assert page.read_text() == "second"
    assert page.stat().st_mode & 0o777 == 0o640
