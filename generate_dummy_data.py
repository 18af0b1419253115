"""Generate realistic, reproducible trades and the daily closes they were priced from.

First stage of the chain: writes the trades CSV (the canonical header of docs/file-formats.md) and
`market_prices.csv` beside it (or --prices-out). Daily closes follow a geometric Brownian motion per symbol over about a year of weekdays;
trades happen on weekdays between 09:30 and 16:00, priced within 1% of that day's close, with heavy-tailed
quantities scaled by the investor's risk profile; each investor favours a few symbols; a SELL never exceeds
what the investor holds at that moment; rows are in time order. The same --seed gives byte-identical files.

`--anomalies RATE` also plants each trade-level surveillance pattern (LARGE_TRADE, OFF_MARKET_PRICE, WASH_TRADE,
ROUND_TRIP, BURST) RATE times per generated trade, as extra trades among the clean ones, and writes the ground
truth (txn_ref, rule, anomaly_id) to a sidecar CSV (`<out stem>_anomalies.csv` beside --out). The planting uses
its own random stream: the clean trades are exactly those of the same seed without anomalies, and every
planted SELL follows a planted BUY of the same quantity, so no sell ever exceeds what is held.
"""
import logging
import os
import re
import sys
import time
from collections import namedtuple
from datetime import date, timedelta

import numpy as np
from tqdm import tqdm

import cli
import constants
import db_config

logger = logging.getLogger(__name__)

TRADE_HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
PRICE_HEADER = "stock_symbol,price_date,close_price"
FAVOURITE_SHARE = 0.8  # share of an investor's trades in their favourite symbols
SELL_PROBABILITY = 0.45  # chance that a trade in a held position is a sell
FULL_CLOSE_PROBABILITY = 0.25  # chance that a sell closes the whole position
ANOMALY_HEADER = "txn_ref,rule,anomaly_id"


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


def decide_sides(draws, stock_count, progress=False):
    """Replay holdings in time order: returns (is_sell, quantity); a sell never exceeds the holding."""
    position = draws["investor"] * stock_count + draws["symbol"]
    holdings = {}
    is_sell = np.zeros(len(position), dtype=bool)
    quantity = draws["size"].copy()
    trades = zip(position.tolist(), draws["sell_draw"].tolist(), draws["sell_share"].tolist())
    for i, (key, sell_draw, share) in enumerate(tqdm(trades, total=len(position), unit=" trades", leave=False,
                                                     desc="generating", disable=not progress, mininterval=0.5)):
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


Market = namedtuple("Market", "days closes investors draws is_sell quantity prices run_tag")


def simulate(rows, seed, end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT,
             progress=False):
    """The clean simulation for `rows` trades: closes, draws, sides, quantities and prices; deterministic per seed."""
    rng = np.random.default_rng(seed)
    days = weekdays_ending(end_date, constants.TRADING_DAYS)
    closes = simulate_closes(rng, days)
    investors = constants.default_investors(investor_count)
    draws = draw_trades(rng, rows, len(days), investors, len(constants.STOCKS))
    is_sell, quantity = decide_sides(draws, len(constants.STOCKS), progress)
    prices = np.round(closes[draws["day"], draws["symbol"]] * (1 + draws["price_draw"]), 2)
    run_tag = f"S{seed}N{rows}"  # refs of different runs never collide; the same run repeats its refs
    return Market(days, closes, investors, draws, is_sell, quantity, prices, run_tag)


def generate(rows, seed, end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT,
             progress=False):
    """Generate (trade lines, price lines) for `rows` trades; deterministic for a given seed."""
    market = simulate(rows, seed, end_date, investor_count, progress)
    trades = trade_lines(market.draws, market.is_sell, market.quantity, market.days, market.closes,
                         market.investors, market.run_tag)
    return trades, price_lines(market.days, market.closes)


def generate_with_anomalies(rows, seed, rate, end_date=constants.DEFAULT_END_DATE,
                            investor_count=constants.DEFAULT_INVESTOR_COUNT, progress=False):
    """Generate (trade lines, price lines, ground-truth lines): the clean trades of `seed` plus planted patterns."""
    market = simulate(rows, seed, end_date, investor_count, progress)
    planted = plant_anomalies(market, rate, seed)
    clean = trade_lines(market.draws, market.is_sell, market.quantity, market.days, market.closes,
                        market.investors, market.run_tag)
    trades, truth = merge_planted(market, clean, planted, f"{market.run_tag}-R{rate:g}")
    return trades, price_lines(market.days, market.closes), truth


# ---------------------------------------------------------------------------------------------- planted anomalies

