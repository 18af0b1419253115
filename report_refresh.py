"""Keep reports/index.html current in live mode: regenerate it in the background after new trades, at most once
per interval.

The live loaders (`load_transactions.py --queue` and `--watch`) call ReportRefresher.poke() after each applied
batch. A regeneration is a child process, `analyze.py --html --quiet --no-plots` (the page with its charts, no PNG
files): drawing takes seconds and must not hold up loading, and matplotlib's memory goes away with the child. At
most one child runs at a time and one starts at most every `every_seconds`; a poke that comes before then is
remembered and served when the interval has passed. A failing child is logged once per failure streak and never
stops the caller. The child reads the caller's database from DATABASE_URL in its environment, not from its command
line, where `ps` would show a password to every user of the machine.
"""
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import db_config
import html_report

logger = logging.getLogger(__name__)

ANALYZE_SCRIPT = db_config.project_path("analyze.py")
DEFAULT_REPORT_DIR = db_config.project_path("reports")  # analyze.py's default
CLOSE_TIMEOUT_SECONDS = 30  # a regeneration of the 10,000-trade database takes about 5 s
POLL_SECONDS = 0.2  # how often a running child is checked for its end
STDERR_BYTES = 64 * 1024  # read of a failed child's stderr, for its error line


def error_summary(stderr_text):
    """The line of a child's stderr that says what failed: its `error:` line, else its first line."""
    lines = [line.strip() for line in stderr_text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no message on stderr)"])[0]


class ReportRefresher:
    """Regenerates the HTML report in a child process after new trades, at most once every `every_seconds`.

    `database_url` is the caller's `--database-url` (None: the child finds the database as the caller did, from
    DATABASE_URL or the default); every_seconds 0 disables regeneration; a relative report_dir is taken from the
    current folder. Use it as a context manager, or call close() when done.
    """

    def __init__(self, database_url, every_seconds, report_dir=DEFAULT_REPORT_DIR):
        if every_seconds < 0:
            raise ValueError(f"every_seconds must be 0 (never) or a number of seconds, not {every_seconds}")
        self.database_url = database_url
        self.every_seconds = every_seconds
        self.report_dir = os.path.abspath(report_dir)
        self.started = 0  # regenerations started (or tried)
        self.failed = 0  # regenerations that failed
        self._condition = threading.Condition()  # guards everything below; notified by poke() and close()
        self._thread = None  # started by the first poke
        self._pending = False  # a poke not yet served
        self._closing = False
        self._last_start = None  # time.monotonic() of the last start
        self._child = None
        self._stderr = None  # the running child's stderr, a temporary file (a pipe could fill up and block it)
        self._failing = False  # the last regeneration failed: a failure streak is logged once

    def __enter__(self):
        return self

    def __exit__(self, *_exception):
        self.close()

    def poke(self):
        """New trades were applied: regenerate now if due, else as soon as the interval has passed.

        Returns at once: the regeneration runs in the background, and its failure is logged, never raised.
        """
        if not self.every_seconds:
            return
        with self._condition:
            if self._closing:
                return
            self._pending = True
            self._step()
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="report-refresher", daemon=True)
                self._thread.start()
            self._condition.notify()

    def close(self, timeout=CLOSE_TIMEOUT_SECONDS):
        """Start no more regenerations; wait up to `timeout` seconds for a running one, then kill it."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()
        if self._child is None:
            return
        try:
            self._child.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("report regeneration still running after %s s: stopped", timeout)
            self._child.kill()
            self._child.wait()
        self._finish()

    def command(self):
        """The child's command line: analyze.py writing only the page (charts inline, no PNG files)."""
        nice = shutil.which("nice")  # at low priority: the live consumer's latency comes first
        return [*([nice, "-n", "10"] if nice else []), sys.executable, ANALYZE_SCRIPT, "--html", "--quiet",
                "--no-plots", "--reports", self.report_dir]

    def _serve(self):
        """The background thread: serve a pending poke when it is due, reap the child, wait for what comes next."""
        with self._condition:
            while not self._closing:
                self._step()
                if self._child is not None:
                    self._condition.wait(POLL_SECONDS)
                else:
                    self._condition.wait(self._seconds_until_due() if self._pending else None)

    def _step(self):
        """Reap an ended child; start one when a poke is pending, the interval has passed and none is running."""
        if self._child is not None and self._child.poll() is not None:
            self._finish()
        if self._pending and self._child is None and self._seconds_until_due() <= 0:
            self._start()

    def _seconds_until_due(self):
        if self._last_start is None:
            return 0
        return self.every_seconds - (time.monotonic() - self._last_start)

    def _start(self):
        self._pending = False
        self._last_start = time.monotonic()
        self.started += 1
        try:
            self._stderr = tempfile.TemporaryFile()
            self._child = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                env=self._environment(), start_new_session=True)  # Ctrl+C stops the caller, which then close()s
        except OSError as error:  # cannot fork or exec: a failure like any other, the caller goes on
            self._failed(f"cannot start it: {error}")
            return
        logger.debug("report regeneration started (pid %d)", self._child.pid)

    def _environment(self):
        """The caller's environment, with DATABASE_URL set to the caller's database when one was named."""
        return None if self.database_url is None else {**os.environ, "DATABASE_URL": self.database_url}

    def _finish(self):
        """Log how the ended child went (a failure once per streak) and forget it."""
        code, self._child = self._child.returncode, None
        self._stderr.seek(0)
        stderr_text = self._stderr.read(STDERR_BYTES).decode("utf-8", errors="replace")
        self._stderr.close()
        if code != 0:
            self._failed(f"exit code {code}: {error_summary(stderr_text)}")
        elif self._failing:
            self._failing = False
            logger.info("report regeneration works again (%s)", os.path.join(self.report_dir, html_report.PAGE_NAME))

    def _failed(self, reason):
        self.failed += 1
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.close()
        reason = db_config.hide_secrets(reason, self.database_url)
        if self._failing:
            logger.debug("report regeneration failed again: %s", reason)
            return
        self._failing = True
        logger.warning("report regeneration failed (%s); loading goes on, and further failures in a row are not "
                       "logged", reason)
