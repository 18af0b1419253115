"""What a script may show and what a server may take: one error line without credentials
(cli.run, docs/command-line.md), and LOAD DATA LOCAL INFILE sending no file but the loader's own
(db_config.LocalFileGuard)."""
import argparse
import gc
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pymysql
import pytest
from pymysql.protocol import MysqlPacket
from sqlalchemy.exc import OperationalError

import bulk_insert
import cli
import db_config
import seed_investors

OK_PACKET = b"\x00\x00\x00\x02\x00\x00\x00"  # OK: 0 rows, no insert id, autocommit status, no warnings


def run_failing(error, database_url=None, verbose=False):
    """cli.run on work that raises `error`; return its exit code."""
    def work():
        raise error

    return cli.run(work, argparse.Namespace(verbose=verbose, database_url=database_url), "stage")


# ---------------------------------------------------------------------------------------------- the error boundary

def test_a_pandas_database_error_is_one_line_exit_1(sqlite_url, monkeypatch, capsys):
    """pd.read_sql_query wraps the database's error with the whole SQL; the user gets the database's reason."""
    def broken_query(engine, investor_count):
        with engine.connect() as connection:
            pd.read_sql_query("SELECT *\nFROM no_such_table", connection)

    monkeypatch.setattr(seed_investors, "seed_reference_data", broken_query)
    code = seed_investors.main(["--database-url", sqlite_url])

    assert (code, capsys.readouterr().err.splitlines()) == (
        1, ["error: seed_investors: database error: no such table: no_such_table"])


@pytest.mark.parametrize("error, code, line", [
    (csv.Error("field larger than field limit (131072)"), 2,
     "error: stage: unreadable CSV: field larger than field limit (131072)"),
    (pd.errors.ParserError("Error tokenizing data. C error: Expected 7 fields in line 3, saw 9\n"), 2,
     "error: stage: unreadable CSV: Error tokenizing data. C error: Expected 7 fields in line 3, saw 9"),
    (FileNotFoundError(2, "No such file or directory", "trades.csv"), 2,
     "error: stage: trades.csv: No such file or directory"),
    (PermissionError(13, "Permission denied", "reports/dashboard.png"), 2,
     "error: stage: reports/dashboard.png: Permission denied"),
    (OSError(28, "No space left on device"), 1, "error: stage: system error: No space left on device"),
    (pymysql.err.OperationalError(2013, "Lost connection to server during query"), 1,
     "error: stage: database error: (2013, 'Lost connection to server during query')"),
    (OperationalError("SELECT 1", {}, pymysql.err.OperationalError(2006, "Server has gone away\nmore")), 1,
     "error: stage: database error: (2006, 'Server has gone away\\nmore')"),
    (db_config.DatabaseUrlError("invalid database URL 'x': expected ..."), 2,
     "error: stage: invalid database URL 'x': expected ..."),
    (KeyboardInterrupt(), 1, "error: stage: interrupted"),
])
def test_every_library_error_is_one_line_with_the_spec_exit_code(error, code, line, capsys):
    assert run_failing(error) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_bug_is_one_line_and_its_traceback_only_with_verbose(capsys):
    assert run_failing(ZeroDivisionError("division by zero")) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: stage: unexpected error (a bug; --verbose shows where): ZeroDivisionError: division by zero"]
    assert run_failing(ZeroDivisionError("division by zero"), verbose=True) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_rollback_failing_after_a_statement_failed_reports_the_statement_error(capsys):
    """MariaDB closes the connection on a packet over max_allowed_packet: the ROLLBACK after it fails with 2006,
    which is no news; the user needs the first error."""
    packet = pymysql.err.OperationalError(1153, "Got a packet bigger than 'max_allowed_packet' bytes")

    def work():
        try:
            raise OperationalError("INSERT INTO investor_daily ...", {}, packet)
        except OperationalError:
            raise OperationalError("ROLLBACK", {}, pymysql.err.OperationalError(2006, "MySQL server has gone away"))

    assert cli.run(work, argparse.Namespace(verbose=False, database_url=None), "stage") == 1
    assert capsys.readouterr().err == (
        "error: stage: database error: (1153, \"Got a packet bigger than 'max_allowed_packet' bytes\")\n")


def test_sigterm_ends_the_work_like_ctrl_c(capsys):
    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    assert cli.run(work, argparse.Namespace(verbose=False, database_url=None), "stage") == 1
    assert capsys.readouterr().err.splitlines() == ["error: stage: interrupted"]
    assert signal.getsignal(signal.SIGTERM) is not cli._interrupt  # the previous handler is back


