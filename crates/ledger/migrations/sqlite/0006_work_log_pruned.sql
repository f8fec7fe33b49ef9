-- Retention of the work log: records below `below_seq` of a source were deleted on purpose
-- (`Ledger::prune_work`). A window read that needs work from below that mark is refused
-- (`LedgerError::WorkPruned`) rather than computed over less work than it asked for.
CREATE TABLE work_log_pruned (
    source TEXT PRIMARY KEY CHECK (length(source) BETWEEN 1 AND 64),
    below_seq INTEGER NOT NULL CHECK (below_seq >= 0)
) WITHOUT ROWID;
