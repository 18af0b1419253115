"""Retrying database work that failed for a reason that passes: a deadlock, a lock wait, a busy database.

Two loaders at once (cron overlapping a manual run, two files sharing trades) can deadlock on MariaDB's unique
index; the transaction that loses is rolled back whole, so running it again is safe and usually succeeds.
"""
import logging
import random
import time

logger = logging.getLogger(__name__)

ATTEMPTS = 3
MYSQL_TRANSIENT = {1205, 1213, 1467}  # lock wait timeout, deadlock, auto-increment not readable under contention
POSTGRESQL_TRANSIENT = {"40P01", "40001", "55P03"}  # deadlock, serialization failure, lock not available
SQLITE_TRANSIENT = ("database is locked", "database table is locked")


def is_transient(error):
    """Did the database refuse the work for a reason that passes (see the sets above)?"""
    orig = getattr(error, "orig", None) or error
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in MYSQL_TRANSIENT
    if getattr(orig, "sqlstate", None):
        return orig.sqlstate in POSTGRESQL_TRANSIENT
    return any(text in str(orig) for text in SQLITE_TRANSIENT)


def with_retries(work, what, attempts=ATTEMPTS, pause_seconds=0.5):
    """Call work(); when it fails transiently, log one line and call it again, up to `attempts` times."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except Exception as error:
            if attempt == attempts or not is_transient(error):
                raise
            message = (str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__])[0]
            logger.warning("%s: %s; trying again (attempt %d of %d)", what, message, attempt + 1, attempts)
            time.sleep(pause_seconds * attempt * (1 + random.random()))
