"""The lifecycle of a load batch (one file, one feed batch): started, then loaded or failed, later applied and
surveilled; and the recovery of batches whose loader died while they were running.

A batch row is committed as 'running' before its trades are loaded, so that a crash leaves a trace. It names
its runner (host, process id and the process's start time): a later loader on the same host marks a running
batch whose process is gone as 'failed' ("interrupted"), so that the audit trail never shows a load running
forever. A runner on another host cannot be checked; its batch is marked interrupted after STALE_AFTER.
"""
import logging
import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, update

import db_config
import db_retry
from schema import load_batches

logger = logging.getLogger(__name__)

STALE_AFTER = timedelta(hours=24)  # a batch of another host still running after this is taken as interrupted
ID_SLICE = 500  # ids per IN (...) list
LIVE_SOURCE_PREFIX = "queue:"  # source of a queue consumer's live batches ('queue:trades'; live_apply.py)


def now():
    """The current time as the batch columns keep it (whole seconds)."""
    return datetime.now().replace(microsecond=0)


def find_loaded_batch(engine, sha256):
    """The first batch that loaded a file with this SHA-256 completely, or None."""
    with engine.connect() as connection:
        return connection.execute(select(func.min(load_batches.c.batch_id)).where(and_(
            load_batches.c.file_sha256 == sha256, load_batches.c.status == "loaded"))).scalar()


def start_batch(engine, source, sha256, started):
    """Record a running batch, committed at once so that a crash leaves a trace; return its id."""
    with db_config.write_transaction(engine) as connection:
        result = connection.execute(load_batches.insert().values(
            source=source[:500], file_sha256=sha256, started_at=started, status="running", runner=this_runner(),
            rows_read=0, rows_loaded=0, rows_duplicate=0, rows_rejected=0))
        return result.inserted_primary_key[0]


def finish_batch(connection, summary):
    """Mark the batch loaded with its counts, inside the load's transaction."""
    connection.execute(update(load_batches).where(load_batches.c.batch_id == summary.batch_id).values(
        status="loaded", finished_at=now(), rows_read=summary.rows_read, rows_loaded=summary.rows_loaded,
        rows_duplicate=summary.rows_duplicate, rows_rejected=summary.rows_rejected))


def fail_batch(engine, batch_id, error):
    """Mark the batch failed with the reason; the load's own transaction has been rolled back."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

    def mark():  # only a running batch: a commit whose answer was lost (the server died) may have loaded it
        with db_config.write_transaction(engine) as connection:
            connection.execute(update(load_batches).where(and_(
                load_batches.c.batch_id == batch_id, load_batches.c.status == "running")).values(
                status="failed", finished_at=now(), error=reason[:1000]))
    try:
        db_retry.with_retries(mark, f"batch {batch_id}: marking it failed")  # e.g. a Galera cluster re-forming
    except Exception as mark_error:  # the original error matters more; say why the mark failed too
        # the database away (the outage that failed the load): the error line says so, and the next loader marks
        # this batch interrupted (recover_stale_batches); only a terminal shows the detail
        level = logging.INFO if db_retry.is_unreachable(mark_error) else logging.ERROR
        logger.log(level, "could not mark batch %s failed: %s", batch_id, db_config.error_line(mark_error))


def record_refused(engine, source, sha256, reason):
    """Record a file refused whole (bad header, no reference data) as a failed batch; return its id."""
    started = now()
    with db_config.write_transaction(engine) as connection:
        result = connection.execute(load_batches.insert().values(
            source=source[:500], file_sha256=sha256, started_at=started, finished_at=started, status="failed",
            error=reason[:1000], runner=this_runner(), rows_read=0, rows_loaded=0, rows_duplicate=0,
            rows_rejected=0))
        return result.inserted_primary_key[0]


def stamp_batches(connection, batch_ids, column, when):
    """Set a later stage's mark on these batches (applied_at by update_portfolio, surveilled_at by surveillance)."""
    for start in range(0, len(batch_ids), ID_SLICE):
        connection.execute(update(load_batches).where(
            load_batches.c.batch_id.in_(batch_ids[start:start + ID_SLICE])).values({column: when}))


# ---------------------------------------------------------------------------------------------- crashed runs

def this_runner():
    """'host:pid:start' of this process (start: its start time in clock ticks since boot, when known)."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def process_start(pid):
    """The start time of a live process (Linux: /proc/PID/stat field 22; '' where unknown), None if it is gone."""
    if not os.path.isdir("/proc/self"):  # no procfs: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        return ""


def runner_is_gone(runner, started_at, when):
    """Has the process that ran a batch ended? Certain on this host; by age (STALE_AFTER) elsewhere."""
    host, _, rest = (runner or "").partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return when - started_at > STALE_AFTER
    current = process_start(int(pid))
    return current is None or (bool(start) and bool(current) and current != start)


def recover_stale_batches(engine):
    """Mark running batches whose loader is gone as failed ('interrupted'); return their ids."""
    when = now()
    with engine.connect() as connection:
        running = connection.execute(select(load_batches.c.batch_id, load_batches.c.runner,
                                            load_batches.c.started_at).where(load_batches.c.status == "running")).all()
    gone = [batch_id for batch_id, runner, started in running
            if runner_is_gone(runner, started, when)]
    if not gone:
        return []
    with db_config.write_transaction(engine) as connection:
        connection.execute(update(load_batches).where(and_(
            load_batches.c.batch_id.in_(gone), load_batches.c.status == "running")).values(
            status="failed", finished_at=when,
            error=f"interrupted: its loader stopped without finishing (found at {when:%Y-%m-%d %H:%M:%S})"))
    logger.warning("marked %d batch(es) left running by a stopped loader as failed: %s",
                   len(gone), ", ".join(map(str, gone)))
    return gone
