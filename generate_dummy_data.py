"""Generate realistic, reproducible trades with their fees, the daily closes they were priced from, and the
corporate actions (splits, cash dividends) of those days.

First stage of the chain: writes the trades CSV (the canonical header of docs/file-formats.md and a trailing `fee`
column), `market_prices.csv` beside it (or --prices-out) and `corporate_actions.csv` beside it (or --actions-out,
header stock_symbol,ex_date,action,value, rows sorted by ex_date, stock_symbol, action); load_transactions loads
the two files beside a trade file before it. Daily closes follow a geometric Brownian motion per symbol over about a
year of weekdays; trades happen on weekdays between 09:30 and 16:00, priced within 1% of that day's close, with
heavy-tailed quantities scaled by the investor's risk profile; each investor favours a few symbols; a SELL never
exceeds what the investor holds at that moment; rows are in time order. The same --seed gives byte-identical files,
with or without each option below.

Fees: a broker-like schedule, fee = max(1.00, 0.05% of quantity x price), rounded half-up to the cent and written
with 2 decimals. It is computed from the trade (no random draw), planted trades included.

Corporate actions come from their own random stream, so the trades' random draws are those of the same seed without
them. Splits (value = new shares per old share), when the window has at least 40 weekdays: a forward split (2, 3 or
4 for 1) of the symbol with the highest close and a reverse split (1 for 10, value 0.1) of the symbol with the
lowest close, each ex_date a weekday at least 10 weekdays inside the window. From ex_date on the closes are the
same random walk divided by the value (the close jumps by the ratio on ex_date; split-adjusted returns have no jump)
and trades are in post-split terms: prices from those closes, sizes times the value (at least 1 share). At a split
every holding becomes floor(holding x value) (the ledger pays the fraction out as cash in lieu), and no later SELL
exceeds that. Cash dividends: the symbols of the Financials, Health Care, Energy and Consumer Staples sectors pay
quarterly, ex_dates every 63 weekdays from a start day drawn per symbol; value = a quarterly yield drawn per symbol
(0.4% to 1%) of the ex_date's close, rounded half-up to the cent. Dividends do not move the closes (the simulation
has no ex-dividend drop).

`--no-fees` leaves the fee column out; `--no-corporate-actions` writes no splits, no dividends and no
corporate_actions.csv (one already there is left as it is). With both, the files are byte for byte those of the
generator before fees and corporate actions.

`--anomalies RATE` also plants each trade-level surveillance pattern (LARGE_TRADE, OFF_MARKET_PRICE, WASH_TRADE,
ROUND_TRIP, BURST) RATE times per generated trade, as extra trades among the clean ones, and writes the ground
truth (txn_ref, rule, anomaly_id) to a sidecar CSV (`<out stem>_anomalies.csv` beside --out). The planting uses
its own random stream: the clean trades are exactly those of the same seed without anomalies, and every
planted SELL follows a planted BUY of the same quantity on the same day, so no sell ever exceeds what is held.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import argparse
import itertools
import logging
import os
import re
import sys
import time
from collections import namedtuple
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
from tqdm import tqdm

import cli
import constants
import db_config

logger = logging.getLogger(__name__)

TRADE_HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
FEE_TRADE_HEADER = f"{TRADE_HEADER},fee"
PRICE_HEADER = "stock_symbol,price_date,close_price"
ACTION_HEADER = "stock_symbol,ex_date,action,value"
FAVOURITE_SHARE = 0.8  # share of an investor's trades in their favourite symbols
SELL_PROBABILITY = 0.45  # chance that a trade in a held position is a sell
FULL_CLOSE_PROBABILITY = 0.25  # chance that a sell closes the whole position
ANOMALY_HEADER = "txn_ref,rule,anomaly_id"

FEE_BASIS_POINTS = 5  # the fee is 0.05% of the trade's notional (quantity x price) ...
MIN_FEE_CENTS = 100  # ... and at least 1.00 (currency units)
ACTIONS_STREAM = 1_301  # second word of the corporate actions stream's seed: never the clean or planting stream
MIN_SPLIT_WINDOW = 40  # weekdays: a shorter window has no splits
SPLIT_MARGIN = 10  # weekdays of the window before and after every split's ex_date, at least
FORWARD_SPLIT_VALUES = (2, 3, 4)  # new shares per old share of the highest-priced symbol
REVERSE_SPLIT_VALUE = Decimal("0.1")  # 1 for 10, of the lowest-priced symbol
DIVIDEND_SECTORS = ("Financials", "Health Care", "Energy", "Consumer Staples")  # their symbols pay dividends
DIVIDEND_INTERVAL = 63  # weekdays between a symbol's ex_dates: a quarter
DIVIDEND_YIELDS = (0.004, 0.01)  # a quarter's dividend per share, as a share of the ex_date's close
CENT = Decimal("0.01")
SECONDS_PER_DAY = 86_400
CHUNK_ROWS = 100_000  # trades replayed, priced and written at a time: the text of a run is never held whole

Split = namedtuple("Split", "day symbol value")  # day: index into the window; symbol: into STOCKS; value: Decimal
Dividend = namedtuple("Dividend", "day symbol value")  # value: currency units per share, Decimal with 2 decimals


def weekdays_ending(end_date, count):
    """The last `count` weekdays up to and including end_date, oldest first."""
    days, day = [], end_date
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return days[::-1]


def simulate_walk(rng, days, stocks=constants.STOCKS):
    """Daily closes before rounding and splits, shape (days, symbols), by geometric Brownian motion."""
    sigma = np.array([s.annual_volatility for s in stocks]) / np.sqrt(constants.TRADING_DAYS_PER_YEAR)
    drift = 0.07 / constants.TRADING_DAYS_PER_YEAR - sigma**2 / 2  # 7% a year expected growth
    shocks = rng.standard_normal((len(days), len(stocks))) * sigma + drift
    shocks[0] = 0.0  # the first day closes at the start price
    return np.array([s.start_price for s in stocks]) * np.exp(np.cumsum(shocks, axis=0))


def round_closes(closes):
    """Closes rounded to the cent, at least 0.01."""
    return np.maximum(np.round(closes, 2), 0.01)


def simulate_closes(rng, days, stocks=constants.STOCKS):
    """Daily closes, shape (days, symbols), by geometric Brownian motion, rounded to the cent."""
    return round_closes(simulate_walk(rng, days, stocks))


def plan_splits(rng, walk):
    """A forward split of the highest-priced symbol and a reverse split of the lowest-priced other one, as Split
    records in day order; none when the window is shorter than MIN_SPLIT_WINDOW weekdays."""
    if len(walk) < MIN_SPLIT_WINDOW:
        return []
    forward_day, reverse_day = (int(day) for day in rng.integers(SPLIT_MARGIN, len(walk) - SPLIT_MARGIN, 2))
    forward_symbol = int(np.argmax(walk[forward_day - 1]))  # by the last close before ex_date
    others = np.where(np.arange(walk.shape[1]) == forward_symbol, np.inf, walk[reverse_day - 1])
    forward_value = Decimal(int(rng.choice(FORWARD_SPLIT_VALUES)))
    return sorted([Split(forward_day, forward_symbol, forward_value),
                   Split(reverse_day, int(np.argmin(others)), REVERSE_SPLIT_VALUE)])


def split_factors(splits, shape):
    """Shares per original share on each (day, symbol): the product of the values of the splits in effect."""
    factor = np.ones(shape)
    for split in splits:
        factor[split.day:, split.symbol] *= float(split.value)
    return factor


def plan_dividends(rng, closes, splits):
    """The quarterly cash dividends of the symbols of DIVIDEND_SECTORS, as Dividend records.

    A dividend that would share its ex_date with a split of its symbol goes one weekday later, so that the order of
    the two never matters."""
    split_days = {(split.day, split.symbol) for split in splits}
    dividends = []
    for symbol, stock in enumerate(constants.STOCKS):
        if stock.sector not in DIVIDEND_SECTORS:
            continue
        first_day = int(rng.integers(1, DIVIDEND_INTERVAL + 1))
        quarterly_yield = Decimal(f"{rng.uniform(*DIVIDEND_YIELDS):.4f}")
        for quarter_day in range(first_day, len(closes), DIVIDEND_INTERVAL):
            day = quarter_day + ((quarter_day, symbol) in split_days)
            if day < len(closes):
                value = (Decimal(f"{closes[day, symbol]:.2f}") * quarterly_yield).quantize(CENT, ROUND_HALF_UP)
                dividends.append(Dividend(day, symbol, max(value, CENT)))
    return dividends


def draw_trades(rng, rows, day_count, investors, stock_count):
    """Random draws for every trade, in time order: day, second of day, investor and symbol (int32 arrays), size
    (int64) and "later", the LaterDraws that the sell and price draws of any slice of trades are drawn from."""
    draws = draw_in_draw_order(rng, rows, day_count, investors, stock_count)
    order = np.argsort(draws["day"] * SECONDS_PER_DAY + draws["second"], kind="stable")  # a tie keeps draw order
    # (as np.lexsort did, 2 to 3 times slower; the int32 key holds 24,855 days)
    for name in list(draws):
        draws[name] = draws[name][order]  # one array at a time: the one in draw order is freed at once
    draws["later"] = LaterDraws(rng.bit_generator.state, rows)
    return draws


def draw_in_draw_order(rng, rows, day_count, investors, stock_count):
    """The draws of draw_trades before they are put in time order."""
    activity = rng.pareto(1.5, len(investors)) + 1.0  # a few investors trade a lot
    investor = rng.choice(len(investors), rows, p=activity / activity.sum()).astype(np.int32)
    favourites = np.array([rng.choice(stock_count, 4, replace=False) for _ in investors])
    symbol = np.where(
        rng.random(rows) < FAVOURITE_SHARE,
        favourites[investor, rng.integers(0, 4, rows)],
        rng.integers(0, stock_count, rows),
    ).astype(np.int32)
    day = rng.integers(0, day_count, rows).astype(np.int32)
    second = rng.integers(constants.MARKET_OPEN_SECONDS, constants.MARKET_CLOSE_SECONDS, rows).astype(np.int32)
    scale = np.array([constants.PROFILE_QUANTITY_SCALE[i.risk_profile] for i in investors])
    size = rng.lognormal(np.log(20), 1.1, rows)
    size *= scale[investor]  # in place, as the temporaries of 8 bytes a trade add up
    size = np.maximum(1, np.round(size, out=size)).astype(np.int64)
    return {"day": day, "second": second, "investor": investor, "symbol": symbol, "size": size}


LaterDraws = namedtuple("LaterDraws", "state rows")  # the clean stream's state after the sizes; the trade count
LATER_DRAWS = ("sell_draw", "sell_share", "price_draw")  # the arrays of `rows` values drawn from there, in order


def later_draw(later, name, start, stop):
    """The values of trades start..stop-1 of one of LATER_DRAWS, as if all three were drawn whole one after the
    other: each value is one 64-bit step of the stream, so a copy of it advanced to the slice draws exactly that
    slice (and the whole arrays, 24 bytes a trade, are never held)."""
    bits = np.random.PCG64()
    bits.state = later.state
    bits.advance(LATER_DRAWS.index(name) * later.rows + start)
    stream = np.random.Generator(bits)
    if name == "price_draw":
        return stream.uniform(-constants.TRADE_PRICE_BAND, constants.TRADE_PRICE_BAND, stop - start)
    return stream.random(stop - start)


def row_ranges(rows):
    """(start, stop) of the consecutive slices of CHUNK_ROWS trades (the last one shorter) that cover `rows`."""
    return [(start, min(start + CHUNK_ROWS, rows)) for start in range(0, rows, CHUNK_ROWS)]


def splits_in_effect(day, symbol, splits):
    """Per trade (arrays of day and symbol): how many splits of its symbol have an ex_date on or before its day."""
    count = np.zeros(len(day), dtype=np.int64)
    for split in splits:
        count += (symbol == split.symbol) & (day >= split.day)
    return count


def split_holding(held, values):
    """Shares held after splits of these values: floor(held x value) each (the fraction is paid as cash in lieu)."""
    for value in values:
        held = int(held * value)  # exact Decimal product; int() floors a number >= 0
    return held


def decide_sides(draws, stock_count, progress=False, splits=()):
    """Replay holdings in time order, CHUNK_ROWS trades at a time: returns (is_sell, quantity, holding after each
    trade); a sell never exceeds the holding, which becomes floor(holding x value) at each split of its symbol
    (`splits` in day order)."""
    rows = len(draws["day"])
    sides = (np.zeros(rows, dtype=bool), draws["size"].copy(), np.zeros(rows, dtype=np.int64))
    holdings, split_values = {}, {}  # position -> (shares held, splits applied); symbol -> its split values
    for split in splits:
        split_values.setdefault(split.symbol, []).append(split.value)
    with tqdm(total=rows, unit=" trades", leave=False, desc="generating", disable=not progress,
              mininterval=0.5) as bar:
        for start, stop in row_ranges(rows):
            day, symbol = draws["day"][start:stop], draws["symbol"][start:stop]
            trades = zip((draws["investor"][start:stop].astype(np.int64) * stock_count + symbol).tolist(),
                         symbol.tolist(), splits_in_effect(day, symbol, splits).tolist(),
                         later_draw(draws["later"], "sell_draw", start, stop).tolist(),
                         later_draw(draws["later"], "sell_share", start, stop).tolist())
            replay_sides(trades, start, holdings, split_values, sides)
            bar.update(stop - start)
    return sides


def replay_sides(trades, start, holdings, split_values, sides):
    """Decide the side and quantity of each trade (position, symbol, splits in effect, sell draw, sell share) from
    row `start` on into sides (is_sell, quantity, holding_after), carrying `holdings` on."""
    is_sell, quantity, holding_after = sides
    for i, (key, symbol, in_effect, sell_draw, share) in enumerate(trades, start):
        held, applied = holdings.get(key, (0, 0))
        if in_effect > applied:
            held = split_holding(held, split_values[symbol][applied:in_effect])
        if held > 0 and sell_draw < SELL_PROBABILITY:
            sold = held if share < FULL_CLOSE_PROBABILITY else max(1, min(held, round(held * share)))
            is_sell[i], quantity[i] = True, sold
            held -= sold
        else:
            held += int(quantity[i])
        holdings[key], holding_after[i] = (held, in_effect), held


def fee_cents(quantity, price_cents):
    """The fee of a trade in cents: max(1.00, 0.05% of quantity x price) rounded half-up to the cent (exact integer
    arithmetic; works on numbers and on numpy arrays)."""
    return np.maximum(MIN_FEE_CENTS, (quantity * price_cents * FEE_BASIS_POINTS + 5_000) // 10_000)


def fee_text(cents):
    """A fee in cents as the CSV writes it, with 2 decimals: 123 -> '1.23'."""
    return f"{cents // 100}.{cents % 100:02d}"


def trade_prices(market, start, stop):
    """The prices of trades start..stop-1: the day's close moved by the trade's price draw, rounded to the cent, at
    least 0.01."""
    draws = market.draws
    closes = market.closes[draws["day"][start:stop], draws["symbol"][start:stop]]
    return np.maximum(np.round(closes * (1 + later_draw(draws["later"], "price_draw", start, stop)), 2), 0.01)


def trade_lines(market, fees=False):
    """Yield the CSV lines of the clean trades, header excluded, formatted CHUNK_ROWS at a time; with `fees`, each
    ends with its fee."""
    draws = market.draws
    day_text = [d.isoformat() for d in market.days]
    clock = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(constants.MARKET_CLOSE_SECONDS + 1)]
    symbols = [s.symbol for s in constants.STOCKS]
    investor_ids = [str(i.investor_id) for i in market.investors]
    for start, stop in row_ranges(len(market.quantity)):
        prices, quantity = trade_prices(market, start, stop), market.quantity[start:stop]
        price_cents = np.round(prices * 100).astype(np.int64)
        fee_cells = ([f",{fee_text(cents)}" for cents in fee_cents(quantity, price_cents).tolist()] if fees
                     else [""] * (stop - start))
        yield from [
            f"{market.run_tag}-{n:07d},{investor_ids[inv]},{symbols[sym]},{'SELL' if sell else 'BUY'},{qty},"
            f"{price:.2f},{day_text[day]} {clock[second]}{fee}"
            for n, (inv, sym, sell, qty, price, day, second, fee) in enumerate(zip(
                *(draws[name][start:stop].tolist() for name in ("investor", "symbol")),
                market.is_sell[start:stop].tolist(), quantity.tolist(), prices.tolist(),
                *(draws[name][start:stop].tolist() for name in ("day", "second")), fee_cells), start=start + 1)
        ]


def price_lines(days, closes):
    """The CSV lines of the daily closes, header excluded."""
    return [
        f"{stock.symbol},{day.isoformat()},{closes[d, s]:.2f}"
        for s, stock in enumerate(constants.STOCKS) for d, day in enumerate(days)
    ]


def action_lines(days, splits, dividends):
    """The CSV lines of the corporate actions, header excluded, sorted by ex_date, stock_symbol and action."""
    symbols = [s.symbol for s in constants.STOCKS]
    rows = [(days[record.day].isoformat(), symbols[record.symbol], action, record.value)
            for action, records in (("SPLIT", splits), ("DIVIDEND", dividends)) for record in records]
    return [f"{symbol},{ex_date},{action},{value}" for ex_date, symbol, action, value in sorted(rows)]


def to_post_split_shares(draws, split_factor):
    """Turn each trade's size into the shares of its day (times the split factor, rounded, at least 1), in place,
    CHUNK_ROWS trades at a time."""
    for start, stop in row_ranges(len(draws["size"])):
        factor = split_factor[draws["day"][start:stop], draws["symbol"][start:stop]]
        draws["size"][start:stop] = np.maximum(1, np.round(draws["size"][start:stop] * factor))


Market = namedtuple("Market", "days closes investors draws is_sell quantity run_tag split_factor splits dividends "
                              "holding_after")


def simulate_market(seed, rng, days, corporate_actions):
    """(closes, split factors, splits, dividends): the clean stream's random walk, split and rounded, and the corporate
    actions drawn from their own stream (none without `corporate_actions`)."""
    walk = simulate_walk(rng, days)
    actions_rng = np.random.default_rng([seed, ACTIONS_STREAM])
    splits = plan_splits(actions_rng, walk) if corporate_actions else []
    split_factor = split_factors(splits, walk.shape)
    closes = round_closes(walk / split_factor)
    dividends = plan_dividends(actions_rng, closes, splits) if corporate_actions else []
    return closes, split_factor, splits, dividends


def simulate(rows, seed, end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT,
             progress=False, corporate_actions=False):
    """The clean simulation for `rows` trades: closes, draws, sides, quantities (prices: trade_prices) and (with
    `corporate_actions`) splits and dividends; deterministic per seed."""
    rng = np.random.default_rng(seed)
    days = weekdays_ending(end_date, constants.TRADING_DAYS)
    closes, split_factor, splits, dividends = simulate_market(seed, rng, days, corporate_actions)
    investors = constants.default_investors(investor_count)
    draws = draw_trades(rng, rows, len(days), investors, len(constants.STOCKS))
    to_post_split_shares(draws, split_factor)
    is_sell, quantity, holding_after = decide_sides(draws, len(constants.STOCKS), progress, splits)
    run_tag = f"S{seed}N{rows}"  # refs of different runs never collide; the same run repeats its refs
    return Market(days, closes, investors, draws, is_sell, quantity, run_tag, split_factor, splits, dividends,
                  holding_after)


Generated = namedtuple("Generated", "trades prices actions truth splits dividends")  # trades: an iterator of lines
# (formatted as they are read); prices, actions, truth: lists of lines; splits, dividends: counts


def generate_files(rows, seed, *, fees=True, corporate_actions=True, anomaly_rate=0.0,
                   end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT,
                   progress=False):
    """The lines (header excluded) of every file of a run, deterministic per seed: trades as an iterator (with a fee
    column when `fees`; the clean trades plus planted patterns when anomaly_rate > 0), closes, corporate actions
    (none without `corporate_actions`) and the planted ground truth; with the numbers of splits and dividends."""
    market = simulate(rows, seed, end_date, investor_count, progress, corporate_actions)
    trades, truth = trade_lines(market, fees), []
    if anomaly_rate:
        planted = plant_anomalies(market, anomaly_rate, seed)
        trades, truth = merge_planted(market, trades, planted, f"{market.run_tag}-R{anomaly_rate:g}", fees)
    return Generated(trades, price_lines(market.days, market.closes),
                     action_lines(market.days, market.splits, market.dividends), truth, len(market.splits),
                     len(market.dividends))


def generate(rows, seed, end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT,
             progress=False):
    """Generate (trade lines, price lines) for `rows` trades, without fees or corporate actions (the files of
    before issue 14, for TRADE_HEADER); deterministic for a given seed."""
    generated = generate_files(rows, seed, fees=False, corporate_actions=False, end_date=end_date,
                               investor_count=investor_count, progress=progress)
    return list(generated.trades), generated.prices


def generate_with_anomalies(rows, seed, rate, end_date=constants.DEFAULT_END_DATE,
                            investor_count=constants.DEFAULT_INVESTOR_COUNT, progress=False):
    """Generate (trade lines, price lines, ground-truth lines): the clean trades of `seed` plus planted patterns,
    without fees or corporate actions, as generate()."""
    generated = generate_files(rows, seed, fees=False, corporate_actions=False, anomaly_rate=rate,
                               end_date=end_date, investor_count=investor_count, progress=progress)
    return list(generated.trades), generated.prices, generated.truth



# ---------------------------------------------------------------------------------------------- planted anomalies

PLANT_STREAM = 7_919  # second word of the planting stream's seed: never the clean stream
PLANTED_RULES = ("ROUND_TRIP", "WASH_TRADE", "BURST", "OFF_MARKET_PRICE", "LARGE_TRADE")  # planting order
PLANT_MIN_HISTORY = constants.LARGE_TRADE_LOOKBACK_TRADES  # earlier trades of an investor given a LARGE_TRADE
PLANT_ATTEMPTS = 200  # anchors tried per planted event
LARGE_TRADE_SIGMAS = (5.5, 8.0)  # ln(notional): this many robust standard deviations above the investor's median
LARGE_TRADE_FACTORS = (20.0, 1_000_000.0)  # and from 20 to 1,000,000 times the median notional
LARGE_TRADE_MAX_QUANTITY = 1_000_000_000  # shares: a quantity is an INT
OFF_MARKET_DEVIATIONS = (0.07, 0.25)  # price this far from the day's close, either side
WASH_TRADE_GAP_SECONDS = (3, 3 * 60 + 1)  # the SELL 3 s to 3 min after the BUY of the same quantity
WASH_TRADE_MAX_PRICE_GAP = 0.0005  # the SELL's price at most 0.05% from the BUY's ...
WASH_TRADE_MOVE_SHARE = 0.5  # ... and at most half the symbol's expected random move over the gap (or one cent;
# the rule's constants.WASH_TRADE_MOVE_SHARE is its own: tuning the rule does not change what is planted)
ROUND_TRIP_EXTRA = (0, 4)  # ROUND_TRIP_MIN_COUNT + 0..3 round trips in one day
ROUND_TRIP_HOLD_SECONDS = (30, 15 * 60 + 1)  # each opened from flat and closed to flat after 30 s to 15 min
ROUND_TRIP_PRICE_MOVE = (0.003, 0.008)  # the closing SELL this far from the opening BUY: not a wash trade
BURST_TRADES = (11, 61)  # 11 to 60 trades ...
BURST_SPAN_SECONDS = (30, 4 * 60 + 1)  # ... within 30 s to 4 minutes (and at least one second apart)
QUIET_SECONDS = 15 * 60  # no clean trade of the investor this close to a planted wash trade or burst

History = namedtuple("History", "key notional by_investor by_position holding_after")


def clean_history(market):
    """Lookups over the clean trades: time key (day * 86400 + second), notional, indexes per investor and per
    position in time order, and the position's clean holding after each trade (splits included)."""
    draws = market.draws
    key = draws["day"].astype(np.int64) * SECONDS_PER_DAY + draws["second"]
    by_investor, by_position = _group_indexes(draws["investor"]), _group_indexes(
        draws["investor"] * len(constants.STOCKS) + draws["symbol"])
    notional = market.quantity * trade_prices(market, 0, len(market.quantity))
    return History(key, notional, by_investor, by_position, market.holding_after)


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


