"""Load trade files into the database: validate, reject with reasons, de-duplicate, bulk load.

Third stage of the chain (after seed_investors.py, before update_portfolio.py). For each FILE (canonical or
legacy header, with an optional fee column, docs/file-formats.md) it records one load_batches row; every good row
is committed in one transaction with the batch's counts, bad rows go to rejected_transactions with their line and
reason, and a txn_ref already loaded (or repeated in the file with the same values, fee included) is counted as a
duplicate. A file whose SHA-256 was already loaded is skipped at once. The prices file (market_prices.csv) and the
corporate actions file (corporate_actions.csv, docs/corporate-actions.md) beside a trade file are loaded first.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import csv
import ctypes
import functools
import hashlib
import io
import logging
import os
import re
import multiprocessing
import pickle
import signal
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from queue import Empty, Full

from tqdm import tqdm

import numpy as np
import pandas as pd
from sqlalchemy import and_, bindparam, select, text

import batches
import bulk_insert
import cli
import constants
import corporate_actions
import db_config
import db_retry
import dialects
import plain_trades
import staging
import validation
from schema import investors, loaded_chunks, market_prices, rejected_transactions, stocks, transactions

logger = logging.getLogger(__name__)

PRICES_FILE_NAME = "market_prices.csv"
ACTIONS_FILE_NAME = "corporate_actions.csv"
BESIDE_FILE_NAMES = (PRICES_FILE_NAME, ACTIONS_FILE_NAME)  # loaded before the trade file they sit beside
LOGGED_REJECTS = 10  # rejects shown in the log per file; all are kept in rejected_transactions
MAX_REASON_LENGTH = 1000
FIRST_CHUNK_ROWS = 10_000
MAX_RECORD_LINES = 10  # a quoted field may carry line breaks, within this many lines of one record
MAX_LINE_BYTES = 1 << 20  # a longer line is one reject, read in pieces: memory stays bounded by the chunk
MAX_FIELD_CHARS = MAX_LINE_BYTES * MAX_RECORD_LINES  # the csv module's limit, never the reason for a reject
UPSERT_ROWS = 5_000
MAX_RAW_RECORD_CHARS = 10_000  # a rejected record is kept up to this length, with a note of its full length

csv.field_size_limit(MAX_FIELD_CHARS)
WORKER_STOP_SECONDS = 5
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

    def where_rejects_are(self):
        return f"all are in rejected_transactions (batch {self.batch_id})"

    def line(self):
        name = os.path.basename(self.source) if self.source != "feed" else "feed"
        if self.skipped_batch is not None:
            return f"{name}: already loaded in batch {self.skipped_batch}, skipped"
        return (f"{name}: {self.rows_read} read, {self.rows_loaded} loaded, "
                f"{cli.counted(self.rows_duplicate, 'duplicate')}, {self.rows_rejected} rejected "
                f"(batch {self.batch_id})")


# ---------------------------------------------------------------------------------------------- reading files

def read_layout(path, warn=True):
    """The layout of a file from its header; InputError for a missing, unreadable or wrong file. warn: log a
    column that looks like a fee under another name."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(MAX_LINE_BYTES + 1)  # a file without line breaks is not read whole
    except FileNotFoundError:
        raise cli.InputError(f"{path}: no such file") from None
    except OSError as error:
        raise cli.InputError(f"{path}: cannot read: {error.strerror}") from None
    if len(first) > MAX_LINE_BYTES:
        raise cli.InputError(f"{path}: line 1: the header is longer than {MAX_LINE_BYTES:,} bytes (is this a CSV "
                             "file?)")
    try:
        header = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise cli.InputError(f"{path}: line 1: header is not UTF-8 text") from None
    if not header.strip():
        raise cli.InputError(f"{path}: " + ("is empty" if not first else "line 1: the header is blank"))
    try:
        layout = validation.detect_layout(header, path)
    except ValueError as error:
        raise cli.InputError(str(error)) from None
    if warn:
        _warn_of_unread_fees(path, header, layout)
    return layout


FEE_LIKE_COLUMNS = {"fees", "commission", "commissions", "fee_amount"}


def _warn_of_unread_fees(path, header, layout):
    """A trade file with a column that looks like a fee under another name: its values are not read."""
    names = {name.strip().lower() for name in header.split(layout.delimiter)}
    unread = sorted(names & FEE_LIKE_COLUMNS)
    if layout.kind in ("canonical", "legacy") and "fee" not in layout.names and unread:
        logger.warning("%s: column(s) %s are not read: the fee column must be named fee (these trades load with "
                       "fee 0)", path, ", ".join(unread))


LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")  # a physical line with its ending, or the file's last line without one
NEWLINE = ord("\n")
READ_BYTES = 1 << 20  # the file is read in blocks of this size


class Chunk:
    """Physical lines of a file (bytes with their line endings), the first numbered first_number: one block of bytes
    as read, split into `lines` only when asked; a line over MAX_LINE_BYTES is kept cut, its full length in
    `overlong` by its position."""

    def __init__(self, first_number):
        self.first_number, self.overlong, self.data, self.count, self.split = first_number, {}, b"", 0, None

    @property
    def lines(self):
        """The lines as a list, made on first use (read_record may append lines from past the chunk)."""
        if self.split is None:
            self.split, self.data = LINE.findall(self.data), None
        return self.split

    def __len__(self):
        return self.count if self.split is None else len(self.split)

    def add(self, block, count):
        """Append `count` whole lines read as one block of bytes."""
        if self.split is None:
            self.data, self.count = self.data + block, self.count + count
        else:
            self.split += LINE.findall(block)

    def block(self):
        """The lines as one block of bytes."""
        return self.data if self.split is None else b"".join(self.split)


