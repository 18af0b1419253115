"""One SQLAlchemy engine for every stage: where the database is, how to connect, and the schema on first use.

DATABASE_URL comes from `--database-url`, else the environment, else the project folder's `.env` file
(python-dotenv, which never overrides what the environment already sets), else the embedded default: the file
stock_investments.db in the project folder (the folder of this file), from whatever folder a script runs.
A relative path written in a URL (`sqlite:///x.db`) stays relative to the working directory, as in SQLAlchemy.
`mysql://` and `mariadb://` mean PyMySQL, `postgresql://` and `postgres://` psycopg. A missing MySQL or
PostgreSQL database is created when the user may. A URL is only ever shown with its credentials hidden.
A MySQL/MariaDB URL may list several servers (a Galera cluster, docs/high-availability.md):
`mysql://user:pw@node1:3306,node2:3306,node3:3306/db`, kept as `?host=node1:3306&host=...` (SQLAlchemy's form);
each new connection goes to the first of them that answers and is ready.
"""
import fcntl
import hashlib
import logging
import os
import re
import time
import warnings
from contextlib import contextmanager, suppress
from urllib.parse import unquote, unquote_plus

import pymysql
from dotenv import load_dotenv
from pymysql.constants import CLIENT
from pymysql.protocol import LoadLocalPacketWrapper
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, ProgrammingError, SQLAlchemyError
from sqlalchemy.schema import CreateColumn

import dialects
import schema

logger = logging.getLogger(__name__)

PROJECT_FOLDER = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATABASE_FILE = os.path.join(PROJECT_FOLDER, "stock_investments.db")
DEFAULT_DATABASE_URL = URL.create("sqlite", database=DEFAULT_DATABASE_FILE).render_as_string()
SQLITE_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_mode = WAL",  # readers never block the loader, nor the loader them
    "PRAGMA synchronous = NORMAL",  # durable at every checkpoint, safe with WAL
    "PRAGMA busy_timeout = 60000",  # wait up to 60 s for another stage's write instead of failing
    "PRAGMA cache_size = -65536",  # 64 MiB of pages, not 2: the txn_ref index of millions of trades thrashed
)
BACKEND_ALIASES = {"mariadb": "mysql", "postgres": "postgresql"}
DEFAULT_DRIVERS = {"mysql": "pymysql", "postgresql": "psycopg"}  # the drivers requirements.txt installs
DATABASE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")  # a server database name is pasted into CREATE DATABASE
CREDENTIAL_KEY = re.compile(r"pass|pwd|secret|token|key|credential", re.IGNORECASE)  # URL query keys hidden
MYSQL_UNKNOWN_DATABASE, MYSQL_DATABASE_ACCESS_DENIED = 1049, 1044
GALERA_REFUSALS = {1047, 1180}  # node not ready / not in the primary component, commit refused (db_retry retries)
CLUSTER_CONNECT_TIMEOUT = 3  # seconds to wait for each listed server before trying the next (several hosts)
CLUSTER_POOL_RECYCLE = 60  # seconds: pooled connections are renewed, so they come back to the first server
SEVERAL_HOSTS = re.compile(r"(?P<head>[^:/?#]+://(?:[^@/?#]*@)?)(?P<hosts>[^/?#@]*,[^/?#@]*)(?P<tail>.*)", re.S)
PARTITION_LOCKS = 64  # investors spread over this many named locks (investor_id modulo 64), see investors_transaction
POSTGRES_UNKNOWN_DATABASE = "3D000"  # SQLSTATE
POSTGRES_CREATED_MEANWHILE = {"42P04", "23505"}  # duplicate database; unique violation in pg_database (a race)

