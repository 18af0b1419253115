"""Soak: the queue, the inbox and hourly-style batch runs at once for a bounded time, on a private MariaDB server
that is killed and restarted in the middle (issue 16, part 6).

    python bench/soak.py [--seconds 600] [--rate 20] [--batch-every 60] [--inbox-every 20] [--outage-seconds 10]

A private server (tests/private_mariadb.py: its own data folder and port) gets the reference data and a generated
history (loaded, updated, surveilled). Then, at once:
- the feed: `pseudo_realtime.py --sink rabbitmq` publishes --rate trades a second to a queue of its own, which
  `load_transactions.py --queue` consumes;
- the inbox: `load_transactions.py --watch DIR`, with a generated trade file renamed into DIR every --inbox-every s;
- batch runs: every --batch-every s, `load_transactions.py FILE`, `update_portfolio.py` and `surveillance.py` (a
  run that fails, during the outage, is run again at the next cycle, as cron's next hour would);
- halfway, the server is killed (SIGKILL) and started again --outage-seconds later.
At the end (the publisher done, the queue drained, every file loaded) it checks: every published trade and every
file's trades in the database once, no batch left running or unsurveilled, no process ended, every failed run
recovered later, and the positions and scores equal to `update_portfolio.py --full`. It prints a table with the
resident memory (VmRSS) of each long-running process at the start (after a warm-up) and at the end, and writes it
to bench/results-soak.txt. Exit 0 when every check passed, 1 otherwise.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [PROJECT, os.path.join(PROJECT, "tests")]

import generate_dummy_data  # noqa: E402
import trade_queue  # noqa: E402
from private_mariadb import PrivateMariaDB  # noqa: E402

DATABASE = "soak"
HISTORY_ROWS, FILE_ROWS = 5_000, 300
WARM_UP_SECONDS = 20  # memory is first measured this long after the long-running processes start
PUBLISHER_EXTRA_SECONDS = 30  # the publisher runs this much longer than the schedule: its end memory is measured
DRAIN_SECONDS = 300  # how long the end waits for the queue, the inbox and the last batch run
RESULTS = os.path.join(PROJECT, "bench", "results-soak.txt")


@dataclass
class RunRecord:
    """A batch run (one script) and how it ended."""
    script: str
    started: float
    code: int
    error: str


@dataclass
class Soak:
    """Everything the soak started and counted."""
    server: PrivateMariaDB
    folder: str
    queue: str
    processes: dict = field(default_factory=dict)  # name: Popen of each long-running process
    memory_start: dict = field(default_factory=dict)  # name: VmRSS kB after the warm-up
    memory_end: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)  # RunRecord of every batch run
    batch_files: list = field(default_factory=list)  # files the batch runs must load (in order)
    loaded_files: list = field(default_factory=list)
    inbox_files: list = field(default_factory=list)
    file_seeds: int = 100
    restarts: int = 0

    @property
    def url(self):
        return self.server.url(DATABASE)

    def script(self, *arguments):
        return [sys.executable, os.path.join(PROJECT, arguments[0]), *arguments[1:], "--database-url", self.url]

    def log(self, name):
        return os.path.join(self.folder, f"{name}.log")

    def start(self, name, *arguments):
        with open(self.log(name), "w") as err:
            self.processes[name] = subprocess.Popen(self.script(*arguments), cwd=PROJECT, stdout=subprocess.DEVNULL,
                                                    stderr=err)

    def run(self, *arguments):
        """Run a batch script to its end and record it; True when it succeeded."""
        started = time.monotonic()
        done = subprocess.run(self.script(*arguments), cwd=PROJECT, capture_output=True, text=True, timeout=600)
        self.runs.append(RunRecord(arguments[0], started, done.returncode, done.stderr.strip()))
        return done.returncode == 0

    def new_trade_file(self, where, name):
        """A generated trade file of its own seed (refs S{seed}N{rows}-n never collide), without the prices and
        corporate actions beside it (those of the history stay the only ones)."""
        self.file_seeds += 1
        staging = tempfile.mkdtemp(dir=self.folder)
        path = os.path.join(staging, "trades.csv")
        generate_dummy_data.write_files(path, FILE_ROWS, self.file_seeds, corporate_actions=False)
        target = os.path.join(where, name)
        os.replace(path, target)
        shutil.rmtree(staging)
        return target


# ---------------------------------------------------------------------------------------------- phases

def prepare(soak):
    """Reference data and a history, loaded, updated and surveilled."""
    history = os.path.join(soak.folder, "history", "trades.csv")
    os.makedirs(os.path.dirname(history))
    generate_dummy_data.write_files(history, HISTORY_ROWS, 1)
    for arguments in (("seed_investors.py",), ("load_transactions.py", history), ("update_portfolio.py",),
                      ("surveillance.py",)):
        if not soak.run(*arguments):
            raise SystemExit(f"setup failed: {soak.runs[-1].error}")
    soak.runs.clear()


def start_long_running(soak, inbox, seconds, rate):
    soak.start("consumer", "load_transactions.py", "--queue", "--queue-name", soak.queue, "--report-every", "0")
    soak.start("watcher", "load_transactions.py", "--watch", inbox, "--report-every", "0")
    soak.start("publisher", "pseudo_realtime.py", "--sink", "rabbitmq", "--queue-name", soak.queue, "--rate",
               str(rate), "--count", str(int(rate * (seconds + PUBLISHER_EXTRA_SECONDS))), "--seed", "77", "--verbose")


def long_running_pids(soak):
    """name: pid of each long-running process, their worker processes and the server included."""
    pids = {}
    for name, process in soak.processes.items():
        if process.poll() is not None:
            continue
        pids[name] = process.pid
        for number, child in enumerate(worker_children(process.pid)):
            pids[f"{name} worker{number or ''}"] = child
    pids["mariadbd"] = soak.server.process.pid
    return pids


def worker_children(pid):
    """The child processes of a process, multiprocessing's resource tracker left out."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            found += [int(child) for child in handle.read().split()]
    return [child for child in found if "resource_tracker" not in command_line(child)]


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            return int(re.search(r"VmRSS:\s+(\d+)", handle.read()).group(1))
    except (OSError, AttributeError):
        return None


