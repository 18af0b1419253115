"""Command-line conventions shared by every stage: common options, logging, errors and exit codes
(docs/command-line.md).

Exit codes: 0 success, 1 runtime failure (database unreachable, a stage failed), 2 usage or input error.
An error a user can act on ends the script with one line on stderr, never showing a credential of the database URL;
`--verbose` adds the traceback.
"""
import argparse
import csv
import gc
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback

import pandas
from sqlalchemy.exc import SQLAlchemyError

import db_config
import early_signals
from db_config import DatabaseUnavailable, DatabaseUrlError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
OWNER_ONLY = 0o077  # umask: what a script creates (SQLite file, reports, logs, CSVs) may hold client data
DRIVER_ERRORS = ("sqlite3.Error", "pymysql.Error", "psycopg.Error")  # where a stage uses a driver's API directly
QUEUE_ERRORS = ("pika.exceptions.AMQPError",)  # the feed's message queue, when pika is installed
INPUT_FORMAT_ERRORS = (csv.Error, pandas.errors.ParserError, pandas.errors.EmptyDataError)


class InputError(Exception):
    """Input the user must fix (missing file, bad header, bad option value): exit code 2."""


class StageError(RuntimeError):
    """A stage could not finish its work: exit code 1."""


def make_parser(description, database=True):
    """An ArgumentParser with the options every stage takes; database=False: no --database-url (a script that
    touches no database, which would otherwise take one and ignore it)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if database:
        parser.add_argument("--database-url", help="SQLAlchemy URL (default: $DATABASE_URL, else "
                                                     "stock_investments.db in the project folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and the summary only (for cron)")
    return parser


def counted(count, noun, plural=None):
    """A count and its noun, singular for one: '1 batch', '3 batches' (plural: default noun + 's')."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


class StepClock:
    """Logs at DEBUG (shown by --verbose) how long each step of a stage took: lap(step) as each one ends."""

    def __init__(self, logger):
        self.logger, self.last = logger, time.perf_counter()

    def lap(self, step):
        now = time.perf_counter()
        self.logger.debug("%s (%.2f s)", step, now - self.last)
        self.last = now


MAX_ID = 2**63 - 1  # the largest BIGINT: an id beyond it cannot exist in any table


def database_id(text):
    """argparse type of an id (alert, investor): a whole number from 1 to MAX_ID."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text} is out of range (1 to {MAX_ID})")
    return value


def setup_logging(args):
    """Log to stderr: INFO on a terminal, WARNING when not (cron) or with --quiet, DEBUG with --verbose."""
    if args.verbose:
        level = logging.DEBUG
    elif args.quiet or not sys.stderr.isatty():
        level = logging.WARNING
    else:
        level = logging.INFO
    log_at(level)


def log_at(level):
    """Log to stderr from this level on, in the one format of every script (and of their worker processes)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # SQLAlchemy's pool logs a traceback for a connection it cannot reset or close (the server went away); the
    # error the stage itself meets is its one line, so the pool's report is shown only with --verbose
    logging.getLogger("sqlalchemy.pool").setLevel(logging.NOTSET if level <= logging.DEBUG else logging.CRITICAL)


def progress_enabled(args):
    """Progress bars only on a terminal, never in cron or with --quiet."""
    return sys.stderr.isatty() and not args.quiet


