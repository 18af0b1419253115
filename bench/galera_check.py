"""The Python half of bench/galera.sh: publish a live stream, wait for it, and compare the nodes of the cluster.

    python bench/galera_check.py publish --queue Q --count N --rate R --prefix P
    python bench/galera_check.py wait-trades --prefix P --count N URL      # until N trades P-... are stored
    python bench/galera_check.py batch-running URL SOURCE_SUFFIX           # until a batch of that file runs
    python bench/galera_check.py compare --expect-trades N URL URL URL     # trades, portfolios, batches, per node
    python bench/galera_check.py full-equals URL URL URL                   # portfolios == update_portfolio --full
    python bench/galera_check.py delete-queue Q

Every URL here names one node (no failover), so that what is read is what that node holds; reads wait for the
node to have applied every write set the cluster committed before them (wsrep_sync_wait=1).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

import pika  # noqa: E402
import pymysql  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import constants  # noqa: E402
import trade_queue  # noqa: E402

TRADE_COLUMNS = "txn_id, txn_ref, investor_id, stock_symbol, txn_type, quantity, price, txn_time, fee, batch_id"
PORTFOLIO_COLUMNS = ("investor_id, stock_symbol, quantity, avg_cost, cost_basis, realized_pnl, dividend_income, "
                     "fees_paid, last_price, market_value, unrealized_pnl, weight, risk_score, risk_level, "
                     "last_txn_time, last_txn_id, trade_count")


def connect(url):
    """A PyMySQL connection to the one node a URL names, reading only what the cluster has fully applied."""
    url = make_url(url)
    connection = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password,
                                 database=url.database, connect_timeout=5, autocommit=True)
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION wsrep_sync_wait = 1")
    return connection


def query(url, statement):
    connection = connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall()
    finally:
        connection.close()


def publish(args):
    """Publish --count valid BUY trades, refs PREFIX-n, persistent with publisher confirms, paced at --rate/s."""
    connection = pika.BlockingConnection(trade_queue.broker_parameters())
    channel = connection.channel()
    trade_queue.declare_queues(channel, args.queue, None)
    channel.confirm_delivery()
    generator = random.Random(args.prefix)
    symbols = sorted(stock[0] for stock in constants.STOCKS)
    started, when = time.monotonic(), datetime.now() - timedelta(hours=1)
    for number in range(args.count):
        trade = {"txn_ref": f"{args.prefix}-{number}", "investor_id": generator.randint(1001, 1100),
                 "stock_symbol": generator.choice(symbols), "txn_type": "BUY",
                 "quantity": generator.randint(1, 20), "price": f"{generator.uniform(50, 300):.2f}",
                 "txn_time": (when + timedelta(milliseconds=number)).strftime("%Y-%m-%d %H:%M:%S"), "fee": "1.00"}
        channel.basic_publish("", args.queue, json.dumps(trade).encode(),
                              pika.BasicProperties(delivery_mode=2, content_type="application/json"))
        delay = started + (number + 1) / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    connection.close()
    print(f"published {args.count} trades in {time.monotonic() - started:.1f} s")


def delete_queue(args):
    connection = pika.BlockingConnection(trade_queue.broker_parameters())
    channel = connection.channel()
    for name in (args.queue, f"{args.queue}.rejected"):
        channel.queue_delete(name)
    connection.close()


def wait_trades(args):
    """Wait until the node holds --count trades whose ref starts with --prefix (at most --timeout s)."""
    deadline, found = time.monotonic() + args.timeout, None
    while time.monotonic() < deadline:
        try:
            found = query(args.url, f"SELECT COUNT(*) FROM transactions WHERE txn_ref LIKE '{args.prefix}-%'")[0][0]
        except pymysql.err.MySQLError:
            found = None  # the node is away for a moment: ask again
        if found is not None and found >= args.count:
            print(found)
            return 0
        time.sleep(0.5)
    print(found)
    return 1


def batch_running(args):
    """Wait until a batch whose source ends with SOURCE_SUFFIX is running (the load has begun its transaction)."""
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            rows = query(args.url, "SELECT batch_id FROM load_batches WHERE status = 'running' AND source LIKE "
                                   f"'%{args.suffix}'")
        except pymysql.err.MySQLError:  # no database or no schema yet (the run creates them)
            rows = None
        if rows:
            print(rows[0][0])
            return 0
        time.sleep(0.1)
    return 1


def node_state(url):
    """What one node holds: trade count and checksums, portfolios rows, batches by status."""
    connection = connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*), COUNT(DISTINCT txn_ref), SUM(CRC32(CONCAT_WS('|', {TRADE_COLUMNS}))), "
                           f"BIT_XOR(CRC32(CONCAT_WS('|', {TRADE_COLUMNS}))) FROM transactions")
            count, refs, crc_sum, crc_xor = cursor.fetchone()
            cursor.execute(f"SELECT {PORTFOLIO_COLUMNS} FROM portfolios ORDER BY investor_id, stock_symbol")
            portfolios = [tuple(map(str, row)) for row in cursor.fetchall()]
            cursor.execute("SELECT status, COUNT(*) FROM load_batches GROUP BY status ORDER BY status")
            statuses = dict(cursor.fetchall())
            cursor.execute("SELECT COUNT(*), SUM(rows_loaded), SUM(rows_duplicate) FROM load_batches "
                           "WHERE source LIKE 'queue:%'")
            live = cursor.fetchone()
    finally:
        connection.close()
    return {"trades": count, "distinct_refs": refs, "checksum": f"{int(crc_sum or 0)}/{int(crc_xor or 0)}",
            "portfolios": portfolios, "batches": statuses, "live_batches": [int(value or 0) for value in live]}


def compare(args):
    """Print one line per node; exit 1 unless every node holds the same trades and portfolios, the expected
    number of trades, and no running batch."""
    states = {url: node_state(url) for url in args.urls}
    problems = []
    for url, state in states.items():
        port = make_url(url).port
        print(f"node :{port}: {state['trades']} trades (checksum {state['checksum']}), {len(state['portfolios'])} "
              f"positions, batches {state['batches']}, live batches {state['live_batches'][0]} "
              f"({state['live_batches'][1]} loaded, {state['live_batches'][2]} duplicates)")
        if args.expect_trades is not None and state["trades"] != args.expect_trades:
            problems.append(f":{port} holds {state['trades']} trades, expected {args.expect_trades}")
        if state["batches"].get("running"):
            problems.append(f":{port} has {state['batches']['running']} batch(es) running")
    first = next(iter(states.values()))
    for url, state in states.items():
        for key in ("trades", "checksum", "portfolios", "batches"):
            if state[key] != first[key]:
                problems.append(f":{make_url(url).port} differs from the first node in {key}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("nodes identical" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def full_equals(args):
    """Are the portfolios the incremental path left equal, on every node, to those update_portfolio --full
    rebuilds from every trade? (Compares before and after a --full run through the first URL.)"""
    before = {url: node_state(url)["portfolios"] for url in args.urls}
    run = subprocess.run([sys.executable, os.path.join(PROJECT, "update_portfolio.py"), "--full", "--quiet",
                          "--database-url", args.urls[0]], capture_output=True, text=True)
    if run.returncode:
        print(f"update_portfolio.py --full failed: {run.stderr.strip()}")
        return 1
    after = {url: node_state(url)["portfolios"] for url in args.urls}
    problems = 0
    for url in args.urls:
        port = make_url(url).port
        differing = [(old, new) for old, new in zip(before[url], after[url]) if old != new]
        if len(before[url]) != len(after[url]) or differing:
            problems += 1
            print(f"PROBLEM: :{port}: {len(differing)} of {len(after[url])} positions differ from --full "
                  f"(first: {differing[:1]})")
        if after[url] != after[args.urls[0]]:
            problems += 1
            print(f"PROBLEM: :{port}: portfolios after --full differ from the first node's")
    print(f"portfolios equal to update_portfolio --full on every node ({len(after[args.urls[0]])} positions)"
          if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("publish")
    command.add_argument("--queue", required=True)
    command.add_argument("--count", type=int, required=True)
    command.add_argument("--rate", type=float, default=200)
    command.add_argument("--prefix", required=True)
    command = commands.add_parser("delete-queue")
    command.add_argument("queue")
    command = commands.add_parser("wait-trades")
    command.add_argument("--prefix", required=True)
    command.add_argument("--count", type=int, required=True)
    command.add_argument("--timeout", type=float, default=300)
    command.add_argument("url")
    command = commands.add_parser("batch-running")
    command.add_argument("--timeout", type=float, default=120)
    command.add_argument("url")
    command.add_argument("suffix")
    command = commands.add_parser("compare")
    command.add_argument("--expect-trades", type=int)
    command.add_argument("urls", nargs="+")
    command = commands.add_parser("full-equals")
    command.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    handlers = {"publish": publish, "delete-queue": delete_queue, "wait-trades": wait_trades,
                "batch-running": batch_running, "compare": compare, "full-equals": full_equals}
    return handlers[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