def measure(pids):
    return {name: rss_kb(pid) for name, pid in pids.items()}


def drive(soak, inbox, seconds, batch_every, inbox_every, outage_seconds):
    """The schedule until `seconds` have passed: inbox drops, batch runs, the restart halfway."""
    started = time.monotonic()
    next_batch, next_drop, restart_at = started + batch_every / 2, started + 1, started + seconds / 2
    while time.monotonic() - started < seconds:
        now = time.monotonic()
        if soak.memory_start == {} and now - started >= WARM_UP_SECONDS:
            soak.memory_start = measure(long_running_pids(soak))
        if now >= next_drop:
            soak.inbox_files.append(soak.new_trade_file(inbox, f"drop{len(soak.inbox_files):03d}.csv"))
            next_drop += inbox_every
        if now >= next_batch:
            batch_cycle(soak)
            next_batch += batch_every
        if restart_at is not None and now >= restart_at:
            soak.server.stop(hard=True)
            time.sleep(outage_seconds)
            soak.server.start()
            soak.restarts += 1
            restart_at = None
        time.sleep(0.2)
    soak.memory_end = measure(long_running_pids(soak))


def batch_cycle(soak):
    """One 'hour': a new file to load (and any a failed run left), then the update and surveillance."""
    soak.batch_files.append(soak.new_trade_file(soak.folder, f"batch{len(soak.batch_files):03d}.csv"))
    for path in [path for path in soak.batch_files if path not in soak.loaded_files]:
        if soak.run("load_transactions.py", path):
            soak.loaded_files.append(path)
    soak.run("update_portfolio.py")
    soak.run("surveillance.py")