class PhysicalLines:
    """The lines of an open file, taken a chunk at a time, or one more for a record that runs past its chunk. The
    file is read in blocks: `pending` holds the bytes read past the lines taken."""

    def __init__(self, handle, first_number):
        self.handle, self.next_number, self.pending = handle, first_number, b""

    def take(self, count):
        """The next `count` lines (fewer at the end) as a Chunk, or None when the file is done."""
        chunk = Chunk(self.next_number)
        while len(chunk) < count:
            block, taken = self._whole_lines(count - len(chunk))
            chunk.add(block, taken)
            self.next_number += taken
            if len(chunk) < count and not self.extend(chunk):  # the end, else a line over the limit is next
                break
        return chunk if len(chunk) else None

    def extend(self, chunk):
        """Append the file's next line to `chunk`; False at the end of the file. A line over MAX_LINE_BYTES is
        read on in pieces and kept cut, so that no line costs more memory than that."""
        line = self._readline(MAX_LINE_BYTES)
        if not line:
            return False
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            chunk.overlong[len(chunk.lines)] = len(line) + self._skip_rest_of_line()
            line = line[:MAX_RAW_RECORD_CHARS]
        chunk.lines.append(line)
        self.next_number += 1
        return True

    def _whole_lines(self, wanted):
        """(block of bytes, count): up to `wanted` next lines, none of MAX_LINE_BYTES or more without its ending;
        it stops before such a line (extend reads it in pieces)."""
        data, at_end = self._read_ahead(wanted)
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == NEWLINE) + 1
        if at_end and len(data) > (ends[-1] if len(ends) else 0):
            ends = np.append(ends, len(data))  # the last line, without a line ending
        lengths = np.diff(ends, prepend=0) - (np.frombuffer(data, np.uint8)[ends - 1] == NEWLINE)
        over = np.flatnonzero(lengths >= MAX_LINE_BYTES)
        count = min(wanted, len(ends), over[0] if len(over) else wanted)
        cut = int(ends[count - 1]) if count else 0
        self.pending = data[cut:]
        return data[:cut], count

    def _read_ahead(self, wanted):
        """(pending bytes and more read: at least `wanted` lines, or a line of MAX_LINE_BYTES, or all that is left,
        the end of the file reached)."""
        blocks, lines = [self.pending], self.pending.count(b"\n")
        tail = len(self.pending) - self.pending.rfind(b"\n") - 1  # bytes of the unfinished line
        while lines < wanted and tail < MAX_LINE_BYTES:
            block = self.handle.read(READ_BYTES)
            if not block:
                return b"".join(blocks), True
            blocks.append(block)
            lines += block.count(b"\n")
            tail = tail + len(block) if b"\n" not in block else len(block) - block.rfind(b"\n") - 1
        return b"".join(blocks), False

    def _readline(self, limit):
        """handle.readline(limit), the bytes read ahead first."""
        end = self.pending.find(b"\n", 0, limit)
        if end >= 0 or len(self.pending) >= limit:
            size = end + 1 if end >= 0 else limit
            line, self.pending = self.pending[:size], self.pending[size:]
            return line
        line, self.pending = self.pending, b""
        return line + self.handle.readline(limit - len(line))

    def _skip_rest_of_line(self):
        """Read past the rest of the current line; return its length in bytes."""
        length = 0
        while piece := self._readline(MAX_LINE_BYTES):
            length += len(piece)
            if piece.endswith(b"\n"):
                break
        return length


def iter_batches(path, layout, sha256, chunk_rows=constants.LOAD_CHUNK_ROWS, on_progress=None):
    """Yield per chunk of lines (trade rows as text cells with line_number and raw_record, malformed rows), or a
    PlainChunk that as_frames turns into them."""
    with open(path, "rb") as handle:
        handle.readline()
        # small chunks first, each twice the last up to chunk_rows: the database starts soon and, while it stores
        # one chunk, the workers prepare the next (parsing is over twice as fast as storing)
        lines, size = PhysicalLines(handle, 2), min(chunk_rows, FIRST_CHUNK_ROWS)
        while chunk := lines.take(size):
            size = min(chunk_rows, 2 * size)
            parsed = parse_chunk(chunk, lines, layout, sha256)
            if on_progress:
                on_progress(sum(map(len, chunk.lines)) if chunk.data is None else len(chunk.data))
            yield parsed


def parse_chunk(chunk, lines, layout, sha256):
    """CSV-parse a chunk into (trade batch, rejects), record by record with the csv module, or, for the usual chunk
    of simple lines, into a PlainChunk that the validating process splits into cells (bytes cross cheaply)."""
    data = None if chunk.overlong else _plain_data(chunk.block(), layout)
    if data is None:
        return _parse_records(chunk, lines, layout, sha256)
    return PlainChunk(data, chunk.first_number, len(chunk), layout, sha256, chunk_digest(layout, data))


def chunk_digest(layout, data):
    """The sha256 of a plain chunk's bytes and of the layout they are read by: the same digest, the same rows."""
    return hashlib.sha256(repr(tuple(layout)).encode() + b"\0" + data).hexdigest()


@dataclass
class PlainChunk:
    """Lines that are printable ASCII without quotes and of the header's width: splitting on the delimiter is the
    whole CSV parse (pandas' C parser does it)."""
    data: bytes
    first_number: int
    count: int
    layout: validation.FileLayout
    sha256: str
    digest: str = None  # chunk_digest

    def frames(self):
        """(trade batch, rejects) like the other chunks'."""
        frame = pd.read_csv(io.BytesIO(self.data), header=None, names=range(self.layout.width), dtype=object,
                            na_filter=False, skip_blank_lines=False, quoting=csv.QUOTE_NONE, sep=self.layout.delimiter,
                            engine="c")
        numbers = range(self.first_number, self.first_number + self.count)
        return self._batch({index: frame[index].to_numpy() for index in self.layout.columns}, numbers,
                           self.texts()), _rejects_frame([])

    def texts(self):
        """The lines as text, without their endings."""
        return self.data.decode("ascii").replace("\r\n", "\n").split("\n")[:self.count]

    def batch_of(self, rows, texts):
        """The trade batch of some of the lines (positions `rows`; texts: self.texts()), split on the delimiter."""
        lines = [texts[row] for row in rows]
        fields = [line.split(self.layout.delimiter) for line in lines]
        cells = {index: [cells[index] for cells in fields] for index in self.layout.columns}
        return self._batch(cells, self.first_number + np.asarray(rows, dtype=np.int64), lines)

    def _batch(self, cells, numbers, texts):
        batch = _trade_batch(cells, numbers, texts, self.layout, self.sha256)
        batch.attrs["printable_ascii"] = True  # validation may skip that check
        batch.attrs["trimmed"] = not _has_edge_spaces(self.data, self.layout.delimiter.encode())  # ... and this
        return batch


@dataclass
class KnownChunk:
    """A plain chunk whose digest is in loaded_chunks: batch batch_id inserted every line of the same bytes, read
    by the same layout. While that batch holds all the trades it loaded (nobody deleted any by hand), every line
    is a trade stored with the same values: duplicates, counted without validating or looking them up."""
    plain: PlainChunk
    batch_id: int


def _has_edge_spaces(data, delimiter):
    """May a cell of these plain lines (no tabs) start or end with a space?"""
    return data.startswith(b" ") or data.endswith(b" ") or any(
        pair in data for pair in (b" " + delimiter, delimiter + b" ", b" \r", b" \n", b"\n "))


NOT_PLAIN = bytes(range(0x20)).replace(b"\n", b"").replace(b"\r", b"") + b'"' + bytes(range(0x7f, 0x100))


def _plain_data(data, layout):
    """The chunk's bytes if every line is printable ASCII without quotes and has exactly the header's width, so
    that splitting on the delimiter is the whole CSV parse; else None."""
    if len(data.translate(None, NOT_PLAIN)) != len(data) or data.count(b"\r") != data.count(b"\r\n"):
        return None
    return data if _every_line_holds(data, ord(layout.delimiter), layout.width - 1) else None


def _every_line_holds(data, byte, count):
    """Does every line of data hold `byte` exactly `count` times? (Counted per line, not in all: a line with one
    too many and another with one too few are both caught.)"""
    codes = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(codes == NEWLINE)
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    before = np.searchsorted(np.flatnonzero(codes == byte), ends)  # the bytes before each line's end
    return bool(np.all(np.diff(before, prepend=0) == count))