load_dotenv(os.path.join(PROJECT_FOLDER, ".env"))


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached, opened or created; the message is fit for the user."""


class DatabaseUrlError(Exception):
    """The database URL is malformed or names a database type, driver or name this project cannot use."""


def project_path(*parts):
    """A path in the project folder (the folder of db_config.py), whatever the working directory."""
    return os.path.join(PROJECT_FOLDER, *parts)


def database_url(override=None):
    """The URL to use: the override, else DATABASE_URL, else the SQLite default in the project folder."""
    return override or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def parse_url(url):
    """The URL with the project's drivers filled in and its server database name checked.

    Raises DatabaseUrlError with a one-line reason that never contains a credential.
    """
    try:
        parsed = _with_driver(make_url(hosts_in_query(url)))
        cluster_hosts(parsed)
    except ValueError as error:  # SQLAlchemy's int() of the port, or cluster_hosts
        reason = "a listed server is empty or its port is not a number" if str(error).startswith("bad host") else \
            "the port is not a number"
        raise DatabaseUrlError(_invalid_url(url, reason)) from None
    except ArgumentError:
        raise DatabaseUrlError(_invalid_url(url, "expected dialect+driver://user:password@host/database")) from None
    if "@" in (parsed.host or ""):
        raise DatabaseUrlError("invalid database URL: the user name or password holds an @; write it as %40")
    server_database = dialects.database_creation(parsed.get_backend_name()) is not None and parsed.database is not None
    if server_database and not DATABASE_NAME.fullmatch(parsed.database):
        raise DatabaseUrlError(f"invalid database name {parsed.database!r}: use up to 64 letters, digits and _")
    return parsed


def hosts_in_query(url):
    """A URL text listing several servers (`user:pw@h1:3307,h2:3308/db`) in SQLAlchemy's form
    (`user:pw@/db?host=h1:3307&host=h2:3308`); any other URL (or a URL object) as it is."""
    match = SEVERAL_HOSTS.fullmatch(url) if isinstance(url, str) else None
    if not match:
        return url
    path, _, query = match["tail"].partition("?")
    listed = [host.strip() for host in match["hosts"].split(",")]
    if "" in listed:
        raise ValueError("bad host ''")
    hosts = "&".join(f"host={host}" for host in listed)
    return f"{match['head']}{path or '/'}?{hosts}" + (f"&{query}" if query else "")


def cluster_hosts(url):
    """[(host, port or None), ...] of a URL listing its servers in ?host= (see hosts_in_query), else None.

    Raises ValueError for an empty host or a port that is not a number."""
    listed = url.query.get("host") if url.host is None else None
    if not listed:
        return None
    hosts = []
    for entry in (listed,) if isinstance(listed, str) else listed:
        if entry.startswith("["):  # [IPv6 address]:port
            host, _, port = entry[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = entry.partition(":")
        if not host or not (port == "" or port.isdigit()):
            raise ValueError(f"bad host {entry!r}")
        hosts.append((host, int(port) if port else None))
    return hosts


def _invalid_url(url, reason):
    """The message for a URL SQLAlchemy cannot parse: the text as written, credentials hidden."""
    return f"invalid database URL {hide_secrets(str(url), str(url))!r}: {reason}"


def _with_driver(url):
    """mariadb:// as mysql, postgres:// as postgresql; no driver named: the project's (PyMySQL, psycopg)."""
    backend, _, driver = url.drivername.partition("+")
    backend = BACKEND_ALIASES.get(backend, backend)
    driver = driver or DEFAULT_DRIVERS.get(backend)
    return url.set(drivername=f"{backend}+{driver}" if driver else backend)


def safe_url(url):
    """The URL as text with its password and credential-like query values (password=, token=...) hidden; several
    servers are shown as written (`h1:3307,h2:3308`)."""
    url = make_url(hosts_in_query(url))
    hosts = cluster_hosts(url)
    if hosts:
        url = url.difference_update_query(["host"]).set(host="hosts-listed-here")
    shown, mark, query = url.render_as_string(hide_password=True).partition("?")
    if hosts:
        shown = shown.replace("hosts-listed-here", ",".join(
            (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "") for host, port in hosts), 1)
    pairs = [pair.partition("=") for pair in query.split("&")] if mark else []
    return shown + mark + "&".join(key + equals + ("***" if CREDENTIAL_KEY.search(key) else value)
                                   for key, equals, value in pairs)


def hide_secrets(message, url=None):
    """The message with every credential of the URL (default: see database_url) replaced by *** where it stands
    alone: not inside a longer word, whose letters would show which ones the password is made of (password 'e':
    'surv***illanc***')."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        message = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", message)
    return message


def _secrets(url):
    """The URL's password and credential-like query values, as written and decoded; read even when malformed."""
    written = url.render_as_string(hide_password=False) if isinstance(url, URL) else database_url(url)
    passwords = re.findall(r"://[^:/@]*:([^@]*)@", written) + re.findall(r"://[^:/@]*:(.*)@", written)
    query = [pair.partition("=") for pair in written.partition("?")[2].split("&")]
    values = passwords + [value for key, _, value in query if CREDENTIAL_KEY.search(key)]
    return {form for value in values for form in (value, unquote(value), unquote_plus(value)) if form}


