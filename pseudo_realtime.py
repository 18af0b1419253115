"""Stream live-looking trades into the database (or with --sink rabbitmq to the trades queue, for
load_transactions.py --queue), one every --interval seconds, until Ctrl+C or --count trades.

A companion of the batch chain: each trade is valid (investors and stocks read from the database, a SELL only
of what the investor holds, prices walking on from the latest close), goes through the same validation and
load as files (load_transactions.load_records, one batch per trade) and is committed before it is printed.
`--update-every N` brings portfolios up to date every N trades; otherwise run update_portfolio.py in another
terminal to see them. Each trade carries a fee on a simple broker-like schedule: 0.05% of its notional
(quantity × price), at least 1.00, rounded to the cent.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import logging
import math
import random
import sys
import time
import uuid
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import text

import cli
import closes
import constants
import db_config
import load_transactions
import trade_queue
import update_portfolio

logger = logging.getLogger(__name__)

SELL_PROBABILITY = 0.4
MINUTES_PER_TRADING_DAY = 390
FEE_RATE = Decimal("0.0005")  # share of the notional: 0.05%
MINIMUM_FEE = Decimal("1.00")  # currency units per trade
CENT = Decimal("0.01")


def broker_fee(quantity, price):
    """The simulated fee of a trade: 0.05% of quantity × price, at least 1.00, rounded to the cent (price: text)."""
    return max(MINIMUM_FEE, (quantity * Decimal(price) * FEE_RATE).quantize(CENT, rounding=ROUND_HALF_UP))


class TradeSimulator:
    """Valid random trades against the current holdings, with prices on a random walk."""

    def __init__(self, investor_ids, prices, holdings, rng):
        self.investor_ids, self.prices, self.holdings, self.rng = investor_ids, prices, holdings, rng
        self.volatility = {s.symbol: s.annual_volatility for s in constants.STOCKS}

    def next_trade(self):
        """A trade record (canonical columns) and the holdings after it."""
        investor_id = self.rng.choice(self.investor_ids)
        held = [(symbol, quantity) for (i, symbol), quantity in self.holdings.items()
                if i == investor_id and quantity > 0]
        if held and self.rng.random() < SELL_PROBABILITY:
            symbol, quantity_held = self.rng.choice(held)
            txn_type, quantity = "SELL", self.rng.randint(1, quantity_held)
        else:
            symbol = self.rng.choice(sorted(self.prices))
            txn_type, quantity = "BUY", max(1, int(self.rng.lognormvariate(math.log(20), 1.0)))
        price = f"{self._step_price(symbol):.2f}"
        change = quantity if txn_type == "BUY" else -quantity
        self.holdings[(investor_id, symbol)] = self.holdings.get((investor_id, symbol), 0) + change
        return {
            "txn_ref": f"RT-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}", "investor_id": investor_id,
            "stock_symbol": symbol, "txn_type": txn_type, "quantity": quantity, "price": price,
            "txn_time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "fee": str(broker_fee(quantity, price)),
        }

    def _step_price(self, symbol):
        """One minute of a geometric random walk from the symbol's last price."""
        sigma = self.volatility.get(symbol, 0.3) / math.sqrt(constants.TRADING_DAYS_PER_YEAR * MINUTES_PER_TRADING_DAY)
        self.prices[symbol] = max(0.01, self.prices[symbol] * math.exp(self.rng.gauss(0, sigma)))
        return self.prices[symbol]


def read_market_state(engine):
    """(investor ids, last price per symbol, conservative holdings per position) from the database.

    Holdings are what was bought until now minus everything sold, later sells included: never more than the
    replayed position holds now (it skips oversells), and a trade stamped now leaves every later sell covered.
    """
    with engine.connect() as connection:
        investor_ids = connection.execute(
            text("SELECT investor_id FROM investors ORDER BY investor_id")).scalars().all()
        last_closes = closes.latest_closes(connection)
        symbols = connection.execute(text("SELECT stock_symbol FROM stocks ORDER BY stock_symbol")).scalars().all()
        holdings = {(i, s): int(q) for i, s, q in connection.execute(text(
            "SELECT investor_id, stock_symbol, "
            "       SUM(CASE WHEN txn_type = 'SELL' THEN -quantity WHEN txn_time <= :now THEN quantity ELSE 0 END) "
            "FROM transactions GROUP BY investor_id, stock_symbol"), {"now": datetime.now()}) if q and q > 0}
    if not investor_ids or not symbols:
        raise cli.InputError("no investors or stocks in the database: run seed_investors.py first")
    start_prices = {s.symbol: s.start_price for s in constants.STOCKS}
    prices = {s: float(last_closes.get(s) or start_prices.get(s, 100.0)) for s in symbols}
    return investor_ids, prices, holdings


