"""Peak memory of loading a large file: bounded by the chunk size, not the file size.

Usage (from the project folder):
    python bench/bench_memory.py                  # 5,000,000 trades into SQLite
    python bench/bench_memory.py --rows 1000000 --database-url mysql+pymysql://root:@127.0.0.1:3306/bench_memory

Runs `load_transactions.py` as a child process on a fresh database and reports the peak resident set size of
the largest process of the load (the loader or its parsing worker), from getrusage(RUSAGE_CHILDREN) of a wrapper
process, beside its reference, the size of the file loaded (the peak should not grow with it); the load's wall
seconds and the generation's are shown for information (one run each).
"""
import argparse
import os
import subprocess
import sys
import tempfile
from typing import NamedTuple

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs the command given as its arguments (stdout discarded), then prints its wall seconds and the peak RSS (KiB) of
# the largest process among its descendants, and exits with the command's exit code.
WRAPPER = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
           "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


class ProcessRun(NamedTuple):
    """A command's wall seconds and the peak RSS of its largest process (it or a descendant), in KiB."""
    seconds: float
    peak_rss_kib: int


def run(command):
    """Wall seconds of a command run from the project folder; CalledProcessError when it fails."""
    seconds, _ = timing.timed(subprocess.run, command, check=True, cwd=ROOT, stdout=subprocess.PIPE)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--database-url", help="a fresh database (default: a new SQLite file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        trades = os.path.join(workdir, "trades.csv")
        url = args.database_url or f"sqlite:///{os.path.join(workdir, 'memory.db')}"
        generated = run([sys.executable, "generate_dummy_data.py", "--rows", str(args.rows), "--seed", "21",
                         "--out", trades, "--quiet"])
        run([sys.executable, "seed_investors.py", "--database-url", url, "--quiet"])
        seconds, peak_kib = measured([sys.executable, "load_transactions.py", trades, "--database-url", url, "--quiet"])
        size_mb = os.path.getsize(trades) / 1e6
    print(f"| {args.rows:,} trades ({size_mb:.0f} MB file) | load {seconds:.1f} s | peak RSS {peak_kib / 1024:.0f} MiB "
          f"| generated in {generated:.1f} s |")


def measured(command):
    """ProcessRun of a command run from the project folder, measured by a wrapper process of its own (so that
    RUSAGE_CHILDREN holds only the command and its descendants); CalledProcessError, with the command's stderr,
    when it fails."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, *command], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
    seconds, peak_kib = done.stdout.split()
    return ProcessRun(float(seconds), int(peak_kib))


if __name__ == "__main__":
    main()
