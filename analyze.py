"""Draw the portfolio and risk dashboards and print a plain-text summary.

Last stage of the chain (after update_portfolio.py and surveillance.py). Reads portfolios, investor_risk,
stocks and alerts; writes reports/dashboard.png (market value by investor and symbol, investor x sector
concentration, risk levels, realized vs unrealized P&L, alerts by rule, market value by symbol) and
reports/risk.png (alerts by day and rule, VaR and expected shortfall, drawdown and volatility), and prints
totals, the 10 riskiest investors and alert counts. `--investor ID` also draws that investor's risk card,
reports/investor_ID.png. Headless by default (cron, ssh); --show also opens the windows.
"""
import logging
import os
import sys

import matplotlib
import pandas as pd

import cli
import db_config

logger = logging.getLogger(__name__)

TOP_INVESTORS = 15  # bars per chart: readable at 100 investors
TOP_SYMBOLS = 8
HEATMAP_INVESTORS = 20
RISK_COLORS = {"LOW": "#4caf50", "MEDIUM": "#ffc107", "HIGH": "#ff7043", "CRITICAL": "#c62828"}

POSITIONS_SQL = """
SELECT p.investor_id, p.stock_symbol, s.sector, p.quantity, p.market_value, p.cost_basis, p.realized_pnl,
       p.unrealized_pnl, p.weight, p.risk_score, p.risk_level
FROM portfolios p
JOIN stocks s ON s.stock_symbol = p.stock_symbol
"""
INVESTOR_RISK_SQL = """
SELECT r.investor_id, i.name, r.total_market_value, r.total_cost_basis, r.realized_pnl, r.unrealized_pnl,
       r.open_positions, r.top_position_weight, r.hhi, r.top_sector_weight, r.risk_score, r.risk_level,
       r.portfolio_volatility, r.var_95_1d, r.expected_shortfall_95_1d, r.max_drawdown
FROM investor_risk r
JOIN investors i ON i.investor_id = r.investor_id
"""
ALERTS_SQL = """
SELECT a.rule, a.severity, a.investor_id, a.stock_symbol, a.txn_ref, a.details, a.detected_at,
       COALESCE(t.txn_time, a.detected_at) AS alert_time  -- a trade's alert belongs to the trade's day
FROM alerts a
LEFT JOIN transactions t ON t.txn_ref = a.txn_ref
"""
TEXT_COLUMNS = ("name", "stock_symbol", "sector", "risk_level", "rule", "severity", "txn_ref", "details",
                "detected_at", "alert_time")


def read_dashboard_data(engine):
    """Positions, investor risk and alerts as DataFrames (money as float: for drawing, not for sums to the cent)."""
    with engine.connect() as connection:
        frames = {name: pd.read_sql_query(sql, connection) for name, sql in (
            ("positions", POSITIONS_SQL), ("investors", INVESTOR_RISK_SQL), ("alerts", ALERTS_SQL))}
    for frame in frames.values():
        for column in frame.columns:
            if column not in TEXT_COLUMNS and not pd.api.types.is_numeric_dtype(frame[column]):
                frame[column] = pd.to_numeric(frame[column])
    return frames


def summary_text(data):
    """Totals, the 10 riskiest investors and alert counts, as plain text."""
    investors, positions, alert_rows = data["investors"], data["positions"], data["alerts"]
    if investors.empty:
        return "No portfolios yet: load trades (load_transactions.py) and run update_portfolio.py first."
    lines = [
        f"Investors with positions: {len(investors)}; open positions: {int((positions['quantity'] > 0).sum())} "
        f"of {len(positions)}",
        f"Market value {investors['total_market_value'].sum():,.2f}; cost basis {investors['total_cost_basis'].sum():,.2f}; "
        f"realized P&L {investors['realized_pnl'].sum():,.2f}; unrealized P&L {investors['unrealized_pnl'].sum():,.2f}",
        "Risk levels: " + ", ".join(f"{level} {count}" for level, count in
                                    investors["risk_level"].value_counts().reindex(list(RISK_COLORS), fill_value=0).items()),
        "",
        "10 riskiest investors:",
        f"{'investor':>8}  {'name':<20} {'score':>6} {'level':<8} {'market value':>14} {'top weight':>10} {'HHI':>6}",
    ]
    for row in investors.sort_values(["risk_score", "investor_id"], ascending=[False, True]).head(10).itertuples():
        lines.append(f"{row.investor_id:>8}  {row.name[:20]:<20} {row.risk_score:>6.2f} {row.risk_level:<8} "
                     f"{row.total_market_value:>14,.2f} {row.top_position_weight:>10.1%} {row.hhi:>6.3f}")
    counts = alert_rows.groupby(["rule", "severity"]).size() if not alert_rows.empty else pd.Series(dtype=int)
    lines += ["", f"Alerts: {len(alert_rows)}"]
    lines += [f"  {rule:<22} {severity:<6} {count}" for (rule, severity), count in counts.items()]
    return "\n".join(lines)


