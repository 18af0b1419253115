"""Risk scores of docs/risk-scores.md, computed by update_portfolio.py in SQL, as properties over constructed prices.

Each test builds its own daily closes (a prices file loaded beside small trade files) and checks the required
behaviour: a single-stock investor is HIGH or CRITICAL, an even spread over 10+ symbols of several sectors with
no loss is LOW, a position's score never decreases as its weight grows; and the concentration figures equal an
independent computation from portfolios.market_value. Every test runs on SQLite and on MariaDB.
"""
import math
import random
import statistics
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from sqlalchemy import select

import constants
import load_transactions
import update_portfolio
from schema import investor_risk, portfolios

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
LAST_DAY = date(2024, 6, 28)  # the last close of every constructed history; trades are on 2024-07-01
TRADE_TIME = "2024-07-01 10:00:00"
SECTOR = {stock.symbol: stock.sector for stock in constants.STOCKS}
RATIO_TOLERANCE = 1e-6  # weights are stored with 8 decimals
LAST_CLOSE = "100.01"  # not a whole number: see test_whole_number_prices for why that matters on SQLite


def weekdays(last_day, count):
    days, day = [], last_day
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return days[::-1]


def history(rng, daily_sigma, last_close="100.00", count=60):
    """Closes (as text, 2 decimals) of a random walk with daily volatility `daily_sigma` ending at last_close."""
    closes = [float(last_close)]
    for _ in range(count - 1):
        closes.append(max(0.01, round(closes[-1] / (1 + rng.gauss(0, daily_sigma)), 2)))
    return [f"{close:.2f}" for close in reversed(closes[1:])] + [last_close]


def load_market(engine, directory, closes_by_symbol, trades):
    """Load the closes {symbol: [close text, ...] ending on LAST_DAY} and trades (investor, symbol, type, qty,
    price text); then update portfolios. Returns the update summary."""
    lines = ["stock_symbol,price_date,close_price"]
    for symbol, closes in closes_by_symbol.items():
        lines += [f"{symbol},{day.isoformat()},{close}" for day, close in zip(weekdays(LAST_DAY, len(closes)), closes)]
    prices = directory / "closes.csv"
    prices.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_transactions.load_prices_file(engine, str(prices)).rows_rejected == 0
    rows = [f"R-{number},{investor},{symbol},{kind},{quantity},{price},{TRADE_TIME}"
            for number, (investor, symbol, kind, quantity, price) in enumerate(trades, start=1)]
    trades_file = directory / "trades.csv"
    trades_file.write_text("\n".join([HEADER] + rows) + "\n", encoding="utf-8")
    summary = load_transactions.load_file(engine, str(trades_file))
    assert (summary.rows_loaded, summary.rows_rejected) == (len(trades), 0)
    return update_portfolio.update_portfolios(engine)


def investor_rows(engine):
    with engine.connect() as connection:
        return {row.investor_id: row._asdict() for row in connection.execute(select(investor_risk))}


def position_rows(engine):
    with engine.connect() as connection:
        return {(row.investor_id, row.stock_symbol): row._asdict() for row in connection.execute(select(portfolios))}


def test_single_stock_investor_is_high_or_critical(seeded_engine, tmp_path):
    """However calm the stock and however good the gain, one stock is HIGH or CRITICAL risk."""
    rng = random.Random(11)
    closes = {"KO": ["100.00"] * 60,  # no volatility at all
              "JNJ": history(rng, 0.005), "TSLA": history(rng, 0.06), "PG": history(rng, 0.01)}
    trades = [
        (1001, "KO", "BUY", 10, "50.00"),  # a big gain, zero volatility
        (1002, "TSLA", "BUY", 3, "150.00"),  # a loss, very volatile
        (1003, "JNJ", "BUY", 1000, "99.00"),
        (1004, "PG", "BUY", 5, "90.00"),  # one open stock and one closed position
        (1004, "KO", "BUY", 5, "90.00"),
        (1004, "KO", "SELL", 5, "95.00"),
    ]
    load_market(seeded_engine, tmp_path, closes, trades)
    risk = investor_rows(seeded_engine)
    assert set(risk) == {1001, 1002, 1003, 1004}
    for investor_id, row in risk.items():
        assert row["open_positions"] == 1
        assert row["risk_level"] in ("HIGH", "CRITICAL"), (investor_id, row["risk_score"])
        assert float(row["risk_score"]) >= 50


