"""schema.py and create_tables.sql: one schema, the same on every path, with its constraints enforced.

create_tables.sql is executed on a fresh MariaDB database and compared, through sqlalchemy.inspect, with
schema.metadata.create_all on another fresh MariaDB database.
"""
import os
import re
import uuid
from datetime import datetime

import pytest
from sqlalchemy import create_engine, inspect, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

import schema
from schema import transactions

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CREATE_TABLES_SQL = os.path.join(PROJECT_DIR, "create_tables.sql")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root:@127.0.0.1:3306")


def read_create_tables_sql():
    with open(CREATE_TABLES_SQL, encoding="utf-8") as handle:
        return handle.read()


def sql_statements(script):
    """The statements of a script of `;`-terminated statements, `--` comment lines dropped."""
    body = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in body.split(";") if statement.strip()]


@pytest.fixture
def second_mariadb_url(mariadb_url):
    """Another fresh MariaDB database on the same server (skips with mariadb_url when the server is down)."""
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    server = create_engine(make_url(mariadb_url).set(database=""), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield make_url(mariadb_url).set(database=name).render_as_string(hide_password=False)
    with server.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    server.dispose()


def describe(engine):
    """Everything inspect() reports about every table, in comparable form."""
    inspector = inspect(engine)
    tables = {}
    for table in sorted(inspector.get_table_names()):
        tables[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("autoincrement"), c.get("default"))
                        for c in inspector.get_columns(table)],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                                   for f in inspector.get_foreign_keys(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
            "checks": sorted((c["name"], re.sub(r"\s+", " ", c["sqltext"]))
                             for c in inspector.get_check_constraints(table)),
            "engine": inspector.get_table_options(table).get("mysql_engine"),
        }
    return tables


def test_create_tables_sql_is_rendered_from_schema():
    assert read_create_tables_sql() == schema.mysql_ddl()


def test_create_tables_sql_builds_the_same_schema_as_create_all(mariadb_url, second_mariadb_url):
    script_engine = create_engine(mariadb_url)
    metadata_engine = create_engine(second_mariadb_url)
    database = make_url(mariadb_url).database
    script = read_create_tables_sql()
    assert "stock_investments" in script
    try:
        with script_engine.begin() as connection:
            for statement in sql_statements(script.replace("stock_investments", database)):
                connection.exec_driver_sql(statement)
        schema.metadata.create_all(metadata_engine)

        from_script, from_metadata = describe(script_engine), describe(metadata_engine)
    finally:
        script_engine.dispose()
        metadata_engine.dispose()

    assert sorted(from_script) == sorted(table.name for table in schema.metadata.sorted_tables)
    assert from_script["transactions"]["unique"] == [("txn_ref", ("txn_ref",))]
    assert ("ix_transactions_position_time", ("investor_id", "stock_symbol", "txn_time"), False) in \
        from_script["transactions"]["indexes"]
    for table in from_metadata:
        assert from_script[table] == from_metadata[table], table


def test_create_tables_sql_is_idempotent(mariadb_url):
    engine = create_engine(mariadb_url)
    database = make_url(mariadb_url).database
    statements = sql_statements(read_create_tables_sql().replace("stock_investments", database))
    try:
        for _ in range(2):
            with engine.begin() as connection:
                for statement in statements:
                    connection.exec_driver_sql(statement)
        assert len(inspect(engine).get_table_names()) == len(schema.metadata.tables)
    finally:
        engine.dispose()


def new_trade(**values):
    row = {"txn_ref": uuid.uuid4().hex, "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY",
           "quantity": 10, "price": 100, "txn_time": datetime(2025, 1, 2, 10, 0, 0)}
    row.update(values)
    return row


def test_foreign_keys_are_enforced(seeded_engine):
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        with seeded_engine.begin() as connection:
            connection.execute(insert(transactions).values(new_trade(investor_id=9999)))
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        with seeded_engine.begin() as connection:
            connection.execute(insert(transactions).values(new_trade(stock_symbol="NOPE")))
    with seeded_engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar() == 0


@pytest.mark.parametrize("values, constraint", [
    ({"quantity": 0}, "ck_transactions_quantity_positive"),
    ({"txn_type": "HOLD"}, "ck_transactions_txn_type"),
    ({"price": 0}, "ck_transactions_price_positive"),
])
def test_check_constraints_are_enforced(seeded_engine, values, constraint):
    with seeded_engine.begin() as connection:
        connection.execute(insert(transactions).values(new_trade(txn_ref="valid")))

    # SQLite reports IntegrityError, MariaDB error 4025 (OperationalError in PyMySQL): both name the constraint.
    with pytest.raises(DBAPIError, match=constraint):
        with seeded_engine.begin() as connection:
            connection.execute(insert(transactions).values(new_trade(**values)))

    with seeded_engine.connect() as connection:
        assert connection.execute(text("SELECT txn_ref FROM transactions")).scalars().all() == ["valid"]


def test_schema_is_created_on_first_use_and_again_is_a_no_op(engine):
    before = describe(engine) if engine.dialect.name == "mysql" else sorted(inspect(engine).get_table_names())

    schema.metadata.create_all(engine)

    after = describe(engine) if engine.dialect.name == "mysql" else sorted(inspect(engine).get_table_names())
    assert after == before
    assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