def error_line(error, url=None):
    """The first line of an error's own message (a driver's, under SQLAlchemy's wrapping), credentials hidden."""
    message = str(getattr(error, "orig", None) or error).strip()
    return hide_secrets(message.splitlines()[0] if message else type(error).__name__, url)


def get_engine(url=None, create_schema=True):
    """An engine for `url` (see database_url), connected once and with the schema created if missing.

    Raises DatabaseUrlError for a URL that cannot work as written, DatabaseUnavailable when the database cannot
    be reached, opened or created; both with a one-line message that never contains a credential.
    """
    url = parse_url(database_url(url))
    # PyMySQL warns when a statement follows a streamed result left unread: a stage interrupted mid-read rolls
    # back so, and the warning (two lines of its source) would come before the stage's one-line message
    warnings.filterwarnings("ignore", message="Previous unbuffered result was left incomplete", category=UserWarning)
    engine = _create_engine(url)
    try:
        _open_database(engine, url, create_schema)
    except Exception:
        engine.dispose()
        raise
    logger.info("using database %s", _location(url))
    return engine


def _location(url):
    """The URL as the log shows it: credentials hidden, a SQLite file with its absolute path."""
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=os.path.abspath(url.database))
    return safe_url(url)


SUPPORTED_BACKENDS = ("sqlite", "mysql", "postgresql")  # SQLAlchemy's names: MariaDB is mysql


def _create_engine(url):
    """An engine for a parsed URL; DatabaseUrlError for a database type this project does not run on (whatever
    drivers are installed: its SQL is written for these three) or a driver not installed."""
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise DatabaseUrlError(f"unsupported database type {url.get_backend_name()!r} in {safe_url(url)}: this "
                               "project runs on SQLite, MariaDB/MySQL and PostgreSQL: use sqlite://, mysql:// or "
                               "postgresql://")
    try:
        if url.get_backend_name() == "sqlite":
            return _create_sqlite_engine(url)
        if url.get_backend_name() == "mysql":
            return _create_mysql_engine(url)
        return create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError:  # a driver name SQLAlchemy does not know (mysql+nosuch://)
        raise DatabaseUrlError(f"unknown driver {url.drivername!r} in {safe_url(url)}: use "
                               f"{url.get_backend_name()}:// for the project's driver") from None
    except ImportError as error:
        raise DatabaseUrlError(f"the driver of {url.drivername} is not installed ({error}): use "
                               f"{url.get_backend_name()}:// for the project's driver") from None
    except (TypeError, ValueError) as error:  # an option value the dialect cannot take (?connect_timeout=abc)
        raise DatabaseUrlError(f"cannot use database {safe_url(url)}: {hide_secrets(str(error), url)}") from None


def _create_sqlite_engine(url):
    engine = create_engine(url)
    event.listen(engine, "connect", _configure_sqlite)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


def _create_mysql_engine(url):
    hosts = cluster_hosts(url)
    several = {"pool_recycle": CLUSTER_POOL_RECYCLE} if hosts else {}
    engine = create_engine(url.update_query_dict({"charset": "utf8mb4"}), pool_pre_ping=True,
                           isolation_level="READ COMMITTED", **several)
    if url.get_driver_name() == "pymysql":
        event.listen(engine, "do_connect", lambda *args: _connect_pymysql(*args, hosts=hosts))
    event.listen(engine, "handle_error", _galera_refusal)
    return engine


def _galera_refusal(context):
    """A Galera node that is not ready or left the primary component (GALERA_REFUSALS): drop the pool's
    connections like a disconnect, so that the next attempt (db_retry) connects afresh, to another listed server."""
    args = getattr(context.original_exception, "args", ())
    if args and args[0] in GALERA_REFUSALS:
        context.is_disconnect = True


def _configure_sqlite(dbapi_connection, _record):
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _begin_sqlite(connection):
    connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))


def _open_database(engine, url, create_schema):
    """Connect once (creating a missing database), then create the schema when asked."""
    try:
        _check_connection(engine, url)
        if create_schema:
            _create_missing_tables(engine)
    except SQLAlchemyError as error:
        raise DatabaseUnavailable(f"cannot use database {safe_url(url)}: {error_line(error, url)}"
                                  f"{_access_hint(error)}") from None
    except (TypeError, ValueError, OSError) as error:  # a URL option the driver does not take, an ssl_ca not found
        raise DatabaseUrlError(f"cannot use database {safe_url(url)}: {hide_secrets(str(error), url)}") from None


