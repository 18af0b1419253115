-- stock-etl schema for MySQL/MariaDB, rendered from schema.py by `python schema.py > create_tables.sql`.
-- Usage: mysql -u root -p < create_tables.sql   (idempotent: creates only what is missing)
CREATE DATABASE IF NOT EXISTS stock_investments CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE stock_investments;

CREATE TABLE IF NOT EXISTS investors (
	investor_id INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	risk_profile VARCHAR(20) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (investor_id), 
	CONSTRAINT ck_investors_risk_profile CHECK (risk_profile IN ('conservative', 'balanced', 'aggressive'))
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS ledger_settings (
	name VARCHAR(50) NOT NULL, 
	value VARCHAR(200) NOT NULL, 
	PRIMARY KEY (name)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS load_batches (
	batch_id BIGINT NOT NULL AUTO_INCREMENT, 
	source VARCHAR(500) NOT NULL, 
	file_sha256 VARCHAR(64), 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	rows_read INTEGER NOT NULL, 
	rows_loaded INTEGER NOT NULL, 
	rows_duplicate INTEGER NOT NULL, 
	rows_rejected INTEGER NOT NULL, 
	status VARCHAR(10) NOT NULL, 
	error VARCHAR(1000), 
	runner VARCHAR(200), 
	applied_at DATETIME, 
	surveilled_at DATETIME, 
	PRIMARY KEY (batch_id), 
	CONSTRAINT ck_load_batches_status CHECK (status IN ('running', 'loaded', 'failed')),
	INDEX ix_load_batches_pending (status, applied_at),
	INDEX ix_load_batches_sha (file_sha256),
	INDEX ix_load_batches_unsurveilled (status, surveilled_at)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS stocks (
	stock_symbol VARCHAR(10) NOT NULL, 
	company_name VARCHAR(100) NOT NULL, 
	sector VARCHAR(50) NOT NULL, 
	PRIMARY KEY (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS alerts (
	alert_id BIGINT NOT NULL AUTO_INCREMENT, 
	alert_key VARCHAR(200) COLLATE utf8mb4_bin NOT NULL, 
	rule VARCHAR(30) NOT NULL, 
	severity VARCHAR(10) NOT NULL, 
	investor_id INTEGER, 
	stock_symbol VARCHAR(10), 
	txn_ref VARCHAR(64) COLLATE utf8mb4_bin, 
	detected_at DATETIME NOT NULL, 
	metric NUMERIC(24, 6), 
	threshold NUMERIC(24, 6), 
	details VARCHAR(1000) NOT NULL, 
	status VARCHAR(10) NOT NULL DEFAULT 'OPEN', 
	resolved_at DATETIME, 
	resolved_by VARCHAR(100), 
	resolution_note VARCHAR(1000), 
	PRIMARY KEY (alert_id), 
	CONSTRAINT ck_alerts_severity CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH')), 
	CONSTRAINT ck_alerts_status CHECK (status IN ('OPEN', 'RESOLVED')), 
	UNIQUE (alert_key), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id),
	INDEX ix_alerts_investor (investor_id, stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS corporate_actions (
	stock_symbol VARCHAR(10) NOT NULL, 
	ex_date DATE NOT NULL, 
	action VARCHAR(10) NOT NULL, 
	value NUMERIC(18, 6) NOT NULL, 
	ratio VARCHAR(20), 
	lieu_price NUMERIC(18, 4), 
	loaded_at DATETIME NOT NULL, 
	applied_at DATETIME, 
	PRIMARY KEY (stock_symbol, ex_date, action), 
	CONSTRAINT ck_corporate_actions_action CHECK (action IN ('SPLIT', 'DIVIDEND')), 
	CONSTRAINT ck_corporate_actions_value_positive CHECK (value > 0), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol),
	INDEX ix_corporate_actions_pending (applied_at, ex_date)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS investor_daily (
	investor_id INTEGER NOT NULL, 
	value_date DATE NOT NULL, 
	market_value NUMERIC(38, 6) NOT NULL, 
	cost_basis NUMERIC(38, 6) NOT NULL, 
	realized_pnl NUMERIC(38, 6) NOT NULL, 
	dividend_income NUMERIC(38, 6) NOT NULL, 
	fees_paid NUMERIC(38, 6) NOT NULL, 
	inflow NUMERIC(38, 6) NOT NULL, 
	outflow NUMERIC(38, 6) NOT NULL, 
	net_flow NUMERIC(38, 6) NOT NULL, 
	PRIMARY KEY (investor_id, value_date), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS investor_daily_builds (
	investor_id INTEGER NOT NULL, 
	first_day DATE NOT NULL, 
	built_through DATE NOT NULL, 
	trade_count BIGINT NOT NULL, 
	txn_id_through BIGINT NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (investor_id), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS investor_returns (
	investor_id INTEGER NOT NULL, 
	period VARCHAR(3) NOT NULL, 
	start_date DATE, 
	end_date DATE, 
	start_value NUMERIC(38, 6), 
	end_value NUMERIC(38, 6), 
	twr NUMERIC(30, 10), 
	irr NUMERIC(30, 10), 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (investor_id, period), 
	CONSTRAINT ck_investor_returns_period CHECK (period IN ('1M', '3M', 'YTD', '1Y', 'ALL')), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS investor_risk (
	investor_id INTEGER NOT NULL, 
	total_market_value NUMERIC(38, 6) NOT NULL, 
	total_cost_basis NUMERIC(38, 6) NOT NULL, 
	realized_pnl NUMERIC(38, 6) NOT NULL, 
	unrealized_pnl NUMERIC(38, 6) NOT NULL, 
	dividend_income NUMERIC(38, 6) NOT NULL DEFAULT '0', 
	fees_paid NUMERIC(38, 6) NOT NULL DEFAULT '0', 
	open_positions INTEGER NOT NULL, 
	top_position_weight NUMERIC(12, 8) NOT NULL, 
	hhi NUMERIC(12, 8) NOT NULL, 
	top_sector_weight NUMERIC(12, 8) NOT NULL, 
	weighted_volatility NUMERIC(24, 8) NOT NULL, 
	portfolio_volatility NUMERIC(24, 8), 
	var_95_1d NUMERIC(38, 6), 
	expected_shortfall_95_1d NUMERIC(38, 6), 
	parametric_var_95_1d NUMERIC(38, 6), 
	max_drawdown NUMERIC(12, 8), 
	risk_score NUMERIC(6, 2) NOT NULL, 
	risk_level VARCHAR(10) NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (investor_id), 
	CONSTRAINT ck_investor_risk_risk_level CHECK (risk_level IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS loaded_chunks (
	chunk_digest VARCHAR(64) NOT NULL, 
	batch_id BIGINT NOT NULL, 
	first_line INTEGER NOT NULL, 
	line_count INTEGER NOT NULL, 
	PRIMARY KEY (chunk_digest), 
	FOREIGN KEY(batch_id) REFERENCES load_batches (batch_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS market_prices (
	stock_symbol VARCHAR(10) NOT NULL, 
	price_date DATE NOT NULL, 
	close_price NUMERIC(18, 4) NOT NULL, 
	PRIMARY KEY (stock_symbol, price_date), 
	CONSTRAINT ck_market_prices_close_price_positive CHECK (close_price > 0), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS performance_actions (
	stock_symbol VARCHAR(10) NOT NULL, 
	ex_date DATE NOT NULL, 
	action VARCHAR(10) NOT NULL, 
	value VARCHAR(60) NOT NULL, 
	lieu_price NUMERIC(18, 4), 
	PRIMARY KEY (stock_symbol, ex_date, action), 
	CONSTRAINT ck_performance_actions_action CHECK (action IN ('SPLIT', 'DIVIDEND')), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS performance_closes (
	stock_symbol VARCHAR(10) NOT NULL, 
	price_date DATE NOT NULL, 
	close_price NUMERIC(18, 4) NOT NULL, 
	PRIMARY KEY (stock_symbol, price_date), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS portfolios (
	investor_id INTEGER NOT NULL, 
	stock_symbol VARCHAR(10) NOT NULL, 
	quantity BIGINT NOT NULL, 
	avg_cost NUMERIC(18, 4) NOT NULL, 
	cost_basis NUMERIC(38, 6) NOT NULL, 
	realized_pnl NUMERIC(38, 6) NOT NULL, 
	dividend_income NUMERIC(38, 6) NOT NULL DEFAULT '0', 
	fees_paid NUMERIC(38, 6) NOT NULL DEFAULT '0', 
	last_price NUMERIC(18, 4), 
	market_value NUMERIC(38, 6), 
	unrealized_pnl NUMERIC(38, 6), 
	weight NUMERIC(12, 8), 
	risk_score NUMERIC(6, 2), 
	risk_level VARCHAR(10), 
	updated_at DATETIME NOT NULL, 
	last_txn_time DATETIME NOT NULL, 
	last_txn_id BIGINT NOT NULL, 
	trade_count INTEGER NOT NULL, 
	last_trade_price NUMERIC(18, 4), 
	PRIMARY KEY (investor_id, stock_symbol), 
	CONSTRAINT ck_portfolios_quantity_not_negative CHECK (quantity >= 0), 
	CONSTRAINT ck_portfolios_risk_level CHECK (risk_level IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS position_checkpoints (
	investor_id INTEGER NOT NULL, 
	stock_symbol VARCHAR(10) NOT NULL, 
	week_start DATE NOT NULL, 
	quantity BIGINT NOT NULL, 
	cost_basis NUMERIC(38, 6) NOT NULL, 
	realized_pnl NUMERIC(38, 6) NOT NULL, 
	dividend_income NUMERIC(38, 6) NOT NULL DEFAULT '0', 
	fees_paid NUMERIC(38, 6) NOT NULL DEFAULT '0', 
	last_txn_time DATETIME NOT NULL, 
	last_txn_id BIGINT NOT NULL, 
	trade_count INTEGER NOT NULL, 
	last_trade_price NUMERIC(18, 4) NOT NULL, 
	lots LONGTEXT, 
	PRIMARY KEY (investor_id, stock_symbol, week_start), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS position_lots (
	investor_id INTEGER NOT NULL, 
	stock_symbol VARCHAR(10) NOT NULL, 
	txn_id BIGINT NOT NULL, 
	acquired_at DATETIME NOT NULL, 
	quantity NUMERIC(38, 12) NOT NULL, 
	cost_basis NUMERIC(38, 6) NOT NULL, 
	cost_per_share NUMERIC(18, 4) NOT NULL, 
	PRIMARY KEY (investor_id, stock_symbol, txn_id), 
	CONSTRAINT ck_position_lots_quantity_positive CHECK (quantity > 0), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS rejected_transactions (
	reject_id BIGINT NOT NULL AUTO_INCREMENT, 
	batch_id BIGINT NOT NULL, 
	line_number INTEGER, 
	reason VARCHAR(1000) NOT NULL, 
	raw_record TEXT, 
	PRIMARY KEY (reject_id), 
	FOREIGN KEY(batch_id) REFERENCES load_batches (batch_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS symbol_last_trades (
	stock_symbol VARCHAR(10) NOT NULL, 
	txn_time DATETIME NOT NULL, 
	txn_id BIGINT NOT NULL, 
	price NUMERIC(18, 4) NOT NULL, 
	PRIMARY KEY (stock_symbol), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS symbol_marks (
	stock_symbol VARCHAR(10) NOT NULL, 
	last_price NUMERIC(18, 4), 
	annual_volatility DOUBLE, 
	closes_digest VARCHAR(64) NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (stock_symbol), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS transactions (
	txn_id BIGINT NOT NULL AUTO_INCREMENT, 
	txn_ref VARCHAR(64) COLLATE utf8mb4_bin NOT NULL, 
	investor_id INTEGER NOT NULL, 
	stock_symbol VARCHAR(10) NOT NULL, 
	txn_type VARCHAR(4) NOT NULL, 
	quantity INTEGER NOT NULL, 
	price NUMERIC(18, 4) NOT NULL, 
	txn_time DATETIME NOT NULL, 
	fee NUMERIC(18, 4) NOT NULL DEFAULT '0', 
	batch_id BIGINT, 
	source_line INTEGER, 
	PRIMARY KEY (txn_id), 
	CONSTRAINT ck_transactions_txn_type CHECK (txn_type IN ('BUY', 'SELL')), 
	CONSTRAINT ck_transactions_quantity_positive CHECK (quantity > 0), 
	CONSTRAINT ck_transactions_price_positive CHECK (price > 0), 
	CONSTRAINT ck_transactions_fee_not_negative CHECK (fee >= 0), 
	UNIQUE (txn_ref), 
	FOREIGN KEY(investor_id) REFERENCES investors (investor_id), 
	FOREIGN KEY(stock_symbol) REFERENCES stocks (stock_symbol), 
	FOREIGN KEY(batch_id) REFERENCES load_batches (batch_id),
	INDEX ix_transactions_batch (batch_id),
	INDEX ix_transactions_position_time (investor_id, stock_symbol, txn_time)
) ENGINE=InnoDB;