def _normal_quantity(rng, market, investor, day, symbol):
    scale = constants.PROFILE_QUANTITY_SCALE[market.investors[investor].risk_profile]
    size = max(1, round(rng.lognormal(np.log(20), 1.1) * scale))  # as draw_trades sizes a trade
    return max(1, round(size * market.split_factor[day, symbol]))  # in post-split terms, as simulate()


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
                     _normal_quantity(rng, market, investor, day, symbol), price)]


def plant_wash_trade(rng, market, history, anchor, symbol):
    """A BUY then a SELL of the same quantity 3 s to 3 min apart at no real price change (wash_price_gap), in a
    quiet moment."""
    investor, day = market.draws["investor"][anchor], market.draws["day"][anchor]
    gap = int(rng.integers(*WASH_TRADE_GAP_SECONDS))
    start = _start_key(rng, day, gap)
    if not _quiet(history, investor, start, start + gap):
        return None
    quantity = _normal_quantity(rng, market, investor, day, symbol)
    cents = int(round(_normal_price(rng, market, day, symbol) * 100))
    difference = wash_price_gap(rng, cents, constants.STOCKS[symbol].annual_volatility, gap)
    return [_planted("WASH_TRADE", start, investor, symbol, "BUY", quantity, cents / 100),
            _planted("WASH_TRADE", start + gap, investor, symbol, "SELL", quantity, (cents + difference) / 100)]


