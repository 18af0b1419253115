"""Loading a file that is half new: its cost beside loading its new half alone, and the whole file fresh.

For each database, in the same run, each load into a fresh database with the reference data seeded, timed alone:
(a) the whole file into an empty database; (b) the whole file into a database holding its first half (half of it
already loaded: duplicates skipped and counted); (c) the second half alone into a database holding the first half
(what the new rows cost by themselves). The three are measured in turns, --runs times; the median is shown. The
figure is (b) beside its reference (c): time_ratio = half-new file seconds / new half alone seconds (target <=
1.25). Each load is checked: (a) loads every trade, (b) the second half with the first half as duplicates, (c) the
second half.

Usage (from the project folder):
    python bench/bench_half_new.py                          # 1,000,000 trades, SQLite, MariaDB and PostgreSQL
    python bench/bench_half_new.py --rows 100000 --databases sqlite --runs 1
    python bench/bench_half_new.py --json bench/results-half-new.json
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import db_config  # noqa: E402
import generate_dummy_data  # noqa: E402
import load_transactions  # noqa: E402
import seed_investors  # noqa: E402
import timing  # noqa: E402
from bench_pipeline import DATABASES, MARIADB_URL, POSTGRES_URL, fresh_database  # noqa: E402

TARGET = 1.25  # half-new file / its new half alone


def write_lines(path, header, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header)
        handle.writelines(lines)


def split_file(workdir, rows):
    """Generate `rows` trades; return the paths of the whole file, its first half and its second half."""
    whole = os.path.join(workdir, "whole.csv")
    generate_dummy_data.write_dummy_data(whole, rows, seed=31)
    with open(whole, encoding="utf-8") as handle:
        header, *lines = handle.readlines()
    first, second = os.path.join(workdir, "first.csv"), os.path.join(workdir, "second.csv")
    write_lines(first, header, lines[: len(lines) // 2])
    write_lines(second, header, lines[len(lines) // 2:])
    return whole, first, second


def timed_load(url, preload, path):
    """(seconds, LoadSummary) of loading `path` into a database that already holds `preload` (or nothing)."""
    engine = db_config.get_engine(url)
    try:
        seed_investors.seed_reference_data(engine)
        if preload:
            load_transactions.load_file(engine, preload)
        return timing.timed(load_transactions.load_file, engine, path)
    finally:
        engine.dispose()


def measurement(kind, workdir, servers, preload, path, expected):
    """A measure for timing.medians: one timed load into a fresh database, checked against (loaded, duplicates)."""
    def measure():
        url, drop = fresh_database(kind, workdir, *servers)
        try:
            seconds, summary = timed_load(url, preload, path)
        finally:
            drop()
        if (summary.rows_loaded, summary.rows_duplicate, summary.rows_rejected) != (*expected, 0):
            raise RuntimeError(f"{kind}: {summary.line()}; expected {expected[0]} loaded, {expected[1]} duplicates, "
                               "0 rejected")
        return seconds, summary
    return measure


def measure_database(kind, workdir, servers, files, rows, runs):
    """{'whole', 'half_new', 'new_half'} Medians of the three loads on one database."""
    whole, first, second = files
    new = rows - rows // 2
    return timing.medians({
        "whole": measurement(kind, workdir, servers, None, whole, (rows, 0)),
        "half_new": measurement(kind, workdir, servers, first, whole, (new, rows // 2)),
        "new_half": measurement(kind, workdir, servers, first, second, (new, 0)),
    }, runs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="trades of the whole file (default: %(default)s)")
    parser.add_argument("--databases", default=",".join(DATABASES),
                        help="comma-separated, from: sqlite, mariadb, postgresql (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each load; the median is shown "
                                                            "(default: %(default)s)")
    parser.add_argument("--mariadb-url", default=MARIADB_URL, help="MariaDB server URL (default: %(default)s)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL maintenance database URL (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    args.databases = args.databases.split(",")
    unknown = set(args.databases) - set(DATABASES)
    if unknown:
        parser.error(f"--databases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(DATABASES)}")
    if args.rows < 2 or args.runs < 1:
        parser.error("--rows must be at least 2 and --runs at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    servers = (args.mariadb_url, args.postgres_url)
    print(timing.machine_line([url for kind, url in zip(("mariadb", "postgresql"), servers)
                               if kind in args.databases]))
    print(f"{args.rows:,} trades, median of {args.runs} runs")
    print(timing.markdown_header(["database", "whole file, fresh", "whole file, first half loaded (half-new)",
                                  "second half alone (new half)", f"half-new / new half (target <= {TARGET})"]))
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        files = split_file(workdir, args.rows)
        for kind in args.databases:
            measured = measure_database(kind, workdir, servers, files, args.rows, args.runs)
            figure = timing.Figure.of("half-new file", measured["half_new"], "new half alone", measured["new_half"])
            print(timing.figure_row([kind, f"{measured['whole'].seconds:.2f} s"], figure), flush=True)
            results[kind] = {"whole_seconds": measured["whole"].seconds, "whole_runs": measured["whole"].runs,
                             "half_new_over_new_half": figure.as_dict()}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"rows": args.rows, "runs": args.runs, "target": TARGET, "databases": results}, handle,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