def finish(soak, inbox):
    """Wait for the publisher, the queue and the inbox; a last batch cycle; measure memory; stop the watchers."""
    soak.processes["publisher"].wait(timeout=DRAIN_SECONDS)
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and not drained(soak, inbox):
        time.sleep(1)
    while [path for path in soak.batch_files if path not in soak.loaded_files] and time.monotonic() < deadline:
        batch_cycle(soak)
    soak.run("update_portfolio.py")
    soak.run("surveillance.py")
    codes = {}
    for name in ("consumer", "watcher"):
        process = soak.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        codes[name] = process.wait(timeout=120)
    return codes


def drained(soak, inbox):
    refs, waiting = live_state(soak)
    processed = os.listdir(os.path.join(inbox, "processed")) if os.path.isdir(os.path.join(inbox, "processed")) else []
    return len(refs) == len(published_refs(soak)) and waiting == 0 and len(processed) == len(soak.inbox_files)


def published_refs(soak):
    with open(soak.log("publisher"), encoding="utf-8") as handle:
        return re.findall(r"published (RT-[0-9a-f]+):", handle.read())


def live_state(soak):
    """(txn_refs of the queue's live batches, live batches not followed up)."""
    try:
        refs = [ref for (ref,) in soak.server.query(
            "SELECT t.txn_ref FROM transactions t JOIN load_batches b ON b.batch_id = t.batch_id "
            "WHERE b.source LIKE 'queue:%%'", database=DATABASE)]
        waiting = soak.server.query("SELECT COUNT(*) FROM load_batches WHERE source LIKE 'queue:%%' AND "
                                    "surveilled_at IS NULL", database=DATABASE)[0][0]
    except Exception:  # the server restarting
        return [], 1
    return refs, waiting


# ---------------------------------------------------------------------------------------------- checks

def positions_and_scores(soak):
    return soak.server.query(
        "SELECT p.investor_id, p.stock_symbol, p.quantity, p.cost_basis, p.realized_pnl, p.last_txn_id, "
        "p.trade_count, p.market_value, r.total_market_value, r.realized_pnl, r.risk_score FROM portfolios p "
        "JOIN investor_risk r ON r.investor_id = p.investor_id ORDER BY p.investor_id, p.stock_symbol",
        database=DATABASE)


def check(soak, codes):
    """{check: (passed, detail)}."""
    count = soak.server.query("SELECT COUNT(*), COUNT(DISTINCT txn_ref) FROM transactions", database=DATABASE)[0]
    refs, waiting = live_state(soak)
    published = published_refs(soak)
    running = soak.server.query("SELECT COUNT(*) FROM load_batches WHERE status = 'running'", database=DATABASE)[0][0]
    expected = HISTORY_ROWS + FILE_ROWS * (len(soak.batch_files) + len(soak.inbox_files)) + len(published)
    failed = [run for run in soak.runs if run.code != 0]
    unrecovered = [run for run in failed if not any(
        later.script == run.script and later.started > run.started and later.code == 0 for later in soak.runs)]
    live = positions_and_scores(soak)
    full_ok = soak.run("update_portfolio.py", "--full")
    return {
        "every published trade applied once": (sorted(refs) == sorted(published),
                                               f"{len(published)} published, {len(refs)} in live batches"),
        "every trade once": (count[0] == count[1] == expected, f"{count[0]} trades, {expected} expected"),
        "no batch left running or unsurveilled": (running == 0 and waiting == 0, f"{running} running, "
                                                  f"{waiting} live batches not followed up"),
        "every failed run recovered": (not unrecovered, f"{len(failed)} failed, {len(unrecovered)} not recovered"),
        "consumer and watcher ran to the end": (codes == {"consumer": 0, "watcher": 0}, f"exit codes {codes}"),
        "positions equal to --full": (full_ok and positions_and_scores(soak) == live, f"{len(live)} positions"),
    }


