"""create_etl_role.py: the pipeline and the live consumer run as a role that may only read and write the
pipeline's tables (MariaDB and PostgreSQL), and the files the scripts create are readable by their owner only."""
import os
import stat
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

import alerts as alerts_script
import analyze
import create_etl_role
import db_config
import load_transactions
import master_etl
import seed_investors
import surveillance
import update_portfolio
from schema import alerts, load_batches, portfolios, transactions
from test_trade_queue import live_trades, publish, queue_totals, start_consumer, stop, wait_until

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "p'a%\"\\x y"  # quotes, a percent sign, a backslash and a space survive the quoting


@pytest.fixture
def queue_name(broker):
    _, created = broker
    name = f"test-role-{uuid.uuid4().hex[:8]}"
    created += [name, f"{name}.rejected"]
    return name


@pytest.fixture
def admin_url(server_url):
    return server_url


@pytest.fixture
def etl_url(admin_url, monkeypatch):
    """The URL of a new least-privileged role on the admin URL's database; the role is dropped afterwards."""
    role = f"etl_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(create_etl_role.PASSWORD_VARIABLE, PASSWORD)
    assert create_etl_role.main(["--database-url", admin_url, "--role", role, "--quiet"]) == 0
    yield make_url(admin_url).set(username=role, password=PASSWORD).render_as_string(hide_password=False)
    drop_role(admin_url, role)


def drop_role(admin_url, role):
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if connection.dialect.name == "mysql":
            connection.execute(text(f"DROP USER IF EXISTS '{role}'@'%'"))
        else:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
    engine.dispose()


def test_the_pipeline_and_the_live_consumer_run_as_the_role(etl_url, broker, queue_name, tmp_path, capsys):
    arguments = ["--database-url", etl_url, "--rows", "2000", "--input", str(tmp_path / "t.csv"),
                 "--reports", str(tmp_path / "reports"), "--no-plots", "--quiet"]
    assert master_etl.main(arguments) == 0

    channel, _ = broker
    trades = live_trades(12, prefix="ROLE")
    publish(channel, queue_name, trades)
    consumer = start_consumer(etl_url, queue_name)
    wait_until(lambda: queue_totals(etl_url)[0] == 12 and queue_totals(etl_url)[4] == 0, "12 messages")
    code, _, err = stop(consumer)
    assert code == 0, err
    assert queue_totals(etl_url) == (12, 12, 0, 0, 0)

    database = ["--database-url", etl_url, "--quiet"]
    assert update_portfolio.main([*database, "--full"]) == 0
    assert surveillance.main([*database, "--full"]) == 0
    assert analyze.main([*database, "--html", "--reports", str(tmp_path / "reports")]) == 0
    engine = db_config.get_engine(etl_url)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions)).scalar() == 2012
        assert connection.execute(select(func.count()).where(load_batches.c.status == "running")).scalar() == 0
        assert connection.execute(select(func.sum(portfolios.c.trade_count))).scalar() == 2012
        alert_id = connection.execute(select(func.min(alerts.c.alert_id))).scalar()
    engine.dispose()
    assert alerts_script.main([*database, "resolve", str(alert_id), "--note", "checked"]) == 0


def test_the_role_loads_a_file_that_repeats_stored_trades(etl_url, tmp_path):
    """A half-new file goes through the temporary staging table: the role may create one."""
    header = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"
    lines = [f"H{n},1001,AAPL,BUY,{n + 1},10.50,2025-06-02 10:00:{n % 60:02d}\n" for n in range(40)]
    first, whole = tmp_path / "first.csv", tmp_path / "whole.csv"
    first.write_text(header + "".join(lines[:20]), encoding="utf-8")
    whole.write_text(header + "".join(lines), encoding="utf-8")
    engine = db_config.get_engine(etl_url)
    seed_investors.seed_reference_data(engine)
    load_transactions.load_file(engine, str(first))
    summary = load_transactions.load_file(engine, str(whole))
    engine.dispose()
    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) == (20, 20, 0)


@pytest.mark.parametrize("statement", [
    "CREATE TABLE intruder (id INTEGER PRIMARY KEY)", "DROP TABLE transactions",
    "ALTER TABLE transactions ADD COLUMN intruder INTEGER", "DELETE FROM alerts", "DELETE FROM transactions",
    "DELETE FROM load_batches", "UPDATE transactions SET quantity = 1", "UPDATE rejected_transactions SET reason = ''",
])
def test_the_role_cannot_change_the_schema_the_trades_or_the_alerts(etl_url, statement):
    engine = create_engine(etl_url)
    with engine.connect() as connection:
        with pytest.raises(DBAPIError, match="denied|must be owner|permission"):
            connection.execute(text(statement))
    engine.dispose()


def test_running_it_again_keeps_the_role_working(etl_url, admin_url, monkeypatch):
    role = make_url(etl_url).username
    monkeypatch.setenv(create_etl_role.PASSWORD_VARIABLE, PASSWORD)
    assert create_etl_role.main(["--database-url", admin_url, "--role", role, "--quiet"]) == 0
    engine = db_config.get_engine(etl_url)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions)).scalar() == 0
    engine.dispose()


