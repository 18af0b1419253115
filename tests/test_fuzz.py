"""Fuzzing (issue 16): hypothesis-built trade files and queue messages never crash the loader, the live apply or a
later `update_portfolio.py --full`; every record ends loaded, a duplicate or rejected with a reason naming its field.

Files start from valid trades of the seeded investors and stocks, written in every form the docs accept (column
order, letter case, signs, `5.0`, `.5`, `T`, spaces, quoting, delimiters, line endings, BOM, blank lines, the fee
column, extra columns, the legacy layout), then are mutated: hostile cells (random unicode, empty, NUL and other
control characters, Unicode spaces and digits, 1 MB values), extra and missing fields, duplicated and conflicting
txn_refs, UTF-16 and latin-1 encodings, stray bytes, a truncated last line, broken headers; the loader's first
chunk is sometimes made a few lines long, so that chunk boundaries fall inside the files. Messages are JSON
objects built the same way and then broken (not JSON, wrong types, NaN, huge numbers, nested, missing and extra
keys, repeated keys, lone surrogates), applied through the consumer's own path (parse_message, LiveApplier).

Checked for every example: the loader exits 0, or 2 with one error line for a refused header; each batch has
read = loaded + duplicates + rejected and as many rows stored; every reject names its field; every loaded trade
equals an independent csv/json parse of its record; where the records are known, each is loaded, a duplicate equal
to the stored trade, or rejected for a field it was given (a valid record only as a conflict); --retry-rejects
loads nothing new; positions reconcile with the transactions after the live apply and after `--full`.

One database per test: every example loads new files into it, so duplicates and conflicts also cross batches. For
the same reason hypothesis may call a failure flaky (replayed, the example meets another database): read the first
traceback it shows.
The number of examples is bounded for CI (FUZZ_EXAMPLES scales it; the profile is derandomized and keeps no example
database); bench/bench_fuzz.py runs the same properties for longer.
"""
import contextlib
import csv
import gc
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

import constants
import db_config
import live_apply
import load_transactions
import seed_investors
import trade_queue
import update_portfolio
from schema import load_batches, portfolios, rejected_transactions, transactions

settings.register_profile(
    "fuzz-ci", derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much])
settings.register_profile("fuzz-long", settings.get_profile("fuzz-ci"), derandomize=False)
CI_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))  # CSV files on SQLite; the rest is scaled from it
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_SHARE = 4  # MariaDB and PostgreSQL run a quarter of SQLite's examples (each example costs more there)

INVESTORS = tuple(range(1001, 1011))  # a few investors: positions get several trades, oversells happen
SYMBOLS = tuple(stock.symbol for stock in constants.STOCKS)
POOL_SIZE = 40  # txn_refs FZ-0 ... FZ-39 recur across examples: duplicates and conflicts across batches
MAX_QUANTITY = 2**31 - 1
FIRST_TIME, LAST_TIME = datetime(2025, 1, 1), datetime(2026, 11, 30, 23, 59, 59)
FIELD_PREFIXES = ("record:", "message:", "txn_ref:", "investor_id:", "stock_symbol:", "txn_type:", "quantity:",
                  "quantity × price:", "price:", "txn_time:", "txn_date:", "fee:")


# ---------------------------------------------------------------------------------------------- trades

@dataclass(frozen=True)
class Trade:
    """A trade's values as the database should keep them."""
    ref: str
    investor_id: int
    symbol: str
    txn_type: str
    quantity: int
    price: Decimal
    time: datetime
    fee: Decimal = Decimal(0)


def pool_trade(number):
    """The one set of values of pool ref FZ-number: sent again, it is a duplicate."""
    return Trade(f"FZ-{number}", INVESTORS[number % len(INVESTORS)], SYMBOLS[number % len(SYMBOLS)],
                 "SELL" if number % 3 == 0 else "BUY", number + 1, Decimal(number * 7 + 1) / 4,
                 FIRST_TIME + timedelta(hours=number * 13), Decimal(number % 5) / 4)


def decimals(low, high):
    """Decimals with at most 4 places from low to high (in ten-thousandths)."""
    return st.integers(low, high).map(lambda n: Decimal(n).scaleb(-4))


PRICES = st.one_of(decimals(1, 10_000_000), decimals(1, 10**13 - 1), st.just(Decimal("999999999.9999")))
QUANTITIES = st.one_of(st.integers(1, 500), st.integers(1, MAX_QUANTITY))
TIMES = st.datetimes(FIRST_TIME, LAST_TIME).map(lambda t: t.replace(microsecond=0))
REF_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64).filter(
    lambda ref: ref.strip(" "))


@st.composite
def random_trades(draw, ref):
    """A valid trade with this txn_ref and random values."""
    quantity, price = draw(QUANTITIES), draw(PRICES)
    if quantity * price >= 10**12:  # keep it valid: the notional limit is a mutation of its own
        quantity = 1
    return Trade(ref.strip(" "), draw(st.sampled_from(INVESTORS)), draw(st.sampled_from(SYMBOLS)),
                 draw(st.sampled_from(["BUY", "SELL"])), quantity, price, draw(TIMES),
                 draw(st.one_of(st.just(Decimal(0)), decimals(0, 1_000_000))))


