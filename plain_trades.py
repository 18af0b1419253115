"""The fast lane of trade validation: the rows of a plain chunk whose every field is already in its plainest form,
checked on the file's bytes with numpy.

A plain chunk (load_transactions.PlainChunk) is lines of printable ASCII without quotes, each of the header's width,
so splitting on the delimiter is the whole CSV parse. Most rows of a broker's file are then also in the one form
that validation stores: a txn_ref without edge spaces, digits for the ids and the quantity, a price of digits with
at most one '.' and 4 decimals, a time 'YYYY-MM-DD HH:MM:SS', a known symbol and type. Such a row is sure: it is
checked here against every rule of validation.validate_trades (known investor and stock, ranges, calendar, no
later than the context allows, notional) without a Python object per cell. Every other row (a '+' sign, a
'T' in the time, a space, a txn_ref the chunk repeats, any bad value) is left to validate_trades, so that reasons
and the normalisation of odd forms stay in one place. A sure row's values are the ones validate_trades gives it
(tests/test_plain_trades.py compares the two on generated and hostile chunks).
"""
import functools
from typing import NamedTuple

import numpy as np

import validation

NEWLINE, CARRIAGE_RETURN, SPACE, POINT = ord("\n"), ord("\r"), ord(" "), ord(".")
MAX_DIGITS = 9  # investor_id and quantity: at most 9 digits read here (the INT bound is checked on the value)
MAX_DECIMAL_CHARS = 20  # a longer price or fee cell (leading zeros) is left to validate_trades
MAX_CODE_CHARS = 16  # stock symbol and txn_type cells: longer ones are left to validate_trades
EARLIEST_TEXT = validation.EARLIEST_TIME.replace("T", " ").encode()
TIME_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]  # positions in 'YYYY-MM-DD HH:MM:SS'
TIME_MARKS = {4: b"-", 7: b"-", 10: b" ", 13: b":", 16: b":"}
DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


class Fields(NamedTuple):
    """Where each field of each line lies in the chunk's bytes: [start, end) per line and column."""
    codes: np.ndarray  # the bytes as uint8
    starts: np.ndarray  # (lines, width)
    ends: np.ndarray
    non_digits: np.ndarray  # running count of bytes that are not ASCII digits, before each position


class SureTrades(NamedTuple):
    """The sure rows of a chunk (their positions in it) and their values as validate_trades gives them, one numpy
    array per bulk_insert.TRADE_COLUMNS entry: texts as ASCII bytes, ids and quantities as int64, symbols and
    types as str objects."""
    rows: np.ndarray
    columns: list


def sure_trades(data, layout, context):
    """The SureTrades of a plain chunk's bytes (canonical layout); the other rows are for validate_trades."""
    fields = split_fields(data, layout.delimiter, layout.width)
    column = dict(zip(layout.names, layout.columns))
    txn_ref, sure = _refs(fields, column["txn_ref"])
    investor_id, known = _whole_numbers(fields, column["investor_id"])
    sure &= known & np.isin(investor_id, _id_array(context.investor_ids))
    symbol, known = _codes(fields, column["stock_symbol"], context.symbols)
    sure &= known
    txn_type, known = _codes(fields, column["txn_type"], validation.TXN_TYPES)
    sure &= known
    quantity, known = _whole_numbers(fields, column["quantity"])
    sure &= known & (quantity >= 1) & (quantity <= validation.MAX_QUANTITY)
    price, price_value, known = _decimals(fields, column["price"])
    sure &= known & (price_value > 0) & (quantity * price_value < validation.MAX_NOTIONAL - 1)
    txn_time, known = _times(fields, column["txn_time"], context.latest_allowed_time)
    sure &= known
    if "fee" in column:
        fee, _, known = _decimals(fields, column["fee"], empty_is_zero=True)
        sure &= known
    else:
        fee = np.full(len(sure), b"0.0000")
    rows = np.flatnonzero(sure)
    return SureTrades(rows, [values[rows] for values in (txn_ref, investor_id, symbol, txn_type, quantity, price,
                                                         txn_time, fee)])


@functools.lru_cache(maxsize=2)
def _id_array(investor_ids):
    """The known investor ids (a frozenset) as an array, made once per load rather than per chunk."""
    return np.fromiter(investor_ids, np.int64, len(investor_ids))


def split_fields(data, delimiter, width):
    """The Fields of plain lines that each hold `width` fields (a final line without its ending included)."""
    codes = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero((codes == ord(delimiter)) | (codes == NEWLINE))
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(codes))
    starts = np.concatenate([[0], ends[:-1] + 1]).reshape(-1, width)
    ends = ends.reshape(-1, width)
    last = ends[:, -1]
    last -= (last > starts[:, -1]) & (codes[np.maximum(last - 1, 0)] == CARRIAGE_RETURN)  # CRLF endings
    non_digits = np.concatenate([[0], np.cumsum((codes < ord("0")) | (codes > ord("9")), dtype=np.int64)])
    return Fields(codes, starts, ends, non_digits)


