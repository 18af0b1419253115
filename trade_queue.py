"""The trades queue on RabbitMQ (docs/live-mode.md): its queues, publishing a trade, and the live consumer.

A trade is one persistent message, a JSON object with the canonical field names and an optional `fee` (values as
strings or numbers), on the durable queue `trades` (--queue-name), or with --partitions N on `trades.K`,
K = investor_id modulo N, so that one consumer applies each investor's trades in order (each partition queue has a
single active consumer: a second consumer of it waits as a standby). Messages that are not trades go to
`<queue>.rejected` with the reason in header x-reason, after the reject is recorded in rejected_transactions.

The consumer takes messages in small batches (--batch-size messages or --batch-ms after the first), commits
each with live_apply (the trades are then applied), hands it to live_worker (valuation, scores, surveillance),
and acknowledges it once followed up. Killed at any
moment it loses nothing: unacknowledged messages come back, and what was committed comes back as duplicates.
"""
import json
import logging
import os
import signal
import threading
import time
from urllib.parse import urlsplit, urlunsplit
from dataclasses import dataclass, field
from typing import NamedTuple

import pika
import pika.exceptions
from sqlalchemy import select

import batches
import cli
import db_config
import db_retry
import live_apply
import live_worker
import report_refresh
import update_portfolio
import validation
from schema import investors, stocks

logger = logging.getLogger(__name__)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PUBLISHED_AT_HEADER = "x-published-at"  # seconds since the epoch, set by pseudo_realtime (latency measurement)
IDLE_WAIT_SECONDS = 0.05  # how long the consumer waits for the broker when it has nothing in hand
PREFETCH_BATCHES = 50  # unacknowledged messages allowed, in batches: they wait for the worker's cycle (a
# second or more when trades come fast); fewer would stall the consumer behind the worker
MAX_BODY_CHARS = 10_000  # a longer message is a reject (a trade is about 200 characters)


def amqp_url():
    """AMQP_URL from the environment or .env (db_config loads it), else the local broker."""
    return os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL


def broker_parameters(url=None):
    """pika's connection parameters for the URL (default amqp_url()); a URL that cannot work is cli.InputError."""
    url = url or amqp_url()
    shown = safe_amqp_url(url)
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        raise cli.InputError(f"AMQP_URL {shown!r}: not an amqp:// or amqps:// URL")
    try:
        parameters = pika.URLParameters(url)
    except (ValueError, IndexError, TypeError) as error:
        raise cli.InputError(f"AMQP_URL {shown!r}: {error}") from None
    parameters.heartbeat = 30  # a dead peer is noticed within a minute
    parameters.blocked_connection_timeout = 60
    return parameters


def safe_amqp_url(url):
    """The URL with its password hidden."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def queue_for(queue_name, partitions, investor_id):
    """The queue of an investor's trades: the queue itself, or its partition investor_id modulo partitions."""
    return f"{queue_name}.{int(investor_id) % partitions}" if partitions else queue_name


def declare_queues(channel, queue_name, partitions):
    """Declare the durable trade queue (or its partitions) and the rejected queue; idempotent."""
    if partitions:
        for number in range(partitions):
            channel.queue_declare(f"{queue_name}.{number}", durable=True,
                                  arguments={"x-single-active-consumer": True})
    else:
        channel.queue_declare(queue_name, durable=True)
    channel.queue_declare(f"{queue_name}.rejected", durable=True)


def connect(url=None):
    """A blocking connection to the broker. pika's own log (an ERROR and a traceback per failed attempt) is
    shown only with --verbose: the caller says what happened in one line."""
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("pika").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    return pika.BlockingConnection(broker_parameters(url))


# ---------------------------------------------------------------------------------------------- publishing

class Publisher:
    """Publishes trades as persistent messages with publisher confirms (basic_publish returns once the broker
    has the message)."""

    def __init__(self, queue_name="trades", partitions=0, url=None):
        self.queue_name, self.partitions = queue_name, partitions
        self.connection = connect(url)
        self.channel = self.connection.channel()
        declare_queues(self.channel, queue_name, partitions)
        self.channel.confirm_delivery()

    def publish(self, trade):
        """Publish one trade (canonical fields) to its queue."""
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
            message_id=str(trade["txn_ref"]), headers={PUBLISHED_AT_HEADER: f"{time.time():.6f}"})
        self.channel.basic_publish("", queue_for(self.queue_name, self.partitions, trade["investor_id"]),
                                   json.dumps(trade).encode(), properties, mandatory=True)

    def close(self):
        if self.connection.is_open:
            self.connection.close()


