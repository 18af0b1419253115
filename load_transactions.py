"""Load trade files into the database: validate, reject with reasons, de-duplicate, bulk load.

Third stage of the chain (after seed_investors.py, before update_portfolio.py). For each FILE (canonical or
legacy header, SPEC §3) it records one load_batches row; every good row is committed in one transaction with
the batch's counts, bad rows go to rejected_transactions with their line and reason, and a txn_ref already
loaded (or repeated in the file with the same values) is counted as a duplicate. A file whose SHA-256 was
already loaded is skipped at once. The prices file beside a trade file (market_prices.csv) is loaded too.
"""
import csv
import io
import logging
import os
import re
import multiprocessing
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from itertools import islice
from queue import Empty

from tqdm import tqdm

import numpy as np
import pandas as pd
from sqlalchemy import and_, bindparam, func, select, text, update

import bulk_insert
import cli
import constants
import db_config
import validation
from schema import investors, load_batches, market_prices, rejected_transactions, stocks, transactions

logger = logging.getLogger(__name__)

PRICES_FILE_NAME = "market_prices.csv"
LOGGED_REJECTS = 10  # rejects shown in the log per file; all are kept in rejected_transactions
MAX_REASON_LENGTH = 1000
FIRST_CHUNK_ROWS = 10_000
BACKGROUND_MIN_BYTES = 8 << 20  # files above 8 MB (about 130,000 trades) are parsed in a worker process


@dataclass
class LoadSummary:
    """What one load did; `skipped_batch` is the earlier batch when the file was already loaded."""
    source: str
    batch_id: int = None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_duplicate: int = 0
    rows_rejected: int = 0
    skipped_batch: int = None
    sample_rejects: list = field(default_factory=list)  # (line_number, reason) of the first rejects

    def line(self):
        name = os.path.basename(self.source) if self.source != "feed" else "feed"
        if self.skipped_batch is not None:
            return f"{name}: already loaded in batch {self.skipped_batch}, skipped"
        return (f"{name}: {self.rows_read} read, {self.rows_loaded} loaded, {self.rows_duplicate} duplicates, "
                f"{self.rows_rejected} rejected (batch {self.batch_id})")


# ---------------------------------------------------------------------------------------------- reading files

def read_layout(path):
    """The layout of a file from its header; InputError for a missing, unreadable or wrong file."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline()
    except FileNotFoundError:
        raise cli.InputError(f"{path}: no such file") from None
    except OSError as error:
        raise cli.InputError(f"{path}: cannot read: {error.strerror}") from None
    try:
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]), [])
    except UnicodeDecodeError:
        raise cli.InputError(f"{path}: line 1: header is not UTF-8 text") from None
    try:
        return validation.detect_layout(header, path)
    except ValueError as error:
        raise cli.InputError(str(error)) from None


def iter_batches(path, layout, sha256, chunk_rows=constants.LOAD_CHUNK_ROWS, on_progress=None):
    """Yield (trade rows as text cells with line_number and raw_record, malformed rows) per chunk of lines."""
    with open(path, "rb") as handle:
        handle.readline()
        line_number, size = 2, min(chunk_rows, FIRST_CHUNK_ROWS)  # a small first chunk starts the inserts sooner
        while lines := list(islice(handle, size)):
            size = chunk_rows
            batch, malformed = _parse_lines(lines, line_number, layout, sha256)
            line_number += len(lines)
            if on_progress:
                on_progress(sum(map(len, lines)))
            yield batch, malformed


def _parse_lines(lines, first_line_number, layout, sha256):
    """CSV-parse raw lines into (trade batch, rejects): pandas' C parser for the usual well-formed chunk,
    the csv module row by row when a chunk has short, blank or non-UTF-8 lines."""
    texts = _decoded(lines)
    frame = _read_well_formed(lines, texts, layout) if texts is not None else None
    if frame is None:
        return _parse_lines_one_by_one(lines, first_line_number, layout, sha256)
    cells = {index: frame[index].to_numpy() for index in layout.columns}
    numbers = range(first_line_number, first_line_number + len(texts))
    return _trade_batch(cells, numbers, texts, layout, sha256), _rejects_frame([])


def _read_well_formed(lines, texts, layout):
    """The chunk as a DataFrame of text if every line is a record of the header's width, else None."""
    try:
        frame = pd.read_csv(io.BytesIO(b"".join(lines)), header=None, names=range(layout.width), dtype=object,
                            na_filter=False, skip_blank_lines=False, engine="c")
    except (pd.errors.ParserError, ValueError):
        return None  # a line with more fields than the header, or a quoted field spanning lines
    if len(frame) != len(texts):
        return None
    # The C parser pads a short line with empty fields: re-count the fields of lines ending in an empty one.
    suspects = np.flatnonzero((frame[layout.width - 1] == "").to_numpy())
    if any(len(next(csv.reader([texts[row]]), [])) < layout.width for row in suspects):
        return None
    return frame


