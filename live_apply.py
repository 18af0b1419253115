"""Live batches: a few trade records (queue messages) loaded, applied, valued and surveilled in one transaction.

The queue consumer (trade_queue.py) hands each small batch of messages to LiveApplier.apply, which
1. takes the partition locks of the batch's investors (db_config.investors_transaction): live batches of other
   investors run at the same time, while update_portfolio and surveillance wait for them and they for those;
2. adds the records to the open live load_batches row (one row per LIVE_BATCH_SECONDS or LIVE_BATCH_TRADES
   records, created inside the same transaction, so that a crash never leaves it 'running'), validated as file
   rows are (validation.py): a reject is kept with its reason and the raw message, without a line number;
3. applies the new trades to their positions (update_portfolio.apply_selected_trades: a late trade replays its
   position from a checkpoint), and revalues and scores their investors with the stored marks;
4. commits, and returns a SurveillanceJob for those trades: live_surveillance.py checks them in another process
   (surveillance costs more than all the rest, and the trade is in its portfolio without waiting for it), then
   stamps the batch surveilled. Only then may the caller acknowledge the messages. A live batch whose last
   records were not surveilled (a crash) keeps surveilled_at empty: surveillance.py checks it, as it does a file.

Closes change rarely (a prices file, a new day): every REPRICE_SECONDS, and whenever a trade's symbol has no
mark yet, the batch revalues as update_portfolio does (fingerprints of the closes, then every holder of a
repriced symbol); in between it values with the marks it last saw, and the close table is read again only when
the stored marks change.
"""
import logging
import time
from dataclasses import dataclass, replace
from decimal import localcontext
from typing import NamedTuple

import pandas as pd
from sqlalchemy import bindparam, select, text, update

import batches
import closes
import db_config
import db_retry
import load_transactions
import update_portfolio
import validation
from schema import investors, load_batches, stocks, symbol_marks

logger = logging.getLogger(__name__)

LIVE_BATCH_SECONDS = 60  # one load_batches row per minute of live trades ...
LIVE_BATCH_TRADES = 10_000  # ... or per this many records, whichever comes first
REPRICE_SECONDS = 60  # how often a live batch looks for changed closes (update_portfolio.repriced_symbols)
NEW_TRADES_SQL = "WHERE t.batch_id = :live_batch_id AND t.source_line > :live_after_line"  # one call's trades


class LiveRecord(NamedTuple):
    """One incoming trade: its canonical fields as text (None when the message is not a trade at all), the raw
    message as kept for a reject, and why it is not a trade (None when fields is set)."""
    fields: dict
    raw: str
    problem: str = None
    redelivered: bool = False  # the broker delivered it before: a reject may be recorded already


class Outcome(NamedTuple):
    """What became of one record: status 'loaded', 'duplicate' or 'rejected', with the reason of a reject."""
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
    job: "SurveillanceJob"
    trades_applied: int = 0
    investors_valued: int = 0
    new_alerts: int = 0  # OVERSELL and CONCENTRATION


class SurveillanceJob(NamedTuple):
    """Lines after_line + 1 ... through_line of a live batch wait for surveillance; first_new is the earliest
    txn_time of their loaded trades (None: none loaded, only the stamp is due)."""
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
        self.closes_key, self.close_table = None, None
        self.repriced_at = None  # time.monotonic() of the last look for changed closes

    def apply(self, records):
        """Load, apply, value and surveil these records in one transaction (again on a deadlock); LiveResult."""
        with localcontext(prec=update_portfolio.DECIMAL_DIGITS):
            return db_retry.with_retries(lambda: self._apply_once(records), f"{self.source}: live batch")

    def _apply_once(self, records):
        with db_config.investors_transaction(self.engine, record_investor_ids(records)) as connection:
            now = batches.now()
            batch = self._batch_for(connection, now)
            summary = load_transactions.LoadSummary(self.source, batch.batch_id)
            outcomes = load_live_records(connection, records, batch, summary, self.source)
            result = LiveResult(outcomes, SurveillanceJob(batch.batch_id, batch.records, batch.records + len(records)))
            if summary.rows_loaded:
                self._apply_loaded(connection, batch, now, result)
            count_batch(connection, batch.batch_id, summary, now)
        self.batch = replace(batch, records=batch.records + len(records))
        return result

    def _batch_for(self, connection, now):
        """The open live batch, or a new one (inside the transaction) when it is full or a minute old."""
        batch = self.batch
        if batch is None or batch.records >= LIVE_BATCH_TRADES or time.monotonic() - batch.opened >= LIVE_BATCH_SECONDS:
            batch = OpenBatch(start_live_batch(connection, self.source, now), time.monotonic(), 0)
        return batch

    def _apply_loaded(self, connection, batch, now, result):
        """Apply the trades just loaded and value their investors."""
        new_trades = {"live_batch_id": batch.batch_id, "live_after_line": batch.records}
        investor_ids, first_new = loaded_investors(connection, new_trades)
        applied = update_portfolio.apply_selected_trades(connection, investor_ids, (NEW_TRADES_SQL, new_trades), now)
        scored, raised = self._value(connection, applied, now)
        result.job = result.job._replace(first_new=first_new)
        result.trades_applied, result.investors_valued = applied.trades, scored
        result.new_alerts = applied.alerts_raised + raised

    def _value(self, connection, applied, now):
        """Revalue and score the investors whose positions changed; (investors scored, new alerts)."""
        investor_ids = sorted({investor_id for investor_id, _ in applied.changed})
        params = update_portfolio.risk_parameters()
        marks = dict(connection.execute(select(symbol_marks.c.stock_symbol, symbol_marks.c.closes_digest)).all())
        unmarked = {symbol for _, symbol in applied.changed} - set(marks)
        if unmarked or self.repriced_at is None or time.monotonic() - self.repriced_at >= REPRICE_SECONDS:
            self.repriced_at, self.closes_key = time.monotonic(), None
            summary = update_portfolio.UpdateSummary()
            valued = update_portfolio.revalue_and_score(connection, params, now, applied, False, summary)
            return len(valued), summary.alerts_raised
        key = (params["today"], tuple(sorted(marks.items())))
        if key != self.closes_key:
            self.close_table = closes.close_table(closes.read_closes(connection, last_day=params["today"]))
            self.closes_key = key
        return update_portfolio.value_investors(connection, params, now, investor_ids, self.close_table)


