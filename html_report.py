"""The self-contained HTML report: one page, reports/index.html, that a browser reloads every few seconds.

Written by `analyze.py --html` (in live mode by report_refresh.ReportRefresher after new trades). Everything is in
the one file (charts as base64 PNG, inline CSS, no script, nothing fetched), so it opens from disk or any static
server: the dashboards analyze draws, the totals (dividend income and fees paid over investor_risk, the cost
method of ledger_settings), the riskiest investors (investor_risk), the newest alerts, the corporate actions
applied last, the last load batches and their rejected rows. Every text from the database is HTML-escaped. Money
is shown from the database's Decimals, rounded to the cent half to even (as the ledger rounds). The file is
replaced atomically: a reader sees the previous page or the new one, never half of one.
"""
import base64
import html
import logging
import os
import re
import shutil
from contextlib import suppress
from datetime import datetime
from decimal import Decimal
from typing import Callable, NamedTuple

from sqlalchemy import text

import cost_method
from schema import alerts, corporate_actions, investor_risk, investors, load_batches, rejected_transactions

logger = logging.getLogger(__name__)

PAGE_NAME = "index.html"
DEFAULT_REFRESH_SECONDS = 5
TOP_RISKS = 20  # rows per table: enough to act on, small enough to read at a glance
LATEST_ALERTS = 50
RECENT_DECISIONS = 20  # resolved alerts, the latest resolution first
LAST_BATCHES = 20
LATEST_REJECTS = 50  # of the batches shown
RECENT_ACTIONS = 10  # corporate actions applied, the latest ex_dates
RAW_RECORD_CHARS = 500  # a raw record is stored up to 10,000 characters; the page shows its start
SECTIONS = {  # id: title, in page order
    "charts": "Dashboards", "totals": "Totals", "top-risks": "Top risks", "alerts": "Latest alerts",
    "decisions": "Recent decisions", "actions": "Corporate actions", "batches": "Load batches",
    "rejects": "Rejected rows"}
LEVEL_CLASSES = {"LOW": "low", "MEDIUM": "medium", "HIGH": "high", "CRITICAL": "critical"}

TOP_RISKS_SQL = """
SELECT r.investor_id, i.name, r.risk_level, r.risk_score, r.total_market_value, r.realized_pnl, r.unrealized_pnl,
       r.open_positions, r.top_position_weight, r.top_sector_weight, r.portfolio_volatility, r.var_95_1d,
       r.expected_shortfall_95_1d, r.parametric_var_95_1d, r.max_drawdown
FROM investor_risk r
JOIN investors i ON i.investor_id = r.investor_id
ORDER BY r.risk_score DESC, r.total_market_value DESC, r.investor_id
LIMIT :limit
"""
LATEST_ALERTS_SQL = """
SELECT alert_id, detected_at, rule, severity, investor_id, stock_symbol, txn_ref, details, status, resolved_at,
       resolved_by, resolution_note
FROM alerts
ORDER BY detected_at DESC, alert_id DESC
LIMIT :limit
"""
RECENT_DECISIONS_SQL = """
SELECT alert_id, resolved_at, resolved_by, resolution_note, rule, severity, investor_id, stock_symbol, details
FROM alerts
WHERE status = 'RESOLVED'
ORDER BY resolved_at DESC, alert_id DESC
LIMIT :limit
"""
LAST_BATCHES_SQL = """
SELECT batch_id, source, status, started_at, finished_at, applied_at, rows_read, rows_loaded, rows_duplicate,
       rows_rejected, error
FROM load_batches
ORDER BY batch_id DESC
LIMIT :limit
"""
SHOWN_BATCHES_CTE = """
WITH shown_batches AS (
    SELECT batch_id FROM load_batches ORDER BY batch_id DESC LIMIT :batches
)
"""
LATEST_REJECTS_SQL = SHOWN_BATCHES_CTE + """
SELECT r.batch_id, r.line_number, r.reason, r.raw_record
FROM rejected_transactions r
JOIN shown_batches b ON b.batch_id = r.batch_id
ORDER BY r.batch_id DESC, r.line_number, r.reject_id
LIMIT :limit
"""
REJECT_COUNT_SQL = SHOWN_BATCHES_CTE + """
SELECT COUNT(*) FROM rejected_transactions r JOIN shown_batches b ON b.batch_id = r.batch_id
"""
COUNTS_SQL = """
SELECT (SELECT COUNT(*) FROM investor_risk) AS investors,
       (SELECT COUNT(*) FROM alerts) AS alerts,
       (SELECT COUNT(*) FROM alerts WHERE status = 'OPEN') AS open_alerts,
       (SELECT COUNT(*) FROM load_batches) AS batches,
       (SELECT COUNT(*) FROM corporate_actions WHERE applied_at IS NOT NULL) AS actions
"""
TOTALS_SQL = """
SELECT COALESCE(SUM(dividend_income), 0) AS dividend_income,  -- cash dividends received, currency units
       COALESCE(SUM(fees_paid), 0) AS fees_paid               -- fees of the trades applied, currency units
FROM investor_risk
"""
RECENT_ACTIONS_SQL = """
SELECT stock_symbol, ex_date, action, value, ratio, applied_at
FROM corporate_actions
WHERE applied_at IS NOT NULL
ORDER BY ex_date DESC, stock_symbol, action
LIMIT :limit
"""

