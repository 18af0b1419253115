"""cron/run_stage.sh: runs a stage with the project's interpreter, logs to etl.log, never overlaps itself."""
import fcntl
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "cron", "run_stage.sh")


def run_stage(tmp_path, database_url, *args):
    env = dict(os.environ, PYTHON=sys.executable, LOG_DIR=str(tmp_path / "logs"), DATABASE_URL=database_url)
    return subprocess.run(["bash", RUNNER, *args], env=env, capture_output=True, text=True, timeout=120)


def test_stage_runs_and_logs(tmp_path, sqlite_url):
    result = run_stage(tmp_path, sqlite_url, "seed_investors.py")

    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "etl.log").read_text()
    assert "seed_investors.py: start" in log
    assert "seeded 100 new investors and 25 new stocks" in log
    assert "seed_investors.py: exit 0" in log


def test_a_failing_stage_keeps_its_exit_code_and_message(tmp_path, sqlite_url):
    result = run_stage(tmp_path, sqlite_url, "load_transactions.py", str(tmp_path / "missing.csv"))

    assert result.returncode == 2
    log = (tmp_path / "logs" / "etl.log").read_text()
    assert "missing.csv: no such file" in log and "load_transactions.py: exit 2" in log


def test_an_overlapping_run_is_skipped(tmp_path, sqlite_url):
    (tmp_path / "logs").mkdir()
    with open(tmp_path / "logs" / "update_portfolio.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run still going
        result = run_stage(tmp_path, sqlite_url, "update_portfolio.py")

    assert result.returncode == 0
    log = (tmp_path / "logs" / "etl.log").read_text()
    assert "update_portfolio.py: the previous run still holds the lock; skipped" in log
    assert "update_portfolio.py: start" not in log
