"""The live consumer's second process: valuation, scores and surveillance of the trades the consumer applied.

trade_queue.py commits each small batch of messages with live_apply (the trades are then in their positions)
and hands its FollowUp here. This process takes every follow-up waiting (many at once when trades come fast)
and, per live batch,
1. reads without locks the trade-level alerts of their trades, checked with their history
   (surveillance.find_live_alerts), and the investors of those trades;
2. in one transaction holding the valuation lock (db_config.valuation_transaction: not the investors' partition
   locks, so that the consumer goes on applying meanwhile): revalues their positions and rescores them
   (CONCENTRATION alerts) with the stored marks, and writes the new trade alerts and their investors'
   SECTOR_CONCENTRATION alerts; then, in a short transaction of its own (the consumer's inserts lock the batch
   row for a moment: one transaction writing both would deadlock with them), stamps the live batch surveilled
   when no later record was added meanwhile;
3. reports the follow-ups done; the consumer then acknowledges their messages, in order.

Closes change rarely (a prices file, a new day): every REPRICE_SECONDS, and whenever a trade's symbol has no
mark yet, it revalues as update_portfolio does (fingerprints of the closes, then every holder of a repriced
symbol); in between it values with the stored marks and keeps the close table in memory until they change.

A consumer that starts first follows up every live batch left unsurveilled (a consumer killed before its
follow-up). A database outage makes a follow-up wait and retry (one log line per outage); any other failure
ends this process, and the consumer stops with its reason.
"""
import logging
import multiprocessing
import os
import signal
import time
from decimal import localcontext
from queue import Empty

import pandas as pd
from sqlalchemy import select, text, update

import batches
import cli
import closes
import db_config
import db_retry
import live_apply
import load_transactions
import surveillance
import update_portfolio
from schema import load_batches, symbol_marks

logger = logging.getLogger(__name__)
LIVE_RESOLVER = "live"  # alerts.resolved_by of an alert whose condition a live consumer saw clear

REPRICE_SECONDS = 60  # how often the worker looks for changed closes (update_portfolio.repriced_symbols)
STOP_SECONDS = 60  # how long a stop waits for the follow-ups in hand
GATHER_SECONDS = 0.25  # follow-ups arriving this soon after one are done with it: fewer, larger cycles, less CPU
LINES_SQL = ("FROM transactions t WHERE t.batch_id = :batch_id AND t.source_line > :after_line "
             "AND t.source_line <= :through_line")
UNFOLLOWED_SQL = f"""
SELECT b.batch_id, b.rows_read, MIN(t.txn_time) AS first_new
FROM load_batches b
LEFT JOIN transactions t ON t.batch_id = b.batch_id
WHERE b.source LIKE '{batches.LIVE_SOURCE_PREFIX}%' AND b.status = 'loaded' AND b.surveilled_at IS NULL
GROUP BY b.batch_id, b.rows_read
ORDER BY b.batch_id
"""


class WorkerProcess:
    """The worker process and its two queues: numbered follow-ups in, numbers of finished ones out."""

    def __init__(self, database_url):
        context = multiprocessing.get_context("spawn")  # the parent holds sockets (broker, database): no fork
        self.jobs, self.done = context.Queue(), context.Queue()
        self.process = context.Process(
            target=run_worker, name="live-worker", daemon=True,
            args=(database_url, self.jobs, self.done, os.getpid(), logging.getLogger().getEffectiveLevel()))
        self.process.start()
        self.sent = 0

    def submit(self, follow_up):
        """Queue a follow-up; return its number."""
        self.sent += 1
        self.jobs.put((self.sent, follow_up))
        return self.sent

    def finished(self, wait_seconds=0.0):
        """The highest number of a finished follow-up reported since the last call (None: none); raises
        cli.StageError when the worker failed or died."""
        highest = None
        try:
            while True:
                wait = wait_seconds if highest is None and wait_seconds else 0
                number, error = self.done.get(timeout=wait) if wait else self.done.get_nowait()
                if error:
                    raise cli.StageError(f"live follow-up failed: {error}")
                highest = number
        except Empty:
            pass
        if highest is None and not self.process.is_alive():
            raise cli.StageError(f"the live worker process ended (exit code {self.process.exitcode})")
        return highest

    def stop(self):
        """Finish the follow-ups in hand (up to STOP_SECONDS), then end the process."""
        if self.process.is_alive():
            self.jobs.put(None)
            self.process.join(STOP_SECONDS)
        if self.process.is_alive():
            logger.warning("the live worker did not finish within %d s; stopped (its messages come again)",
                           STOP_SECONDS)
            self.process.kill()
            self.process.join()


def unfollowed_batches(engine):
    """FollowUps of every line of the live batches left unsurveilled (their consumer was killed)."""
    with engine.connect() as connection:
        rows = connection.execute(text(UNFOLLOWED_SQL)).all()
    return [live_apply.FollowUp(batch_id, 0, rows_read, None if first is None else pd.Timestamp(first).to_pydatetime())
            for batch_id, rows_read, first in rows]


def run_worker(database_url, jobs, done, parent_pid, log_level):
    """The worker's loop: take every follow-up waiting, do them, report the highest number done."""
    load_transactions._die_with_parent(parent_pid)
    cli.log_at(log_level)
    for number in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C reaches the whole process group: the consumer decides
        signal.signal(number, signal.SIG_IGN)
    engine = db_retry.until_it_works(lambda: db_config.get_engine(database_url, create_schema=False),
                                     "live worker")  # a database away as it starts is an outage, not its end
    valuation = Valuation()
    while True:
        taken = take_jobs(jobs)
        follow_ups = [(number, job) for number, job in taken if job is not None]
        if follow_ups:
            try:
                follow_up_all(engine, valuation, [job for _, job in follow_ups])
            except Exception as error:  # reported to the consumer, which stops with it
                cause = db_retry.database_error(error)
                done.put((follow_ups[-1][0], f"{type(cause).__name__}: {db_config.error_line(cause)}"))
                return
            done.put((follow_ups[-1][0], None))
        if not taken or taken[-1][1] is None:
            return


