"""The inbox (load_transactions.py --watch DIR): files renamed in or closed by their writer are loaded once, whole,
applied and moved to processed/; refused files go to failed/ with a reason; dot and .tmp files are never read;
files present at start come first; SIGTERM ends the watch with exit 0 between files; an outage keeps the file."""
import os
import signal
import subprocess
import sys
import time

import pandas
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

import cli
import db_config
import inbox
import load_transactions
import seed_investors
from schema import load_batches

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"
SYMBOLS = ("AAPL", "MSFT", "JPM")
DEADLINE_SECONDS = 30


# ------------------------------------------------------------------------------------------------ helpers

def trade_lines(prefix, count):
    """`count` valid BUYs with refs prefix0, prefix1, ...: investor 1001 + n % 10, symbol by n % 3."""
    return [f"{prefix}{n},{1001 + n % 10},{SYMBOLS[n % 3]},BUY,{1 + n % 7},{100 + n % 5}.25,"
            f"2025-01-02 {10 + n // 3600 % 6:02d}:{n // 60 % 60:02d}:{n % 60:02d}\n" for n in range(count)]


def drop(folder, name, content):
    """Write a file under a temporary dot name in the inbox, then rename it into place (the safe way)."""
    temporary = os.path.join(folder, f".{name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.rename(temporary, os.path.join(folder, name))


def wait_for(condition, what, seconds=DEADLINE_SECONDS):
    """Poll `condition()` until it is true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def batches(engine):
    with engine.connect() as connection:
        rows = connection.execute(select(load_batches).order_by(load_batches.c.batch_id))
        return [dict(row._mapping) for row in rows]


def batch_of(engine, name):
    """The load_batches rows of files named `name` (anywhere)."""
    return [batch for batch in batches(engine) if os.path.basename(batch["source"]) == name]


def applied_positions(engine, refs):
    """{txn_ref: (quantity held, is it the position's last trade applied)} for the trades with these refs."""
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT t.txn_ref, p.quantity, p.last_txn_id = t.txn_id FROM transactions t JOIN portfolios p "
            "ON p.investor_id = t.investor_id AND p.stock_symbol = t.stock_symbol"), {}).all()
    return {ref: (quantity, bool(last)) for ref, quantity, last in rows if ref in refs}


def count_trades(engine):
    with engine.connect() as connection:
        return connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar()


class Watcher:
    """`load_transactions.py --watch FOLDER` as a subprocess, its stdout and stderr in files."""

    def __init__(self, folder, url, logs):
        self.out, self.err = logs / "watch.out", logs / "watch.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(PROJECT_DIR, "load_transactions.py"), "--watch", str(folder),
                 "--database-url", url, "--report-every", "0"],
                stdout=out, stderr=err, env={**os.environ, "DATABASE_URL": ""})

    def stdout(self):
        return self.out.read_text(encoding="utf-8")

    def stderr(self):
        return self.err.read_text(encoding="utf-8")

    def wait_ready(self):
        wait_for(lambda: "watching " in self.stdout() or self.process.poll() is not None, "the watcher to start")
        assert self.process.poll() is None, self.stderr()

    def stop(self):
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(DEADLINE_SECONDS)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def start_watcher(tmp_path):
    """start_watcher(folder, url) -> a ready Watcher; killed at the end of the test if still running."""
    started = []

    def start(folder, url):
        started.append(Watcher(folder, url, tmp_path))
        started[-1].wait_ready()
        return started[-1]

    yield start
    for watcher in started:
        if watcher.process.poll() is None:
            watcher.process.kill()
            watcher.process.wait()


@pytest.fixture
def seeded_sqlite(sqlite_url):
    """(URL, engine) of a seeded SQLite database."""
    engine = db_config.get_engine(sqlite_url)
    seed_investors.seed_reference_data(engine)
    yield sqlite_url, engine
    engine.dispose()


# ------------------------------------------------------------------------------------------------ the watcher