POOL_REFS = st.integers(0, POOL_SIZE - 1)
FRESH_REFS = st.one_of(REF_TEXT, st.tuples(REF_TEXT, st.uuids()).map(lambda pair: f"{pair[0][:50]}~{pair[1].hex[:8]}"))
TRADES = st.sampled_from(["pool", "other", "fresh", "fresh"]).flatmap(lambda kind: {
    "pool": POOL_REFS.map(pool_trade),  # the pool's own values: a duplicate when loaded before
    "other": POOL_REFS.flatmap(lambda number: random_trades(f"FZ-{number}")),  # other values: a conflict
    "fresh": FRESH_REFS.flatmap(random_trades),
}[kind])


# ---------------------------------------------------------------------------------------------- cells

def padded(strategy):
    """Valid text with the ASCII spaces and tabs that are trimmed around it."""
    return st.tuples(st.sampled_from(["", "", " ", "\t", "  "]), strategy, st.sampled_from(["", "", " ", "\t"])).map(
        "".join)


def whole_number_texts(number):
    """The accepted ways to write a whole number: '7', '+7', '7.0', '7.', '007'."""
    return padded(st.sampled_from([str(number), f"+{number}", f"{number}.0", f"{number}.", f"00{number}"]))


def decimal_texts(value):
    """The accepted ways to write a price or fee: '10.5', '+10.5', '010.5', '10.5000', '10.', '.5'."""
    plain = format(value.normalize(), "f") if value else "0"
    whole, _, fraction = plain.partition(".")
    forms = [plain, f"+{plain}", f"0{plain}", f"{plain}{'0' * (4 - len(fraction))}" if "." in plain else f"{plain}."]
    if whole == "0" and fraction:
        forms.append(f".{fraction}")
    return padded(st.sampled_from(forms))


def time_texts(moment, legacy):
    """The accepted ways to write a txn_time (a legacy txn_date also as a bare date at midnight)."""
    forms = [f"{moment:%Y-%m-%d %H:%M:%S}", f"{moment:%Y-%m-%dT%H:%M:%S}"]
    if moment.second == 0:
        forms += [f"{moment:%Y-%m-%d %H:%M}", f"{moment:%Y-%m-%dT%H:%M}"]
    if legacy and moment.time() == datetime.min.time():
        forms.append(f"{moment:%Y-%m-%d}")
    return padded(st.sampled_from(forms))


def letter_cases(word):
    """The word in any mix of letter cases."""
    return padded(st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(c.upper() if u else c.lower() for c, u in zip(word, upper))))


def valid_cells(trade, legacy):
    """Every column's text for a valid trade, in any of its accepted forms."""
    cells = {
        "investor_id": whole_number_texts(trade.investor_id),
        "stock_symbol": letter_cases(trade.symbol),
        "txn_type": letter_cases(trade.txn_type),
        "quantity": whole_number_texts(trade.quantity),
        "price": decimal_texts(trade.price),
        "txn_date" if legacy else "txn_time": time_texts(trade.time, legacy),
        "fee": st.one_of(decimal_texts(trade.fee), st.just("") if not trade.fee else st.nothing()),
    }
    if not legacy:
        cells["txn_ref"] = padded(st.just(trade.ref))
    return st.fixed_dictionaries(cells)


CONTROL = [chr(c) for c in (*range(0, 9), 11, 12, *range(14, 32), 127)] + ["\x85", "\u2028", "\u2029", "\r", "\n"]
HOSTILE = [
    "", " ", "NaN", "nan", "inf", "-inf", "Infinity", "1e3", "-1", "-0", "0", "0.0", "1,000.00", "１０", "١٠٠١", "1²",
    "10\x00", "\x00", "12.34567", "2147483648", "99999999999999999999", "1.5", "+-1", "++1", "1..0", ".", "+",
    "0x10", "1_000", "BUY\x00", "SELL;", "aapl\u0131", "ＡＡＰＬ", "2026-02-30 10:00:00", "2026-12-31 23:59:60",
    "1899-12-31 23:59:59", "2099-01-01 00:00:00", "2026-01-05", "2026-01-05T10:00:00Z", "2026-01-05 10:00:00.5",
    "2026-1-5 10:00:00", "'", '"', "\\", "\\N", "NULL", "null", "None", "🙂", "é", "ß", "ﬀ", "İ", "x" * 65,
    "1001", "AAPL", "BUY", "SELL", "999999999.9999", "1000000000", "0.00001",
]


def hostile_cells(valid):
    """A cell that is probably not valid: random unicode, known troublemakers, a control character or Unicode
    space slipped into the valid text, or a value of up to a megabyte."""
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from(HOSTILE),
        st.tuples(st.integers(0, len(valid)), st.sampled_from(CONTROL)).map(
            lambda spot: valid[:spot[0]] + spot[1] + valid[spot[0]:]),
        st.sampled_from(["\u00a0", "\u3000", "\u200b", "\ufeff", "\u2007"]).map(lambda space: space + valid),
        st.sampled_from([70_000, 1 << 20]).map(lambda size: ((valid or "9") * size)[:size]),
    )


# ---------------------------------------------------------------------------------------------- files

@dataclass
class Record:
    """One written record: its first physical line, its trade, and what was done to it (nothing: pristine)."""
    line: int
    trade: Trade
    mutated: frozenset  # the columns given a hostile cell
    reshaped: bool  # fields added or taken away