# ---------------------------------------------------------------------------------------------- messages

def parse_message(body, redelivered=False):
    """A message as a live_apply.LiveRecord: the trade's fields as text, or the reason it is not a trade."""
    raw = body.decode("utf-8", errors="replace")
    if len(raw) > MAX_BODY_CHARS:
        return live_apply.LiveRecord(None, raw, f"message: {len(raw):,} characters, more than a trade "
                                                f"({MAX_BODY_CHARS:,} at most)", redelivered)
    try:  # numbers keep their text, as a CSV cell would: 1e2 stays '1e2', 190.10 stays '190.10'
        message = json.loads(body, object_pairs_hook=_refuse_repeated_keys, parse_float=str, parse_int=str,
                             parse_constant=_refuse_constant)
    except RepeatedKey as repeated:
        return live_apply.LiveRecord(None, raw, f"message: the field {str(repeated)!r} is given twice", redelivered)
    except (ValueError, RecursionError) as error:
        return live_apply.LiveRecord(None, raw, f"message: not JSON ({error})", redelivered)
    if not isinstance(message, dict):
        return live_apply.LiveRecord(None, raw, f"message: a JSON {type(message).__name__}, not an object",
                                     redelivered)
    fields, problem = message_fields(message)
    return live_apply.LiveRecord(fields if problem is None else None, raw, problem, redelivered)


class RepeatedKey(Exception):
    """A JSON object names a field twice: which value is the trade's is anybody's guess."""


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _refuse_repeated_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise RepeatedKey(next(key for key in keys if keys.count(key) > 1))
    return dict(pairs)


def message_fields(message):
    """(the trade's fields as text, None) or (None, the reason): a value must be a string or a number. The
    canonical fields are required; `fee` is optional (missing or null: no fee, which validation takes as 0)."""
    fields = {}
    for column in validation.RECORD_COLUMNS:
        value = message.get(column)
        if value is None and column not in validation.TRADE_COLUMNS:
            continue
        if value is None:
            return None, f"{column}: missing" + (" (null)" if column in message else "")
        if not isinstance(value, str):  # numbers arrive as their text (parse_message)
            return None, f"{column}: {json.dumps(value)[:100]} is not a string or a number"
        if not value.isascii() and not _encodable(value):
            return None, f"{column}: {json.dumps(value)[:100]} holds a lone surrogate (\\ud800-\\udfff), not text"
        fields[column] = value
    return fields, None


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- consuming

class ConsumerSettings(NamedTuple):
    """How the consumer runs (load_transactions.py --queue options)."""
    queue_name: str = "trades"
    partitions: int = 0
    partition: int = None
    batch_size: int = 500
    batch_ms: float = 5.0
    report_every: float = 10.0
    database_url: str = None

    @classmethod
    def from_args(cls, args):
        return cls(args.queue_name, args.partitions, args.partition, args.batch_size, args.batch_ms,
                   args.report_every, args.database_url)

    def queue(self):
        """The queue this consumer reads."""
        return f"{self.queue_name}.{self.partition}" if self.partitions else self.queue_name


@dataclass
class ConsumerTotals:
    """Counts over the consumer's run, for its closing line."""
    messages: int = 0
    outcomes: dict = field(default_factory=lambda: {"loaded": 0, "duplicate": 0, "rejected": 0})
    started: float = field(default_factory=time.monotonic)

    def line(self, queue):
        counts = self.outcomes
        return (f"queue {queue}: {cli.counted(self.messages, 'message')}, {counts['loaded']} loaded, "
                f"{cli.counted(counts['duplicate'], 'duplicate')}, {counts['rejected']} rejected "
                f"({time.monotonic() - self.started:.1f} s)")