def _decoded(lines):
    """The lines as text without line endings, or None if the chunk is not all UTF-8."""
    try:
        texts = b"".join(lines).decode("utf-8").replace("\r\n", "\n").split("\n")
    except UnicodeDecodeError:
        return None
    if texts and texts[-1] == "" and lines[-1].endswith(b"\n"):
        texts.pop()
    return texts if len(texts) == len(lines) else None


def _parse_lines_one_by_one(lines, first_line_number, layout, sha256):
    """The slow path: rows of the wrong width or not UTF-8 become rejects; blank lines are ignored."""
    numbers, texts, rejects = [], [], []
    for number, raw in enumerate(lines, start=first_line_number):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            rejects.append((number, "record: is not UTF-8 text", raw.decode("utf-8", "replace").rstrip("\r\n")))
            continue
        if text.strip():
            numbers.append(number)
            texts.append(text)
    kept_numbers, kept_texts, rows = [], [], []
    for number, text, row in zip(numbers, texts, csv.reader(texts)):
        if len(row) <= max(layout.columns):
            rejects.append((number, f"record: has {len(row)} fields, too few for the header", text))
        else:
            kept_numbers.append(number)
            kept_texts.append(text)
            rows.append(row)
    cells = {index: [row[index] for row in rows] for index in layout.columns}
    return _trade_batch(cells, kept_numbers, kept_texts, layout, sha256), _rejects_frame(rejects)


def _trade_batch(cells, numbers, texts, layout, sha256):
    """Text cells (by column index) in canonical columns; a legacy row gets its derived txn_ref and txn_time."""
    names = validation.TRADE_COLUMNS if layout.kind == "canonical" else validation.LEGACY_COLUMNS
    batch = pd.DataFrame({name: pd.Series(cells[index], dtype=object) for name, index in zip(names, layout.columns)})
    batch["line_number"] = np.asarray(numbers, dtype=np.int64)
    batch["raw_record"] = pd.Series(texts, dtype=object)
    if layout.kind == "legacy":
        batch["txn_ref"] = [validation.legacy_txn_ref(sha256, n) for n in numbers]
        batch["txn_time"] = batch.pop("txn_date")
        batch.attrs["time_field"] = "txn_date"  # validation names the file's field and takes a bare date
    return batch


def _rejects_frame(rows):
    return pd.DataFrame(rows, columns=["line_number", "reason", "raw_record"])


# ------------------------------------------------------------------------------------------------ loading trades