class TradeFile:
    """A generated trade file: its bytes, how it was written, and its records (None when the records cannot be
    told apart independently: a broken encoding, stray bytes, a truncated end). Not a dataclass, so that a failing
    example shows the start of the bytes rather than a megabyte of them."""

    def __init__(self, delimiter, names, legacy, header_ok, notes):
        self.data, self.delimiter, self.names, self.legacy, self.header_ok = b"", delimiter, names, legacy, header_ok
        self.records, self.notes = [], notes  # names: the header's columns, lower-case, in order

    def __repr__(self):
        head = self.data[:300] + (b"..." if len(self.data) > 300 else b"")
        return f"TradeFile({len(self.data):,} bytes, {self.notes}: {head!r}, records={self.records!r})"


EXTRA_COLUMNS = ["note", "comment", "commission", "desk"]


@st.composite
def headers(draw):
    """(legacy, the column names in file order: the required ones, maybe fee, maybe extra columns)."""
    legacy = draw(st.integers(0, 9)) == 0
    read = ["investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_date" if legacy else "txn_time"]
    if not legacy:
        read.insert(0, "txn_ref")
    if draw(st.booleans()):
        read.append("fee")
    names = draw(st.permutations(read + draw(st.lists(st.sampled_from(EXTRA_COLUMNS), max_size=2, unique=True))))
    return legacy, list(names)


@st.composite
def records(draw, legacy, names):
    """The cells of one record in header order, and what was done to it."""
    trade = draw(TRADES)
    if legacy:  # a derived txn_ref; a date alone is allowed at midnight
        trade = replace(trade, ref="", time=trade.time.replace(hour=0, minute=0, second=0))
    if "fee" not in names:
        trade = replace(trade, fee=Decimal(0))
    cells = draw(valid_cells(trade, legacy))
    cells.update({name: draw(st.text(max_size=5)) for name in names if name in EXTRA_COLUMNS})
    mutated = set()
    if draw(st.integers(0, 5)) == 0:
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)):
            cells[name] = draw(hostile_cells(cells[name]))
            mutated.add(name)
    row = [cells[name] for name in names]
    shape = draw(st.sampled_from(["same"] * 16 + ["extra", "trailing", "missing"]))
    if shape == "extra":
        row.append(draw(st.text(min_size=1, max_size=5).filter(lambda text: text.strip(" \t"))))
    elif shape == "trailing":
        row += [""] * draw(st.integers(1, 3))
    elif shape == "missing":
        row = row[:draw(st.integers(0, len(row) - 1))]
    return row, trade, frozenset(mutated), shape in ("extra", "missing")


def csv_text(row, delimiter, quoting):
    """One record as CSV text without its line ending (fields with a line break are quoted)."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, quoting=quoting).writerow(row)
    return buffer.getvalue()[:-2]


def is_clean_text(text):
    """Can this record be told apart without the loader's help: no carriage return inside it, a quoted line
    break only within the loader's 10 lines, and no line break in a line of over a megabyte?"""
    breaks = text.count("\n")
    too_long = len(text.encode("utf-8", "surrogatepass")) >= load_transactions.MAX_LINE_BYTES - 2
    return "\r" not in text and breaks < load_transactions.MAX_RECORD_LINES - 1 and not (breaks and too_long)


ENCODINGS = ["utf-8"] * 12 + ["utf-8-sig", "utf-8-sig", "utf-16", "latin-1", "cp1252"]
DAMAGE = ["none"] * 25 + ["truncated", "stray bytes", "missing column", "repeated column", "empty", "blank header",
                          "header only"]