@dataclass
class Record:
    """One record of a file: its first line, how many lines it spans, its text, and its fields or problem."""
    line_number: int
    line_count: int
    raw: str
    fields: list = None
    problem: str = None


def _parse_records(chunk, lines, layout, sha256):
    """The slow path: records one by one; blank lines are ignored, bad records become rejects."""
    numbers, texts, rows, rejects = [], [], [], []
    for record in chunk_records(chunk, lines, layout):
        if record.problem:
            rejects.append((record.line_number, record.problem, record.raw))
        elif record.fields is not None:
            numbers.append(record.line_number)
            texts.append(record.raw)
            rows.append(record.fields)
    cells = {index: [row[index] for row in rows] for index in layout.columns}
    return _trade_batch(cells, numbers, texts, layout, sha256), _rejects_frame(rejects)


def chunk_records(chunk, lines, layout):
    """The records of a chunk, in order; the last one may take lines past the chunk's end (see read_record)."""
    position = 0
    while position < len(chunk.lines):
        record = read_record(chunk, position, lines, layout)
        position += record.line_count
        yield record


class _LineBreaksRecord(Exception):
    """A line that a record would continue on cannot be read (not UTF-8, a bare carriage return)."""


def read_record(chunk, position, lines, layout):
    """The record starting at chunk.lines[position]. A quoted field may carry line breaks for up to
    MAX_RECORD_LINES lines, pulled from the file past the chunk's end if need be; a record that cannot be read
    is one reject of its first line, and the lines after it are read again as records of their own."""
    number = chunk.first_number + position
    if position in chunk.overlong:
        length = chunk.overlong[position]
        kept = chunk.lines[position][:MAX_RAW_RECORD_CHARS - 100].decode("utf-8", "replace")
        return Record(number, 1, f"{kept}… [cut: {length:,} bytes in all]",
                      problem=f"record: the line is {length:,} bytes long, over the limit of {MAX_LINE_BYTES:,}")
    text, problem = _line_text(chunk.lines[position])
    if problem or not text.strip():
        return Record(number, 1, text, problem=problem)
    consumed = [chunk.lines[position]]

    def record_lines():
        yield text + "\n"
        while len(consumed) < MAX_RECORD_LINES:
            index = position + len(consumed)
            if index == len(chunk.lines) and not lines.extend(chunk):
                return
            continuation, trouble = _line_text(chunk.lines[index])
            if index in chunk.overlong:
                trouble = f"is over {MAX_LINE_BYTES:,} bytes long"
            if trouble:
                raise _LineBreaksRecord(trouble.removeprefix("record: "))
            consumed.append(chunk.lines[index])
            yield continuation + "\n"

    reader = csv.reader(record_lines(), delimiter=layout.delimiter, strict=True)
    try:
        fields = next(reader)
    except csv.Error as error:
        return Record(number, 1, text, problem=f"record: {_csv_problem(error)}")
    except _LineBreaksRecord as error:
        return Record(number, 1, text, problem=f"record: a quoted field runs on to a line that {error}")
    raw = b"".join(consumed).decode("utf-8").rstrip("\r\n")
    return Record(number, len(consumed), raw, fields, _width_problem(fields, layout))


def _line_text(line):
    """(the line as text without its ending, None), or (its text with U+FFFD for bad bytes, the problem)."""
    body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("utf-8", "replace"), "record: is not UTF-8 text"
    if "\r" in text:
        return text, "record: holds a carriage return inside the line"
    return text, None


def _csv_problem(error):
    """Why the csv module could not read a record, in the user's words."""
    message = str(error)
    if "unexpected end of data" in message:
        return f"a quoted field is not closed (within {MAX_RECORD_LINES} lines)"
    return f"is not valid CSV ({message})"


def _width_problem(fields, layout):
    """Why a record's number of fields does not fit the header, or None. Empty fields past the header's width
    (the trailing commas spreadsheets write) are ignored; anything else past it makes the record a reject."""
    if len(fields) > layout.width and any(field.strip() for field in fields[layout.width:]):
        return f"record: has {len(fields)} fields, the header has {layout.width}"
    if len(fields) < layout.width:  # missing fields, even of ignored columns: a line cut short
        return f"record: has {len(fields)} fields, too few for the header"
    return None


def _trade_batch(cells, numbers, texts, layout, sha256):
    """Text cells (by column index) in canonical columns; a legacy row gets its derived txn_ref and txn_time."""
    batch = pd.DataFrame({name: pd.Series(cells[index], dtype=object)
                          for name, index in zip(layout.names, layout.columns)})
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

def load_path(engine, path, progress=False, again=False):
    """Load a trade file, a prices file or a corporate actions file, by its header; a trade file refused whole is
    recorded as a failed batch."""
    layout = read_offered_layout(engine, path)
    if layout.kind == "prices":
        return load_prices_file(engine, path, layout)
    if layout.kind == "actions":
        return corporate_actions.load_actions_file(engine, path, layout)
    return load_file(engine, path, progress, layout=layout, again=again)


def read_offered_layout(engine, path):
    """read_layout, recording a file that exists but is refused (bad header, not text) as a failed batch."""
    try:
        return read_layout(path)
    except cli.InputError as error:
        if os.path.isfile(path):
            batches.record_refused(engine, path, _sha256_or_none(path), str(error))
        raise


def _sha256_or_none(path):
    try:
        return validation.file_sha256(path)
    except OSError:
        return None


def load_file(engine, path, progress=False, chunk_rows=constants.LOAD_CHUNK_ROWS, method=None, layout=None,
              again=False):
    """Load one trade file as one batch. A file whose SHA-256 was loaded before is skipped, unless `again`
    (--retry-rejects): then rows loaded before count as duplicates and rows rejected before are checked again."""
    layout = layout or read_offered_layout(engine, path)
    if layout.kind in ("prices", "actions"):
        raise cli.InputError(f"{path}: is a {'prices' if layout.kind == 'prices' else 'corporate actions'} file, "
                             "not trades")
    sha256 = validation.file_sha256(path)
    earlier = batches.find_loaded_batch(engine, sha256)
    if earlier is not None and not again:
        return LoadSummary(path, skipped_batch=earlier)
    require_reference_data(engine, path, sha256)
    with _progress_bar(progress, os.path.getsize(path), os.path.basename(path)) as bar:
        def chunks():
            if bar:
                bar.reset()
            yield from iter_batches(path, layout, sha256, chunk_rows, on_progress=bar.update if bar else None)
            require_unchanged(path, sha256)

        background = os.path.getsize(path) > BACKGROUND_MIN_BYTES
        return load_rows(engine, chunks, source=path, sha256=sha256, method=method, background=background)