def run(work, args, name):
    """Call work(), turning every error into one stderr line and the exit code of docs/command-line.md.

    SIGTERM (a service manager, `kill`) ends the work like Ctrl+C: what is in progress is rolled back and
    recorded as failed. Everything the work creates is readable by its owner only (OWNER_ONLY). Errors raised by
    finalizers while a failed run is cleaned up are logged at DEBUG, not printed after the one line.
    An exception no rule describes is a bug: exit 1, its traceback with --verbose.
    """
    if _in_main_thread():
        early_signals.hand_over()
    previous = signal.signal(signal.SIGTERM, _interrupt) if _in_main_thread() else None
    os.umask(OWNER_ONLY)  # files 0600, folders 0700, whatever the caller's umask
    gc.freeze()  # the imports' objects live as long as the process: collections need not scan them (40 ms)
    unraisable_hook, finalizer_errors, failed = sys.unraisablehook, [], True
    sys.unraisablehook = finalizer_errors.append
    try:
        result, failed = work(), False
        return result
    except KeyboardInterrupt:
        return _fail(f"{name}: interrupted", EXIT_FAILURE, args)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception as error:
        code, message = describe_error(error) or (
            EXIT_FAILURE, f"unexpected error (a bug; --verbose shows where): {type(error).__name__}: "
                          f"{db_config.error_line(error)}")
        return _fail(f"{name}: {message}", code, args)
    finally:
        if failed:  # a streamed cursor caught in a cycle with the error's frames is freed now, not after the line
            gc.collect()
        sys.unraisablehook = unraisable_hook
        for finalizer_error in finalizer_errors:  # after an error line, the driver's cleanup is no news
            (_log_unraisable if failed and not args.verbose else unraisable_hook)(finalizer_error)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _log_unraisable(unraisable):
    """A finalizer's error while a failed run is cleaned up (a streamed cursor whose server died): debug only."""
    logging.getLogger(__name__).debug("ignored while cleaning up after the error: %s in %r",
                                      db_config.error_line(unraisable.exc_value), unraisable.object)


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _interrupt(_signal_number, _frame):
    raise KeyboardInterrupt("terminated (SIGTERM)")


SQLITE_FULL = "database or disk is full"
SQLITE_FULL_HINT = (" (the disk of the database file, or of SQLite's temporary files: SQLITE_TMPDIR, else TMPDIR, "
                    "/var/tmp, /usr/tmp, /tmp)")


def describe_error(error):
    """(exit code, one-line message) for an error a user can act on (docs/command-line.md); None for anything else."""
    if isinstance(error, (InputError, DatabaseUrlError)):
        return EXIT_USAGE, str(error)
    if isinstance(error, (DatabaseUnavailable, StageError)):
        return EXIT_FAILURE, str(error)
    if isinstance(error, pandas.errors.DatabaseError):  # wraps the database's error; also an OSError
        return EXIT_FAILURE, f"database error: {db_config.error_line(error.__cause__ or error)}"
    database_errors = (SQLAlchemyError, *installed_errors(DRIVER_ERRORS))
    if isinstance(error, database_errors):
        line = db_config.error_line(first_database_error(error, database_errors))
        return EXIT_FAILURE, f"database error: {line}{SQLITE_FULL_HINT if line == SQLITE_FULL else ''}"
    if isinstance(error, installed_errors(QUEUE_ERRORS)):
        return EXIT_FAILURE, f"message queue error: {db_config.error_line(error)}"
    if isinstance(error, INPUT_FORMAT_ERRORS):
        return EXIT_USAGE, f"unreadable CSV: {db_config.error_line(error)}"
    if isinstance(error, OSError):  # a file the user named (missing, unreadable, unwritable) is input to fix
        code = EXIT_FAILURE if error.filename is None else EXIT_USAGE
        where = "system error" if error.filename is None else error.filename
        return code, f"{where}: {error.strerror or db_config.error_line(error)}"
    return None


def first_database_error(error, database_errors):
    """The database error that started a chain: a statement's own, not that of the rollback after it (which fails
    too when the server closed the connection on the statement's error, e.g. a packet over max_allowed_packet)."""
    while isinstance(error.__context__, database_errors):
        error = error.__context__
    return error


def installed_errors(names):
    """The exception classes named 'module.Class' whose module is installed."""
    classes = []
    for name in names:
        module, _, attribute = name.rpartition(".")
        try:
            classes.append(getattr(importlib.import_module(module), attribute))
        except ImportError:
            continue
    return tuple(classes)


def _fail(message, code, args):
    """Print the error line (and with --verbose the traceback first), credentials hidden; return the code."""
    url = getattr(args, "database_url", None)
    if args.verbose:
        print(db_config.hide_secrets(traceback.format_exc(), url), file=sys.stderr, end="")
    print(f"error: {db_config.hide_secrets(message, url)}", file=sys.stderr)
    return code