def test_a_file_renamed_in_is_applied_and_moved_to_processed(seeded_engine, database_url, folder, start_watcher):
    watcher = start_watcher(folder, database_url)

    drop(folder, "day1.csv", HEADER + "".join(trade_lines("R", 3)))

    wait_for(lambda: (folder / "processed" / "day1.csv").exists(), "day1.csv in processed/")
    assert applied_positions(seeded_engine, {"R0", "R1", "R2"}) == {"R0": (1, True), "R1": (2, True), "R2": (3, True)}
    [batch] = batch_of(seeded_engine, "day1.csv")
    assert (batch["status"], batch["rows_read"], batch["rows_loaded"], batch["rows_rejected"]) == ("loaded", 3, 3, 0)
    assert batch["applied_at"] is not None and batch["surveilled_at"] is not None
    assert not (folder / "day1.csv").exists() and os.listdir(folder / "failed") == []
    assert watcher.stop() == 0
    lines = watcher.stdout().splitlines()
    assert f"day1.csv: 3 read, 3 loaded, 0 duplicates, 0 rejected (batch {batch['batch_id']})" in lines
    assert lines[-1].startswith(f"stopped: 1 file(s) processed (0 already loaded), 0 failed, 0 left in {folder} (")
    assert watcher.stderr() == ""


def test_a_file_written_slowly_in_place_is_read_only_once_its_writer_closed_it(seeded_engine, database_url, folder,
                                                                               start_watcher):
    watcher = start_watcher(folder, database_url)
    lines = trade_lines("S", 100)

    with open(folder / "slow.csv", "w", encoding="utf-8") as writer:
        writer.write(HEADER)
        for part in range(5):  # 1.5 s with the file open, cut mid-line too
            chunk = "".join(lines[part * 20:(part + 1) * 20])
            writer.write(chunk[:-7])
            writer.flush()
            time.sleep(0.3)
            writer.write(chunk[-7:])
        assert batch_of(seeded_engine, "slow.csv") == []

    wait_for(lambda: (folder / "processed" / "slow.csv").exists(), "slow.csv in processed/")
    [batch] = batch_of(seeded_engine, "slow.csv")
    assert (batch["status"], batch["rows_read"], batch["rows_loaded"]) == ("loaded", 100, 100)
    assert batch["rows_rejected"] == 0 and os.listdir(folder / "failed") == []
    assert count_trades(seeded_engine) == 100
    assert watcher.stop() == 0


def test_a_duplicate_file_goes_to_processed_under_a_free_name_and_loads_nothing_twice(seeded_sqlite, folder,
                                                                                     start_watcher):
    url, engine = seeded_sqlite
    watcher = start_watcher(folder, url)
    content = HEADER + "".join(trade_lines("D", 4))

    drop(folder, "trades.csv", content)
    wait_for(lambda: (folder / "processed" / "trades.csv").exists(), "the first trades.csv in processed/")
    drop(folder, "trades.csv", content)
    wait_for(lambda: len(os.listdir(folder / "processed")) == 2, "the second trades.csv in processed/")

    [first, again] = sorted(os.listdir(folder / "processed"))
    assert first.startswith("trades.") and first.endswith(".csv") and again == "trades.csv"
    assert (folder / "processed" / first).read_text(encoding="utf-8") == content
    [batch] = batch_of(engine, "trades.csv")
    assert batch["rows_loaded"] == 4 and count_trades(engine) == 4
    assert watcher.stop() == 0
    assert f"trades.csv: already loaded in batch {batch['batch_id']}, skipped" in watcher.stdout().splitlines()