def _access_hint(error):
    """What to do about MySQL's 1044 (access denied to a database): it also means a database that does not exist
    and that the user may not create, which the server does not tell apart."""
    args = getattr(getattr(error, "orig", None), "args", ())
    if args and args[0] == MYSQL_DATABASE_ACCESS_DENIED:
        return ("; the database does not exist or this user may not use it: ask an administrator to create it "
                "and grant access (create_etl_role.py)")
    return ""


def _create_missing_tables(engine):
    """Create the schema's tables that do not exist yet and add the columns an earlier version did not have
    (each with its default): one query when nothing is missing (create_all alone asks about each table)."""
    with engine.connect() as connection:
        present = existing_columns(connection)
    if not set(schema.metadata.tables) <= set(present):
        _create_all(engine)
        if "portfolios" not in present:  # a new database: no position was built by an earlier version
            _record_ledger_version(engine)
    missing = [(table, column) for table in schema.metadata.sorted_tables if table.name in present
               for column in table.columns if column.name not in present[table.name]]
    for table, column in missing:
        _add_column(engine, table, column)


def _create_all(engine, attempts=5):
    """Create the missing tables. Stages started at once on a new database race to create the same table (MySQL
    1050 'already exists', PostgreSQL a duplicate type); the loser looks again and creates what is still missing."""
    for attempt in range(1, attempts + 1):
        try:
            schema.metadata.create_all(engine)
            return
        except SQLAlchemyError:
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)


def _record_ledger_version(engine):
    """Record that this database's positions follow the current rules (schema.LEDGER_VERSION)."""
    table = schema.ledger_settings
    with engine.begin() as connection:
        connection.execute(dialects.upsert(connection, table, ["value"]),
                           [{"name": "ledger_version", "value": schema.LEDGER_VERSION}])


def existing_columns(connection):
    """{table name: set of its column names} of the connected database."""
    found = {}
    for table, column in connection.execute(text(dialects.columns_sql(connection.dialect.name))):
        found.setdefault(table.lower(), set()).add(column.lower())
    return found


def _add_column(engine, table, column):
    """ALTER TABLE ... ADD COLUMN for a column of the schema that a database from an earlier version lacks; a
    process that added it at the same moment is no error."""
    ddl = str(CreateColumn(column).compile(dialect=engine.dialect))
    try:
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
    except SQLAlchemyError:
        with engine.connect() as connection:
            if column.name not in existing_columns(connection).get(table.name, ()):
                raise
        return
    logger.warning("added column %s.%s (a database from an earlier version)", table.name, column.name)


def _check_connection(engine, url):
    """Connect once; create a missing MySQL or PostgreSQL database (a fresh server needs no manual step)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except ProgrammingError as error:  # psycopg: a URL option it does not take (?colour=blue, ?sslmode=bogus)
        raise DatabaseUrlError(f"cannot use database {safe_url(url)}: {error_line(error, url)}") from None
    except DBAPIError as error:
        if not _is_missing_database(error, url):
            raise
        _create_database(url)


def _is_missing_database(error, url):
    """Does the server say that the URL's database does not exist (MySQL 1049, PostgreSQL 3D000)?"""
    backend = url.get_backend_name()
    if backend == "mysql":
        return bool(error.orig and error.orig.args) and error.orig.args[0] == MYSQL_UNKNOWN_DATABASE
    # psycopg gives no SQLSTATE for a failed connection, only the server's message
    return backend == "postgresql" and (getattr(error.orig, "sqlstate", None) == POSTGRES_UNKNOWN_DATABASE
                                        or f'database "{url.database}" does not exist' in str(error.orig))


def _create_database(url):
    """Create the URL's database from the server's maintenance database; DatabaseUnavailable when not allowed."""
    maintenance_database, statement = dialects.database_creation(url.get_backend_name())
    server = create_engine(url._replace(database=maintenance_database), isolation_level="AUTOCOMMIT")
    if url.get_driver_name() == "pymysql":
        hosts = cluster_hosts(url)
        event.listen(server, "do_connect", lambda *args: _connect_pymysql(*args, hosts=hosts))
    try:
        with server.connect() as connection:
            name = connection.dialect.identifier_preparer.quote_identifier(url.database)
            connection.exec_driver_sql(statement.format(name=name))
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) not in POSTGRES_CREATED_MEANWHILE:  # else another run created it
            raise DatabaseUnavailable(f"cannot use database {safe_url(url)}: it does not exist and the user "
                                      f"cannot create it: {error_line(error, url)}") from None
    finally:
        server.dispose()
    logger.info("created database %s", url.database)


