-- How a payout is signed and sent. 'pool-key': built and signed by the pool with its own key (the
-- bytes recorded before broadcast are final). 'psbt': built by the pool without a key and exported as
-- a PSBT for an external signer; `raw_tx` is the unsigned transaction (its txid is final: every input
-- is segwit) until the signed one is imported. 'core-wallet': sent by Bitcoin Core's wallet with
-- `sendmany`; until the wallet has sent it, `txid` holds the payout's intent id (the comment sendmany
-- carries, by which a retry finds a payout already sent) and `raw_tx` the outputs to pay; then the
-- wallet's txid and bytes replace them, once. Same in ../postgres/0005_payout_methods.sql.
ALTER TABLE payouts ADD COLUMN method TEXT NOT NULL DEFAULT 'pool-key'
    CHECK (method IN ('pool-key', 'psbt', 'core-wallet'));
ALTER TABLE payouts ADD COLUMN signed INTEGER NOT NULL DEFAULT 1 CHECK (signed IN (0, 1));
ALTER TABLE payouts ADD COLUMN psbt BLOB CHECK (psbt IS NULL OR length(psbt) BETWEEN 1 AND 1000000);

-- Bytes are completed once and never changed after: signed stays signed, the method never changes,
-- and the txid changes only when a Core wallet payout gets its wallet's txid (a PSBT's is final).
CREATE TRIGGER payouts_bytes_final
BEFORE UPDATE ON payouts
WHEN NEW.method <> OLD.method
  OR NEW.signed < OLD.signed
  OR (OLD.signed = 1 AND (NEW.raw_tx <> OLD.raw_tx OR NEW.txid <> OLD.txid))
  OR (OLD.method <> 'core-wallet' AND NEW.txid <> OLD.txid)
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: a payout''s signed bytes and txid never change');
END;
