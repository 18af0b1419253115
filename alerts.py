"""List the alerts, and record a person's decision on one: the alert lifecycle (docs/alerts.md).

`python alerts.py` lists the open alerts, most severe first, newest first within a severity; `--all` adds the
resolved ones with who resolved them, when and why. `python alerts.py resolve ALERT_ID [ALERT_ID ...] --note TEXT`
resolves open alerts by hand and keeps the note (all of them or, when one cannot be resolved, none).

Every alert is raised OPEN. A person resolves any alert with this script. The stages resolve the alerts whose
condition they see clear: update_portfolio.py a CONCENTRATION alert whose position is no longer above the weight
limit and an OVERSELL alert whose SELL no longer oversells after a late trade; surveillance.py (and the live
consumers) a SECTOR_CONCENTRATION alert whose sector is no longer above its limit. Such an alert is retired: its
alert_key gets its alert_id and '#' in front (a current key starts with its rule's name), so that when the
condition recurs a new OPEN alert is raised under the same key. An alert that a person resolved while its
condition still holds stays resolved (no new alert) until the condition clears. Nothing deletes an alert: the
table is the record of what was seen and decided.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import getpass
import logging
import sys
import unicodedata
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, select, text, update

import cli
import db_config
from schema import alerts

logger = logging.getLogger(__name__)

ALERT_RULES = ("OVERSELL", "CONCENTRATION", "LARGE_TRADE", "OFF_MARKET_PRICE", "WASH_TRADE", "ROUND_TRIP", "BURST",
               "SECTOR_CONCENTRATION")
RETIRED_MARK = "#"  # alert_id + '#' + alert_key: an alert whose condition cleared
SEVERITY_ORDER = ("HIGH", "MEDIUM", "LOW")
DEFAULT_LIMIT = 100
NOTE_MAX_LENGTH = 1000  # alerts.resolution_note is VARCHAR(1000)
RESOLVER_MAX_LENGTH = 100  # alerts.resolved_by is VARCHAR(100)
ID_SLICE = 500

LIST_SQL = """
SELECT alert_id, severity, rule, investor_id, stock_symbol, txn_ref, detected_at, status, resolved_at, resolved_by,
       resolution_note, details
