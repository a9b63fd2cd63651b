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

-- Retired keys: reports up to valid_through_seq still verify against them.
CREATE TABLE host_keys (
    host_id            TEXT NOT NULL,
    key_id             BLOB NOT NULL,
    public_key         BLOB NOT NULL,
    valid_through_seq  INTEGER NOT NULL,
    retired_at         INTEGER NOT NULL,
    PRIMARY KEY (host_id, key_id)
);
