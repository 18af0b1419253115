"""Retrying database work that failed for a reason that passes: a deadlock, a lock wait, a busy database.

Two loaders at once (cron overlapping a manual run, two files sharing trades) can deadlock on MariaDB's unique
index; the transaction that loses is rolled back whole, so running it again is safe and usually succeeds.
"""
import logging
import random
import time

import pandas

import db_config

logger = logging.getLogger(__name__)

ATTEMPTS = 5  # two loaders of one file met 2 deadlocks in a row (the break-it trial); 3 left no margin
MYSQL_TRANSIENT = {1205, 1213, 1467}  # lock wait timeout, deadlock, auto-increment not readable under contention
MYSQL_TRANSIENT |= db_config.GALERA_REFUSALS  # Galera: node not ready (1047), commit refused (1180); 1213 above
CLUSTER_PAUSES = (0.5, 1, 2, 3, 5, 5, 5, 5, 5)  # seconds between attempts while a Galera cluster re-forms (~31 s)
POSTGRESQL_TRANSIENT = {"40P01", "40001", "55P03"}  # deadlock, serialization failure, lock not available
SQLITE_TRANSIENT = ("database is locked", "database table is locked")
MYSQL_UNREACHABLE = {1053, 1927, 2003, 2006, 2013, 2055}  # shutdown, connection killed, can't connect, gone, lost
UNREACHABLE_PAUSES = (0.5, 1, 2, 5, 10, 30)  # seconds between attempts while a server is away; the last repeats
REFUSALS_LOGGED = 20  # a deadlock or lock wait repeated this often is logged (at WARNING) once


def database_error(error):
    """The database's error behind a wrapper (pandas' DatabaseError wraps the one read_sql raised)."""
    while isinstance(error, pandas.errors.DatabaseError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def is_transient(error):
    """Did the database refuse the work for a reason that passes (see the sets above)?"""
    error = database_error(error)
    orig = getattr(error, "orig", None) or error
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in MYSQL_TRANSIENT
    if getattr(orig, "sqlstate", None):
        return orig.sqlstate in POSTGRESQL_TRANSIENT
    return any(text in str(orig) for text in SQLITE_TRANSIENT)


def with_retries(work, what, attempts=ATTEMPTS, pause_seconds=0.5):
    """Call work(); when it fails transiently, log one line and call it again, up to `attempts` times. A Galera
    node's refusal (db_config.GALERA_REFUSALS: the whole transaction was rolled back) is tried again apart from
    those, after each of CLUSTER_PAUSES, with one log line (pause_seconds=0: no pauses, for tests)."""
    refusals, attempt = 0, 1
    while True:
        try:
            return work()
        except Exception as error:
            message = db_config.error_line(database_error(error))
            if is_cluster_refusal(error) and refusals < len(CLUSTER_PAUSES):
                if not refusals:
                    logger.warning("%s: %s; trying again while the cluster re-forms (up to %.0f s)", what, message,
                                   sum(CLUSTER_PAUSES))
                time.sleep(CLUSTER_PAUSES[refusals] if pause_seconds else 0)
                refusals += 1
                continue
            if attempt >= attempts or not is_transient(error):
                raise
            logger.warning("%s: %s; trying again (attempt %d of %d)", what, message, attempt + 1, attempts)
            time.sleep(pause_seconds * attempt * (1 + random.random()))
            attempt += 1


def is_cluster_refusal(error):
    """Did a Galera node refuse the work because it is not (or no longer) in the cluster's primary component?"""
    error = database_error(error)
    args = getattr(getattr(error, "orig", None) or error, "args", ())
    return bool(args) and args[0] in db_config.GALERA_REFUSALS


def is_unreachable(error):
    """Is this the database being away (stopped, restarting, the connection killed), not a bug or bad data?"""
    error = database_error(error)
    if isinstance(error, db_config.DatabaseUnavailable) or getattr(error, "connection_invalidated", False):
        return True
    orig = getattr(error, "orig", None) or error
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in MYSQL_UNREACHABLE
    sqlstate = getattr(orig, "sqlstate", None) or ""
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")


def until_it_works(work, what, pauses=UNREACHABLE_PAUSES):
    """Call work() until it succeeds: while the database is away, wait and call it again, with one log line when
    the outage starts and one when it ends; after a deadlock or lock wait, call it again at once, then with growing
    pauses (up to a second) and one log line when it keeps being refused. Other errors are raised."""
    outage_started, refusals, outage_attempts = None, 0, 0
    while True:
        try:
            result = work()
        except Exception as error:
            if is_transient(error) and not is_unreachable(error):
                refusals += 1
                level = logging.WARNING if refusals == REFUSALS_LOGGED else logging.DEBUG
                logger.log(level, "%s: %s; trying again (%d times so far)", what,
                           db_config.error_line(database_error(error)), refusals)
                time.sleep(random.random() * min(1.0, 0.01 * refusals))
                continue
            if not is_unreachable(error):
                raise
            if outage_started is None:
                outage_started = time.monotonic()
                logger.warning("%s: %s; trying again until it works", what, db_config.error_line(database_error(error)))
            time.sleep(pauses[min(outage_attempts, len(pauses) - 1)])
            outage_attempts += 1
            continue
        if outage_started is not None:
            logger.warning("%s: working again after %.0f s", what, time.monotonic() - outage_started)
        return result
