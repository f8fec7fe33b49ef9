-- Balance payouts as on-chain transactions. A payout is written in the same database transaction as
-- its ledger transaction (`payout:<txid>`: the payees' balances into platform/payouts-in-flight), with
-- the signed transaction itself, before it is broadcast: a restart re-broadcasts exactly these bytes,
-- so a crash between recording and confirmation never pays twice. The same tables exist for
-- PostgreSQL in ../postgres/0003_payouts.sql.
CREATE TABLE payouts (
    id INTEGER PRIMARY KEY,
    tx_id INTEGER NOT NULL UNIQUE REFERENCES ledger_transactions (id),
    txid TEXT NOT NULL UNIQUE CHECK (length(txid) = 64),
    raw_tx BLOB NOT NULL CHECK (length(raw_tx) BETWEEN 60 AND 400000),
    fee_sat INTEGER NOT NULL CHECK (fee_sat >= 0),
    state TEXT NOT NULL CHECK (state IN ('in_flight', 'confirmed', 'abandoned')),
    created_ms INTEGER NOT NULL,
    settled_ms INTEGER,
    confirmed_height INTEGER,
    note TEXT NOT NULL DEFAULT ''
);

-- One line per payee: what left their balance and what their output pays.
CREATE TABLE payout_lines (
    payout_id INTEGER NOT NULL REFERENCES payouts (id),
    owner TEXT NOT NULL CHECK (length(owner) BETWEEN 1 AND 200),
    address TEXT NOT NULL,
    debit_msat INTEGER NOT NULL CHECK (debit_msat > 0),
    paid_sat INTEGER NOT NULL CHECK (paid_sat > 0 AND paid_sat * 1000 <= debit_msat),
    PRIMARY KEY (payout_id, owner)
) WITHOUT ROWID;
CREATE INDEX payout_lines_by_owner ON payout_lines (owner, payout_id);

-- Owners above the threshold who could not be paid, and why (the latest reason).
CREATE TABLE payout_skips (
    owner TEXT PRIMARY KEY CHECK (length(owner) BETWEEN 1 AND 200),
    reason TEXT NOT NULL,
    balance_msat INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- A confirmed or abandoned payout is final; lines are never changed.
CREATE TRIGGER payouts_final
BEFORE UPDATE ON payouts
WHEN OLD.state <> 'in_flight'
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: a settled payout is final');
END;
CREATE TRIGGER payouts_no_delete
BEFORE DELETE ON payouts
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: payouts are never deleted');
END;
CREATE TRIGGER payout_lines_immutable
BEFORE UPDATE ON payout_lines
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: payout lines are immutable');
END;
CREATE TRIGGER payout_lines_no_delete
BEFORE DELETE ON payout_lines
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: payout lines are immutable');
END;
