"""One SQLAlchemy engine for every stage: where the database is, how to connect, and the schema on first use.

DATABASE_URL comes from `--database-url`, else the environment, else a `.env` file (python-dotenv, which never
overrides what the environment already sets), else the embedded default `sqlite:///stock_investments.db`.
A URL is only ever shown with its password hidden.
"""
import logging
import os
from contextlib import contextmanager

from dotenv import load_dotenv
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

import schema

logger = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///stock_investments.db"
SQLITE_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_mode = WAL",  # readers never block the loader, nor the loader them
    "PRAGMA synchronous = NORMAL",  # durable at every checkpoint, safe with WAL
    "PRAGMA busy_timeout = 60000",  # wait up to 60 s for another stage's write instead of failing
)
MYSQL_UNKNOWN_DATABASE = 1049

load_dotenv()


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or opened; the message is fit for the user."""


def database_url(override=None):
    """The URL to use: the override, else DATABASE_URL, else the SQLite default."""
    return override or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def safe_url(url):
    """The URL as text with its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def get_engine(url=None, create_schema=True):
    """An engine for `url` (see database_url), connected once and with the schema created if missing.

    Raises DatabaseUnavailable with a one-line reason that never contains the password.
    """
    url = make_url(database_url(url))
    engine = _create_engine(url)
    try:
        _check_connection(engine, url)
        if create_schema:
            schema.metadata.create_all(engine)
    except SQLAlchemyError as error:
        engine.dispose()
        raise DatabaseUnavailable(f"cannot use database {safe_url(url)}: {_first_line(error)}") from None
    logger.debug("using database %s", safe_url(url))
    return engine


def _create_engine(url):
    backend = url.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url)
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "begin", _begin_sqlite)
        return engine
    if backend == "mysql":
        url = url.update_query_dict({"charset": "utf8mb4"})
        return create_engine(
            url, pool_pre_ping=True, isolation_level="READ COMMITTED", connect_args={"local_infile": True},
        )
    return create_engine(url, pool_pre_ping=True)


def _configure_sqlite(dbapi_connection, _record):
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _begin_sqlite(connection):
    connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))


def _check_connection(engine, url):
    """Connect once; create a missing MySQL database (a fresh server needs no manual step)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as error:
        code = error.orig.args[0] if error.orig is not None and error.orig.args else None
        if url.get_backend_name() != "mysql" or code != MYSQL_UNKNOWN_DATABASE:
            raise
        server = create_engine(url._replace(database=None))  # URL.set() treats None as "unchanged"
        with server.begin() as connection:
            connection.exec_driver_sql(
                f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        server.dispose()
        logger.info("created database %s", url.database)


def _first_line(error):
    message = str(getattr(error, "orig", None) or error)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


@contextmanager
def write_transaction(engine):
    """A connection in a transaction that will write; on SQLite it takes the write lock up front."""
    with engine.connect() as connection:
        connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with connection.begin():
            yield connection


@contextmanager
def stage_transaction(engine, stage):
    """A snapshot write transaction, run by one process at a time per stage (e.g. two updates in cron).

    MySQL and PostgreSQL take a session-level named lock before the transaction begins, so the transaction's
    snapshot includes everything the previous holder committed; SQLite's write lock already serializes.
    """
    with engine.connect() as connection:
        backend = connection.dialect.name
        if backend in STAGE_LOCKS:
            take, release = STAGE_LOCKS[backend]
            got = connection.execute(text(take), {"name": f"stock_etl.{stage}"}).scalar()
            connection.commit()
            if got == 0:
                raise DatabaseUnavailable(f"another {stage} has held its lock for an hour; giving up")
            connection.execution_options(isolation_level="REPEATABLE READ")
        connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        try:
            with connection.begin():
                yield connection
        finally:
            if backend in STAGE_LOCKS:
                connection.execute(text(STAGE_LOCKS[backend][1]), {"name": f"stock_etl.{stage}"})
                connection.commit()


STAGE_LOCKS = {  # dialect: (take the lock, release it); session-level, so they outlive a commit
    "mysql": ("SELECT GET_LOCK(:name, 3600)", "SELECT RELEASE_LOCK(:name)"),
    "postgresql": ("SELECT pg_advisory_lock(hashtext(:name))", "SELECT pg_advisory_unlock(hashtext(:name))"),
}