class Stop:
    """Set by SIGINT/SIGTERM: the consumer finishes the batch in hand and exits 0."""

    def __init__(self):
        self.requested = threading.Event()
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, lambda *_: self.requested.set())
        return self

    def __exit__(self, *_):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def consume(engine, settings):
    """Consume the queue until a signal; return the exit code (0)."""
    url = settings.database_url or engine.url.render_as_string(hide_password=False)
    broker = broker_parameters()  # a URL that cannot work stops here (exit 2)
    require_reference_data(engine)
    require_current_positions(engine)
    logger.info("consuming %s at %s", settings.queue(), safe_amqp_url(amqp_url()))
    applier = live_apply.LiveApplier(engine, f"{batches.LIVE_SOURCE_PREFIX}{settings.queue()}")
    totals, outage = ConsumerTotals(), Outage(f"queue {settings.queue()}", f"{broker.host}:{broker.port}")
    with Stop() as stop:
        worker = live_worker.WorkerProcess(url)
        catch_up(engine, worker)
        refresher = report_refresh.ReportRefresher(settings.database_url, settings.report_every)
        try:
            while not stop.requested.is_set():
                try:
                    run_session(settings, applier, worker, totals, stop, outage, refresher)
                except Exception as error:
                    refuse_configuration_errors(error, settings)
                    if not (isinstance(error, BROKER_ERRORS) or db_retry.is_unreachable(error)
                            or db_retry.is_transient(error)):
                        raise
                    outage.wait(error, stop)
        finally:
            worker.stop()
            refresher.close()
    print(totals.line(settings.queue()), flush=True)
    return 0


def require_reference_data(engine):
    """Refuse to start on a database without investors or stocks: every message would be a reject."""
    with engine.connect() as connection:
        missing = [table.name for table in (investors, stocks)
                   if connection.execute(select(table).limit(1)).first() is None]
    if missing:
        raise cli.InputError(f"the database has no {' and no '.join(missing)}; run seed_investors.py first "
                             "(no message was taken)")


def require_current_positions(engine):
    """Refuse to start on positions an earlier version built: the one full replay they need is
    update_portfolio.py's (a live batch applies only its own positions)."""
    with engine.connect() as connection:
        earlier = update_portfolio.built_by_earlier_version(connection)
    if earlier:
        raise cli.InputError("the positions were built by an earlier version of stock-etl; run update_portfolio.py "
                             "once first (it replays every trade by the current rules; no message was taken)")


FATAL_REPLY_CODES = {403: "access refused", 404: "not found", 406: "declared differently"}  # AMQP channel replies


def refuse_configuration_errors(error, settings):
    """Raise cli.StageError for a broker error that waiting will not cure (credentials, permissions, a queue
    declared with other arguments); anything else is left to the caller."""
    if isinstance(error, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
                          pika.exceptions.ProbableAccessDeniedError)):
        raise cli.StageError(f"RabbitMQ at {safe_amqp_url(amqp_url())} refused the login (check AMQP_URL's "
                             "user and password, and its virtual host)") from None
    code = getattr(error, "reply_code", None)
    if isinstance(error, pika.exceptions.ChannelClosedByBroker) and code in FATAL_REPLY_CODES:
        raise cli.StageError(f"queue {settings.queue()}: {FATAL_REPLY_CODES[code]} ({code} "
                             f"{getattr(error, 'reply_text', '')})") from None


class Outage:
    """The broker or the database is away: one log line when it starts, one when it ends, growing pauses."""

    def __init__(self, what, broker_address):
        self.what, self.broker_address, self.started, self.attempts = what, broker_address, None, 0

    def wait(self, error, stop):
        if self.started is None:
            self.started = time.monotonic()
            logger.warning("%s: %s; reconnecting until it works", self.what, self.describe(error))
        pauses = db_retry.UNREACHABLE_PAUSES
        stop.requested.wait(pauses[min(self.attempts, len(pauses) - 1)])
        self.attempts += 1

    def over(self):
        if self.started is not None:
            logger.warning("%s: working again after %.0f s", self.what, time.monotonic() - self.started)
        self.started, self.attempts = None, 0


    def describe(self, error):
        """One line for an error of the broker or the database."""
        if isinstance(error, BROKER_ERRORS):
            return (f"RabbitMQ at {self.broker_address} unreachable ({type(error).__name__}"
                    + (f": {error}" if str(error) else "") + ")")
        return f"database unreachable ({db_config.error_line(error)})"