def require_unchanged(path, sha256):
    """Refuse a file whose bytes changed while it was read (a writer still at work, a copy over it): the batch is
    recorded under the SHA-256 of what was there before, so loading other bytes would mark them loaded wrongly."""
    if validation.file_sha256(path) != sha256:
        raise cli.InputError(f"{path}: the file changed while it was being loaded; nothing of it was kept: load it "
                             "again once it is complete")


def require_reference_data(engine, path, sha256):
    """Refuse (exit 2, recorded as a failed batch) a load into a database without investors or stocks: every
    row would be rejected, and the file recorded as loaded could not be loaded again after seeding."""
    with engine.connect() as connection:
        has_investors = connection.execute(select(investors.c.investor_id).limit(1)).first() is not None
        has_stocks = connection.execute(select(stocks.c.stock_symbol).limit(1)).first() is not None
    if not (has_investors and has_stocks):
        reason = (f"{path}: the database has no {'investors' if not has_investors else 'stocks'}; "
                  "run seed_investors.py first (nothing was loaded)")
        batches.record_refused(engine, path, sha256, reason)
        raise cli.InputError(reason)


def load_records(engine, records, source="feed"):
    """Load trade records (dicts with the canonical columns and optionally `fee`, values as text or numbers; a fee
    of None is no fee) as one batch. raw_record is the values joined by commas, the fee last when any record has
    one."""
    columns = validation.RECORD_COLUMNS if any("fee" in record for record in records) else validation.TRADE_COLUMNS
    batch = pd.DataFrame([[_record_text(record, column) for column in columns] for record in records],
                         columns=list(columns), dtype=object)
    batch["line_number"] = range(1, len(batch) + 1)
    batch["raw_record"] = [",".join(row) for row in batch[list(columns)].itertuples(index=False)]
    return load_rows(engine, lambda: [(batch, _rejects_frame([]))], source=source)


def _record_text(record, column):
    """A record's value as the text cell validation takes; a missing or None fee is the empty cell (fee 0)."""
    value = record.get(column, "")
    return "" if value is None and column == "fee" else str(value)


def load_rows(engine, make_chunks, source, sha256=None, method=None, background=False):
    """Load the chunks of (text rows, malformed rows) that make_chunks() yields as one batch, in one transaction.

    A deadlock or lock wait (two loaders at once) rolls the transaction back and it runs again from the first
    chunk (db_retry). background: prepare the chunks in a worker process (for large files: it overlaps with the
    inserts). On failure nothing of the batch is kept and its load_batches row is marked failed with the reason.
    """
    batches.recover_stale_batches(engine)
    bulk_insert.remove_stale_temp_files()
    started = batches.now()
    batch_id = batches.start_batch(engine, source, sha256, started)
    try:
        return db_retry.with_retries(
            lambda: load_batch(engine, LoadSummary(source, batch_id), make_chunks(), started, method, background),
            f"{source}: load")
    except BaseException as error:
        batches.fail_batch(engine, batch_id, error)
        raise


def load_batch(engine, summary, chunks, started, method=None, background=False):
    """One attempt at loading a batch's chunks, committed with the batch's counts.

    Validation checks every trade's investor and symbol against the investors and stocks read here with a locking
    read (shared row locks until commit: nobody deletes them meanwhile), so the inserts skip the database's own
    foreign key checks (db_config.references_checked_transaction)."""
    with db_config.references_checked_transaction(engine) as connection:
        context = validation.make_context(
            connection.execute(select(investors.c.investor_id).with_for_update(read=True)).scalars(),
            connection.execute(select(stocks.c.stock_symbol).with_for_update(read=True)).scalars(),
            started,
        )
        dialect, known = connection.dialect.name, stored_chunk_digests(connection)
        intact = functools.cache(lambda batch_id: holds_its_trades(connection, batch_id))

        def prepare(parsed, trust_digest=True):
            if isinstance(parsed, PlainChunk):
                if trust_digest and parsed.digest in known:
                    return KnownChunk(parsed, known[parsed.digest])
                return prepare_plain_chunk(parsed, context, summary.batch_id, dialect)
            return prepare_chunk(*parsed, context, summary.batch_id, dialect)

        for chunk in (in_background(chunks, then=prepare) if background else map(prepare, chunks)):
            if isinstance(chunk, KnownChunk) and not intact(chunk.batch_id):
                chunk = prepare(chunk.plain, trust_digest=False)
            store_chunk(connection, chunk, summary, method)
        batches.finish_batch(connection, summary)
    return summary


def stored_chunk_digests(connection):
    """{chunk_digest: batch_id} of loaded_chunks (about one per 100,000 trades loaded from files)."""
    return dict(connection.execute(select(loaded_chunks.c.chunk_digest, loaded_chunks.c.batch_id)).all())


HOLDS_ITS_TRADES_SQL = text("""
SELECT b.rows_loaded = (SELECT COUNT(*) FROM transactions t WHERE t.batch_id = b.batch_id)
FROM load_batches b
WHERE b.batch_id = :batch_id AND b.status = 'loaded'
""")


def holds_its_trades(connection, batch_id):
    """Does the loaded batch still hold every trade it loaded (an index count)?"""
    return bool(connection.execute(HOLDS_ITS_TRADES_SQL, {"batch_id": batch_id}).scalar())


class PackedColumns(Sequence):
    """bulk_insert columns pickled as one block of bytes (it crosses between processes as one copy), unpickled on
    first use: the inserting process of a bulk path that takes text (MySQL) never needs them."""

    def __init__(self, columns):
        self.packed, self.columns = pickle.dumps(columns, pickle.HIGHEST_PROTOCOL), None

    def __getitem__(self, index):
        if self.columns is None:
            self.columns, self.packed = pickle.loads(self.packed), None
        return self.columns[index]

    def __len__(self):
        return len(bulk_insert.INSERT_COLUMNS)


class PackedTexts(Sequence):
    """Texts kept as one string and their lengths (two blocks of memory to send, not an object each), split on
    first use."""

    def __init__(self, texts):
        self.text, self.lengths, self.texts = "".join(texts), np.fromiter(map(len, texts), np.int64, len(texts)), None

    def __getitem__(self, index):
        if self.texts is None:
            ends = np.cumsum(self.lengths).tolist()
            self.texts = [self.text[start:end] for start, end in zip([0, *ends[:-1]], ends)]
        return self.texts[index]

    def __len__(self):
        return len(self.lengths)


class ColumnArrays(Sequence):
    """bulk_insert columns kept as numpy arrays (they cross between processes as blocks of memory), each made a
    list on first use (ASCII bytes become str); the lists are not sent."""

    def __init__(self, arrays):
        self.arrays, self.lists = arrays, {}

    def __getitem__(self, index):
        if index not in self.lists:
            array = self.arrays[index]
            self.lists[index] = (array.astype(str) if array.dtype.kind == "S" else array).tolist()
        return self.lists[index]

    def __len__(self):
        return len(self.arrays)

    def __getstate__(self):
        return {"arrays": self.arrays, "lists": {}}


