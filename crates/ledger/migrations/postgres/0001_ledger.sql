-- The double-entry ledger (PostgreSQL). Amounts are integer millisatoshis. The same tables and
-- constraints exist for SQLite in ../sqlite/0001_ledger.sql.

CREATE TABLE ledger_accounts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    allow_negative BOOLEAN NOT NULL,
    balance_msat BIGINT NOT NULL DEFAULT 0
        CHECK (balance_msat BETWEEN -2100000000000000000 AND 2100000000000000000),
    CHECK (allow_negative OR balance_msat >= 0)
);

CREATE TABLE ledger_transactions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idem_key TEXT NOT NULL UNIQUE CHECK (length(idem_key) BETWEEN 1 AND 200),
    fingerprint TEXT NOT NULL,
    memo TEXT NOT NULL,
    posted_at_ms BIGINT NOT NULL,
    postings BIGINT NOT NULL CHECK (postings >= 2),
    sealed BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE ledger_entries (
    tx_id BIGINT NOT NULL REFERENCES ledger_transactions (id),
    account_id BIGINT NOT NULL REFERENCES ledger_accounts (id),
    amount_msat BIGINT NOT NULL
        CHECK (amount_msat <> 0 AND amount_msat BETWEEN -2100000000000000000 AND 2100000000000000000),
    PRIMARY KEY (tx_id, account_id)
);

CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, tx_id);

CREATE FUNCTION ledger_transactions_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger invariant: transactions are never deleted';
    END IF;
    IF OLD.sealed THEN
        RAISE EXCEPTION 'ledger invariant: sealed transactions are immutable';
    END IF;
    IF NEW.sealed THEN
        IF (SELECT COALESCE(SUM(amount_msat), 0) FROM ledger_entries WHERE tx_id = NEW.id) <> 0
           OR (SELECT COUNT(*) FROM ledger_entries WHERE tx_id = NEW.id) <> NEW.postings THEN
            RAISE EXCEPTION 'ledger invariant: unbalanced or incomplete transaction';
        END IF;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_transactions_guard
BEFORE UPDATE OR DELETE ON ledger_transactions
FOR EACH ROW EXECUTE FUNCTION ledger_transactions_guard();

CREATE FUNCTION ledger_entries_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'ledger invariant: entries are immutable';
    END IF;
    IF (SELECT sealed FROM ledger_transactions WHERE id = NEW.tx_id) THEN
        RAISE EXCEPTION 'ledger invariant: entries added to a sealed transaction';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_entries_guard
BEFORE INSERT OR UPDATE OR DELETE ON ledger_entries
FOR EACH ROW EXECUTE FUNCTION ledger_entries_guard();
