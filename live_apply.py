"""Live batches: a few trade records (queue messages) loaded and applied to their positions in one transaction.

The queue consumer (trade_queue.py) hands each small batch of messages to LiveApplier.apply, which
1. takes the partition locks of the batch's investors (db_config.investors_transaction): live batches of other
   investors run at the same time, while update_portfolio and surveillance wait for them and they for those;
2. adds the records to the open live load_batches row (one row per LIVE_BATCH_SECONDS or LIVE_BATCH_TRADES
   records, created inside the same transaction, so that a crash never leaves it 'running'), validated as file
   rows are (validation.py): a reject is kept with its reason and the raw message, without a line number;
3. applies the new trades to their positions (update_portfolio.apply_selected_trades: a late trade replays its
   position from a checkpoint), OVERSELL alerts included;
4. commits: the trades are applied. It returns a FollowUp for them: live_worker.py, in a process of its own,
   revalues and rescores their investors and surveils the trades, then stamps the batch surveilled; only then
   may the caller acknowledge the messages. Valuation, scores and surveillance cost several times the apply;
   done there, they cover many batches at once when trades come fast, and the next batch need not wait.
   A live batch whose last records were not followed up (a crash) keeps surveilled_at empty: the next consumer
   to start follows it up (live_worker.unfollowed_batches).
"""
import logging
import time
from datetime import datetime
from dataclasses import dataclass, replace
from decimal import localcontext
from typing import NamedTuple

import pandas as pd
from sqlalchemy import bindparam, select, text, update

import batches
import db_config
import db_retry
import ledger
import load_transactions
import update_portfolio
import validation
from schema import investors, load_batches, stocks

logger = logging.getLogger(__name__)

LIVE_BATCH_SECONDS = 60  # one load_batches row per minute of live trades ...
LIVE_BATCH_TRADES = 2_000  # ... or per this many records, whichever comes first (a restart re-checks the last)
RETRY_PAUSE_SECONDS = 0.01  # after a deadlock: the other transaction is short (a live batch, the live worker)
NEW_TRADES_SQL = "WHERE t.batch_id = :live_batch_id AND t.source_line > :live_after_line"  # one call's trades


class LiveRecord(NamedTuple):
    """One incoming trade: its fields as text, the canonical ones and `fee` when given (None when the message is
    not a trade at all), the raw message as kept for a reject, and why it is not a trade (None when fields is
    set)."""
    fields: dict
    raw: str
    problem: str = None
    redelivered: bool = False  # the broker delivered it before: a reject may be recorded already


class Outcome(NamedTuple):
    """What became of one record: status 'loaded', 'duplicate' or 'rejected', with the reason of a reject (also of
    a duplicate whose reject was recorded when it was delivered before: it is dead-lettered again)."""
    status: str
    reason: str = None


@dataclass(frozen=True)
class OpenBatch:
    """The live load_batches row that records are added to."""
    batch_id: int
    opened: float  # time.monotonic() when it was created
    records: int  # records so far; the next one gets source_line records + 1


@dataclass
class LiveResult:
    """What one call of LiveApplier.apply did."""
    outcomes: list  # an Outcome per record, in order
    follow_up: "FollowUp"
    trades_applied: int = 0
    oversells: int = 0


class FollowUp(NamedTuple):
    """Lines after_line + 1 ... through_line of a live batch, applied, wait for valuation and surveillance;
    first_new is the earliest txn_time of their loaded trades (None: none loaded, only the stamp is due)."""
    batch_id: int
    after_line: int
    through_line: int
    first_new: object = None


