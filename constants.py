"""Reference data and tunable thresholds: the stock universe, the default investors, and the risk formula.

Every number a user may want to tune lives here; README.md explains each in a table.
"""
from collections import namedtuple
from datetime import date

Stock = namedtuple("Stock", "symbol company_name sector start_price annual_volatility")
Investor = namedtuple("Investor", "investor_id name risk_profile")

# The default universe: start_price in currency units, annual_volatility as a fraction (0.30 = 30%/year).
STOCKS = (
    Stock("AAPL", "Apple Inc.", "Technology", 190.00, 0.27),
    Stock("MSFT", "Microsoft Corporation", "Technology", 410.00, 0.25),
    Stock("GOOG", "Alphabet Inc.", "Communication Services", 140.00, 0.30),
    Stock("META", "Meta Platforms Inc.", "Communication Services", 480.00, 0.38),
    Stock("NFLX", "Netflix Inc.", "Communication Services", 600.00, 0.40),
    Stock("AMZN", "Amazon.com Inc.", "Consumer Discretionary", 180.00, 0.33),
    Stock("TSLA", "Tesla Inc.", "Consumer Discretionary", 200.00, 0.60),
    Stock("NKE", "Nike Inc.", "Consumer Discretionary", 95.00, 0.28),
    Stock("NVDA", "NVIDIA Corporation", "Technology", 850.00, 0.55),
    Stock("AMD", "Advanced Micro Devices Inc.", "Technology", 170.00, 0.50),
    Stock("INTC", "Intel Corporation", "Technology", 35.00, 0.40),
    Stock("JPM", "JPMorgan Chase & Co.", "Financials", 195.00, 0.22),
    Stock("BAC", "Bank of America Corp.", "Financials", 37.00, 0.26),
    Stock("GS", "Goldman Sachs Group Inc.", "Financials", 450.00, 0.27),
    Stock("V", "Visa Inc.", "Financials", 280.00, 0.20),
    Stock("JNJ", "Johnson & Johnson", "Health Care", 155.00, 0.16),
    Stock("PFE", "Pfizer Inc.", "Health Care", 28.00, 0.24),
    Stock("UNH", "UnitedHealth Group Inc.", "Health Care", 500.00, 0.24),
    Stock("XOM", "Exxon Mobil Corporation", "Energy", 115.00, 0.25),
    Stock("CVX", "Chevron Corporation", "Energy", 155.00, 0.24),
    Stock("KO", "Coca-Cola Company", "Consumer Staples", 62.00, 0.15),
    Stock("PG", "Procter & Gamble Co.", "Consumer Staples", 165.00, 0.15),
    Stock("WMT", "Walmart Inc.", "Consumer Staples", 68.00, 0.18),
    Stock("BA", "Boeing Company", "Industrials", 190.00, 0.38),
    Stock("CAT", "Caterpillar Inc.", "Industrials", 350.00, 0.28),
)

FIRST_INVESTOR_ID = 1001
DEFAULT_INVESTOR_COUNT = 100
RISK_PROFILES = ("conservative", "balanced", "aggressive")
# The first five investors are always present (the original project's demo accounts).
NAMED_INVESTORS = (
    Investor(1001, "Alice Johnson", "balanced"),
    Investor(1002, "Bob Smith", "aggressive"),
    Investor(1003, "Carol Williams", "conservative"),
    Investor(1004, "David Brown", "balanced"),
    Investor(1005, "Eve Davis", "aggressive"),
)
_FIRST_NAMES = (
    "Aaron", "Beatriz", "Chen", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kavya", "Liam",
    "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Samir", "Tara", "Ugo", "Vera", "Wei", "Yusuf", "Zoe",
)
_LAST_NAMES = ("Garcia", "Müller", "Okafor", "Nakamura", "Rossi", "Kowalski", "Silva", "Novak")


def default_investors(count=DEFAULT_INVESTOR_COUNT):
    """The default investors: the five named ones, then deterministic names and profiles up to `count`."""
    investors = list(NAMED_INVESTORS[: max(count, len(NAMED_INVESTORS))])
    for index in range(len(NAMED_INVESTORS), count):
        name = f"{_FIRST_NAMES[index % len(_FIRST_NAMES)]} {_LAST_NAMES[index // len(_FIRST_NAMES) % len(_LAST_NAMES)]}"
        profile = RISK_PROFILES[(index * 7) % len(RISK_PROFILES)]
        investors.append(Investor(FIRST_INVESTOR_ID + index, name, profile))
    return investors


# Generator: about one year of weekdays ending on a fixed day, so that `--seed` gives byte-identical output.
DEFAULT_END_DATE = date(2026, 10, 30)
TRADING_DAYS = 261
MARKET_OPEN_SECONDS = 9 * 3600 + 30 * 60  # 09:30 exchange local time
MARKET_CLOSE_SECONDS = 16 * 3600  # 16:00
TRADE_PRICE_BAND = 0.009  # a trade's price is within ±0.9% of the day's close (the rule is 1%)
PROFILE_QUANTITY_SCALE = {"conservative": 0.5, "balanced": 1.0, "aggressive": 2.5}

