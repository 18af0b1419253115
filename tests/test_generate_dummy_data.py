"""generate_dummy_data.py: realistic, reproducible trades with their fees, the daily closes they were priced from,
and the corporate actions (splits, dividends) of those days.

The properties are checked on the parsed CSV output, independently of the generator's internals; only the
load test needs a database (SQLite and MariaDB through the fixtures).
"""
import csv
import math
import os
from collections import defaultdict
from datetime import date, datetime, time as clock_time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from sqlalchemy import func, select

import constants
import generate_dummy_data
import load_transactions
from schema import corporate_actions, market_prices, transactions

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_DIR = os.path.join(PROJECT_DIR, "tests", "data", "legacy_wac")
TRADE_HEADER = ["txn_ref", "investor_id", "stock_symbol", "txn_type", "quantity", "price", "txn_time"]
FEE_TRADE_HEADER = [*TRADE_HEADER, "fee"]
PRICE_HEADER = ["stock_symbol", "price_date", "close_price"]
ACTION_HEADER = ["stock_symbol", "ex_date", "action", "value"]
LEGACY = ["--no-fees", "--no-corporate-actions"]  # the files of the generator before fees and corporate actions


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """5,000 trades with seed 7 as written to CSV: (trade rows as dicts, {(symbol, day): close})."""
    directory = tmp_path_factory.mktemp("generated")
    trade_lines, price_lines = generate_dummy_data.generate(5000, 7)
    generate_dummy_data.write_csv(directory / "trades.csv", generate_dummy_data.TRADE_HEADER, trade_lines)
    generate_dummy_data.write_csv(directory / "market_prices.csv", generate_dummy_data.PRICE_HEADER, price_lines)
    header, rows = read_csv(directory / "trades.csv")
    price_header, price_rows = read_csv(directory / "market_prices.csv")
    assert header == TRADE_HEADER and price_header == PRICE_HEADER
    trades = [dict(zip(header, row)) for row in rows]
    closes = {(symbol, date.fromisoformat(day)): Decimal(close) for symbol, day, close in price_rows}
    return trades, closes


def test_row_count_and_values_are_in_range(generated):
    trades, closes = generated
    symbols = {stock.symbol for stock in constants.STOCKS}
    assert len(trades) == 5000
    assert {t["stock_symbol"] for t in trades} <= symbols
    assert {t["txn_type"] for t in trades} == {"BUY", "SELL"}
    assert all(1001 <= int(t["investor_id"]) <= 1100 for t in trades)
    assert all(int(t["quantity"]) > 0 for t in trades)
    assert len(closes) == len(symbols) * constants.TRADING_DAYS


def test_sells_never_exceed_holdings(generated):
    trades, _ = generated
    held = defaultdict(int)
    for t in trades:
        key = (t["investor_id"], t["stock_symbol"])
        quantity = int(t["quantity"])
        if t["txn_type"] == "SELL":
            assert quantity <= held[key], f"{t['txn_ref']} sells {quantity} but holds {held[key]}"
            held[key] -= quantity
        else:
            held[key] += quantity
    assert sum(t["txn_type"] == "SELL" for t in trades) > 500  # the check above had something to check


def test_trades_happen_on_weekdays_between_open_and_close(generated):
    trades, _ = generated
    for t in trades:
        when = datetime.strptime(t["txn_time"], "%Y-%m-%d %H:%M:%S")
        assert when.weekday() < 5, t
        assert clock_time(9, 30) <= when.time() <= clock_time(16, 0), t


def test_each_price_is_within_one_percent_of_the_days_close(generated):
    trades, closes = generated
    for t in trades:
        close = closes[(t["stock_symbol"], date.fromisoformat(t["txn_time"][:10]))]
        assert abs(Decimal(t["price"]) - close) <= close / 100, t


def test_rows_are_in_time_order_with_unique_refs(generated):
    trades, _ = generated
    times = [t["txn_time"] for t in trades]
    assert times == sorted(times)
    assert len({t["txn_ref"] for t in trades}) == len(trades)


def run_generator(directory, *args):
    out = directory / "transactions.csv"
    assert generate_dummy_data.main([*args, "--out", str(out)]) == 0
    return out.read_bytes(), (directory / "market_prices.csv").read_bytes()