FROM alerts
WHERE {conditions}
ORDER BY CASE severity WHEN 'HIGH' THEN 0 WHEN 'MEDIUM' THEN 1 ELSE 2 END, detected_at DESC, alert_id DESC
"""
COUNT_SQL = "SELECT severity, status, COUNT(*) FROM alerts WHERE {conditions} GROUP BY severity, status"


class CurrentAlert(NamedTuple):
    """A stored alert that is not retired."""
    alert_id: int
    alert_key: str
    status: str
    severity: str
    details: str


class Synced(NamedTuple):
    """What sync_condition_alerts did."""
    raised: int
    resolved: int  # OPEN alerts resolved because their condition cleared


# ---------------------------------------------------------------------------------------------- for the stages

def current_alerts(connection, rule, investor_ids=None):
    """The not-retired alerts of a rule (of these investors, when given)."""
    query = select(alerts.c.alert_id, alerts.c.alert_key, alerts.c.status, alerts.c.severity, alerts.c.details).where(
        alerts.c.rule == rule)
    if investor_ids is None:
        rows = connection.execute(query).all()
    else:
        ids = sorted(investor_ids)
        rows = [row for start in range(0, len(ids), ID_SLICE)
                for row in connection.execute(query.where(alerts.c.investor_id.in_(ids[start:start + ID_SLICE])))]
    return [CurrentAlert(*row) for row in rows if not is_retired(row.alert_key, row.alert_id)]


def is_retired(alert_key, alert_id):
    """Was this alert retired (its key starts with its own id and '#')? A current key starts with its rule's
    name, so a '#' in a sector or txn_ref is no mark."""
    return alert_key.startswith(f"{alert_id}{RETIRED_MARK}")


def sync_condition_alerts(connection, rule, wanted, now, investor_ids=None, resolver="", cleared_note=""):
    """Make the rule's current alerts those of `wanted` (alert rows, dicts of alerts' columns, for the conditions
    that hold now among these investors; None: all investors): raise the missing ones OPEN, refresh the severity,
    metric and details of open ones, and retire those whose condition cleared (an OPEN one RESOLVED by
    `resolver` with `cleared_note`)."""
    stored = {alert.alert_key: alert for alert in current_alerts(connection, rule, investor_ids)}
    wanted = {row["alert_key"]: row for row in wanted}
    cleared = [alert for key, alert in stored.items() if key not in wanted]
    retire_alerts(connection, cleared, now, resolver, cleared_note)
    refresh_alerts(connection, [row for key, row in wanted.items() if key in stored and stored[key].status == "OPEN"
                                and (stored[key].severity, stored[key].details) != (row["severity"], row["details"])])
    new = [{**row, "status": "OPEN"} for key, row in wanted.items() if key not in stored]
    if new:
        connection.execute(alerts.insert(), new)
    return Synced(len(new), sum(alert.status == "OPEN" for alert in cleared))


def retire_alerts(connection, retired, now, resolver, note):
    """Put 'alert_id#' in front of the keys of these CurrentAlerts; resolve the OPEN ones with this note."""
    open_ids = [{"id": alert.alert_id} for alert in retired if alert.status == "OPEN"]
    if open_ids:  # still OPEN when written: a person who resolved it meanwhile keeps their decision
        connection.execute(update(alerts).where(alerts.c.alert_id == bindparam("id"), alerts.c.status == "OPEN").values(
            status="RESOLVED", resolved_at=now, resolved_by=resolver, resolution_note=note), open_ids)
    if retired:
        connection.execute(update(alerts).where(alerts.c.alert_id == bindparam("id")).values(
            alert_key=bindparam("retired_key")),
            [{"id": alert.alert_id, "retired_key": f"{alert.alert_id}{RETIRED_MARK}{alert.alert_key}"}
             for alert in retired])


def refresh_alerts(connection, rows):
    """Update the severity, metric, threshold and details of open alerts (rows keyed by alert_key)."""
    if rows:
        still_open = (alerts.c.alert_key == bindparam("key"), alerts.c.status == "OPEN")
        connection.execute(update(alerts).where(*still_open).values(
            severity=bindparam("severity"), metric=bindparam("metric"), threshold=bindparam("threshold"),
            details=bindparam("details")),
            [{"key": row["alert_key"], "severity": row["severity"], "metric": row["metric"],
              "threshold": row["threshold"], "details": row["details"]} for row in rows])


# ---------------------------------------------------------------------------------------------- listing

class AlertFilter(NamedTuple):
    """Which alerts to list."""
    include_resolved: bool = False
    rule: str = None
    investor_id: int = None


def _conditions(chosen):
    """The WHERE text and its parameters for an AlertFilter."""
    conditions, params = [], {}
    if not chosen.include_resolved:
        conditions.append("status = 'OPEN'")
    if chosen.rule:
        conditions.append("rule = :rule")
        params["rule"] = chosen.rule.upper()
    if chosen.investor_id is not None:
        conditions.append("investor_id = :investor_id")
        params["investor_id"] = chosen.investor_id
    return " AND ".join(conditions) or "1 = 1", params


class AlertCounts(NamedTuple):
    """How many alerts a filter chose in all."""
    by_severity: dict
    open: int


def list_alerts(connection, chosen=AlertFilter(), limit=DEFAULT_LIMIT):
    """(the alerts chosen, most severe and newest first, at most `limit` (0: all); AlertCounts of all of them)."""
    conditions, params = _conditions(chosen)
    statement = text(LIST_SQL.format(conditions=conditions) + (" LIMIT :limit" if limit else ""))
    rows = connection.execute(statement, {**params, "limit": limit}).all()
    by_severity, open_count = {}, 0
    for severity, status, count in connection.execute(text(COUNT_SQL.format(conditions=conditions)), params):
        by_severity[severity] = by_severity.get(severity, 0) + count
        open_count += count if status == "OPEN" else 0
    return rows, AlertCounts(by_severity, open_count)


def alert_lines(rows, include_resolved=False):
    """The alerts as text lines: a header, one line per alert (and with include_resolved, a line with the
    resolution of a resolved one)."""
    status = f"{'status':<9}" if include_resolved else ""
    lines = [f"{'alert':>7}  {'severity':<8}  {status}{'rule':<20}  {'investor':>8}  {'symbol':<6}  "
             f"{'detected':<19}  details"]
    for row in rows:
        state = f"{row.status:<9}" if include_resolved else ""
        lines.append(f"{row.alert_id:>7}  {row.severity:<8}  {state}{row.rule:<20}  {_text(row.investor_id):>8}  "
                     f"{_text(row.stock_symbol):<6}  {_when(row.detected_at):<19}  {row.details}")
        if include_resolved and row.status == "RESOLVED":
            lines.append(f"{'':>7}  resolved {_when(row.resolved_at)} by {row.resolved_by or 'unknown'}: "
                         f"{row.resolution_note or '(no note)'}")
    return lines


def summary_line(rows, counts, include_resolved=False):
    """'12 open alerts: 3 HIGH, 5 MEDIUM, 4 LOW' ('20 alerts (12 open, 8 resolved): ...' with the resolved ones, the
    severities then of all 20), with how many are shown when the list is cut."""
    total = sum(counts.by_severity.values())
    open_part = f" ({counts.open:,} open, {total - counts.open:,} resolved)" if include_resolved else ""
    kind = "alerts" if include_resolved else "open alerts"
    if not total:
        return f"no {kind}"
    by_severity = ", ".join(f"{counts.by_severity[s]:,} {s}" for s in SEVERITY_ORDER if counts.by_severity.get(s))
    shown = f" (showing the first {len(rows)}: --limit 0 shows all)" if len(rows) < total else ""
    return f"{total:,} {kind}{open_part}: {by_severity}{shown}"


def _text(value):
    return "" if value is None else str(value)


def _when(value):
    return "" if value is None else str(value)[:19]


# ---------------------------------------------------------------------------------------------- resolving

def resolve_alerts(connection, alert_ids, note, resolver, now):
    """Resolve these open alerts with the note; raise cli.InputError (nothing changed) when one does not exist
    or is not open. Returns how many were resolved."""
    note = clean_note(note)
    found = {row.alert_id: row for row in connection.execute(select(
        alerts.c.alert_id, alerts.c.status, alerts.c.resolved_at, alerts.c.resolved_by, alerts.c.resolution_note
    ).where(alerts.c.alert_id.in_(sorted(set(alert_ids)))))}
    for alert_id in alert_ids:
        if alert_id not in found:
            raise cli.InputError(f"alert {alert_id} does not exist (python alerts.py --all lists them)")
        if found[alert_id].status != "OPEN":
            row = found[alert_id]
            raise cli.InputError(f"alert {alert_id} is already resolved ({_when(row.resolved_at)} by "
                                 f"{row.resolved_by or 'unknown'}: {row.resolution_note or 'no note'})")
    result = connection.execute(update(alerts).where(alerts.c.alert_id.in_(sorted(set(alert_ids))),
                                                     alerts.c.status == "OPEN").values(
        status="RESOLVED", resolved_at=now, resolved_by=resolver, resolution_note=note))
    if result.rowcount != len(set(alert_ids)):  # another person resolved one meanwhile
        raise cli.InputError("an alert was resolved by someone else meanwhile: nothing changed, list them again")
    return result.rowcount


def clean_note(note):
    """The note without surrounding spaces; cli.InputError when it is empty, too long or not one line of text."""
    return clean_text(note, "--note", NOTE_MAX_LENGTH, "--note TEXT is required: say what was decided and why")


def clean_text(value, option, max_length, missing):
    """A person's text without surrounding spaces; cli.InputError (`missing` when empty) unless it is one line
    of at most max_length printable characters (no control, format or bidirectional-override character)."""
    value = (value or "").strip()
    if not value:
        raise cli.InputError(missing)
    if len(value) > max_length:
        raise cli.InputError(f"{option} is {len(value)} characters long; at most {max_length} are kept")
    if any(unicodedata.category(character) in ("Cc", "Cf") for character in value):
        raise cli.InputError(f"{option} holds a line break or another control character; write one line of plain "
                             "text")
    return value


def current_user():
    """The login name of whoever runs the script, or 'unknown'."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor in the password database
        return "unknown"


