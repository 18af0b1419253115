"""Surveillance of live batches, in a process of its own beside the queue consumer.

The consumer (trade_queue.py) commits each small batch of messages with live_apply (the trades are then in their
portfolios) and hands its SurveillanceJob here; this process checks those trades with their history
(surveillance.find_live_alerts, read without locks), writes the new alerts in a short transaction that holds
surveillance's stage lock (so that it never races the batch stage for an alert), and stamps the live batch
surveilled when no later record was added to it meanwhile. The consumer acknowledges a batch's messages only
when its job is reported done, in order. Jobs that queue up while a check runs are checked together.

A database outage makes a job wait and retry with a growing pause (one log line per outage); a job that fails
otherwise ends the process, and the consumer stops with its reason.
"""
import logging
import multiprocessing
import os
import signal
from queue import Empty

from sqlalchemy import update

import batches
import cli
import db_config
import db_retry
import load_transactions
import surveillance
from schema import load_batches

logger = logging.getLogger(__name__)

STOP_SECONDS = 30  # how long a stop waits for jobs in hand


class SurveillanceProcess:
    """The worker process and its two queues: jobs in (numbered), numbers of finished jobs out."""

    def __init__(self, database_url):
        context = multiprocessing.get_context("spawn")  # the parent holds sockets (broker, database): no fork
        self.jobs, self.done = context.Queue(), context.Queue()
        self.process = context.Process(target=run_worker, args=(database_url, self.jobs, self.done, os.getpid()),
                                       name="live-surveillance", daemon=True)
        self.process.start()
        self.sent = 0

    def submit(self, job):
        """Queue a job; return its number."""
        self.sent += 1
        self.jobs.put((self.sent, job))
        return self.sent

    def finished(self, wait_seconds=0.0):
        """The highest number of a finished job reported since the last call (None: none); raises StageError
        when the worker failed or died."""
        highest = None
        try:
            while True:
                number, error = self.done.get(timeout=wait_seconds) if highest is None and wait_seconds else \
                    self.done.get_nowait()
                if error:
                    raise cli.StageError(f"live surveillance failed: {error}")
                highest = number
        except Empty:
            pass
        if highest is None and not self.process.is_alive():
            raise cli.StageError(f"the live surveillance process ended (exit code {self.process.exitcode})")
        return highest

    def stop(self):
        """Finish the jobs in hand (up to STOP_SECONDS), then end the process."""
        if self.process.is_alive():
            self.jobs.put(None)
            self.process.join(STOP_SECONDS)
        if self.process.is_alive():
            logger.warning("live surveillance did not finish within %d s; stopped", STOP_SECONDS)
            self.process.kill()
            self.process.join()


def run_worker(database_url, jobs, done, parent_pid):
    """The worker's loop: take every job waiting, check them, report the highest number done."""
    _die_with_parent(parent_pid)
    for number in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C reaches the whole process group: the consumer decides
        signal.signal(number, signal.SIG_IGN)
    engine = db_config.get_engine(database_url, create_schema=False)
    while True:
        taken = take_jobs(jobs)
        if not taken:
            return
        try:
            surveil_jobs(engine, [job for _, job in taken if job is not None])
        except Exception as error:  # reported to the consumer, which stops with it
            done.put((taken[-1][0], f"{type(error).__name__}: {db_config.error_line(error)}"))
            return
        finished = [number for number, job in taken if job is not None]
        if finished:
            done.put((finished[-1], None))
        if taken[-1][1] is None:
            return


def take_jobs(jobs):
    """The next job (waiting for it) and every job queued behind it; [] or a last (n, None) means stop."""
    first = jobs.get()
    if first is None:
        return []
    taken = [first]
    while True:
        try:
            item = jobs.get_nowait()
        except Empty:
            return taken
        if item is None:
            return taken + [(None, None)]
        taken.append(item)


def surveil_jobs(engine, jobs):
    """Check the jobs' trades, one check per live batch, retrying through database outages."""
    for batch_id in dict.fromkeys(job.batch_id for job in jobs):
        mine = [job for job in jobs if job.batch_id == batch_id]
        starts = [job.first_new for job in mine if job.first_new is not None]
        through = max(job.through_line for job in mine)
        check = (lambda: surveil_lines(engine, batch_id, min(job.after_line for job in mine), through, min(starts))
                 ) if starts else (lambda: stamp_if_complete(engine, batch_id, through))
        db_retry.until_it_works(check, f"live surveillance of batch {batch_id}")


def surveil_lines(engine, batch_id, after_line, through_line, first_new):
    """Find the alerts of these lines (no lock), write the new ones and stamp the batch (short, locked)."""
    with engine.connect() as connection:
        with connection.begin():
            candidates = surveillance.find_live_alerts(connection, batch_id, after_line, through_line, first_new)
    with db_config.locked_transaction(engine, [db_config.stage_lock_name(engine, "surveillance")],
                                      "live surveillance") as connection:
        new = surveillance.write_alerts(connection, candidates, batches.now()) if not candidates.empty else {}
        stamp(connection, batch_id, through_line)
    if new:
        logger.info("live batch %d: new alerts %s", batch_id, dict(new))


def stamp_if_complete(engine, batch_id, through_line):
    """Stamp a batch surveilled when its last records loaded no trade."""
    with db_config.write_transaction(engine) as connection:
        stamp(connection, batch_id, through_line)


def stamp(connection, batch_id, through_line):
    """Mark the batch surveilled if through_line is still its last record (rows_read counts its records)."""
    connection.execute(update(load_batches).where(
        load_batches.c.batch_id == batch_id, load_batches.c.rows_read == through_line).values(
        surveilled_at=batches.now()))


def _die_with_parent(parent_pid):
    """End this process when the consumer dies (Linux: the kernel signals it; elsewhere it is noticed later)."""
    load_transactions._die_with_parent(parent_pid)