def test_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()

    first = run_generator(tmp_path / "a", "--rows", "2000", "--seed", "3")
    again = run_generator(tmp_path / "b", "--rows", "2000", "--seed", "3")
    other = run_generator(tmp_path / "c", "--rows", "2000", "--seed", "4")

    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_shipped_files_are_the_output_of_rows_10000_seed_42(tmp_path, capsys):
    # the shipped files: fees, splits and dividends (README: python generate_dummy_data.py --rows 10000 --seed 42)
    trades, prices = run_generator(tmp_path, "--rows", "10000", "--seed", "42")

    for name, generated in (("transactions.csv", trades), ("market_prices.csv", prices),
                            ("corporate_actions.csv", (tmp_path / "corporate_actions.csv").read_bytes())):
        with open(os.path.join(PROJECT_DIR, name), "rb") as handle:
            assert generated == handle.read(), name
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'transactions.csv'}: 10000 trades written; "
                          f"{tmp_path / 'market_prices.csv'}: 6525 daily closes; ")
    assert out.endswith(" s, seed 42)\n")


def test_prices_out_option_and_lf_line_endings(tmp_path):
    out, prices_out = tmp_path / "t.csv", tmp_path / "closes.csv"

    assert generate_dummy_data.main(["--rows", "10", "--out", str(out), "--prices-out", str(prices_out)]) == 0

    assert not (tmp_path / "market_prices.csv").exists()
    for path in (out, prices_out):
        data = path.read_bytes()
        assert b"\r" not in data and data.endswith(b"\n")
    assert out.read_bytes().count(b"\n") == 11


def test_end_date_in_the_future_is_a_usage_error(tmp_path, capsys):
    tomorrow = date.today() + timedelta(days=1)

    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--end-date", tomorrow.isoformat(), "--out", str(tmp_path / "t.csv")])

    assert exit_info.value.code == 2
    assert f"--end-date {tomorrow} is not before today" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_generated_files_load_without_rejects(seeded_engine, database_url, tmp_path, capsys):
    out = tmp_path / "trades.csv"
    assert generate_dummy_data.main(["--rows", "3000", "--seed", "11", "--out", str(out)]) == 0
    capsys.readouterr()
    _, actions = read_csv(tmp_path / "corporate_actions.csv")
    _, rows = read_csv(out)

    code = load_transactions.main(["--database-url", database_url, str(out)])

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "market_prices.csv: 6525 daily closes read, 6525 new, 0 changed, 0 unchanged, 0 rejected",
        f"corporate_actions.csv: {len(actions)} actions read, {len(actions)} new, 0 already loaded, 0 rejected",
        "trades.csv: 3000 read, 3000 loaded, 0 duplicates, 0 rejected (batch 1)",
    ]
    with seeded_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(transactions)).scalar() == 3000
        assert connection.execute(select(func.count()).select_from(market_prices)).scalar() == 6525
        assert connection.execute(select(func.count()).select_from(corporate_actions)).scalar() == len(actions)
        stored_fees = connection.execute(select(func.sum(transactions.c.fee))).scalar()
    assert Decimal(str(stored_fees)) == sum(Decimal(row[7]) for row in rows)

    summary = load_transactions.load_file(seeded_engine, str(out))
    assert summary.skipped_batch == 1


def test_end_date_today_is_refused(tmp_path, capsys):
    # Today's trading hours may not be over: trades until 16:00 today could be later than now, and the loader
    # rejects trades more than 5 minutes in the future. So the last day must be before today.
    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--rows", "10", "--end-date", date.today().isoformat(),
                                  "--out", str(tmp_path / "t.csv")])
    assert exit_info.value.code == 2
    assert "is not before today" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()



# ------------------------------------------------------------------------------- fees and corporate actions

FULL_ARGS = ["--rows", "5000", "--seed", "7", "--investors", "60"]
CENT = Decimal("0.01")


def run_files(directory, *args):
    """Run the generator with trades to directory/t.csv; {file name: bytes} of every file in the directory."""
    directory.mkdir(exist_ok=True)
    assert generate_dummy_data.main([*args, "--out", str(directory / "t.csv")]) == 0
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def read_dicts(path):
    header, rows = read_csv(path)
    return [dict(zip(header, row)) for row in rows]


