-- The double-entry ledger (SQLite). Amounts are integer millisatoshis. The same tables and
-- constraints exist for PostgreSQL in ../postgres/0001_ledger.sql.

CREATE TABLE ledger_accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    allow_negative BOOLEAN NOT NULL CHECK (allow_negative IN (0, 1)),
    balance_msat INTEGER NOT NULL DEFAULT 0
        CHECK (balance_msat BETWEEN -2100000000000000000 AND 2100000000000000000),
    CHECK (allow_negative = 1 OR balance_msat >= 0)
);

CREATE TABLE ledger_transactions (
    id INTEGER PRIMARY KEY,
    idem_key TEXT NOT NULL UNIQUE CHECK (length(idem_key) BETWEEN 1 AND 200),
    fingerprint TEXT NOT NULL,
    memo TEXT NOT NULL,
    posted_at_ms INTEGER NOT NULL,
    postings INTEGER NOT NULL CHECK (postings >= 2),
    sealed BOOLEAN NOT NULL DEFAULT 0
);

CREATE TABLE ledger_entries (
    tx_id INTEGER NOT NULL REFERENCES ledger_transactions (id),
    account_id INTEGER NOT NULL REFERENCES ledger_accounts (id),
    amount_msat INTEGER NOT NULL
        CHECK (amount_msat <> 0 AND amount_msat BETWEEN -2100000000000000000 AND 2100000000000000000),
    PRIMARY KEY (tx_id, account_id)
);

CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, tx_id);

-- A transaction is sealed in the same database transaction that wrote its entries, and only if
-- they balance to zero and are all there.
CREATE TRIGGER ledger_seal_only_balanced
BEFORE UPDATE OF sealed ON ledger_transactions
WHEN NEW.sealed = 1 AND OLD.sealed = 0
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: unbalanced or incomplete transaction')
    WHERE (SELECT COALESCE(SUM(amount_msat), 0) FROM ledger_entries WHERE tx_id = NEW.id) <> 0
       OR (SELECT COUNT(*) FROM ledger_entries WHERE tx_id = NEW.id) <> NEW.postings;
END;

-- Sealed transactions and all entries are immutable.
CREATE TRIGGER ledger_sealed_immutable
BEFORE UPDATE ON ledger_transactions
WHEN OLD.sealed = 1
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: sealed transactions are immutable');
END;

CREATE TRIGGER ledger_transactions_no_delete
BEFORE DELETE ON ledger_transactions
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: transactions are never deleted');
END;

CREATE TRIGGER ledger_entries_no_update
BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: entries are immutable');
END;

CREATE TRIGGER ledger_entries_no_delete
BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: entries are immutable');
END;

CREATE TRIGGER ledger_entries_only_unsealed
BEFORE INSERT ON ledger_entries
WHEN (SELECT sealed FROM ledger_transactions WHERE id = NEW.tx_id) = 1
BEGIN
    SELECT RAISE(ABORT, 'ledger invariant: entries added to a sealed transaction');
END;
