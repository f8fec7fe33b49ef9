-- Credited work as it is accepted (shares, delivered hashrate), ingested idempotently by
-- (source, seq): the input of PPLNS/TIDES windows and delivery measurement. Work is an exact u128
-- number of hashes split into two non-negative 63-bit halves: work = work_hi * 2^63 + work_lo.
CREATE TABLE work_log (
    source TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
    seq INTEGER NOT NULL CHECK (seq >= 0),
    owner TEXT NOT NULL CHECK (length(owner) BETWEEN 1 AND 200),
    work_hi INTEGER NOT NULL CHECK (work_hi >= 0),
    work_lo INTEGER NOT NULL CHECK (work_lo >= 0),
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (source, seq)
) WITHOUT ROWID;
