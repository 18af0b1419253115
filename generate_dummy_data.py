"""Generate realistic, reproducible trades and the daily closes they were priced from.

First stage of the chain: writes the trades CSV (SPEC §3 canonical header) and `market_prices.csv` beside it
(or --prices-out). Daily closes follow a geometric Brownian motion per symbol over about a year of weekdays;
trades happen on weekdays between 09:30 and 16:00, priced within 1% of that day's close, with heavy-tailed
quantities scaled by the investor's risk profile; each investor favours a few symbols; a SELL never exceeds
what the investor holds at that moment; rows are in time order. The same --seed gives byte-identical files.
"""
import logging
import os
import sys
import time
from datetime import date, timedelta

import numpy as np

import cli
import constants

logger = logging.getLogger(__name__)

TRADE_HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
PRICE_HEADER = "stock_symbol,price_date,close_price"
FAVOURITE_SHARE = 0.8  # share of an investor's trades in their favourite symbols
SELL_PROBABILITY = 0.45  # chance that a trade in a held position is a sell
FULL_CLOSE_PROBABILITY = 0.25  # chance that a sell closes the whole position


def weekdays_ending(end_date, count):
    """The last `count` weekdays up to and including end_date, oldest first."""
    days, day = [], end_date
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return days[::-1]


def simulate_closes(rng, days, stocks=constants.STOCKS):
    """Daily closes, shape (days, symbols), by geometric Brownian motion, rounded to the cent."""
    sigma = np.array([s.annual_volatility for s in stocks]) / np.sqrt(constants.TRADING_DAYS_PER_YEAR)
    drift = 0.07 / constants.TRADING_DAYS_PER_YEAR - sigma**2 / 2  # 7% a year expected growth
    shocks = rng.standard_normal((len(days), len(stocks))) * sigma + drift
    shocks[0] = 0.0  # the first day closes at the start price
    closes = np.array([s.start_price for s in stocks]) * np.exp(np.cumsum(shocks, axis=0))
    return np.maximum(np.round(closes, 2), 0.01)


def draw_trades(rng, rows, day_count, investors, stock_count):
    """Random draws for every trade, in time order: day, second of day, investor, symbol, size factors."""
    activity = rng.pareto(1.5, len(investors)) + 1.0  # a few investors trade a lot
    investor = rng.choice(len(investors), rows, p=activity / activity.sum())
    favourites = np.array([rng.choice(stock_count, 4, replace=False) for _ in investors])
    symbol = np.where(
        rng.random(rows) < FAVOURITE_SHARE,
        favourites[investor, rng.integers(0, 4, rows)],
        rng.integers(0, stock_count, rows),
    )
    day = rng.integers(0, day_count, rows)
    second = rng.integers(constants.MARKET_OPEN_SECONDS, constants.MARKET_CLOSE_SECONDS, rows)
    order = np.lexsort((second, day))
    scale = np.array([constants.PROFILE_QUANTITY_SCALE[i.risk_profile] for i in investors])
    size = np.maximum(1, np.round(rng.lognormal(np.log(20), 1.1, rows) * scale[investor])).astype(np.int64)
    return {
        "day": day[order], "second": second[order], "investor": investor[order], "symbol": symbol[order],
        "size": size[order], "sell_draw": rng.random(rows), "sell_share": rng.random(rows),
        "price_draw": rng.uniform(-constants.TRADE_PRICE_BAND, constants.TRADE_PRICE_BAND, rows),
    }


def decide_sides(draws, stock_count):
    """Replay holdings in time order: returns (is_sell, quantity); a sell never exceeds the holding."""
    position = draws["investor"] * stock_count + draws["symbol"]
    holdings = {}
    is_sell = np.zeros(len(position), dtype=bool)
    quantity = draws["size"].copy()
    for i, (key, sell_draw, share) in enumerate(zip(position.tolist(), draws["sell_draw"].tolist(),
                                                    draws["sell_share"].tolist())):
        held = holdings.get(key, 0)
        if held > 0 and sell_draw < SELL_PROBABILITY:
            sold = held if share < FULL_CLOSE_PROBABILITY else max(1, min(held, round(held * share)))
            is_sell[i], quantity[i] = True, sold
            holdings[key] = held - sold
        else:
            holdings[key] = held + int(quantity[i])
    return is_sell, quantity