@st.composite
def trade_files(draw):
    """A trade file built from valid trades in varied forms, then mutated (see the module's docstring)."""
    legacy, names = draw(headers())
    delimiter = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    endings = draw(st.sampled_from(["\n", "\r\n", "mixed"]))
    encoding, damage = draw(st.sampled_from(ENCODINGS)), draw(st.sampled_from(DAMAGE))
    written = [draw(st.sampled_from(["", " "])) + (name.upper() if draw(st.booleans()) else name) for name in names]
    header_ok = damage not in ("missing column", "repeated column", "empty", "blank header")
    if damage == "missing column":
        written.remove(next(w for w in written if w.strip().lower() not in ("fee", *EXTRA_COLUMNS)))
    elif damage == "repeated column":
        written.append(next(w for w in written if w.strip().lower() not in ("fee", *EXTRA_COLUMNS)))
    file = TradeFile(delimiter, [w.strip().lower() for w in written], legacy, header_ok,
                     f"{'legacy' if legacy else 'canonical'} {delimiter!r} {encoding} {damage}")
    text, line = ("" if damage == "blank header" else delimiter.join(written)) + "\n", 2
    clean = damage in ("none", "header only")
    for _ in range(0 if damage == "header only" else draw(st.integers(0, 12))):
        row, trade, mutated, reshaped = draw(records(legacy, names))
        if draw(st.integers(0, 7)) == 0:
            blank = draw(st.sampled_from(["", " ", "\t"])) + "\n"
            text, line = text + blank, line + 1
        record = csv_text(row, delimiter, quoting)
        clean &= is_clean_text(record)
        if record.strip():  # else a blank line, which is not a record
            file.records.append(Record(line, trade, mutated, reshaped))
        ending = draw(st.sampled_from(["\n", "\r\n"])) if endings == "mixed" else endings
        text, line = text + record + ending, line + record.count("\n") + 1
    if draw(st.booleans()):
        text = text[:-1].removesuffix("\r") if text.endswith("\n") and file.records else text
    file.data = b"" if damage == "empty" else text.encode(encoding, errors="replace")
    if encoding in ("utf-16", "latin-1", "cp1252") and not text.isascii():
        clean = False
    if damage == "truncated" and file.records:
        file.data = file.data[:-draw(st.integers(1, max(1, len(record) // 2)))]
    elif damage == "stray bytes":
        for _ in range(draw(st.integers(1, 3))):
            after_header = file.data.find(b"\n") + 1
            spot = draw(st.integers(after_header, max(after_header, len(file.data))))
            file.data = file.data[:spot] + draw(st.sampled_from([b'"', b"\r", b"\x00", b"\xff", b"\xc3", b"\n", b","]))\
                + file.data[spot:]
    if not clean or not header_ok or encoding == "utf-16":
        file.records = None
    return file


# ---------------------------------------------------------------------------------------------- the database

def decimal(value):
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def time_text(value):
    return value if isinstance(value, str) else value.strftime("%Y-%m-%d %H:%M:%S")


def stored_trade(row):
    """A transactions row as a Trade."""
    return Trade(row.txn_ref, int(row.investor_id), row.stock_symbol, row.txn_type, int(row.quantity),
                 decimal(row.price), datetime.fromisoformat(time_text(row.txn_time)[:19]), decimal(row.fee))


def trades_of_batch(connection, batch_id):
    """{source_line: (Trade, txn_id)} of one batch's loaded trades."""
    t = transactions.c
    rows = connection.execute(select(t.txn_id, t.txn_ref, t.investor_id, t.stock_symbol, t.txn_type, t.quantity,
                                     t.price, t.txn_time, t.fee, t.source_line).where(t.batch_id == batch_id))
    return {row.source_line: stored_trade(row) for row in rows}


def stored_by_ref(connection, refs):
    t = transactions.c
    if not refs:
        return {}
    rows = connection.execute(select(t.txn_ref, t.investor_id, t.stock_symbol, t.txn_type, t.quantity, t.price,
                                     t.txn_time, t.fee).where(t.txn_ref.in_(sorted(refs))))
    return {row.txn_ref: stored_trade(row) for row in rows}


def rejects_of_batch(connection, batch_id):
    """[(line_number, reason)] of one batch."""
    r = rejected_transactions.c
    return connection.execute(select(r.line_number, r.reason).where(r.batch_id == batch_id)).all()


def assert_batch_accounted(connection, batch_id):
    """read = loaded + duplicates + rejected, the counts match the rows, every reject names its field."""
    batch = connection.execute(select(load_batches).where(load_batches.c.batch_id == batch_id)).one()
    assert batch.rows_read == batch.rows_loaded + batch.rows_duplicate + batch.rows_rejected, batch
    loaded, rejected = trades_of_batch(connection, batch_id), rejects_of_batch(connection, batch_id)
    assert (len(loaded), len(rejected)) == (batch.rows_loaded, batch.rows_rejected), batch
    for _, reason in rejected:
        assert reason and reason.startswith(FIELD_PREFIXES), reason
    return batch, loaded, rejected


def replayed_quantities(connection):
    """{(investor_id, stock_symbol): (quantity, trades)} from transactions alone: BUY adds, SELL subtracts unless
    it sells more than is held (an oversell changes nothing), in (txn_time, txn_id) order."""
    t = transactions.c
    rows = connection.execute(select(t.investor_id, t.stock_symbol, t.txn_type, t.quantity, t.txn_time, t.txn_id))
    positions = {}
    for row in sorted(rows, key=lambda row: (time_text(row.txn_time)[:19], row.txn_id)):
        quantity, count = positions.get((row.investor_id, row.stock_symbol), (0, 0))
        if row.txn_type == "BUY":
            quantity += row.quantity
        elif row.quantity <= quantity:
            quantity -= row.quantity
        positions[(row.investor_id, row.stock_symbol)] = (quantity, count + 1)
    return positions


def assert_portfolios_reconcile(engine):
    """Every position with a trade has its row, with the quantity and trade count of the independent replay."""
    p = portfolios.c
    with engine.connect() as connection:
        held = {(row.investor_id, row.stock_symbol): (int(row.quantity), int(row.trade_count))
                for row in connection.execute(select(p.investor_id, p.stock_symbol, p.quantity, p.trade_count))}
        assert held == replayed_quantities(connection)


def run_main(main, argv):
    """(exit code, stdout, stderr) of a script's main(argv), in this process. The engines it opens are disposed of
    (a script leaves that to its exit): thousands of calls would hold as many connections (PostgreSQL: 'too many
    clients')."""
    out, err, engines = io.StringIO(), io.StringIO(), []
    opened = db_config.get_engine

    def get_engine(*args, **kwargs):
        engines.append(opened(*args, **kwargs))
        return engines[-1]

    try:
        with mock.patch.object(db_config, "get_engine", get_engine), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        for engine in engines:
            engine.dispose()
        gc.unfreeze()  # cli.run freezes every object alive: thousands of examples would never be collected
    return code, out.getvalue(), err.getvalue()


def assert_failure_is_one_line(code, err, allowed=(0,)):
    """An allowed exit code, no traceback, and a failure told in one 'error:' line."""
    assert "Traceback" not in err and "unexpected error" not in err, err
    assert code in allowed, err
    if code:
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err


def assert_full_update_reconciles(url, engine):
    """`update_portfolio.py --full` succeeds and its positions reconcile with the transactions."""
    code, _, err = run_main(update_portfolio.main, ["--full", "--quiet", "--database-url", url])
    assert_failure_is_one_line(code, err)
    assert_portfolios_reconcile(engine)


# ---------------------------------------------------------------------------------------------- CSV property

def expected_values(cells, names, legacy, sha256, line):
    """The trade a record's cells stand for, read by the documented rules (an independent parse)."""
    value = {name: cells[index].strip(" \t") for index, name in enumerate(names) if index < len(cells)}
    moment = value["txn_date" if legacy else "txn_time"].replace("T", " ", 1)
    moment += {10: " 00:00:00", 16: ":00"}.get(len(moment), "")
    return Trade(f"L{sha256[:20]}-{line}" if legacy else value["txn_ref"], int(Decimal(value["investor_id"])),
                 value["stock_symbol"].upper(), value["txn_type"].upper(), int(Decimal(value["quantity"])),
                 Decimal(value["price"]), datetime.fromisoformat(moment), Decimal(value.get("fee") or 0))


def record_cells(data, delimiter, line):
    """The fields of the record starting at physical line `line` (1 = header), with Python's csv module."""
    lines = data.split(b"\n")[line - 1:]
    texts = (raw.decode("utf-8").removesuffix("\r") + "\n" for raw in lines)
    return next(csv.reader(texts, delimiter=delimiter, strict=True))


@contextlib.contextmanager
def first_chunk_rows(rows):
    """Make the loader's first chunk `rows` lines long: chunk boundaries fall inside small files (the outcome must
    not depend on them)."""
    usual, load_transactions.FIRST_CHUNK_ROWS = load_transactions.FIRST_CHUNK_ROWS, rows
    try:
        yield
    finally:
        load_transactions.FIRST_CHUNK_ROWS = usual


class CsvFuzz:
    """Loads generated files into one database and checks each load; counts the examples run."""

    def __init__(self, url, workdir):
        self.url, self.workdir, self.examples = url, workdir, 0
        self.engine = db_config.get_engine(url)
        seed_investors.seed_reference_data(self.engine)

    def check(self, file, retry, first_chunk):
        self.examples += 1
        path = os.path.join(self.workdir, f"fuzz-{uuid.uuid4().hex[:12]}.csv")
        with open(path, "wb") as handle:
            handle.write(file.data)
        try:
            with first_chunk_rows(first_chunk):
                batch = self.load_and_check(path, file, again=False)
            if retry and batch is not None and batch.status == "loaded":
                again = self.load_and_check(path, file, again=True)
                assert (again.rows_read, again.rows_loaded, again.rows_duplicate, again.rows_rejected) == (
                    batch.rows_read, 0, batch.rows_loaded + batch.rows_duplicate, batch.rows_rejected)
            assert_full_update_reconciles(self.url, self.engine)
        finally:
            os.remove(path)

    def load_and_check(self, path, file, again):
        """Load the file (again: --retry-rejects) and check its batch; the batch row (None: skipped as loaded)."""
        before = self.last_batch_id()
        code, _, err = run_main(load_transactions.main, ["--quiet", "--database-url", self.url, path]
                                + (["--retry-rejects"] if again else []))
        assert_failure_is_one_line(code, err, allowed=(0, 2))
        assert code == 0 or not file.header_ok or file.data.startswith(b"\xff\xfe"), err
        new = list(range(before + 1, self.last_batch_id() + 1))
        assert len(new) <= 1
        if not new:
            return None
        with self.engine.connect() as connection:
            batch, loaded, rejected = assert_batch_accounted(connection, new[0])
            assert (batch.status == "failed") == (code == 2), (batch, err)
            sha256 = batch.file_sha256
            for line, trade in loaded.items():
                assert trade == expected_values(record_cells(file.data, file.delimiter, line), file.names,
                                                file.legacy, sha256, line), line
            if file.records is not None and code == 0:
                self.check_every_record(connection, file, batch, loaded, dict(rejected), sha256)
        return batch

    def check_every_record(self, connection, file, batch, loaded, rejected, sha256):
        """A file whose records are known: each is loaded, a duplicate of the stored trade with its txn_ref, or
        rejected for a field it was given (a pristine record only as a conflict with the stored trade)."""
        assert batch.rows_read == len(file.records)
        duplicates = {}
        for record in file.records:
            if record.line in rejected:
                self.check_reason(record, rejected[record.line])
            elif record.line not in loaded:
                cells = record_cells(file.data, file.delimiter, record.line)
                duplicates[record.line] = expected_values(cells, file.names, file.legacy, sha256, record.line)
        assert len(duplicates) == batch.rows_duplicate
        stored = stored_by_ref(connection, {trade.ref for trade in duplicates.values()})
        for line, trade in duplicates.items():
            assert stored.get(trade.ref) == trade, line
        pristine = [r for r in file.records if not (r.mutated or r.reshaped) and r.line in rejected]
        stored = stored_by_ref(connection, {record.trade.ref for record in pristine})
        for record in pristine:
            assert "conflict" in rejected[record.line] and stored[record.trade.ref] != record.trade, record

    def check_reason(self, record, reason):
        """A reject names a field the record was given a hostile cell in, its shape, or a conflict of its ref."""
        allowed = ("record:", "txn_ref:", "quantity × price:", *(f"{name}:" for name in record.mutated))
        assert reason.startswith(allowed if record.mutated or record.reshaped else "txn_ref:"), (record, reason)

    def last_batch_id(self):
        with self.engine.connect() as connection:
            return connection.execute(select(load_batches.c.batch_id).order_by(
                load_batches.c.batch_id.desc()).limit(1)).scalar() or 0

    def close(self):
        self.engine.dispose()


def csv_property(fuzz, examples, profile="fuzz-ci"):
    """The CSV property as a hypothesis test over `fuzz` (a CsvFuzz), to be called."""
    @settings(settings.get_profile(profile), max_examples=examples)
    @given(file=trade_files(), retry=st.integers(0, 4).map(lambda n: n == 0),
           first_chunk=st.sampled_from([load_transactions.FIRST_CHUNK_ROWS, 1, 2, 3, 5]))
    def run(file, retry, first_chunk):
        fuzz.check(file, retry, first_chunk)
    return run


def examples_for(database_url, sqlite_examples):
    """Fewer examples on the servers, where each costs more."""
    return sqlite_examples if database_url.startswith("sqlite") else max(2, sqlite_examples // SERVER_SHARE)


def test_generated_trade_files_never_crash_and_every_row_is_accounted_for(database_url, tmp_path):
    fuzz = CsvFuzz(database_url, str(tmp_path))
    try:
        csv_property(fuzz, examples_for(database_url, CI_EXAMPLES))()
    finally:
        fuzz.close()
    assert fuzz.examples >= examples_for(database_url, CI_EXAMPLES) // 2


# ---------------------------------------------------------------------------------------------- messages

JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def json_value(text):
    """A field's value in JSON: the text as a string (spaces and tabs around it included), or as a number when it is
    written as a JSON number."""
    number = text.strip(" \t")
    return st.sampled_from([json.dumps(text)] + ([number] if JSON_NUMBER.fullmatch(number) else []))


BROKEN_VALUES = ["true", "false", "null", "[]", "[1]", "{}", '{"a": 1}', "NaN", "Infinity", "-Infinity", "1e999",
                 "1" * 400, "-1", "1.5e3", "0.1", '"\\ud800"', '"\\u0000"', '"\\n"', '"1001\\u00a0"', '""',
                 '"\u0661\u0660"', "[[[[[[[[[[]]]]]]]]]]"]


MESSAGE_DAMAGE = ["none"] * 6 + ["broken value", "missing key", "extra key", "repeated key", "not JSON"]


@st.composite
def messages(draw):
    """(a queue message's body, the trade it stands for when it is not broken, else None): a valid trade in JSON
    with values as strings or numbers, maybe broken."""
    trade = draw(TRADES)
    cells = draw(valid_cells(trade, legacy=False))
    if draw(st.booleans()):
        del cells["fee"]
        trade = replace(trade, fee=Decimal(0))
    pairs = [(json.dumps(name), draw(json_value(text))) for name, text in cells.items()]
    damage = draw(st.sampled_from(MESSAGE_DAMAGE))
    if damage == "broken value":
        spot = draw(st.integers(0, len(pairs) - 1))
        pairs[spot] = (pairs[spot][0], draw(st.one_of(st.sampled_from(BROKEN_VALUES),
                                                      st.text(max_size=8).map(json.dumps))))
    elif damage == "missing key":
        del pairs[draw(st.integers(0, len(pairs) - 1))]
    elif damage == "extra key":
        pairs.append((json.dumps(draw(st.text(max_size=8))), draw(st.sampled_from(BROKEN_VALUES))))
    elif damage == "repeated key":
        pairs.append(draw(st.sampled_from(pairs)))
    body = "{" + ", ".join(f"{key}: {value}" for key, value in pairs) + "}"
    if damage != "not JSON":
        return body.encode(), trade if damage == "none" else None
    return draw(st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.integers(1, len(body) - 1).map(lambda cut: body[:cut].encode()),
        st.sampled_from([b"null", b"[]", b"1", b'"trade"', b"[" * 5000, b"{" * 20_000, body.encode() * 60]),
    )), None


def expected_message_trade(body):
    """The trade a loaded message stands for, read with json (an independent parse); a number is the text it is
    written with (docs/live-mode.md): `1.5e3` is the txn_ref '1.5e3'."""
    message = json.loads(body, parse_float=str, parse_int=str)
    value = {key: item.strip(" \t") for key, item in message.items() if isinstance(item, str)}
    moment = value["txn_time"].replace("T", " ", 1)
    moment += ":00" if len(moment) == 16 else ""
    return Trade(value["txn_ref"], int(Decimal(value["investor_id"])), value["stock_symbol"].upper(),
                 value["txn_type"].upper(), int(Decimal(value["quantity"])), Decimal(value["price"]),
                 datetime.fromisoformat(moment), Decimal(value.get("fee") or 0))


NUL_SYMBOL_MESSAGE = (b'{"txn_ref": "NUL-1", "investor_id": 1001, "stock_symbol": "AA\\u0000PL", "txn_type": "BUY", '
                      b'"quantity": 1, "price": 1, "txn_time": "2026-01-05 10:00:00"}')


class QueueFuzz:
    """Applies generated messages as the consumer does (parse_message, then LiveApplier.apply) to one database."""

    def __init__(self, url):
        self.url, self.examples = url, 0
        self.engine = db_config.get_engine(url)
        seed_investors.seed_reference_data(self.engine)
        self.source = f"queue:fuzz-{uuid.uuid4().hex[:8]}"
        self.applier = live_apply.LiveApplier(self.engine, self.source)

    def check(self, messages, redelivered):
        self.examples += 1
        bodies = [body for body, _ in messages]
        outcomes = self.apply(bodies, redelivered=False)
        self.check_valid_messages(messages, outcomes)
        if redelivered:  # the broker delivers the same messages again (a consumer died before acknowledging)
            assert all(outcome.status != "loaded" for outcome in self.apply(bodies, redelivered=True))
        self.assert_live_batches_accounted()
        assert_portfolios_reconcile(self.engine)  # live batches apply their trades themselves
        if self.examples % 5 == 1:
            assert_full_update_reconciles(self.url, self.engine)

    def apply(self, bodies, redelivered):
        """Apply the messages as one batch of the consumer; check each outcome and loaded trade; the outcomes."""
        result = self.applier.apply([trade_queue.parse_message(body, redelivered) for body in bodies])
        first_line = self.applier.batch.records - len(bodies) + 1
        assert len(result.outcomes) == len(bodies)
        with self.engine.connect() as connection:
            loaded = trades_of_batch(connection, self.applier.batch.batch_id)
        for line, body, outcome in zip(itertools.count(first_line), bodies, result.outcomes):
            assert outcome.status in ("loaded", "duplicate", "rejected"), outcome
            assert (outcome.status == "loaded") == (line in loaded), (body, outcome)
            if outcome.status == "rejected":
                assert outcome.reason and outcome.reason.startswith(FIELD_PREFIXES), (body, outcome)
            if outcome.status == "loaded":
                assert loaded[line] == expected_message_trade(body), body
        return result.outcomes

    def check_valid_messages(self, messages, outcomes):
        """A valid message is loaded, a duplicate of the stored trade, or rejected as a conflict with it."""
        valid = [(trade, outcome) for (_, trade), outcome in zip(messages, outcomes) if trade is not None]
        with self.engine.connect() as connection:
            stored = stored_by_ref(connection, {trade.ref for trade, _ in valid})
        for trade, outcome in valid:
            if outcome.status == "rejected":
                assert "conflict" in outcome.reason and stored[trade.ref] != trade, (trade, outcome)
            else:
                assert stored[trade.ref] == trade, (trade, outcome)

    def assert_live_batches_accounted(self):
        with self.engine.connect() as connection:
            ids = connection.execute(select(load_batches.c.batch_id).where(
                load_batches.c.source == self.source)).scalars().all()
            for batch_id in ids:
                assert_batch_accounted(connection, batch_id)

    def close(self):
        self.engine.dispose()


def queue_property(fuzz, examples, profile="fuzz-ci"):
    """The message property as a hypothesis test over `fuzz` (a QueueFuzz), to be called."""
    @settings(settings.get_profile(profile), max_examples=examples)
    @given(messages=st.lists(messages(), min_size=1, max_size=8), redelivered=st.booleans())
    @example(messages=[(NUL_SYMBOL_MESSAGE, None)], redelivered=False)
    def run(messages, redelivered):
        fuzz.check(messages, redelivered)
    return run


def test_generated_messages_never_crash_the_consumer_and_each_is_applied_a_duplicate_or_rejected(database_url):
    fuzz = QueueFuzz(database_url)
    try:
        queue_property(fuzz, examples_for(database_url, CI_EXAMPLES))()
    finally:
        fuzz.close()
    assert fuzz.examples >= examples_for(database_url, CI_EXAMPLES) // 2


def broker_bodies():
    """Messages for the consumer through RabbitMQ: a valid trade with each broken value in turn, valid trades, one
    sent twice, one conflicting, and bodies that are not trades at all."""
    trade = {"investor_id": 1001, "stock_symbol": "AAPL", "txn_type": "BUY", "quantity": 2, "price": "10.5",
             "txn_time": "2026-01-05 10:00:00"}
    valid = [json.dumps({**trade, "txn_ref": f"MQ-{number}"}).encode() for number in range(5)]
    broken = [("{" + ", ".join([f'"txn_ref": "MQB-{number}"', f'"price": {value}', *(
        f"{json.dumps(key)}: {json.dumps(item)}" for key, item in trade.items() if key != "price")]) + "}").encode()
        for number, value in enumerate(BROKEN_VALUES)]
    conflict = json.dumps({**trade, "txn_ref": "MQ-0", "quantity": 3}).encode()
    return valid + broken + [valid[1], conflict, NUL_SYMBOL_MESSAGE, b"\xff\xfe", b"[" * 5000, b"{}" * 6000]


def test_hostile_messages_through_rabbitmq_each_end_loaded_a_duplicate_or_dead_lettered(database_url, broker):
    """The consumer process takes every message: each is counted once, every reject is recorded and
    dead-lettered with its reason, nothing stays in the queue, and it exits 0 on SIGTERM."""
    channel, created = broker
    queue = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    created += [queue, f"{queue}.rejected"]
    engine = db_config.get_engine(database_url)
    seed_investors.seed_reference_data(engine)
    bodies = broker_bodies()
    channel.queue_declare(queue, durable=True)
    for body in bodies:
        channel.basic_publish("", queue, body)
    consumer = subprocess.Popen([sys.executable, os.path.join(PROJECT, "load_transactions.py"), "--queue",
                                 "--queue-name", queue, "--database-url", database_url, "--report-every", "0"],
                                cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while live_rows_read(engine) < len(bodies) and consumer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        consumer.send_signal(signal.SIGTERM)
        out, err = consumer.communicate(timeout=60)
    with engine.connect() as connection:
        rejected = connection.execute(select(rejected_transactions.c.reason)).scalars().all()
    engine.dispose()
    assert consumer.returncode == 0, err
    counts = re.search(r"(\d+) messages?, (\d+) loaded, (\d+) duplicates?, (\d+) rejected", out).groups()
    read, loaded, duplicates, rejects = map(int, counts)
    assert (read, loaded + duplicates + rejects, rejects) == (len(bodies), len(bodies), len(rejected))
    assert (loaded, duplicates) == (6, 1)  # MQ-0 ... MQ-4 and the one valid broken value ("0.1"); MQ-1 again
    assert all(reason.startswith(FIELD_PREFIXES) for reason in rejected)
    assert channel.queue_declare(f"{queue}.rejected", passive=True).method.message_count == rejects
    assert channel.queue_declare(queue, passive=True).method.message_count == 0


def live_rows_read(engine):
    with engine.connect() as connection:
        return connection.execute(select(func.sum(load_batches.c.rows_read)).where(
            load_batches.c.source.like("queue:%"))).scalar() or 0


# ---------------------------------------------------------------------------------------------- bugs found

@pytest.mark.parametrize("investor_id", ["1007.", "+1007", "1007.0", "0001007", " 1007\t"])
def test_a_message_whose_investor_id_is_written_as_another_whole_number_form_loads(sqlite_url, investor_id):
    """Found by the fuzz: the consumer looked up only investor ids written as bare digits, so a first message
    with investor_id '1007.' (a whole number, as in a file) was rejected as 'not a known investor'."""
    engine = db_config.get_engine(sqlite_url)
    seed_investors.seed_reference_data(engine)
    body = json.dumps({"txn_ref": "R-1", "investor_id": investor_id, "stock_symbol": "AAPL", "txn_type": "BUY",
                       "quantity": 1, "price": "10", "txn_time": "2026-01-05 10:00:00"}).encode()
    result = live_apply.LiveApplier(engine, "queue:regression").apply([trade_queue.parse_message(body)])
    engine.dispose()
    assert result.outcomes == [live_apply.Outcome("loaded")]


def test_a_message_with_a_nul_in_its_symbol_is_a_reject_and_does_not_stop_the_consumer(database_url):
    """Found by the fuzz: the consumer looked the symbol up as given, and PostgreSQL refuses a NUL in a query
    parameter, so one such message failed every live batch it was in (the consumer exited and got it again)."""
    engine = db_config.get_engine(database_url)
    seed_investors.seed_reference_data(engine)
    result = live_apply.LiveApplier(engine, "queue:regression").apply([trade_queue.parse_message(NUL_SYMBOL_MESSAGE)])
    engine.dispose()
    assert result.outcomes == [live_apply.Outcome("rejected", "stock_symbol: 'AA\\x00PL' is not a known stock")]


NUL_FEE_REASON = "fee: {!r} is not a plain decimal >= 0 ('.' before decimals, no thousands separators)"


def test_a_fee_of_nuls_only_in_a_file_is_a_reject_not_a_fee_of_zero(sqlite_url, tmp_path):
    """Found by the fuzz: numpy strips a cell made only of NULs to '' (and counts its length 0), so a fee cell
    '\\x00' was read as an empty fee, 0, and the trade loaded as if the file said nothing."""
    engine = db_config.get_engine(sqlite_url)
    seed_investors.seed_reference_data(engine)
    path = tmp_path / "nul-fee.csv"
    path.write_bytes(b"txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,fee\n"
                     b"N-1,1001,AAPL,BUY,1,10,2026-01-05 10:00:00,\x00\nN-2,1001,AAPL,BUY,1,10,2026-01-05 10:00:00,"
                     b"\x00\x00\n\x00,1001,AAPL,BUY,1,10,2026-01-05 10:00:00,\n")
    code, _, err = run_main(load_transactions.main, ["--quiet", "--database-url", sqlite_url, str(path)])
    with engine.connect() as connection:
        reasons = connection.execute(select(rejected_transactions.c.reason).order_by(
            rejected_transactions.c.line_number)).scalars().all()
        loaded = connection.execute(select(func.count()).select_from(transactions)).scalar()
    engine.dispose()
    assert (code, loaded) == (0, 0), err
    assert reasons == [NUL_FEE_REASON.format("\x00"), NUL_FEE_REASON.format("\x00\x00"),
                       "txn_ref: '\\x00' holds a character other than printable ASCII"]


def test_a_message_with_a_fee_of_nul_is_a_reject(sqlite_url):
    """The same through the queue: `"fee": "\\u0000"` is a reject naming the fee, not a fee of 0."""
    engine = db_config.get_engine(sqlite_url)
    seed_investors.seed_reference_data(engine)
    body = NUL_SYMBOL_MESSAGE.replace(b"AA\\u0000PL", b"AAPL").replace(b"}", b', "fee": "\\u0000"}')
    result = live_apply.LiveApplier(engine, "queue:regression").apply([trade_queue.parse_message(body)])
    engine.dispose()
    assert result.outcomes == [live_apply.Outcome("rejected", NUL_FEE_REASON.format("\x00"))]
