"""PostgreSQL smoke tests: the whole pipeline, incremental updates over several batches (one of them late)
against a full replay, and fees through COPY and the portable insert (the full suite runs on SQLite and
MariaDB)."""
from decimal import Decimal

import pytest
from sqlalchemy import select, text

import db_config
import generate_dummy_data
import load_transactions
import master_etl
import seed_investors
import surveillance
import update_portfolio
from schema import alerts, investor_risk, portfolios, rejected_transactions, transactions


def test_pipeline_runs_on_postgresql_and_a_second_run_loads_nothing(postgres_url, tmp_path, capsys):
    trades = tmp_path / "trades.csv"
    argv = ["--rows", "3000", "--seed", "5", "--input", str(trades), "--no-plots", "--database-url", postgres_url]

    assert master_etl.main(argv) == 0
    assert master_etl.main(argv) == 0  # the same file again: skipped, nothing new

    engine = db_config.get_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar() == 3000
        assert connection.execute(text("SELECT COUNT(*) FROM load_batches")).scalar() == 1
        assert connection.execute(text("SELECT COUNT(*) FROM portfolios")).scalar() > 100
    engine.dispose()
    assert "already loaded in batch 1, skipped" in capsys.readouterr().out


def stored_results(engine):
    """portfolios and investor_risk rows (without updated_at) and the open OVERSELL alerts, as sorted tuples."""
    def rows(table):
        columns = [column for column in table.columns if column.name != "updated_at"]
        return sorted(tuple(row) for row in connection.execute(select(*columns)))

    with engine.connect() as connection:
        oversells = sorted(connection.execute(select(alerts.c.txn_ref, alerts.c.investor_id, alerts.c.stock_symbol)
                                              .where(alerts.c.rule == "OVERSELL", alerts.c.status == "OPEN")).all())
        return rows(portfolios), rows(investor_risk), oversells


def test_incremental_over_three_batches_with_a_late_one_equals_full_on_postgresql(postgres_url, tmp_path):
    """A generated file in three parts by time, loaded middle, newest, then oldest (older than every trade applied
    so far), each followed by update and surveillance: the result equals a full replay."""
    trades, prices = generate_dummy_data.generate(3000, 5)
    ordered = sorted(trades, key=lambda line: line.split(",")[6])  # by txn_time; ties keep file order
    third = len(ordered) // 3
    parts = [("middle", ordered[third:2 * third]), ("newest", ordered[2 * third:]), ("late", ordered[:third])]
    engine = db_config.get_engine(postgres_url)
    seed_investors.seed_reference_data(engine)
    generate_dummy_data.write_csv(tmp_path / "market_prices.csv", generate_dummy_data.PRICE_HEADER, prices)
    assert load_transactions.load_prices_file(engine, str(tmp_path / "market_prices.csv")).rows_new == len(prices)
    oversells = []
    for name, lines in parts:
        generate_dummy_data.write_csv(tmp_path / f"{name}.csv", generate_dummy_data.TRADE_HEADER, lines)
        loaded = load_transactions.load_file(engine, str(tmp_path / f"{name}.csv"))
        assert (loaded.rows_loaded, loaded.rows_rejected) == (len(lines), 0)
        update = update_portfolio.update_portfolios(engine)
        checked = surveillance.run_surveillance(engine)
        assert (update.trades_applied, checked.new_trades, checked.batches) == (len(lines), len(lines), 1)
        oversells.append(len(stored_results(engine)[2]))
    assert update.positions_replayed > 100  # the late part reached back into most positions
    # before the oldest part, SELLs of shares bought in it were oversells; with every trade in, none is
    assert oversells[0] > 0 and oversells[1] > 0 and oversells[2] == 0
    incremental = stored_results(engine)

    full = update_portfolio.update_portfolios(engine, full=True)

    assert full.trades_applied == 3000
    assert stored_results(engine) == incremental
    assert len(incremental[0]) > 100 and len(incremental[1]) > 50
    engine.dispose()


FEE_FILE = ["txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,fee"] + [
    f"f{n},1001,AAPL,BUY,1,10,2025-01-02 10:00:0{n},{fee}"
    for n, fee in enumerate(["", "0", "1.5", "0.0001", "999999999.9999"])]


@pytest.mark.parametrize("method", [None, "portable"])  # None: COPY into a staging table
def test_fees_round_trip_and_take_part_in_de_duplication_on_postgresql(postgres_url, tmp_path, method):
    engine = db_config.get_engine(postgres_url)
    seed_investors.seed_reference_data(engine)
    (tmp_path / "fees.csv").write_text("\n".join(FEE_FILE) + "\n")
    other_fee = ["txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,fee",
                 "f2,1001,AAPL,BUY,1,10,2025-01-02 10:00:02,+1.50", "f4,1001,AAPL,BUY,1,10,2025-01-02 10:00:04,1"]
    (tmp_path / "other.csv").write_text("\n".join(other_fee) + "\n")

    first = load_transactions.load_file(engine, str(tmp_path / "fees.csv"), method=method)
    again = load_transactions.load_file(engine, str(tmp_path / "fees.csv"), method=method, again=True)
    other = load_transactions.load_file(engine, str(tmp_path / "other.csv"), method=method)

    with engine.connect() as connection:
        fees = dict(connection.execute(select(transactions.c.txn_ref, transactions.c.fee)).all())
        reasons = connection.execute(select(rejected_transactions.c.reason)).scalars().all()
    engine.dispose()
    assert fees == {"f0": Decimal("0"), "f1": Decimal("0"), "f2": Decimal("1.5"), "f3": Decimal("0.0001"),
                    "f4": Decimal("999999999.9999")}
    assert [(s.rows_loaded, s.rows_duplicate, s.rows_rejected) for s in (first, again, other)] == [
        (5, 0, 0), (0, 5, 0), (0, 1, 1)]
    assert reasons == ["txn_ref: 'f4' conflicts with loaded trade 5 (batch 1, line 6)"]
