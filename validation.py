"""Validation of trade rows (docs/file-formats.md, docs/validation.md), for a batch of rows from any source: a
file chunk, the feed, a queue.

A batch is a DataFrame of text cells with the canonical columns plus `line_number` and `raw_record`.
`validate_trades` returns the good rows, normalized, and one reason per bad row naming field and value.
"""
import csv
import hashlib
from decimal import Decimal
from collections import namedtuple
from datetime import timedelta

import numpy as np
import pandas as pd

import constants

TRADE_COLUMNS = ("txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time")
LEGACY_COLUMNS = ("investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_date")
PRICE_COLUMNS = ("stock_symbol", "price_date", "close_price")
ACTION_COLUMNS = ("stock_symbol", "ex_date", "action", "value")
OPTIONAL_COLUMNS = {"canonical": ("fee",), "legacy": ("fee",)}  # read when the header names them
RECORD_COLUMNS = (*TRADE_COLUMNS, "fee")  # the fields of a trade record from any source; fee may be absent
LAYOUT_COLUMNS = (("canonical", TRADE_COLUMNS), ("legacy", LEGACY_COLUMNS), ("prices", PRICE_COLUMNS),
                  ("actions", ACTION_COLUMNS))
MAX_TXN_REF_LENGTH = 64
MAX_QUANTITY = 2**31 - 1  # INT column
MAX_PRICE = 10**9  # below this every database keeps 4 decimals exactly (SQLite stores a binary float)
MAX_NOTIONAL = 10**12  # quantity × price of one trade, currency units: positions' sums stay exact DECIMALs
EARLIEST_TIME = "1900-01-01T00:00:00"
TXN_TYPES = frozenset({"BUY", "SELL"})
TEXT = np.dtypes.StringDType()

# kind: 'canonical', 'legacy', 'prices' or 'actions'; names: the columns read (the required ones, then the optional
# ones the header names); columns: their positions; width: header fields
FileLayout = namedtuple("FileLayout", "kind columns width delimiter names")
ValidationContext = namedtuple("ValidationContext", "investor_ids symbols latest_allowed_time")
DELIMITERS = {",": "commas", ";": "semicolons", "\t": "tabs"}  # comma first: the format's own separator


def detect_layout(header_text, source):
    """The layout of a file from its header line; ValueError (fit for the user) if no layout fits.

    Comma-separated is the format; a header that only fits when split on semicolons or tabs (a spreadsheet's
    export) is read with that delimiter.
    """
    if "\r" in header_text:
        raise ValueError(f"{source}: line 1: header holds a carriage return inside the line (old Mac line endings?); "
                         "save the file with LF or CRLF line endings")
    for delimiter in DELIMITERS:
        names = [name.strip().lower() for name in next(csv.reader([header_text], delimiter=delimiter), [])]
        for kind, required in LAYOUT_COLUMNS:
            if set(required) <= set(names):
                read = (*required, *(column for column in OPTIONAL_COLUMNS.get(kind, ()) if column in names))
                _refuse_repeated_columns(names, read, source)
                return FileLayout(kind, [names.index(column) for column in read], len(names), delimiter, read)
    delimiter = _likely_delimiter(header_text)
    names = [name.strip().lower() for name in next(csv.reader([header_text], delimiter=delimiter), [])]
    if {"ex_date", "action"} & set(names):
        missing = [c for c in ACTION_COLUMNS if c not in names]
        raise ValueError(f"{source}: line 1: header lacks required column(s) {', '.join(missing)}; expected "
                         f"{','.join(ACTION_COLUMNS)} (a corporate actions file), found {header_text[:200]}")
    missing = [c for c in TRADE_COLUMNS if c not in names]
    hint = "" if delimiter == "," else f" (it is separated by {DELIMITERS[delimiter]}, not commas)"
    raise ValueError(
        f"{source}: line 1: header lacks required column(s) {', '.join(missing)}; "
        f"expected {','.join(TRADE_COLUMNS)} (or the legacy {','.join(LEGACY_COLUMNS)}), found {header_text[:200]}"
        + hint
    )


def _refuse_repeated_columns(names, required, source):
    """A required column named twice: which one holds the value? Refuse rather than pick one silently."""
    repeated = [column for column in required if names.count(column) > 1]
    if repeated:
        raise ValueError(f"{source}: line 1: header names column(s) {', '.join(repeated)} more than once")


