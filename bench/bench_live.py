"""Benchmark live mode: the time from publishing a trade to RabbitMQ to its position being applied in portfolios
(SPEC "applied": the position's last_txn_id is the trade's or a later one), at steady publishing rates, with one
consumer or two (partitions by investor), on SQLite and MariaDB; then the highest sustained rate with p95 under 1 s.

Usage (from the project folder; RabbitMQ at AMQP_URL, MariaDB at --mariadb-url):
    python bench/bench_live.py                                      # the full table (about 10 minutes)
    python bench/bench_live.py --databases sqlite --rates 100 --consumers 1 --seconds 5   # quick

Per database: a fresh database gets the reference data and a --history generated trades file, loaded, updated and
surveilled. Then for each (consumers, rate): a fresh queue; the consumers start (load_transactions.py --queue,
with --partitions 2 for two) and an observer process polls the database every 5 ms for new transactions (a
trade is committed in the same transaction that applies it to its position, so the first poll that sees it sees
it applied; the run also checks every trade's position at the end); publisher processes (two from 1,000/s
on: one Python process publishes about 2,000 messages/s here) send trades from pseudo_realtime's simulator for
--seconds at the rate, paced from the start, each stamped with time.time() just before its publish (persistent
messages; no publisher confirms, so that the publisher is not the limit); then this process waits for every
trade to be applied (or 60 s). Latency = first seen - published, p50/p95/p99/max.

The sustained rate: on MariaDB with one and with two consumers, rates from --sustain-from upward in steps of 500
for --seconds each, until p95 is 1 s or more, a trade is not applied within 60 s, or the publishers cannot keep
the rate (95%); the highest rate that passed.
"""
import argparse
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from sqlalchemy import bindparam, text

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import pseudo_realtime  # noqa: E402
import seed_investors  # noqa: E402
import surveillance  # noqa: E402
import trade_queue  # noqa: E402
import update_portfolio  # noqa: E402
from bench_pipeline import fresh_database  # noqa: E402

POLL_SECONDS = 0.005
GAP_SECONDS = 30
DRAIN_SECONDS = 60


def build_database(kind, workdir, mariadb_url, history):
    """A fresh database with the reference data and `history` trades applied and surveilled; (url, drop)."""
    url, drop = fresh_database(kind, workdir, mariadb_url)
    engine = db_config.get_engine(url)
    seed_investors.seed_reference_data(engine)
    path = os.path.join(workdir, f"history_{kind}.csv")
    generate_dummy_data.write_dummy_data(path, history, seed=71)
    load_transactions.load_prices_file(engine, os.path.join(workdir, "market_prices.csv"))
    load_transactions.load_file(engine, path)
    update_portfolio.update_portfolios(engine)
    surveillance.run_surveillance(engine)
    engine.dispose()
    return url, drop