def test_a_refused_file_goes_to_failed_with_its_reason_and_the_next_file_still_loads(seeded_sqlite, folder,
                                                                                    start_watcher):
    url, engine = seeded_sqlite
    watcher = start_watcher(folder, url)

    drop(folder, "bad.csv", "txn_ref,investor,symbol\nX1,1001,AAPL\n")
    drop(folder, "empty.csv", "")
    drop(folder, "good.csv", HEADER + "".join(trade_lines("G", 2)))

    wait_for(lambda: (folder / "processed" / "good.csv").exists(), "good.csv in processed/")
    assert sorted(os.listdir(folder / "failed")) == ["bad.csv", "bad.csv.reason", "empty.csv", "empty.csv.reason"]
    assert (folder / "failed" / "bad.csv.reason").read_text(encoding="utf-8").startswith(
        "line 1: header lacks required column(s) investor_id, stock_symbol, txn_type, quantity, price, txn_time;")
    assert (folder / "failed" / "empty.csv.reason").read_text(encoding="utf-8") == "is empty\n"
    assert (folder / "failed" / "bad.csv").read_text(encoding="utf-8") == "txn_ref,investor,symbol\nX1,1001,AAPL\n"
    assert [batch["status"] for batch in batches(engine)] == ["failed", "failed", "loaded"]
    assert count_trades(engine) == 2
    assert watcher.stop() == 0
    assert "bad.csv: refused: line 1: header lacks required column(s)" in watcher.stderr()
    assert watcher.stdout().splitlines()[-1].startswith("stopped: 1 file(s) processed (0 already loaded), 2 failed")


def test_files_present_at_start_come_first_oldest_first(seeded_sqlite, folder, start_watcher):
    url, engine = seeded_sqlite
    now = time.time()
    for age, name in ((30, "c.csv"), (20, "a.csv"), (10, "b.csv")):
        (folder / name).write_text(HEADER + "".join(trade_lines(name[0].upper(), 2)), encoding="utf-8")
        os.utime(folder / name, (now - age, now - age))

    watcher = start_watcher(folder, url)
    assert "watching " + str(folder) + ": 3 complete file(s) waiting" in watcher.stdout()
    drop(folder, "later.csv", HEADER + "".join(trade_lines("L", 2)))

    wait_for(lambda: len(os.listdir(folder / "processed")) == 4, "four files in processed/")
    assert [os.path.basename(batch["source"]) for batch in batches(engine)] == ["c.csv", "a.csv", "b.csv",
                                                                                 "later.csv"]
    assert watcher.stop() == 0


def test_dot_files_and_tmp_files_are_never_read(seeded_sqlite, folder, start_watcher):
    url, engine = seeded_sqlite
    content = HEADER + "".join(trade_lines("H", 2))
    hidden = [".hidden.csv", "part.csv.tmp", ".part.csv.tmp", "notes.txt"]
    for name in hidden[:2]:  # present at start, settled
        (folder / name).write_text(content, encoding="utf-8")
        os.utime(folder / name, (time.time() - 60,) * 2)

    watcher = start_watcher(folder, url)
    for name in hidden[2:]:  # written and closed while watching
        (folder / name).write_text(content, encoding="utf-8")
    os.rename(folder / "part.csv.tmp", folder / ".renamed.csv")
    drop(folder, "marker.csv", HEADER + "".join(trade_lines("M", 1)))

    wait_for(lambda: (folder / "processed" / "marker.csv").exists(), "marker.csv in processed/")
    assert sorted(name for name in os.listdir(folder) if name != ".watch.lock") == sorted(
        [".hidden.csv", ".part.csv.tmp", "notes.txt", ".renamed.csv", "failed", "processed"])
    assert [os.path.basename(batch["source"]) for batch in batches(engine)] == ["marker.csv"]
    assert watcher.stop() == 0