def _likely_delimiter(header_text):
    """The delimiter that splits a header: a comma, else a semicolon or tab found in it."""
    return next((d for d in DELIMITERS if d in header_text), ",") if "," not in header_text else ","


def make_context(investor_ids, symbols, load_started):
    """What validation checks against: existing investors and stocks, and the latest acceptable txn_time."""
    latest = load_started + timedelta(seconds=constants.FUTURE_TOLERANCE_SECONDS)
    return ValidationContext(frozenset(int(i) for i in investor_ids), frozenset(symbols), latest)


def legacy_txn_ref(file_sha256, line_number):
    """The deterministic txn_ref of a legacy row: the same file and line always give the same ref."""
    return f"L{file_sha256[:20]}-{line_number}"


def validate_trades(batch, context):
    """Split a batch into (valid rows, rejected rows).

    valid: txn_ref, investor_id (int), stock_symbol, txn_type (upper-case), quantity (int), price (the decimal
    text with exactly 4 decimals, see price_text), price_value (float, for comparisons), txn_time
    ('YYYY-MM-DD HH:MM:SS'), fee (as price: '0.0000' when the batch has no fee column or the cell is empty),
    line_number, raw_record; rejected: line_number, reason, raw_record. The checks are vectorized (numpy string
    functions): most rows are good, and a chunk of 100,000 rows must cost well under a second.
    """
    columns = [column for column in RECORD_COLUMNS if column in batch]  # all but the optional fee are there
    cells = {column: _trimmed(batch[column], batch.attrs.get("trimmed")) for column in columns}
    plain = {column: np.ones(len(batch), dtype=bool) if batch.attrs.get("printable_ascii")
             else _printable_ascii(cells[column]) for column in columns}
    symbol, known_symbol = _known(np.strings.upper(cells["stock_symbol"]), context.symbols)
    txn_type, known_type = _known(np.strings.upper(cells["txn_type"]), TXN_TYPES)
    investor_id = _whole_numbers(cells["investor_id"], plain["investor_id"])
    quantity = _whole_numbers(cells["quantity"], plain["quantity"])
    price, decimals = _plain_decimals(cells["price"], plain["price"])
    fee, fee_decimals, fee_cells = _fees(cells.get("fee"), plain.get("fee"), len(batch))
    time_field = batch.attrs.get("time_field", "txn_time")  # 'txn_date' in legacy files: a date is enough
    txn_time, txn_text = _date_times(cells["txn_time"], plain["txn_time"], date_only_ok=time_field == "txn_date")
    ref_length = np.strings.str_len(cells["txn_ref"])
    problems = [
        (cells["txn_ref"] == "", "txn_ref: is empty"),
        (ref_length > MAX_TXN_REF_LENGTH, f"txn_ref: {{txn_ref!r}} is longer than {MAX_TXN_REF_LENGTH} characters"),
        ((cells["txn_ref"] != "") & ~plain["txn_ref"],
         "txn_ref: {txn_ref!r} holds a character other than printable ASCII"),
        (np.isnan(investor_id), "investor_id: {investor_id!r} is not an integer"),
        (~np.isnan(investor_id) & ~np.isin(investor_id, list(context.investor_ids)),
         "investor_id: {investor_id} is not a known investor"),
        (~plain["stock_symbol"] | ~known_symbol, "stock_symbol: {stock_symbol!r} is not a known stock"),
        (~plain["txn_type"] | ~known_type, "txn_type: {txn_type!r} is not BUY or SELL"),
        (np.isnan(quantity) | (quantity <= 0) | (quantity > MAX_QUANTITY),
         "quantity: {quantity!r} is not a whole number > 0"),
        (np.isnan(price) | (price <= 0),
         "price: {price!r} is not a plain decimal > 0 ('.' before decimals, no thousands separators)"),
        (price >= MAX_PRICE, f"price: {{price!r}} is not below {MAX_PRICE:,}"),
        (decimals > 4, "price: {price!r} has more than 4 decimal places"),
        (_notional_too_large(quantity, price, cells["price"]),
         f"quantity × price: {{quantity}} × {{price}} is not below {MAX_NOTIONAL:,}"),
        (np.isnat(txn_time), time_field + ": {txn_time!r} is not a real date-time YYYY-MM-DD HH:MM:SS"
         + (" or date YYYY-MM-DD" if time_field == "txn_date" else "")),
        (txn_time < np.datetime64(EARLIEST_TIME), time_field + f": {{txn_time!r}} is before {EARLIEST_TIME[:4]}"),
        (txn_time > np.datetime64(context.latest_allowed_time), time_field + ": {txn_time!r} is in the future "
         f"(later than {context.latest_allowed_time:%Y-%m-%d %H:%M:%S})"),
        *_fee_problems(fee, fee_decimals),
    ]
    reasons = _reasons(problems, cells, len(batch))
    bad = np.array([reason is not None for reason in reasons], dtype=bool) if len(reasons) else np.zeros(0, bool)
    good = ~bad
    line_number, raw_record = batch["line_number"].to_numpy(), batch["raw_record"].to_numpy(dtype=object)
    rejected = pd.DataFrame({"line_number": line_number[bad], "reason": reasons[bad], "raw_record": raw_record[bad]})
    valid = pd.DataFrame({
        "txn_ref": cells["txn_ref"][good].astype(object),
        "investor_id": investor_id[good].astype(np.int64),
        "stock_symbol": symbol[good],
        "txn_type": txn_type[good],
        "quantity": quantity[good].astype(np.int64),
        "price": price_text(cells["price"][good]).astype(object),
        "price_value": price[good],
        "txn_time": txn_text[good].astype(object),
        "fee": _fee_text(fee_cells, good),
        "line_number": line_number[good],
        "raw_record": raw_record[good],
    })
    return valid, rejected