def observe(url, out_path):
    """The observer process: record when each new transaction is first seen, until SIGTERM. Two consumers
    commit out of txn_id order (an id taken earlier can commit later), so ids skipped by a poll are asked for
    again (for up to GAP_SECONDS: an id may also be skipped for good, by a rolled-back or ignored insert)."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    engine = db_config.get_engine(url, create_schema=False)
    seen, gaps = [], {}  # gaps: {txn_id not seen yet below the highest seen: when it was noticed}
    statement = text("SELECT txn_id, txn_ref FROM transactions WHERE txn_id > :last OR txn_id IN :gaps").bindparams(
        bindparam("gaps", expanding=True))
    with engine.connect() as connection:
        last_id = connection.execute(text("SELECT COALESCE(MAX(txn_id), 0) FROM transactions")).scalar()
        connection.rollback()
        while not stopping:
            rows = connection.execute(statement, {"last": last_id, "gaps": list(gaps) or [-1]}).all()
            connection.rollback()  # a new snapshot for the next poll
            now = time.time()
            for txn_id, ref in rows:
                seen.append((ref, now))
                gaps.pop(txn_id, None)
            highest = max([last_id] + [txn_id for txn_id, _ in rows])
            found = {txn_id for txn_id, _ in rows}
            gaps.update({txn_id: now for txn_id in range(last_id + 1, highest) if txn_id not in found})
            gaps = {txn_id: noticed for txn_id, noticed in gaps.items() if now - noticed < GAP_SECONDS}
            last_id = highest
            time.sleep(POLL_SECONDS)
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(seen, handle)


def start_process(arguments):
    return subprocess.Popen([sys.executable, *arguments], cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop_process(process):
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    if process.returncode != 0:
        raise SystemExit(f"a process failed ({process.returncode}): {process.args}\n{err[-2000:]}")
    return out


def publish_paced(url, queue, partitions, seed, rate, seconds, out_path):
    """A publisher process: rate × seconds trades of pseudo_realtime's simulator, paced from the start; writes
    [[txn_ref, publish time], ...] and the seconds it took to out_path."""
    simulator = simulator_for(url, seed)
    connection = trade_queue.connect()
    channel = connection.channel()
    published, count = [], int(rate * seconds)
    properties = trade_queue.pika.BasicProperties(delivery_mode=2, content_type="application/json")
    started = time.monotonic()
    for number in range(count):
        pause = started + number / rate - time.monotonic()
        if pause > 0.0005:
            time.sleep(pause)
        trade = simulator.next_trade()  # stamped now, as a broker's trade is
        published.append((trade["txn_ref"], time.time()))
        channel.basic_publish("", trade_queue.queue_for(queue, partitions, trade["investor_id"]),
                              json.dumps(trade).encode(), properties)
    took = time.monotonic() - started
    connection.close()
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump({"published": published, "seconds": took}, handle)


def publish_in_processes(url, queue, partitions, rate, seconds, workdir, publishers):
    """Publish at `rate` from `publishers` processes (rate / publishers each, other seeds); ({txn_ref: publish
    time}, the longest publishing time)."""
    paths = [os.path.join(workdir, f"published_{queue}_{n}.json") for n in range(publishers)]
    processes = [multiprocessing.get_context("spawn").Process(
        target=publish_paced, args=(url, queue, partitions, random.randrange(10**9), rate / publishers, seconds, path))
        for path in paths]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    published, took = {}, 0.0
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        published.update(map(tuple, result["published"]))
        took = max(took, result["seconds"])
    return published, took


def run_case(url, consumers, rate, seconds, workdir):
    """One (consumers, rate) run; a dict of figures."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    partitions = 2 if consumers == 2 else 0
    connection = trade_queue.connect()
    channel = connection.channel()
    trade_queue.declare_queues(channel, queue, partitions)
    extra = ["--partitions", "2"] if partitions else []
    workers = [start_process([os.path.join(PROJECT, "load_transactions.py"), "--queue", "--queue-name", queue,
                              "--database-url", url, "--report-every", "0", *extra,
                              *(["--partition", str(k)] if partitions else [])]) for k in range(consumers)]
    seen_path = os.path.join(workdir, f"seen_{queue}.json")
    observer = start_process([os.path.abspath(__file__), "--observe", url, seen_path])
    time.sleep(3)  # the consumers' imports and their surveillance processes
    publishers = 1 if rate < 1000 else 2  # one Python process publishes about 2,000 messages/s here
    published, publishing_seconds = publish_in_processes(url, queue, partitions, rate, seconds, workdir, publishers)
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and applied_count(url, queue) < len(published):
        time.sleep(0.2)
    stop_process(observer)
    for worker in workers:
        stop_process(worker)
    for name in trade_queue_names(queue, partitions):
        channel.queue_delete(name)
    connection.close()
    with open(seen_path, encoding="utf-8") as handle:
        seen = dict(map(tuple, json.load(handle)))
    latencies = sorted(seen[ref] - at for ref, at in published.items() if ref in seen)
    return figures(latencies, len(published), publishing_seconds, rate, consumers)