def test_sigterm_with_a_file_in_hand_finishes_it_and_leaves_the_next_in_the_inbox(seeded_engine, database_url, folder,
                                                                                 start_watcher):
    watcher = start_watcher(folder, database_url)
    drop(folder, "big.csv", HEADER + "".join(trade_lines("B", 30_000)))
    drop(folder, "next.csv", HEADER + "".join(trade_lines("N", 3)))
    wait_for(lambda: batch_of(seeded_engine, "big.csv"), "big.csv's batch to start")

    assert watcher.stop() == 0

    [batch] = batch_of(seeded_engine, "big.csv")
    if (folder / "processed" / "big.csv").exists():  # finished: loaded whole and applied
        assert (batch["status"], batch["rows_loaded"]) == ("loaded", 30_000) and batch["applied_at"] is not None
        assert count_trades(seeded_engine) == 30_000
    else:  # never half: nothing of it kept, the file still in the inbox
        assert (folder / "big.csv").exists() and batch["status"] == "failed" and count_trades(seeded_engine) == 0
    assert (folder / "next.csv").exists() and batch_of(seeded_engine, "next.csv") == []
    assert watcher.stdout().splitlines()[-1].startswith("stopped: 1 file(s) processed (0 already loaded), 0 failed, "
                                                        f"1 left in {folder}")
    assert "Traceback" not in watcher.stderr()


def test_a_second_sigterm_interrupts_the_file_in_hand_and_leaves_it_in_the_inbox(seeded_sqlite, folder, start_watcher):
    url, engine = seeded_sqlite
    watcher = start_watcher(folder, url)
    drop(folder, "big.csv", HEADER + "".join(trade_lines("B", 30_000)))
    wait_for(lambda: batch_of(engine, "big.csv"), "big.csv's batch to start")

    watcher.process.send_signal(signal.SIGTERM)
    time.sleep(0.05)  # the handler's first call has run: the second one interrupts
    assert watcher.stop() == 1

    assert watcher.stderr().splitlines()[-1] == "error: load_transactions: interrupted"
    [batch] = batch_of(engine, "big.csv")
    assert (folder / "big.csv").exists() and os.listdir(folder / "processed") == []
    assert (batch["status"], count_trades(engine)) in {("failed", 0), ("loaded", 30_000)}  # rolled back, or whole


# ------------------------------------------------------------------------------------------------ in process

def test_a_missing_folder_exits_2_with_one_line(sqlite_url, tmp_path, capsys):
    missing = tmp_path / "nowhere"

    code = load_transactions.main(["--watch", str(missing), "--database-url", sqlite_url])

    assert code == 2
    assert capsys.readouterr().err == f"error: load_transactions: {missing}: no such folder\n"


