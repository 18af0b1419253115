"""The inbox: watch a folder for trade files, then load, apply and file away each complete one (live mode).

`load_transactions.py --watch DIR` runs watch_inbox. Every complete `*.csv` in DIR, those present at start first
(oldest first), then each as it arrives, is loaded as one batch (load_transactions.load_path), its trades are
applied (update_portfolio, then surveillance), and the file moves to DIR/processed/; a file refused whole moves
to DIR/failed/ beside NAME.reason. A file is complete once renamed (or moved) into DIR, or once its writer closed
it (inotify, Linux); a file no event announced is taken when no process holds it open for writing and it has not
changed for SETTLE_SECONDS. While the database is unreachable the file in hand stays in the inbox and is retried
with a growing pause. SIGINT or SIGTERM ends the watch after the file in hand. docs/inbox.md is the user's guide.
"""
import fcntl
import logging
import os
import queue
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, count
from typing import NamedTuple

from sqlalchemy.exc import OperationalError
from watchdog.events import FileClosedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

import cli
import db_config
import db_retry
import load_transactions
import report_refresh
import surveillance
import update_portfolio

logger = logging.getLogger(__name__)

PROCESSED, FAILED = "processed", "failed"
LOCK_NAME = ".watch.lock"  # a dot name: never taken as input
SETTLE_SECONDS = 1.0  # a file no event announced must be unchanged this long (and have no writer) to be taken
RESCAN_SECONDS = 2.0  # how often the folder is listed for files no event announced (hard links, lost events)
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 30.0  # pause after a failed attempt, doubling up to the cap
PROC = "/proc"
OUTAGE_ERRORS = (db_config.DatabaseUnavailable, OperationalError, *cli.installed_errors(
    ("sqlite3.OperationalError", "pymysql.err.OperationalError", "psycopg.OperationalError")))
STOP = object()  # the wake-up a signal sends


class Signature(NamedTuple):
    """What identifies one version of a file: another inode, size or mtime is another file (or a rewrite)."""
    inode: int
    size: int
    mtime_ns: int


class Arrival(NamedTuple):
    """A file found complete, and its signature then."""
    path: str
    signature: Signature


class Outcome(NamedTuple):
    """What became of one file: kind is 'processed', 'duplicate' or 'failed'; destination is where it went."""
    kind: str
    destination: str


@dataclass
class Outage:
    """The database outage in progress, if any: one log line when it starts, one when it ends."""
    database_url: str = None
    since: float = None  # time.monotonic() of the first failure
    retry_seconds: float = FIRST_RETRY_SECONDS

    def failed(self, error, path):
        """Note a failed attempt; the pause before the next grows from FIRST_RETRY_SECONDS to MAX_RETRY_SECONDS."""
        if self.since is not None:
            self.retry_seconds = min(self.retry_seconds * 2, MAX_RETRY_SECONDS)
            return
        self.since, self.retry_seconds = time.monotonic(), FIRST_RETRY_SECONDS
        logger.warning("database unavailable: %s; %s stays in the inbox, retrying after %.0f s, then up to every "
                       "%.0f s", db_config.error_line(error, self.database_url), os.path.basename(path),
                       FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS)

    def ended(self):
        """Note a successful attempt: logs the end of an outage in progress."""
        if self.since is not None:
            logger.warning("database available again after %.0f s", time.monotonic() - self.since)
            self.since = None


@dataclass
class Inbox:
    """A watched folder and the watch's state: files waiting (in arrival order), stop request, outage, counts."""
    folder: str
    wakeups: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # Arrivals and STOP, from other threads
    waiting: dict = field(default_factory=dict)  # path: Signature, complete files not handled yet
    stopping: bool = False
    next_scan: float = 0.0  # time.monotonic() of the next listing of the folder
    outage: Outage = field(default_factory=Outage)
    counts: Counter = field(default_factory=Counter)  # Outcome kinds

    @property
    def processed(self):
        return os.path.join(self.folder, PROCESSED)

    @property
    def failed(self):
        return os.path.join(self.folder, FAILED)

    def receive(self, until):
        """Take the next wake-up (a file or STOP); False when time.monotonic() reached `until` first."""
        try:
            item = self.wakeups.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return False
        if item is not STOP:
            self.waiting[item.path] = item.signature
        return True

    def pause(self, seconds):
        """Wait `seconds`, or less when asked to stop; files arriving meanwhile join the waiting ones."""
        deadline = time.monotonic() + seconds
        while not self.stopping and self.receive(deadline):
            pass

    def add(self, arrivals):
        for arrival in arrivals:
            self.waiting.setdefault(arrival.path, arrival.signature)


