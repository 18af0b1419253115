"""PostgreSQL smoke tests: the whole pipeline and the COPY bulk path (the full suite runs on SQLite and MariaDB)."""
from sqlalchemy import text

import db_config
import master_etl
import update_portfolio


def test_pipeline_runs_on_postgresql_and_incremental_equals_full(postgres_url, tmp_path, capsys):
    trades = tmp_path / "trades.csv"
    argv = ["--rows", "3000", "--seed", "5", "--input", str(trades), "--no-plots", "--database-url", postgres_url]

    assert master_etl.main(argv) == 0
    assert master_etl.main(argv) == 0  # the same file again: skipped, nothing new

    engine = db_config.get_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM transactions")).scalar() == 3000
        assert connection.execute(text("SELECT COUNT(*) FROM load_batches")).scalar() == 1
        incremental = connection.execute(text(
            "SELECT investor_id, stock_symbol, quantity, cost_basis, realized_pnl, market_value, risk_score "
            "FROM portfolios ORDER BY 1, 2")).all()
    update_portfolio.update_portfolios(engine, full=True)
    with engine.connect() as connection:
        full = connection.execute(text(
            "SELECT investor_id, stock_symbol, quantity, cost_basis, realized_pnl, market_value, risk_score "
            "FROM portfolios ORDER BY 1, 2")).all()
    engine.dispose()
    assert incremental == full and len(full) > 100
    assert "already loaded in batch 1, skipped" in capsys.readouterr().out