# ---------------------------------------------------------------------------------------------- the script

def list_limit(text):
    """argparse type of --limit: 0 (all) or a whole number of alerts up to cli.MAX_ID."""
    return 0 if text.strip() == "0" else cli.database_id(text)


def parse_arguments(argv):
    parser = cli.make_parser(__doc__)
    parser.add_argument("command", nargs="?", choices=("list", "resolve"), default="list",
                        help="list (the default) or resolve")
    parser.add_argument("alert_ids", nargs="*", type=cli.database_id, metavar="ALERT_ID", help="alerts to resolve")
    parser.add_argument("--all", action="store_true", help="list resolved alerts too, with their resolution")
    parser.add_argument("--rule", type=str.upper, choices=ALERT_RULES, metavar="RULE",
                        help=f"list only this rule's alerts: {', '.join(ALERT_RULES)}")
    parser.add_argument("--investor", type=cli.database_id, help="list only this investor's alerts")
    parser.add_argument("--limit", type=list_limit, default=DEFAULT_LIMIT, metavar="N",
                        help=f"list at most this many (default {DEFAULT_LIMIT}; 0: all)")
    parser.add_argument("--note", help="resolve: what was decided and why (kept with the alert)")
    parser.add_argument("--by", help="resolve: who decided (default: your login name)")
    args = parser.parse_args(argv)
    if args.command == "resolve" and not args.alert_ids:
        parser.error("resolve needs at least one ALERT_ID")
    if args.command == "list" and (args.alert_ids or args.note or args.by):
        parser.error("ALERT_ID, --note and --by are for resolve: python alerts.py resolve ALERT_ID --note TEXT")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    cli.setup_logging(args)

    def work():
        engine = db_config.get_engine(args.database_url)
        if args.command == "resolve":
            resolver = current_user() if args.by is None else clean_text(
                args.by, "--by", RESOLVER_MAX_LENGTH, "--by NAME must name someone (leave it out for your login)")
            with engine.connect() as connection, db_config.write_transaction_on(connection):
                count = resolve_alerts(connection, args.alert_ids, args.note, resolver,
                                       datetime.now().replace(microsecond=0))
            print(f"{count} alert{'s' if count != 1 else ''} resolved: {clean_note(args.note)}")
            return cli.EXIT_OK
        chosen = AlertFilter(args.all, args.rule, args.investor)
        with engine.connect() as connection:
            rows, counts = list_alerts(connection, chosen, args.limit)
        if rows:
            print("\n".join(alert_lines(rows, args.all)))
        print(summary_line(rows, counts, args.all))
        return cli.EXIT_OK

    return cli.run(work, args, "alerts")


if __name__ == "__main__":
    sys.exit(main())