def wash_price_gap(rng, cents, annual_volatility, gap):
    """The SELL's price minus the BUY's, in whole cents, either sign: up to the smaller of WASH_TRADE_MAX_PRICE_GAP
    and WASH_TRADE_MOVE_SHARE x the expected random move over `gap` seconds (daily volatility x sqrt(gap /
    TRADING_SECONDS_PER_DAY)) of the BUY's price, rounded down; 0 or 1 cent where that is under a cent."""
    move = annual_volatility / np.sqrt(constants.TRADING_DAYS_PER_YEAR) * np.sqrt(
        gap / constants.TRADING_SECONDS_PER_DAY)
    largest = int(cents * min(WASH_TRADE_MAX_PRICE_GAP, WASH_TRADE_MOVE_SHARE * move))
    return int(rng.integers(0, max(1, largest) + 1)) * int(rng.choice((-1, 1)))


def plant_burst(rng, market, history, anchor, symbol):
    """BURST_TRADES BUYs by one investor, at most one a second, within BURST_SPAN_SECONDS, in a quiet moment."""
    investor, day = market.draws["investor"][anchor], market.draws["day"][anchor]
    count = int(rng.integers(*BURST_TRADES))
    span = int(rng.integers(max(count, BURST_SPAN_SECONDS[0]), BURST_SPAN_SECONDS[1]))
    start = _start_key(rng, day, span)
    if not _quiet(history, investor, start, start + span):
        return None
    offsets = np.sort(rng.choice(span, count, replace=False))
    return [_planted("BURST", start + offset, investor, symbol, "BUY",
                     _normal_quantity(rng, market, investor, day, symbol), _normal_price(rng, market, day, symbol))
            for offset in offsets]


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
        quantity = _normal_quantity(rng, market, investor, day, symbol)
        price = _normal_price(rng, market, day, symbol)
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


