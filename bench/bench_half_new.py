"""Loading a file that is half new: its cost beside loading the new half alone and the whole file fresh.

Usage (from the project folder):
    python bench/bench_half_new.py                          # 1,000,000 trades, SQLite and MariaDB
    python bench/bench_half_new.py --rows 100000 --databases sqlite

For each database, in the same run: (a) the whole file into an empty database; (b) its first half, then the
whole file (half of it already loaded: duplicates skipped and counted); (c) the second half alone into a
database holding the first half (what the new rows cost by themselves).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
from bench_pipeline import fresh_database  # noqa: E402


def write_lines(path, header, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header)
        handle.writelines(lines)


def timed_load(url, preload, path):
    """Seconds to load `path` into a fresh database that already holds `preload` (or nothing)."""
    engine = db_config.get_engine(url)
    seed_investors.seed_reference_data(engine)
    if preload:
        load_transactions.load_file(engine, preload)
    started = time.perf_counter()
    summary = load_transactions.load_file(engine, path)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,mariadb")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root:@127.0.0.1:3306")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        whole = os.path.join(workdir, "whole.csv")
        generate_dummy_data.write_dummy_data(whole, args.rows, seed=31)
        with open(whole, encoding="utf-8") as handle:
            header, *lines = handle.readlines()
        first, second = os.path.join(workdir, "first.csv"), os.path.join(workdir, "second.csv")
        write_lines(first, header, lines[: len(lines) // 2])
        write_lines(second, header, lines[len(lines) // 2:])
        print("| database | whole file, fresh | whole file, first half loaded | second half alone |")
        print("|---|---|---|---|")
        for kind in args.databases.split(","):
            cells = []
            for preload, path in ((None, whole), (first, whole), (first, second)):
                url, drop = fresh_database(kind, workdir, args.mariadb_url)
                try:
                    seconds, summary = timed_load(url, preload, path)
                finally:
                    drop()
                cells.append(f"{seconds:.2f} s ({summary.rows_loaded:,} new, {summary.rows_duplicate:,} dup.)")
            print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