# ------------------------------------------------------------------------------------------------ the watch

def watch_inbox(engine, folder, report_every=5.0, database_url=None):
    """Process every complete *.csv of `folder`, present or arriving, until SIGINT or SIGTERM; return 0."""
    inbox = open_inbox(folder, database_url)
    started = time.monotonic()
    with report_refresh.ReportRefresher(database_url, report_every) as refresher, holding_lock(inbox.folder), \
            stopping_on_signals(inbox), observing(inbox):
        inbox.add(startup_files(inbox.folder))
        inbox.next_scan = time.monotonic() + RESCAN_SECONDS
        print(f"watching {inbox.folder}: {len(inbox.waiting)} complete file(s) waiting", flush=True)
        while (path := next_file(inbox)) is not None:
            handle_file(engine, inbox, path, refresher)
    print(stop_line(inbox, time.monotonic() - started), flush=True)
    return cli.EXIT_OK


def open_inbox(folder, database_url=None):
    """The Inbox of an existing folder, with processed/ and failed/ created; InputError when it is missing."""
    if not os.path.isdir(folder):
        raise cli.InputError(f"{folder}: " + ("not a folder" if os.path.exists(folder) else "no such folder"))
    inbox = Inbox(os.path.abspath(folder), outage=Outage(database_url))
    os.makedirs(inbox.processed, exist_ok=True)
    os.makedirs(inbox.failed, exist_ok=True)
    return inbox


def next_file(inbox):
    """The next complete file to process, waiting for one as long as needed; None once asked to stop."""
    while not inbox.stopping:
        if time.monotonic() >= inbox.next_scan:
            scan_inbox(inbox)
        elif inbox.waiting:
            path, signature = next(iter(inbox.waiting.items()))
            del inbox.waiting[path]
            if file_signature(path) == signature and not open_for_writing([path]):
                return path  # else gone, changed since, or renamed in still open: its next event or a scan brings it
        else:
            inbox.receive(inbox.next_scan)
    return None


def scan_inbox(inbox):
    """Take the wake-ups already sent, then add the complete files that no event announced (see complete_files)."""
    while not inbox.stopping and inbox.receive(0):
        pass
    inbox.add(complete_files(inbox.folder, known=inbox.waiting))
    inbox.next_scan = time.monotonic() + RESCAN_SECONDS


def handle_file(engine, inbox, path, refresher):
    """Process one file, then poke the report refresher; while the database is unreachable, keep the file in the
    inbox and try again after a pause."""
    while not inbox.stopping:
        try:
            outcome = process_file(engine, inbox, path)
        except Exception as error:
            if not (isinstance(error, OUTAGE_ERRORS) or db_retry.is_unreachable(error)):
                raise
            inbox.outage.failed(error, path)
            inbox.pause(inbox.outage.retry_seconds)
            continue
        inbox.outage.ended()
        if outcome is not None:
            inbox.counts[outcome.kind] += 1
            if outcome.kind != FAILED:
                refresher.poke()
        return


def stop_line(inbox, seconds):
    """The closing summary line: what the watch did and what it left in the inbox."""
    left = sum(1 for _ in inbox_files(inbox.folder))
    return (f"stopped: {inbox.counts['processed'] + inbox.counts['duplicate']} file(s) processed "
            f"({inbox.counts['duplicate']} already loaded), {inbox.counts['failed']} failed, {left} left in "
            f"{inbox.folder} ({seconds:.0f} s)")


# ------------------------------------------------------------------------------------------------ one file