def draw_dashboard(data, path):
    """Draw the six-panel dashboard to `path` (PNG)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", font_scale=0.8)
    figure, axes = plt.subplots(3, 2, figsize=(16, 17))
    _value_by_investor_and_symbol(axes[0, 0], data["positions"], data["investors"])
    _sector_heatmap(axes[0, 1], data["positions"], data["investors"], sns)
    _risk_levels(axes[1, 0], data["investors"], sns)
    _pnl(axes[1, 1], data["investors"])
    _alerts_by_rule(axes[2, 0], data["alerts"], sns)
    _value_by_symbol(axes[2, 1], data["positions"], sns)
    figure.suptitle("stock-etl portfolio and risk dashboard", fontsize=14)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=100)
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


def _sector_heatmap(ax, positions, investors, sns):
    top = _top_investors(investors, HEATMAP_INVESTORS)
    weights = positions[positions["investor_id"].isin(top)].pivot_table(
        index="investor_id", columns="sector", values="weight", aggfunc="sum", fill_value=0).reindex(top)
    if not weights.empty:
        sns.heatmap(weights, ax=ax, cmap="Reds", vmin=0, vmax=1, annot=True, fmt=".2f", annot_kws={"size": 6},
                    cbar_kws={"label": "share of market value"})
    ax.set(title=f"Concentration: sector weights (top {HEATMAP_INVESTORS} investors by value)", xlabel="", ylabel="investor")


def _risk_levels(ax, investors, sns):
    counts = investors["risk_level"].value_counts().reindex(list(RISK_COLORS), fill_value=0)
    sns.barplot(x=counts.index, y=counts.values, hue=counts.index, palette=RISK_COLORS, legend=False, ax=ax)
    ax.set(title="Investors by risk level", xlabel="risk level", ylabel="investors")


def _pnl(ax, investors):
    ranked = investors.assign(total=investors["realized_pnl"].abs() + investors["unrealized_pnl"].abs())
    top = ranked.sort_values("total", ascending=False).head(TOP_INVESTORS).sort_values("total")
    top.set_index("investor_id")[["realized_pnl", "unrealized_pnl"]].plot.barh(ax=ax, color=["#1976d2", "#90caf9"])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(title=f"Realized vs unrealized P&L (top {TOP_INVESTORS} by size)", xlabel="P&L", ylabel="investor")


def _alerts_by_rule(ax, alert_rows, sns):
    if alert_rows.empty:
        ax.text(0.5, 0.5, "no alerts", ha="center", va="center", transform=ax.transAxes)
    else:
        counts = alert_rows.groupby(["rule", "severity"]).size().reset_index(name="alerts")
        sns.barplot(data=counts, y="rule", x="alerts", hue="severity", ax=ax,
                    palette={"LOW": "#4caf50", "MEDIUM": "#ffc107", "HIGH": "#c62828"})
    ax.set(title="Alerts by rule", xlabel="alerts", ylabel="")


def _value_by_symbol(ax, positions, sns):
    values = positions.groupby("stock_symbol")["market_value"].sum().nlargest(TOP_INVESTORS)
    sns.barplot(x=values.values, y=values.index, ax=ax, color="#5c6bc0")
    ax.set(title=f"Market value by symbol (top {TOP_INVESTORS})", xlabel="market value", ylabel="")


def draw_risk_dashboard(data, path):
    """Draw alerts by day and rule, VaR and expected shortfall, drawdown and volatility to `path` (PNG)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(16, 11))
    _alerts_by_day(axes[0, 0], data["alerts"])
    _alerts_by_rule(axes[0, 1], data["alerts"], __import__("seaborn"))
    _value_at_risk(axes[1, 0], data["investors"])
    _drawdown_and_volatility(axes[1, 1], data["investors"])
    figure.suptitle("stock-etl surveillance and risk metrics", fontsize=14)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(path, dpi=100)
    return figure