def load_file(engine, path, progress=False, chunk_rows=constants.LOAD_CHUNK_ROWS, method=None):
    """Load one trade file as one batch; an already-loaded file (same SHA-256) is skipped."""
    layout = read_layout(path)
    if layout.kind == "prices":
        raise cli.InputError(f"{path}: is a prices file, not trades")
    sha256 = validation.file_sha256(path)
    earlier = find_loaded_batch(engine, sha256)
    if earlier is not None:
        return LoadSummary(path, skipped_batch=earlier)
    with _progress_bar(progress, os.path.getsize(path), os.path.basename(path)) as bar:
        chunks = iter_batches(path, layout, sha256, chunk_rows, on_progress=bar.update if bar else None)
        background = os.path.getsize(path) > BACKGROUND_MIN_BYTES
        return load_rows(engine, chunks, source=path, sha256=sha256, method=method, background=background)


def load_records(engine, records, source="feed"):
    """Load trade records (dicts with the canonical columns, values as text or numbers) as one batch."""
    batch = pd.DataFrame(
        [[str(record.get(column, "")) for column in validation.TRADE_COLUMNS] for record in records],
        columns=list(validation.TRADE_COLUMNS), dtype=object,
    )
    batch["line_number"] = range(1, len(batch) + 1)
    batch["raw_record"] = [",".join(row) for row in batch[list(validation.TRADE_COLUMNS)].itertuples(index=False)]
    return load_rows(engine, [(batch, _rejects_frame([]))], source=source)


def load_rows(engine, chunks, source, sha256=None, method=None, background=False):
    """Load chunks of (text rows, malformed rows) as one batch, committed in one transaction.

    background: prepare the chunks in a worker process (for large files: it overlaps with the inserts).
    On any failure nothing of the batch is kept and its load_batches row is marked failed with the reason.
    """
    started = datetime.now().replace(microsecond=0)
    summary = LoadSummary(source, start_batch(engine, source, sha256, started))
    try:
        with db_config.write_transaction(engine) as connection:
            context = validation.make_context(
                connection.execute(select(investors.c.investor_id)).scalars(),
                connection.execute(select(stocks.c.stock_symbol)).scalars(),
                started,
            )
            if not context.investor_ids or not context.symbols:
                logger.warning("%s: the database has no investors or no stocks, so every row will be rejected; "
                               "run seed_investors.py first", source)
            dialect = connection.dialect.name
            prepared = (prepare_chunk(batch, malformed, context, summary.batch_id, dialect)
                        for batch, malformed in chunks)
            for chunk in (in_background(prepared) if background else prepared):
                store_chunk(connection, chunk, summary, method)
            finish_batch(connection, summary)
    except BaseException as error:
        fail_batch(engine, summary.batch_id, error)
        raise
    return summary


@dataclass
class PreparedChunk:
    """A chunk after the CPU work: the rows to insert, later repeats of their refs, and the bad rows."""
    rows_read: int
    columns: list  # first occurrence of each valid txn_ref, as bulk_insert columns (plain lists: cheap to send)
    raw_records: list  # the lines of those rows
    repeats: pd.DataFrame  # valid rows whose txn_ref occurred earlier in the chunk
    rejects: pd.DataFrame
    bulk_text: str = None  # the rows as the dialect's bulk path takes them, when it takes text (MySQL)

    def firsts(self):
        """The rows to insert as a DataFrame like validation's output (built only when needed)."""
        firsts = pd.DataFrame(dict(zip(bulk_insert.INSERT_COLUMNS, self.columns)))
        return firsts.rename(columns={"source_line": "line_number"}).assign(
            price_value=firsts["price"].astype(float), raw_record=self.raw_records)


def prepare_chunk(batch, malformed, context, batch_id, dialect=None):
    """Validate a chunk and set aside repeats within it; no database access (may run in a worker process)."""
    valid, rejected = validation.validate_trades(batch, context)
    repeated = valid["txn_ref"].duplicated(keep="first").to_numpy()
    firsts = valid[~repeated]
    columns = bulk_insert.trade_columns(firsts, batch_id)
    return PreparedChunk(len(batch) + len(malformed), columns, firsts["raw_record"].tolist(), valid[repeated],
                         pd.concat([malformed, rejected], ignore_index=True),
                         bulk_insert.prepared_text(dialect, columns) if columns[0] else None)


