"""Draw the portfolio and risk dashboards and print a plain-text summary, or one investor's risk card.

Last stage of the chain (after update_portfolio.py and surveillance.py). Reads portfolios, investor_risk,
stocks, alerts, transactions and ledger_settings; writes reports/dashboard.png (market value by investor and
symbol, investor x sector concentration, risk levels, realized vs unrealized P&L, alerts by rule, market value by
symbol; dividend income, fees paid and the cost method under the title) and reports/risk.png (alerts by trade
date and rule, VaR and expected shortfall, drawdown and volatility), and prints totals (dividend income and fees
paid among them), the 10 riskiest investors and alert counts. `--investor ID` instead prints and draws only that
investor's risk card, reports/investor_ID.png, with its dividend income and fees paid (in all and per position),
the cost method, its time- and money-weighted returns (investor_returns) and its market value per day with the
drawdowns shaded (investor_daily). `--html` also writes reports/index.html, one self-contained page (the two
dashboards inline, the totals, the top risks, latest alerts, corporate actions applied, last load batches and their
rejects) that reloads itself every --refresh seconds; with --no-plots it is the only file written. Headless by
default (cron, ssh); --show also opens the windows.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import functools
import io
import logging
import math
import os
import sys
import textwrap

import matplotlib
import pandas as pd
from matplotlib import dates as mdates, ticker
from matplotlib.lines import Line2D
from sqlalchemy import text

import cli
import db_config
import html_report
from schema import RETURN_PERIODS, Amount

logger = logging.getLogger(__name__)

TOP_INVESTORS = 15  # bars per chart: readable at 100 investors
TOP_SYMBOLS = 8
HEATMAP_INVESTORS = 20
RISK_COLORS = {"LOW": "#4caf50", "MEDIUM": "#ffc107", "HIGH": "#ff7043", "CRITICAL": "#c62828"}
SIZE_LEGEND_WEIGHTS = (0.25, 0.5, 1.0)  # top position weights shown in the drawdown scatter's size legend
WEEKLY_AFTER_DAYS = 60  # alerts spanning more days are counted per week
OTHER_SHARE = 0.03  # sectors under 3% of an investor's market value share one 'Other' slice
PIE_LABEL_SHARE = 0.05  # a wedge this big has room for its percentage
MONEY_SUFFIXES = ((1e9, "B"), (1e6, "M"), (1e3, "k"))
PNL_LABELS = {"realized_pnl": "realized P&L", "unrealized_pnl": "unrealized P&L"}
LOSS_LABELS = {"var_95_1d": "1-day 95% VaR", "expected_shortfall_95_1d": "expected shortfall"}
CARD_TEXT_WIDTH, CARD_TEXT_LINES = 105, 36  # characters and lines of the card's text panel at fontsize 7
PNG_DPI = 100  # the dashboards are 1600 x 1700 and 1600 x 1100 pixels
CHART_CAPTIONS = {"dashboard.png": "Portfolio and risk dashboard", "risk.png": "Surveillance and risk metrics"}

POSITIONS_SQL = """
SELECT p.investor_id, p.stock_symbol, s.sector, p.quantity, p.market_value, p.cost_basis, p.realized_pnl,
       p.unrealized_pnl, p.dividend_income, p.fees_paid, p.weight, p.risk_score, p.risk_level
FROM portfolios p
JOIN stocks s ON s.stock_symbol = p.stock_symbol
"""
INVESTOR_RISK_SQL = """
SELECT r.investor_id, i.name, r.total_market_value, r.total_cost_basis, r.realized_pnl, r.unrealized_pnl,
       r.dividend_income, r.fees_paid, r.open_positions, r.top_position_weight, r.hhi, r.top_sector_weight,
       r.risk_score, r.risk_level, r.portfolio_volatility, r.var_95_1d, r.expected_shortfall_95_1d,
       r.parametric_var_95_1d, r.max_drawdown
