"""Validation of trade rows (SPEC §3–§4), for a batch of rows from any source: a file chunk, the feed, a queue.

A batch is a DataFrame of text cells with the canonical columns plus `line_number` and `raw_record`.
`validate_trades` returns the good rows, normalized, and one reason per bad row naming field and value.
"""
import hashlib
from collections import namedtuple
from datetime import timedelta

import numpy as np
import pandas as pd

import constants

TRADE_COLUMNS = ("txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time")
LEGACY_COLUMNS = ("investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_date")
PRICE_COLUMNS = ("stock_symbol", "price_date", "close_price")
VALUE_COLUMNS = TRADE_COLUMNS[1:]  # what must agree for two rows with one txn_ref to be duplicates
MAX_TXN_REF_LENGTH = 64
MAX_QUANTITY = 2**31 - 1  # INT column
MAX_PRICE = 10**14  # DECIMAL(18, 4)
WHOLE_NUMBER = r"\+?\d+(?:\.0*)?"
PLAIN_DECIMAL = r"\+?(?:\d+(?:\.\d*)?|\.\d+)"

FileLayout = namedtuple("FileLayout", "kind columns")  # kind: 'canonical', 'legacy' or 'prices'
ValidationContext = namedtuple("ValidationContext", "investor_ids symbols latest_allowed_time")


def detect_layout(header, source):
    """The layout of a file from its header cells; InputError-worthy ValueError if no layout fits."""
    names = [name.strip().lower() for name in header]
    for kind, required in (("canonical", TRADE_COLUMNS), ("legacy", LEGACY_COLUMNS), ("prices", PRICE_COLUMNS)):
        if set(required) <= set(names):
            return FileLayout(kind, [names.index(column) for column in required])
    missing = [c for c in TRADE_COLUMNS if c not in names]
    raise ValueError(
        f"{source}: line 1: header lacks required column(s) {', '.join(missing)}; "
        f"expected {','.join(TRADE_COLUMNS)} (or the legacy {','.join(LEGACY_COLUMNS)}), found {','.join(names)}"
    )


def make_context(investor_ids, symbols, load_started):
    """What validation checks against: existing investors and stocks, and the latest acceptable txn_time."""
    latest = load_started + timedelta(seconds=constants.FUTURE_TOLERANCE_SECONDS)
    return ValidationContext(frozenset(int(i) for i in investor_ids), frozenset(symbols), latest)


def legacy_txn_ref(file_sha256, line_number):
    """The deterministic txn_ref of a legacy row: the same file and line always give the same ref."""
    return f"L{file_sha256[:20]}-{line_number}"


