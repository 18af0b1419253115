"""The loader skips the database's foreign key checks only where validation made them, and only while that is safe:
the checks are on again afterwards on the same pooled connection, unknown references are still rejected, a
checked investor cannot be deleted until the batch commits, and two loaders at once still store each trade once."""
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import db_config
import dialects
import load_transactions
import seed_investors

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"


def write_trades(path, rows):
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    return str(path)


def trade(number, investor_id=1001, symbol="AAPL"):
    return f"R{number},{investor_id},{symbol},BUY,{number % 50 + 1},10.50,2025-06-02 10:{number % 60:02d}:00\n"


def foreign_key_checks_on(connection):
    statement = {"sqlite": "PRAGMA foreign_keys", "mysql": "SELECT @@SESSION.foreign_key_checks"}.get(
        connection.dialect.name)
    return True if statement is None else bool(connection.exec_driver_sql(statement).scalar())


def test_checks_are_on_again_after_a_load(seeded_engine, tmp_path):
    path = write_trades(tmp_path / "t.csv", [trade(n) for n in range(20)])
    seeded_engine.dispose()  # one pooled connection from here: the load's is the one checked below
    summary = load_transactions.load_file(seeded_engine, path)
    assert summary.rows_loaded == 20
    with seeded_engine.connect() as connection:
        assert foreign_key_checks_on(connection)


def test_checks_are_on_again_after_a_failed_load(seeded_engine):
    with pytest.raises(RuntimeError, match="cut"):
        with db_config.references_checked_transaction(seeded_engine) as connection:
            if dialects.foreign_key_switch(connection.dialect.name):
                assert not foreign_key_checks_on(connection)
            raise RuntimeError("cut")
    with seeded_engine.connect() as connection:
        assert foreign_key_checks_on(connection)


def test_unknown_references_are_still_rejected(seeded_engine, tmp_path):
    path = write_trades(tmp_path / "t.csv", [trade(1), trade(2, investor_id=999_999), trade(3, symbol="NOPE")])
    summary = load_transactions.load_file(seeded_engine, path)
    assert (summary.rows_loaded, summary.rows_rejected) == (1, 2)
    with seeded_engine.connect() as connection:
        orphans = connection.execute(text(
            "SELECT COUNT(*) FROM transactions t WHERE NOT EXISTS (SELECT 1 FROM investors i WHERE "
            "i.investor_id = t.investor_id) OR NOT EXISTS (SELECT 1 FROM stocks s WHERE "
            "s.stock_symbol = t.stock_symbol)")).scalar()
    assert orphans == 0


def test_a_checked_investor_cannot_be_deleted_before_commit(mariadb_url):
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    other = db_config.get_engine(mariadb_url)
    with db_config.references_checked_transaction(engine) as connection:
        connection.execute(text("SELECT investor_id FROM investors LOCK IN SHARE MODE")).all()
        with other.connect() as deleter:
            deleter.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
            with pytest.raises(OperationalError, match="Lock wait timeout"):
                deleter.exec_driver_sql("DELETE FROM investors WHERE investor_id = 1001")
    engine.dispose()
    other.dispose()


def test_the_load_takes_the_shared_locks(mariadb_url, tmp_path, monkeypatch):
    """While a load is between chunks, a DELETE of an investor it checked waits (and here times out)."""
    engine = db_config.get_engine(mariadb_url)
    seed_investors.seed_reference_data(engine)
    path = write_trades(tmp_path / "t.csv", [trade(n) for n in range(30)])
    inside, release = threading.Event(), threading.Event()
    original = load_transactions.store_chunk

    def paused_store(*args, **kwargs):
        inside.set()
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(load_transactions, "store_chunk", paused_store)
    loader = threading.Thread(target=load_transactions.load_file, args=(engine, path))
    loader.start()
    try:
        assert inside.wait(30)
        other = db_config.get_engine(mariadb_url)
        with other.connect() as deleter:
            deleter.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
            with pytest.raises(OperationalError, match="Lock wait timeout"):
                deleter.exec_driver_sql("DELETE FROM investors WHERE investor_id = 1001")
        other.dispose()
    finally:
        release.set()
        loader.join(60)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM transactions").scalar() == 30
    engine.dispose()


def test_two_loaders_at_once_store_each_trade_once(database_url, tmp_path):
    engine = db_config.get_engine(database_url)
    seed_investors.seed_reference_data(engine)
    first = write_trades(tmp_path / "a.csv", [trade(n) for n in range(0, 3000)])
    second = write_trades(tmp_path / "b.csv", [trade(n) for n in range(1500, 4500)])
    errors, summaries = [], []

    def load(path):
        try:
            summaries.append(load_transactions.load_file(engine, path, chunk_rows=500))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=load, args=(path,)) for path in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert sum(s.rows_loaded for s in summaries) == 4500
    assert sum(s.rows_duplicate for s in summaries) == 1500
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(DISTINCT txn_ref), COUNT(*) FROM transactions").one() == (
            4500, 4500)
        assert foreign_key_checks_on(connection)
    engine.dispose()