def take_jobs(jobs):
    """The next follow-up (waiting for it) and every one arriving within GATHER_SECONDS after it; [] or a last
    (n, None): stop."""
    first = jobs.get()
    if first is None:
        return []
    taken, until = [first], time.monotonic() + GATHER_SECONDS
    while True:
        try:
            item = jobs.get(timeout=max(0.0, until - time.monotonic()))
        except Empty:
            return taken
        if item is None:
            return taken + [(None, None)]
        taken.append(item)


def follow_up_all(engine, valuation, follow_ups):
    """Follow up the lines of each live batch at once, retrying through database outages."""
    for batch_id in dict.fromkeys(job.batch_id for job in follow_ups):
        mine = [job for job in follow_ups if job.batch_id == batch_id]
        starts = [job.first_new for job in mine if job.first_new is not None]
        lines = {"batch_id": batch_id, "after_line": min(job.after_line for job in mine),
                 "through_line": max(job.through_line for job in mine)}
        db_retry.until_it_works(lambda: follow_up(engine, valuation, lines, min(starts) if starts else None),
                                f"live follow-up of batch {batch_id}")


def follow_up(engine, valuation, lines, first_new):
    """Value, score and surveil these lines of a live batch, then stamp it: reads in snapshot transactions and
    writes in short ones, all holding the valuation lock (see the module's docstring)."""
    positions, found = [], None
    if first_new is not None:  # trade alerts need no lock: they are written once each, by alert_key
        with engine.connect() as connection, db_config.read_transaction_on(connection):
            positions = connection.execute(text("SELECT DISTINCT t.investor_id, t.stock_symbol " + LINES_SQL),
                                           lines).all()
            found = surveillance.find_live_alerts(connection, lines["batch_id"], lines["after_line"],
                                                  lines["through_line"], first_new)
    investor_ids = sorted({investor_id for investor_id, _ in positions})
    with db_config.valuation_session(engine) as connection, localcontext(prec=update_portfolio.DECIMAL_DIGITS):
        if investor_ids:
            valuation.value(connection, investor_ids, {symbol for _, symbol in positions})
            with db_config.write_transaction_on(connection):
                now = batches.now()
                new = surveillance.write_alerts(connection, found, now) if found is not None else {}
                sectors = surveillance.sync_sector_alerts(connection, now, investor_ids, resolver=LIVE_RESOLVER)
            if new or sectors.raised or sectors.resolved:
                logger.info("live batch %d: new alerts %s, %d sector alerts raised, %d resolved", lines["batch_id"],
                            dict(new), sectors.raised, sectors.resolved)
        with db_config.write_transaction_on(connection):  # its own: the consumer's inserts lock the batch row
            stamp(connection, lines["batch_id"], lines["through_line"])


def stamp(connection, batch_id, through_line):
    """Mark the batch surveilled if through_line is still its last record (rows_read counts its records)."""
    connection.execute(update(load_batches).where(
        load_batches.c.batch_id == batch_id, load_batches.c.rows_read == through_line).values(
        surveilled_at=batches.now()))


class Valuation:
    """Revalues and scores investors as update_portfolio does, keeping the close table between calls."""

    def __init__(self):
        self.closes_key, self.close_table = None, None
        self.repriced_at = None  # time.monotonic() of the last look for changed closes

    def value(self, connection, investor_ids, symbols):
        """Revalue and score these investors, whose trades were in these symbols (and, when closes changed,
        every holder of a repriced symbol). Positions are written before the scores are read from them."""
        params = update_portfolio.risk_parameters()
        with db_config.read_transaction_on(connection):
            marks = dict(connection.execute(select(symbol_marks.c.stock_symbol, symbol_marks.c.closes_digest)).all())
        if set(symbols) - set(marks) or self.repriced_at is None or \
                time.monotonic() - self.repriced_at >= REPRICE_SECONDS:
            self.repriced_at, self.closes_key = time.monotonic(), None
            with db_config.write_transaction_on(connection):
                update_portfolio.revalue_and_score(connection, params, batches.now(), investor_ids, False,
                                                   update_portfolio.UpdateSummary())
            return
        with db_config.read_transaction_on(connection):
            table = self.close_table_for(connection, params, marks)
            changes = update_portfolio.position_value_changes(connection, params, batches.now(), investor_ids)
        with db_config.write_transaction_on(connection):
            update_portfolio.write_position_values(connection, changes)
        with db_config.read_transaction_on(connection):
            now = batches.now()
            scores = update_portfolio.investor_scores(connection, params, now, investor_ids, table)
        with db_config.write_transaction_on(connection):
            update_portfolio.write_investor_scores(connection, scores)
            update_portfolio.sync_concentration_alerts(connection, now, investor_ids, resolver=LIVE_RESOLVER)

    def close_table_for(self, connection, params, marks):
        """The close table of today's marks, read again only when they changed."""
        key = (params["today"], tuple(sorted(marks.items())))
        if key != self.closes_key:
            self.close_table = closes.close_table(closes.read_closes(connection, last_day=params["today"]))
            self.closes_key = key
        return self.close_table
