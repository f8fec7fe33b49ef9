-- How a payout is signed and sent (see ../sqlite/0005_payout_methods.sql for the design).
ALTER TABLE payouts ADD COLUMN method TEXT NOT NULL DEFAULT 'pool-key'
    CHECK (method IN ('pool-key', 'psbt', 'core-wallet'));
ALTER TABLE payouts ADD COLUMN signed BIGINT NOT NULL DEFAULT 1 CHECK (signed IN (0, 1));
ALTER TABLE payouts ADD COLUMN psbt BYTEA CHECK (psbt IS NULL OR length(psbt) BETWEEN 1 AND 1000000);

CREATE OR REPLACE FUNCTION payouts_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger invariant: payouts are never deleted';
    END IF;
    IF OLD.state <> 'in_flight' THEN
        RAISE EXCEPTION 'ledger invariant: a settled payout is final';
    END IF;
    IF NEW.method <> OLD.method
       OR NEW.signed < OLD.signed
       OR (OLD.signed = 1 AND (NEW.raw_tx <> OLD.raw_tx OR NEW.txid <> OLD.txid))
       OR (OLD.method <> 'core-wallet' AND NEW.txid <> OLD.txid) THEN
        RAISE EXCEPTION 'ledger invariant: a payout''s signed bytes and txid never change';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
