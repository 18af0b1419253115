"""Database faults (issue 16, part 1): MariaDB killed (SIGKILL), shut down (SIGTERM) or a stage's sessions
killed (KILL) in the middle of a load, an incremental and a full update, a surveillance run and under the live
consumer, on a private server this module starts (tests/private_mariadb.py), never the shared one.

A batch stage cut by a fault exits 1 with one stderr line naming the database error (no traceback); after the
server is back, running it again (and the stages after it) gives exactly the trades, positions, risk scores and
alerts of a clean run in another database on the same server, with no load batch left 'running'. The consumer
logs one line when the database goes and one when it is back, keeps running, and in the end holds every
published trade once, with positions equal to `update_portfolio.py --full`.

Each fault runs from a copy of a template database (the clean reference run's state before the stage). One fault
per stage is in the default run; the others are marked slow.
"""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

import cli
import conftest
import db_config
import db_retry
import generate_dummy_data
import live_apply
import live_worker
import seed_investors
import trade_queue
from private_mariadb import PrivateMariaDB, ServerError

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS, INVESTORS, SEED = 40_000, 10, 16  # about 1.5 s of work per stage on a 2-core machine
WORK_FRACTION = 0.2  # a fault comes this far into a stage's work, as measured on the clean run (a faulted run
# on a busier moment of a shared machine may be 3× faster than its clean run: surveillance of 40,000 trades was)
WARM_UP_TRADES, LIVE_TRADES, LIVE_RATE = 5, 200, 40  # trades published before and during the outage; per second
OUTAGE_SECONDS = 3
DEADLINE_SECONDS = 120
LEFT_OUT = {"txn_id", "batch_id", "last_txn_id", "alert_id", "updated_at", "detected_at", "resolved_at"}
COMPARED_TABLES = {"transactions": "txn_ref", "portfolios": "investor_id, stock_symbol",
                   "investor_risk": "investor_id", "alerts": "alert_key"}  # table: the order of its rows


@dataclass(frozen=True)
class Stage:
    """A batch stage as the fault tests run it."""
    script: tuple  # the script and its options; "{trades}" is the trade file
    starts_from: str  # the template database it runs on
    then: tuple = ()  # the stages that complete the pipeline after it (keys of STAGES)
    lock: str = None  # its stage lock (update, surveillance); None: a load, seen by its 'running' batch

    @property
    def name(self):
        """The name in its error line (`error: update_portfolio: ...`)."""
        return os.path.splitext(self.script[0])[0]


STAGES = {
    "load": Stage(("load_transactions.py", "{trades}"), "seeded", ("update", "surveillance")),
    "update": Stage(("update_portfolio.py",), "loaded", ("surveillance",), lock="update_portfolio"),
    "full": Stage(("update_portfolio.py", "--full"), "surveilled", lock="update_portfolio"),
    "surveillance": Stage(("surveillance.py",), "updated", lock="surveillance"),
}
FAULTS = ("crash", "shutdown", "kill-session")
DEFAULT_RUN = {("load", "crash"), ("update", "kill-session"), ("full", "shutdown"), ("surveillance", "crash")}


@dataclass(frozen=True)
class FinalState:
    """What a run must end with, ids and times of the run left out (a rolled-back insert uses up txn_ids)."""
    transactions: tuple
    portfolios: tuple
    investor_risk: tuple
    alerts: tuple


@dataclass
class Pipeline:
    """The private server, the trade file, template databases and the reference run's results and timings."""
    server: PrivateMariaDB
    trades: str
    work_seconds: dict = field(default_factory=dict)  # stage key: seconds from its mark (see Stage) to its end
    expected: dict = field(default_factory=dict)  # stage key: the FinalState its pipeline must end with

    def command(self, url, stage):
        return [part.format(trades=self.trades) for part in stage.script] + ["--database-url", url]


# ---------------------------------------------------------------------------------------------- helpers

def run_script(*arguments):
    """Run a project script to its end; the CompletedProcess."""
    return subprocess.run([sys.executable, *arguments], cwd=PROJECT, capture_output=True, text=True,
                          timeout=DEADLINE_SECONDS)