def _fees(cells, plain, length):
    """(fees as float, NaN where not a plain decimal; their decimal places; the cells, '0' where empty). A batch
    without a fee column (cells None) has fee 0 on every row, at no cost per row."""
    if cells is None:
        return np.zeros(length), np.zeros(length, dtype=np.int64), None
    cells = np.where(cells == "", "0", cells)  # not str_len: it counts a cell of NULs as empty
    return *_plain_decimals(cells, plain), cells


def _fee_text(cells, good):
    """The good rows' fees as price_text writes them ('0.0000' throughout when the batch has no fee column)."""
    return np.full(int(good.sum()), "0.0000", dtype=object) if cells is None else price_text(cells[good]).astype(object)


def _fee_problems(fee, decimals):
    """(mask, reason template) of the fee's rules: a plain decimal >= 0 below MAX_PRICE with at most 4 decimals
    (the rules of a price, 0 allowed)."""
    return [
        (np.isnan(fee), "fee: {fee!r} is not a plain decimal >= 0 ('.' before decimals, no thousands separators)"),
        (fee >= MAX_PRICE, f"fee: {{fee!r}} is not below {MAX_PRICE:,}"),
        (decimals > 4, "fee: {fee!r} has more than 4 decimal places"),
    ]


def _reasons(problems, cells, length):
    """One '; '-joined reason per row with problems, None for good rows (an object array)."""
    reasons = np.full(length, None, dtype=object)
    for mask, template in problems:
        rows = np.flatnonzero(mask)
        for row in rows:
            text = template.format(**{column: _shown(str(values[row])) for column, values in cells.items()})
            reasons[row] = text if reasons[row] is None else f"{reasons[row]}; {text}"
    return reasons


def _shown(value, limit=100):
    """A value as a reason quotes it: cut after `limit` characters (a 1 MB field makes no readable reason)."""
    return value if len(value) <= limit else f"{value[:limit]}… ({len(value):,} characters)"


def _trimmed(column, spaceless=False):
    """The cells as numpy text without leading and trailing ASCII spaces and tabs (other spaces are kept);
    spaceless: no cell is known to have any (load_transactions.PlainChunk)."""
    text = np.asarray(column.to_numpy(dtype=object), dtype=TEXT)
    if spaceless:
        return text
    trimmed = np.strings.strip(text, " \t")
    # numpy strips a cell of NULs only ('\x00') to '' as if they were padding (and its str_len is 0): such cells are
    # trimmed in Python; == "" is the reliable test of an empty cell
    for row in np.flatnonzero((trimmed == "") & (text != "")):
        trimmed[row] = str(text[row]).strip(" \t")
    return trimmed


def _known(cells, allowed):
    """(the cells as an object array holding one str object per distinct value: they pickle once each; is each
    cell in `allowed`?), by hashing the distinct values, not sorting."""
    codes, distinct = pd.factorize(cells.astype(object))
    distinct = np.asarray(distinct, dtype=object)
    return distinct[codes], np.array([value in allowed for value in distinct], dtype=bool)[codes]