def _connect_pymysql(_dialect, _record, connect_args, connect_keywords, hosts=None):
    """A LocalFileGuard connection: LOAD DATA LOCAL offered to the server, but no file sent unless allowed.
    hosts: the servers a URL lists (cluster_hosts), tried in order."""
    # The capability is fixed at the handshake, and LOAD DATA must run on the caller's connection (its
    # transaction), so every connection offers it; LocalFileGuard is what keeps the client's files in.
    connect_keywords["client_flag"] = connect_keywords.get("client_flag", 0) | CLIENT.LOCAL_FILES
    connect_keywords["local_infile"] = False  # PyMySQL's own switch stays off, even with ?local_infile=1
    if hosts:
        return _connect_first_ready(connect_args, connect_keywords, hosts)
    return LocalFileGuard(*connect_args, **connect_keywords)


def _connect_first_ready(connect_args, connect_keywords, hosts):
    """A connection to the first listed server that answers and is ready (a Galera node that is synced and in
    the primary component: wsrep_ready ON; a server without Galera is ready). When none is: the first error
    that is not about reaching a server (a refused login, an unknown database), else one 2003 naming them all."""
    connect_keywords = {"connect_timeout": CLUSTER_CONNECT_TIMEOUT, **connect_keywords}
    refused, failures = None, []
    for host, port in hosts:
        try:
            connection = LocalFileGuard(*connect_args, **{**connect_keywords, "host": host,
                                                          "port": port or connect_keywords.get("port") or 3306})
        except pymysql.err.OperationalError as error:
            if error.args and error.args[0] not in (2003, 2013, 2006) and refused is None:
                refused = error
            failures.append(f"{host}:{port or 3306}: {error.args[-1] if error.args else error}")
            continue
        state = _galera_state(connection)
        if state is None or state == "ON":
            return connection
        connection.close()
        failures.append(f"{host}:{port or 3306}: not ready (wsrep_ready {state})")
    if refused is not None:
        raise refused
    raise pymysql.err.OperationalError(2003, "no listed server answered and was ready: " + "; ".join(failures))