FROM investor_risk r
JOIN investors i ON i.investor_id = r.investor_id
"""
ALERTS_SQL = """
WITH investor_last_trades AS (
    SELECT investor_id, MAX(last_txn_time) AS last_txn_time  -- the investor's latest trade over all positions
    FROM portfolios
    GROUP BY investor_id
),
dated_alerts AS (
    SELECT a.rule, a.severity, a.status, a.investor_id, a.stock_symbol, a.txn_ref, a.details, a.detected_at,
           t.txn_time,                           -- a trade's alert: the trade's time
           p.last_txn_time AS position_time,     -- a position's alert (no trade): the position's last trade
           i.last_txn_time AS investor_time      -- an investor's alert (no trade, no symbol): their last trade
    FROM alerts a
    LEFT JOIN transactions t ON t.txn_ref = a.txn_ref
    LEFT JOIN portfolios p
           ON a.txn_ref IS NULL AND p.investor_id = a.investor_id AND p.stock_symbol = a.stock_symbol
    LEFT JOIN investor_last_trades i
           ON a.txn_ref IS NULL AND a.stock_symbol IS NULL AND i.investor_id = a.investor_id
)
SELECT rule, severity, status, investor_id, stock_symbol, txn_ref, details, detected_at,
       COALESCE(txn_time, position_time, investor_time, detected_at) AS alert_time