PLANT_STREAM = 7_919  # second word of the planting stream's seed: never the clean stream
PLANTED_RULES = ("ROUND_TRIP", "WASH_TRADE", "BURST", "OFF_MARKET_PRICE", "LARGE_TRADE")  # planting order
PLANT_MIN_HISTORY = constants.LARGE_TRADE_LOOKBACK_TRADES  # earlier trades of an investor given a LARGE_TRADE
PLANT_ATTEMPTS = 200  # anchors tried per planted event
LARGE_TRADE_SIGMAS = (6.0, 8.0)  # ln(notional): this many robust standard deviations above the investor's median
LARGE_TRADE_FACTORS = (100.0, 1_000_000.0)  # and from 100 to 1,000,000 times the median notional
LARGE_TRADE_MAX_QUANTITY = 1_000_000_000  # shares: a quantity is an INT
OFF_MARKET_DEVIATIONS = (0.07, 0.25)  # price this far from the day's close, either side
WASH_TRADE_GAP_SECONDS = (20, 4 * 60)  # the SELL this long after the BUY of the same quantity
WASH_TRADE_PRICE_CENTS = (-1, 2)  # the SELL's price -1, 0 or +1 cent from the BUY's
ROUND_TRIP_EXTRA = (0, 2)  # ROUND_TRIP_MIN_COUNT + 0..1 round trips in one day
ROUND_TRIP_HOLD_SECONDS = (60, 12 * 60)  # each opened from flat and closed to flat after this long
ROUND_TRIP_PRICE_MOVE = (0.003, 0.008)  # the closing SELL this far from the opening BUY: not a wash trade
BURST_EXTRA = (1, 7)  # BURST_MAX_TRADES + 1..6 trades
BURST_SPAN_SECONDS = 150  # all within 2.5 minutes
QUIET_SECONDS = 15 * 60  # no clean trade of the investor this close to a planted wash trade or burst
SECONDS_PER_DAY = 86_400

History = namedtuple("History", "key notional by_investor by_position holding_after")


def clean_history(market):
    """Lookups over the clean trades: time key (day * 86400 + second), notional, indexes per investor and per
    position in time order, and the position's clean holding after each trade."""
    draws = market.draws
    key = draws["day"].astype(np.int64) * SECONDS_PER_DAY + draws["second"]
    signed = np.where(market.is_sell, -market.quantity, market.quantity)
    holding_after = np.zeros(len(key), dtype=np.int64)
    by_investor, by_position = _group_indexes(draws["investor"]), _group_indexes(
        draws["investor"] * len(constants.STOCKS) + draws["symbol"])
    for indexes in by_position.values():
        holding_after[indexes] = np.cumsum(signed[indexes])
    return History(key, market.quantity * market.prices, by_investor, by_position, holding_after)


def _group_indexes(codes):
    """{code: the row indexes with that code, in row order}."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return {int(codes[group[0]]): group for group in np.split(order, bounds) if len(group)}


def _between(history, indexes, start, end):
    """The clean trades among `indexes` (time-ordered) with start <= key <= end."""
    keys = history.key[indexes]
    return indexes[np.searchsorted(keys, start, "left"):np.searchsorted(keys, end, "right")]


def _quiet(history, investor, start, end):
    """Has the investor no clean trade within QUIET_SECONDS of [start, end]?"""
    return len(_between(history, history.by_investor[investor], start - QUIET_SECONDS, end + QUIET_SECONDS)) == 0


def _planted(rule, key, investor, symbol, side, quantity, price):
    return {"rule": rule, "key": int(key), "investor": int(investor), "symbol": int(symbol), "side": side,
            "quantity": int(quantity), "price": max(0.01, round(float(price), 2))}


def _normal_price(rng, market, day, symbol):
    return market.closes[day, symbol] * (1 + rng.uniform(-constants.TRADE_PRICE_BAND, constants.TRADE_PRICE_BAND))


def _normal_quantity(rng, market, investor):
    scale = constants.PROFILE_QUANTITY_SCALE[market.investors[investor].risk_profile]
    return max(1, round(rng.lognormal(np.log(20), 1.1) * scale))  # as draw_trades sizes a trade


def _start_key(rng, day, span):
    """A time key on `day` for a pattern lasting `span` seconds within trading hours."""
    latest = constants.MARKET_CLOSE_SECONDS - span - 1
    return day * SECONDS_PER_DAY + int(rng.integers(constants.MARKET_OPEN_SECONDS, latest))


def plant_large_trade(rng, market, history, anchor, symbol):
    """A BUY whose ln(notional) is LARGE_TRADE_SIGMAS robust standard deviations (1.4826 * MAD, at least
    LARGE_TRADE_MIN_SCALE) above the median of the investor's previous trades, within LARGE_TRADE_FACTORS times it."""
    investor, day = market.draws["investor"][anchor], market.draws["day"][anchor]
    key = max(history.key[anchor] + 1, _start_key(rng, day, 0))
    earlier = history.by_investor[investor]
    earlier = earlier[history.key[earlier] < key][-constants.LARGE_TRADE_LOOKBACK_TRADES:]
    if len(earlier) < PLANT_MIN_HISTORY:
        return None
    log_notional = np.log(history.notional[earlier])
    median = np.median(log_notional)
    sigma = max(1.4826 * np.median(np.abs(log_notional - median)), constants.LARGE_TRADE_MIN_SCALE)
    target = median + np.clip(rng.uniform(*LARGE_TRADE_SIGMAS) * sigma, *np.log(LARGE_TRADE_FACTORS))
    price = _normal_price(rng, market, day, symbol)
    quantity = min(max(1, round(np.exp(target) / price)), LARGE_TRADE_MAX_QUANTITY)
    return [_planted("LARGE_TRADE", key, investor, symbol, "BUY", quantity, price)]