class LiveApplier:
    """Applies batches of LiveRecords for one source (e.g. 'queue:trades'), keeping the open live batch and the
    close table between calls."""

    def __init__(self, engine, source):
        self.engine, self.source = engine, source
        self.batch = None
        self.reference = ReferenceData()

    def apply(self, records):
        """Load these records and apply their trades in one transaction (again on a deadlock); LiveResult."""
        with localcontext(prec=update_portfolio.DECIMAL_DIGITS):
            try:
                return db_retry.with_retries(lambda: self._apply_once(records), f"{self.source}: live batch",
                                             pause_seconds=RETRY_PAUSE_SECONDS)
            except Exception:  # a commit cut by a lost connection may have happened: the batch's count is unknown,
                self.batch = None  # so the next records open a new batch (the consumer follows this one up)
                raise

    def _apply_once(self, records):
        with db_config.investors_transaction(self.engine, record_investor_ids(records)) as connection:
            now = batches.now()
            batch = self._batch_for(connection, now)
            summary = load_transactions.LoadSummary(self.source, batch.batch_id)
            rejects, recorded = load_live_records(connection, records, batch, summary, self.source, self.reference)
            loaded = loaded_trades(connection, batch)
            result = LiveResult(outcomes(batch, len(records), rejects, recorded, loaded),
                                FollowUp(batch.batch_id, batch.records, batch.records + len(records)))
            if loaded.lines:
                apply_loaded(connection, batch, loaded, now, result)
            count_batch(connection, batch.batch_id, summary, now)
        self.batch = replace(batch, records=batch.records + len(records))
        return result

    def _batch_for(self, connection, now):
        """The open live batch, or a new one (inside the transaction) when it is full or a minute old; either way
        its row is locked for writing first (the trades' foreign keys would take a shared lock on it, and
        raising that to write the counts deadlocks with live_worker's stamp)."""
        batch = self.batch
        if batch is None or batch.records >= LIVE_BATCH_TRADES or time.monotonic() - batch.opened >= LIVE_BATCH_SECONDS:
            return OpenBatch(start_live_batch(connection, self.source, now), time.monotonic(), 0)
        connection.execute(update(load_batches).where(load_batches.c.batch_id == batch.batch_id).values(
            finished_at=now, surveilled_at=None))
        return batch


def apply_loaded(connection, batch, loaded, now, result):
    """Apply the trades just loaded (LoadedTrades) to their positions (and OVERSELL alerts)."""
    new_trades = {"live_batch_id": batch.batch_id, "live_after_line": batch.records}
    applied = update_portfolio.apply_selected_trades(connection, (NEW_TRADES_SQL, new_trades), now,
                                                     keys=sorted(loaded.positions))
    result.follow_up = result.follow_up._replace(first_new=loaded.first_time)
    result.trades_applied, result.oversells = applied.trades, len(applied.oversells)


def record_investor_ids(records):
    """The investor ids the records name (those validation reads as whole numbers): the partitions to lock."""
    return validation.whole_numbers_in(str((record.fields or {}).get("investor_id", "")) for record in records)


def start_live_batch(connection, source, now):
    """Insert a live load_batches row, loaded and applied (its records are, as they come), not surveilled yet."""
    result = connection.execute(load_batches.insert().values(
        source=source[:500], file_sha256=None, started_at=now, finished_at=now, applied_at=now, surveilled_at=None,
        status="loaded", runner=batches.this_runner(), rows_read=0, rows_loaded=0, rows_duplicate=0,
        rows_rejected=0))
    batch_id = result.inserted_primary_key[0]
    logger.info("%s: live batch %d opened", source, batch_id)
    return batch_id


def count_batch(connection, batch_id, summary, now):
    """Add a call's counts to its live batch, which now waits for surveillance again (its rows_read, the
    number of its records, tells live_worker whether a stamp is still due)."""
    columns = load_batches.c
    connection.execute(update(load_batches).where(columns.batch_id == batch_id).values(
        rows_read=columns.rows_read + summary.rows_read, rows_loaded=columns.rows_loaded + summary.rows_loaded,
        rows_duplicate=columns.rows_duplicate + summary.rows_duplicate,
        rows_rejected=columns.rows_rejected + summary.rows_rejected,
        finished_at=now, applied_at=now, surveilled_at=None))