def _printable_ascii(cells):
    """Is each cell printable ASCII only (no control character, no NUL, no other script's digits or spaces)?"""
    return np.fromiter((text.isascii() and text.isprintable() for text in cells.astype(object)), dtype=bool,
                       count=len(cells))


def _unsigned(text):
    """The text without one leading '+'."""
    plus = np.strings.startswith(text, "+")
    return np.where(plus, np.strings.slice(text, 1, None), text) if plus.any() else text


def _whole_numbers(text, plain):
    """Whole numbers as float (exact below 2**53), NaN where the text is not one ('5.0' is one, '2.5' not)."""
    digits = _unsigned(text)
    dotted = np.strings.find(digits, ".") > 0
    if dotted.any():  # '5.0', '5.' count as whole: drop a fractional part made of zeros only (rare)
        digits = digits.copy()
        for row in np.flatnonzero(dotted):
            head, _, tail = str(digits[row]).partition(".")
            if not tail.strip("0"):
                digits[row] = head
    ok = plain & np.strings.isdigit(digits)  # ASCII only: isdigit alone takes '１０' and '١٠'
    return _to_float(digits, ok)


def whole_numbers_in(texts):
    """The whole numbers among these texts, read as an id column is (a set of int; the other texts left out)."""
    cells = _trimmed(pd.Series(list(texts), dtype=object))
    values = _whole_numbers(cells, _printable_ascii(cells))
    return {int(value) for value in values[~np.isnan(values)]}


def _plain_decimals(text, plain):
    """(plain decimals as float, NaN where not one; decimal places). NaN, inf, 1e3, 1,000.00 are not plain."""
    unsigned = _unsigned(text)
    ok = plain & (np.strings.count(unsigned, ".") <= 1) & np.strings.isdigit(np.strings.replace(unsigned, ".", "", 1))
    point = np.strings.find(unsigned, ".")
    decimals = np.where(ok & (point >= 0), np.strings.str_len(unsigned) - point - 1, 0)
    return _to_float(unsigned, ok), decimals


def price_text(text):
    """Valid prices as decimal text with exactly 4 decimals and no sign ('+010.5' -> '10.5000').

    The one form of a price that loading stores, and compares as part of a trade's values text (dialects.values_text).
    """
    whole, _, fraction = np.strings.partition(_unsigned(text), np.asarray(".", dtype=TEXT))
    whole = np.strings.lstrip(whole, "0")
    whole = np.where(np.strings.str_len(whole) == 0, "0", whole)
    return np.strings.add(np.strings.add(whole, "."), np.strings.ljust(fraction, 4, "0"))


def _notional_too_large(quantity, price, price_cells):
    """Is quantity × price at or above MAX_NOTIONAL? Floats decide, except within a unit of the limit (exact)."""
    notional = quantity * price
    close = np.flatnonzero(np.abs(notional - MAX_NOTIONAL) < 1)
    too_large = notional >= MAX_NOTIONAL
    for row in close:
        too_large[row] = int(quantity[row]) * Decimal(str(_unsigned(price_cells[row:row + 1])[0])) >= MAX_NOTIONAL
    return too_large


def _to_float(text, ok):
    if ok.all():  # the usual chunk: no copy of the good cells
        return text.astype(np.float64)
    values = np.full(len(text), np.nan)
    if ok.any():
        values[ok] = text[ok].astype(np.float64)
    return values


def _date_times(text, plain, date_only_ok=False):
    """(datetime64 with NaT where not a real 'YYYY-MM-DD HH:MM[:SS]' (or with T), or with date_only_ok a bare
    'YYYY-MM-DD' at 00:00:00; the normalized text). Seconds run to 59: a leap second is not a real time here."""
    normalized = np.strings.replace(text, "T", " ", 1)
    lengths = np.strings.str_len(normalized)
    normalized = np.where(lengths == 16, np.strings.add(normalized, ":00"), normalized)
    if date_only_ok:
        normalized = np.where(lengths == 10, np.strings.add(normalized, " 00:00:00"), normalized)
    shaped = (plain & (np.strings.str_len(normalized) == 19) & (np.strings.find(normalized, " ") == 10)
              & (np.strings.slice(normalized, 17, 19) <= "59"))
    parsed = pd.to_datetime(np.where(shaped, normalized, "").astype(object), format="%Y-%m-%d %H:%M:%S",
                            errors="coerce")
    return np.asarray(parsed, dtype="datetime64[s]"), normalized


def file_sha256(path, block_size=1 << 20):
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()