# ---------------------------------------------------------------------------------------------- credentials

SECRET_URL = "mysql+pymysql://etl:s3cr%40t@db.example/x?ssl_key_password=k3y-phrase"
DRIVER_TEXT = "Access denied for user 'etl' (password s3cr@t, key k3y-phrase)"


def test_a_driver_message_holding_the_password_is_printed_without_it(capsys):
    error = OperationalError("SELECT 1", {}, pymysql.err.OperationalError(1045, DRIVER_TEXT))

    assert run_failing(error, SECRET_URL) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: stage: database error: (1045, \"Access denied for user 'etl' (password ***, key ***)\")"]


def test_the_verbose_traceback_hides_the_password_of_database_url_too(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", SECRET_URL)

    assert run_failing(db_config.DatabaseUnavailable(DRIVER_TEXT), verbose=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.count("(password ***, key ***)") == 2
    assert "s3cr" not in err and "k3y" not in err


# ---------------------------------------------------------------------------------------------- LOAD DATA LOCAL

class FakeConnection:
    """What a query result uses of a PyMySQL connection while answering a LOAD DATA LOCAL request."""

    max_allowed_packet = 16 * 1024 * 1024

    def __init__(self, allowed=None):
        self.allowed_local_file, self._local_infile = allowed, allowed is not None
        self.sent = []

    def write_packet(self, payload):
        self.sent.append(payload)

    def _read_packet(self):
        return MysqlPacket(OK_PACKET, "utf8mb4")


def answer_file_request(connection, requested):
    """Let the result class answer a server's request for the file `requested` (a 0xFB packet)."""
    packet = MysqlPacket(b"\xfb" + os.fsencode(requested), "utf8mb4")
    db_config._LocalFileCheckingResult(connection)._read_load_local_packet(packet)


def test_a_request_for_any_file_is_refused_outside_local_file_allowed(tmp_path):
    secret = tmp_path / ".env"
    secret.write_text("DATABASE_URL=mysql+pymysql://etl:s3cr3t@db/x\n")
    connection = FakeConnection()

    with pytest.raises(pymysql.err.OperationalError) as error_info:
        answer_file_request(connection, str(secret))

    assert str(error_info.value) == (f"refused to send local file {str(secret)!r}: "
                                     "the server asked for a file this client did not offer")
    assert connection.sent == [b""]  # an empty file: nothing of .env left the client


def test_a_request_for_another_file_than_the_allowed_one_is_refused(tmp_path):
    allowed, other = tmp_path / "load.tsv", tmp_path / "id_rsa"
    allowed.write_text("t1\t1001\n"), other.write_text("PRIVATE KEY\n")
    connection = FakeConnection(os.fsencode(str(allowed)))

    with pytest.raises(pymysql.err.OperationalError, match="^refused to send local file .*id_rsa"):
        answer_file_request(connection, str(other))
    assert connection.sent == [b""]

    answer_file_request(connection, str(allowed))
    assert connection.sent == [b"", b"t1\t1001\n", b""]  # the allowed file, then its end


def test_local_file_allowed_opens_one_connection_for_one_file_and_closes_it_after():
    connection = db_config.LocalFileGuard(defer_connect=True)
    assert (connection.allowed_local_file, connection._local_infile) == (None, False)

    with db_config.local_file_allowed(connection, "/tmp/stock-etl-load-1-x.tsv"):
        assert (connection.allowed_local_file, connection._local_infile) == (b"/tmp/stock-etl-load-1-x.tsv", True)
    assert (connection.allowed_local_file, connection._local_infile) == (None, False)


@pytest.fixture
def probe_table(mariadb_url, tmp_path):
    """(engine, a file with two lines) on MariaDB with an empty table `probe`."""
    engine = db_config.get_engine(mariadb_url, create_schema=False)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE probe (line VARCHAR(100))")
    path = tmp_path / "lines.txt"
    path.write_text("first\nsecond\n")
    yield engine, str(path)
    engine.dispose()


def load_probe(connection, path):
    return connection.exec_driver_sql("LOAD DATA LOCAL INFILE %s INTO TABLE probe (line)", (path,)).rowcount


def test_an_ordinary_mariadb_connection_sends_no_local_file(probe_table):
    engine, path = probe_table
    with engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        assert isinstance(dbapi_connection, db_config.LocalFileGuard) and dbapi_connection._local_infile is False

        with pytest.raises(OperationalError) as error_info:
            load_probe(connection, path)

        assert db_config.error_line(error_info.value) == (
            f"refused to send local file {path!r}: the server asked for a file this client did not offer")
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM probe").scalar() == 0  # still usable, nothing read


def test_inside_local_file_allowed_the_server_gets_that_file_and_no_other(probe_table, tmp_path):
    engine, path = probe_table
    other = tmp_path / "other.txt"
    other.write_text("not for the server\n")
    with engine.begin() as connection:
        with db_config.local_file_allowed(connection.connection.dbapi_connection, path):
            with pytest.raises(OperationalError, match="refused to send local file .*other.txt"):
                load_probe(connection, str(other))
            assert load_probe(connection, path) == 2
        with pytest.raises(OperationalError, match="refused to send local file"):
            load_probe(connection, path)  # the block is over: the same file is refused again
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT line FROM probe ORDER BY line").scalars().all() == ["first", "second"]


# ---------------------------------------------------------------------------------------------- temp files

def test_remove_stale_temp_files_removes_only_files_of_processes_that_are_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"stock-etl-load-{gone.stdout.strip()}-abc.tsv"
    alive = tmp_path / f"stock-etl-load-{os.getpid()}-d.tsv"
    unrelated = tmp_path / "stock-etl-load-notapid-e.tsv"
    for path in (dead, alive, unrelated):
        path.write_text("t1\n")

    assert bulk_insert.remove_stale_temp_files() == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([alive.name, unrelated.name])


class _CursorOfADeadServer:
    def __del__(self):  # PyMySQL's SSCursor.close after the server died mid-stream
        raise AttributeError("'NoneType' object has no attribute 'read'")


def _rows():
    cursor = _CursorOfADeadServer()  # noqa: F841 (freed when the generator is)
    yield 1


def test_a_failing_finalizer_held_in_a_cycle_with_the_error_runs_before_the_run_ends(capsys):
    """Regression (CI, a server shut down during `update_portfolio.py --full`): the streamed cursor was kept by a
    reference cycle through the error's frames and freed by a later collection, after cli.run had put the
    default hook back: its traceback was printed after the one line."""
    def work():
        cursor = _CursorOfADeadServer()
        error = cli.StageError("database error: (2013, 'Lost connection to MySQL server during query')")
        cursor.cycle = (cursor, error)  # the cursor and the error keep each other, as frames and tracebacks do
        raise error

    assert cli.run(work, argparse.Namespace(verbose=False, database_url=None), "stage") == 1
    gc.collect()  # without the collection inside cli.run, the finalizer's traceback is printed here
    assert capsys.readouterr().err == (
        "error: stage: database error: (2013, 'Lost connection to MySQL server during query')\n")


@pytest.mark.parametrize("verbose", [False, True])
def test_a_finalizer_failing_after_the_error_prints_no_second_traceback(verbose, capsys, monkeypatch):
    """Regression: a server killed during `update_portfolio.py --full` printed the one error line, then PyMySQL's
    'Exception ignored in: SSCursor.close' traceback when the streamed cursor was freed. With --verbose it is
    shown (here: handed to the hook in place before the run)."""
    shown = []
    monkeypatch.setattr(sys, "unraisablehook", shown.append)

    def work():
        for _ in _rows():
            raise cli.StageError("database error: (2013, 'Lost connection to MySQL server during query')")

    assert cli.run(work, argparse.Namespace(verbose=verbose, database_url=None), "update_portfolio") == 1
    assert capsys.readouterr().err.endswith(
        "error: update_portfolio: database error: (2013, 'Lost connection to MySQL server during query')\n")
    assert [str(error.exc_value) for error in shown] == (["'NoneType' object has no attribute 'read'"] if verbose
                                                         else [])
    assert sys.unraisablehook == shown.append


def test_an_interrupt_while_the_file_is_sent_is_the_interrupt_not_a_lost_connection(tmp_path, monkeypatch):
    """SIGTERM during an update's LOAD DATA printed "Lost connection to MySQL server during query": PyMySQL's cleanup
    read the server's answer from the connection the interrupt had broken (break-it trial)."""
    allowed = tmp_path / "load.tsv"
    allowed.write_text("t1\t1001\n")
    connection = FakeConnection(os.fsencode(str(allowed)))

    def interrupted(filename, connection):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    def lost():
        raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")

    monkeypatch.setattr(pymysql.connections, "_send_local_file", interrupted)
    connection._read_packet = lost
    with pytest.raises(KeyboardInterrupt, match="terminated"):
        answer_file_request(connection, str(allowed))