NAVIGATION = "<nav>" + "".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS.items()) + "</nav>"
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #212121; }
h1 { font-size: 1.5em; margin: 0; } h2 { font-size: 1.2em; margin: 1.5em 0 0.3em; }
.note { color: #616161; margin: 0.2em 0 0.6em; }
figure { margin: 0 0 1em; } img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #e0e0e0; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; position: sticky; top: 0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.time { white-space: nowrap; }
nav a { margin-right: 1em; }
td.raw { font-family: monospace; white-space: pre-wrap; word-break: break-all; max-width: 50em; }
td.low { background: #c8e6c9; } td.medium { background: #fff3c4; } td.high { background: #ffccbc; }
td.critical { background: #c62828; color: #fff; }
"""


class Totals(NamedTuple):
    """The sums over every investor's figures (money as Decimals in currency units) and the cost method."""

    investors: int
    dividend_income: Decimal  # cash dividends received
    fees_paid: Decimal  # fees of the trades applied
    cost_method: str  # 'wac' or 'fifo'


class ReportData(NamedTuple):
    """What the page's tables show, read in one transaction (rows are SQLAlchemy Rows, fields by name)."""

    totals: Totals
    top_risks: list
    latest_alerts: list
    recent_decisions: list
    recent_actions: list
    last_batches: list
    latest_rejects: list
    investor_count: int
    alert_count: int
    open_alert_count: int
    action_count: int  # corporate actions applied
    batch_count: int
    reject_count: int  # rejects of the batches shown


def plain(value):
    """A value as text; NULL as an empty cell."""
    return "" if value is None else str(value)


def money(value):
    """A Decimal amount in currency units as text to the cent with thousands separators: 1,234,567.89."""
    return "" if value is None else f"{value:,.2f}"


def percent(value):
    """A ratio (0..1) as a percentage with one decimal: 0.4567 -> 45.7%."""
    return "" if value is None else f"{value:.1%}"


def timestamp(value):
    """A stored date-time as YYYY-MM-DD HH:MM:SS (exchange local time, as stored)."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def day(value):
    """A stored date as YYYY-MM-DD."""
    return "" if value is None else value.strftime("%Y-%m-%d")


def action_value(value):
    """A corporate action's Decimal value in full, at least to the cent: 0.83 and 4.00, but 0.123456 and 1.5 as 1.50."""
    if value is None:
        return ""
    exponent = min(value.normalize().as_tuple().exponent, -2)
    return f"{value:,.{-exponent}f}"


STORED_CUT = re.compile(r"… \[cut: ([0-9,]+) characters in all\]$")  # load_transactions.stored_raw_record's note


def raw_record(value):
    """A rejected record's text, cut after RAW_RECORD_CHARS characters with how long it was (the original length
    when the stored text was cut already)."""
    if value is None or len(value) <= RAW_RECORD_CHARS:
        return "" if value is None else value
    stored_cut = STORED_CUT.search(value)
    length = stored_cut.group(1) if stored_cut else f"{len(value):,}"
    return f"{value[:RAW_RECORD_CHARS]}… [{length} characters in all]"


class Column(NamedTuple):
    """One column of a table: its header, the row field it shows, how the value is written, the cells' class."""

    header: str
    field: str
    show: Callable[[object], str] = plain
    css: str = ""  # "number" right-aligns, "time" never wraps, "raw" keeps spaces and line breaks, "level" colours


TOTAL_COLUMNS = (
    Column("investors", "investors", "{:,}".format, "number"),
    Column("dividend income", "dividend_income", money, "number"), Column("fees paid", "fees_paid", money, "number"),
    Column("cost method", "cost_method"),
)
RISK_COLUMNS = (
    Column("investor", "investor_id", css="number"), Column("name", "name"),
    Column("risk level", "risk_level", css="level"), Column("score", "risk_score", "{:.2f}".format, "number"),
    Column("market value", "total_market_value", money, "number"),
    Column("realized P&L", "realized_pnl", money, "number"),
    Column("unrealized P&L", "unrealized_pnl", money, "number"),
    Column("open positions", "open_positions", css="number"),
    Column("top position", "top_position_weight", percent, "number"),
    Column("top sector", "top_sector_weight", percent, "number"),
    Column("volatility (year)", "portfolio_volatility", percent, "number"),
    Column("1-day 95% VaR", "var_95_1d", money, "number"),
    Column("expected shortfall", "expected_shortfall_95_1d", money, "number"),
    Column("parametric VaR", "parametric_var_95_1d", money, "number"),
    Column("max drawdown", "max_drawdown", percent, "number"),
)
ALERT_COLUMNS = (
    Column("alert", "alert_id", css="number"), Column("created", "detected_at", timestamp, "time"),
    Column("rule", "rule"), Column("severity", "severity", css="level"),
    Column("investor", "investor_id", css="number"), Column("symbol", "stock_symbol"),
    Column("txn_ref", "txn_ref"), Column("details", "details"), Column("status", "status"),
    Column("resolved", "resolved_at", timestamp, "time"), Column("by", "resolved_by"),
    Column("decision", "resolution_note"),
)
DECISION_COLUMNS = (
    Column("alert", "alert_id", css="number"), Column("resolved", "resolved_at", timestamp, "time"),
    Column("by", "resolved_by"), Column("decision", "resolution_note"), Column("rule", "rule"),
    Column("severity", "severity", css="level"), Column("investor", "investor_id", css="number"),
    Column("symbol", "stock_symbol"), Column("details", "details"),
)
ACTION_COLUMNS = (
    Column("symbol", "stock_symbol"), Column("ex_date", "ex_date", day, "time"), Column("action", "action"),
    Column("value", "value", action_value, "number"), Column("ratio", "ratio"),
    Column("applied", "applied_at", timestamp, "time"),
)
BATCH_COLUMNS = (
    Column("batch", "batch_id", css="number"), Column("source", "source"), Column("status", "status"),
    Column("started", "started_at", timestamp, "time"), Column("finished", "finished_at", timestamp, "time"),
    Column("applied", "applied_at", timestamp, "time"),
    Column("read", "rows_read", "{:,}".format, "number"), Column("loaded", "rows_loaded", "{:,}".format, "number"),
    Column("duplicate", "rows_duplicate", "{:,}".format, "number"),
    Column("rejected", "rows_rejected", "{:,}".format, "number"), Column("error", "error"),
)
REJECT_COLUMNS = (
    Column("batch", "batch_id", css="number"), Column("line", "line_number", css="number"),
    Column("reason", "reason"), Column("raw record", "raw_record", raw_record, "raw"),
)


def _typed(sql, *tables):
    """The query with result columns typed as the schema's columns of the same name.

    SQLite hands back DECIMAL as float and date-times as text; typed, every database gives Decimals and datetimes.
    """
    return text(sql).columns(**{column.name: column.type for table in tables for column in table.c})


def method_in_use(connection):
    """The cost method the positions are kept by: the one recorded in ledger_settings, else the default ('wac':
    positions built before the method was recorded were kept by weighted average cost)."""
    return cost_method.recorded_method(connection) or cost_method.DEFAULT


def read_report_data(engine):
    """The rows and counts the page shows, in one transaction (one consistent view where the database gives one)."""
    with engine.begin() as connection:
        def rows(sql, tables, **params):
            return connection.execute(_typed(sql, *tables), params).all()

        counts = connection.execute(text(COUNTS_SQL)).one()
        (sums,) = rows(TOTALS_SQL, (investor_risk,))
        return ReportData(
            totals=Totals(counts.investors, sums.dividend_income, sums.fees_paid, method_in_use(connection)),
            top_risks=rows(TOP_RISKS_SQL, (investors, investor_risk), limit=TOP_RISKS),
            latest_alerts=rows(LATEST_ALERTS_SQL, (alerts,), limit=LATEST_ALERTS),
            recent_decisions=rows(RECENT_DECISIONS_SQL, (alerts,), limit=RECENT_DECISIONS),
            recent_actions=rows(RECENT_ACTIONS_SQL, (corporate_actions,), limit=RECENT_ACTIONS),
            last_batches=rows(LAST_BATCHES_SQL, (load_batches,), limit=LAST_BATCHES),
            latest_rejects=rows(LATEST_REJECTS_SQL, (rejected_transactions,), batches=LAST_BATCHES,
                                limit=LATEST_REJECTS),
            investor_count=counts.investors, alert_count=counts.alerts, open_alert_count=counts.open_alerts,
            action_count=counts.actions,
            batch_count=counts.batches,
            reject_count=connection.execute(text(REJECT_COUNT_SQL), {"batches": LAST_BATCHES}).scalar_one(),
        )


def _cell(column, row):
    value = getattr(row, column.field)
    css = LEVEL_CLASSES.get(value, "") if column.css == "level" else column.css
    attribute = f' class="{css}"' if css else ""
    return f"<td{attribute}>{html.escape(column.show(value))}</td>"


def html_table(table_id, columns, rows):
    """A table of rows, every cell's text escaped; None when there are no rows."""
    if not rows:
        return None
    header = "".join(f"<th>{html.escape(column.header)}</th>" for column in columns)
    body = "\n".join("<tr>" + "".join(_cell(column, row) for column in columns) + "</tr>" for row in rows)
    return f'<table id="{table_id}">\n<thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _section(section_id, note, content):
    parts = [f'<section id="{section_id}">', f"<h2>{SECTIONS[section_id]}</h2>",
             f'<p class="note">{html.escape(note)}</p>']
    return "\n".join(parts + ([content] if content else []) + ["</section>"])


def _shown(rows, total, noun):
    """'50 of 1,234 alerts' when the table is cut, else 'all 12 alerts', or 'no alerts'."""
    if not total:
        return f"no {noun}"
    return f"{len(rows):,} of {total:,} {noun}" if total > len(rows) else f"all {total:,} {noun}"


def charts_section(charts, investor_count):
    """The dashboards as inline PNG images (charts maps a caption to PNG bytes)."""
    if investor_count == 0:
        return _section("charts", "No portfolios yet: load trades and run update_portfolio.py.", None)
    figures = [f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
               f'{base64.b64encode(png).decode("ascii")}"><figcaption>{html.escape(caption)}</figcaption></figure>'
               for caption, png in charts.items()]
    return _section("charts", "Drawn by analyze.py from the same database.", "\n".join(figures))


def totals_section(totals):
    """The sums of dividend income and fees paid over every investor, and the cost method."""
    if totals.investors == 0:
        return _section("totals", "No portfolios yet.", None)
    return _section("totals", "Over every investor, in currency units: cash dividends received and fees of the "
                    "trades applied. Cost method: wac is weighted average cost, fifo first in, first out.",
                    html_table("totals-table", TOTAL_COLUMNS, [totals]))


def table_sections(data):
    """The sections of totals, top risks, latest alerts, corporate actions applied, last batches and their rejects."""
    return [
        totals_section(data.totals),
        _section("top-risks", f"Investors by risk score, highest first: "
                 f"{_shown(data.top_risks, data.investor_count, 'investors')}. Money in currency units.",
                 html_table("risk-table", RISK_COLUMNS, data.top_risks)),
        _section("alerts", f"Newest first: {_shown(data.latest_alerts, data.alert_count, 'alerts')}, "
                 f"{data.open_alert_count:,} of them open. A resolved alert shows when, by whom and why: a person's "
                 "decision (python alerts.py resolve ID --note TEXT), or the stage that saw its condition clear.",
                 html_table("alert-table", ALERT_COLUMNS, data.latest_alerts)),
        _section("decisions", f"Resolved alerts, the latest resolution first: "
                 f"{_shown(data.recent_decisions, data.alert_count - data.open_alert_count, 'resolved alerts')}; "
                 "python alerts.py --all lists every one.",
                 html_table("decision-table", DECISION_COLUMNS, data.recent_decisions)),
        _section("actions", f"Applied to positions, latest ex_date first: "
                 f"{_shown(data.recent_actions, data.action_count, 'corporate actions applied')}. Value: SPLIT new "
                 "shares per old share, DIVIDEND cash per share in currency units.",
                 html_table("action-table", ACTION_COLUMNS, data.recent_actions)),
        _section("batches", f"Newest first: {_shown(data.last_batches, data.batch_count, 'batches')}.",
                 html_table("batch-table", BATCH_COLUMNS, data.last_batches)),
        _section("rejects", f"Of the batches above, newest batch first: "
                 f"{_shown(data.latest_rejects, data.reject_count, 'rejected rows')}.",
                 html_table("reject-table", REJECT_COLUMNS, data.latest_rejects)),
    ]


def page_head(refresh_seconds):
    """The page's head: charset, the reload every refresh_seconds (none for 0), title and style."""
    refresh = [f'<meta http-equiv="refresh" content="{refresh_seconds}">'] if refresh_seconds else []
    return "\n".join(["<head>", '<meta charset="utf-8">', *refresh, "<title>stock-etl report</title>",
                      f"<style>{STYLE}</style>", "</head>"])


def render_page(data, charts, generated_at, refresh_seconds=DEFAULT_REFRESH_SECONDS):
    """The whole page as text (refresh_seconds: a whole number of seconds, 0 for no reload)."""
    reloads = f"; reloads every {refresh_seconds} s" if refresh_seconds else ""
    generated = (f'<p class="note" id="generated">Generated '
                 f'<time datetime="{generated_at.isoformat(timespec="seconds")}">'
                 f'{generated_at.strftime("%Y-%m-%d %H:%M:%S")}</time>{reloads}.</p>')
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', page_head(refresh_seconds), "<body>",
                      "<h1>stock-etl report</h1>", generated, NAVIGATION, charts_section(charts, data.investor_count),
                      *table_sections(data), "</body>", "</html>", ""])


def replace_file(path, content):
    """Write text to a temporary file beside `path`, then rename it over `path` (atomic on one file system),
    keeping the permissions a person gave the file it replaces."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")  # one writer per process at a time
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(content)
        with suppress(FileNotFoundError):
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    finally:
        with suppress(FileNotFoundError):  # gone after os.replace; left only by a failed write
            os.remove(temporary)


def write_html_report(engine, path, charts, refresh_seconds=DEFAULT_REFRESH_SECONDS):
    """Read the tables, build the page around `charts` ({caption: PNG bytes}) and write it atomically; return path."""
    data = read_report_data(engine)
    replace_file(path, render_page(data, charts, datetime.now(), refresh_seconds))
    logger.info("%s written: %d charts, %d of %d investors, %d of %d alerts, %d of %d batches", path, len(charts),
                len(data.top_risks), data.investor_count, len(data.latest_alerts), data.alert_count,
                len(data.last_batches), data.batch_count)
    return path
