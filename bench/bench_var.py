"""Risk metrics on a long price history with a crash, beside an independent numpy computation of the definitions.

Usage (from the project root, with the project's virtualenv):
    python bench/bench_var.py            # prints the table and writes bench/results-var.txt

The history: 20 years of weekday closes (5,040 days) of two symbols, rounded to cents. One (INDEX_A) falls to half
its value over 60 days inside the last 500 and recovers over the next 300; the other (INDEX_B) is a quiet walk.
The holding: 300 INDEX_A and 500 INDEX_B, bought on the last day. risk_metrics.compute_risk_metrics (what
update_portfolio stores in investor_risk) is compared with numpy applied to the definitions in README.md (Risk
metrics): historical simulation of today's position values over the last 500 daily returns, the parametric VaR,
the value series' volatility and drawdown. Beside them, the definition before issue 15 (the 5th percentile of the
daily P&L of today's quantities at past closes, in currency), which counts a loss on a day when the holding was
worth half as much as half a loss. Exit code 0 when every figure agrees with numpy to 1e-9 (relative).
"""
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import risk_metrics  # noqa: E402

DAYS, CRASH_START, CRASH_DAYS, RECOVERY_DAYS = 5040, 5040 - 420, 60, 300
QUANTITIES = {"INDEX_A": 300, "INDEX_B": 500}
RESULTS = os.path.join(ROOT, "bench", "results-var.txt")


def crash_history(seed=2026):
    """{symbol: closes} of the history described above."""
    rng = np.random.default_rng(seed)
    drift = np.zeros(DAYS)
    drift[CRASH_START:CRASH_START + CRASH_DAYS] = -math.log(2) / CRASH_DAYS
    drift[CRASH_START + CRASH_DAYS:CRASH_START + CRASH_DAYS + RECOVERY_DAYS] = math.log(2) / RECOVERY_DAYS
    return {"INDEX_A": np.round(100 * np.exp(np.cumsum(rng.normal(0.0002, 0.012, DAYS) + drift)), 2),
            "INDEX_B": np.round(50 * np.exp(np.cumsum(rng.normal(0.0001, 0.008, DAYS))), 2)}


def numpy_figures(history, window=risk_metrics.VAR_WINDOW_DAYS):
    """The definitions, computed directly: {metric: value}."""
    prices = np.column_stack([history[symbol] for symbol in QUANTITIES])
    held = np.array(list(QUANTITIES.values()), dtype=float)
    values = prices @ held
    pnl = (prices[1:] / prices[:-1] - 1)[-window:] @ (held * prices[-1])
    var = -np.percentile(pnl, 5)
    peaks = np.maximum.accumulate(values)
    return {"portfolio_volatility": np.std(values[1:] / values[:-1] - 1, ddof=1) * math.sqrt(252),
            "var_95_1d": var, "expected_shortfall_95_1d": -pnl[pnl <= -var].mean(),
            "parametric_var_95_1d": 1.6448536269514722 * np.std(pnl, ddof=1),
            "max_drawdown": ((peaks - values) / peaks).max()}


def earlier_definition(history, window=risk_metrics.VAR_WINDOW_DAYS):
    """VaR and ES as computed before issue 15: the daily P&L of today's quantities at past closes."""
    values = np.column_stack([history[symbol] for symbol in QUANTITIES]) @ np.array(list(QUANTITIES.values()), float)
    pnl = np.diff(values)[-window:]
    var = -np.percentile(pnl, 5)
    return {"var_95_1d": var, "expected_shortfall_95_1d": -pnl[pnl <= -var].mean()}


def main():
    history = crash_history()
    table = pd.DataFrame(history, index=pd.RangeIndex(DAYS))
    started = time.perf_counter()
    stored = risk_metrics.compute_risk_metrics(table, [(1, symbol, q) for symbol, q in QUANTITIES.items()])[1]
    seconds = time.perf_counter() - started
    expected, earlier = numpy_figures(history), earlier_definition(history)
    value = sum(q * history[symbol][-1] for symbol, q in QUANTITIES.items())
    lines = [f"20-year history ({DAYS} days, 2 symbols), crash of -50% inside the last "
             f"{risk_metrics.VAR_WINDOW_DAYS} days; holding worth {value:,.2f} today",
             f"{'metric':<26} {'risk_metrics':>14} {'numpy':>14} {'rel. diff':>10} {'before issue 15':>16}"]
    agree = True
    for name, reference in expected.items():
        ours = getattr(stored, name)
        difference = abs(ours - reference) / abs(reference)
        agree &= difference <= 1e-9
        before = f"{earlier[name]:>16,.2f}" if name in earlier else f"{'':>16}"
        shown = f"{ours:>14.4%} {reference:>14.4%}" if name in ("portfolio_volatility", "max_drawdown") else \
            f"{ours:>14,.2f} {reference:>14,.2f}"
        lines.append(f"{name:<26} {shown} {difference:>10.1e} {before}")
    lines.append(f"historical VaR / earlier definition: {stored.var_95_1d / earlier['var_95_1d']:.2f}; "
                 f"computed in {seconds * 1000:.1f} ms")
    report = "\n".join(lines)
    print(report)
    with open(RESULTS, "w", encoding="utf-8") as handle:
        handle.write(f"python bench/bench_var.py\n{report}\n")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