def plant_off_market_price(rng, market, history, anchor, symbol):
    """A BUY of ordinary size priced OFF_MARKET_DEVIATIONS away from the day's close."""
    investor, day = market.draws["investor"][anchor], market.draws["day"][anchor]
    deviation = rng.uniform(*OFF_MARKET_DEVIATIONS) * rng.choice((-1, 1))
    price = market.closes[day, symbol] * (1 + deviation)
    return [_planted("OFF_MARKET_PRICE", _start_key(rng, day, 0), investor, symbol, "BUY",
                     _normal_quantity(rng, market, investor), price)]


def plant_wash_trade(rng, market, history, anchor, symbol):
    """A BUY then a SELL of the same quantity minutes apart at nearly the same price, in a quiet moment."""
    investor, day = market.draws["investor"][anchor], market.draws["day"][anchor]
    gap = int(rng.integers(*WASH_TRADE_GAP_SECONDS))
    start = _start_key(rng, day, gap)
    if not _quiet(history, investor, start, start + gap):
        return None
    quantity, price = _normal_quantity(rng, market, investor), round(_normal_price(rng, market, day, symbol), 2)
    return [_planted("WASH_TRADE", start, investor, symbol, "BUY", quantity, price),
            _planted("WASH_TRADE", start + gap, investor, symbol, "SELL", quantity,
                     price + int(rng.integers(*WASH_TRADE_PRICE_CENTS)) / 100)]


def plant_burst(rng, market, history, anchor, symbol):
    """More than BURST_MAX_TRADES BUYs by one investor within BURST_SPAN_SECONDS, in a quiet moment."""
    investor, day = market.draws["investor"][anchor], market.draws["day"][anchor]
    count = constants.BURST_MAX_TRADES + int(rng.integers(*BURST_EXTRA))
    start = _start_key(rng, day, BURST_SPAN_SECONDS)
    if not _quiet(history, investor, start, start + BURST_SPAN_SECONDS):
        return None
    offsets = np.sort(rng.choice(BURST_SPAN_SECONDS, count, replace=False))
    return [_planted("BURST", start + offset, investor, symbol, "BUY", _normal_quantity(rng, market, investor),
                     _normal_price(rng, market, day, symbol)) for offset in offsets]


def plant_round_trip(rng, market, history, anchor, symbol):
    """ROUND_TRIP_MIN_COUNT or more quick round trips in a position that is flat and untouched all that day."""
    investor, day = market.draws["investor"][anchor], market.draws["day"][anchor]
    position = history.by_position.get(investor * len(constants.STOCKS) + symbol, np.array([], dtype=np.int64))
    day_start = day * SECONDS_PER_DAY
    before = position[history.key[position] < day_start]
    if len(_between(history, position, day_start, day_start + SECONDS_PER_DAY)) or (
            len(before) and history.holding_after[before[-1]] != 0):
        return None
    count = constants.ROUND_TRIP_MIN_COUNT + int(rng.integers(*ROUND_TRIP_EXTRA))
    slot = (constants.MARKET_CLOSE_SECONDS - constants.MARKET_OPEN_SECONDS) // count
    trades = []
    for number in range(count):
        hold = int(rng.integers(*ROUND_TRIP_HOLD_SECONDS))
        opened = day_start + constants.MARKET_OPEN_SECONDS + number * slot + int(rng.integers(0, slot - hold))
        quantity, price = _normal_quantity(rng, market, investor), _normal_price(rng, market, day, symbol)
        move = rng.uniform(*ROUND_TRIP_PRICE_MOVE) * rng.choice((-1, 1))
        trades += [_planted("ROUND_TRIP", opened, investor, symbol, "BUY", quantity, price),
                   _planted("ROUND_TRIP", opened + hold, investor, symbol, "SELL", quantity, price * (1 + move))]
    return trades


