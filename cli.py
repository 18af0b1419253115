"""Command-line conventions shared by every stage: common options, logging, errors and exit codes (SPEC §1).

Exit codes: 0 success, 1 runtime failure (database unreachable, a stage failed), 2 usage or input error.
A known error ends the script with one line on stderr; `--verbose` adds the traceback.
"""
import argparse
import logging
import sys
import traceback

from sqlalchemy.exc import SQLAlchemyError

from db_config import DatabaseUnavailable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class InputError(Exception):
    """Input the user must fix (missing file, bad header, bad option value): exit code 2."""


class StageError(RuntimeError):
    """A stage could not finish its work: exit code 1."""


def make_parser(description):
    """An ArgumentParser with the options every stage takes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: $DATABASE_URL, else sqlite:///stock_investments.db)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and the summary only (for cron)")
    return parser


def setup_logging(args):
    """Log to stderr: INFO on a terminal, WARNING when not (cron) or with --quiet, DEBUG with --verbose."""
    if args.verbose:
        level = logging.DEBUG
    elif args.quiet or not sys.stderr.isatty():
        level = logging.WARNING
    else:
        level = logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def progress_enabled(args):
    """Progress bars only on a terminal, never in cron or with --quiet."""
    return sys.stderr.isatty() and not args.quiet


def run(work, args, name):
    """Call work(), turning known errors into one stderr line and the SPEC exit code."""
    try:
        return work()
    except InputError as error:
        return _fail(f"{name}: {error}", EXIT_USAGE, args)
    except (DatabaseUnavailable, StageError) as error:
        return _fail(f"{name}: {error}", EXIT_FAILURE, args)
    except (SQLAlchemyError, *driver_errors()) as error:
        message = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        return _fail(f"{name}: database error: {message}", EXIT_FAILURE, args)
    except KeyboardInterrupt:
        return _fail(f"{name}: interrupted", EXIT_FAILURE, args)


def driver_errors():
    """The database drivers' own error classes (raised where a stage uses a driver's bulk API directly)."""
    import sqlite3

    errors = [sqlite3.Error]
    for module, name in (("pymysql", "Error"), ("psycopg", "Error")):
        try:
            errors.append(getattr(__import__(module), name))
        except ImportError:
            continue
    return tuple(errors)


def _fail(message, code, args):
    if args.verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code
