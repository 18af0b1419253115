"""The alert lifecycle: OPEN and RESOLVED, position alerts that clear and recur, and alerts.py's list and resolve."""
from datetime import date, datetime

import pytest
from sqlalchemy import select, text

import alerts
import load_transactions
import update_portfolio
from schema import alerts as alerts_table

HEADER = "txn_ref,investor_id,stock_symbol,txn_type,quantity,price,txn_time"
TODAY = date(2025, 1, 10)


def load_and_update(engine, tmp_path, name, trades):
    (tmp_path / name).write_text("\n".join([HEADER, *trades]) + "\n")
    assert load_transactions.load_paths(engine, [str(tmp_path / name)]) == 0
    update_portfolio.update_portfolios(engine, today=TODAY)


def stored_alerts(engine, rule=None):
    """Every alert (of this rule), by alert_id."""
    query = select(alerts_table).order_by(alerts_table.c.alert_id)
    with engine.connect() as connection:
        return connection.execute(query if rule is None else query.where(alerts_table.c.rule == rule)).all()


def url_of(engine):
    return engine.url.render_as_string(hide_password=False)


# A single AAPL position is 100% of investor 1001's value: CONCENTRATION. Buying MSFT and KO spreads it to
# 25% / 37.5% / 37.5% (each at its last trade's price, there being no closes): the condition clears.
CONCENTRATED = ["c1,1001,AAPL,BUY,10,100,2025-01-06 10:00:00"]
SPREAD = ["c2,1001,MSFT,BUY,15,100,2025-01-07 10:00:00", "c3,1001,KO,BUY,15,100,2025-01-07 10:01:00"]
CONCENTRATED_AGAIN = ["c4,1001,MSFT,SELL,15,100,2025-01-08 10:00:00", "c5,1001,KO,SELL,15,100,2025-01-08 10:01:00"]


def test_concentration_alert_resolves_itself_and_opens_again_when_it_recurs(seeded_engine, tmp_path):
    load_and_update(seeded_engine, tmp_path, "a.csv", CONCENTRATED)
    [first] = stored_alerts(seeded_engine, "CONCENTRATION")
    assert (first.alert_key, first.status, first.resolved_at) == ("CONCENTRATION:1001:AAPL", "OPEN", None)

    load_and_update(seeded_engine, tmp_path, "b.csv", SPREAD)
    [cleared] = stored_alerts(seeded_engine, "CONCENTRATION")
    assert cleared.alert_id == first.alert_id and cleared.status == "RESOLVED"
    assert cleared.alert_key == f"{first.alert_id}#CONCENTRATION:1001:AAPL" and cleared.resolved_at is not None
    assert cleared.resolved_by == "update_portfolio" and cleared.resolution_note.startswith("condition cleared")

    load_and_update(seeded_engine, tmp_path, "c.csv", CONCENTRATED_AGAIN)
    update_portfolio.update_portfolios(seeded_engine, today=TODAY)  # a re-run adds nothing
    update_portfolio.update_portfolios(seeded_engine, today=TODAY, full=True)
    old, new = stored_alerts(seeded_engine, "CONCENTRATION")
    assert old.alert_id == first.alert_id and old.status == "RESOLVED"
    assert (new.alert_key, new.status, new.resolved_at) == ("CONCENTRATION:1001:AAPL", "OPEN", None)


def test_a_person_resolves_an_alert_and_it_stays_resolved_while_the_condition_holds(seeded_engine, tmp_path, capsys):
    load_and_update(seeded_engine, tmp_path, "a.csv", CONCENTRATED)
    [alert] = stored_alerts(seeded_engine, "CONCENTRATION")
    capsys.readouterr()

    code = alerts.main(["resolve", str(alert.alert_id), "--note", "  client holds it on purpose  ", "--by", "ana",
                        "--database-url", url_of(seeded_engine)])

    assert code == 0
    assert capsys.readouterr().out == "1 alert resolved: client holds it on purpose\n"
    update_portfolio.update_portfolios(seeded_engine, today=TODAY, full=True)
    [kept] = stored_alerts(seeded_engine, "CONCENTRATION")
    assert (kept.status, kept.resolved_by, kept.resolution_note) == ("RESOLVED", "ana", "client holds it on purpose")
    assert kept.alert_key == "CONCENTRATION:1001:AAPL"  # still the current alert: no new one while it holds
    load_and_update(seeded_engine, tmp_path, "b.csv", SPREAD)  # clears: retired, the person's note kept
    load_and_update(seeded_engine, tmp_path, "c.csv", CONCENTRATED_AGAIN)  # recurs: a new open alert
    old, new = stored_alerts(seeded_engine, "CONCENTRATION")
    assert (old.alert_key, old.resolved_by, old.resolution_note) == (
        f"{alert.alert_id}#CONCENTRATION:1001:AAPL", "ana", "client holds it on purpose")
    assert (new.alert_key, new.status) == ("CONCENTRATION:1001:AAPL", "OPEN")