def test_even_spread_over_many_sectors_is_low(seeded_engine, tmp_path):
    """Equal market value in 10+ symbols of several sectors, none at a loss, is LOW even when volatile."""
    rng = random.Random(5)
    symbols = [stock.symbol for stock in constants.STOCKS]
    # every symbol closes at 100.01; daily volatility from none to extreme (8% a day is ~127% a year)
    closes = {symbol: history(rng, rng.choice([0.0, 0.01, 0.02, 0.04, 0.08]), LAST_CLOSE) for symbol in symbols}
    trades, portfolios_held = [], {}
    for investor_id in range(1001, 1021):
        held = rng.sample(symbols, rng.randint(10, len(symbols)))
        portfolios_held[investor_id] = held
        for symbol in held:  # 10 shares of each: equal market value 1000.10; bought at or below the close
            trades.append((investor_id, symbol, "BUY", 10, f"{rng.uniform(50, 100):.2f}"))
    # the most concentrated case the universe allows: all 5 Technology symbols among exactly 10
    technology = [s for s in symbols if SECTOR[s] == "Technology"]
    others = [s for s in symbols if SECTOR[s] != "Technology"]
    portfolios_held[1021] = technology + others[:5]
    trades += [(1021, symbol, "BUY", 10, "100.00") for symbol in portfolios_held[1021]]
    load_market(seeded_engine, tmp_path, closes, trades)
    risk = investor_rows(seeded_engine)
    for investor_id, held in portfolios_held.items():
        assert len({SECTOR[s] for s in held}) >= 3  # several sectors
        row = risk[investor_id]
        assert row["open_positions"] == len(held)
        assert abs(float(row["top_position_weight"]) - 1 / len(held)) <= RATIO_TOLERANCE
        assert row["risk_level"] == "LOW", (investor_id, len(held), row["risk_score"])


def independent_weights(positions):
    """{(investor, symbol): market_value / investor's total market value} as Fractions, from portfolios."""
    totals = {}
    for (investor_id, _), row in positions.items():
        totals[investor_id] = totals.get(investor_id, 0) + Fraction(str(row["market_value"]))
    return {key: Fraction(str(row["market_value"])) / totals[key[0]] if totals[key[0]] else Fraction(0)
            for key, row in positions.items()}


def test_position_score_never_decreases_as_weight_grows(seeded_engine, tmp_path):
    """Investors hold the same TSLA position (same trades, prices, volatility, loss); only its weight in their
    portfolio differs. A bigger weight never gives a lower TSLA score."""
    rng = random.Random(3)
    closes = {"TSLA": history(rng, 0.02, LAST_CLOSE), "AAPL": history(rng, 0.01, "100.37"),
              "XOM": history(rng, 0.02, "99.99"), "KO": ["100.05"] * 60}
    trades = []
    for index, investor_id in enumerate(range(1001, 1031)):
        trades.append((investor_id, "TSLA", "BUY", 10, "110.00"))  # at a loss: closes at 100.01
        for symbol in ("AAPL", "XOM", "KO"):
            quantity = rng.choice([0, 0, 1, 5, 10, 40]) if index else 0  # investor 1001: TSLA only
            if quantity:
                trades.append((investor_id, symbol, "BUY", quantity, "100.00"))
    load_market(seeded_engine, tmp_path, closes, trades)
    positions = position_rows(seeded_engine)
    weights = independent_weights(positions)
    tsla = sorted((weights[key], float(row["risk_score"]), key) for key, row in positions.items() if key[1] == "TSLA")
    assert len(tsla) == 30 and len({weight for weight, _, _ in tsla}) > 5
    for (weight, score, key), (next_weight, next_score, next_key) in zip(tsla, tsla[1:]):
        assert next_score >= score, (key, float(weight), score, next_key, float(next_weight), next_score)
        if next_weight > weight + Fraction(1, 100):
            assert next_score > score  # the weight component is linear: a clearly bigger weight scores more
    assert tsla[-1][0] == 1