def test_an_outage_keeps_the_file_in_the_inbox_and_logs_one_line_each_way(seeded_sqlite, folder, monkeypatch, caplog):
    _, engine = seeded_sqlite
    drop(folder, "during.csv", HEADER + "".join(trade_lines("O", 2)))
    os.utime(folder / "during.csv", (time.time() - 60,) * 2)
    monkeypatch.setattr(inbox, "FIRST_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(inbox, "MAX_RETRY_SECONDS", 0.04)
    real_load_path, attempts = load_transactions.load_path, []

    def flaky_load_path(engine, path):
        attempts.append(os.path.exists(path))
        if len(attempts) <= 4:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("(2003, \"Can't connect to MySQL server\")"))
        os.kill(os.getpid(), signal.SIGTERM)  # asks to stop: the file in hand is finished first
        return real_load_path(engine, path)

    monkeypatch.setattr(load_transactions, "load_path", flaky_load_path)
    previous_handler = signal.getsignal(signal.SIGTERM)

    assert inbox.watch_inbox(engine, str(folder), report_every=0) == cli.EXIT_OK

    assert attempts == [True] * 5
    assert os.listdir(folder / "processed") == ["during.csv"] and count_trades(engine) == 2
    warnings = [record.getMessage() for record in caplog.records if record.name == "inbox"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("database unavailable: (2003, \"Can't connect to MySQL server\"); during.csv stays "
                                  "in the inbox, retrying after ")
    assert warnings[1].startswith("database available again after ")
    assert not any(record.exc_info for record in caplog.records)
    assert signal.getsignal(signal.SIGTERM) is previous_handler


def test_a_file_open_for_writing_is_not_taken_by_a_scan_however_old(folder):
    path = folder / "open.csv"
    with open(path, "w", encoding="utf-8") as writer:
        writer.write(HEADER)
        writer.flush()
        os.utime(path, (time.time() - 60,) * 2)
        assert inbox.complete_files(str(folder)) == []
    os.utime(path, (time.time() - 60,) * 2)

    assert [arrival.path for arrival in inbox.complete_files(str(folder))] == [str(path)]


def test_a_name_taken_in_processed_or_failed_is_never_overwritten(folder):
    (folder / "t.csv").write_text("kept", encoding="utf-8")
    (folder / "u.csv.reason").write_text("kept", encoding="utf-8")

    renamed = inbox.free_name(str(folder), "t.csv")

    assert renamed != "t.csv" and renamed.startswith("t.") and renamed.endswith(".csv")
    assert inbox.free_name(str(folder), "u.csv") != "u.csv" and inbox.free_name(str(folder), "v.csv") == "v.csv"


def test_one_watcher_per_inbox(folder):
    with inbox.holding_lock(str(folder)):
        with pytest.raises(cli.StageError, match=f"another watcher \\(process {os.getpid()}\\) is watching"):
            with inbox.holding_lock(str(folder)):
                pass


def test_a_symbolic_link_is_refused_unread(seeded_sqlite, folder, start_watcher, tmp_path):
    url, engine = seeded_sqlite
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only-secret: admin:S3cr3t\n", encoding="utf-8")
    watcher = start_watcher(folder, url)
    os.symlink(secret, folder / "leak.csv")
    wait_for(lambda: (folder / "failed" / "leak.csv.reason").exists(), "leak.csv in failed/")
    reason = (folder / "failed" / "leak.csv.reason").read_text(encoding="utf-8")
    assert reason.startswith("a symbolic link: the inbox takes only files written into it") and "S3cr3t" not in reason
    assert watcher.stop() == 0 and "S3cr3t" not in watcher.stderr()
    assert count_trades(engine) == 0


def test_a_file_renamed_in_while_still_open_waits_for_its_writer(seeded_sqlite, folder, start_watcher, tmp_path):
    url, engine = seeded_sqlite
    watcher = start_watcher(folder, url)
    lines = trade_lines("W", 4)
    staged = folder / ".w.csv.tmp"
    with open(staged, "w", encoding="utf-8") as writer:
        writer.write(HEADER + "".join(lines[:3]) + lines[3][:20])  # the last line cut: a writer not done yet
        writer.flush()
        os.rename(staged, folder / "w.csv")
        time.sleep(1.0)
        assert count_trades(engine) == 0
        writer.write(lines[3][20:])
    wait_for(lambda: count_trades(engine) == 4, "the four trades, once the writer closed the file")
    assert [batch["rows_rejected"] for batch in batches(engine)] == [0]
    assert watcher.stop() == 0


def test_a_connection_lost_inside_a_pandas_read_is_an_outage(seeded_sqlite, folder, monkeypatch, caplog):
    _, engine = seeded_sqlite
    drop(folder, "during.csv", HEADER + "".join(trade_lines("P", 2)))
    os.utime(folder / "during.csv", (time.time() - 60,) * 2)
    monkeypatch.setattr(inbox, "FIRST_RETRY_SECONDS", 0.01)
    real_apply, attempts = inbox.apply_new_trades, []

    def flaky_apply(engine):
        attempts.append(1)
        if len(attempts) == 1:
            lost = OperationalError("SELECT 1", {}, Exception("(2013, 'Lost connection to MySQL server during query')"))
            lost.orig.args = (2013, "Lost connection to MySQL server during query")
            raise pandas.errors.DatabaseError("Execution failed on sql 'WITH\n...'") from lost
        os.kill(os.getpid(), signal.SIGTERM)
        return real_apply(engine)

    monkeypatch.setattr(inbox, "apply_new_trades", flaky_apply)
    assert inbox.watch_inbox(engine, str(folder), report_every=0) == cli.EXIT_OK
    assert len(attempts) == 2 and os.listdir(folder / "processed") == ["during.csv"]