def gathered(fields, column, limit):
    """(the column's cells as a numpy bytes array, cut at `limit` bytes; does each cell fit in `limit`?)."""
    starts, lengths = fields.starts[:, column], fields.ends[:, column] - fields.starts[:, column]
    size = max(1, min(limit, int(lengths.max(initial=0))))
    offsets = np.arange(size)
    taken = fields.codes[np.minimum(starts[:, None] + offsets, len(fields.codes) - 1)]
    taken[offsets >= lengths[:, None]] = 0
    return np.ascontiguousarray(taken).view(f"S{size}").ravel(), lengths <= limit


def _non_digits(fields, column):
    """How many bytes of each cell of the column are not ASCII digits."""
    return fields.non_digits[fields.ends[:, column]] - fields.non_digits[fields.starts[:, column]]


def _lengths(fields, column):
    return fields.ends[:, column] - fields.starts[:, column]


def _refs(fields, column):
    """(txn_refs, is each 1 to MAX_TXN_REF_LENGTH bytes without edge spaces and not repeated in the chunk?)."""
    refs, fits = gathered(fields, column, validation.MAX_TXN_REF_LENGTH)
    lengths = _lengths(fields, column)
    starts, ends = fields.starts[:, column], fields.ends[:, column]
    sure = fits & (lengths > 0) & (fields.codes[starts] != SPACE) & (fields.codes[np.maximum(ends - 1, 0)] != SPACE)
    _, first, counts = np.unique(refs, return_index=True, return_counts=True)
    once = np.zeros(len(refs), dtype=bool)  # a ref that occurs twice: validate_trades sees every occurrence
    once[first[counts == 1]] = True
    return refs, sure & once


def _whole_numbers(fields, column):
    """(cells of 1 to MAX_DIGITS digits as int64, 0 elsewhere; is the cell such?)."""
    lengths = _lengths(fields, column)
    sure = (lengths > 0) & (lengths <= MAX_DIGITS) & (_non_digits(fields, column) == 0)
    cells, _ = gathered(fields, column, MAX_DIGITS)
    return np.where(sure, cells, b"0").astype(np.int64), sure


def _codes(fields, column, allowed):
    """(each cell upper-cased as a str object, one per distinct value; is it in `allowed`?)."""
    cells, fits = gathered(fields, column, MAX_CODE_CHARS)
    distinct, codes = np.unique(cells, return_inverse=True)
    upper = np.array([value.decode("ascii").upper() for value in distinct], dtype=object)
    known = np.array([value in allowed for value in upper], dtype=bool)
    return upper[codes], fits & known[codes]


def _decimals(fields, column, empty_is_zero=False):
    """(plain decimal cells as validation.price_text writes them, as bytes; their values; is the cell a plain
    decimal of digits with at most 4 decimals after a '.', below MAX_PRICE?). empty_is_zero: an empty cell is 0."""
    cells, fits = gathered(fields, column, MAX_DECIMAL_CHARS)
    lengths, others = _lengths(fields, column), _non_digits(fields, column)
    point = np.strings.find(cells, b".")
    decimals = lengths - point - 1
    shaped = fits & (((others == 0) & (lengths > 0)) | ((others == 1) & (point >= 1) & (decimals >= 1)
                                                        & (decimals <= 4)))
    if empty_is_zero:
        cells = np.where(lengths == 0, b"0", cells)
        shaped |= lengths == 0
    values = np.where(shaped, cells, b"0").astype(np.float64)
    sure = shaped & (values < validation.MAX_PRICE)
    return _four_decimals(np.where(sure, cells, b"0")), values, sure


def _four_decimals(cells):
    """Plain decimal bytes (digits, at most one '.') as validation.price_text writes them: no leading zeros before
    the point but one, exactly 4 decimals."""
    whole, _, fraction = np.strings.partition(cells, b".")
    whole = np.strings.lstrip(whole, b"0")
    whole = np.where(np.strings.str_len(whole) == 0, b"0", whole)
    return np.strings.add(np.strings.add(whole, b"."), np.strings.ljust(fraction, 4, b"0"))


def _times(fields, column, latest_allowed_time):
    """(cells as bytes; is the cell a real 'YYYY-MM-DD HH:MM:SS' from EARLIEST_TIME to latest_allowed_time?)."""
    cells, fits = gathered(fields, column, 19)
    matrix = np.ascontiguousarray(cells.astype("S19")).view(np.uint8).reshape(-1, 19)
    digits = matrix[:, TIME_DIGITS].astype(np.int64) - ord("0")
    sure = fits & (_lengths(fields, column) == 19) & np.all((digits >= 0) & (digits <= 9), axis=1)
    for position, mark in TIME_MARKS.items():
        sure &= matrix[:, position] == ord(mark)
    year, month, day, hour, minute, second = (digits[:, index] * 10 + digits[:, index + 1]
                                              for index in range(2, 14, 2))
    year += (digits[:, 0] * 10 + digits[:, 1]) * 100
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = DAYS_IN_MONTH[np.clip(month, 0, 12)] + (leap & (month == 2))
    sure &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days) & (hour <= 23) & (minute <= 59)
    sure &= second <= 59
    latest = f"{latest_allowed_time:%Y-%m-%d %H:%M:%S}".encode()
    return cells, sure & (cells >= EARLIEST_TEXT) & (cells <= latest)