def _galera_state(connection):
    """A Galera node's wsrep_ready ('ON' when it takes queries), None for a server that is no Galera node."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@global.wsrep_on")
            if not cursor.fetchone()[0]:
                return None
            cursor.execute("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
            state = cursor.fetchone()
    except pymysql.err.MySQLError as error:
        if error.args and error.args[0] == 1193:  # unknown variable: MySQL, or MariaDB built without Galera
            return None
        return f"unknown ({error.args[-1] if error.args else error})"
    return state[1] if state else None


class LocalFileGuard(pymysql.connections.Connection):
    """A PyMySQL connection that sends the server a local file only inside local_file_allowed(), only that one.

    Plain PyMySQL sends whatever file a server names after LOAD DATA LOCAL, so a rogue or intercepted server
    could read any file the client can (the project's .env, an ssh key).
    """

    allowed_local_file = None  # the file's path as bytes, the way the server names it

    def _read_query_result(self, unbuffered=False):
        # PyMySQL 1.2's own method, with the result class that checks a requested file's name
        self._result = None
        result = _LocalFileCheckingResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return result.affected_rows


class _LocalFileCheckingResult(pymysql.connections.MySQLResult):
    """A query result that answers a server's request for a local file only with the allowed file."""

    def _read_load_local_packet(self, first_packet):
        requested = LoadLocalPacketWrapper(first_packet).filename
        if requested != self.connection.allowed_local_file:
            _refuse_local_file(self.connection, requested)
        try:
            super()._read_load_local_packet(first_packet)
        except AttributeError:  # PyMySQL, after the server died mid-file, writes to the socket it has closed
            if self.connection._sock is not None:
                raise
            raise pymysql.err.OperationalError(2013, "Lost connection to server during LOAD DATA LOCAL") from None
        except pymysql.err.MySQLError as error:
            # Ctrl+C or SIGTERM (cli) while the file was being sent: PyMySQL's cleanup then read from the broken
            # connection, and its 'Lost connection' would stand in for the interrupt
            interrupt = _interrupt_behind(error)
            if interrupt is None:
                raise
            raise interrupt from None


def _interrupt_behind(error):
    """The KeyboardInterrupt that an error was raised while handling, if any (None)."""
    while error is not None and not isinstance(error, KeyboardInterrupt):
        error = error.__context__
    return error


def _refuse_local_file(connection, requested):
    """Send an empty file instead (the server ends its LOAD DATA, the connection stays usable), then fail."""
    connection.write_packet(b"")
    with suppress(pymysql.err.MySQLError):
        connection._read_packet()  # the server's answer to the empty file
    raise pymysql.err.OperationalError(
        f"refused to send local file {os.fsdecode(requested)!r}: the server asked for a file this client did not offer")


@contextmanager
def local_file_allowed(dbapi_connection, path):
    """Let the server read the file `path`, and no other, during the block (for LOAD DATA LOCAL INFILE)."""
    if not isinstance(dbapi_connection, LocalFileGuard):
        yield  # a connection made elsewhere stays as made (PyMySQL's default: no LOAD DATA LOCAL)
        return
    dbapi_connection.allowed_local_file, dbapi_connection._local_infile = os.fsencode(path), True
    try:
        yield
    finally:
        dbapi_connection.allowed_local_file, dbapi_connection._local_infile = None, False


@contextmanager
def write_transaction(engine):
    """A connection in a transaction that will write; on SQLite it takes the write lock up front."""
    with engine.connect() as connection:
        connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with connection.begin():
            yield connection


@contextmanager
def references_checked_transaction(engine):
    """A write transaction for rows whose references the caller has checked inside it (the loader: every trade's
    investor and symbol against investors and stocks read with a locking read, see load_transactions.load_batch),
    so the database skips its foreign key checks where it can (dialects.foreign_key_switch): SQLite, whose write
    lock keeps every other writer out until commit, and MySQL/MariaDB, whose shared row locks keep the checked
    investors and stocks from being deleted until commit. The checks are on again when the block ends."""
    switch = dialects.foreign_key_switch(engine.dialect.name)
    with engine.connect() as connection:
        connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        try:
            if switch and switch.outside_transaction:
                _run_on_dbapi(connection, switch.off)
            with connection.begin():
                if switch and not switch.outside_transaction:
                    _run_on_dbapi(connection, switch.off)
                yield connection
        finally:
            if switch:
                _switch_back_on(connection, switch)


def _switch_back_on(connection, switch):
    """Foreign key checks on again before the connection goes back to the pool; a connection that cannot be
    switched back (the server went away) is discarded rather than reused without them."""
    if connection.invalidated or connection.closed:
        return
    try:
        _run_on_dbapi(connection, switch.on)
    except Exception:  # any failure: the connection is not reused
        connection.invalidate()


def _run_on_dbapi(connection, statement):
    """Run a statement on the driver's connection, outside SQLAlchemy's transaction (a pragma before BEGIN)."""
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


@contextmanager
def stage_transaction(engine, stage):
    """A snapshot write transaction, run by one process at a time per stage (e.g. two updates in cron), and
    alone with live batches: it holds every partition lock (see investors_transaction)."""
    names = [stage_lock_name(engine, stage), valuation_lock_name(engine)] + [
        partition_lock_name(engine, slot) for slot in range(PARTITION_LOCKS)]
    with valuation_lock_file(engine), locked_transaction(engine, names, stage) as connection:
        yield connection


@contextmanager
def valuation_session(engine):
    """A connection holding the valuation lock, for the live worker's transactions (valuation, scores and
    surveillance of applied trades, begun with read_transaction and write_transaction_on): it waits for a batch
    stage, and they for it, but not for live batches, which only apply trades."""
    with valuation_lock_file(engine), \
            locked_session(engine, [valuation_lock_name(engine)], "live valuation") as connection:
        yield connection


@contextmanager
def valuation_lock_file(engine):
    """The valuation lock where the database has no named locks (SQLite): an exclusive lock (flock) on the file
    DATABASE.valuation-lock beside the database file, held by the live worker's follow-ups and the batch stages."""
    path = engine.url.database
    if not dialects.valuation_lock_file(engine.dialect.name) or not path or path == ":memory:":
        yield
        return
    with open(f"{path}.valuation-lock", "a", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def read_transaction_on(connection):
    """A snapshot transaction that only reads."""
    connection.execution_options(sqlite_begin="BEGIN", **_snapshot(connection))
    with connection.begin():
        yield connection


@contextmanager
def write_transaction_on(connection):
    """A transaction that writes (SQLite: the write lock up front)."""
    connection.execution_options(sqlite_begin="BEGIN IMMEDIATE", **_snapshot(connection))
    with connection.begin():
        yield connection


@contextmanager
def investors_transaction(engine, investor_ids):
    """A snapshot write transaction for work on these investors only (a live batch): it holds their partition
    locks, so that live batches of other investors run at the same time and a batch stage waits for it."""
    slots = sorted({int(investor_id) % PARTITION_LOCKS for investor_id in investor_ids})
    with locked_transaction(engine, [partition_lock_name(engine, slot) for slot in slots], "live batch") as connection:
        yield connection


@contextmanager
def locked_transaction(engine, lock_names, what):
    """A write transaction begun after taking these named session locks, in the order given (every caller
    takes them in one global order: a stage's own lock, the valuation lock, then partitions by number, so no two
    wait for each other).

    MySQL and PostgreSQL take the locks before the transaction begins, so the transaction's snapshot includes
    everything the previous holder committed; SQLite's write lock already serializes (BEGIN IMMEDIATE).
    """
    with locked_session(engine, lock_names, what) as connection, write_transaction_on(connection):
        yield connection


def _snapshot(connection):
    """Execution options for one snapshot per transaction on a server (SQLite's transactions are snapshots)."""
    return {"isolation_level": "REPEATABLE READ"} if dialects.stage_lock(connection.dialect.name) else {}


@contextmanager
def locked_session(engine, lock_names, what):
    """A connection that holds these named session locks (see locked_transaction) until the block ends; the
    caller begins its transactions on it."""
    with engine.connect() as connection:
        lock = dialects.stage_lock(connection.dialect.name)
        held = []
        try:
            if lock:
                _take_locks(connection, lock, lock_names, what, held)
            yield connection
        finally:
            if held:
                connection.rollback()
                _release_locks(connection, lock, held)


def _take_locks(connection, lock, names, what, held):
    """Take the locks in order (one SELECT where the database can list them), adding each granted to `held`."""
    if lock.take_call and len(names) > 1:
        statement = "SELECT " + ", ".join(lock.take_call.format(param=f"name{n}") for n in range(len(names)))
        granted = connection.execute(text(statement), {f"name{n}": name for n, name in enumerate(names)}).one()
    else:
        granted = []
        for name in names:
            granted.append(connection.execute(text(lock.take), {"name": name}).scalar())
            if granted[-1] != 1:
                break
    held += [name for name, got in zip(names, granted) if got == 1]
    connection.commit()
    refused = [got for got in granted if got != 1]
    if refused and refused[0] == 0:
        raise DatabaseUnavailable(f"another {what} has held its lock for an hour; giving up")
    if refused:
        raise DatabaseUnavailable(f"the server did not grant {what}'s lock (its wait was interrupted); "
                                  "nothing was changed")


def _release_locks(connection, lock, names):
    """Release the locks in reverse order (one SELECT where the database can list them)."""
    names = names[::-1]
    if lock.release_call and len(names) > 1:
        statement = "SELECT " + ", ".join(lock.release_call.format(param=f"name{n}") for n in range(len(names)))
        connection.execute(text(statement), {f"name{n}": name for n, name in enumerate(names)})
    else:
        for name in names:
            connection.execute(text(lock.release), {"name": name})
    connection.commit()


def valuation_lock_name(engine):
    """The name of the lock that the live workers and the batch stages take (see valuation_transaction)."""
    return stage_lock_name(engine, "valuation")


def partition_lock_name(engine, slot):
    """The name of the lock of the investors whose id is `slot` modulo PARTITION_LOCKS, one set per database."""
    return stage_lock_name(engine, f"partition{slot:02d}")


def stage_lock_name(engine, stage):
    """The name of a stage's lock: one per database, so that two databases on one server do not wait for each
    other (MySQL's named locks are server-wide; 64 characters at most)."""
    database = hashlib.sha256(str(engine.url.database).encode()).hexdigest()[:16]
    return f"stock_etl.{stage}.{database}"