@dataclass
class PreparedChunk:
    """A chunk after the CPU work: the rows to insert, later repeats of their refs, and the bad rows."""
    rows_read: int
    columns: Sequence  # first occurrence of each valid txn_ref, as bulk_insert columns (PackedColumns, ColumnArrays)
    raw_records: PackedTexts  # the lines of those rows
    sample_refs: list  # staging.sample_refs of their txn_refs
    repeats: pd.DataFrame  # valid rows whose txn_ref occurred earlier in the chunk
    rejects: pd.DataFrame
    bulk_text: str = None  # the rows as the dialect's bulk path takes them, when it takes text (MySQL)
    digest: str = None  # of a plain chunk (chunk_digest): recorded in loaded_chunks when every line is inserted
    first_line: int = 0

    def firsts(self):
        """The rows to insert as a DataFrame like validation's output (built only when needed)."""
        firsts = pd.DataFrame(dict(zip(bulk_insert.INSERT_COLUMNS, self.columns)))
        return firsts.rename(columns={"source_line": "line_number"}).assign(
            price_value=firsts["price"].astype(float), raw_record=list(self.raw_records))


def prepare_chunk(batch, malformed, context, batch_id, dialect=None):
    """Validate a chunk and set aside repeats within it; no database access (may run in a worker process)."""
    valid, rejected = validation.validate_trades(batch, context)
    repeated = valid["txn_ref"].duplicated(keep="first").to_numpy()
    firsts = valid[~repeated]
    columns = bulk_insert.trade_columns(firsts, batch_id)
    return PreparedChunk(len(batch) + len(malformed), PackedColumns(columns),
                         PackedTexts(firsts["raw_record"].tolist()), staging.sample_refs(columns[0]), valid[repeated],
                         pd.concat([malformed, rejected], ignore_index=True),
                         bulk_insert.prepared_text(dialect, columns) if columns[0] else None)


def prepare_plain_chunk(plain, context, batch_id, dialect=None):
    """prepare_chunk of a PlainChunk: its sure rows (plain_trades) become columns as they are, the other rows go
    through validation; the inserted rows stay in line order."""
    if plain.layout.kind != "canonical":
        return prepare_chunk(*plain.frames(), context, batch_id, dialect)
    sure, texts = plain_trades.sure_trades(plain.data, plain.layout, context), plain.texts()
    lines = plain.first_number + sure.rows
    columns = ColumnArrays([*sure.columns, np.full(len(lines), batch_id), lines])
    if len(sure.rows) == plain.count:  # the usual chunk
        return PreparedChunk(plain.count, columns, PackedTexts(texts), staging.sample_refs(columns[0]),
                             pd.DataFrame(), _rejects_frame([]), bulk_insert.prepared_text(dialect, columns),
                             plain.digest, plain.first_number)
    valid, rejected = validation.validate_trades(plain.batch_of(np.setdiff1d(np.arange(plain.count), sure.rows),
                                                                texts), context)
    repeated = valid["txn_ref"].duplicated(keep="first").to_numpy()
    firsts = valid[~repeated]
    order = np.argsort(np.concatenate([lines, firsts["line_number"].to_numpy()]), kind="stable")
    merged = [_in_order(fast, slow, order) for fast, slow in zip(columns, bulk_insert.trade_columns(firsts, batch_id))]
    raw_records = _in_order([texts[row] for row in sure.rows], firsts["raw_record"].tolist(), order)
    return PreparedChunk(plain.count, PackedColumns(merged), PackedTexts(raw_records),
                         staging.sample_refs(merged[0]), valid[repeated], rejected,
                         bulk_insert.prepared_text(dialect, merged) if merged[0] else None, plain.digest,
                         plain.first_number)


def _in_order(first, second, order):
    """The items of two lists, concatenated and taken in `order`."""
    both = np.empty(len(first) + len(second), dtype=object)
    both[:len(first)], both[len(first):] = first, second
    return both[order].tolist()


def store_chunk(connection, chunk, summary, method=None, line_numbers=True):
    """Insert a prepared chunk inside the batch's transaction, classify what was not inserted, update summary;
    return the rejects (line_number, reason, raw_record). line_numbers=False: rejects are kept without a line
    number (queue messages have none).

    Every row not inserted (its txn_ref was stored already, by an earlier batch or earlier in this file) is
    compared with the stored trade: the same values make a duplicate, others a reject. Comparing with what is
    stored, never with another line of the file, makes the outcome independent of the chunk size. A chunk that
    repeats stored trades is classified inside the database (staging); others are inserted directly. A plain
    chunk that a batch inserted whole before (KnownChunk) is counted as duplicates; one inserted whole now is
    recorded in loaded_chunks.
    """
    if isinstance(chunk, KnownChunk):
        summary.rows_read += chunk.plain.count
        summary.rows_duplicate += chunk.plain.count
        return _rejects_frame([])
    if method is None and len(chunk.raw_records) and bulk_insert.can_stage(connection.dialect.name) \
            and staging.holds_stored_refs(connection, chunk.sample_refs):
        inserted, duplicates, conflicts = staged_insert(connection, chunk, summary.batch_id)
    else:
        inserted, duplicates, conflicts = direct_insert(connection, chunk, summary.batch_id, method)
    repeated, repeat_conflicts = classify_against_stored(connection, chunk.repeats, summary.batch_id)
    if chunk.digest is not None and inserted == chunk.rows_read:  # an earlier batch's record of the same chunk
        # goes: its trades were deleted by hand, and this batch holds them now
        connection.execute(dialects.upsert(connection, loaded_chunks, ["batch_id", "first_line", "line_count"]), [
            {"chunk_digest": chunk.digest, "batch_id": summary.batch_id, "first_line": chunk.first_line,
             "line_count": chunk.rows_read}])
    rejects = pd.concat([chunk.rejects, conflicts, repeat_conflicts], ignore_index=True).sort_values(
        "line_number", kind="stable")
    store_rejects(connection, summary.batch_id, rejects, line_numbers)
    summary.rows_read += chunk.rows_read
    summary.rows_loaded += inserted
    summary.rows_duplicate += duplicates + repeated
    summary.rows_rejected += len(rejects)
    room = LOGGED_REJECTS - len(summary.sample_rejects)
    summary.sample_rejects += rejects[["line_number", "reason"]].head(room).values.tolist()
    return rejects


def direct_insert(connection, chunk, batch_id, method=None):
    """(inserted, duplicates, conflict rejects): the chunk by the bulk path, then the rows it skipped compared with
    the stored trades read back."""
    inserted = bulk_insert.insert_columns(connection, chunk.columns, method, tsv=chunk.bulk_text)
    if inserted == len(chunk.raw_records):
        return inserted, 0, _rejects_frame([])
    return inserted, *classify_against_stored(connection, skipped_rows(connection, chunk.firsts(), batch_id), batch_id)


