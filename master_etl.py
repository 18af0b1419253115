"""Run the whole pipeline in order: generate, seed, load, update portfolios, surveillance, analyze.

The stages run in this process on one engine; each prints its result and time. The run stops at the first
stage that fails, names it, and exits 1 (2 when the stage failed on bad input, such as a missing file).
`--no-generate` is the cron mode: load what is new in the input file (an already-loaded file is skipped by its
SHA-256), update, report. Running it twice is safe: the same seed gives the same file, which loads nothing new
the second time.
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import sys
import time

import matplotlib

import analyze
import cli
import cost_method
import db_config
import generate_dummy_data
import load_transactions
import seed_investors
import surveillance
import update_portfolio

def stage_generate(engine, args):
    written = generate_dummy_data.write_files(args.input, args.rows, args.seed, progress=cli.progress_enabled(args))
    return (f"{written.trades} trades, {written.closes} daily closes, {written.splits} splits and "
            f"{written.dividends} dividends written to {args.input} and beside it")


def stage_seed(engine, args):
    new_investors, new_stocks = seed_investors.seed_reference_data(engine)
    return f"{new_investors} new investors, {new_stocks} new stocks"


def stage_load(engine, args):
    """Load the input file and the files beside it; a file refused (InputError) does not stop the others, and
    fails the stage (exit 2) once they are loaded, as load_transactions.py does."""
    lines, refused = [], []
    for path in load_transactions.plan_files([args.input]):
        try:
            summary = load_transactions.load_path(engine, path, progress=cli.progress_enabled(args))
        except cli.InputError as error:
            refused.append(str(error))
            continue
        load_transactions.log_rejects(summary)
        lines.append(summary.line())
    if refused:
        raise cli.InputError("; ".join(refused) + (f" (loaded: {'; '.join(lines)})" if lines else ""))
    return "; ".join(lines)


def stage_update(engine, args):
    requested = cost_method.requested_method(args.cost_method)
    return update_portfolio.update_portfolios(engine, requested_method=requested).line(seconds=False)


def stage_surveillance(engine, args):
    return surveillance.run_surveillance(engine).line(seconds=False)


def stage_analyze(engine, args):
    paths = analyze.analyze(engine, args.reports, plots=not args.no_plots)
    return f"dashboard: {', '.join(paths)}" if paths else "summary printed, no plots"


def planned_stages(args):
    """(name, function) of the stages this run performs, in order."""
    stages = [("generate", stage_generate)] if not args.no_generate else []
    return stages + [("seed", stage_seed), ("load", stage_load), ("update", stage_update),
                     ("surveillance", stage_surveillance), ("analyze", stage_analyze)]


def run_stages(engine, args):
    """Run the stages in order, printing each one's result line and time; return [(name, seconds, result)].

    A stage returns its result without a time (the time printed is this function's). A failing stage stops the
    run with an error naming it: InputError (exit 2) for bad input, else StageError.
    """
    stages = planned_stages(args)
    total = time.perf_counter()
    timings = []
    for number, (name, stage) in enumerate(stages, start=1):
        started = time.perf_counter()
        try:
            result = stage(engine, args)
        except Exception as error:
            code, reason = cli.describe_error(error) or (cli.EXIT_FAILURE, db_config.error_line(error))
            message = f"stage {number}/{len(stages)} '{name}' failed: {reason}"
            if code == cli.EXIT_USAGE:  # bad input (a missing file): exit 2 (docs/command-line.md)
                raise cli.InputError(message) from error
            raise cli.StageError(message) from error
        timings.append((name, time.perf_counter() - started, result))
        print(f"[{number}/{len(stages)}] {name}: {result} ({timings[-1][1]:.2f} s)", flush=True)
    print(f"pipeline finished: {len(stages)} stages in {time.perf_counter() - total:.2f} s")
    return timings


def make_parser():
    """The command line of master_etl (also used by bench/bench_pipeline.py)."""
    parser = cli.make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=10_000, help="trades to generate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the generator (default: %(default)s)")
    parser.add_argument("--no-generate", action="store_true", help="cron mode: load the input file as it is")
    parser.add_argument("--no-plots", action="store_true", help="print the summary, draw nothing")
    parser.add_argument("--input", default=db_config.project_path("transactions.csv"),
                        help="trades file (default: transactions.csv in the project folder)")
    parser.add_argument("--reports", default=db_config.project_path("reports"),
                        help="folder for the dashboard (default: reports/ in the project folder)")
    parser.add_argument("--cost-method", choices=cost_method.METHODS, type=str.lower,
                        help="wac (weighted average cost) or fifo (default: $COST_METHOD, else the method the "
                             "positions were built with, else wac); switching needs update_portfolio.py --full")
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if args.rows < 0:
        parser.error("--rows must be 0 or more")
    matplotlib.use("Agg")

    def work():
        cost_method.requested_method(args.cost_method)  # a bad COST_METHOD stops the run before any stage
        engine = db_config.get_engine(args.database_url)
        run_stages(engine, args)
        return cli.EXIT_OK

    return cli.run(work, args, "master_etl")


if __name__ == "__main__":
    sys.exit(main())
