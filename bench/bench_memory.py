"""Peak memory of loading a large file: bounded by the chunk size, not the file size.

Usage (from the project folder):
    python bench/bench_memory.py                  # 5,000,000 trades into SQLite
    python bench/bench_memory.py --rows 1000000 --database-url mysql+pymysql://root:@127.0.0.1:3306/bench_memory

Runs `load_transactions.py` as a child process on a fresh database and reports the peak resident set size of
the largest process of the load (the loader or its parsing worker), from getrusage(RUSAGE_CHILDREN).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command):
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.PIPE)
    return time.perf_counter() - started


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
    """(seconds, peak RSS in KiB of the command and its descendants), from a wrapper process of its own."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    output = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, cwd=ROOT, capture_output=True,
                            text=True).stdout.split()
    return float(output[0]), int(output[1])


if __name__ == "__main__":
    main()
