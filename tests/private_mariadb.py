"""A private MariaDB server for fault tests: its own data folder and port, stopped and restarted at will.

`PrivateMariaDB.create()` installs a data folder in a new temporary folder (mariadb-install-db, about 3 s) and
starts `mariadbd` on a free port of 127.0.0.1 (root, empty password). `stop(hard=True)` kills the server
(SIGKILL: a crash, InnoDB recovers at the next start), `stop()` shuts it down cleanly (SIGTERM), `start()`
starts it again on the same data, `kill_sessions(database)` drops every client connection to a database (KILL,
as an administrator would), and `close()` stops it and removes its folder. The shared server is never touched.

    with PrivateMariaDB.create() as server:
        url = server.url("my_database")
"""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import pymysql

INSTALL_DB = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db") or "mariadb-install-db"
SERVER = shutil.which("mariadbd", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin") or "mariadbd"
SMALL_SERVER_OPTIONS = (  # a test server: small memory, no binary log, no fsync per commit (a killed mariadbd
    "--skip-log-bin",     # still keeps every commit: the log is in the OS's cache)
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=32M",
    "--innodb-flush-log-at-trx-commit=2",
    "--skip-name-resolve",
    "--local-infile=1",
    "--max-connections=200",
)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60


class ServerError(RuntimeError):
    """The private server could not be installed or started; the message ends with its error log."""


def _die_with_this_process():
    """In the server's child before exec: the kernel kills it when the test process dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: close() is the only stop
        pass


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on (the kernel's choice for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PrivateMariaDB:
    """One mariadbd process on its own data folder and port."""
    folder: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen = None

    @classmethod
    def create(cls, prefix="private-mariadb-"):
        """Install a data folder in a new temporary folder and start the server on it."""
        server = cls(tempfile.mkdtemp(prefix=prefix))
        try:
            server.install()
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    @property
    def datadir(self):
        return os.path.join(self.folder, "data")

    @property
    def error_log(self):
        return os.path.join(self.folder, "error.log")

    def install(self):
        command = [INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
                   "--skip-test-db", *self._user_option()]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            raise ServerError(f"{INSTALL_DB} failed ({done.returncode}): {done.stdout[-2000:]}")

    def start(self):
        """Start mariadbd on the data folder and wait until it answers."""
        if self.running():
            return
        command = [SERVER, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                   "--bind-address=127.0.0.1", f"--socket={os.path.join(self.folder, 'sock')}",
                   f"--pid-file={os.path.join(self.folder, 'mariadbd.pid')}", f"--log-error={self.error_log}",
                   *self._user_option(), *SMALL_SERVER_OPTIONS]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_this_process)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"mariadbd exited with {self.process.returncode}: {self._log_tail()}")
            if self.answers():
                return
            time.sleep(0.05)
        self.stop(hard=True)
        raise ServerError(f"mariadbd did not answer within {START_TIMEOUT_SECONDS} s: {self._log_tail()}")

    def stop(self, hard=False):
        """Stop the server: SIGKILL (a crash) when hard, else SIGTERM (a clean shutdown); wait for it to end."""
        if not self.running():
            return
        self.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, hard=False):
        self.stop(hard)
        self.start()

    def close(self):
        """Stop the server (at once) and remove its folder."""
        try:
            self.stop(hard=True)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def running(self):
        return self.process is not None and self.process.poll() is None

    def answers(self):
        try:
            self.connect().close()
        except pymysql.err.MySQLError:
            return False
        return True

    def url(self, database=None):
        """The SQLAlchemy URL of a database on this server (PyMySQL, root without a password)."""
        return f"mysql+pymysql://root:@127.0.0.1:{self.port}" + (f"/{database}" if database else "")

    def connect(self, database=None):
        """An administrator's autocommit PyMySQL connection."""
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database=database,
                               autocommit=True, connect_timeout=2)

    def query(self, statement, arguments=None, database=None):
        """The rows of one statement, on a connection of its own."""
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, arguments)
                return cursor.fetchall()
        finally:
            connection.close()

    def sessions(self, database):
        """The ids of the client connections using a database (information_schema.processlist)."""
        return [row[0] for row in self.query(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()", (database,))]

    def kill_sessions(self, database):
        """KILL every client connection using the database; return how many were killed."""
        killed = 0
        for session in self.sessions(database):
            try:
                self.query(f"KILL {int(session)}")
                killed += 1
            except pymysql.err.OperationalError:  # it ended by itself meanwhile (1094: unknown thread id)
                continue
        return killed

    def _user_option(self):
        return ["--user=root"] if os.geteuid() == 0 else []

    def _log_tail(self):
        try:
            with open(self.error_log, encoding="utf-8", errors="replace") as handle:
                return " | ".join(handle.read().strip().splitlines()[-5:])
        except OSError:
            return "(no error log)"