def publish_stream(engine, interval, count=None, seed=None, queue_name="trades", partitions=0, rate=None):
    """Publish trades to RabbitMQ one at a time (confirmed by the broker) until `count` (or Ctrl+C); return the
    number published. rate: trades per second, paced from the start (instead of interval)."""
    simulator = TradeSimulator(*read_market_state(engine), random.Random(seed))
    publisher = trade_queue.Publisher(queue_name, partitions)
    published, started = 0, time.monotonic()
    try:
        while count is None or published < count:
            record = simulator.next_trade()
            publisher.publish(record)
            published += 1
            logger.info("published %s: investor %s %s %s %s @ %s, fee %s", record["txn_ref"], record["investor_id"],
                        record["txn_type"], record["quantity"], record["stock_symbol"], record["price"], record["fee"])
            pause = (started + published / rate - time.monotonic()) if rate else interval
            if (count is None or published < count) and pause > 0:
                time.sleep(pause)
    except KeyboardInterrupt:
        pass
    finally:
        publisher.close()
    return published


def stream(engine, interval, count=None, update_every=None, seed=None):
    """Commit trades one at a time until `count` (or Ctrl+C); return the number committed."""
    simulator = TradeSimulator(*read_market_state(engine), random.Random(seed))
    committed = 0
    try:
        while count is None or committed < count:
            record = simulator.next_trade()
            summary = load_transactions.load_records(engine, [record])
            if summary.rows_loaded != 1:
                logger.warning("trade %s was not loaded: %s", record["txn_ref"], summary.sample_rejects)
                continue
            committed += 1
            print(f"committed {record['txn_ref']}: investor {record['investor_id']} {record['txn_type']} "
                  f"{record['quantity']} {record['stock_symbol']} @ {record['price']}, fee {record['fee']} "
                  f"(batch {summary.batch_id})",
                  flush=True)
            if update_every and committed % update_every == 0:
                print(update_portfolio.update_portfolios(engine).line(), flush=True)
            if count is None or committed < count:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    return committed


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between trades (default: %(default)s)")
    parser.add_argument("--count", type=int, help="stop after this many trades (default: until Ctrl+C)")
    parser.add_argument("--update-every", type=int, metavar="N", help="update portfolios every N trades")
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible stream")
    parser.add_argument("--sink", choices=("database", "rabbitmq"), default="database",
                        help="commit each trade to the database (default), or publish it to RabbitMQ (AMQP_URL) "
                             "for load_transactions.py --queue")
    parser.add_argument("--queue-name", default="trades", help="with --sink rabbitmq: the queue (default: trades)")
    parser.add_argument("--partitions", type=int, default=0, metavar="N",
                        help="with --sink rabbitmq: publish to NAME.K, K = investor_id modulo N")
    parser.add_argument("--rate", type=float, metavar="PER_SECOND",
                        help="with --sink rabbitmq: this many trades per second instead of --interval")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if args.interval < 0 or (args.count is not None and args.count < 0) or (args.update_every or 1) < 1:
        parser.error("--interval and --count must be 0 or more, --update-every at least 1")
    if args.partitions < 0 or (args.rate is not None and args.rate <= 0):
        parser.error("--partitions must be 0 or more, --rate above 0")
    if args.sink == "rabbitmq" and args.update_every:
        parser.error("--update-every applies to --sink database: the queue's consumer updates portfolios itself")
    queue_only = [flag for name, flag in (("queue_name", "--queue-name"), ("partitions", "--partitions"),
                                          ("rate", "--rate")) if getattr(args, name) != parser.get_default(name)]
    if args.sink != "rabbitmq" and queue_only:
        parser.error(f"{', '.join(queue_only)} apply to --sink rabbitmq only")

    def work():
        engine = db_config.get_engine(args.database_url)
        started = time.perf_counter()
        if args.sink == "rabbitmq":
            published = publish_stream(engine, args.interval, args.count, args.seed, args.queue_name,
                                       args.partitions, args.rate)
            print(f"stopped: {published} trades published to RabbitMQ in {time.perf_counter() - started:.1f} s")
            return cli.EXIT_OK
        committed = stream(engine, args.interval, args.count, args.update_every, args.seed)
        print(f"stopped: {committed} trades committed in {time.perf_counter() - started:.1f} s")
        return cli.EXIT_OK

    return cli.run(work, args, "pseudo_realtime")


if __name__ == "__main__":
    sys.exit(main())
