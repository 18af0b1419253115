"""db_config.py: which database, connecting once, creating what is missing, never showing a password."""
import os
import uuid

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

import db_config
import schema

MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root:@127.0.0.1:3306")


@pytest.mark.parametrize("url, shown", [
    ("mysql+pymysql://etl:s3cr3t@db.example:3306/stock_investments",
     "mysql+pymysql://etl:***@db.example:3306/stock_investments"),
    ("postgresql+psycopg://etl:p%40ss@localhost/stock", "postgresql+psycopg://etl:***@localhost/stock"),
    ("sqlite:///stock_investments.db", "sqlite:///stock_investments.db"),
])
def test_safe_url_hides_the_password(url, shown):
    assert db_config.safe_url(url) == shown


def test_database_url_prefers_override_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from_env.db")
    assert db_config.database_url() == "sqlite:///from_env.db"
    assert db_config.database_url("sqlite:///override.db") == "sqlite:///override.db"

    monkeypatch.delenv("DATABASE_URL")
    assert db_config.database_url() == "sqlite:///stock_investments.db"


def test_get_engine_uses_database_url_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "from_env.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")

    engine = db_config.get_engine()
    try:
        assert engine.url.database == str(path)
        assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
    assert path.exists()


def test_get_engine_creates_a_missing_mariadb_database():
    name = f"etl_test_new_{uuid.uuid4().hex[:10]}"
    server = create_engine(MARIADB_URL, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            assert connection.execute(text("SHOW DATABASES LIKE :name"), {"name": name}).all() == []
    except Exception as error:  # no server: the same policy as conftest's fixtures
        server.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"mariadb unreachable: {error}")
        pytest.skip(f"mariadb unreachable: {str(error).splitlines()[0]}")
    engine = None
    try:
        engine = db_config.get_engine(make_url(MARIADB_URL).set(database=name).render_as_string(hide_password=False))
        with server.connect() as connection:
            assert connection.execute(text("SHOW DATABASES LIKE :name"), {"name": name}).all() == [(name,)]
        assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        if engine is not None:
            engine.dispose()
        with server.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        server.dispose()


def test_unreachable_database_raises_a_one_line_error_without_the_password():
    with pytest.raises(db_config.DatabaseUnavailable) as error_info:
        db_config.get_engine("mysql+pymysql://root:secretpw@127.0.0.1:1/x")

    message = str(error_info.value)
    assert message.startswith("cannot use database mysql+pymysql://root:***@127.0.0.1:1/x: ")
    assert "secretpw" not in message and "\n" not in message


def test_unopenable_sqlite_file_raises_database_unavailable(tmp_path):
    url = f"sqlite:///{tmp_path / 'no_such_dir' / 'x.db'}"

    with pytest.raises(db_config.DatabaseUnavailable, match=r"^cannot use database sqlite:///.*no_such_dir.*: "):
        db_config.get_engine(url)