def store_chunk(connection, chunk, summary, method=None):
    """Insert a prepared chunk inside the batch's transaction, classify what was not inserted, update summary.

    Every row not inserted (its txn_ref was stored already, by an earlier batch or earlier in this file) is
    compared with the stored trade: the same values make a duplicate, others a reject. Comparing with what is
    stored, never with another line of the file, makes the outcome independent of the chunk size.
    """
    inserted = bulk_insert.insert_columns(connection, chunk.columns, method, tsv=chunk.bulk_text)
    not_inserted = chunk.repeats
    if inserted < len(chunk.raw_records):
        not_inserted = pd.concat([skipped_rows(connection, chunk.firsts(), summary.batch_id), chunk.repeats])
    duplicates, conflicts = classify_against_stored(connection, not_inserted, summary.batch_id)
    rejects = pd.concat([chunk.rejects, conflicts], ignore_index=True).sort_values("line_number", kind="stable")
    store_rejects(connection, summary.batch_id, rejects)
    summary.rows_read += chunk.rows_read
    summary.rows_loaded += inserted
    summary.rows_duplicate += duplicates
    summary.rows_rejected += len(rejects)
    room = LOGGED_REJECTS - len(summary.sample_rejects)
    summary.sample_rejects += rejects[["line_number", "reason"]].head(room).values.tolist()


def in_background(items, depth=2):
    """Iterate `items` in a forked worker process up to `depth` ahead, so that parsing and validating the next
    chunks overlaps the database's work on this one (a thread would fight the driver for the GIL)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        yield from items
        return
    context = multiprocessing.get_context("fork")
    queue = context.Queue(maxsize=depth)
    worker = context.Process(target=_produce, args=(items, queue), name="load-prepare", daemon=True)
    worker.start()
    try:
        while True:
            try:
                kind, item = queue.get(timeout=1.0)
            except Empty:
                if not worker.is_alive():
                    raise cli.StageError(f"the parsing process died (exit code {worker.exitcode})") from None
                continue
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        if worker.is_alive():
            worker.terminate()
        worker.join()


def _produce(items, queue):
    """The worker process: send ('item', x) for each item, then ('done', None), or ('error', exception)."""
    try:
        for item in items:
            queue.put(("item", item))
        queue.put(("done", None))
    except BaseException as error:  # handed to the parent, which re-raises it
        queue.put(("error", error))


def skipped_rows(connection, firsts, batch_id):
    """The rows of `firsts` that the database did not insert (it held their txn_ref already)."""
    lines = firsts["line_number"]
    inserted_lines = set(connection.execute(
        select(transactions.c.source_line).where(and_(
            transactions.c.batch_id == batch_id, transactions.c.source_line.between(int(lines.min()), int(lines.max()))))
    ).scalars())
    return firsts[~lines.isin(inserted_lines).to_numpy()]


def classify_against_stored(connection, rows, batch_id):
    """(duplicates, rejects): each row against the stored trade with its txn_ref.

    Rows are first compared by a digest of their values computed by the database (two short columns read per
    row); only the rows that differ are read in full, to name the trade they conflict with.
    """
    if rows.empty:
        return 0, _rejects_frame([])
    stored_digests = fetch_value_digests(connection, rows["txn_ref"].unique().tolist())
    unexplained = rows[~rows["txn_ref"].isin(stored_digests.keys()).to_numpy()]
    if not unexplained.empty:
        first = unexplained.iloc[0]
        raise cli.StageError(f"line {first.line_number}: the database skipped txn_ref {first.txn_ref!r} "
                             f"but holds no trade with that ref; {len(unexplained)} such row(s), batch rolled back")
    same = np.array([stored_digests[ref] == digest for ref, digest in zip(rows["txn_ref"], value_digests(rows))],
                    dtype=bool)
    conflicts = rows[~same]
    holders = fetch_trades_by_ref(connection, conflicts["txn_ref"].unique().tolist()).set_index("txn_ref")  # rare
    holders = holders.loc[conflicts["txn_ref"]] if not conflicts.empty else holders
    reasons = [
        f"txn_ref: {ref!r} is a conflicting duplicate of line {line}" if holder_batch == batch_id
        else f"txn_ref: {ref!r} conflicts with loaded trade {txn_id} (batch {holder_batch}, line {line})"
        for ref, holder_batch, line, txn_id in zip(
            conflicts["txn_ref"], holders["batch_id"], holders["line_number"], holders["txn_id"])
    ]
    return int(same.sum()), _rejects_frame(list(zip(conflicts["line_number"], reasons, conflicts["raw_record"])))


# A trade's values as one text, the same from the database and from value_digests: the price with 4 decimals.
DIGEST_SQL = {
    "sqlite": "investor_id || ',' || stock_symbol || ',' || txn_type || ',' || quantity || ',' || "
              "printf('%.4f', price) || ',' || txn_time",
    "default": "CONCAT_WS(',', investor_id, stock_symbol, txn_type, quantity, CAST(price AS DECIMAL(18, 4)), txn_time)",
}


def value_digests(rows):
    """The digest of each validated row's values (see DIGEST_SQL)."""
    return [f"{investor_id},{symbol},{txn_type},{quantity},{price:.4f},{txn_time}" for investor_id, symbol, txn_type,
            quantity, price, txn_time in zip(rows["investor_id"], rows["stock_symbol"], rows["txn_type"],
                                             rows["quantity"], rows["price_value"], rows["txn_time"])]


