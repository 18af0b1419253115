"""master_etl.py end to end: every stage from an empty database, a second run that loads nothing new, and
a failing stage that is named on stderr with exit code 1. Runs on SQLite and on a fresh MariaDB database.
"""
import csv
import math
import re
from decimal import Decimal
from fractions import Fraction

import pytest
from sqlalchemy import func, select

import db_config
import master_etl
import update_portfolio
from schema import alerts, investor_risk, load_batches, market_prices, portfolios, transactions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def counts(url):
    """Row counts of the tables a run fills, read through a new engine."""
    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            return {table.name: connection.execute(select(func.count()).select_from(table)).scalar()
                    for table in (transactions, load_batches, market_prices, portfolios, investor_risk, alerts)}
    finally:
        engine.dispose()


def stored_positions(url):
    engine = db_config.get_engine(url)
    try:
        with engine.connect() as connection:
            return {(row.investor_id, row.stock_symbol): row for row in connection.execute(select(portfolios))}
    finally:
        engine.dispose()


def reference_positions(trades_path, prices_path, actions_path):
    """docs/portfolio-math.md and docs/corporate-actions.md (fees; splits: floor(quantity x value), the fraction
    sold as cash in lieu at the last close before ex_date / value) over the generated files (file order breaks ties),
    valued at the latest close of each symbol."""
    with open(prices_path, newline="", encoding="utf-8") as handle:
        closes = sorted((row["price_date"], row["stock_symbol"], Fraction(row["close_price"]))
                        for row in csv.DictReader(handle))
    splits = {}
    with open(actions_path, newline="", encoding="utf-8") as handle:
        for row in sorted(csv.DictReader(handle), key=lambda r: r["ex_date"]):
            if row["action"] == "SPLIT":
                splits.setdefault(row["stock_symbol"], []).append((row["ex_date"], Fraction(row["value"])))
    with open(trades_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ordered = sorted(enumerate(rows), key=lambda item: (item[1]["txn_time"], item[0]))
    state, oversold = {}, []
    for _, row in ordered:
        key = (int(row["investor_id"]), row["stock_symbol"])
        position = state.setdefault(key, [0, Fraction(0), Fraction(0), 0])
        apply_splits(position, splits.get(key[1], []), row["txn_time"][:10], closes, key[1])
        quantity, cost, realized, applied = position
        q, p, fee = int(row["quantity"]), Fraction(row["price"]), Fraction(row.get("fee") or 0)
        if row["txn_type"] == "BUY":
            quantity, cost = quantity + q, cost + q * p + fee
        elif q > quantity:
            oversold.append(row["txn_ref"])
        else:
            avg = cost / quantity
            realized, quantity = realized + q * (p - avg) - fee, quantity - q
            cost = Fraction(0) if quantity == 0 else cost - q * avg
        state[key] = [quantity, cost, realized, applied]
    last_close = {symbol: close for _, symbol, close in closes}
    for key, position in state.items():  # the splits after a position's last trade
        apply_splits(position, splits.get(key[1], []), "9999-12-31", closes, key[1])
    return {key: (quantity, cost, realized, quantity * last_close[key[1]])
            for key, (quantity, cost, realized, _) in state.items()}, oversold


def apply_splits(position, symbol_splits, day, closes, symbol):
    """Apply to position [quantity, cost, realized, splits applied] the splits of its symbol up to `day`."""
    while position[3] < len(symbol_splits) and symbol_splits[position[3]][0] <= day:
        ex_date, value = symbol_splits[position[3]]
        quantity, cost, realized, applied = position
        whole = math.floor(quantity * value)
        fraction = quantity * value - whole
        if fraction:
            avg = cost / (quantity * value)
            close = [c for d, s, c in closes if s == symbol and d < ex_date][-1]
            realized, cost = realized + fraction * (close / value - avg), cost - fraction * avg
        position[:] = [whole, cost, realized, applied + 1]


def assert_stage_lines(out, stages):
    """One line per stage, '[n/N] name: result (x.xx s)', with the time once: at the end, from master_etl."""
    lines = [line for line in out.splitlines() if re.match(r"\[\d+/\d+\] ", line)]
    assert [line.split(":")[0] for line in lines] == [
        f"[{number}/{len(stages)}] {stage}" for number, stage in enumerate(stages, start=1)]
    for line in lines:
        assert len(re.findall(r"\(\d+\.\d\d s\)", line)) == 1 and re.search(r" \(\d+\.\d\d s\)$", line), line


def test_pipeline_from_empty_database_then_rerun(database_url, tmp_path, capsys):
    """Generate, seed, load, update and analyze into an empty database; a second run adds nothing."""
    argv = ["--rows", "2000", "--seed", "3", "--database-url", database_url, "--input", str(tmp_path / "t.csv"),
            "--reports", str(tmp_path / "r")]
    assert master_etl.main(argv) == 0
    out = capsys.readouterr().out
    assert_stage_lines(out, ("generate", "seed", "load", "update", "surveillance", "analyze"))
    assert "pipeline finished: 6 stages" in out
    first = counts(database_url)
    assert first["transactions"] == 2000
    assert first["load_batches"] == 1
    assert first["market_prices"] > 0
    assert first["portfolios"] > 0 and first["investor_risk"] > 0
    png = (tmp_path / "r" / "dashboard.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000

    expected, oversold = reference_positions(tmp_path / "t.csv", tmp_path / "market_prices.csv",
                                             tmp_path / "corporate_actions.csv")
    assert oversold == []  # the generator never sells more than is held
    stored = stored_positions(database_url)
    assert set(stored) == set(expected)
    for key, (quantity, cost, realized, market_value) in expected.items():
        row = stored[key]
        assert row.quantity == quantity, key
        assert abs(Fraction(str(row.cost_basis)) - cost) <= Fraction(1, 200), key
        assert abs(Fraction(str(row.realized_pnl)) - realized) <= Fraction(1, 200), key
        assert abs(Fraction(str(row.market_value)) - market_value) <= Fraction(1, 200), key

    before = {key: tuple(row) for key, row in stored.items()}
    assert master_etl.main(argv) == 0
    out = capsys.readouterr().out
    assert_stage_lines(out, ("generate", "seed", "load", "update", "surveillance", "analyze"))
    assert "already loaded in batch" in out
    assert counts(database_url) == first  # nothing new: not a trade, not a batch, not an alert
    assert {key: tuple(row) for key, row in stored_positions(database_url).items()} == before


def test_cron_mode_with_missing_input_names_the_load_stage(database_url, tmp_path, capsys):
    """--no-generate with a missing input file: exit 2 (an input error, docs/command-line.md), one stderr line
    naming the 'load' stage and the file."""
    missing = tmp_path / "nowhere.csv"
    code = master_etl.main(["--no-generate", "--database-url", database_url, "--input", str(missing),
                            "--reports", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.splitlines() == [f"error: master_etl: stage 2/5 'load' failed: {missing}: no such file"]
    assert "[1/5] seed: " in captured.out and "update" not in captured.out
    assert not (tmp_path / "r").exists()
    assert counts(database_url)["transactions"] == 0


def test_failing_update_stage_stops_the_run(database_url, tmp_path, capsys, monkeypatch):
    """An error inside a stage stops the run there: exit 1, the stage named, later stages not run."""
    def broken(engine, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(update_portfolio, "update_portfolios", broken)
    code = master_etl.main(["--rows", "50", "--seed", "1", "--database-url", database_url,
                            "--input", str(tmp_path / "t.csv"), "--reports", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == ["error: master_etl: stage 4/6 'update' failed: disk on fire"]
    assert "Traceback" not in captured.err
    assert "[3/6] load: " in captured.out and "[5/6]" not in captured.out
    assert not (tmp_path / "r").exists()
    assert counts(database_url)["transactions"] == 50  # what the earlier stages committed stays
    assert counts(database_url)["portfolios"] == 0


def test_verbose_failure_shows_the_traceback(sqlite_url, tmp_path, capsys, monkeypatch):
    """--verbose adds the traceback to the one-line error (docs/command-line.md)."""
    monkeypatch.setattr(update_portfolio, "update_portfolios",
                        lambda engine, *a, **k: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    code = master_etl.main(["--verbose", "--rows", "20", "--seed", "1", "--database-url", sqlite_url,
                            "--input", str(tmp_path / "t.csv"), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err
    assert err.rstrip().splitlines()[-1] == "error: master_etl: stage 4/6 'update' failed: disk on fire"


def test_no_plots_writes_no_png(sqlite_url, tmp_path, capsys):
    """--no-plots prints the summary and draws nothing."""
    assert master_etl.main(["--rows", "100", "--seed", "2", "--database-url", sqlite_url, "--no-plots",
                            "--input", str(tmp_path / "t.csv"), "--reports", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "10 riskiest investors:" in out
    assert "[6/6] analyze: summary printed, no plots" in out
    assert not (tmp_path / "r").exists()


def test_negative_rows_is_a_usage_error(sqlite_url, tmp_path, capsys):
    """--rows -1 is refused by the parser: exit 2 with the option named."""
    with pytest.raises(SystemExit) as exit_info:
        master_etl.main(["--rows", "-1", "--database-url", sqlite_url, "--input", str(tmp_path / "t.csv")])
    assert exit_info.value.code == 2
    assert "--rows must be 0 or more" in capsys.readouterr().err


def test_decimal_columns_survive_round_trip(database_url, tmp_path, capsys):
    """A small run keeps 4-decimal average costs (no float noise beyond the column's scale)."""
    assert master_etl.main(["--rows", "200", "--seed", "5", "--database-url", database_url, "--no-plots",
                            "--input", str(tmp_path / "t.csv")]) == 0
    capsys.readouterr()
    for row in stored_positions(database_url).values():
        avg_cost = Decimal(str(row.avg_cost))
        assert avg_cost == avg_cost.quantize(Decimal("0.0001"))


def test_generation_never_overwrites_a_users_trade_file_or_prices(sqlite_url, tmp_path, capsys):
    mine = tmp_path / "trades.csv"
    mine.write_text("txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"
                    "MY-1,1001,AAPL,BUY,10,100,2025-01-02 10:00:00\n")
    prices_only = tmp_path / "other"
    prices_only.mkdir()
    (prices_only / "market_prices.csv").write_text("stock_symbol,price_date,close_price\nAAPL,2024-01-02,1\n")
    before = {path: path.read_bytes() for path in (mine, prices_only / "market_prices.csv")}

    first = master_etl.main(["--database-url", sqlite_url, "--input", str(mine), "--no-plots"])
    second = master_etl.main(["--database-url", sqlite_url, "--input", str(prices_only / "t.csv"), "--no-plots"])

    err = capsys.readouterr().err.splitlines()
    assert (first, second) == (2, 2)
    assert err[0] == (f"error: master_etl: stage 1/6 'generate' failed: {mine} exists and was not written by the "
                      "generator; not overwriting it (choose another --out/--input, or load it as it is with "
                      "--no-generate)")
    assert err[1].startswith(f"error: master_etl: stage 1/6 'generate' failed: {prices_only / 'market_prices.csv'} "
                             "exists and was not written by the generator")
    assert {path: path.read_bytes() for path in before} == before
    assert not (prices_only / "t.csv").exists()
    # a generated file is regenerated as before (the quick start runs it again and again)
    assert master_etl.main(["--rows", "30", "--database-url", sqlite_url, "--input", str(tmp_path / "g.csv"),
                            "--no-plots"]) == 0
    assert master_etl.main(["--rows", "30", "--database-url", sqlite_url, "--input", str(tmp_path / "g.csv"),
                            "--no-plots"]) == 0


def test_a_generated_file_with_a_users_rows_appended_is_not_overwritten(sqlite_url, tmp_path, capsys):
    mine = tmp_path / "d" / "mine.csv"
    mine.parent.mkdir()
    mine.write_text("txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time\n"
                    "S42N10000-0000001,1001,AAPL,BUY,10,100,2025-01-02 10:00:00\n"
                    "MYROW,1001,AAPL,BUY,10,100,2025-01-02 10:00:00\n")
    before = mine.read_bytes()

    assert master_etl.main(["--database-url", sqlite_url, "--input", str(mine), "--no-plots"]) == 2

    assert mine.read_bytes() == before and not (mine.parent / "market_prices.csv").exists()


def test_a_refused_actions_file_beside_the_input_does_not_stop_its_trades(database_url, tmp_path, capsys):
    """As load_transactions.py does: the trades load, then the stage fails (exit 2) naming the refused file."""
    (tmp_path / "corporate_actions.csv").write_text("stock_symbol,ex_date,action,value\nAAPL,2020-08-31,SPLIT,4\n")
    master_etl.main(["--no-generate", "--no-plots", "--database-url", database_url, "--input",
                     str(tmp_path / "corporate_actions.csv"), "--reports", str(tmp_path / "r")])
    (tmp_path / "corporate_actions.csv").write_text("stock_symbol,ex_date,action,value\nAAPL,2020-08-31,SPLIT,5\n")
    trades = tmp_path / "t.csv"
    trades.write_text("txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time,fee\n"
                      "S1,1001,AAPL,BUY,1,100,2024-06-03 10:00:00,1.5\n")
    capsys.readouterr()
    code = master_etl.main(["--no-generate", "--no-plots", "--database-url", database_url, "--input", str(trades),
                            "--reports", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: master_etl: stage 2/5 'load' failed: {tmp_path / 'corporate_actions.csv'}: line 2: "
                          "AAPL 2020-08-31 SPLIT is stored with value 4, the file gives 5")
    assert err.rstrip().endswith("(loaded: t.csv: 1 read, 1 loaded, 0 duplicates, 0 rejected (batch 1))")
    assert counts(database_url)["transactions"] == 1


def test_a_bad_cost_method_stops_master_etl_before_any_stage(database_url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COST_METHOD", "lifo")
    code = master_etl.main(["--no-generate", "--database-url", database_url, "--input", str(tmp_path / "t.csv")])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err == ("error: master_etl: COST_METHOD: 'lifo' is not a cost method: use wac (weighted average "
                            "cost) or fifo\n")
