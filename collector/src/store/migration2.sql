-- Migration 2: signed gap records, and each host's observation interval (for silence detection).

CREATE TABLE gap_records (
    host_id     TEXT NOT NULL,
    record_seq  INTEGER NOT NULL,   -- the report that carried the gap record
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (host_id, record_seq)
);

ALTER TABLE hosts ADD COLUMN interval_ms INTEGER;
ALTER TABLE hosts ADD COLUMN revoked_reason TEXT;