def process_file(engine, inbox, path):
    """Load a file, apply the trades, move the file to processed/ (or, refused whole, to failed/); the Outcome.

    Returns None when the file vanished before it could be read. The file moves only after its trades are
    applied, so a crash in between leaves it in the inbox: the next attempt skips it as already loaded (the
    same SHA-256) and applies what is pending.
    """
    started = time.perf_counter()
    if os.path.islink(path):  # whoever may write here could otherwise have the watcher read any file it can
        return refuse_file(inbox, path, "a symbolic link: the inbox takes only files written into it, and never "
                                        "reads what a link points to")
    try:
        summary = load_transactions.load_path(engine, path)
    except cli.InputError as error:
        if not os.path.exists(path):
            logger.warning("%s: removed from the inbox before it could be read", os.path.basename(path))
            return None
        return refuse_file(inbox, path, str(error).removeprefix(f"{path}: "))
    loaded = time.perf_counter()
    update, checked = apply_new_trades(engine)
    destination = move_into(inbox.processed, path)
    load_transactions.report(summary)
    sys.stdout.flush()
    already_loaded = isinstance(summary, load_transactions.LoadSummary) and summary.skipped_batch is not None
    logger.info("%s; applied %d trades, %d new alerts (load %.3f s, update %.3f s, surveillance %.3f s); moved to %s",
                summary.line(), update.trades_applied, update.alerts_raised + sum(checked.new_alerts.values()),
                loaded - started, update.seconds, checked.seconds, os.path.relpath(destination, inbox.folder))
    return Outcome("duplicate" if already_loaded else "processed", destination)


def apply_new_trades(engine):
    """Apply what was loaded and not applied yet: update_portfolio, then surveillance; both summaries."""
    update = update_portfolio.update_portfolios(engine)
    logger.debug("%s", update.line())
    checked = surveillance.run_surveillance(engine)
    logger.debug("%s", checked.line())
    return update, checked


def refuse_file(inbox, path, reason):
    """Move a file refused whole to failed/, its reason (one line) beside it in NAME.reason."""
    destination = os.path.join(inbox.failed, free_name(inbox.failed, os.path.basename(path)))
    write_line(destination + ".reason", " ".join(reason.split()))
    os.rename(path, destination)
    logger.warning("%s: refused: %s; moved to %s", os.path.basename(path), reason,
                   os.path.relpath(destination, inbox.folder))
    return Outcome(FAILED, destination)


def move_into(folder, path):
    """Move a file into `folder`, renamed (see free_name) when the name is taken; return its new path."""
    destination = os.path.join(folder, free_name(folder, os.path.basename(path)))
    os.rename(path, destination)
    return destination