def trade_queue_names(queue, partitions):
    return ([f"{queue}.{k}" for k in range(partitions)] if partitions else [queue]) + [f"{queue}.rejected"]


def applied_count(url, queue):
    """How many trades of the queue's live batches are in their positions (SPEC: last_txn_id at or after theirs)."""
    engine = db_config.get_engine(url, create_schema=False)
    try:
        with engine.connect() as connection:
            return connection.execute(text(
                "SELECT COUNT(*) FROM transactions t "
                "JOIN portfolios p ON p.investor_id = t.investor_id AND p.stock_symbol = t.stock_symbol "
                "WHERE p.last_txn_id >= t.txn_id AND t.batch_id IN "
                "(SELECT batch_id FROM load_batches WHERE source LIKE :source)"),
                {"source": f"queue:{queue}%"}).scalar()
    finally:
        engine.dispose()


def figures(latencies, published, publishing_seconds, rate, consumers):
    def quantile(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
    return {"rate": rate, "consumers": consumers, "published": published, "applied": len(latencies),
            "achieved_rate": round(published / publishing_seconds, 1), "p50_ms": round(quantile(0.50), 1),
            "p95_ms": round(quantile(0.95), 1), "p99_ms": round(quantile(0.99), 1),
            "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
            "mean_ms": round(statistics.mean(latencies) * 1000, 1) if latencies else None}


def simulator_for(url, seed):
    engine = db_config.get_engine(url, create_schema=False)
    try:
        return pseudo_realtime.TradeSimulator(*pseudo_realtime.read_market_state(engine), random.Random(seed))
    finally:
        engine.dispose()


def print_row(kind, result):
    print(f"{kind:8} {result['consumers']:>9} {result['rate']:>6}/s {result['achieved_rate']:>8}/s "
          f"{result['applied']:>6}/{result['published']:<6} {result['p50_ms']:>8} {result['p95_ms']:>8} "
          f"{result['p99_ms']:>8} {result['max_ms']:>8}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "mariadb"])
    parser.add_argument("--rates", nargs="+", type=int, default=[10, 100, 1000, 3000])
    parser.add_argument("--consumers", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per run (default: 10)")
    parser.add_argument("--history", type=int, default=20_000, help="trades before the runs (default: 20,000)")
    parser.add_argument("--sustain-from", type=int, default=1000, help="0: skip the sustained-rate search")
    parser.add_argument("--mariadb-url",
                        default=os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root:@127.0.0.1:3306"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--observe", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.observe:
        return observe(*args.observe)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        print(f"{'database':8} {'consumers':>9} {'rate':>8} {'achieved':>10} {'applied':>13} {'p50 ms':>8} "
              f"{'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}", flush=True)
        for kind in args.databases:
            url, drop = build_database(kind, workdir, args.mariadb_url, args.history)
            try:
                for consumers in args.consumers:
                    for rate in args.rates:
                        result = run_case(url, consumers, rate, args.seconds, workdir)
                        results.append({"database": kind, **result})
                        print_row(kind, result)
                if kind == "mariadb" and args.sustain_from:
                    results += [sustained_rate(url, consumers, args, workdir) for consumers in args.consumers]
            finally:
                drop()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


def sustained_rate(url, consumers, args, workdir):
    """The highest rate (steps of 500 from --sustain-from) at which the consumers keep p95 under 1 s and apply
    every trade."""
    best, rate = None, args.sustain_from
    while True:
        result = run_case(url, consumers, rate, args.seconds, workdir)
        print_row("mariadb", result)
        if result["applied"] < result["published"] or result["p95_ms"] >= 1000 or \
                result["achieved_rate"] < 0.95 * rate:
            break
        best, rate = rate, rate + 500
    shown = best or f"below {args.sustain_from}"
    print(f"highest sustained rate on MariaDB, {consumers} consumer(s), p95 under 1 s: {shown}/s", flush=True)
    return {"database": "mariadb", "consumers": consumers, "sustained_rate": best}


if __name__ == "__main__":
    sys.exit(main())