def trade_lines(draws, is_sell, quantity, days, closes, investors, run_tag):
    """The CSV lines of the trades, header excluded."""
    prices = np.round(closes[draws["day"], draws["symbol"]] * (1 + draws["price_draw"]), 2)
    day_text = [d.isoformat() for d in days]
    clock = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(constants.MARKET_CLOSE_SECONDS + 1)]
    symbols = [s.symbol for s in constants.STOCKS]
    investor_ids = [str(i.investor_id) for i in investors]
    return [
        f"{run_tag}-{n:07d},{investor_ids[inv]},{symbols[sym]},{'SELL' if sell else 'BUY'},{qty},{price:.2f},"
        f"{day_text[day]} {clock[second]}"
        for n, (inv, sym, sell, qty, price, day, second) in enumerate(zip(
            draws["investor"].tolist(), draws["symbol"].tolist(), is_sell.tolist(), quantity.tolist(),
            prices.tolist(), draws["day"].tolist(), draws["second"].tolist()), start=1)
    ]


def price_lines(days, closes):
    """The CSV lines of the daily closes, header excluded."""
    return [
        f"{stock.symbol},{day.isoformat()},{closes[d, s]:.2f}"
        for s, stock in enumerate(constants.STOCKS) for d, day in enumerate(days)
    ]


def generate(rows, seed, end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT):
    """Generate (trade lines, price lines) for `rows` trades; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    days = weekdays_ending(end_date, constants.TRADING_DAYS)
    closes = simulate_closes(rng, days)
    investors = constants.default_investors(investor_count)
    draws = draw_trades(rng, rows, len(days), investors, len(constants.STOCKS))
    is_sell, quantity = decide_sides(draws, len(constants.STOCKS))
    run_tag = f"S{seed}N{rows}"  # refs of different runs never collide; the same run repeats its refs
    return trade_lines(draws, is_sell, quantity, days, closes, investors, run_tag), price_lines(days, closes)


def write_csv(path, header, lines):
    """Write a CSV file with LF line endings."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header + "\n")
        handle.write("\n".join(lines))
        handle.write("\n" if lines else "")


def prices_path_for(out):
    """The prices file written beside a trades file."""
    return os.path.join(os.path.dirname(out), "market_prices.csv")


def write_dummy_data(out, rows, seed, prices_out=None, end_date=constants.DEFAULT_END_DATE,
                     investor_count=constants.DEFAULT_INVESTOR_COUNT):
    """Generate and write the trades and prices files; return (trades written, closes written)."""
    trades, prices = generate(rows, seed, end_date, investor_count)
    try:
        write_csv(out, TRADE_HEADER, trades)
        write_csv(prices_out or prices_path_for(out), PRICE_HEADER, prices)
    except OSError as error:
        raise cli.InputError(f"cannot write {error.filename}: {error.strerror}") from None
    return len(trades), len(prices)


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=10_000, help="number of trades (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument("--out", default="transactions.csv", help="trades CSV (default: %(default)s)")
    parser.add_argument("--prices-out", help="daily closes CSV (default: market_prices.csv beside --out)")
    parser.add_argument("--end-date", type=date.fromisoformat, default=constants.DEFAULT_END_DATE,
                        help="last trading day, YYYY-MM-DD (default: %(default)s)")
    parser.add_argument("--investors", type=int, default=constants.DEFAULT_INVESTOR_COUNT,
                        help="number of investors trading, ids from 1001 (default: %(default)s)")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if args.rows < 0 or args.investors < 1:
        parser.error("--rows must be 0 or more and --investors at least 1")
    if args.end_date > date.today():
        parser.error(f"--end-date {args.end_date} is in the future; the loader would reject its trades")
    prices_out = args.prices_out or prices_path_for(args.out)

    def work():
        started = time.perf_counter()
        trades, closes = write_dummy_data(args.out, args.rows, args.seed, prices_out, args.end_date, args.investors)
        print(f"{args.out}: {trades} trades written; {prices_out}: {closes} daily closes "
              f"({time.perf_counter() - started:.1f} s, seed {args.seed})")
        return cli.EXIT_OK

    return cli.run(work, args, "generate_dummy_data")


if __name__ == "__main__":
    sys.exit(main())