def start_script(*arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    return subprocess.Popen([sys.executable, *arguments], cwd=PROJECT, stdout=stdout, stderr=stderr, text=True)


def run_ok(*arguments):
    done = run_script(*arguments)
    assert done.returncode == 0, f"{arguments[0]}: {done.stderr}"


def wait_until(condition, what, seconds=DEADLINE_SECONDS, pause=0.02):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(pause)
    raise AssertionError(f"timed out waiting for {what}")


def new_database_name():
    return f"faults_{uuid.uuid4().hex[:10]}"


def copy_database(server, source, target):
    """A new database `target` with the schema (as the stages create it) and every row of `source`."""
    engine = db_config.get_engine(server.url(target))
    engine.dispose()
    tables = [name for (name,) in server.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
        (source,))]
    connection = server.connect(target)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET foreign_key_checks = 0")
            for table in tables:
                cursor.execute(f"DELETE FROM `{table}`")
                cursor.execute(f"INSERT INTO `{table}` SELECT * FROM `{source}`.`{table}`")
    finally:
        connection.close()


def final_state(server, database):
    """The FinalState of a database."""
    return FinalState(**{table: tuple(server.query(
        f"SELECT {', '.join(compared_columns(server, database, table))} FROM `{table}` ORDER BY {order}",
        database=database)) for table, order in COMPARED_TABLES.items()})


def compared_columns(server, database, table):
    return [name for (name,) in server.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (database, table)) if name not in LEFT_OUT]


def running_batches(server, database):
    return server.query("SELECT batch_id, source FROM load_batches WHERE status = 'running'", database=database)


def in_work(server, database, stage):
    """Has the stage begun its work in the database (a load's running batch, an update's stage lock)?"""
    if stage.lock is None:
        return bool(running_batches(server, database))
    name = db_config.stage_lock_name(create_engine(server.url(database)), stage.lock)
    return server.query("SELECT IS_USED_LOCK(%s)", (name,))[0][0] is not None


def run_measured(pipeline, database, key):
    """Run a stage cleanly; record how long its work took, as in_work() sees it."""
    stage, server = STAGES[key], pipeline.server
    process = start_script(*pipeline.command(server.url(database), stage))
    wait_until(lambda: in_work(server, database, stage) or process.poll() is not None, f"{key} to begin")
    began = time.monotonic()
    wait_until(lambda: not in_work(server, database, stage) or process.poll() is not None, f"{key} to end")
    pipeline.work_seconds[key] = time.monotonic() - began
    _, err = process.communicate(timeout=DEADLINE_SECONDS)
    assert process.returncode == 0, f"{key}: {err}"


def inject(server, database, fault):
    """Stop the server (crash: SIGKILL, shutdown: SIGTERM) or KILL the database's sessions."""
    if fault == "kill-session":
        assert server.kill_sessions(database) > 0
    else:
        server.stop(hard=fault == "crash")


def assert_one_line_naming_the_outage(err, name):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name}: "), err
    code = re.search(r"\((\d{4}),", lines[0])
    assert code and int(code.group(1)) in db_retry.MYSQL_UNREACHABLE, err


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server():
    try:
        server = PrivateMariaDB.create(prefix="stock-etl-faults-")
    except (ServerError, OSError) as error:
        conftest._unreachable("a private MariaDB server", error)
    yield server
    server.close()


@pytest.fixture(scope="module")
def pipeline(server, tmp_path_factory):
    """The reference: a clean run of every stage in its own database, with a template copy before each stage."""
    folder = tmp_path_factory.mktemp("faults")
    trades = str(folder / "trades.csv")
    generate_dummy_data.write_files(trades, ROWS, SEED, investor_count=INVESTORS)
    pipeline, reference = Pipeline(server, trades), "reference"
    run_ok("seed_investors.py", "--database-url", server.url(reference))
    for template, key in (("seeded", "load"), ("loaded", "update"), ("updated", "surveillance")):
        copy_database(server, reference, template)
        run_measured(pipeline, reference, key)
    copy_database(server, reference, "surveilled")
    for key in ("load", "update", "surveillance"):
        pipeline.expected[key] = final_state(server, reference)
    run_measured(pipeline, reference, "full")
    pipeline.expected["full"] = final_state(server, reference)
    return pipeline