def outage_lines(soak, name):
    with open(soak.log(name), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return sum("Traceback" in line for line in lines), [line.split(": ", 1)[-1] for line in lines
                                                        if "WARNING" in line or "ERROR" in line]


# ---------------------------------------------------------------------------------------------- report

def report(soak, args, checks, elapsed):
    lines = [f"stock-etl soak, {time.strftime('%Y-%m-%dT%H:%M:%S')}: {elapsed:.0f} s in all, driven {args.seconds} s",
             f"command: python bench/soak.py --seconds {args.seconds} --rate {args.rate} --batch-every "
             f"{args.batch_every} --inbox-every {args.inbox_every} --outage-seconds {args.outage_seconds}",
             f"private MariaDB on port {soak.server.port}; history {HISTORY_ROWS:,} trades; files of {FILE_ROWS} "
             f"trades; {os.cpu_count()} CPUs; load average at end {os.getloadavg()[0]:.2f}", ""]
    trades = soak.server.query("SELECT COUNT(*) FROM transactions", database=DATABASE)[0][0]
    failed = [run for run in soak.runs if run.code != 0]
    lines += [f"trades in the database: {trades:,} (queue {len(published_refs(soak)):,}, inbox files "
              f"{len(soak.inbox_files)}, batch files {len(soak.batch_files)}); database restarts (SIGKILL): "
              f"{soak.restarts}; batch runs {len(soak.runs)}, failed {len(failed)}", ""]
    lines += [f"{'process':<20}{'RSS start MB':>14}{'RSS end MB':>12}{'change MB':>11}", "-" * 57]
    for name in soak.memory_end:
        start, end = soak.memory_start.get(name), soak.memory_end.get(name)
        if start and end:
            lines.append(f"{name:<20}{start / 1024:>14.1f}{end / 1024:>12.1f}{(end - start) / 1024:>+11.1f}")
    lines += ["", "check                                     result  detail", "-" * 72]
    lines += [f"{name:<42}{'ok' if passed else 'FAILED':<8}{detail}" for name, (passed, detail) in checks.items()]
    lines += ["", "failed batch runs (each recovered by a later run of the same script):"]
    lines += [f"  {run.script} at {run.started - soak.runs[0].started:.0f} s: exit {run.code}: {run.error}"
              for run in failed] or ["  none"]
    for name in ("consumer", "watcher"):
        tracebacks, warnings = outage_lines(soak, name)
        lines += [f"{name} log: {len(warnings)} warning/error lines, {tracebacks} tracebacks"]
        lines += [f"  {line}" for line in warnings[:10]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="how long to drive the load (default 600)")
    parser.add_argument("--rate", type=float, default=20, help="trades published a second (default 20)")
    parser.add_argument("--batch-every", type=float, default=60, help="seconds between batch runs (default 60)")
    parser.add_argument("--inbox-every", type=float, default=20, help="seconds between inbox files (default 20)")
    parser.add_argument("--outage-seconds", type=float, default=10, help="how long the server stays down")
    parser.add_argument("--results", default=RESULTS, help="where to write the table")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    began = time.monotonic()
    folder = tempfile.mkdtemp(prefix="stock-etl-soak-")
    queue = f"soak-{uuid.uuid4().hex[:8]}"
    server = PrivateMariaDB.create(prefix="stock-etl-soak-db-")
    soak = Soak(server, folder, queue)
    inbox = os.path.join(folder, "inbox")
    os.makedirs(inbox)
    try:
        prepare(soak)
        start_long_running(soak, inbox, args.seconds, args.rate)
        drive(soak, inbox, args.seconds, args.batch_every, args.inbox_every, args.outage_seconds)
        codes = finish(soak, inbox)
        checks = check(soak, codes)
        text = report(soak, args, checks, time.monotonic() - began)
        print(text, end="")
        with open(args.results, "w", encoding="utf-8") as handle:
            handle.write(text)
        return 0 if all(passed for passed, _ in checks.values()) else 1
    finally:
        for process in soak.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        delete_queues(queue)
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


def delete_queues(queue):
    connection = trade_queue.connect()
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.rejected"):
            channel.queue_delete(name)
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