def staged_insert(connection, chunk, batch_id):
    """(inserted, duplicates, conflict rejects): the chunk through the staging table, classified in the database."""
    result = staging.insert_and_classify(connection, chunk.columns, batch_id, chunk.bulk_text)
    missing = [row for row in result.unmatched if row.outcome == "missing"]
    if missing:
        raise _skipped_but_not_stored(missing[0].line_number, missing[0].txn_ref, len(missing))
    raw_records = dict(zip(chunk.columns[-1], chunk.raw_records)) if result.unmatched else {}  # by source_line
    return result.inserted, result.duplicates, _rejects_frame([
        (row.line_number, conflict_reason(row.txn_ref, row.batch_id, row.stored_line or 0, row.txn_id, batch_id),
         raw_records[row.line_number]) for row in result.unmatched])


def in_background(items, depth=2, then=None):
    """Iterate `items` in a forked worker process up to `depth` ahead, so that reading the file overlaps the
    database's work (a thread would fight the driver for the GIL); with `then`, a second worker applies it to each
    item as it comes (the loader: one process reads, and parses the records that are not plain; another splits
    plain chunks into cells and validates; this one inserts)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        yield from map(then, items) if then else items
        return
    context, parent_pid = multiprocessing.get_context("fork"), os.getpid()
    reader_queue = context.Queue(maxsize=depth)
    workers = [context.Process(target=_produce, args=(items, reader_queue, parent_pid), name="load-read", daemon=True)]
    queue = reader_queue
    if then:
        queue = context.Queue(maxsize=depth)
        workers.append(context.Process(target=_produce, args=(map(then, _drain(reader_queue, parent_pid)), queue,
                                                             parent_pid), name="load-prepare", daemon=True))
    try:
        _start(workers)
        yield from _received(queue, lambda: _require_alive(workers))
    finally:
        for worker, worker_queue in zip(reversed(workers), (queue, reader_queue)):
            _stop(worker, worker_queue)


HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _start(workers):
    """Start the workers with SIGTERM and SIGINT held back: one landing in a fork's after-fork hooks would be
    printed and lost (the load would go on); held, it arrives once they are started."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _require_alive(workers):
    """Raise if a worker died before finishing its part (the first may have finished and exited 0)."""
    for worker in workers:
        if worker.exitcode not in (None, 0) or (worker is workers[-1] and not worker.is_alive()):
            raise cli.StageError(f"the parsing process died (exit code {worker.exitcode})") from None


def _drain(queue, parent_pid):
    """The items another worker puts on `queue`, in a worker; it exits if the loader is gone."""
    def exit_if_orphaned():
        if os.getppid() != parent_pid:
            os._exit(1)

    return _received(queue, exit_if_orphaned)


def _received(queue, on_idle):
    """The items a worker puts on `queue` (see _produce) until it is done; its error is raised here. on_idle()
    runs after each second without an item (it raises or exits when the worker or the loader is gone)."""
    while True:
        try:
            kind, item = pickle.loads(queue.get(timeout=1.0))
        except Empty:
            on_idle()
            continue
        if kind == "done":
            return
        if kind == "error":
            raise item
        yield item


def _stop(worker, queue):
    """End the worker, however it is: SIGTERM (it dies at once, see _worker_signals), then SIGKILL if need be."""
    if worker.pid is None:  # never started
        queue.close()
        return
    if worker.is_alive():
        worker.terminate()
        worker.join(WORKER_STOP_SECONDS)
    if worker.is_alive():
        worker.kill()
    worker.join()
    queue.close()
    queue.cancel_join_thread()  # items the worker left in the pipe are dropped, not waited for


def _produce(items, queue, parent_pid):
    """The worker process: send ('item', x) for each item, then ('done', None), or ('error', exception)."""
    _worker_signals()
    _die_with_parent(parent_pid)
    try:
        for item in items:
            _put(queue, ("item", item), parent_pid)
        _put(queue, ("done", None), parent_pid)
    except BaseException as error:  # handed to the parent, which re-raises it
        _put(queue, ("error", error), parent_pid)


def _worker_signals():
    """The worker dies at once on SIGTERM (the loader's own handler, inherited through fork, would turn it into
    an exception and a traceback) and leaves Ctrl+C to the loader, which stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)  # held while the loader started it (_start)


PR_SET_PDEATHSIG = 1  # Linux prctl option: the signal this process gets when its parent dies


def _die_with_parent(parent_pid):
    """Have the kernel kill this worker when the loader dies, however it dies (SIGKILL, OOM), where it can."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: _put notices the parent's death instead
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _put(queue, item, parent_pid):
    """queue.put of the item pickled here (the queue's own thread would print a pickling error and drop the item:
    the load would go on without its rows), giving up (exiting) if the parent process is gone."""
    packed = _pickled(item)
    while True:
        try:
            return queue.put(packed, timeout=1.0)
        except Full:
            if os.getppid() != parent_pid:
                os._exit(1)


def _pickled(item):
    """The (kind, item) pair as bytes; an error that cannot be pickled goes as a StageError naming it."""
    try:
        return pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        kind, value = item
        if kind != "error":
            raise  # _produce sends this error instead of the item
        return pickle.dumps(("error", cli.StageError(f"the parsing process failed: {type(value).__name__}: {value} "
                                                     f"(and could not send it: {error})")), pickle.HIGHEST_PROTOCOL)


def skipped_rows(connection, firsts, batch_id):
    """The rows of `firsts` that the database did not insert (it held their txn_ref already)."""
    lines = firsts["line_number"]
    inserted_lines = set(connection.execute(
        select(transactions.c.source_line).where(and_(
            transactions.c.batch_id == batch_id,
            transactions.c.source_line.between(int(lines.min()), int(lines.max()))))
    ).scalars())
    return firsts[~lines.isin(inserted_lines).to_numpy()]


def classify_against_stored(connection, rows, batch_id):
    """(duplicates, rejects): each row against the stored trade with its txn_ref.

    Rows are first compared by their values text (dialects.values_text), which the database computes for the
    stored trades (two short columns read per row); only the rows that differ are read in full, to name the
    trade they conflict with.
    """
    if rows.empty:
        return 0, _rejects_frame([])
    stored_values = fetch_stored_values(connection, rows["txn_ref"].unique().tolist())
    unexplained = rows[~rows["txn_ref"].isin(stored_values.keys()).to_numpy()]
    if not unexplained.empty:
        first = unexplained.iloc[0]
        raise _skipped_but_not_stored(first.line_number, first.txn_ref, len(unexplained))
    same = np.array([stored_values[ref] == values
                     for ref, values in zip(rows["txn_ref"], dialects.values_text(rows))], dtype=bool)
    conflicts = rows[~same]
    holders = fetch_trades_by_ref(connection, conflicts["txn_ref"].unique().tolist()).set_index("txn_ref")  # rare
    holders = holders.loc[conflicts["txn_ref"]] if not conflicts.empty else holders
    reasons = [conflict_reason(ref, holder_batch, line, txn_id, batch_id) for ref, holder_batch, line, txn_id in zip(
        conflicts["txn_ref"], holders["batch_id"], holders["line_number"], holders["txn_id"])]
    return int(same.sum()), _rejects_frame(list(zip(conflicts["line_number"], reasons, conflicts["raw_record"])))


