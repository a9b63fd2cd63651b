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

-- The transparency log: every accepted report's digest, in acceptance order (idx = rowid - 1).
CREATE TABLE log_leaves (
    idx        INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    leaf_hash  BLOB NOT NULL,
    UNIQUE (host_id, seq)
);

-- Signed tree heads the collector has published.
CREATE TABLE log_heads (
    tree_size  INTEGER PRIMARY KEY,
    root_hash  BLOB NOT NULL,
    signature  BLOB NOT NULL,
    signed_at  INTEGER NOT NULL
);