FROM dated_alerts
"""
RETURNS_SQL = """
SELECT investor_id, period, start_date, end_date, twr, irr
FROM investor_returns
"""
DAILY_SQL = """
SELECT value_date, market_value
FROM investor_daily
WHERE investor_id = :investor_id
ORDER BY value_date
"""
TEXT_COLUMNS = ("name", "stock_symbol", "sector", "risk_level", "rule", "severity", "status", "txn_ref", "details",
                "detected_at", "alert_time", "period", "start_date", "end_date", "value_date")
EXACT_MONEY_COLUMNS = ("dividend_income", "fees_paid")  # kept as Decimals: only shown as text and summed


def _query(sql):
    """The query with EXACT_MONEY_COLUMNS typed as money: Decimals on every database (SQLite hands back floats)."""
    return text(sql).columns(**{column: Amount for column in EXACT_MONEY_COLUMNS})


def read_dashboard_data(engine, investor_id=None):
    """Positions, investor risk, alerts and returns as DataFrames (money as float, for drawing, except
    EXACT_MONEY_COLUMNS: Decimals, summed and shown to the cent), the cost method the positions are kept by ('wac'
    or 'fifo'), and "daily": the market value per day of investor_id (empty without one)."""
    with engine.connect() as connection:
        data = {name: pd.read_sql_query(_query(sql), connection, coerce_float=False) for name, sql in (
            ("positions", POSITIONS_SQL), ("investors", INVESTOR_RISK_SQL), ("alerts", ALERTS_SQL),
            ("returns", RETURNS_SQL))}
        data["daily"] = pd.read_sql_query(text(DAILY_SQL), connection, params={"investor_id": investor_id})
        method = html_report.method_in_use(connection)
    for frame in data.values():
        for column in frame.columns:
            if column not in TEXT_COLUMNS + EXACT_MONEY_COLUMNS and not pd.api.types.is_numeric_dtype(frame[column]):
                frame[column] = pd.to_numeric(frame[column])
    data["alerts"]["alert_time"] = pd.to_datetime(data["alerts"]["alert_time"])  # SQLite returns text
    data["daily"]["value_date"] = pd.to_datetime(data["daily"]["value_date"])
    data["cost_method"] = method
    return data


def income_text(investors, method):
    """Dividend income and fees paid summed over `investors` (Decimals, to the cent) and the cost method, one line."""
    dividends, fees = investors["dividend_income"].sum(), investors["fees_paid"].sum()
    return f"Dividend income {dividends:,.2f}; fees paid {fees:,.2f}; cost method {method}"


def summary_text(data):
    """Totals, the 10 riskiest investors and alert counts, as plain text."""
    investors, positions, alert_rows = data["investors"], data["positions"], data["alerts"]
    if investors.empty:
        return "No portfolios yet: load trades (load_transactions.py) and run update_portfolio.py first."
    lines = [
        f"Investors with positions: {len(investors)}; open positions: {int((positions['quantity'] > 0).sum())} "
        f"of {len(positions)}",
        f"Market value {investors['total_market_value'].sum():,.2f}; "
        f"cost basis {investors['total_cost_basis'].sum():,.2f}; "
        f"realized P&L {investors['realized_pnl'].sum():,.2f}; unrealized P&L {investors['unrealized_pnl'].sum():,.2f}",
        "Risk levels: " + ", ".join(f"{level} {count}" for level, count in
                                    investors["risk_level"].value_counts().reindex(list(RISK_COLORS), fill_value=0)
                                    .items()),
        income_text(investors, data["cost_method"]),
        "",
        "10 riskiest investors:",
        f"{'investor':>8}  {'name':<20} {'score':>6} {'level':<8} {'market value':>14} {'top weight':>10} {'HHI':>6}",
    ]
    for row in investors.sort_values(["risk_score", "investor_id"], ascending=[False, True]).head(10).itertuples():
        lines.append(f"{row.investor_id:>8}  {row.name[:20]:<20} {row.risk_score:>6.2f} {row.risk_level:<8} "
                     f"{row.total_market_value:>14,.2f} {row.top_position_weight:>10.1%} {row.hhi:>6.3f}")
    return "\n".join(lines + ["", *alert_lines(alert_rows)])


def alert_lines(alert_rows):
    """The alert counts: open and resolved in all, then per rule and severity (resolved ones stay in the history)."""
    is_open = alert_rows["status"] == "OPEN"
    lines = [f"Alerts: {int(is_open.sum())} open, {int((~is_open).sum())} resolved"]
    if not alert_rows.empty:
        counts = alert_rows.assign(open=is_open).groupby(["rule", "severity"])["open"].agg(["size", "sum"])
        lines += [f"  {rule:<22} {severity:<6} {row['size']} ({row['sum']} open)"
                  for (rule, severity), row in counts.iterrows()]
    return lines


def format_money(value, _position=None):
    """A money tick label in currency units: $350k, $1.2M, -$40k, $75 (a matplotlib FuncFormatter)."""
    sign, size = ("-" if value < 0 else ""), abs(value)
    for divisor, suffix in MONEY_SUFFIXES:
        if size >= divisor:
            return f"{sign}${size / divisor:.2f}".rstrip("0").rstrip(".") + suffix
    return f"{sign}${size:.2f}".rstrip("0").rstrip(".")


def _money_axis(axis):
    """Currency tick labels and no offset text ('1e6') on a matplotlib XAxis or YAxis."""
    axis.set_major_formatter(ticker.FuncFormatter(format_money))


def _set_theme():
    import seaborn as sns

    sns.set_theme(style="whitegrid", font_scale=0.8)


def _no_data(ax, message):
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)


def draw_dashboard(data):
    """The six-panel portfolio dashboard as a matplotlib Figure (the caller saves and closes it)."""
    import matplotlib.pyplot as plt

    _set_theme()
    figure, axes = plt.subplots(3, 2, figsize=(16, 17))
    _value_by_investor_and_symbol(axes[0, 0], data["positions"], data["investors"])
    _sector_heatmap(axes[0, 1], data["positions"], data["investors"])
    _risk_levels(axes[1, 0], data["investors"])
    _pnl(axes[1, 1], data["investors"])
    _alerts_by_rule(axes[2, 0], data["alerts"])
    _value_by_symbol(axes[2, 1], data["positions"])
    figure.suptitle("stock-etl portfolio and risk dashboard", fontsize=14)
    figure.text(0.5, 0.962, income_text(data["investors"], data["cost_method"]), ha="center", va="center",
                fontsize=10, gid="income")
    figure.tight_layout(rect=(0, 0, 1, 0.955))
    return figure


def _top_investors(investors, count):
    return investors.sort_values("total_market_value", ascending=False).head(count)["investor_id"].tolist()


def _value_by_investor_and_symbol(ax, positions, investors):
    top = _top_investors(investors, TOP_INVESTORS)
    frame = positions[positions["investor_id"].isin(top) & (positions["market_value"] > 0)]
    symbols = frame.groupby("stock_symbol")["market_value"].sum().nlargest(TOP_SYMBOLS).index
    frame = frame.assign(symbol=frame["stock_symbol"].where(frame["stock_symbol"].isin(symbols), "other"))
    table = frame.pivot_table(index="investor_id", columns="symbol", values="market_value", aggfunc="sum", fill_value=0)
    table = table.reindex(top[::-1]).fillna(0)
    if not table.empty:
        table.plot.barh(stacked=True, ax=ax, width=0.8, colormap="tab10")
        ax.legend(title="symbol", fontsize=7, ncol=3)
    ax.set(title=f"Market value by investor and symbol (top {TOP_INVESTORS} investors)", xlabel="market value",
           ylabel="investor")
    ax.set_xlim(left=0)
    _money_axis(ax.xaxis)


def _sector_heatmap(ax, positions, investors):
    import seaborn as sns

    top = _top_investors(investors, HEATMAP_INVESTORS)
    weights = positions[positions["investor_id"].isin(top)].pivot_table(
        index="investor_id", columns="sector", values="weight", aggfunc="sum", fill_value=0).reindex(top)
    if not weights.empty:
        sns.heatmap(weights, ax=ax, cmap="Reds", vmin=0, vmax=1, annot=True, fmt=".2f", annot_kws={"size": 6},
                    cbar_kws={"label": "share of market value"})
    ax.set(title=f"Concentration: sector weights (top {HEATMAP_INVESTORS} investors by value)", xlabel="",
           ylabel="investor")


def _risk_levels(ax, investors):
    import seaborn as sns

    counts = investors["risk_level"].value_counts().reindex(list(RISK_COLORS), fill_value=0)
    sns.barplot(x=counts.index, y=counts.values, hue=counts.index, palette=RISK_COLORS, legend=False, ax=ax)
    ax.set(title="Investors by risk level", xlabel="risk level", ylabel="investors")


def _pnl(ax, investors):
    ranked = investors.assign(total=investors["realized_pnl"].abs() + investors["unrealized_pnl"].abs())
    top = ranked.sort_values("total", ascending=False).head(TOP_INVESTORS).sort_values("total")
    top.set_index("investor_id")[list(PNL_LABELS)].rename(columns=PNL_LABELS).plot.barh(
        ax=ax, color=["#1976d2", "#90caf9"])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(title=f"Realized vs unrealized P&L (top {TOP_INVESTORS} by size)", xlabel="P&L", ylabel="investor")
    _money_axis(ax.xaxis)


def _alerts_by_rule(ax, alert_rows):
    import seaborn as sns

    if alert_rows.empty:
        _no_data(ax, "no alerts")
    else:
        counts = alert_rows.groupby(["rule", "severity"]).size().reset_index(name="alerts")
        sns.barplot(data=counts, y="rule", x="alerts", hue="severity", ax=ax,
                    palette={"LOW": "#4caf50", "MEDIUM": "#ffc107", "HIGH": "#c62828"})
    ax.set(title="Alerts by rule", xlabel="alerts", ylabel="")


def _value_by_symbol(ax, positions):
    import seaborn as sns

    values = positions.groupby("stock_symbol")["market_value"].sum().nlargest(TOP_INVESTORS)
    sns.barplot(x=values.values, y=values.index, ax=ax, color="#5c6bc0")
    ax.set(title=f"Market value by symbol (top {TOP_INVESTORS})", xlabel="market value", ylabel="")
    _money_axis(ax.xaxis)


def draw_risk_dashboard(data):
    """Alerts by date and rule, VaR and expected shortfall, drawdown and volatility as a matplotlib Figure."""
    import matplotlib.pyplot as plt

    _set_theme()
    figure, axes = plt.subplots(2, 2, figsize=(16, 11))
    _alerts_by_date(axes[0, 0], data["alerts"])
    _alerts_by_rule(axes[0, 1], data["alerts"])
    _value_at_risk(axes[1, 0], data["investors"])
    _drawdown_and_volatility(axes[1, 1], data["investors"])
    figure.suptitle("stock-etl surveillance and risk metrics", fontsize=14)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    return figure


def alerts_by_date(alert_rows):
    """Alert counts per day (per week, from Monday, when they span more than WEEKLY_AFTER_DAYS) and rule.

    Returns (a DataFrame indexed by the first day of each bin, one column per rule; the bin length in days).
    """
    days = pd.to_datetime(alert_rows["alert_time"]).dt.normalize().rename("day")
    table = pd.crosstab(days, alert_rows["rule"])
    if (table.index.max() - table.index.min()).days <= WEEKLY_AFTER_DAYS:
        return table, 1
    return table.resample("W-MON", label="left", closed="left").sum(), 7


def _alerts_by_date(ax, alert_rows):
    ax.set(title="Alerts per day, by date of the trade and rule", ylabel="alerts",
           xlabel="trade date; position alerts (no trade): the position's last trade; "
                  "sector alerts: the investor's latest trade")
    if alert_rows.empty:
        _no_data(ax, "no alerts")
        return
    table, bin_days = alerts_by_date(alert_rows)
    position_rules = set(alert_rows["rule"]) - set(alert_rows.loc[alert_rows["txn_ref"].notna(), "rule"])
    starts, bottom = table.index.to_pydatetime(), pd.Series(0, index=table.index)
    for rule in table.columns:  # stacked bars, each spanning its day or week on a real time axis
        ax.bar(starts, table[rule], width=0.9 * bin_days, bottom=bottom, align="edge",
               label=f"{rule} (no trade)" if rule in position_rules else rule)
        bottom = bottom + table[rule]
    _date_axis(ax.xaxis)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(title="rule", fontsize=7)
    if bin_days == 7:
        ax.set_title("Alerts per week (from Monday), by date of the trade and rule")


def _date_axis(axis):
    """Dates as ticks that fit: years, months or days as the span needs."""
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    axis.set_major_locator(locator)
    axis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _value_at_risk(ax, investors):
    ranked = investors.dropna(subset=["var_95_1d"]).nlargest(TOP_INVESTORS, "var_95_1d").sort_values("var_95_1d")
    if ranked.empty:
        _no_data(ax, "no price history")
    else:
        ranked.set_index("investor_id")[list(LOSS_LABELS)].rename(columns=LOSS_LABELS).plot.barh(
            ax=ax, color=["#ef6c00", "#b71c1c"])
    ax.set(title=f"1-day 95% Value at Risk and expected shortfall (top {TOP_INVESTORS})", xlabel="loss",
           ylabel="investor")
    _money_axis(ax.xaxis)


def _marker_area(top_position_weight):
    """Scatter marker area in points squared for a top position weight (0..1)."""
    return 20 + 80 * top_position_weight


def _drawdown_and_volatility(ax, investors):
    ax.set(title="Max drawdown vs annualized volatility, one dot per investor", xlabel="annualized volatility",
           ylabel="max drawdown")
    known = investors.dropna(subset=["portfolio_volatility"])
    if known.empty:
        _no_data(ax, "no price history")
        return
    ax.scatter(known["portfolio_volatility"], known["max_drawdown"], s=_marker_area(known["top_position_weight"]),
               c=known["risk_level"].map(RISK_COLORS), alpha=0.8, edgecolors="black", linewidths=0.3)
    for row in known.nlargest(5, "max_drawdown").itertuples():
        ax.annotate(str(row.investor_id), (row.portfolio_volatility, row.max_drawdown), fontsize=7)
    _scatter_legends(ax)
    ax.xaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))


def _scatter_legends(ax):
    """Two legends for the drawdown scatter: colour is the risk level, size the top position weight."""
    def dot(color, area):
        return Line2D([], [], linestyle="", marker="o", markersize=area ** 0.5, markerfacecolor=color,
                      markeredgecolor="black", markeredgewidth=0.3, alpha=0.8)

    colours = ax.legend([dot(color, _marker_area(0.5)) for color in RISK_COLORS.values()], list(RISK_COLORS),
                        title="risk level", loc="upper left", fontsize=7, title_fontsize=8)
    ax.add_artist(colours)  # a second ax.legend() call would replace the first
    ax.legend([dot("#9e9e9e", _marker_area(weight)) for weight in SIZE_LEGEND_WEIGHTS],
              [f"{weight:.0%}" for weight in SIZE_LEGEND_WEIGHTS], title="top position weight", loc="lower right",
              fontsize=7, title_fontsize=8, labelspacing=1.2, borderpad=0.8)


RISK_METRIC_TEXTS = (("portfolio_volatility", "volatility {:.1%}/year"), ("var_95_1d", "1-day 95% VaR {:,.2f}"),
                     ("expected_shortfall_95_1d", "expected shortfall {:,.2f}"),
                     ("parametric_var_95_1d", "parametric VaR {:,.2f}"), ("max_drawdown", "max drawdown {:.1%}"))


def risk_metric_texts(row):
    """The investor's risk metrics as texts, those it has (each is NULL without enough history)."""
    return [template.format(row[name]) for name, template in RISK_METRIC_TEXTS if pd.notna(row.get(name))]