def test_the_password_is_never_printed(admin_url, monkeypatch, capsys):
    role = f"etl_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(create_etl_role.PASSWORD_VARIABLE, PASSWORD)
    try:
        assert create_etl_role.main(["--database-url", admin_url, "--role", role, "--verbose"]) == 0
    finally:
        drop_role(admin_url, role)
    out, err = capsys.readouterr()
    assert out.startswith(f"role {role} created: SELECT, INSERT on every table, UPDATE on all but transactions and "
                          "rejected_transactions, DELETE only on the 10 tables rebuilt from the trades on database ")
    assert PASSWORD not in out + err


@pytest.mark.parametrize("power", ["superuser", "member"])
def test_an_existing_role_with_more_privileges_is_refused_and_left_alone(admin_url, power, monkeypatch, capsys):
    role = f"etl_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        database = connection.engine.url.database
        if connection.dialect.name == "mysql":
            connection.execute(text(f"CREATE USER '{role}'@'%' IDENTIFIED BY 'original'"))
            target = "*.*" if power == "superuser" else f"{database}.*"
            connection.execute(text(f"GRANT {'ALL PRIVILEGES' if power == 'superuser' else 'DROP'} ON {target} "
                                    f"TO '{role}'@'%'"))
        else:
            connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'original'"
                                    f"{' CREATEDB' if power == 'superuser' else ''}"))
            if power == "member":
                connection.execute(text(f"GRANT pg_read_all_data TO {role}"))
    engine.dispose()
    monkeypatch.setenv(create_etl_role.PASSWORD_VARIABLE, PASSWORD)
    try:
        assert create_etl_role.main(["--database-url", admin_url, "--role", role]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: create_etl_role: role {role} already exists and "), err
        assert err.endswith("it is not a role this script made; choose another --role\n"), err
        original = make_url(admin_url).set(username=role, password="original")
        with create_engine(original).connect() as connection:  # its password is unchanged
            connection.execute(text("SELECT 1"))
    finally:
        drop_role(admin_url, role)


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        create_etl_role.main(["--help"])
    assert exit_info.value.code == 0
    assert "e.g. 10.0.0.% or localhost" in capsys.readouterr().out


def test_without_a_password_it_ends_with_one_line(mariadb_url, monkeypatch, capsys):
    monkeypatch.delenv(create_etl_role.PASSWORD_VARIABLE, raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert create_etl_role.main(["--database-url", mariadb_url]) == 2
    assert capsys.readouterr().err == ("error: create_etl_role: no password: set ETL_PASSWORD, or run on a "
                                       "terminal to be asked for one\n")


def test_sqlite_has_no_roles_and_no_file_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(create_etl_role.PASSWORD_VARIABLE, PASSWORD)
    assert create_etl_role.main(["--database-url", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert capsys.readouterr().err == ("error: create_etl_role: a SQLite file has no roles: it is protected by its "
                                       "file permissions (owner only)\n")
    assert list(tmp_path.iterdir()) == []


def test_files_the_pipeline_creates_are_readable_by_their_owner_only(tmp_path):
    """Under a permissive umask (022), the SQLite file, its journal, the reports and the generated files are 0600
    and new folders 0700: they may hold client data."""
    command = [sys.executable, os.path.join(PROJECT, "master_etl.py"), "--rows", "500",
               "--database-url", f"sqlite:///{tmp_path / 'data' / 'etl.db'}",
               "--input", str(tmp_path / "in" / "t.csv"), "--reports", str(tmp_path / "reports")]
    (tmp_path / "data").mkdir()
    (tmp_path / "in").mkdir()
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                               preexec_fn=lambda: os.umask(0o022))
    assert completed.returncode == 0, completed.stderr
    created = [path for path in tmp_path.rglob("*") if path.parent != tmp_path]
    assert {path.name for path in created} >= {"etl.db", "t.csv", "market_prices.csv", "dashboard.png", "risk.png"}
    for path in created:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    assert stat.S_IMODE((tmp_path / "reports").stat().st_mode) == 0o700


def test_a_database_the_role_may_not_use_says_what_to_do(etl_url, capsys):
    """MySQL answers 1044 for a database that does not exist and that the user may not create, too."""
    other = make_url(etl_url).set(database=f"nu_{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)
    assert update_portfolio.main(["--database-url", other]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and PASSWORD not in err
    if other.startswith("mysql"):
        assert err.endswith("the database does not exist or this user may not use it: ask an administrator to "
                            "create it and grant access (create_etl_role.py)\n"), err
    else:
        assert "it does not exist and the user cannot create it" in err, err


def test_a_name_taken_by_an_account_of_another_host_is_refused(mariadb_url, monkeypatch, capsys):
    """Regression: only role@--host was checked, so X@'%' was made beside an all-powerful X@'localhost', which a
    login from localhost would have been."""
    role = f"etl_{uuid.uuid4().hex[:8]}"
    engine = create_engine(mariadb_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE USER '{role}'@'localhost' IDENTIFIED BY 'original'"))
    monkeypatch.setenv(create_etl_role.PASSWORD_VARIABLE, PASSWORD)
    try:
        assert create_etl_role.main(["--database-url", mariadb_url, "--role", role]) == 2
        assert capsys.readouterr().err == (f"error: create_etl_role: role {role} already exists and also exists for "
                                           "host 'localhost', which a login from there would use: it is not a role "
                                           "this script made; choose another --role\n")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT COUNT(*) FROM mysql.user WHERE User = :name"),
                                      {"name": role}).scalar() == 1
    finally:
        with engine.connect() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{role}'@'localhost'"))
        engine.dispose()
