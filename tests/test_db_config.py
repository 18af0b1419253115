"""db_config.py: which database, connecting once, creating what is missing, never showing a password."""
import importlib.util
import logging
import os
import re
import warnings
import shutil
import subprocess
import sys
import threading
import types
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

import db_config
import schema
import seed_investors

MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root:@127.0.0.1:3306")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PROJECT_FOLDER = Path(__file__).resolve().parent.parent


def server_engine(url):
    """An AUTOCOMMIT engine on a server, or skip (fail when CI is set), as conftest's fixtures do."""
    server = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with server.connect():
            pass
    except Exception as error:  # no server
        server.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"{make_url(url).get_backend_name()} unreachable: {error}")
        pytest.skip(f"{make_url(url).get_backend_name()} unreachable: {str(error).splitlines()[0]}")
    return server


@pytest.fixture
def mariadb_server():
    server = server_engine(MARIADB_URL)
    yield server
    server.dispose()


@pytest.fixture
def postgres_server():
    server = server_engine(POSTGRES_URL)
    yield server
    server.dispose()


def seed_main(url, capsys):
    """Run seed_investors.main on `url`; return (exit code, stderr lines, stdout)."""
    code = seed_investors.main(["--database-url", url])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def url_with(server_url, **changes):
    return make_url(server_url).set(**changes).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------------------------- which database

@pytest.mark.parametrize("url, shown", [
    ("mysql+pymysql://etl:s3cr3t@db.example:3306/stock_investments",
     "mysql+pymysql://etl:***@db.example:3306/stock_investments"),
    ("postgresql+psycopg://etl:p%40ss@localhost/stock", "postgresql+psycopg://etl:***@localhost/stock"),
    ("sqlite:///stock_investments.db", "sqlite:///stock_investments.db"),
    ("mysql+pymysql://etl@db/x?password=hunter2&charset=utf8mb4",
     "mysql+pymysql://etl@db/x?charset=utf8mb4&password=***"),
    ("mysql+pymysql://etl@db/x?passwd=a&pwd=b&ssl_key_password=c&connect_timeout=5",  # SQLAlchemy sorts the keys
     "mysql+pymysql://etl@db/x?connect_timeout=5&passwd=***&pwd=***&ssl_key_password=***"),
    ("postgresql+psycopg://etl@db/x?api_token=t&client_secret=s&sslmode=verify-full",
     "postgresql+psycopg://etl@db/x?api_token=***&client_secret=***&sslmode=verify-full"),
])
def test_safe_url_hides_the_password_and_credential_query_values(url, shown):
    assert db_config.safe_url(url) == shown


def test_hide_secrets_replaces_every_credential_of_the_url_as_written_and_decoded():
    url = "mysql+pymysql://etl:s3cr%40t@db/x?token=tok%2B1&charset=utf8mb4"
    message = "Access denied for etl (password s3cr@t, raw s3cr%40t, token tok+1) charset utf8mb4"

    assert db_config.hide_secrets(message, url) == (
        "Access denied for etl (password ***, raw ***, token ***) charset utf8mb4")


@pytest.mark.parametrize("url, message, shown", [
    ("mongodb://u:e@h/db", "surveillance: unknown database type 'mongodb://u:e@h/db'",
     "surveillance: unknown database type 'mongodb://u:***@h/db'"),
    ("mysql://etl:stock@127.0.0.1:3306/stock_investments", "cannot use database 127.0.0.1:3306/stock_investments",
     "cannot use database 127.0.0.1:3306/stock_investments"),
    ("mysql://root:root@127.0.0.1/x", "Access denied for user 'root'@'localhost'",
     "Access denied for user '***'@'localhost'"),
])
def test_hide_secrets_hides_a_password_that_stands_alone_never_letters_of_other_words(url, message, shown):
    assert db_config.hide_secrets(message, url) == shown


def test_database_url_prefers_override_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from_env.db")
    assert db_config.database_url() == "sqlite:///from_env.db"
    assert db_config.database_url("sqlite:///override.db") == "sqlite:///override.db"

    monkeypatch.delenv("DATABASE_URL")
    assert db_config.database_url() == f"sqlite:///{PROJECT_FOLDER / 'stock_investments.db'}"


def test_project_path_is_anchored_to_the_project_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert db_config.project_path("reports") == str(PROJECT_FOLDER / "reports")
    assert db_config.project_path("logs", "etl.log") == str(PROJECT_FOLDER / "logs" / "etl.log")