PLANTERS = {"LARGE_TRADE": plant_large_trade, "OFF_MARKET_PRICE": plant_off_market_price,
            "WASH_TRADE": plant_wash_trade, "ROUND_TRIP": plant_round_trip, "BURST": plant_burst}


def plant_anomalies(market, rate, seed):
    """Planted trades (dicts with rule, key, investor, symbol, side, quantity, price, anomaly_id): round(rate * rows)
    events of each rule, at most one event per investor and day, none in a position that has a round trip."""
    rng = np.random.default_rng([seed, PLANT_STREAM])
    history, rows = clean_history(market), len(market.quantity)
    events = round(rate * rows) if rows else 0
    used_days, reserved, planted, anomaly_id = set(), set(), [], 0
    for rule in PLANTED_RULES:
        for _ in range(events):
            for _attempt in range(PLANT_ATTEMPTS):
                anchor = int(rng.integers(rows))
                investor, day = int(market.draws["investor"][anchor]), int(market.draws["day"][anchor])
                symbol = int(market.draws["symbol"][rng.choice(history.by_investor[investor])])
                if (investor, day) in used_days or (investor, symbol) in reserved:
                    continue
                trades = PLANTERS[rule](rng, market, history, anchor, symbol)
                if trades:
                    anomaly_id += 1
                    planted += [{**trade, "anomaly_id": anomaly_id} for trade in trades]
                    used_days.add((investor, day))
                    if rule == "ROUND_TRIP":
                        reserved.add((investor, symbol))
                    break
    return planted


def merge_planted(market, clean_lines, planted, ref_prefix):
    """The clean and planted trade lines in time order (clean first on a tie), and the ground-truth lines."""
    clean_keys = market.draws["day"].astype(np.int64) * SECONDS_PER_DAY + market.draws["second"]
    planted = sorted(planted, key=lambda trade: trade["key"])  # stable: a pattern's trades keep their order
    order = np.argsort(np.concatenate([clean_keys, [t["key"] for t in planted]]), kind="stable")
    symbols = [s.symbol for s in constants.STOCKS]
    lines, truth, number = [], [], 0
    for index in order.tolist():
        if index < len(clean_lines):
            lines.append(clean_lines[index])
            continue
        trade, number = planted[index - len(clean_lines)], number + 1
        ref, (day, second) = f"{ref_prefix}-{number:06d}", divmod(trade["key"], SECONDS_PER_DAY)
        lines.append(f"{ref},{market.investors[trade['investor']].investor_id},{symbols[trade['symbol']]},"
                     f"{trade['side']},{trade['quantity']},{trade['price']:.2f},{market.days[day].isoformat()} "
                     f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}")
        truth.append(f"{ref},{trade['rule']},{trade['anomaly_id']}")
    return lines, truth


GENERATED_REF = re.compile(rb"S[0-9]+N[0-9]+-")  # how every generated txn_ref starts (see run_tag)


def refuse_to_overwrite(trades_path, beside_paths):
    """InputError rather than replace data the generator did not write: a trades file with any row that is not a
    generated trade, or a prices or ground-truth file in a folder that holds no generated trades file."""
    generated = is_generated(trades_path)
    if generated is False:
        _refuse(trades_path)
    existing = [path for path in beside_paths if os.path.exists(path)]
    if existing and not generated and not _folder_has_generated_trades(os.path.dirname(trades_path) or "."):
        _refuse(existing[0])


def _refuse(path):
    raise cli.InputError(f"{path} exists and was not written by the generator; not overwriting it "
                         "(choose another --out/--input, or load it as it is with --no-generate)")


def is_generated(path):
    """Does `path` hold only generated trades (or nothing)? None if there is no such file."""
    try:
        with open(path, "rb") as handle:
            header = handle.readline().strip()
            return not header or (header == TRADE_HEADER.encode()
                                  and all(GENERATED_REF.match(line) or not line.strip() for line in handle))
    except FileNotFoundError:
        return None