def free_name(folder, name):
    """`name`, or when `folder` holds it (or its .reason) already, name.YYYYmmdd-HHMMSS[-N].ext: never overwrite."""
    stem, extension = os.path.splitext(name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidates = chain([name], (f"{stem}.{stamp}{f'-{n}' if n > 1 else ''}{extension}" for n in count(1)))
    return next(candidate for candidate in candidates
                if not any(os.path.lexists(os.path.join(folder, candidate + suffix)) for suffix in ("", ".reason")))


def write_line(path, line):
    """Write one line to a file under a temporary dot name, then rename it: a reader never sees it half written."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(line + "\n")
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------ which files

def is_inbox_name(name):
    """Is this the name of a file to take: *.csv (any case), not a dot name (a file still being written)?"""
    return name.lower().endswith(".csv") and not name.startswith(".")


def inbox_files(folder):
    """(path, os.stat_result) of every file of `folder` with an inbox name."""
    with os.scandir(folder) as entries:
        found = [(entry.path, entry.stat()) for entry in entries if is_inbox_name(entry.name) and entry.is_file()]
    return found


def file_signature(path):
    """The file's Signature, or None when it is gone (or cannot be looked at)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return Signature(stat.st_ino, stat.st_size, stat.st_mtime_ns)


def complete_files(folder, known=()):
    """Arrivals for the files of `folder` (but those `known`) that no event has to announce: unchanged for
    SETTLE_SECONDS and open for writing by no process visible in /proc; oldest (by mtime) first."""
    now = time.time()
    settled = sorted((stat.st_mtime_ns, path, Signature(stat.st_ino, stat.st_size, stat.st_mtime_ns))
                     for path, stat in inbox_files(folder)
                     if now - stat.st_mtime >= SETTLE_SECONDS and path not in known)
    writing = open_for_writing([path for _, path, _ in settled])
    return [Arrival(path, signature) for _, path, signature in settled if path not in writing]


def startup_files(folder):
    """The complete files present at start, oldest first; waits (at most SETTLE_SECONDS) for those just written."""
    ages = [time.time() - stat.st_mtime for _, stat in inbox_files(folder)]
    young = [age for age in ages if age < SETTLE_SECONDS]
    if young:
        time.sleep(SETTLE_SECONDS - max(min(young), 0.0))
    return complete_files(folder)


def open_for_writing(paths):
    """The paths that a process visible in /proc holds open for writing (other users' processes are visible
    to root only; with no /proc, none)."""
    wanted = {os.path.realpath(path): path for path in paths}
    found = set()
    for fd_path in open_descriptors() if wanted else ():
        try:
            target = os.readlink(fd_path)
            if target in wanted and is_writable_descriptor(fd_path):
                found.add(wanted[target])
        except OSError:  # the process or descriptor went away meanwhile
            continue
    return found


def open_descriptors():
    """The /proc/PID/fd/N paths of every process this user may inspect."""
    try:
        pids = [name for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return []
    descriptors = []
    for pid in pids:
        try:
            descriptors += [os.path.join(PROC, pid, "fd", fd) for fd in os.listdir(os.path.join(PROC, pid, "fd"))]
        except OSError:  # gone, or another user's
            continue
    return descriptors


def is_writable_descriptor(fd_path):
    """Was /proc/PID/fd/N opened for writing (its fdinfo flags)?"""
    with open(fd_path.replace(f"{os.sep}fd{os.sep}", f"{os.sep}fdinfo{os.sep}"), encoding="ascii") as handle:
        flags = next(int(line.split()[1], 8) for line in handle if line.startswith("flags:"))
    return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


# ------------------------------------------------------------------------------------------------ events, signals

class ArrivalHandler(FileSystemEventHandler):
    """Wakes the watch for each file of the inbox that became complete: renamed or moved in, or closed after
    writing. Runs in watchdog's thread; the watch's own thread does the rest."""

    def __init__(self, inbox):
        super().__init__()
        self.inbox = inbox

    def on_moved(self, event):
        self.arrived(event.dest_path)

    def on_closed(self, event):
        self.arrived(event.src_path)

    def arrived(self, path):
        if not path or os.path.dirname(path) != self.inbox.folder or not is_inbox_name(os.path.basename(path)):
            return
        signature = file_signature(path)
        if signature is not None:
            self.inbox.wakeups.put(Arrival(path, signature))


@contextmanager
def observing(inbox):
    """Watch the folder with inotify for the duration. Recursive, so that moving a file into processed/ is one
    event (a move out of the watched tree holds back later events for half a second)."""
    observer = InotifyObserver(generate_full_events=True)  # a file moved in from elsewhere: a move, not a creation
    observer.schedule(ArrivalHandler(inbox), inbox.folder, recursive=True,
                      event_filter=[FileMovedEvent, FileClosedEvent])
    observer.start()
    try:
        yield
    finally:
        observer.stop()
        observer.join()


@contextmanager
def stopping_on_signals(inbox):
    """SIGINT and SIGTERM ask the watch to stop after the file in hand; a second one interrupts it (what is in
    progress is rolled back and the file stays in the inbox). The previous handlers come back afterwards."""
    def ask_to_stop(signal_number, _frame):
        if inbox.stopping:
            raise KeyboardInterrupt(f"{signal.Signals(signal_number).name} again")
        inbox.stopping = True
        inbox.wakeups.put(STOP)  # SimpleQueue.put may be called from a signal handler

    previous = {number: signal.signal(number, ask_to_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def holding_lock(folder):
    """Hold DIR/.watch.lock for the duration: one watcher per inbox (two would load and move the same files)."""
    with open(os.path.join(folder, LOCK_NAME), "a+", encoding="ascii") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise cli.StageError(f"{folder}: another watcher (process {handle.read().strip() or '?'}) is watching "
                                 "this inbox") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