def fetch_value_digests(connection, refs):
    """{txn_ref: digest of the stored trade's values} for the stored trades with these refs."""
    digest = DIGEST_SQL.get(connection.dialect.name, DIGEST_SQL["default"])
    statement = text(f"SELECT txn_ref, {digest} FROM transactions WHERE txn_ref IN :refs").bindparams(
        bindparam("refs", expanding=True))
    slice_size = bulk_insert.LOOKUP_SLICE if connection.dialect.name == "sqlite" else 10 * bulk_insert.LOOKUP_SLICE
    digests = {}
    for start in range(0, len(refs), slice_size):
        digests.update(map(tuple, connection.execute(statement, {"refs": refs[start:start + slice_size]})))
    return digests


STORED_TRADE_SQL = text(
    "SELECT txn_ref, txn_id, batch_id, source_line AS line_number FROM transactions WHERE txn_ref IN :refs"
).bindparams(bindparam("refs", expanding=True))


def fetch_trades_by_ref(connection, refs):
    """txn_id, batch_id and line_number (0 when unknown) of the stored trades with these refs."""
    rows = []
    for start in range(0, len(refs), bulk_insert.LOOKUP_SLICE):
        rows += map(tuple, connection.execute(STORED_TRADE_SQL, {"refs": refs[start:start + bulk_insert.LOOKUP_SLICE]}))
    stored = pd.DataFrame.from_records(rows, columns=["txn_ref", "txn_id", "batch_id", "line_number"])
    stored["line_number"] = pd.to_numeric(stored["line_number"]).fillna(0).astype(np.int64)
    return stored


def store_rejects(connection, batch_id, rejects):
    """Keep every rejected row with its line and reason."""
    if rejects.empty:
        return
    connection.execute(rejected_transactions.insert(), [
        {"batch_id": batch_id, "line_number": int(line), "reason": str(reason)[:MAX_REASON_LENGTH], "raw_record": raw}
        for line, reason, raw in rejects[["line_number", "reason", "raw_record"]].itertuples(index=False)
    ])


# ------------------------------------------------------------------------------------------------ batch rows