def _folder_has_generated_trades(folder):
    """Does the folder hold a trades file the generator wrote (whose prices file sits beside it)?"""
    return any(is_generated(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
               if name.endswith(".csv") and not name.endswith("_anomalies.csv"))


def write_csv(path, header, lines):
    """Write a CSV file with LF line endings."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header + "\n")
        handle.write("\n".join(lines))
        handle.write("\n" if lines else "")


def prices_path_for(out):
    """The prices file written beside a trades file."""
    return os.path.join(os.path.dirname(out), "market_prices.csv")


def anomalies_path_for(out):
    """The ground-truth file written beside a trades file: `<out stem>_anomalies.csv`."""
    return f"{os.path.splitext(out)[0]}_anomalies.csv"


def write_dummy_data(out, rows, seed, prices_out=None, end_date=constants.DEFAULT_END_DATE,
                     investor_count=constants.DEFAULT_INVESTOR_COUNT, progress=False):
    """Generate and write the trades and prices files; return (trades written, closes written)."""
    trades, prices = generate(rows, seed, end_date, investor_count, progress)
    _write_files([(out, TRADE_HEADER, trades), (prices_out or prices_path_for(out), PRICE_HEADER, prices)])
    return len(trades), len(prices)


def write_anomalous_data(out, rows, seed, rate, prices_out=None, anomalies_out=None,
                         end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT,
                         progress=False):
    """Generate with planted anomalies and write trades, prices and ground truth.

    Returns (trades written, closes written, planted trades, planted anomalies)."""
    trades, prices, truth = generate_with_anomalies(rows, seed, rate, end_date, investor_count, progress)
    _write_files([(out, TRADE_HEADER, trades), (prices_out or prices_path_for(out), PRICE_HEADER, prices),
                  (anomalies_out or anomalies_path_for(out), ANOMALY_HEADER, truth)])
    return len(trades), len(prices), len(truth), len({line.rsplit(",", 1)[1] for line in truth})


def _write_files(files):
    refuse_to_overwrite(files[0][0], [path for path, _, _ in files[1:]])
    try:
        for path, header, lines in files:
            write_csv(path, header, lines)
    except OSError as error:
        raise cli.InputError(f"cannot write {error.filename}: {error.strerror}") from None


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=10_000, help="number of trades (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument("--out", default=db_config.project_path("transactions.csv"),
                        help="trades CSV (default: transactions.csv in the project folder)")
    parser.add_argument("--prices-out", help="daily closes CSV (default: market_prices.csv beside --out)")
    parser.add_argument("--end-date", type=date.fromisoformat, default=constants.DEFAULT_END_DATE,
                        help="last trading day, YYYY-MM-DD (default: %(default)s)")
    parser.add_argument("--investors", type=int, default=constants.DEFAULT_INVESTOR_COUNT,
                        help="number of investors trading, ids from 1001 (default: %(default)s)")
    parser.add_argument("--anomalies", type=float, default=0.0, metavar="RATE",
                        help="plant each surveillance pattern RATE times per trade, e.g. 0.001 (default: none)")
    parser.add_argument("--anomalies-out", help="ground truth CSV (default: <out stem>_anomalies.csv beside --out)")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if args.rows < 0 or args.investors < 1:
        parser.error("--rows must be 0 or more and --investors at least 1")
    if args.end_date >= date.today():
        parser.error(f"--end-date {args.end_date} is not before today: its trading hours may not be over, and the "
                     "loader rejects trades from the future")
    if not 0 <= args.anomalies <= 0.02:
        parser.error(f"--anomalies {args.anomalies:g} is out of range; give a rate from 0 to 0.02, e.g. 0.001")
    prices_out = args.prices_out or prices_path_for(args.out)

    def work():
        started = time.perf_counter()
        if args.anomalies:
            return _write_with_anomalies(args, prices_out, started)
        trades, closes = write_dummy_data(args.out, args.rows, args.seed, prices_out, args.end_date, args.investors,
                                          cli.progress_enabled(args))
        print(f"{args.out}: {trades} trades written; {prices_out}: {closes} daily closes "
              f"({time.perf_counter() - started:.1f} s, seed {args.seed})")
        return cli.EXIT_OK

    return cli.run(work, args, "generate_dummy_data")


def _write_with_anomalies(args, prices_out, started):
    anomalies_out = args.anomalies_out or anomalies_path_for(args.out)
    trades, closes, planted, anomalies = write_anomalous_data(
        args.out, args.rows, args.seed, args.anomalies, prices_out, anomalies_out, args.end_date, args.investors,
        cli.progress_enabled(args))
    print(f"{args.out}: {trades} trades written ({planted} of them planted, {anomalies} anomalies); "
          f"{prices_out}: {closes} daily closes; {anomalies_out}: ground truth "
          f"({time.perf_counter() - started:.1f} s, seed {args.seed})")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