def validate_trades(batch, context):
    """Split a batch into (valid rows, rejected rows).

    valid: txn_ref, investor_id (int), stock_symbol, txn_type (upper-case), quantity (int), price (text as given,
    trimmed), price_value (float, for comparisons), txn_time ('YYYY-MM-DD HH:MM:SS'), line_number, raw_record;
    rejected: line_number, reason, raw_record.
    """
    cells = {column: batch[column].astype(str).str.strip() for column in TRADE_COLUMNS}
    cells["stock_symbol"] = cells["stock_symbol"].str.upper()
    cells["txn_type"] = cells["txn_type"].str.upper()
    quantity = _whole_numbers(cells["quantity"])
    price = _plain_decimals(cells["price"])
    txn_time = _date_times(cells["txn_time"])
    investor_id = _whole_numbers(cells["investor_id"])
    problems = [
        (cells["txn_ref"] == "", "txn_ref: is empty"),
        (cells["txn_ref"].str.len() > MAX_TXN_REF_LENGTH, f"txn_ref: {{txn_ref!r}} is longer than {MAX_TXN_REF_LENGTH} characters"),
        (investor_id.isna(), "investor_id: {investor_id!r} is not an integer"),
        (investor_id.notna() & ~investor_id.isin(context.investor_ids), "investor_id: {investor_id} is not a known investor"),
        (~cells["stock_symbol"].isin(context.symbols), "stock_symbol: {stock_symbol!r} is not a known stock"),
        (~cells["txn_type"].isin(("BUY", "SELL")), "txn_type: {txn_type!r} is not BUY or SELL"),
        (quantity.isna() | (quantity <= 0) | (quantity > MAX_QUANTITY), "quantity: {quantity!r} is not a whole number > 0"),
        (price.isna() | (price <= 0), "price: {price!r} is not a plain decimal > 0 (no thousands separators)"),
        (price >= MAX_PRICE, f"price: {{price!r}} is not below {MAX_PRICE}"),
        (cells["price"].str.contains(r"\.\d{5,}$", regex=True), "price: {price!r} has more than 4 decimal places"),
        (txn_time.isna(), "txn_time: {txn_time!r} is not a real date-time YYYY-MM-DD HH:MM:SS"),
        (txn_time > pd.Timestamp(context.latest_allowed_time), "txn_time: {txn_time!r} is in the future "
         f"(later than {context.latest_allowed_time:%Y-%m-%d %H:%M:%S})"),
    ]
    reasons = _reasons(problems, cells, len(batch))
    bad = reasons.notna().to_numpy()
    rejected = pd.DataFrame({
        "line_number": batch["line_number"].to_numpy()[bad],
        "reason": reasons.to_numpy()[bad],
        "raw_record": batch["raw_record"].to_numpy()[bad],
    })
    good = ~bad
    valid = pd.DataFrame({
        "txn_ref": cells["txn_ref"].to_numpy()[good],
        "investor_id": investor_id.to_numpy()[good].astype(np.int64),
        "stock_symbol": cells["stock_symbol"].to_numpy()[good],
        "txn_type": cells["txn_type"].to_numpy()[good],
        "quantity": quantity.to_numpy()[good].astype(np.int64),
        "price": cells["price"].to_numpy()[good],
        "price_value": price.to_numpy()[good],
        "txn_time": txn_time.dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy()[good],
        "line_number": batch["line_number"].to_numpy()[good],
        "raw_record": batch["raw_record"].to_numpy()[good],
    })
    return valid, rejected


def _reasons(problems, cells, length):
    """One '; '-joined reason per row with problems, None for good rows."""
    reasons = pd.Series([None] * length, dtype=object)
    for mask, template in problems:
        mask = mask.fillna(False).to_numpy(dtype=bool)
        if not mask.any():
            continue
        rows = np.flatnonzero(mask)
        values = {column: cells[column].to_numpy()[rows] for column in TRADE_COLUMNS}
        texts = [template.format(**{c: values[c][k] for c in TRADE_COLUMNS}) for k in range(len(rows))]
        previous = reasons.to_numpy()[rows]
        reasons.iloc[rows] = [t if p is None else f"{p}; {t}" for p, t in zip(previous, texts)]
    return reasons


def _whole_numbers(text):
    """Whole numbers as float (exact below 2**53), NaN where the text is not one."""
    ok = text.str.fullmatch(WHOLE_NUMBER).fillna(False)
    return pd.to_numeric(text.where(ok), errors="coerce")


def _plain_decimals(text):
    """Plain decimals as float, NaN where the text is not one (NaN, inf, 1e3 and 1,000.00 are not)."""
    ok = text.str.fullmatch(PLAIN_DECIMAL).fillna(False)
    return pd.to_numeric(text.where(ok), errors="coerce")


def _date_times(text):
    """Date-times from 'YYYY-MM-DD HH:MM[:SS]' (or with T), NaT where not a real date-time."""
    parts = text.str.extract(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2})(:\d{2})?$")
    normalized = parts[0] + " " + parts[1] + parts[2].fillna(":00")
    return pd.to_datetime(normalized, format="%Y-%m-%d %H:%M:%S", errors="coerce")


def file_sha256(path, block_size=1 << 20):
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()