def _alerts_by_day(ax, alert_rows):
    if alert_rows.empty:
        ax.text(0.5, 0.5, "no alerts", ha="center", va="center", transform=ax.transAxes)
    else:
        days = pd.to_datetime(alert_rows["alert_time"]).dt.to_period("D").dt.to_timestamp()
        table = alert_rows.assign(day=days).pivot_table(index="day", columns="rule", values="severity",
                                                        aggfunc="count", fill_value=0)
        weekly = len(table) > 40
        if weekly:  # a bar per week once there are many days
            table = table.resample("W-MON", label="left", closed="left").sum()
        table.index = table.index.strftime("%Y-%m-%d")
        table.plot.bar(stacked=True, ax=ax, width=0.9, colormap="tab10")
        step = max(1, len(table) // 12)
        ax.set_xticks(range(0, len(table), step), table.index[::step], rotation=45, ha="right")
        ax.legend(title="rule", fontsize=7)
    ax.set(title="Alerts by day of the trade (by week when there are many days)", xlabel="", ylabel="alerts")


def _value_at_risk(ax, investors):
    ranked = investors.dropna(subset=["var_95_1d"]).nlargest(TOP_INVESTORS, "var_95_1d").sort_values("var_95_1d")
    if ranked.empty:
        ax.text(0.5, 0.5, "no price history", ha="center", va="center", transform=ax.transAxes)
    else:
        ranked.set_index("investor_id")[["var_95_1d", "expected_shortfall_95_1d"]].plot.barh(
            ax=ax, color=["#ef6c00", "#b71c1c"])
        ax.legend(["1-day 95% VaR", "expected shortfall"], fontsize=8)
    ax.set(title=f"1-day 95% Value at Risk and expected shortfall (top {TOP_INVESTORS})", xlabel="currency",
           ylabel="investor")


def _drawdown_and_volatility(ax, investors):
    known = investors.dropna(subset=["portfolio_volatility"])
    colors = known["risk_level"].map(RISK_COLORS)
    ax.scatter(known["portfolio_volatility"], known["max_drawdown"], s=20 + 80 * known["top_position_weight"],
               c=colors, alpha=0.8, edgecolors="black", linewidths=0.3)
    for row in known.nlargest(5, "max_drawdown").itertuples():
        ax.annotate(str(row.investor_id), (row.portfolio_volatility, row.max_drawdown), fontsize=7)
    ax.set(title="Max drawdown vs annualized volatility (size: top weight, colour: risk level)",
           xlabel="annualized volatility", ylabel="max drawdown")


def investor_card_text(data, investor_id):
    """One investor's holdings, P&L, weights, risk metrics and alerts, as plain text."""
    risk = data["investors"][data["investors"]["investor_id"] == investor_id]
    if risk.empty:
        raise cli.InputError(f"investor {investor_id} has no portfolio (unknown investor, or no trades applied yet)")
    row = risk.iloc[0]
    lines = [f"Investor {investor_id} {row['name']}: risk {row['risk_score']:.2f} {row['risk_level']}, "
             f"market value {row['total_market_value']:,.2f}, realized P&L {row['realized_pnl']:,.2f}, "
             f"unrealized P&L {row['unrealized_pnl']:,.2f}"]
    if pd.notna(row["var_95_1d"]):
        lines.append(f"  volatility {row['portfolio_volatility']:.1%}/year, 1-day 95% VaR {row['var_95_1d']:,.2f}, "
                     f"expected shortfall {row['expected_shortfall_95_1d']:,.2f}, max drawdown {row['max_drawdown']:.1%}")
    held = data["positions"][data["positions"]["investor_id"] == investor_id].sort_values("market_value", ascending=False)
    lines += [f"  {p.stock_symbol:<6} {p.quantity:>8} shares  value {p.market_value:>14,.2f}  weight {p.weight:>6.1%}  "
              f"unrealized {p.unrealized_pnl:>12,.2f}  realized {p.realized_pnl:>12,.2f}  {p.risk_level}"
              for p in held.itertuples()]
    alert_rows = data["alerts"][data["alerts"]["investor_id"] == investor_id]
    lines.append(f"  alerts: {len(alert_rows)}")
    lines += [f"    {a.rule} ({a.severity}): {a.details}" for a in alert_rows.head(20).itertuples()]
    return "\n".join(lines)


def draw_investor_card(data, investor_id, path):
    """Draw one investor's risk card (holdings, P&L, sector weights, metrics and alerts) to `path` (PNG)."""
    import matplotlib.pyplot as plt

    held = data["positions"][(data["positions"]["investor_id"] == investor_id)]
    figure, axes = plt.subplots(2, 2, figsize=(15, 10))
    open_positions = held[held["quantity"] > 0].sort_values("market_value")
    open_positions.plot.barh(x="stock_symbol", y="market_value", ax=axes[0, 0], legend=False, color="#5c6bc0")
    axes[0, 0].set(title="Market value by holding", xlabel="market value", ylabel="")
    held.set_index("stock_symbol")[["realized_pnl", "unrealized_pnl"]].plot.bar(ax=axes[0, 1],
                                                                                 color=["#1976d2", "#90caf9"])
    axes[0, 1].axhline(0, color="black", linewidth=0.8)
    axes[0, 1].set(title="Realized and unrealized P&L by symbol", xlabel="", ylabel="P&L")
    sectors = open_positions.groupby("sector")["weight"].sum()
    if not sectors.empty:
        axes[1, 0].pie(sectors.values, labels=sectors.index, autopct="%1.0f%%", textprops={"fontsize": 8})
    axes[1, 0].set(title="Weights by sector")
    axes[1, 1].axis("off")
    axes[1, 1].text(0, 1, investor_card_text(data, investor_id).replace("  ", " "), va="top", family="monospace",
                    fontsize=7, wrap=True)
    figure.suptitle(f"Risk card: investor {investor_id}", fontsize=14)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(path, dpi=100)
    return figure


def analyze(engine, report_dir="reports", plots=True, show=False, investor_id=None):
    """Print the summary (and an investor's card) and draw the dashboards; return the paths written."""
    data = read_dashboard_data(engine)
    print(summary_text(data))
    if investor_id is not None:
        print()
        print(investor_card_text(data, investor_id))
    if not plots or data["investors"].empty:
        return []
    os.makedirs(report_dir, exist_ok=True)
    paths = [os.path.join(report_dir, "dashboard.png"), os.path.join(report_dir, "risk.png")]
    import matplotlib.pyplot as plt

    figures = [draw_dashboard(data, paths[0]), draw_risk_dashboard(data, paths[1])]
    if investor_id is not None:
        paths.append(os.path.join(report_dir, f"investor_{investor_id}.png"))
        figures.append(draw_investor_card(data, investor_id, paths[-1]))
    print(f"written: {', '.join(paths)}")
    if show:
        plt.show()
    for figure in figures:  # a long-running caller (master_etl in a loop) must not pile up figures
        plt.close(figure)
    return paths


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--show", action="store_true", help="also open the dashboards in windows")
    parser.add_argument("--reports", default="reports", help="folder for the PNG files (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="print the summary only")
    parser.add_argument("--investor", type=int, metavar="ID", help="also print and draw this investor's risk card")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if not args.show:
        matplotlib.use("Agg")  # no display needed: cron, ssh, CI

    def work():
        engine = db_config.get_engine(args.database_url)
        analyze(engine, args.reports, plots=not args.no_plots, show=args.show, investor_id=args.investor)
        return cli.EXIT_OK

    return cli.run(work, args, "analyze")


if __name__ == "__main__":
    sys.exit(main())
