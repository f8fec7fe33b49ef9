-- Balance payouts as on-chain transactions (see ../sqlite/0003_payouts.sql for the design).
CREATE TABLE payouts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id BIGINT NOT NULL UNIQUE REFERENCES ledger_transactions (id),
    txid TEXT NOT NULL UNIQUE CHECK (length(txid) = 64),
    raw_tx BYTEA NOT NULL CHECK (length(raw_tx) BETWEEN 60 AND 400000),
    fee_sat BIGINT NOT NULL CHECK (fee_sat >= 0),
    state TEXT NOT NULL CHECK (state IN ('in_flight', 'confirmed', 'abandoned')),
    created_ms BIGINT NOT NULL,
    settled_ms BIGINT,
    confirmed_height BIGINT,
    note TEXT NOT NULL DEFAULT ''
);

CREATE TABLE payout_lines (
    payout_id BIGINT NOT NULL REFERENCES payouts (id),
    owner TEXT NOT NULL CHECK (length(owner) BETWEEN 1 AND 200),
    address TEXT NOT NULL,
    debit_msat BIGINT NOT NULL CHECK (debit_msat > 0),
    paid_sat BIGINT NOT NULL CHECK (paid_sat > 0 AND paid_sat * 1000 <= debit_msat),
    PRIMARY KEY (payout_id, owner)
);
CREATE INDEX payout_lines_by_owner ON payout_lines (owner, payout_id);

CREATE TABLE payout_skips (
    owner TEXT PRIMARY KEY CHECK (length(owner) BETWEEN 1 AND 200),
    reason TEXT NOT NULL,
    balance_msat BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);

CREATE FUNCTION payouts_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger invariant: payouts are never deleted';
    END IF;
    IF OLD.state <> 'in_flight' THEN
        RAISE EXCEPTION 'ledger invariant: a settled payout is final';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER payouts_guard
BEFORE UPDATE OR DELETE ON payouts
FOR EACH ROW EXECUTE FUNCTION payouts_guard();

CREATE FUNCTION payout_lines_guard() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger invariant: payout lines are immutable';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER payout_lines_guard
BEFORE UPDATE OR DELETE ON payout_lines
FOR EACH ROW EXECUTE FUNCTION payout_lines_guard();