def test_list_shows_open_alerts_most_severe_first(seeded_engine, tmp_path, capsys):
    load_and_update(seeded_engine, tmp_path, "a.csv", [
        "l1,1002,AAPL,BUY,10,100,2025-01-06 10:00:00",
        "l2,1002,AAPL,SELL,50,100,2025-01-06 11:00:00",  # an oversell: HIGH
        "l3,1003,MSFT,BUY,6,100,2025-01-06 10:00:00", "l4,1003,KO,BUY,4,100,2025-01-06 10:00:00",  # MSFT 60%: MEDIUM
    ])
    rows = {(row.rule, row.investor_id, row.stock_symbol): row for row in stored_alerts(seeded_engine)}
    capsys.readouterr()

    assert alerts.main(["--database-url", url_of(seeded_engine)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["alert", "severity", "rule", "investor", "symbol", "detected", "details"]
    listed = [(int(line.split()[0]), line.split()[1], line.split()[2]) for line in lines[1:-1]]
    assert [severity for _, severity, _ in listed] == ["HIGH", "HIGH", "MEDIUM"]
    assert listed[-1] == (rows[("CONCENTRATION", 1003, "MSFT")].alert_id, "MEDIUM", "CONCENTRATION")
    assert {rule for _, _, rule in listed[:2]} == {"OVERSELL", "CONCENTRATION"}
    assert lines[-1] == "3 open alerts: 2 HIGH, 1 MEDIUM"
    assert "exceeds the 10 shares held" in lines[1] + lines[2]

    alert_id = rows[("OVERSELL", 1002, "AAPL")].alert_id
    assert alerts.main(["resolve", str(alert_id), "--note", "booking error, corrected", "--database-url",
                        url_of(seeded_engine)]) == 0
    capsys.readouterr()
    assert alerts.main(["--database-url", url_of(seeded_engine), "--limit", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[-1] == "2 open alerts: 1 HIGH, 1 MEDIUM (showing the first 1: --limit 0 shows all)"
    assert alerts.main(["--all", "--rule", "oversell", "--database-url", url_of(seeded_engine)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:4] == [str(alert_id), "HIGH", "RESOLVED", "OVERSELL"]
    assert out[2].strip().startswith("resolved ") and out[2].endswith(": booking error, corrected")
    assert out[-1] == "1 alerts (0 open, 1 resolved): 1 HIGH"
    assert alerts.main(["--investor", "1003", "--database-url", url_of(seeded_engine)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 open alerts: 1 MEDIUM"


def test_no_alerts(seeded_engine, capsys):
    assert alerts.main(["--database-url", url_of(seeded_engine)]) == 0
    assert capsys.readouterr().out == "no open alerts\n"


@pytest.mark.parametrize("argv, message", [
    (["resolve", "999", "--note", "x"], "error: alerts: alert 999 does not exist (python alerts.py --all lists them)"),
    (["resolve", "ALERT", "--note", "   "], "error: alerts: --note TEXT is required: say what was decided and why"),
    (["resolve", "ALERT"], "error: alerts: --note TEXT is required: say what was decided and why"),
    (["resolve", "ALERT", "--note", "a\x00b"],
     "error: alerts: --note holds a line break or another control character; write one line of plain text"),
    (["resolve", "ALERT", "--note", "x", "--by", "  "],
     "error: alerts: --by NAME must name someone (leave it out for your login)"),
    (["resolve", "ALERT", "--note", "x", "--by", "evil\x1b[31m"],
     "error: alerts: --by holds a line break or another control character; write one line of plain text"),
    (["resolve", "ALERT", "--note", "x", "--by", "x" * 101],
     "error: alerts: --by is 101 characters long; at most 100 are kept"),
    (["resolve", "ALERT", "--note", "abc\u202edef"],
     "error: alerts: --note holds a line break or another control character; write one line of plain text"),
    (["resolve", "ALERT", "--note", "line1\nline2"],
     "error: alerts: --note holds a line break or another control character; write one line of plain text"),
    (["resolve", "ALERT", "999", "--note", "both"],
     "error: alerts: alert 999 does not exist (python alerts.py --all lists them)"),
])
def test_resolve_refuses_with_one_line_and_changes_nothing(seeded_engine, tmp_path, capsys, argv, message):
    load_and_update(seeded_engine, tmp_path, "a.csv", CONCENTRATED)
    [alert] = stored_alerts(seeded_engine)
    capsys.readouterr()

    code = alerts.main([str(alert.alert_id) if word == "ALERT" else word for word in argv]
                       + ["--database-url", url_of(seeded_engine)])

    assert code == 2 and capsys.readouterr().err.splitlines() == [message]
    assert stored_alerts(seeded_engine) == [alert]


def test_resolving_twice_says_who_resolved_it(seeded_engine, tmp_path, capsys):
    load_and_update(seeded_engine, tmp_path, "a.csv", CONCENTRATED)
    [alert] = stored_alerts(seeded_engine)
    argv = ["resolve", str(alert.alert_id), "--note", "seen", "--by", "ana", "--database-url", url_of(seeded_engine)]
    assert alerts.main(argv) == 0
    capsys.readouterr()

    assert alerts.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: alerts: alert {alert.alert_id} is already resolved (") and "by ana: seen)" in err


@pytest.mark.parametrize("argv", [["resolve"], ["7"], ["--note", "x"], ["--limit", "-1"], ["close", "7"],
                                  ["--rule", "BOGUS"], ["resolve", "99999999999999999999999", "--note", "x"],
                                  ["--investor", "99999999999999999999999"], ["resolve", "0", "--note", "x"],
                                  ["--limit", "99999999999999999999999"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        alerts.main(argv)
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_a_note_too_long_is_refused():
    with pytest.raises(alerts.cli.InputError, match="--note is 1001 characters long; at most 1000 are kept"):
        alerts.clean_note("x" * 1001)


def test_resolve_several_at_once(seeded_engine, tmp_path):
    load_and_update(seeded_engine, tmp_path, "a.csv", ["r1,1004,AAPL,BUY,1,100,2025-01-06 10:00:00",
                                                       "r2,1005,MSFT,BUY,1,100,2025-01-06 10:00:00"])
    ids = [str(row.alert_id) for row in stored_alerts(seeded_engine)]
    url = url_of(seeded_engine)
    assert alerts.main(["resolve", *ids, "--note", "reviewed", "--database-url", url]) == 0
    with seeded_engine.connect() as connection:
        assert connection.execute(text("SELECT status, COUNT(*) FROM alerts GROUP BY status")).all() == [
            ("RESOLVED", 2)]


def test_sector_concentration_resolves_itself_and_opens_again(seeded_engine, tmp_path):
    """1001 holds only Technology (AAPL, MSFT): above 60%. KO and JNJ bring it to 50%: cleared. Selling them again:
    a new open alert. Surveillance, incremental or --full, never raises a second one while it holds."""
    import surveillance
    load_and_update(seeded_engine, tmp_path, "a.csv", ["s1,1001,AAPL,BUY,10,100,2025-01-06 10:00:00",
                                                       "s2,1001,MSFT,BUY,10,100,2025-01-06 10:01:00"])
    surveillance.run_surveillance(seeded_engine)
    [first] = stored_alerts(seeded_engine, "SECTOR_CONCENTRATION")
    assert (first.alert_key, first.status) == ("SECTOR_CONCENTRATION:1001:Technology", "OPEN")

    load_and_update(seeded_engine, tmp_path, "b.csv", ["s3,1001,KO,BUY,10,100,2025-01-07 10:00:00",
                                                       "s4,1001,JNJ,BUY,10,100,2025-01-07 10:01:00"])
    summary = surveillance.run_surveillance(seeded_engine)
    [cleared] = stored_alerts(seeded_engine, "SECTOR_CONCENTRATION")
    assert (cleared.alert_key, cleared.status, cleared.resolved_by) == (
        f"{first.alert_id}#SECTOR_CONCENTRATION:1001:Technology", "RESOLVED", "surveillance")
    assert cleared.resolution_note.startswith("condition cleared") and summary.alerts_resolved == 1

    load_and_update(seeded_engine, tmp_path, "c.csv", ["s5,1001,KO,SELL,10,100,2025-01-08 10:00:00",
                                                       "s6,1001,JNJ,SELL,10,100,2025-01-08 10:01:00"])
    surveillance.run_surveillance(seeded_engine)
    surveillance.run_surveillance(seeded_engine, full=True)
    old, new = stored_alerts(seeded_engine, "SECTOR_CONCENTRATION")
    assert old.alert_id == first.alert_id and old.status == "RESOLVED"
    assert (new.alert_key, new.status) == ("SECTOR_CONCENTRATION:1001:Technology", "OPEN")


def test_a_hash_in_a_sector_name_is_no_retired_mark(seeded_engine, tmp_path):
    """A sector 'Tech #2' (users add their own stocks): its alert stays current, re-runs raise no second one."""
    import surveillance
    with seeded_engine.begin() as connection:
        connection.execute(text("INSERT INTO stocks (stock_symbol, company_name, sector) VALUES ('SAP', 'SAP SE', "
                                "'Tech #2')"))
    load_and_update(seeded_engine, tmp_path, "a.csv", ["h1,1001,SAP,BUY,10,200,2025-01-06 10:00:00"])
    surveillance.run_surveillance(seeded_engine)
    load_and_update(seeded_engine, tmp_path, "b.csv", ["h2,1001,SAP,BUY,1,200,2025-01-07 10:00:00"])
    surveillance.run_surveillance(seeded_engine)
    surveillance.run_surveillance(seeded_engine, full=True)
    [alert] = stored_alerts(seeded_engine, "SECTOR_CONCENTRATION")
    assert (alert.alert_key, alert.status) == ("SECTOR_CONCENTRATION:1001:Tech #2", "OPEN")


def test_a_stage_never_overwrites_a_persons_decision(seeded_engine, tmp_path):
    """The stage read the alert OPEN, a person resolved it meanwhile: retiring it keeps the person's decision."""
    load_and_update(seeded_engine, tmp_path, "a.csv", CONCENTRATED)
    [alert] = stored_alerts(seeded_engine, "CONCENTRATION")
    seen_open = alerts.CurrentAlert(alert.alert_id, alert.alert_key, "OPEN", alert.severity, alert.details)
    with seeded_engine.begin() as connection:
        alerts.resolve_alerts(connection, [alert.alert_id], "person note", "ana", datetime(2030, 1, 1))
    with seeded_engine.begin() as connection:
        alerts.retire_alerts(connection, [seen_open], datetime(2030, 1, 2), "update_portfolio", "cleared")
    [kept] = stored_alerts(seeded_engine, "CONCENTRATION")
    assert (kept.status, kept.resolved_by, kept.resolution_note) == ("RESOLVED", "ana", "person note")
    assert kept.alert_key == f"{alert.alert_id}#CONCENTRATION:1001:AAPL"


def test_a_broken_pipe_ends_quietly(monkeypatch, capsys):
    """`alerts.py | head`: the reader went away; no error line, exit 1, stdout sent nowhere from then on."""
    redirected = []
    monkeypatch.setattr(alerts.cli.os, "dup2", lambda source, target: redirected.append(target))
    monkeypatch.setattr(alerts.cli.sys, "stdout", type("Stdout", (), {"fileno": lambda self: 99})())

    def work():
        raise BrokenPipeError(32, "Broken pipe")

    assert alerts.cli.run(work, alerts.parse_arguments([]), "alerts") == 1
    assert capsys.readouterr().err == "" and redirected == [99]


def test_a_new_risk_definition_rescores_every_investor_once(seeded_engine, tmp_path, monkeypatch):
    """A database scored by an earlier definition (the upgrade case) gets every investor rescored by the next
    update, so that a new metric (the parametric VaR) is not left NULL until the investor trades again."""
    load_and_update(seeded_engine, tmp_path, "a.csv", CONCENTRATED + ["r1,1002,KO,BUY,1,50,2025-01-06 10:00:00"])
    assert update_portfolio.update_portfolios(seeded_engine, today=TODAY).investors_scored == 0  # nothing new
    monkeypatch.setattr(update_portfolio.risk_metrics, "DEFINITION_VERSION", "risk-metrics-next")
    assert update_portfolio.update_portfolios(seeded_engine, today=TODAY).investors_scored == 2
    assert update_portfolio.update_portfolios(seeded_engine, today=TODAY).investors_scored == 0