def load_live_records(connection, records, batch, summary, source, reference):
    """Validate and insert the records as lines batch.records + 1, ... of the live batch; return (the rejects
    (line_number, reason, raw_record), {line: reason} of redelivered records whose reject was recorded before)."""
    lines = range(batch.records + 1, batch.records + len(records) + 1)
    recorded = recorded_rejects(connection, records, lines, source)
    fresh = [(line, record) for line, record in zip(lines, records) if line not in recorded]
    trades = pd.DataFrame([[str(record.fields.get(column, "")) for column in validation.RECORD_COLUMNS]
                           for _, record in fresh if record.fields is not None],
                          columns=list(validation.RECORD_COLUMNS), dtype=object)  # no fee: '', which is 0
    trades["line_number"] = [line for line, record in fresh if record.fields is not None]
    trades["raw_record"] = [record.raw for _, record in fresh if record.fields is not None]
    malformed = load_transactions._rejects_frame(
        [(line, record.problem, record.raw) for line, record in fresh if record.fields is None])
    chunk = load_transactions.prepare_chunk(trades, malformed, reference.context(connection, records), batch.batch_id,
                                            connection.dialect.name)
    rejects = load_transactions.store_chunk(connection, chunk, summary, method="small", line_numbers=False)
    summary.rows_read += len(recorded)  # read again, counted as duplicates (their reject is stored once)
    summary.rows_duplicate += len(recorded)
    return rejects, recorded
class ReferenceData:
    """The investors and stocks known to exist, read again only for an id or symbol not seen yet (they are added,
    never removed, while trades reference them)."""

    def __init__(self):
        self.investor_ids, self.symbols = set(), set()

    def context(self, connection, records):
        """validation's context for these records."""
        ids = record_investor_ids(records) - self.investor_ids
        named = {str(record.fields.get("stock_symbol", "")).strip().upper() for record in records
                 if record.fields is not None} - self.symbols
        # printable ASCII only: anything else is a reject anyway, and a NUL would fail the query on PostgreSQL
        symbols = {symbol for symbol in named if symbol.isascii() and symbol.isprintable()}
        if ids:
            self.investor_ids.update(connection.execute(select(investors.c.investor_id).where(
                investors.c.investor_id.in_(sorted(ids)))).scalars())
        if symbols:
            self.symbols.update(connection.execute(select(stocks.c.stock_symbol).where(
                stocks.c.stock_symbol.in_(sorted(symbols)))).scalars())
        return validation.make_context(self.investor_ids, self.symbols, batches.now())


RECORDED_REJECTS_SQL = text("""
SELECT r.raw_record, r.reason
FROM rejected_transactions r
JOIN load_batches b ON b.batch_id = r.batch_id
WHERE b.source = :source AND r.raw_record IN :raw_records
""").bindparams(bindparam("raw_records", expanding=True))


def recorded_rejects(connection, records, lines, source):
    """{line: stored reason} of the redelivered records (the broker delivered them before) whose reject this
    source has stored already: a crash came between that commit and the acknowledgement. They are not taken
    again (whatever the reject was: a bad field, a conflict), only dead-lettered again."""
    redelivered = {line: load_transactions.stored_raw_record(record.raw)
                   for line, record in zip(lines, records) if record.redelivered}
    if not redelivered:
        return {}
    stored = dict(connection.execute(RECORDED_REJECTS_SQL, {"source": source,
                                                            "raw_records": sorted(set(redelivered.values()))}).all())
    return {line: stored[raw] for line, raw in redelivered.items() if raw in stored}


class LoadedTrades(NamedTuple):
    """The trades a call inserted: their lines, positions (investor_id, stock_symbol) and earliest txn_time."""
    lines: set
    positions: set
    first_time: object  # datetime, None when nothing was inserted


def loaded_trades(connection, batch):
    """The trades this call inserted into the live batch (lines after batch.records)."""
    rows = connection.execute(text(
        "SELECT t.source_line, t.investor_id, t.stock_symbol, t.txn_time FROM transactions t " + NEW_TRADES_SQL),
        {"live_batch_id": batch.batch_id, "live_after_line": batch.records}).all()
    first = min((row.txn_time for row in rows), default=None)  # text on SQLite, datetime elsewhere
    first = None if first is None else datetime.fromisoformat(ledger.normalize_time(first))
    return LoadedTrades({row.source_line for row in rows}, {(row.investor_id, row.stock_symbol) for row in rows},
                        first)


def outcomes(batch, count, rejects, recorded, loaded):
    """An Outcome per record: rejected (with its reason), loaded (stored under this batch and line) or duplicate
    (with the reason recorded before, for a reject delivered again)."""
    reasons = dict(zip(rejects["line_number"].tolist(), rejects["reason"].tolist()))
    return [Outcome("rejected", reasons[line]) if line in reasons
            else Outcome("loaded") if line in loaded.lines else Outcome("duplicate", recorded.get(line))
            for line in range(batch.records + 1, batch.records + count + 1)]
