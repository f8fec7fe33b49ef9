-- PPS/FPPS: the pool pays every share at once from platform/pool-reserve and refills it with the
-- blocks it finds, so the reserve may go negative (the operator's capital carrying the variance).
-- Accounts made before this version were created with allow_negative = false. Same in
-- ../sqlite/0004_pool_reserve.sql.
UPDATE ledger_accounts SET allow_negative = TRUE WHERE name = 'platform/pool-reserve';