def catch_up(engine, worker):
    """Follow up the live batches an earlier consumer committed and could not value and surveil (killed)."""
    left = live_worker.unfollowed_batches(engine)
    for follow_up in left:
        worker.submit(follow_up)
    if left:
        logger.info("following up %d live batch(es) left unsurveilled", len(left))


BROKER_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
                 pika.exceptions.StreamLostError, pika.exceptions.ConnectionClosed)


class Session:
    """One connection to the broker: the messages in hand, and the jobs whose messages wait for their ack."""

    def __init__(self, settings, channel):
        self.settings, self.channel = settings, channel
        self.buffer = []  # (delivery tag, body, redelivered)
        self.first_at = None
        self.waiting = []  # (job number, last delivery tag) in order

    def on_message(self, _channel, method, _properties, body):
        if not self.buffer:
            self.first_at = time.monotonic()
        self.buffer.append((method.delivery_tag, body, method.redelivered))

    def batch_due(self):
        if not self.buffer:
            return False
        waited_ms = (time.monotonic() - self.first_at) * 1000
        return len(self.buffer) >= self.settings.batch_size or waited_ms >= self.settings.batch_ms


def run_session(settings, applier, worker, totals, stop, outage, refresher):
    """Consume on one connection until stopped; a lost broker or database raises (the caller reconnects)."""
    connection = connect()
    try:
        channel = connection.channel()
        declare_queues(channel, settings.queue_name, settings.partitions)
        channel.basic_qos(prefetch_count=settings.batch_size * PREFETCH_BATCHES)
        channel.confirm_delivery()
        ping_database(applier.engine)
        outage.over()
        session = Session(settings, channel)
        consumer_tag = channel.basic_consume(settings.queue(), session.on_message)
        logger.info("consuming %s (batches of %d messages or %g ms)", settings.queue(), settings.batch_size,
                    settings.batch_ms)
        while not stop.requested.is_set():
            connection.process_data_events(time_limit=0 if session.buffer else IDLE_WAIT_SECONDS)
            if session.batch_due():
                take_batch(session, applier, worker, totals)
                refresher.poke()
            acknowledge(session, worker)
        channel.basic_cancel(consumer_tag)
        if session.buffer:
            take_batch(session, applier, worker, totals)
        while session.waiting:  # the jobs in hand: wait for their surveillance, then acknowledge
            acknowledge(session, worker, wait_seconds=1.0)
    finally:
        if connection.is_open:
            connection.close()


def ping_database(engine):
    """Raise unless the database answers."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")


def take_batch(session, applier, worker, totals):
    """Commit the messages in hand (live_apply), dead-letter the rejects, queue their surveillance."""
    taken, session.buffer = session.buffer, []
    records = [parse_message(body, redelivered) for _, body, redelivered in taken]
    started = time.perf_counter()
    result = applier.apply(records)
    logger.debug("applied %d messages in %.1f ms", len(records), (time.perf_counter() - started) * 1000)
    for (tag, body, _), outcome in zip(taken, result.outcomes):
        totals.outcomes[outcome.status] += 1
        if outcome.reason is not None:  # a reject, or one recorded at an earlier delivery: at least once
            dead_letter(session.channel, session.settings.queue_name, body, outcome.reason)
    totals.messages += len(taken)
    session.waiting.append((worker.submit(result.follow_up), taken[-1][0]))


def dead_letter(channel, queue_name, body, reason):
    """Publish a rejected message to <queue>.rejected with its reason (confirmed by the broker)."""
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                      headers={"x-reason": reason[:1000], "x-rejected-at": batches.now().isoformat()})
    channel.basic_publish("", f"{queue_name}.rejected", body, properties)


def acknowledge(session, worker, wait_seconds=0.0):
    """Acknowledge the messages of every job the worker has finished (in order)."""
    if not session.waiting:
        return
    finished = worker.finished(wait_seconds)
    if finished is None:
        return
    done = [tag for number, tag in session.waiting if number <= finished]
    if done:
        session.channel.basic_ack(delivery_tag=done[-1], multiple=True)
        session.waiting = [(number, tag) for number, tag in session.waiting if number > finished]
