"""Ctrl+C or SIGTERM while a script is still importing its libraries: one line and exit 1, never a traceback."""
import os
import signal
import subprocess
import sys
import time

import pytest

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["alerts.py", "analyze.py", "create_etl_role.py", "generate_dummy_data.py", "load_transactions.py",
           "master_etl.py", "pseudo_realtime.py", "seed_investors.py", "surveillance.py", "update_portfolio.py"]


def wait_until_catching(pid, signal_number, timeout=20):
    """Wait until the process catches this signal (its handler is installed: /proc/PID/status SigCgt)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
        if caught & (1 << (signal_number - 1)):
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} never caught signal {signal_number}")


@pytest.mark.parametrize("script, signal_number", [(script, signal.SIGINT) for script in SCRIPTS] + [
    ("master_etl.py", signal.SIGTERM), ("load_transactions.py", signal.SIGTERM)])
def test_an_interrupt_during_the_imports_ends_in_one_line_and_exit_1(script, signal_number):
    process = subprocess.Popen([sys.executable, script, "--help"], cwd=PROJECT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_until_catching(process.pid, signal.SIGTERM)  # Python catches SIGINT from its start; SIGTERM once ours is in
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stdout) == (1, ""), stderr
    assert stderr.splitlines() == [
        f"error: {script}: interrupted while starting ({signal.Signals(signal_number).name}); nothing was done"]


def test_imported_as_a_library_it_leaves_the_handlers_alone():
    code = ("import signal, sys; sys.path.insert(0, '.'); import early_signals; "
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
            "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]


def test_a_script_gives_ctrl_c_back_to_python_once_it_runs(tmp_path):
    """After the imports, Ctrl+C interrupts the work as before: cli.run's one line, exit 1."""
    trades = tmp_path / "trades.csv"
    process = subprocess.Popen(
        [sys.executable, "generate_dummy_data.py", "--rows", "50000000", "--out", str(trades), "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (trades.exists() and trades.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr.splitlines()) == (1, ["error: generate_dummy_data: interrupted"])