def test_concentration_figures_match_market_values(seeded_engine, tmp_path):
    """weight, top_position_weight, hhi, totals and open positions equal a computation from market_value."""
    rng = random.Random(9)
    symbols = ["AAPL", "MSFT", "JPM", "XOM", "KO", "PFE"]
    closes = {symbol: history(rng, 0.02, last_close=f"{rng.uniform(20, 400):.2f}") for symbol in symbols}
    closes["KO"][-1] = "50.00"  # one whole-number close among others: weights must still be fractions
    trades = []
    for investor_id in range(1001, 1011):
        for symbol in rng.sample(symbols, rng.randint(1, len(symbols))):
            quantity = rng.randint(1, 200)
            trades.append((investor_id, symbol, "BUY", quantity, f"{rng.uniform(20, 400):.2f}"))
            if rng.random() < 0.3:  # some positions closed: market value 0, weight 0
                trades.append((investor_id, symbol, "SELL", quantity, f"{rng.uniform(20, 400):.2f}"))
    load_market(seeded_engine, tmp_path, closes, trades)
    positions, risk = position_rows(seeded_engine), investor_rows(seeded_engine)
    for investor_id, row in risk.items():
        mine = {key: p for key, p in positions.items() if key[0] == investor_id}
        values = {key: Fraction(str(p["market_value"])) for key, p in mine.items()}
        total = sum(values.values())
        weights = {key: value / total if total else Fraction(0) for key, value in values.items()}
        assert abs(Fraction(str(row["total_market_value"])) - total) <= Fraction(1, 200)
        assert row["open_positions"] == sum(1 for p in mine.values() if p["quantity"] > 0)
        for key, weight in weights.items():
            assert abs(float(mine[key]["weight"]) - float(weight)) <= RATIO_TOLERANCE, key
        assert abs(float(row["top_position_weight"]) - float(max(weights.values()))) <= RATIO_TOLERANCE
        assert abs(float(row["hhi"]) - float(sum(w * w for w in weights.values()))) <= 2 * RATIO_TOLERANCE
        assert 0 <= float(row["risk_score"]) <= 100


@pytest.mark.parametrize("score, level", [(0, "LOW"), (24.99, "LOW"), (25, "MEDIUM"), (49.99, "MEDIUM"),
                                          (50, "HIGH"), (74.99, "HIGH"), (75, "CRITICAL"), (100, "CRITICAL")])
def test_risk_level_floors(score, level):
    """The level bands of the README: below 25 LOW, 25 MEDIUM, 50 HIGH, 75 CRITICAL."""
    assert update_portfolio.risk_level(score) == level


README_LEVEL_FLOORS = ((75, "CRITICAL"), (50, "HIGH"), (25, "MEDIUM"))  # README: LOW below 25


def readme_level(score):
    """The level of a 0..100 score by the README's table, written here independently of update_portfolio."""
    return next((level for floor, level in README_LEVEL_FLOORS if score >= floor), "LOW")


def test_constants_hold_the_readme_level_floors():
    assert constants.RISK_LEVEL_FLOORS == (("CRITICAL", 75), ("HIGH", 50), ("MEDIUM", 25))


def test_stored_levels_are_the_readme_bands_of_stored_scores(seeded_engine, tmp_path):
    """Every stored risk_level is the README band of its stored risk_score, for positions and investors."""
    rng = random.Random(4)
    closes = {symbol: history(rng, 0.03, LAST_CLOSE) for symbol in ("AAPL", "TSLA", "NVDA", "KO")}
    trades = [(investor_id, symbol, "BUY", rng.randint(1, 50), f"{rng.uniform(60, 160):.2f}")
              for investor_id in range(1001, 1016) for symbol in rng.sample(sorted(closes), rng.randint(1, 4))]
    load_market(seeded_engine, tmp_path, closes, trades)
    rows = list(position_rows(seeded_engine).values()) + list(investor_rows(seeded_engine).values())
    assert len(rows) > 15
    for row in rows:
        assert row["risk_level"] == readme_level(Decimal(str(row["risk_score"]))), row
    assert len({row["risk_level"] for row in rows}) >= 2