def merge_planted(market, clean_lines, planted, ref_prefix, fees=False):
    """(an iterator over the clean and planted trade lines in time order, clean first on a tie; the ground-truth
    lines); with `fees`, a planted trade's line ends with its fee, by the rule of the clean trades."""
    planted = sorted(planted, key=lambda trade: trade["key"])  # stable: a pattern's trades keep their order
    refs = [f"{ref_prefix}-{number:06d}" for number in range(1, len(planted) + 1)]
    clean_keys = market.draws["day"].astype(np.int64) * SECONDS_PER_DAY + market.draws["second"]
    after = np.searchsorted(clean_keys, [trade["key"] for trade in planted], "right").tolist()  # clean lines first
    lines = [planted_line(market, trade, ref, fees) for trade, ref in zip(planted, refs)]
    truth = [f"{ref},{trade['rule']},{trade['anomaly_id']}" for trade, ref in zip(planted, refs)]
    return insert_lines(clean_lines, after, lines), truth


def planted_line(market, trade, ref, fees):
    """The CSV line of a planted trade."""
    day, second = divmod(trade["key"], SECONDS_PER_DAY)
    fee = f",{fee_text(int(fee_cents(trade['quantity'], round(trade['price'] * 100))))}" if fees else ""
    return (f"{ref},{market.investors[trade['investor']].investor_id},{constants.STOCKS[trade['symbol']].symbol},"
            f"{trade['side']},{trade['quantity']},{trade['price']:.2f},{market.days[day].isoformat()} "
            f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}{fee}")