def find_loaded_batch(engine, sha256):
    """The first batch that loaded a file with this SHA-256 completely, or None."""
    with engine.connect() as connection:
        return connection.execute(select(func.min(load_batches.c.batch_id)).where(and_(
            load_batches.c.file_sha256 == sha256, load_batches.c.status == "loaded"))).scalar()


def start_batch(engine, source, sha256, started):
    """Record a running batch, committed at once so that a crash leaves a trace; return its id."""
    with db_config.write_transaction(engine) as connection:
        result = connection.execute(load_batches.insert().values(
            source=source[:500], file_sha256=sha256, started_at=started, status="running",
            rows_read=0, rows_loaded=0, rows_duplicate=0, rows_rejected=0))
        return result.inserted_primary_key[0]


def finish_batch(connection, summary):
    """Mark the batch loaded with its counts, inside the load's transaction."""
    connection.execute(update(load_batches).where(load_batches.c.batch_id == summary.batch_id).values(
        status="loaded", finished_at=datetime.now().replace(microsecond=0), rows_read=summary.rows_read,
        rows_loaded=summary.rows_loaded, rows_duplicate=summary.rows_duplicate, rows_rejected=summary.rows_rejected))


def stamp_batches(connection, batch_ids, column, when):
    """Set a later stage's mark on these batches (applied_at by update_portfolio, surveilled_at by surveillance)."""
    for start in range(0, len(batch_ids), bulk_insert.LOOKUP_SLICE):
        connection.execute(update(load_batches).where(
            load_batches.c.batch_id.in_(batch_ids[start:start + bulk_insert.LOOKUP_SLICE])).values({column: when}))


def fail_batch(engine, batch_id, error):
    """Mark the batch failed with the reason; the load's own transaction has been rolled back."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        with db_config.write_transaction(engine) as connection:
            connection.execute(update(load_batches).where(load_batches.c.batch_id == batch_id).values(
                status="failed", finished_at=datetime.now().replace(microsecond=0), error=reason[:1000]))
    except Exception as mark_error:  # the original error matters more; say why the mark failed too
        logger.error("could not mark batch %s failed: %s", batch_id, mark_error)


def _progress_bar(enabled, total, name):
    if not enabled:
        return nullcontext(None)
    return tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)


# ------------------------------------------------------------------------------------------------ prices

@dataclass
class PricesSummary:
    """What loading one prices file did."""
    source: str
    rows_read: int = 0
    rows_new: int = 0
    rows_changed: int = 0
    rejects: list = field(default_factory=list)  # (line_number, reason)

    batch_id = None  # prices are not a trade batch; rejects are only logged

    @property
    def rows_rejected(self):
        return len(self.rejects)

    @property
    def sample_rejects(self):
        return self.rejects[:LOGGED_REJECTS]

    def line(self):
        return (f"{os.path.basename(self.source)}: {self.rows_read} daily closes read, {self.rows_new} new, "
                f"{self.rows_changed} changed, {len(self.rejects)} rejected")


def load_prices_file(engine, path):
    """Upsert the daily closes of a prices file (stock_symbol,price_date,close_price) into market_prices."""
    layout = read_layout(path)
    if layout.kind != "prices":
        raise cli.InputError(f"{path}: header is not {','.join(validation.PRICE_COLUMNS)}")
    summary = PricesSummary(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    summary.rows_read = len(rows)
    with db_config.write_transaction(engine) as connection:
        symbols = set(connection.execute(select(stocks.c.stock_symbol)).scalars())
        closes = {}
        for line_number, row in rows:
            parsed = parse_close(row, layout, symbols)
            if isinstance(parsed, str):
                summary.rejects.append((line_number, parsed))
            else:
                closes[parsed[:2]] = parsed[2]
        summary.rows_new, summary.rows_changed = upsert_closes(connection, closes)
    return summary


def parse_close(row, layout, symbols):
    """(stock_symbol, price_date, close_price as Decimal) from a row, or the reason it is bad."""
    if len(row) <= max(layout.columns):
        return f"record: has {len(row)} fields, too few for the header"
    symbol, day, close = (row[i].strip() for i in layout.columns)
    symbol = symbol.upper()
    if symbol not in symbols:
        return f"stock_symbol: {symbol!r} is not a known stock"
    try:
        day = date.fromisoformat(day)
    except ValueError:
        return f"price_date: {day!r} is not a real date YYYY-MM-DD"
    if not re.fullmatch(validation.PLAIN_DECIMAL, close) or Decimal(close) <= 0 or Decimal(close) >= validation.MAX_PRICE:
        return f"close_price: {close!r} is not a plain decimal > 0"
    return symbol, day, Decimal(close).quantize(Decimal("0.0001"))


def upsert_closes(connection, closes):
    """Insert new closes and update changed ones; return (new, changed)."""
    existing = {
        (symbol, day if isinstance(day, date) else date.fromisoformat(day)): Decimal(str(close)).quantize(Decimal("0.0001"))
        for symbol, day, close in connection.execute(select(
            market_prices.c.stock_symbol, market_prices.c.price_date, market_prices.c.close_price))
    }
    new = [{"stock_symbol": s, "price_date": d, "close_price": c} for (s, d), c in closes.items() if (s, d) not in existing]
    changed = [{"symbol": s, "day": d, "close": c} for (s, d), c in closes.items()
               if (s, d) in existing and existing[(s, d)] != c]
    if new:
        connection.execute(market_prices.insert(), new)
    if changed:
        connection.execute(update(market_prices).where(and_(
            market_prices.c.stock_symbol == bindparam("symbol"), market_prices.c.price_date == bindparam("day")
        )).values(close_price=bindparam("close")), changed)
    return len(new), len(changed)


# ------------------------------------------------------------------------------------------------ command line

def plan_files(paths):
    """The files to load in order: each directory's prices file first (once), then the given files."""
    planned = []
    for path in paths:
        beside = os.path.join(os.path.dirname(path), PRICES_FILE_NAME)
        if os.path.basename(path) != PRICES_FILE_NAME and os.path.exists(beside) and beside not in planned:
            planned.append(beside)
        if path not in planned:
            planned.append(path)
    return planned