def investor_card_text(data, investor_id):
    """One investor's holdings, P&L, dividend income, fees paid, weights, risk metrics and alerts, and the cost
    method, as plain text."""
    risk = data["investors"][data["investors"]["investor_id"] == investor_id]
    if risk.empty:
        raise cli.InputError(f"investor {investor_id} has no portfolio (unknown investor, or no trades applied yet)")
    row = risk.iloc[0]
    lines = [f"Investor {investor_id} {row['name']}: risk {row['risk_score']:.2f} {row['risk_level']}, "
             f"market value {row['total_market_value']:,.2f}, realized P&L {row['realized_pnl']:,.2f}, "
             f"unrealized P&L {row['unrealized_pnl']:,.2f}",
             f"  dividend income {row['dividend_income']:,.2f}, fees paid {row['fees_paid']:,.2f}, "
             f"cost method {data['cost_method']}"]
    metrics = risk_metric_texts(row)
    if metrics:
        lines.append("  " + ", ".join(metrics))
    lines += returns_lines(data["returns"][data["returns"]["investor_id"] == investor_id])
    held = data["positions"][data["positions"]["investor_id"] == investor_id].sort_values(
        "market_value", ascending=False)
    lines += position_lines(held)
    alert_rows = data["alerts"][data["alerts"]["investor_id"] == investor_id]
    lines.append(f"  alerts: {len(alert_rows)}")
    lines += [f"    {a.rule} ({a.severity}): {a.details}" for a in alert_rows.head(20).itertuples()]
    return "\n".join(lines)


