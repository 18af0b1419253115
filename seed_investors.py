"""Seed the reference data: the default investors and the stock universe from constants.py.

Second stage of the chain (after generate_dummy_data.py, before load_transactions.py). Inserts only what is
missing, on every dialect, so re-running changes nothing and never overwrites a row a user has edited.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import logging
import sys
from datetime import datetime

from sqlalchemy import select

import cli
import constants
import db_config
from schema import investors, stocks

logger = logging.getLogger(__name__)


def insert_missing(connection, table, rows):
    """Insert the rows whose primary key is not in `table` yet; return how many were inserted."""
    key = table.primary_key.columns.values()[0]
    existing = set(connection.execute(select(key)).scalars())
    missing = [row for row in rows if row[key.name] not in existing]
    if missing:
        connection.execute(table.insert(), missing)
    return len(missing)


def seed_reference_data(engine, investor_count=constants.DEFAULT_INVESTOR_COUNT):
    """Insert missing default investors and stocks; return (investors inserted, stocks inserted)."""
    now = datetime.now().replace(microsecond=0)
    investor_rows = [
        {"investor_id": i.investor_id, "name": i.name, "risk_profile": i.risk_profile, "created_at": now}
        for i in constants.default_investors(investor_count)
    ]
    stock_rows = [
        {"stock_symbol": s.symbol, "company_name": s.company_name, "sector": s.sector} for s in constants.STOCKS
    ]
    with db_config.write_transaction(engine) as connection:
        new_stocks = insert_missing(connection, stocks, stock_rows)
        new_investors = insert_missing(connection, investors, investor_rows)
    logger.info("%d investors and %d stocks inserted", new_investors, new_stocks)
    return new_investors, new_stocks


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--investors", type=int, default=constants.DEFAULT_INVESTOR_COUNT,
                        help="number of default investors, ids from 1001; the 5 named accounts are always "
                             "seeded (default: %(default)s)")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if args.investors < 1:
        parser.error("--investors must be at least 1")

    def work():
        engine = db_config.get_engine(args.database_url)
        new_investors, new_stocks = seed_reference_data(engine, args.investors)
        ids = [investor.investor_id for investor in constants.default_investors(args.investors)]
        print(f"seeded {cli.counted(new_investors, 'new investor')} and {cli.counted(new_stocks, 'new stock')} "
              f"(the reference set: {cli.counted(len(ids), 'investor')}, ids {ids[0]} to {ids[-1]}, and "
              f"{cli.counted(len(constants.STOCKS), 'stock')})")
        return cli.EXIT_OK

    return cli.run(work, args, "seed_investors")


if __name__ == "__main__":
    sys.exit(main())