def load_paths(engine, paths, progress=False):
    """Load every file, reporting each; a file with bad input is reported and the rest still load.

    Returns the exit code: 0, or 2 if any file was refused (missing, unreadable, wrong header).
    """
    code = cli.EXIT_OK
    for path in plan_files(paths):
        try:
            summary = (load_prices_file(engine, path) if read_layout(path).kind == "prices"
                       else load_file(engine, path, progress))
        except cli.InputError as error:
            print(f"error: load_transactions: {error}", file=sys.stderr)
            code = cli.EXIT_USAGE
            continue
        report(summary)
    return code


def log_rejects(summary):
    """Log the first rejects of a load with file and line, and where the rest are."""
    for line_number, reason in summary.sample_rejects:
        logger.warning("%s:%s: %s", summary.source, line_number, reason)
    if summary.rows_rejected > len(summary.sample_rejects):
        logger.warning("%s: all %d rejected rows are in rejected_transactions (batch %s)",
                       summary.source, summary.rows_rejected, summary.batch_id)


def report(summary):
    """Log the first rejects, then print the summary line."""
    log_rejects(summary)
    print(summary.line())


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("files", nargs="*", metavar="FILE", default=["transactions.csv"],
                        help="trade files to load (default: transactions.csv); a prices file is loaded as prices")
    args = parser.parse_args(argv)
    cli.setup_logging(args)

    def work():
        engine = db_config.get_engine(args.database_url)
        return load_paths(engine, args.files, cli.progress_enabled(args))

    return cli.run(work, args, "load_transactions")


if __name__ == "__main__":
    sys.exit(main())