def test_levels_of_hand_built_scores_on_and_beside_the_floors(seeded_engine, tmp_path):
    """Scores built by hand to fall on a floor (25, 50), just beside one (24.99, 25.01, 50.01) or far from them,
    each with the level the README gives it. Closes are flat (no volatility) and every buy is at the close (no
    loss) except investor 1005's, so a position scores 50 * weight and an investor 35 * top weight + 25 * HHI
    + 20 * (top sector weight - 0.25) / 0.75."""
    flat = [LAST_CLOSE] * 60
    closes = {"AAPL": flat, "MSFT": flat, "JPM": flat, "XOM": flat, "KO": flat,
              "TSLA": ["110.01" if index % 2 else "100.01" for index in range(59)] + [LAST_CLOSE]}  # ~150%/year
    load_market(seeded_engine, tmp_path, closes, [
        (1001, "AAPL", "BUY", 10, LAST_CLOSE),  # one stock
        (1002, "AAPL", "BUY", 10, LAST_CLOSE), (1002, "MSFT", "BUY", 10, LAST_CLOSE),  # halves, one sector
        *[(1003, symbol, "BUY", 10, LAST_CLOSE) for symbol in ("AAPL", "JPM", "XOM", "KO")],  # 4 sectors
        (1004, "AAPL", "BUY", 2499, LAST_CLOSE), (1004, "MSFT", "BUY", 2501, LAST_CLOSE),  # 0.4998 and 0.5002
        (1005, "TSLA", "BUY", 10, "200.00"),  # one volatile stock at a loss of half its cost
    ])
    expected_positions = {
        (1001, "AAPL"): ("50.00", "HIGH"),
        (1002, "AAPL"): ("25.00", "MEDIUM"), (1002, "MSFT"): ("25.00", "MEDIUM"),
        (1003, "AAPL"): ("12.50", "LOW"), (1003, "JPM"): ("12.50", "LOW"),
        (1003, "XOM"): ("12.50", "LOW"), (1003, "KO"): ("12.50", "LOW"),
        (1004, "AAPL"): ("24.99", "LOW"), (1004, "MSFT"): ("25.01", "MEDIUM"),
        (1005, "TSLA"): ("100.00", "CRITICAL"),  # 50 + 30 (volatility above 60%) + 20 (loss above 25%)
    }
    expected_investors = {
        1001: ("80.00", "CRITICAL"),  # 35 + 25 + 20
        1002: ("50.00", "HIGH"),  # 35 * 0.5 + 25 * 0.5 + 20 (one sector) = 17.5 + 12.5 + 20
        1003: ("15.00", "LOW"),  # 35 * 0.25 + 25 * 0.25 + 0 (top sector 25%) = 8.75 + 6.25
        1004: ("50.01", "HIGH"),  # 35 * 0.5002 + 25 * (0.4998^2 + 0.5002^2) + 20 = 17.507 + 12.500002 + 20
        1005: ("100.00", "CRITICAL"),  # 35 + 25 + 20 + 10 (volatility) + 10 (loss)
    }
    positions, risk = position_rows(seeded_engine), investor_rows(seeded_engine)
    assert {key: (Decimal(str(row["risk_score"])), row["risk_level"]) for key, row in positions.items()} == {
        key: (Decimal(score), level) for key, (score, level) in expected_positions.items()}
    assert {key: (Decimal(str(row["risk_score"])), row["risk_level"]) for key, row in risk.items()} == {
        key: (Decimal(score), level) for key, (score, level) in expected_investors.items()}