def conflict_reason(txn_ref, holder_batch, holder_line, holder_txn_id, batch_id):
    """The reject reason of a row whose txn_ref is stored with other values (by this batch or an earlier one)."""
    if holder_batch == batch_id:
        return f"txn_ref: {txn_ref!r} is a conflicting duplicate of line {holder_line}"
    return (f"txn_ref: {txn_ref!r} conflicts with loaded trade {holder_txn_id} "
            f"(batch {holder_batch}, line {holder_line})")


def _skipped_but_not_stored(line_number, txn_ref, count):
    return cli.StageError(f"line {line_number}: the database skipped txn_ref {txn_ref!r} but holds no trade with "
                          f"that ref; {count} such row(s), batch rolled back")


def fetch_stored_values(connection, refs):
    """{txn_ref: values text (dialects.values_text)} of the stored trades with these refs."""
    dialect_name = connection.dialect.name
    statement = text(f"SELECT txn_ref, {dialects.values_sql(dialect_name)} AS values_text "
                     "FROM transactions WHERE txn_ref IN :refs").bindparams(bindparam("refs", expanding=True))
    slice_size = dialects.lookup_slice(dialect_name)
    values = {}
    for start in range(0, len(refs), slice_size):
        values.update(map(tuple, connection.execute(statement, {"refs": refs[start:start + slice_size]})))
    return values


STORED_TRADE_SQL = text(
    "SELECT txn_ref, txn_id, batch_id, source_line AS line_number FROM transactions WHERE txn_ref IN :refs"
).bindparams(bindparam("refs", expanding=True))


def fetch_trades_by_ref(connection, refs):
    """txn_id, batch_id and line_number (0 when unknown) of the stored trades with these refs."""
    rows = []
    for start in range(0, len(refs), dialects.LOOKUP_SLICE):
        rows += map(tuple, connection.execute(STORED_TRADE_SQL, {"refs": refs[start:start + dialects.LOOKUP_SLICE]}))
    stored = pd.DataFrame.from_records(rows, columns=["txn_ref", "txn_id", "batch_id", "line_number"])
    stored["line_number"] = pd.to_numeric(stored["line_number"]).fillna(0).astype(np.int64)
    return stored


def store_rejects(connection, batch_id, rejects, line_numbers=True):
    """Keep every rejected row with its reason, and its line unless line_numbers=False."""
    if rejects.empty:
        return
    connection.execute(rejected_transactions.insert(), [
        {"batch_id": batch_id, "line_number": int(line) if line_numbers else None,
         "reason": str(reason)[:MAX_REASON_LENGTH],
         "raw_record": stored_raw_record(raw)}
        for line, reason, raw in rejects[["line_number", "reason", "raw_record"]].itertuples(index=False)
    ])


def stored_raw_record(raw):
    """A record as rejected_transactions keeps it: NUL written as \\x00 (PostgreSQL text cannot hold it), and
    cut after MAX_RAW_RECORD_CHARS characters with a note of the full length (a TEXT column holds 64 KB)."""
    raw = raw.replace("\x00", "\\x00")
    if len(raw) <= MAX_RAW_RECORD_CHARS:
        return raw
    return f"{raw[:MAX_RAW_RECORD_CHARS]}… [cut: {len(raw):,} characters in all]"


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

    @property
    def rows_rejected(self):
        return len(self.rejects)

    @property
    def sample_rejects(self):
        return self.rejects[:LOGGED_REJECTS]

    def where_rejects_are(self):
        return (f"only the first {LOGGED_REJECTS} are shown (--verbose shows all): prices are not a trade batch, "
                "their rejects are not stored")

    @property
    def rows_unchanged(self):
        """Closes stored already with the same price (a repeat within the file included)."""
        return self.rows_read - self.rows_new - self.rows_changed - len(self.rejects)

    def line(self):
        return (f"{os.path.basename(self.source)}: {cli.counted(self.rows_read, 'daily close')} read, "
                f"{self.rows_new} new, {self.rows_changed} changed, {self.rows_unchanged} unchanged, "
                f"{len(self.rejects)} rejected")


def load_prices_file(engine, path, layout=None):
    """Upsert the daily closes of a prices file (stock_symbol,price_date,close_price) into market_prices."""
    layout = layout or read_layout(path)
    if layout.kind != "prices":
        raise cli.InputError(f"{path}: header is not {','.join(validation.PRICE_COLUMNS)}")
    summary = PricesSummary(path)
    records = [record for record in iter_records(path, layout) if record.fields is not None or record.problem]
    summary.rows_read = len(records)
    with engine.connect() as connection:
        symbols = set(connection.execute(select(stocks.c.stock_symbol)).scalars())
    closes = {}
    for record in records:
        parsed = record.problem or parse_close(record.fields, layout, symbols)
        if isinstance(parsed, str):
            summary.rejects.append((record.line_number, parsed))
        else:
            closes[parsed[:2]] = parsed[2]
    summary.rows_new, summary.rows_changed = db_retry.with_retries(
        lambda: _upsert_in_transaction(engine, closes), f"{path}: prices")
    if summary.rows_changed:
        logger.warning("%s: %d stored daily closes changed value (the same symbol and day, another close): risk is "
                       "revalued by the next update, but alerts already raised on the old closes stay; "
                       "surveillance.py --full checks every trade again", path, summary.rows_changed)
    return summary


def iter_records(path, layout, chunk_lines=10_000):
    """Every record of a file after its header, read as the loader's slow path reads them."""
    with open(path, "rb") as handle:
        handle.readline()
        lines = PhysicalLines(handle, 2)
        while chunk := lines.take(chunk_lines):
            yield from chunk_records(chunk, lines, layout)


PLAIN_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
PLAIN_CLOSE = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]{0,4})?|\.[0-9]{1,4})")  # ASCII digits, at most 4 decimals


def parse_close(row, layout, symbols):
    """(stock_symbol, price_date, close_price as Decimal) from a row, or the reason it is bad."""
    symbol, day, close = (row[i].strip(" \t") for i in layout.columns)
    if symbol.upper() not in symbols or not symbol.isascii():
        return f"stock_symbol: {symbol!r} is not a known stock"
    try:
        day = date.fromisoformat(day) if PLAIN_DATE.fullmatch(day) else None
    except ValueError:
        day = None
    if day is None:
        return f"price_date: {row[layout.columns[1]].strip()!r} is not a real date YYYY-MM-DD"
    if not PLAIN_CLOSE.fullmatch(close) or not 0 < Decimal(close) < validation.MAX_PRICE:
        return (f"close_price: {close!r} is not a plain decimal > 0 and below {validation.MAX_PRICE:,} "
                "with at most 4 decimals")
    return symbol.upper(), day, Decimal(close).quantize(Decimal("0.0001"))


def _upsert_in_transaction(engine, closes):
    with db_config.write_transaction(engine) as connection:
        return upsert_closes(connection, closes)


