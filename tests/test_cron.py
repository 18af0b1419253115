"""cron/run_stage.sh: runs a stage with the project's interpreter, logs to etl.log, never overlaps itself."""
import fcntl
import os
import signal
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "cron", "run_stage.sh")


def run_stage(tmp_path, database_url, *args, python=sys.executable, **extra_env):
    env = dict(os.environ, PYTHON=python, LOG_DIR=str(tmp_path / "logs"), DATABASE_URL=database_url, **extra_env)
    return subprocess.run(["bash", RUNNER, *args], env=env, capture_output=True, text=True, timeout=120)


# Stands in for the interpreter: reports whether it inherited the lock's fd 9 and, with LEAVE_CHILD_PID_FILE,
# forks a child that outlives it (as the loader's parsing worker outlives a killed loader).
PROBE = textwrap.dedent("""\
    #!{python}
    import os, time
    try:
        os.fstat(9)
        print("probe: fd 9 open")
    except OSError:
        print("probe: fd 9 closed")
    pid_file = os.environ.get("LEAVE_CHILD_PID_FILE")
    if pid_file:
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        with open(pid_file, "w") as handle:
            handle.write(str(child))
""")


def write_probe(tmp_path):
    probe = tmp_path / "probe_python"
    probe.write_text(PROBE.format(python=sys.executable))
    probe.chmod(0o755)
    return str(probe)


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


def test_the_stage_does_not_inherit_the_lock(tmp_path, sqlite_url):
    result = run_stage(tmp_path, sqlite_url, "load_transactions.py", python=write_probe(tmp_path))

    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "etl.log").read_text()
    assert "probe: fd 9 closed" in log


def test_a_process_left_behind_by_a_stage_does_not_block_the_next_run(tmp_path, sqlite_url):
    probe, pid_file = write_probe(tmp_path), tmp_path / "child.pid"
    try:
        first = run_stage(tmp_path, sqlite_url, "load_transactions.py", python=probe,
                          LEAVE_CHILD_PID_FILE=str(pid_file))
        second = run_stage(tmp_path, sqlite_url, "load_transactions.py", python=probe)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the sleeping child the probe left behind

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    log = (tmp_path / "logs" / "etl.log").read_text()
    assert "still holds the lock" not in log
    assert log.count("load_transactions.py: start") == 2


def test_the_example_schedules_every_batch_stage_in_order_and_installs_by_appending():
    with open(os.path.join(ROOT, "cron", "crontab.example")) as handle:
        example = handle.read()
    schedule = [line.split() for line in example.splitlines() if line[:1].isdigit()]

    assert [(fields[0], fields[6]) for fields in schedule] == [
        ("0", "load_transactions.py"), ("5", "update_portfolio.py"), ("10", "surveillance.py"), ("15", "analyze.py")]
    assert all(fields[5].endswith("/cron/run_stage.sh") for fields in schedule)
    assert all(os.path.exists(os.path.join(ROOT, fields[6])) for fields in schedule)
    assert "(crontab -l 2>/dev/null; cat cron/crontab.example) | crontab -" in example  # appends, never replaces