# Loader
FUTURE_TOLERANCE_SECONDS = 300  # a txn_time up to 5 minutes after the load started is accepted
LOAD_CHUNK_ROWS = 100_000  # rows validated and inserted at a time: bounds memory, not the transaction

# Risk scores (docs/risk-scores.md). Each component is points * min(1, metric / full_at); the README explains them.
TRADING_DAYS_PER_YEAR = 252
VOLATILITY_LOOKBACK_DAYS = 252  # closes used for a symbol's annualized volatility
POSITION_WEIGHT_POINTS = 50  # weight 1.0 earns all 50 points: linear, so a bigger weight never scores less
POSITION_VOLATILITY_POINTS, POSITION_VOLATILITY_FULL_AT = 30, 0.60
POSITION_LOSS_POINTS, POSITION_LOSS_FULL_AT = 20, 0.25  # unrealized loss as a share of cost basis
INVESTOR_TOP_WEIGHT_POINTS = 35
INVESTOR_HHI_POINTS = 25
INVESTOR_SECTOR_POINTS, INVESTOR_SECTOR_FREE_UP_TO = 20, 0.25  # top sector weight above 25% earns points
INVESTOR_VOLATILITY_POINTS, INVESTOR_VOLATILITY_FULL_AT = 10, 0.60
INVESTOR_LOSS_POINTS, INVESTOR_LOSS_FULL_AT = 10, 0.25
RISK_LEVEL_FLOORS = (("CRITICAL", 75), ("HIGH", 50), ("MEDIUM", 25))  # below 25: LOW

# Alerts
CONCENTRATION_WEIGHT_LIMIT = 0.40  # a position above 40% of the investor's market value

# Surveillance (surveillance.py; docs/surveillance.md explains each rule). Windows are in wall-clock time.
SURVEILLANCE_CONTEXT_MINUTES = 25 * 60  # history read before the first new trade: its whole day and the hold before
SURVEILLANCE_BASELINE_TRADES = 200  # an investor's previous trades that their usual activity is measured over
SURVEILLANCE_BASELINE_MIN_TRADES = 20  # fewer (outside the window being judged): no usual yet, the floors apply
LARGE_TRADE_LOOKBACK_TRADES = 50  # the investor's previous trades that make their "own history"
LARGE_TRADE_MIN_HISTORY = 30  # fewer previous trades: no z-score and no portfolio test (a new account)
LARGE_TRADE_Z = 5.0  # robust z of ln(notional) against that history: (x - median) / (1.4826 * MAD)
LARGE_TRADE_MIN_SCALE = 0.25  # floor of 1.4826 * MAD (ln units): an investor who always trades the same size
LARGE_TRADE_PORTFOLIO_SHARE = 10.0  # or notional above 10x the investor's portfolio value just before it
OFF_MARKET_PRICE_THRESHOLD = 0.05  # |price / that day's close - 1| above 5%
OFF_MARKET_PRICE_HIGH = 0.10  # above 10%: HIGH
WASH_TRADE_WINDOW_MINUTES = 3  # a BUY and a SELL of the same quantity at most 3 minutes apart
WASH_TRADE_MOVE_SHARE = 0.5  # prices within 0.5 x the symbol's expected random move over the gap, or one cent:
WASH_TRADE_PRICE_TICK = 0.01  # currency units
WASH_TRADE_DEFAULT_VOLATILITY = 0.30  # annual, for a symbol with fewer than WASH_TRADE_MIN_CLOSES closes
WASH_TRADE_MIN_CLOSES = 20  # closes in the year before the trade's day that its volatility is estimated from
TRADING_SECONDS_PER_DAY = 6.5 * 3600  # the expected move over a gap: daily volatility x sqrt(gap / this)
ROUND_TRIP_MAX_HOLD_MINUTES = 15  # a position opened from flat and closed to flat within 15 minutes
ROUND_TRIP_MIN_COUNT = 3  # the 3rd such round trip in one position on one trading day raises the alert (floor)
ROUND_TRIP_USUAL_MULTIPLE = 5.0  # and at least 5 x the round trips the investor's usual rate expects there
BURST_WINDOW_MINUTES = 5
BURST_MAX_TRADES = 10  # more than 10 trades by one investor within 5 minutes (floor) ...
BURST_USUAL_MULTIPLE = 4.0  # ... and more than 4 x the investor's usual count in 5 minutes
SECTOR_CONCENTRATION_LIMIT = 0.60  # one sector above 60% of the investor's market value
SECTOR_CONCENTRATION_HIGH = 0.90  # at or above 90%: HIGH