@pytest.fixture
def database(pipeline):
    """A new database's name on the private server; dropped afterwards (the server restarted if a test left it
    stopped)."""
    name = new_database_name()
    yield name
    pipeline.server.start()
    pipeline.server.query(f"DROP DATABASE IF EXISTS {name}")


# ---------------------------------------------------------------------------------------------- batch stages

def fault_cases():
    """Every stage with every fault; those not in DEFAULT_RUN marked slow."""
    return [pytest.param(key, fault, id=f"{key}-{fault}",
                         marks=() if (key, fault) in DEFAULT_RUN else (pytest.mark.slow,))
            for key in STAGES for fault in FAULTS]


@pytest.mark.parametrize("key, fault", fault_cases())
def test_a_stage_cut_by_a_fault_exits_1_and_its_rerun_ends_exactly_as_a_clean_run(pipeline, database, key, fault):
    stage, server = STAGES[key], pipeline.server
    copy_database(server, stage.starts_from, database)
    url = server.url(database)
    process = start_script(*pipeline.command(url, stage))
    wait_until(lambda: in_work(server, database, stage) or process.poll() is not None, f"{key} to begin")
    time.sleep(WORK_FRACTION * pipeline.work_seconds[key])
    assert in_work(server, database, stage), f"{key} finished before the fault: make the trade file larger"
    inject(server, database, fault)
    _, err = process.communicate(timeout=DEADLINE_SECONDS)
    server.start()

    assert process.returncode == 1, err
    assert_one_line_naming_the_outage(err, stage.name)
    run_ok(*pipeline.command(url, stage))
    for following in stage.then:
        run_ok(*pipeline.command(url, STAGES[following]))
    assert running_batches(server, database) == ()
    assert final_state(server, database) == pipeline.expected[key]


# ---------------------------------------------------------------------------------------------- live consumer

@dataclass
class LiveRun:
    """A consumer on a queue and the publishers started on it, their stderr in files."""
    url: str
    queue: str
    folder: object
    consumer: subprocess.Popen = None
    publishers: list = field(default_factory=list)

    def start_consumer(self):
        with open(self.log("consumer"), "w") as err:
            self.consumer = start_script("load_transactions.py", "--queue", "--queue-name", self.queue,
                                         "--database-url", self.url, "--report-every", "0", stderr=err)

    def start_publisher(self, count, seed):
        """pseudo_realtime.py publishing `count` trades at LIVE_RATE (it logs each txn_ref with --verbose)."""
        with open(self.log(f"publisher{len(self.publishers)}"), "w") as err:
            self.publishers.append(start_script(
                "pseudo_realtime.py", "--sink", "rabbitmq", "--queue-name", self.queue, "--rate", str(LIVE_RATE),
                "--count", str(count), "--seed", str(seed), "--database-url", self.url, "--verbose",
                stdout=subprocess.DEVNULL, stderr=err))
        return self.publishers[-1]

    def published_refs(self):
        refs = []
        for number in range(len(self.publishers)):
            with open(self.log(f"publisher{number}"), encoding="utf-8") as handle:
                refs += re.findall(r"published (RT-[0-9a-f]+):", handle.read())
        return refs

    def consumer_lines(self):
        with open(self.log("consumer"), encoding="utf-8") as handle:
            return handle.read().splitlines()

    def log(self, process):
        return str(self.folder / f"{self.queue}.{process}.log")

    def kill_what_runs(self):
        for process in [self.consumer, *self.publishers]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def live_trades(server, database):
    """(txn_ref of every trade of the queue's live batches, live batches not yet followed up)."""
    refs = [ref for (ref,) in server.query(
        "SELECT t.txn_ref FROM transactions t JOIN load_batches b ON b.batch_id = t.batch_id "
        "WHERE b.source LIKE 'queue:%%'", database=database)]
    waiting = server.query("SELECT COUNT(*) FROM load_batches WHERE source LIKE 'queue:%%' "
                           "AND surveilled_at IS NULL", database=database)[0][0]
    return refs, waiting