PERIOD_WIDTH, RETURN_LABEL_WIDTH = 9, 24  # characters of a period column and of the returns table's labels


def returns_lines(returns):
    """The investor's returns as a small table: time-weighted and money-weighted, one column per period ('n/a' where
    the period has no value), and what the IRR of a period longer than a year is."""
    if returns.empty:
        return ["  returns: none yet (update_portfolio.py computes them)"]
    by_period = returns.set_index("period").reindex(list(RETURN_PERIODS))
    title = f"returns to {str(by_period['end_date'].dropna().max())[:10]}"
    lines = [f"  {title:<{RETURN_LABEL_WIDTH}}" + "".join(f"{period:>{PERIOD_WIDTH}}" for period in RETURN_PERIODS)]
    for label, column in (("time-weighted (TWR)", "twr"), ("money-weighted (IRR)", "irr")):
        lines.append(f"    {label:<{RETURN_LABEL_WIDTH - 2}}"
                     + "".join(f"{_percent(value):>{PERIOD_WIDTH}}" for value in by_period[column]))
    lines.append("    (IRR annualized beyond a year; n/a: the account is younger than the period, or held nothing)")
    return lines


def _percent(value):
    return "n/a" if value is None or pd.isna(value) else f"{float(value):+.2%}"


def position_lines(held):
    """Two lines per position (one would not fit the card's text panel): shares, value, weight, P&L and risk
    level; then its dividend income and fees paid, to the cent."""
    lines = []
    for p in held.itertuples():
        lines += [f"  {p.stock_symbol:<6} {p.quantity:>8} shares  value {p.market_value:>14,.2f}  "
                  f"weight {p.weight:>6.1%}  unrealized {p.unrealized_pnl:>12,.2f}  realized {p.realized_pnl:>12,.2f}  "
                  f"{p.risk_level}",
                  f"{'':26}dividends {p.dividend_income:>10,.2f}  fees {p.fees_paid:>10,.2f}"]
    return lines


