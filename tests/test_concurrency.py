"""Two loaders at once on MariaDB: loads that commit out of txn_id order are applied exactly once."""
import threading

import pytest
from sqlalchemy import text

import batches
import db_config
import dialects
import load_transactions
import seed_investors
import update_portfolio

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"


def write(path, rows):
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows))
    return path


def portfolio_rows(engine):
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT investor_id, stock_symbol, quantity, cost_basis, realized_pnl, trade_count "
            "FROM portfolios ORDER BY investor_id, stock_symbol")).all()


@pytest.fixture
def mariadb_engine(mariadb_url):
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    yield engine
    engine.dispose()


def test_out_of_order_commits_are_applied_once(mariadb_engine, tmp_path, monkeypatch):
    # Loader A inserts first (lower txn_ids) but commits last; B commits in between and is applied first.
    file_a = write(tmp_path / "a.csv", [
        "A1,1001,AAPL,BUY,100,10.00,2025-01-02 10:00:00",
        "A2,1001,AAPL,SELL,40,12.00,2025-01-02 11:00:00",
        "A3,1002,MSFT,BUY,10,300.00,2025-01-02 10:00:00",
    ])
    file_b = write(tmp_path / "b.csv", [
        "B1,1001,AAPL,BUY,50,11.00,2025-01-02 10:30:00",
        "B2,1003,KO,BUY,5,60.00,2025-01-03 10:00:00",
    ])
    a_inserted, release_a = threading.Event(), threading.Event()
    real_finish = batches.finish_batch

    def finish_after_release(connection, summary):
        if summary.source == str(file_a):
            a_inserted.set()
            assert release_a.wait(30), "test did not release loader A"
        real_finish(connection, summary)

    monkeypatch.setattr(batches, "finish_batch", finish_after_release)
    outcome = {}
    loader_a = threading.Thread(
        target=lambda: outcome.update(a=load_transactions.load_file(mariadb_engine, str(file_a))))
    loader_a.start()
    assert a_inserted.wait(30)
    load_transactions.load_file(mariadb_engine, str(file_b))
    first = update_portfolio.update_portfolios(mariadb_engine)
    release_a.set()
    loader_a.join(30)
    second = update_portfolio.update_portfolios(mariadb_engine)
    incremental = portfolio_rows(mariadb_engine)
    full = update_portfolio.update_portfolios(mariadb_engine, full=True)

    assert outcome["a"].rows_loaded == 3
    assert (first.trades_applied, second.trades_applied, full.trades_applied) == (2, 3, 5)
    assert second.positions_replayed == 1  # AAPL of 1001 had B1 applied; A1 and A2 bracket it in time
    assert incremental == portfolio_rows(mariadb_engine)
    by_position = {(row.investor_id, row.stock_symbol): row for row in incremental}
    # 1001 AAPL: BUY 100 @ 10, BUY 50 @ 11 -> 150 held at cost 1550; SELL 40 @ 12 at avg 10.3333 -> 110 held
    aapl = by_position[(1001, "AAPL")]
    assert aapl.quantity == 110 and aapl.trade_count == 3
    assert float(aapl.cost_basis) == pytest.approx(1550 - 40 * 1550 / 150, abs=1e-5)
    assert float(aapl.realized_pnl) == pytest.approx(40 * (12 - 1550 / 150), abs=1e-5)


def test_the_stage_lock_is_one_per_database(mariadb_url, second_mariadb_url):
    """MySQL's named locks are server-wide: an update of one database must not wait for another's, so the
    lock is named after the database, within MySQL's 64 characters."""
    first, second = db_config.get_engine(mariadb_url), db_config.get_engine(second_mariadb_url)
    try:
        with db_config.stage_transaction(first, "update_portfolio"):
            with second.connect() as other:  # the lock of the second database is free meanwhile
                name = db_config.stage_lock_name(second, "update_portfolio")
                assert other.execute(text("SELECT IS_FREE_LOCK(:name)"), {"name": name}).scalar() == 1
                held = db_config.stage_lock_name(first, "update_portfolio")
                assert other.execute(text("SELECT IS_FREE_LOCK(:name)"), {"name": held}).scalar() == 0
        assert len(db_config.stage_lock_name(first, "update_portfolio")) <= 64
    finally:
        first.dispose()
        second.dispose()


def test_a_lock_wait_the_server_interrupted_changes_nothing(mariadb_engine, monkeypatch):
    """GET_LOCK answers NULL when its wait is killed: the stage must stop, not run without the lock."""
    monkeypatch.setattr(dialects, "stage_lock", lambda name: dialects.SessionLock("SELECT NULL", "SELECT 1"))
    with pytest.raises(db_config.DatabaseUnavailable, match="did not grant update_portfolio's lock"):
        with db_config.stage_transaction(mariadb_engine, "update_portfolio"):
            pass