def test_whole_number_prices(seeded_engine, tmp_path, request):
    """Closes and costs that are whole numbers (100.00) give the same weights and scores as any others."""
    closes = {"AAPL": ["100.00"] * 30, "MSFT": ["100.00"] * 30}
    load_market(seeded_engine, tmp_path, closes, [
        (1001, "AAPL", "BUY", 10, "120.00"),
        (1001, "MSFT", "BUY", 11, "100.00"),
    ])
    positions, risk = position_rows(seeded_engine), investor_rows(seeded_engine)
    # AAPL: 10 * 100 = 1000 market value, cost 1200, unrealized -200; MSFT: 11 * 100 = 1100, cost 1100
    # weights 1000/2100 = 0.47619 and 1100/2100 = 0.52381
    assert abs(float(positions[(1001, "AAPL")]["weight"]) - 1000 / 2100) <= RATIO_TOLERANCE
    assert abs(float(positions[(1001, "MSFT")]["weight"]) - 1100 / 2100) <= RATIO_TOLERANCE
    # AAPL score: 50 * 0.47619 (weight) + 30 * 0 (constant closes: no volatility)
    #             + 20 * min(1, (200 / 1200) / 0.25) (loss) = 23.81 + 13.33 = 37.14
    assert abs(float(positions[(1001, "AAPL")]["risk_score"]) - 37.14) <= 0.011
    # investor: 35 * 0.52381 (top weight) + 25 * (0.47619^2 + 0.52381^2 = 0.50113) (HHI)
    #           + 20 * 1 (one sector, Technology: (1 - 0.25) / (1 - 0.25)) + 10 * 0 (volatility)
    #           + 10 * (200 / 2300) / 0.25 (loss) = 18.33 + 12.53 + 20 + 3.48 = 54.34: HIGH
    row = risk[1001]
    assert abs(float(row["top_position_weight"]) - 1100 / 2100) <= RATIO_TOLERANCE
    assert abs(float(row["hhi"]) - ((1000 / 2100) ** 2 + (1100 / 2100) ** 2)) <= 2 * RATIO_TOLERANCE
    assert abs(float(row["risk_score"]) - 54.34) <= 0.011
    assert row["risk_level"] == "HIGH"


def test_scores_follow_the_readme_formula(seeded_engine, tmp_path):
    """Position and investor scores equal the README table computed here, with a volatility from the last 252
    daily returns up to today (older and future closes ignored)."""
    calm = ["100.01" if index % 2 == 0 else "102.01" for index in range(253)]  # ends on 100.01
    wild = ["50.00" if index % 2 == 0 else "150.00" for index in range(47)]  # older than 252 returns back
    closes = {"AAPL": wild + calm, "XOM": ["100.01"] * 60}
    future = [(date.today() + timedelta(days=offset)).isoformat() for offset in (1, 2, 3)]
    load_market(seeded_engine, tmp_path, closes, [
        (1001, "AAPL", "BUY", 10, "120.00"),
        (1001, "XOM", "BUY", 11, "100.00"),
    ])
    extra = tmp_path / "future.csv"
    extra.write_text("stock_symbol,price_date,close_price\n" + "".join(
        f"AAPL,{day},{price}\n" for day, price in zip(future, ("1.00", "900.00", "3.00"))), encoding="utf-8")
    load_transactions.load_prices_file(seeded_engine, str(extra))
    update_portfolio.update_portfolios(seeded_engine)

    returns = [float(b) / float(a) - 1 for a, b in zip(calm, calm[1:])]
    assert len(returns) == 252  # the return from the last wild close to calm[0] is the 253rd back: not used
    volatility = statistics.pstdev(returns) * math.sqrt(252)
    value_aapl, value_xom = 10 * 100.01, 11 * 100.01
    cost_aapl, cost_xom = 1200.0, 1100.0
    w_aapl, w_xom = value_aapl / (value_aapl + value_xom), value_xom / (value_aapl + value_xom)
    position = (50 * w_aapl + 30 * min(1, volatility / 0.60)
                + 20 * min(1, (cost_aapl - value_aapl) / cost_aapl / 0.25))
    loss = (cost_aapl + cost_xom) - (value_aapl + value_xom)
    investor = (35 * max(w_aapl, w_xom) + 25 * (w_aapl ** 2 + w_xom ** 2)
                + 20 * max(0, (max(w_aapl, w_xom) - 0.25) / 0.75)  # Technology vs Energy: top sector is XOM's
                + 10 * min(1, (w_aapl * volatility + w_xom * 0) / 0.60)
                + 10 * min(1, loss / (cost_aapl + cost_xom) / 0.25))
    stored_position = position_rows(seeded_engine)[(1001, "AAPL")]
    assert float(stored_position["last_price"]) == 100.01  # the future closes are ignored
    assert abs(float(stored_position["risk_score"]) - position) <= 0.011
    stored_investor = investor_rows(seeded_engine)[1001]
    assert abs(float(stored_investor["risk_score"]) - investor) <= 0.011
    assert stored_investor["risk_level"] == readme_level(round(investor, 2))