def draw_investor_card(data, investor_id):
    """One investor's risk card (market value per day with its drawdowns, holdings, P&L, sector weights; metrics,
    returns, dividend income, fees paid and alerts in the text panel) as a matplotlib Figure."""
    import matplotlib.pyplot as plt

    _set_theme()
    held = data["positions"][data["positions"]["investor_id"] == investor_id]
    open_positions = held[held["quantity"] > 0].sort_values("market_value")
    figure = plt.figure(figsize=(15, 14))
    grid = figure.add_gridspec(3, 2, height_ratios=(4, 5, 5))
    _value_over_time(figure.add_subplot(grid[0, :]), data["daily"])
    _holdings(figure.add_subplot(grid[1, 0]), open_positions)
    _pnl_by_symbol(figure.add_subplot(grid[1, 1]), held)
    _sector_pie(figure.add_subplot(grid[2, 0]), open_positions)
    panel = figure.add_subplot(grid[2, 1])
    panel.axis("off")
    panel.text(0, 1, fit_card_text(investor_card_text(data, investor_id)), va="top", family="monospace", fontsize=7)
    figure.suptitle(f"Risk card: investor {investor_id}", fontsize=14)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    return figure


def fit_card_text(text, width=CARD_TEXT_WIDTH, lines=CARD_TEXT_LINES):
    """The card's text fitted to the panel: long lines wrapped, lines past the last replaced by how many were left."""
    rows = [part for row in text.replace("  ", " ").splitlines()
            for part in textwrap.wrap(row, width, subsequent_indent="      ") or [""]]
    if len(rows) > lines:
        rows = rows[:lines - 1] + [f"… {len(rows) - lines + 1} more lines: see the printed card"]
    return "\n".join(rows)