def read_closes(path):
    return {(row["stock_symbol"], row["price_date"]): Decimal(row["close_price"]) for row in read_dicts(path)}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Seed 7 in the default mode (fees, corporate actions) with anomalies planted, the same without anomalies,
    and the same in the mode of before issue 14: the parsed files."""
    root = tmp_path_factory.mktemp("full")
    run_files(root / "full", *FULL_ARGS, "--anomalies", "0.004")
    run_files(root / "clean", *FULL_ARGS)
    run_files(root / "legacy", *FULL_ARGS, *LEGACY)
    header, _ = read_csv(root / "full" / "t.csv")
    assert header == FEE_TRADE_HEADER
    assert read_csv(root / "full" / "corporate_actions.csv")[0] == ACTION_HEADER
    actions = read_dicts(root / "full" / "corporate_actions.csv")
    return {
        "root": root,
        "trades": read_dicts(root / "full" / "t.csv"),
        "planted": {row["txn_ref"]: row["rule"] for row in read_dicts(root / "full" / "t_anomalies.csv")},
        "closes": read_closes(root / "full" / "market_prices.csv"),
        "legacy_closes": read_closes(root / "legacy" / "market_prices.csv"),
        "clean_trades": read_dicts(root / "clean" / "t.csv"),
        "legacy_trades": read_dicts(root / "legacy" / "t.csv"),
        "days": sorted({day for _, day in read_closes(root / "legacy" / "market_prices.csv")}),
        "actions": actions,
        "splits": [(a["stock_symbol"], a["ex_date"], Decimal(a["value"])) for a in actions if a["action"] == "SPLIT"],
    }


def scheduled_fee(quantity, price):
    """The broker schedule, recomputed: max(1.00, 0.05% of quantity x price), rounded half-up to the cent."""
    commission = (Decimal(quantity) * Decimal(price) * Decimal("0.0005")).quantize(CENT, ROUND_HALF_UP)
    return max(Decimal("1.00"), commission)


def test_fees_follow_the_broker_schedule_planted_trades_included(full_run):
    trades, planted = full_run["trades"], full_run["planted"]

    for trade in trades:
        assert len(trade["fee"].split(".")[1]) == 2, trade
        assert Decimal(trade["fee"]) == scheduled_fee(trade["quantity"], trade["price"]), trade

    fees = [Decimal(t["fee"]) for t in trades]
    assert fees.count(Decimal("1.00")) > 100 and sum(fee > 1 for fee in fees) > 100  # both sides of the minimum
    assert len([t for t in trades if t["txn_ref"] in planted]) == len(planted) > 0


def test_fees_leave_the_trades_and_closes_as_they_were(full_run, tmp_path):
    fees_only = run_files(tmp_path, *FULL_ARGS, "--no-corporate-actions")
    legacy = full_run["root"] / "legacy"

    lines = fees_only["t.csv"].decode().splitlines()
    assert lines[0] == ",".join(FEE_TRADE_HEADER)
    assert [line.rsplit(",", 1)[0] for line in lines[1:]] == (legacy / "t.csv").read_text().splitlines()[1:]
    assert fees_only["market_prices.csv"] == (legacy / "market_prices.csv").read_bytes()
    assert "corporate_actions.csv" not in fees_only


def test_corporate_actions_file_is_valid_and_sorted(full_run):
    actions, days, closes = full_run["actions"], full_run["days"], full_run["closes"]
    index = {day: number for number, day in enumerate(days)}

    assert [(a["ex_date"], a["stock_symbol"], a["action"]) for a in actions] == sorted(
        (a["ex_date"], a["stock_symbol"], a["action"]) for a in actions)
    assert {a["action"] for a in actions} == {"SPLIT", "DIVIDEND"}
    assert all(date.fromisoformat(a["ex_date"]).weekday() < 5 and a["ex_date"] in index for a in actions)
    values = [value for _, _, value in full_run["splits"]]
    assert any(value > 1 for value in values) and any(0 < value < 1 for value in values)
    for _, ex_date, _ in full_run["splits"]:
        assert 10 <= index[ex_date] <= len(days) - 11  # at least 10 weekdays of the window on each side
    dividends = [a for a in actions if a["action"] == "DIVIDEND"]
    for dividend in dividends:
        value = Decimal(dividend["value"])
        assert value > 0 and value == value.quantize(CENT) and len(dividend["value"].split(".")[1]) == 2, dividend
        close = closes[(dividend["stock_symbol"], dividend["ex_date"])]
        assert close * Decimal("0.004") - CENT / 2 <= value <= close * Decimal("0.01") + CENT / 2, dividend


def test_dividends_are_quarterly_for_the_payers_only(full_run):
    days = full_run["days"]
    ex_days = defaultdict(list)
    for action in full_run["actions"]:
        if action["action"] == "DIVIDEND":
            ex_days[action["stock_symbol"]].append(days.index(action["ex_date"]))
    payers = {s.symbol for s in constants.STOCKS if s.sector in generate_dummy_data.DIVIDEND_SECTORS}

    assert set(ex_days) == payers and len(payers) >= 5
    for symbol, numbers in ex_days.items():
        assert len(numbers) >= 4 and numbers == sorted(numbers), symbol  # about a year of weekdays
        assert {later - earlier for earlier, later in zip(numbers, numbers[1:])} <= {62, 63, 64}, symbol


def test_split_closes_jump_by_the_ratio_and_adjusted_returns_do_not(full_run):
    closes, legacy, days = full_run["closes"], full_run["legacy_closes"], full_run["days"]

    for symbol, ex_date, value in full_run["splits"]:
        for day in days:  # the same random walk: before ex_date as it was, from ex_date on divided by the value
            if day < ex_date:
                assert closes[(symbol, day)] == legacy[(symbol, day)], (symbol, day)
            else:
                assert abs(closes[(symbol, day)] * value - legacy[(symbol, day)]) <= CENT / 2 * (value + 1)
        series = [closes[(symbol, day)] * (value if day >= ex_date else 1) for day in days]  # split-adjusted
        adjusted = [math.log(later / earlier) for earlier, later in zip(series, series[1:])]
        on_ex_date = days.index(ex_date) - 1
        raw_jump = math.log(closes[(symbol, ex_date)] / closes[(symbol, days[on_ex_date])])
        other_days = max(abs(r) for number, r in enumerate(adjusted) if number != on_ex_date)
        assert abs(raw_jump + math.log(value)) < 0.2 and abs(raw_jump) > 0.6  # the price jumps by the ratio
        assert abs(adjusted[on_ex_date]) <= other_days  # the adjusted series has no jump on ex_date


def test_trades_after_a_split_are_in_post_split_terms(full_run):
    trades, closes, planted = full_run["trades"], full_run["closes"], full_run["planted"]

    for trade in trades:
        assert int(trade["quantity"]) >= 1 and Decimal(trade["price"]) >= CENT, trade
        close = closes[(trade["stock_symbol"], trade["txn_time"][:10])]
        band = {None: Decimal("0.01"), "OFF_MARKET_PRICE": Decimal("0.26")}.get(planted.get(trade["txn_ref"]),
                                                                               Decimal("0.02"))
        assert abs(Decimal(trade["price"]) - close) <= close * band, trade
    for symbol, ex_date, value in full_run["splits"]:
        before_ex = max(day for (s, day) in closes if s == symbol and day < ex_date)
        after = [t for t in trades if t["stock_symbol"] == symbol and t["txn_time"][:10] >= ex_date]
        assert len(after) > 10, symbol
        for trade in after:  # far from the pre-split level
            ratio = Decimal(trade["price"]) / closes[(symbol, before_ex)]
            assert abs(ratio * value - 1) < Decimal("0.5"), (trade, value)


def test_buy_sizes_after_a_split_are_in_post_split_shares(full_run):
    split_of = {symbol: (ex_date, value) for symbol, ex_date, value in full_run["splits"]}
    compared = defaultdict(int)

    for trade, legacy in zip(full_run["clean_trades"], full_run["legacy_trades"]):  # the same draws, row by row
        assert (trade["txn_ref"], trade["stock_symbol"]) == (legacy["txn_ref"], legacy["stock_symbol"])
        if trade["txn_type"] != "BUY" or legacy["txn_type"] != "BUY":
            continue
        ex_date, value = split_of.get(trade["stock_symbol"], ("9999-12-31", Decimal(1)))
        shares = Decimal(legacy["quantity"]) * (value if trade["txn_time"][:10] >= ex_date else 1)
        assert int(trade["quantity"]) == max(1, shares.to_integral_value(ROUND_HALF_EVEN)), (trade, legacy)
        compared[trade["txn_time"][:10] >= ex_date] += 1
    assert compared[True] > 20 and compared[False] > 1000


def replay_holdings(trades, splits):
    """Replay the trades in the loader's order (txn_time, then file order), a holding becoming floor(holding x value)
    at each split of its symbol (docs/corporate-actions.md). Returns (SELLs above the holding, SELLs above what the
    holding would be without splits, positions held through a split)."""
    split_list = defaultdict(list)
    for symbol, ex_date, value in sorted(splits, key=lambda split: split[1]):
        split_list[symbol].append((ex_date, value))
    held, applied, naive = defaultdict(int), defaultdict(int), defaultdict(int)
    oversold, naive_oversold, split_while_held = [], [], set()
    for _, trade in sorted(enumerate(trades), key=lambda item: (item[1]["txn_time"], item[0])):
        key, quantity = (trade["investor_id"], trade["stock_symbol"]), int(trade["quantity"])
        pending = split_list[key[1]][applied[key]:]
        for ex_date, value in [split for split in pending if split[0] <= trade["txn_time"][:10]]:
            split_while_held |= {key} if held[key] else set()
            held[key] = int((held[key] * value).to_integral_value(ROUND_FLOOR))
            applied[key] += 1
        sign = -1 if trade["txn_type"] == "SELL" else 1
        if sign < 0 and quantity > held[key]:
            oversold.append(trade["txn_ref"])
        if sign < 0 and quantity > naive[key]:
            naive_oversold.append(trade["txn_ref"])
        held[key] += sign * quantity
        naive[key] += sign * quantity
    return oversold, naive_oversold, split_while_held


def test_no_sell_exceeds_the_holding_floored_at_splits(full_run):
    oversold, naive_oversold, split_while_held = replay_holdings(full_run["trades"], full_run["splits"])

    assert oversold == []
    assert len(split_while_held) > 5  # positions went through splits ...
    assert naive_oversold  # ... and later sells were sized in post-split shares: ignoring splits breaks the replay


def test_planted_anomalies_leave_the_clean_trades_with_actions_as_they_were(full_run):
    clean = (full_run["root"] / "clean" / "t.csv").read_text().splitlines()
    full = (full_run["root"] / "full" / "t.csv").read_text().splitlines()

    assert [line for line in full if line.split(",")[0] not in full_run["planted"]] == clean
    for name in ("market_prices.csv", "corporate_actions.csv"):
        assert (full_run["root"] / "full" / name).read_bytes() == (full_run["root"] / "clean" / name).read_bytes()


@pytest.mark.parametrize("mode", [[], ["--no-fees"], ["--no-corporate-actions"], LEGACY, ["--anomalies", "0.004"]],
                         ids=["default", "no-fees", "no-actions", "legacy", "anomalies"])
def test_same_seed_gives_byte_identical_files_in_every_mode(tmp_path, mode):
    first = run_files(tmp_path / "a", "--rows", "2000", "--seed", "3", *mode)
    again = run_files(tmp_path / "b", "--rows", "2000", "--seed", "3", *mode)
    other = run_files(tmp_path / "c", "--rows", "2000", "--seed", "4", *mode)

    assert first == again
    assert ("corporate_actions.csv" in first) == ("--no-corporate-actions" not in mode)
    assert all(first[name] != other[name] for name in first)


def test_both_flags_give_the_files_of_the_generator_before_fees_and_actions(tmp_path):
    files = run_files(tmp_path, "--rows", "3000", "--seed", "14", "--investors", "40", "--end-date", "2026-10-30",
                      *LEGACY)

    assert sorted(files) == ["market_prices.csv", "t.csv"]
    with open(os.path.join(LEGACY_DIR, "transactions.csv"), "rb") as handle:
        assert files["t.csv"] == handle.read()
    with open(os.path.join(LEGACY_DIR, "market_prices.csv"), "rb") as handle:
        assert files["market_prices.csv"] == handle.read()


def test_summary_line_and_actions_out_option(tmp_path, capsys):
    out, actions_out = tmp_path / "t.csv", tmp_path / "elsewhere.csv"

    assert generate_dummy_data.main(["--rows", "500", "--seed", "2", "--out", str(out),
                                     "--actions-out", str(actions_out)]) == 0

    assert not (tmp_path / "corporate_actions.csv").exists()
    header, rows = read_csv(actions_out)
    splits, dividends = sum(row[2] == "SPLIT" for row in rows), sum(row[2] == "DIVIDEND" for row in rows)
    assert header == ACTION_HEADER and splits == 2 and dividends > 20
    line = capsys.readouterr().out
    assert line.startswith(f"{out}: 500 trades written; {tmp_path / 'market_prices.csv'}: 6525 daily closes; "
                           f"2 splits and {dividends} dividends written to {actions_out} (")
    assert line.endswith(" s, seed 2)\n")


def test_no_corporate_actions_writes_none_and_leaves_an_existing_file(tmp_path, capsys):
    out, existing = tmp_path / "t.csv", tmp_path / "corporate_actions.csv"
    existing.write_bytes(b"stock_symbol,ex_date,action,value\nKO,2026-03-02,DIVIDEND,0.51\n")

    assert generate_dummy_data.main(["--rows", "50", "--out", str(out), "--no-corporate-actions"]) == 0

    assert existing.read_bytes() == b"stock_symbol,ex_date,action,value\nKO,2026-03-02,DIVIDEND,0.51\n"
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out}: 50 trades written; {tmp_path / 'market_prices.csv'}: 6525 daily closes (")
    assert "split" not in captured.out
    assert f"{existing} is from an earlier run and was left as it is" in captured.err
    assert read_csv(out)[0] == FEE_TRADE_HEADER


def test_actions_out_with_no_corporate_actions_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--no-corporate-actions", "--actions-out", str(tmp_path / "a.csv"),
                                  "--out", str(tmp_path / "t.csv")])

    assert exit_info.value.code == 2
    assert ("--actions-out names a file that --no-corporate-actions does not write; give one of the two"
            in capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rate", [0.0, 0.004], ids=["clean", "anomalies"])
def test_files_do_not_depend_on_how_many_trades_are_written_at_a_time(monkeypatch, rate):
    # 10,000,000 trades are replayed, priced and written CHUNK_ROWS at a time; here 5,000 in slices of 777
    whole = generate_dummy_data.generate_files(5000, 7, anomaly_rate=rate)
    expected = list(whole.trades), whole.prices, whole.truth

    monkeypatch.setattr(generate_dummy_data, "CHUNK_ROWS", 777)
    sliced = generate_dummy_data.generate_files(5000, 7, anomaly_rate=rate)

    assert (list(sliced.trades), sliced.prices, sliced.truth) == expected
    assert whole.splits == 2 and len(expected[0]) == 5000 + len(whole.truth) and bool(whole.truth) == (rate > 0)


@pytest.mark.parametrize("window, splits", [(39, 0), (40, 2)])
def test_a_window_shorter_than_40_weekdays_has_no_splits(monkeypatch, window, splits):
    monkeypatch.setattr(constants, "TRADING_DAYS", window)

    generated = generate_dummy_data.generate_files(300, 5)

    days = sorted({line.split(",")[1] for line in generated.prices})
    split_rows = [line.split(",") for line in generated.actions if ",SPLIT," in line]
    assert len(days) == window and generated.splits == len(split_rows) == splits
    assert all(10 <= days.index(ex_date) <= window - 11 for _, ex_date, _, _ in split_rows)
    assert generated.dividends > 0


def test_help_describes_fees_splits_and_dividends(capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--help"])

    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("fee = max(1.00, 0.05% of quantity x price)", "corporate_actions.csv", "floor(holding x value)",
                  "Cash dividends", "--no-fees", "--no-corporate-actions", "--actions-out", "byte for byte"):
        assert words in text, words


# ------------------------------------------------------------------------------- planted surveillance patterns

def as_seconds(txn_time):
    return datetime.strptime(txn_time, "%Y-%m-%d %H:%M:%S").timestamp()


@pytest.fixture(scope="module")
def planted():
    """20,000 trades of seed 11 with --anomalies 0.01 (200 anomalies of each rule): (every trade as a dict, in
    file order, and {rule: [the trades of one anomaly, in file order]})."""
    lines, _, truth = generate_dummy_data.generate_with_anomalies(20000, 11, 0.01)
    trades = [dict(zip(TRADE_HEADER, line.split(","))) for line in lines]
    by_ref = {trade["txn_ref"]: trade for trade in trades}
    anomalies = defaultdict(lambda: defaultdict(list))
    for line in truth:
        ref, rule, anomaly_id = line.split(",")
        anomalies[rule][anomaly_id].append(by_ref[ref])
    return trades, {rule: list(groups.values()) for rule, groups in anomalies.items()}


def test_planted_wash_trades_span_gaps_up_to_3_minutes_and_prices_up_to_5_basis_points(planted):
    _, anomalies = planted
    gaps, spreads = [], []
    for buy, sell in anomalies["WASH_TRADE"]:
        assert (buy["txn_type"], sell["txn_type"]) == ("BUY", "SELL")
        assert (buy["investor_id"], buy["stock_symbol"], buy["quantity"]) == (
            sell["investor_id"], sell["stock_symbol"], sell["quantity"])
        gaps.append(as_seconds(sell["txn_time"]) - as_seconds(buy["txn_time"]))
        difference = abs(Decimal(sell["price"]) - Decimal(buy["price"]))
        assert difference <= max(CENT, Decimal(buy["price"]) * Decimal("0.0005")), (buy, sell)
        spreads.append(difference / Decimal(buy["price"]))

    assert len(gaps) == 200 and 3 <= min(gaps) < 15 and 165 < max(gaps) <= 180
    assert max(spreads) > Decimal("0.0004")  # up to 0.05%, far beyond the old rule's 0.02%
    assert sum(spread > Decimal("0.0002") for spread in spreads) > 20 and sum(s == 0 for s in spreads) > 5


def test_planted_bursts_have_11_to_60_trades_within_4_minutes(planted):
    _, anomalies = planted
    sizes = []
    for burst in anomalies["BURST"]:
        times = [as_seconds(trade["txn_time"]) for trade in burst]
        assert {(trade["investor_id"], trade["txn_type"]) for trade in burst} == {(burst[0]["investor_id"], "BUY")}
        assert len(set(times)) == len(times) and max(times) - min(times) < 4 * 60
        sizes.append(len(burst))

    assert len(sizes) == 200 and min(sizes) == 11 and max(sizes) == 60
    assert sum(size <= 20 for size in sizes) > 20 and sum(size >= 50 for size in sizes) > 20


def test_planted_large_trades_are_at_least_20_times_the_investors_median(planted):
    trades, anomalies = planted
    planted_refs = {trade["txn_ref"] for groups in anomalies.values() for group in groups for trade in group}
    earlier = defaultdict(list)  # each investor's clean notionals so far, in time order
    factors = []
    large = {group[0]["txn_ref"] for group in anomalies["LARGE_TRADE"]}
    for _, trade in sorted(enumerate(trades), key=lambda item: (item[1]["txn_time"], item[0])):
        notional = int(trade["quantity"]) * float(trade["price"])
        if trade["txn_ref"] in large:
            factors.append(notional / np.median(earlier[trade["investor_id"]][-50:]))
        elif trade["txn_ref"] not in planted_refs:
            earlier[trade["investor_id"]].append(notional)

    assert len(factors) == 200 and min(factors) >= 20
    assert min(factors) < 1000 < max(factors)  # from a few hundred times the median to far beyond


def test_planted_round_trips_are_3_to_6_quick_trips_in_a_flat_position(planted):
    _, anomalies = planted
    counts, holds, moves = [], [], []
    for trips in anomalies["ROUND_TRIP"]:
        assert len({(trade["investor_id"], trade["stock_symbol"], trade["txn_time"][:10]) for trade in trips}) == 1
        counts.append(len(trips) // 2)
        for buy, sell in zip(trips[::2], trips[1::2]):
            assert (buy["txn_type"], sell["txn_type"], buy["quantity"]) == ("BUY", "SELL", sell["quantity"])
            holds.append(as_seconds(sell["txn_time"]) - as_seconds(buy["txn_time"]))
            moves.append(abs(float(sell["price"]) / float(buy["price"]) - 1))

    assert set(counts) == {3, 4, 5, 6}
    assert 30 <= min(holds) < 90 and 14 * 60 < max(holds) <= 15 * 60
    assert 0.0028 < min(moves) and max(moves) < 0.0082  # 0.3% to 0.8%, then both prices rounded to the cent


def test_the_generator_refuses_a_database_url_rather_than_ignore_it(capsys):
    """It writes files only: --database-url used to be taken and ignored (a user thought the trades went there)."""
    with pytest.raises(SystemExit) as exit_info:
        generate_dummy_data.main(["--database-url", "sqlite:///elsewhere.db"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --database-url: the generator writes files only; give the database to load_transactions.py or "
        "master_etl.py")
    with pytest.raises(SystemExit):
        generate_dummy_data.main(["--help"])
    assert "--database-url" not in capsys.readouterr().out
