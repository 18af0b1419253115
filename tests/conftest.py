"""Fixtures: a fresh database per test on SQLite (a file in tmp_path), on real MariaDB and on real PostgreSQL
(a new database each); `database_url` runs a test on all three.

MariaDB comes from TEST_MARIADB_URL (default mysql+pymysql://root:@127.0.0.1:3306), PostgreSQL from
TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres). When one is unreachable its
tests skip on a developer machine and fail when CI is set, so CI never passes without them.
"""
import logging
import os
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import db_config  # noqa: E402
import seed_investors  # noqa: E402

MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root:@127.0.0.1:3306")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _unreachable(what, error):
    message = f"{what} unreachable: {str(error).splitlines()[0]}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: server tests must not skip)")
    pytest.skip(message)


def _server_database(server_url, name, create, drop):
    """Create database `name` on a server; return (its URL, a finalizer that drops it)."""
    server = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            connection.execute(text(create.format(name=name)))
    except Exception as error:  # any failure to reach the server
        server.dispose()
        _unreachable(make_url(server_url).get_backend_name(), error)

    def finalize():
        with server.connect() as connection:
            connection.execute(text(drop.format(name=name)))
        server.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), finalize


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(items):
    """A test marked slow_on_servers runs on SQLite by default; on MariaDB and PostgreSQL only with -m slow."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker("slow_on_servers") and callspec and callspec.params.get("database_url") not in (
                None, "sqlite"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def restore_logging():
    """main() reconfigures the root logger onto capsys' stream; put it back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'test.db'}"


def _fresh_mariadb():
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    return _server_database(
        MARIADB_URL, name, "CREATE DATABASE {name} CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def mariadb_url():
    url, finalize = _fresh_mariadb()
    yield url
    finalize()


@pytest.fixture
def second_mariadb_url():
    """Another fresh MariaDB database, for comparisons between two loads."""
    url, finalize = _fresh_mariadb()
    yield url
    finalize()


@pytest.fixture
def postgres_url():
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    url, finalize = _server_database(
        POSTGRES_URL, name, "CREATE DATABASE {name}", "DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    yield url
    finalize()


@pytest.fixture(params=["sqlite", "mariadb", "postgres"])
def database_url(request):
    """A URL of a fresh, empty database: once on SQLite, once on MariaDB, once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(params=["mariadb", "postgres"])
def server_url(request):
    """A URL of a fresh, empty database on a server: once on MariaDB, once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(database_url):
    """An engine on a fresh database with the schema created."""
    engine = db_config.get_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded_engine(engine):
    """An engine on a fresh database with the default investors and stocks."""
    seed_investors.seed_reference_data(engine)
    return engine


@pytest.fixture
def broker():
    """(a channel on the local RabbitMQ, a list of queue names to delete afterwards). Skips without a broker,
    except when CI is set: then it fails."""
    import pika
    import trade_queue
    try:
        connection = trade_queue.connect()
    except pika.exceptions.AMQPError as error:
        _unreachable(f"RabbitMQ at {trade_queue.amqp_url()}", error)
    channel = connection.channel()
    created = []
    yield channel, created
    for name in created:
        channel.queue_delete(name)
    connection.close()