def upsert_closes(connection, closes):
    """Insert new closes and update changed ones in one atomic statement per slice (two loaders at once cannot
    both insert one close); return (new, changed) as counted against what was stored before."""
    existing = {
        (symbol, day if isinstance(day, date) else date.fromisoformat(day)):
            Decimal(str(close)).quantize(Decimal("0.0001"))
        for symbol, day, close in connection.execute(select(
            market_prices.c.stock_symbol, market_prices.c.price_date, market_prices.c.close_price))
    }
    rows = [{"stock_symbol": s, "price_date": d, "close_price": c} for (s, d), c in closes.items()
            if existing.get((s, d)) != c]
    for start in range(0, len(rows), UPSERT_ROWS):
        connection.execute(dialects.upsert(connection, market_prices, ["close_price"]), rows[start:start + UPSERT_ROWS])
    new = sum((row["stock_symbol"], row["price_date"]) not in existing for row in rows)
    return new, len(rows) - new


# ------------------------------------------------------------------------------------------------ command line

def plan_files(paths):
    """The files to load in order: each directory's prices file and corporate actions file first (once each),
    then the given files."""
    planned = []
    for number, path in enumerate(paths):
        wanted = os.path.basename(path) not in BESIDE_FILE_NAMES and _is_trade_file(path)
        for name in BESIDE_FILE_NAMES:
            beside = os.path.join(os.path.dirname(path), name)
            if wanted and os.path.exists(beside) and beside not in planned:
                planned.append(beside)
        if path not in planned:
            planned.append(path)
        elif path in paths[:number]:
            logger.warning("%s is named more than once: it is loaded once", path)
    return planned


def _is_trade_file(path):
    """Is this an existing file whose header is not that of a prices or corporate actions file? (A file that
    cannot be read is left to its load, which says why.)"""
    if not os.path.exists(path):
        return False
    try:
        return read_layout(path, warn=False).kind not in ("prices", "actions")
    except cli.InputError:
        return True


def load_paths(engine, paths, progress=False, again=False):
    """Load every file, reporting each; a file with bad input is reported and the rest still load.

    Returns the exit code: 0, or 2 if any file was refused (missing, unreadable, wrong header).
    """
    code = cli.EXIT_OK
    for path in plan_files(paths):
        try:
            summary = load_path(engine, path, progress, again=again)
        except cli.InputError as error:
            print(f"error: load_transactions: {error}", file=sys.stderr)
            code = cli.EXIT_USAGE
            continue
        report(summary)
    return code


def log_rejects(summary):
    """Log the first rejects of a load with file and line, and where the rest are; the rejects of a file that
    does not store them (prices, corporate actions) all, with --verbose."""
    for line_number, reason in summary.sample_rejects:
        logger.warning("%s:%s: %s", summary.source, line_number, reason)
    if summary.rows_rejected > len(summary.sample_rejects):
        logger.warning("%s: %d rejected rows in all; %s", summary.source, summary.rows_rejected,
                       summary.where_rejects_are())
        for line_number, reason in getattr(summary, "rejects", [])[len(summary.sample_rejects):]:
            logger.debug("%s:%s: %s", summary.source, line_number, reason)


def report(summary):
    """Log the first rejects, then print the summary line."""
    log_rejects(summary)
    print(summary.line())


QUEUE_OPTIONS = {"queue_name": "--queue-name", "partitions": "--partitions", "partition": "--partition",
                 "batch_size": "--batch-size", "batch_ms": "--batch-ms"}


def check_live_options(parser, args):
    """Refuse contradictory live-mode options, and options of one mode given in another (exit 2)."""
    given = [flag for name, flag in QUEUE_OPTIONS.items() if getattr(args, name) != parser.get_default(name)]
    if args.watch and args.queue:
        parser.error("--watch and --queue run one at a time: start two processes")
    if (args.watch or args.queue) and args.files != parser.get_default("files"):
        parser.error("trade files and --watch/--queue run one at a time: load the files first")
    if given and not args.queue:
        parser.error(f"{', '.join(given)} apply to --queue only")
    if args.report_every != parser.get_default("report_every") and not (args.queue or args.watch):
        parser.error("--report-every applies to --queue and --watch only")
    if args.retry_rejects and (args.queue or args.watch):
        parser.error("--retry-rejects applies to trade files only")
    if args.partitions < 0 or (args.partitions and args.partition is None):
        parser.error("--partitions N needs --partition K (0 <= K < N): the partition this consumer reads")
    if args.partition is not None and not 0 <= args.partition < args.partitions:
        parser.error(f"--partition {args.partition} needs --partitions N with 0 <= K < N")
    if args.batch_size < 1 or args.batch_ms < 0 or args.report_every < 0:
        parser.error("--batch-size must be at least 1, --batch-ms and --report-every at least 0")


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("files", nargs="*", metavar="FILE", default=[db_config.project_path("transactions.csv")],
                        help="trade files to load (default: transactions.csv in the project folder); a prices "
                             "file is loaded as prices")
    parser.add_argument("--retry-rejects", action="store_true",
                        help="load files again although they were loaded before (after investors or stocks were "
                             "added): rows loaded before count as duplicates, rows rejected before are checked again")
    live = parser.add_argument_group("live mode (docs/live-mode.md)")
    live.add_argument("--watch", metavar="DIR",
                      help="watch DIR for trade files (the inbox): load and apply each complete *.csv, then move "
                           "it to DIR/processed/ or DIR/failed/; runs until Ctrl+C or SIGTERM")
    live.add_argument("--queue", action="store_true",
                      help="consume trades from RabbitMQ (AMQP_URL) and apply them; runs until Ctrl+C or SIGTERM")
    live.add_argument("--queue-name", default="trades", help="the queue to consume (default: trades)")
    live.add_argument("--partitions", type=int, default=0, metavar="N",
                      help="the queue is split into N partitions by investor (NAME.0 ... NAME.N-1)")
    live.add_argument("--partition", type=int, default=None, metavar="K",
                      help="with --partitions: consume partition K (0 ... N-1)")
    live.add_argument("--batch-size", type=int, default=500, metavar="N",
                      help="close a batch of messages after N messages (default: 500)")
    live.add_argument("--batch-ms", type=float, default=5.0, metavar="T",
                      help="... or T milliseconds after its first message (default: 5)")
    live.add_argument("--report-every", type=float, default=10.0, metavar="SECONDS",
                      help="regenerate reports/index.html at most this often while new trades arrive "
                           "(default: 10; 0: never)")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    check_live_options(parser, args)

    def work():
        engine = db_config.get_engine(args.database_url)
        if args.watch:
            import inbox
            return inbox.watch_inbox(engine, args.watch, report_every=args.report_every,
                                     database_url=args.database_url)
        if args.queue:
            import trade_queue
            return trade_queue.consume(engine, trade_queue.ConsumerSettings.from_args(args))
        return load_paths(engine, args.files, cli.progress_enabled(args), again=args.retry_rejects)

    return cli.run(work, args, "load_transactions")


if __name__ == "__main__":
    sys.exit(main())