def a_live_batch_followed_up(server, database):
    return server.query("SELECT COUNT(*) FROM load_batches WHERE source LIKE 'queue:%%' "
                        "AND surveilled_at IS NOT NULL", database=database)[0][0] > 0


def all_followed_up(server, database, count):
    """Are `count` trades in the queue's live batches, every batch followed up?"""
    refs, waiting = live_trades(server, database)
    return len(refs) == count and waiting == 0


def positions_and_scores(server, database):
    return server.query(
        "SELECT p.investor_id, p.stock_symbol, p.quantity, p.cost_basis, p.realized_pnl, p.last_txn_id, "
        "p.trade_count, p.market_value, r.total_market_value, r.realized_pnl, r.risk_score FROM portfolios p "
        "JOIN investor_risk r ON r.investor_id = p.investor_id ORDER BY p.investor_id, p.stock_symbol",
        database=database)


def cause_outage(server, database, fault):
    """The server away for OUTAGE_SECONDS, or the database's sessions killed (once: each kill is an outage)."""
    if fault == "kill-session":
        server.kill_sessions(database)
        return
    server.stop(hard=fault == "crash")
    time.sleep(OUTAGE_SECONDS)
    server.start()


def assert_one_outage_logged(lines, fault):
    """No traceback; the consumer's one line when the database went and one when it was back (a killed session
    may go unseen: an idle connection is replaced by the pool's ping)."""
    log = "\n".join(lines)
    assert "Traceback" not in log, log
    consumer_lines = [line for line in lines if " trade_queue: " in line]
    outages = [line for line in consumer_lines if "reconnecting until it works" in line]
    recoveries = [line for line in consumer_lines if "working again after" in line]
    assert len(outages) == len(recoveries) == 1 or (fault == "kill-session" and not outages + recoveries), log


# All slow: under the load of the whole suite the crash case sometimes cuts a live batch's commit unseen, and that
# batch is followed up only when the consumer next starts (README, Unattended: a known gap), so the wait for
# "every trade followed up" can time out. bench/soak.py and bench/galera.sh cover outages under the consumer.
@pytest.mark.parametrize("fault", [pytest.param("crash", marks=pytest.mark.slow),
                                   pytest.param("shutdown", marks=pytest.mark.slow),
                                   pytest.param("kill-session", marks=pytest.mark.slow)])
def test_the_consumer_rides_out_a_database_outage_and_loses_nothing(pipeline, database, broker, tmp_path, fault):
    server, (_, created) = pipeline.server, broker
    queue = f"test-faults-{uuid.uuid4().hex[:8]}"
    created += [queue, f"{queue}.rejected"]
    copy_database(server, "surveilled", database)
    live = LiveRun(server.url(database), queue, tmp_path)
    try:
        live.start_consumer()
        assert live.start_publisher(WARM_UP_TRADES, seed=8).wait(timeout=DEADLINE_SECONDS) == 0
        wait_until(lambda: all_followed_up(server, database, WARM_UP_TRADES), "the worker's first follow-up",
                   pause=0.1)  # the worker is up: the outage comes while trades flow through both processes
        publisher = live.start_publisher(LIVE_TRADES, seed=9)
        wait_until(lambda: len(live_trades(server, database)[0]) >= WARM_UP_TRADES + LIVE_RATE, "trades flowing")
        cause_outage(server, database, fault)
        assert publisher.wait(timeout=DEADLINE_SECONDS) == 0
        published = live.published_refs()
        wait_until(lambda: all_followed_up(server, database, len(published)), "every published trade followed up",
                   pause=0.2)
        assert live.consumer.poll() is None, "the consumer ended"
        live.consumer.send_signal(signal.SIGTERM)
        assert live.consumer.wait(timeout=DEADLINE_SECONDS) == 0, live.consumer_lines()
    finally:
        live.kill_what_runs()
        print("\n".join(live.consumer_lines()))  # shown when the test fails

    refs, _ = live_trades(server, database)
    assert len(published) == WARM_UP_TRADES + LIVE_TRADES and sorted(refs) == sorted(published)
    assert_one_outage_logged(live.consumer_lines(), fault)
    live_state = positions_and_scores(server, database)
    run_ok("update_portfolio.py", "--full", "--database-url", live.url)
    assert positions_and_scores(server, database) == live_state


