"""Draw the portfolio and risk dashboard and print a plain-text summary.

Last stage of the chain (after update_portfolio.py). Reads portfolios, investor_risk, stocks and alerts; writes
reports/dashboard.png (market value by investor and symbol, investor x sector concentration, risk levels,
realized vs unrealized P&L, alerts by rule, market value by symbol) and prints totals, the 10 riskiest
investors and alert counts. Headless by default (cron, ssh); --show also opens the window.
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
       r.open_positions, r.top_position_weight, r.hhi, r.top_sector_weight, r.risk_score, r.risk_level
FROM investor_risk r
JOIN investors i ON i.investor_id = r.investor_id
"""
ALERTS_SQL = "SELECT rule, severity, investor_id, stock_symbol, detected_at FROM alerts"


def read_dashboard_data(engine):
    """Positions, investor risk and alerts as DataFrames (money as float: for drawing, not for sums to the cent)."""
    with engine.connect() as connection:
        frames = {name: pd.read_sql_query(sql, connection) for name, sql in (
            ("positions", POSITIONS_SQL), ("investors", INVESTOR_RISK_SQL), ("alerts", ALERTS_SQL))}
    for frame in frames.values():
        for column in frame.columns:
            if frame[column].dtype == object and column not in ("name", "stock_symbol", "sector", "risk_level",
                                                                 "rule", "severity", "detected_at"):
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


def analyze(engine, report_dir="reports", plots=True, show=False):
    """Print the summary and draw the dashboard; return the paths written."""
    data = read_dashboard_data(engine)
    print(summary_text(data))
    if not plots or data["investors"].empty:
        return []
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, "dashboard.png")
    draw_dashboard(data, path)
    print(f"dashboard written to {path}")
    if show:
        import matplotlib.pyplot as plt
        plt.show()
    return [path]


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--show", action="store_true", help="also open the dashboard in a window")
    parser.add_argument("--reports", default="reports", help="folder for the PNG files (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if not args.show:
        matplotlib.use("Agg")  # no display needed: cron, ssh, CI

    def work():
        engine = db_config.get_engine(args.database_url)
        analyze(engine, args.reports, plots=not args.no_plots, show=args.show)
        return cli.EXIT_OK

    return cli.run(work, args, "analyze")


if __name__ == "__main__":
    sys.exit(main())