def drawdown_spans(values):
    """The running peak of a value series (a pandas Series) and where the value is below it (a boolean Series)."""
    peak = values.cummax()
    return peak, values < peak


def _value_over_time(ax, daily):
    ax.set(title="Market value per day (investor_daily), drawdowns from the running peak shaded", xlabel="",
           ylabel="market value")
    if daily.empty:
        _no_data(ax, "no daily values yet: update_portfolio.py builds them")
        return
    values = daily["market_value"].astype(float)
    peak, below = drawdown_spans(values)
    ax.plot(daily["value_date"], values, color="#1976d2", linewidth=1.2, label="market value")
    ax.fill_between(daily["value_date"], values, peak, where=below, color="#e53935", alpha=0.3, linewidth=0,
                    label="drawdown (running peak to value)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left")
    _date_axis(ax.xaxis)
    _money_axis(ax.yaxis)


def _holdings(ax, open_positions):
    if open_positions.empty:
        return _no_data(ax, "no open position")
    open_positions.plot.barh(x="stock_symbol", y="market_value", ax=ax, legend=False, color="#5c6bc0")
    ax.set(title="Market value by holding", xlabel="market value", ylabel="")
    _money_axis(ax.xaxis)


def _pnl_by_symbol(ax, held):
    held.set_index("stock_symbol")[list(PNL_LABELS)].rename(columns=PNL_LABELS).plot.bar(
        ax=ax, color=["#1976d2", "#90caf9"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(title="Realized and unrealized P&L by symbol", xlabel="", ylabel="P&L")
    _money_axis(ax.yaxis)


def sector_shares(open_positions):
    """Each sector's share of the open market value, largest first; sectors under OTHER_SHARE together as 'Other'."""
    shares = open_positions.groupby("sector")["market_value"].sum()
    shares = (shares / shares.sum()).sort_values(ascending=False)
    small = shares < OTHER_SHARE
    if small.sum() < 2:  # one small sector keeps its name: 'Other' would hide it and save no room
        return shares
    other = pd.Series({f"Other ({small.sum()} sectors)": shares[small].sum()})
    return pd.concat([shares[~small], other])


def _sector_pie(ax, open_positions):
    shares = sector_shares(open_positions) if open_positions["market_value"].sum() > 0 else pd.Series(dtype=float)
    if shares.empty:
        _no_data(ax, "no open positions")
    else:  # names in a legend beside the pie, percentages on the wedges that have room for them
        wedges, _texts = ax.pie(shares.values, startangle=90, counterclock=False,
                                wedgeprops={"linewidth": 0.8, "edgecolor": "white"})
        for wedge, share in zip(wedges, shares.values):
            if share >= PIE_LABEL_SHARE:
                ax.text(*_wedge_middle(wedge), f"{share:.0%}", ha="center", va="center", fontsize=8)
        ax.legend(wedges, [f"{sector} {share:.1%}" for sector, share in shares.items()], loc="center left",
                  bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    ax.set(title=f"Weights by sector (under {OTHER_SHARE:.0%} together as Other)")


def _wedge_middle(wedge, radius=0.65):
    """The point at `radius` of the pie's radius in the middle of a wedge's angle (where a percentage goes)."""
    angle = math.radians((wedge.theta1 + wedge.theta2) / 2)
    return wedge.center[0] + radius * wedge.r * math.cos(angle), wedge.center[1] + radius * wedge.r * math.sin(angle)


def figure_png(figure):
    """A Figure rendered as PNG bytes, at PNG_DPI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


def render_figures(figures, show=False):
    """Each Figure of {name: Figure} as PNG bytes; `show` also opens the windows; the Figures are closed after."""
    import matplotlib.pyplot as plt

    try:
        pngs = {name: figure_png(figure) for name, figure in figures.items()}
        if show:
            plt.show()
    finally:
        for figure in figures.values():  # a long-running caller (master_etl in a loop) must not pile up figures
            plt.close(figure)
    return pngs


def write_pngs(report_dir, pngs):
    """Write each PNG of {file name: bytes} into report_dir (created when needed); return the paths."""
    if pngs:
        os.makedirs(report_dir, exist_ok=True)
    paths = []
    for name, png in pngs.items():
        path = os.path.join(report_dir, name)
        with open(path, "wb") as file:
            file.write(png)
        paths.append(path)
    return paths


def analyze(engine, report_dir="reports", plots=True, show=False, investor_id=None, html=False,
            refresh_seconds=html_report.DEFAULT_REFRESH_SECONDS):
    """Print the summary and draw both dashboards, or with `investor_id` only that investor's card; return the paths.

    With `html` also write report_dir/index.html around the same drawings (drawn once, also when not `plots`).
    """
    data = read_dashboard_data(engine, investor_id)
    if investor_id is None:
        print(summary_text(data))
        drawings = {"dashboard.png": draw_dashboard, "risk.png": draw_risk_dashboard}
    else:
        print(investor_card_text(data, investor_id))
        drawings = {f"investor_{investor_id}.png": functools.partial(draw_investor_card, investor_id=investor_id)}
    drawn = (plots or html) and not data["investors"].empty
    pngs = render_figures({name: draw(data) for name, draw in drawings.items()}, show and plots) if drawn else {}
    paths = write_pngs(report_dir, pngs) if plots else []
    if html:
        charts = {CHART_CAPTIONS.get(name, name): png for name, png in pngs.items()}
        paths.append(html_report.write_html_report(engine, os.path.join(report_dir, html_report.PAGE_NAME), charts,
                                                   refresh_seconds))
    if paths:
        print(f"written: {', '.join(paths)}")
    return paths


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--show", action="store_true", help="also open the dashboards in windows")
    parser.add_argument("--reports", default=db_config.project_path("reports"),
                        help="folder for the PNG files and the page (default: reports/ in the project folder)")
    parser.add_argument("--no-plots", action="store_true",
                        help="write no PNG files (the summary only; with --html only the page)")
    parser.add_argument("--investor", type=cli.database_id, metavar="ID",
                        help="print and draw only this investor's risk card (no summary, no dashboards)")
    parser.add_argument("--html", action="store_true",
                        help="also write index.html in the reports folder: the dashboards, top risks, latest alerts, "
                             "load batches and rejects on one self-contained page")
    parser.add_argument("--refresh", type=int, default=html_report.DEFAULT_REFRESH_SECONDS, metavar="SECONDS",
                        help="with --html: the page reloads itself this often (default: %(default)s; 0: never)")
    args = parser.parse_args(argv)
    if args.html and args.investor is not None:
        parser.error("--html writes the dashboards' page and --investor one investor's card: run them separately")
    if args.refresh < 0:
        parser.error(f"--refresh must be 0 (no reload) or a number of seconds, not {args.refresh}")
    if args.refresh != html_report.DEFAULT_REFRESH_SECONDS and not args.html:
        parser.error("--refresh applies to --html only")
    cli.setup_logging(args)
    if not args.show:
        matplotlib.use("Agg")  # no display needed: cron, ssh, CI

    def work():
        engine = db_config.get_engine(args.database_url)
        analyze(engine, args.reports, plots=not args.no_plots, show=args.show, investor_id=args.investor,
                html=args.html, refresh_seconds=args.refresh)
        return cli.EXIT_OK

    return cli.run(work, args, "analyze")


if __name__ == "__main__":
    sys.exit(main())