def test_a_live_worker_started_while_the_database_is_away_waits_for_it(pipeline, database):
    """Regression: the worker connected once at start, and a database away at that moment ended it (and with
    it the consumer, a traceback on stderr)."""
    server = pipeline.server
    copy_database(server, "seeded", database)
    server.stop()
    try:
        worker = live_worker.WorkerProcess(server.url(database))
        time.sleep(2.5)
    finally:
        server.start()
    worker.stop()
    assert worker.process.exitcode == 0


def test_the_pools_traceback_of_a_lost_connection_shows_only_with_verbose(capsys):
    """Regression: SQLAlchemy's pool logged a traceback when it could not reset a connection the outage had cut,
    beside the consumer's one outage line."""
    pool_logger = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
    try:
        for level, shown in ((logging.WARNING, False), (logging.DEBUG, True)):
            cli.log_at(level)
            try:
                raise ConnectionResetError(104, "Connection reset by peer")
            except ConnectionResetError:
                pool_logger.error("Exception during reset or similar", exc_info=True)
            assert ("Traceback" in capsys.readouterr().err) == shown
    finally:
        logging.getLogger("sqlalchemy.pool").setLevel(logging.NOTSET)


def live_message(ref):
    return trade_queue.parse_message(json.dumps({
        "txn_ref": ref, "investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY", "quantity": 5,
        "price": "100.00", "txn_time": "2026-10-01 10:00:00"}).encode())


def test_a_live_batch_whose_commit_was_cut_unseen_is_followed_up_and_not_counted_on(sqlite_url):
    """Regression: a live batch committed while the connection was lost (the consumer saw an error) kept its stale
    count in the consumer, so the follow-ups of its redelivered messages never matched its rows_read and it was
    never stamped surveilled. Now the next records open a new batch, and the cut one is followed up whole."""
    engine = db_config.get_engine(sqlite_url)
    seed_investors.seed_reference_data(engine)
    applier = live_apply.LiveApplier(engine, "queue:faults")
    first = applier.apply([live_message("CUT-1")]).follow_up
    commit_and_lose_the_answer = applier._apply_once

    def cut(records):
        commit_and_lose_the_answer(records)
        raise OperationalError("COMMIT", {}, ConnectionResetError(2013, "Lost connection to MySQL server"))

    applier._apply_once = cut
    with pytest.raises(OperationalError):
        applier.apply([live_message("CUT-2")])
    applier._apply_once = commit_and_lose_the_answer
    again = applier.apply([live_message("CUT-2")]).follow_up  # RabbitMQ delivers it again: a duplicate
    assert again.batch_id != first.batch_id and (again.after_line, again.through_line) == (0, 1)
    left = {job.batch_id: job for job in live_worker.unfollowed_batches(engine)}
    assert (left[first.batch_id].after_line, left[first.batch_id].through_line) == (0, 2)
    engine.dispose()


def test_a_full_disk_on_sqlite_names_the_temporary_directory_too():
    # a full check sorts in SQLite's temporary files: a full temporary directory reads like a full database disk
    import sqlite3
    error = OperationalError("SELECT ...", {}, sqlite3.OperationalError("database or disk is full"))

    code, line = cli.describe_error(error)

    assert code == cli.EXIT_FAILURE
    assert line == ("database error: database or disk is full (the disk of the database file, or of SQLite's "
                    "temporary files: SQLITE_TMPDIR, else TMPDIR, /var/tmp, /usr/tmp, /tmp)")