def test_default_database_and_env_file_come_from_the_project_folder_whatever_the_working_directory(tmp_path):
    """A script run from elsewhere reads the project's .env and never creates a database in the working folder."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    for module in ("db_config.py", "dialects.py", "schema.py"):
        shutil.copy(PROJECT_FOLDER / module, project / module)
    (project / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'from_project_env.db'}\n")
    (elsewhere / ".env").write_text("DATABASE_URL=sqlite:///from_working_folder_env.db\n")
    probe = "import db_config; print(db_config.database_url()); print(db_config.DEFAULT_DATABASE_URL)"
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    environment["PYTHONPATH"] = str(project)

    result = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=environment,
                            capture_output=True, text=True, check=True)

    assert result.stdout.splitlines() == [f"sqlite:///{tmp_path / 'from_project_env.db'}",
                                          f"sqlite:///{project / 'stock_investments.db'}"]


def test_a_relative_path_in_an_explicit_url_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = db_config.get_engine("sqlite:///relative.db")
    engine.dispose()
    assert (tmp_path / "relative.db").exists()


def test_get_engine_logs_the_database_it_uses_without_the_password(sqlite_url, caplog):
    caplog.set_level(logging.INFO, logger="db_config")
    engine = db_config.get_engine(sqlite_url)
    engine.dispose()
    assert f"using database {sqlite_url}" in caplog.messages


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


# ---------------------------------------------------------------------------------------------- URLs as written

@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_mysql_and_mariadb_urls_without_a_driver_use_pymysql(scheme, mariadb_url, capsys):
    url = f"{scheme}://{mariadb_url.split('://', 1)[1]}"
    engine = db_config.get_engine(url)
    engine.dispose()
    assert (engine.url.drivername, engine.dialect.name) == ("mysql+pymysql", "mysql")
    assert seed_main(url, capsys)[0] == 0


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgresql_and_postgres_urls_without_a_driver_use_psycopg(scheme, postgres_url, capsys):
    url = f"{scheme}://{postgres_url.split('://', 1)[1]}"
    engine = db_config.get_engine(url)
    engine.dispose()
    assert (engine.url.drivername, engine.dialect.name) == ("postgresql+psycopg", "postgresql")
    assert seed_main(url, capsys)[0] == 0


@pytest.mark.parametrize("url, message", [
    ("not a url", "invalid database URL 'not a url': expected dialect+driver://user:password@host/database"),
    ("mysql+pymysql://root:hunter2@127.0.0.1:abc/x",
     "invalid database URL 'mysql+pymysql://root:***@127.0.0.1:abc/x': the port is not a number"),
    ("foo://x", "unsupported database type 'foo' in foo://x: this project runs on SQLite, MariaDB/MySQL and "
                "PostgreSQL: use sqlite://, mysql:// or postgresql://"),
    ("mysql+nosuch://h/x", "unknown driver 'mysql+nosuch' in mysql+nosuch://h/x: use mysql:// for the project's "
                           "driver"),
    ("mysql+pymysql://root@127.0.0.1:3306/etl` CHARACTER SET latin1 #",
     "invalid database name 'etl` CHARACTER SET latin1 #': use up to 64 letters, digits and _"),
    (f"postgresql+psycopg://postgres@127.0.0.1/{'x' * 65}",
     f"invalid database name '{'x' * 65}': use up to 64 letters, digits and _"),
    ("mysql+pymysql://root:hunter@2@127.0.0.1/x",
     "invalid database URL: the user name or password holds an @; write it as %40"),
    ("mysql+pymysql://root@127.0.0.1/x?colour=blue",
     "cannot use database mysql+pymysql://root@127.0.0.1/x?colour=blue: "
     "Connection.__init__() got an unexpected keyword argument 'colour'"),
])
def test_a_url_that_cannot_work_as_written_exits_2_with_one_line(url, message, capsys):
    code, err, out = seed_main(url, capsys)
    assert (code, err, out) == (2, [f"error: seed_investors: {message}"], "")


def test_a_driver_that_is_not_installed_exits_2_with_one_line(capsys):
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here")
    code, err, _ = seed_main("mysql+mysqldb://root@127.0.0.1/x", capsys)
    assert (code, err) == (2, ["error: seed_investors: the driver of mysql+mysqldb is not installed "
                               "(No module named 'MySQLdb'): use mysql:// for the project's driver"])


@pytest.mark.parametrize("url, installed", [("oracle://scott:tiger@127.0.0.1/x", "oracledb"),
                                            ("mssql://sa:secret@127.0.0.1/x", "pyodbc")])
def test_a_database_type_the_project_does_not_run_on_is_unsupported_whatever_is_installed(url, installed, capsys,
                                                                                             monkeypatch):
    """It used to say 'the driver of oracle is not installed' (inviting pip install oracledb, after which the stage
    failed with a bug's message): the project's SQL is written for SQLite, MariaDB/MySQL and PostgreSQL only. The
    type is refused before any driver is looked for, installed or not."""
    monkeypatch.setitem(sys.modules, installed, types.ModuleType(installed))  # as if the driver were installed
    code, err, _ = seed_main(url, capsys)
    backend = url.split(":")[0]
    assert (code, err) == (2, [f"error: seed_investors: unsupported database type '{backend}' in "
                               f"{url.replace(url.split(':')[2].split('@')[0], '***')}: this project runs on SQLite, "
                               "MariaDB/MySQL and PostgreSQL: use sqlite://, mysql:// or postgresql://"])


# ---------------------------------------------------------------------------------------------- passwords

def test_unreachable_database_raises_a_one_line_error_without_the_password():
    with pytest.raises(db_config.DatabaseUnavailable) as error_info:
        db_config.get_engine("mysql+pymysql://root:secretpw@127.0.0.1:1/x")

    message = str(error_info.value)
    assert message.startswith("cannot use database mysql+pymysql://root:***@127.0.0.1:1/x: ")
    assert "secretpw" not in message and "\n" not in message


def test_a_password_in_the_query_string_is_never_printed(mariadb_url, capsys):
    server = make_url(mariadb_url)
    url = f"mysql+pymysql://{server.username}@{server.host}:{server.port}/{server.database}?password=hunter2"

    code, err, _ = seed_main(url, capsys)

    assert code == 1 and len(err) == 1
    assert re.fullmatch(
        rf"error: seed_investors: cannot use database mysql\+pymysql://{server.username}@{server.host}:{server.port}/"
        rf"{server.database}\?password=\*\*\*: \(1045, \"Access denied for user '{server.username}'@'[^']+' "
        r"\(using password: YES\)\"\)", err[0])


def test_unopenable_sqlite_file_raises_database_unavailable(tmp_path):
    url = f"sqlite:///{tmp_path / 'no_such_dir' / 'x.db'}"

    with pytest.raises(db_config.DatabaseUnavailable, match=r"^cannot use database sqlite:///.*no_such_dir.*: "):
        db_config.get_engine(url)


# ---------------------------------------------------------------------------------------------- creating databases

def test_get_engine_creates_a_missing_mariadb_database(mariadb_server):
    name = f"etl_test_new_{uuid.uuid4().hex[:10]}"
    with mariadb_server.connect() as connection:
        assert connection.execute(text("SHOW DATABASES LIKE :name"), {"name": name}).all() == []
    engine = None
    try:
        engine = db_config.get_engine(url_with(MARIADB_URL, database=name))
        with mariadb_server.connect() as connection:
            assert connection.execute(text("SHOW DATABASES LIKE :name"), {"name": name}).all() == [(name,)]
            assert connection.execute(text("SELECT default_character_set_name FROM information_schema.schemata "
                                           "WHERE schema_name = :name"), {"name": name}).scalar() == "utf8mb4"
        assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        if engine is not None:
            engine.dispose()
        with mariadb_server.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))


def test_get_engine_creates_a_missing_postgresql_database(postgres_server):
    name = f"etl_test_new_{uuid.uuid4().hex[:10]}"
    engine = None
    try:
        engine = db_config.get_engine(url_with(POSTGRES_URL, database=name))
        with postgres_server.connect() as connection:
            assert connection.execute(text("SELECT datname FROM pg_database WHERE datname = :name"),
                                      {"name": name}).all() == [(name,)]
        assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        if engine is not None:
            engine.dispose()
        with postgres_server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("server_fixture, server_url, drop", [
    ("mariadb_server", MARIADB_URL, "DROP DATABASE IF EXISTS `{name}`"),
    ("postgres_server", POSTGRES_URL, 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'),
])
def test_the_database_name_is_quoted_in_create_database(server_fixture, server_url, drop, request):
    """An all-digit name is a valid name that neither server takes unquoted."""
    server = request.getfixturevalue(server_fixture)
    name = str(uuid.uuid4().int)[:20]
    try:
        db_config.get_engine(url_with(server_url, database=name), create_schema=False).dispose()
        with server.connect() as connection:
            assert name in connection.execute(text(
                "SELECT schema_name FROM information_schema.schemata" if server_fixture == "mariadb_server"
                else "SELECT datname FROM pg_database")).scalars().all()
    finally:
        with server.connect() as connection:
            connection.execute(text(drop.format(name=name)))


def test_a_postgresql_user_who_may_not_create_the_database_gets_one_line(postgres_server, capsys):
    role, name = f"etl_test_role_{uuid.uuid4().hex[:8]}", f"etl_test_new_{uuid.uuid4().hex[:10]}"
    with postgres_server.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN NOCREATEDB"))
    try:
        url = url_with(POSTGRES_URL, username=role, password=None, database=name)
        code, err, _ = seed_main(url, capsys)
    finally:
        with postgres_server.connect() as connection:
            connection.execute(text(f"DROP ROLE {role}"))
    assert (code, err) == (1, [f"error: seed_investors: cannot use database {db_config.safe_url(url)}: "
                               "it does not exist and the user cannot create it: permission denied to create database"])


def test_a_mariadb_user_who_may_not_create_the_database_gets_one_line(mariadb_server, capsys):
    user, name = f"etl_u_{uuid.uuid4().hex[:8]}", f"etl_test_new_{uuid.uuid4().hex[:10]}"
    with mariadb_server.connect() as connection:
        for host in ("%", "localhost"):  # a grant on the missing database: the server says 1049, not 1044
            connection.execute(text(f"CREATE USER '{user}'@'{host}'"))
            connection.execute(text(f"GRANT SELECT ON {name}.* TO '{user}'@'{host}'"))
    try:
        url = url_with(MARIADB_URL, username=user, password=None, database=name)
        code, err, _ = seed_main(url, capsys)
    finally:
        with mariadb_server.connect() as connection:
            for host in ("%", "localhost"):
                connection.execute(text(f"DROP USER '{user}'@'{host}'"))
    assert code == 1 and len(err) == 1
    assert re.fullmatch(rf"error: seed_investors: cannot use database {re.escape(db_config.safe_url(url))}: it does "
                        rf"not exist and the user cannot create it: \(1044, \"Access denied for user '{user}'@'[^']+' "
                        rf"to database '{name}'\"\)", err[0])


# ---------------------------------------------------------------------------------------------- several servers

@pytest.mark.parametrize("url, hosts, shown", [
    ("mysql+pymysql://etl:s3cr3t@node1:3307,node2:3308,node3/stock_investments",
     [("node1", 3307), ("node2", 3308), ("node3", None)],
     "mysql+pymysql://etl:***@node1:3307,node2:3308,node3/stock_investments"),
    ("mysql://etl:s3cr3t@/stock_investments?host=node1:3307&host=node2:3308",  # SQLAlchemy's own form
     [("node1", 3307), ("node2", 3308)], "mysql+pymysql://etl:***@node1:3307,node2:3308/stock_investments"),
    ("mysql://etl:p%2C%40w@db1 , db2/x?connect_timeout=2",  # a comma in the password is encoded (%2C)
     [("db1", None), ("db2", None)], "mysql+pymysql://etl:***@db1,db2/x?connect_timeout=2"),
    ("mysql://etl@[::1]:3307,[fd00::2]/x", [("::1", 3307), ("fd00::2", None)],
     "mysql+pymysql://etl@[::1]:3307,[fd00::2]/x"),
    ("mysql://etl:pw@db1:3306/x", None, "mysql+pymysql://etl:***@db1:3306/x"),
])
def test_a_url_may_list_several_servers(url, hosts, shown):
    parsed = db_config.parse_url(url)

    assert db_config.cluster_hosts(parsed) == hosts
    assert db_config.safe_url(parsed) == shown
    assert "s3cr3t" not in db_config.safe_url(url) and "s3cr3t" not in db_config.hide_secrets(url, url)
    assert db_config.cluster_hosts(db_config.parse_url(parsed.render_as_string(hide_password=False))) == hosts


@pytest.mark.parametrize("url", ["mysql://etl:pw@db1:33a,db2/x", "mysql://etl:pw@db1,,db2/x"])
def test_a_bad_list_of_servers_exits_2_with_one_line(url, capsys):
    code, err, _ = seed_main(url, capsys)
    assert (code, err) == (2, [f"error: seed_investors: invalid database URL {url.replace(':pw@', ':***@')!r}: "
                                "a listed server is empty or its port is not a number"])


def test_a_statement_after_a_streamed_result_left_unread_warns_nothing(mariadb_url, capfd):
    # a stage interrupted in the middle of a streamed read rolls back on the same connection
    engine = db_config.get_engine(mariadb_url)
    with warnings.catch_warnings(record=True) as caught, engine.connect() as connection:
        result = connection.execute(text("SELECT seq FROM seq_1_to_100000"), execution_options={"stream_results": True})
        assert len(result.fetchmany(10)) == 10
        connection.rollback()
    engine.dispose()

    assert [str(warning.message) for warning in caught] == [] and capfd.readouterr().err == ""


def test_a_url_whose_first_server_refuses_connections_connects_to_the_next(mariadb_url):
    server = make_url(mariadb_url)
    url = mariadb_url.replace(f"@{server.host}:{server.port}/", f"@127.0.0.1:1,{server.host}:{server.port}/")

    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT @@port")).scalar() == server.port
        # what a queue consumer hands its worker process: the same servers, in order
        again = db_config.parse_url(engine.url.render_as_string(hide_password=False))
        assert db_config.cluster_hosts(again) == [("127.0.0.1", 1), (server.host, server.port)]
    finally:
        engine.dispose()


def test_a_listed_galera_node_that_is_not_ready_is_skipped(mariadb_url, monkeypatch):
    server = make_url(mariadb_url)
    url = mariadb_url.replace(f"@{server.host}:{server.port}/", f"@localhost:{server.port},127.0.0.1:{server.port}/")
    states = iter(["OFF", None])  # the first node answers but is not in the primary component (wsrep_ready OFF)
    monkeypatch.setattr(db_config, "_galera_state", lambda _connection: next(states))

    engine = db_config.get_engine(url, create_schema=False)
    try:
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection.host == "127.0.0.1"
    finally:
        engine.dispose()


def test_no_listed_server_answering_is_one_line_naming_each_without_the_password(capsys):
    code, err, _ = seed_main("mysql://etl:secretpw@127.0.0.1:1,127.0.0.1:2/x", capsys)

    assert code == 1 and len(err) == 1 and "secretpw" not in err[0]
    assert err[0].startswith("error: seed_investors: cannot use database mysql+pymysql://etl:***@127.0.0.1:1,"
                             "127.0.0.1:2/x: (2003, \"no listed server answered and was ready: 127.0.0.1:1: ")
    assert "127.0.0.1:2: Can't connect" in err[0]


@pytest.mark.parametrize("code, disconnect", [(1047, True), (1180, True), (1213, False)])
def test_a_galera_refusal_drops_the_connection_so_that_a_retry_reconnects(code, disconnect):
    import pymysql
    from types import SimpleNamespace
    context = SimpleNamespace(original_exception=pymysql.err.OperationalError(code, "x"), is_disconnect=False)

    db_config._galera_refusal(context)

    assert context.is_disconnect is disconnect


def test_stages_started_at_once_on_a_new_database_all_create_the_schema(server_url):
    """Regression: three stages started together on a new MariaDB/PostgreSQL database raced to create the same
    tables, and two failed (1050 'already exists'; a duplicate type)."""
    from concurrent.futures import ThreadPoolExecutor
    barrier = threading.Barrier(4)

    def open_it(_):
        barrier.wait()
        engine = db_config.get_engine(server_url)
        engine.dispose()
        return True

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_it, range(4))) == [True] * 4


@pytest.mark.parametrize("hosts", ["127.0.0.1:3306", "127.0.0.1:3306,127.0.0.1:3306"])
def test_an_option_value_the_driver_cannot_take_is_exit_2(hosts, capsys):
    """Regression: ?connect_timeout=abc was 'unexpected error (a bug)', exit 1."""
    import seed_investors
    url = f"mysql+pymysql://root:secret@{hosts}/etl_never?connect_timeout=abc"
    assert seed_investors.main(["--database-url", url]) == 2
    assert capsys.readouterr().err == (f"error: seed_investors: cannot use database mysql+pymysql://root:***@{hosts}/"
                                       "etl_never?connect_timeout=abc: invalid literal for int() with base 10: 'abc'\n")