def record_investor_ids(records):
    """The investor ids the records name (those that parse as integers): the partitions to lock."""
    found = set()
    for record in records:
        value = str((record.fields or {}).get("investor_id", "")).strip()
        if value.isascii() and value.isdigit() and len(value) < 19:
            found.add(int(value))
    return found


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
    number of its records, tells live_surveillance whether a stamp is still due)."""
    columns = load_batches.c
    connection.execute(update(load_batches).where(columns.batch_id == batch_id).values(
        rows_read=columns.rows_read + summary.rows_read, rows_loaded=columns.rows_loaded + summary.rows_loaded,
        rows_duplicate=columns.rows_duplicate + summary.rows_duplicate,
        rows_rejected=columns.rows_rejected + summary.rows_rejected,
        finished_at=now, applied_at=now, surveilled_at=None))


def load_live_records(connection, records, batch, summary, source):
    """Validate and insert the records as lines batch.records + 1, ... of the live batch; an Outcome each."""
    lines = range(batch.records + 1, batch.records + len(records) + 1)
    trades = pd.DataFrame([[str(record.fields.get(column, "")) for column in validation.TRADE_COLUMNS]
                           for record in records if record.fields is not None],
                          columns=list(validation.TRADE_COLUMNS), dtype=object)
    trades["line_number"] = [line for line, record in zip(lines, records) if record.fields is not None]
    trades["raw_record"] = [record.raw for record in records if record.fields is not None]
    malformed = load_transactions._rejects_frame(
        [(line, record.problem, record.raw) for line, record in zip(lines, records) if record.fields is None])
    chunk = load_transactions.prepare_chunk(trades, malformed, live_context(connection, records), batch.batch_id,
                                            connection.dialect.name)
    chunk.rejects, repeated = drop_recorded_rejects(connection, chunk.rejects, records, lines, source)
    rejects = load_transactions.store_chunk(connection, chunk, summary, method="small", line_numbers=False)
    summary.rows_duplicate += repeated  # read already: rows_read counts every record once
    return outcomes(connection, batch, lines, rejects)


def live_context(connection, records):
    """validation's context for these records: the investors and stocks among those they name."""
    ids = sorted(record_investor_ids(records))
    symbols = sorted({str(record.fields.get("stock_symbol", "")).strip().upper()
                      for record in records if record.fields is not None})
    known_ids = connection.execute(select(investors.c.investor_id).where(investors.c.investor_id.in_(ids))).scalars()
    known_symbols = connection.execute(select(stocks.c.stock_symbol).where(stocks.c.stock_symbol.in_(symbols)))
    return validation.make_context(known_ids, known_symbols.scalars(), batches.now())


RECORDED_REJECTS_SQL = text("""
SELECT r.raw_record
FROM rejected_transactions r
JOIN load_batches b ON b.batch_id = r.batch_id
WHERE b.source = :source AND r.raw_record IN :raw_records
""").bindparams(bindparam("raw_records", expanding=True))


def drop_recorded_rejects(connection, rejects, records, lines, source):
    """(rejects without those of redelivered records already recorded from this source, how many were dropped):
    a message delivered again after its reject was committed is counted once, then as a duplicate."""
    redelivered = {line for line, record in zip(lines, records) if record.redelivered}
    candidates = rejects.loc[rejects["line_number"].isin(redelivered)] if redelivered else rejects.iloc[:0]
    if candidates.empty:
        return rejects, 0
    raws = [load_transactions.stored_raw_record(raw) for raw in candidates["raw_record"]]
    recorded = set(connection.execute(RECORDED_REJECTS_SQL, {"source": source, "raw_records": raws}).scalars())
    again = candidates.index[[raw in recorded for raw in raws]]
    return rejects.drop(index=again), len(again)


def outcomes(connection, batch, lines, rejects):
    """An Outcome per line: rejected (with its reason), loaded (stored under this batch and line) or duplicate."""
    loaded = set(connection.execute(text(
        "SELECT t.source_line FROM transactions t " + NEW_TRADES_SQL),
        {"live_batch_id": batch.batch_id, "live_after_line": batch.records}).scalars())
    reasons = dict(zip(rejects["line_number"].tolist(), rejects["reason"].tolist()))
    return [Outcome("rejected", reasons[line]) if line in reasons
            else Outcome("loaded") if line in loaded else Outcome("duplicate") for line in lines]


def loaded_investors(connection, new_trades):
    """(ids of the investors of the trades just loaded, the earliest of those trades' txn_time as datetime)."""
    rows = connection.execute(text(
        "SELECT t.investor_id, MIN(t.txn_time) FROM transactions t " + NEW_TRADES_SQL + " GROUP BY t.investor_id"),
        new_trades).all()
    return sorted(row[0] for row in rows), min(pd.Timestamp(row[1]).to_pydatetime() for row in rows)