def insert_lines(lines, after, inserted):
    """Yield `lines` with each of `inserted` after as many of them as its entry of `after` (non-decreasing) says."""
    lines, passed = iter(lines), 0
    for count, line in zip(after, inserted):
        yield from itertools.islice(lines, count - passed)
        passed = count
        yield line
    yield from lines


GENERATED_REF = re.compile(rb"S[0-9]+N[0-9]+-")  # how every generated txn_ref starts (see run_tag)


def refuse_to_overwrite(trades_path, beside_paths):
    """InputError rather than replace data the generator did not write: a trades file with any row that is not a
    generated trade, or a prices, corporate actions or ground-truth file in a folder that holds no generated trades
    file."""
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
            return not header or (header in (TRADE_HEADER.encode(), FEE_TRADE_HEADER.encode())
                                  and all(GENERATED_REF.match(line) or not line.strip() for line in handle))
    except FileNotFoundError:
        return None


def _folder_has_generated_trades(folder):
    """Does the folder hold a trades file the generator wrote (whose prices file sits beside it)?"""
    return any(is_generated(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
               if name.endswith(".csv") and not name.endswith("_anomalies.csv"))


def write_csv(path, header, lines):
    """Write a CSV file with LF line endings, line by line from any iterable of lines; return how many."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header + "\n")
        for count, line in enumerate(lines, 1):
            handle.write(line + "\n")
    return count


def prices_path_for(out):
    """The prices file written beside a trades file."""
    return os.path.join(os.path.dirname(out), "market_prices.csv")


def actions_path_for(out):
    """The corporate actions file written beside a trades file."""
    return os.path.join(os.path.dirname(out), "corporate_actions.csv")


def anomalies_path_for(out):
    """The ground-truth file written beside a trades file: `<out stem>_anomalies.csv`."""
    return f"{os.path.splitext(out)[0]}_anomalies.csv"


Written = namedtuple("Written", "trades closes splits dividends planted anomalies")  # what write_files wrote


def write_files(out, rows, seed, *, prices_out=None, actions_out=None, anomalies_out=None, anomaly_rate=0.0,
                fees=True, corporate_actions=True, end_date=constants.DEFAULT_END_DATE,
                investor_count=constants.DEFAULT_INVESTOR_COUNT, progress=False):
    """Generate and write the files of a run (generate_files): trades, prices, corporate actions unless
    `corporate_actions` is false, ground truth when anomaly_rate > 0. Returns the counts as Written."""
    generated = generate_files(rows, seed, fees=fees, corporate_actions=corporate_actions, anomaly_rate=anomaly_rate,
                               end_date=end_date, investor_count=investor_count, progress=progress)
    files = [(out, FEE_TRADE_HEADER if fees else TRADE_HEADER, generated.trades),
             (prices_out or prices_path_for(out), PRICE_HEADER, generated.prices)]
    if corporate_actions:
        files.append((actions_out or actions_path_for(out), ACTION_HEADER, generated.actions))
    if anomaly_rate:
        files.append((anomalies_out or anomalies_path_for(out), ANOMALY_HEADER, generated.truth))
    counts = _write_files(files)
    return Written(counts[0], counts[1], generated.splits, generated.dividends, len(generated.truth),
                   len({line.rsplit(",", 1)[1] for line in generated.truth}))


def write_dummy_data(out, rows, seed, prices_out=None, end_date=constants.DEFAULT_END_DATE,
                     investor_count=constants.DEFAULT_INVESTOR_COUNT, progress=False):
    """Generate and write the trades and prices files without fees or corporate actions (as generate()); return
    (trades written, closes written)."""
    written = write_files(out, rows, seed, prices_out=prices_out, fees=False, corporate_actions=False,
                          end_date=end_date, investor_count=investor_count, progress=progress)
    return written.trades, written.closes


def write_anomalous_data(out, rows, seed, rate, prices_out=None, anomalies_out=None,
                         end_date=constants.DEFAULT_END_DATE, investor_count=constants.DEFAULT_INVESTOR_COUNT,
                         progress=False):
    """Generate with planted anomalies and write trades, prices and ground truth, without fees or corporate actions.

    Returns (trades written, closes written, planted trades, planted anomalies)."""
    written = write_files(out, rows, seed, prices_out=prices_out, anomalies_out=anomalies_out, anomaly_rate=rate,
                          fees=False, corporate_actions=False, end_date=end_date, investor_count=investor_count,
                          progress=progress)
    return written.trades, written.closes, written.planted, written.anomalies


def _write_files(files):
    """Write (path, header, lines) files after refuse_to_overwrite; return the lines written to each."""
    refuse_to_overwrite(files[0][0], [path for path, _, _ in files[1:]])
    try:
        return [write_csv(path, header, lines) for path, header, lines in files]
    except OSError as error:
        raise cli.InputError(f"cannot write {error.filename}: {error.strerror}") from None


class _RefusedDatabase(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--database-url: the generator writes files only; give the database to load_transactions.py "
                     "or master_etl.py")


def make_parser():
    """The command line of the generator (it writes files only: --database-url is refused with a hint)."""
    parser = cli.make_parser(__doc__, database=False)
    parser.add_argument("--database-url", action=_RefusedDatabase, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=10_000, help="number of trades (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument("--out", default=db_config.project_path("transactions.csv"),
                        help="trades CSV (default: transactions.csv in the project folder)")
    parser.add_argument("--prices-out", help="daily closes CSV (default: market_prices.csv beside --out)")
    parser.add_argument("--actions-out", help="corporate actions CSV (default: corporate_actions.csv beside --out)")
    parser.add_argument("--no-fees", action="store_true", help="write the trades without the fee column")
    parser.add_argument("--no-corporate-actions", action="store_true",
                        help="no splits, no dividends, no corporate actions file")
    parser.add_argument("--end-date", type=date.fromisoformat, default=constants.DEFAULT_END_DATE,
                        help="last trading day, YYYY-MM-DD (default: %(default)s)")
    parser.add_argument("--investors", type=int, default=constants.DEFAULT_INVESTOR_COUNT,
                        help="number of investors trading, ids from 1001 (default: %(default)s)")
    parser.add_argument("--anomalies", type=float, default=0.0, metavar="RATE",
                        help="plant each surveillance pattern RATE times per trade, e.g. 0.001 (default: none)")
    parser.add_argument("--anomalies-out", help="ground truth CSV (default: <out stem>_anomalies.csv beside --out)")
    return parser


def check_arguments(parser, args):
    """parser.error (exit 2) for option values the generator refuses."""
    if args.rows < 0 or args.investors < 1:
        parser.error("--rows must be 0 or more and --investors at least 1")
    if args.end_date >= date.today():
        parser.error(f"--end-date {args.end_date} is not before today: its trading hours may not be over, and the "
                     "loader rejects trades from the future")
    if not 0 <= args.anomalies <= 0.02:
        parser.error(f"--anomalies {args.anomalies:g} is out of range; give a rate from 0 to 0.02, e.g. 0.001")
    if args.actions_out and args.no_corporate_actions:
        parser.error("--actions-out names a file that --no-corporate-actions does not write; give one of the two")


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    check_arguments(parser, args)
    paths = {"prices": args.prices_out or prices_path_for(args.out),
             "actions": args.actions_out or actions_path_for(args.out),
             "anomalies": args.anomalies_out or anomalies_path_for(args.out)}

    def work():
        started = time.perf_counter()
        written = write_files(args.out, args.rows, args.seed, prices_out=paths["prices"], actions_out=paths["actions"],
                              anomalies_out=paths["anomalies"], anomaly_rate=args.anomalies, fees=not args.no_fees,
                              corporate_actions=not args.no_corporate_actions, end_date=args.end_date,
                              investor_count=args.investors, progress=cli.progress_enabled(args))
        if args.no_corporate_actions and os.path.exists(paths["actions"]):
            logger.warning("%s is from an earlier run and was left as it is; load_transactions loads it with %s "
                           "(delete it, or generate without --no-corporate-actions)", paths["actions"], args.out)
        print(summary_line(args, paths, written, time.perf_counter() - started))
        return cli.EXIT_OK

    return cli.run(work, args, "generate_dummy_data")


def summary_line(args, paths, written, seconds):
    """The closing line of a run: where each file was written and what it holds."""
    planted = f" ({written.planted} of them planted, {written.anomalies} anomalies)" if args.anomalies else ""
    parts = [f"{args.out}: {cli.counted(written.trades, 'trade')} written{planted}",
             f"{paths['prices']}: {cli.counted(written.closes, 'daily close')}"]
    if not args.no_corporate_actions:
        parts.append(f"{cli.counted(written.splits, 'split')} and {cli.counted(written.dividends, 'dividend')} "
                     f"written to "
                     f"{paths['actions']}")
    if args.anomalies:
        parts.append(f"{paths['anomalies']}: ground truth")
    return f"{'; '.join(parts)} ({seconds:.1f} s, seed {args.seed})"


if __name__ == "__main__":
    sys.exit(main())
