"""The cost method positions are kept by: weighted average cost ('wac', the default, docs/portfolio-math.md) or
FIFO lots ('fifo').

A run asks for a method with --cost-method, else COST_METHOD in the environment or the .env file. The database
records in ledger_settings the method its positions were built with: a run that asks for nothing uses it, and a
run that asks for the other method must replay everything (`update_portfolio.py --full`), which records the new
one.
"""
import os

from sqlalchemy import select

import cli
import dialects
from schema import COST_METHODS, ledger_settings

SETTING = "cost_method"
DEFAULT = "wac"
METHODS = COST_METHODS


def requested_method(option=None):
    """The method a run asks for: the option, else COST_METHOD, else None; InputError for another value."""
    value, source = (option, "--cost-method") if option else (os.environ.get("COST_METHOD", ""), "COST_METHOD")
    value = value.strip().lower()
    if not value:
        return None
    if value not in COST_METHODS:
        raise cli.InputError(f"{source}: {value!r} is not a cost method: use wac (weighted average cost) or fifo")
    return value


def recorded_method(connection):
    """The method the database's positions were built with, or None before any was recorded."""
    return connection.execute(select(ledger_settings.c.value).where(ledger_settings.c.name == SETTING)).scalar()


def method_for_update(connection, requested, full, record=False):
    """The method an update applies: the requested one on a full replay or a database without a record, else the
    recorded one; InputError (exit 2) when the request differs from the record without full. With record=True
    the method is recorded when it is not already."""
    stored = recorded_method(connection)
    if full or stored is None:
        method = requested or stored or DEFAULT
    elif requested and requested != stored:
        raise cli.InputError(f"positions were built with cost method {stored}, not {requested}: switching "
                             f"replays every trade, run update_portfolio.py --full --cost-method {requested}")
    else:
        method = stored
    if record and method != stored:
        record_method(connection, method)
    return method


def record_method(connection, method):
    """Record the method the positions are now built with."""
    connection.execute(dialects.upsert(connection, ledger_settings, ["value"]), [{"name": SETTING, "value": method}])
