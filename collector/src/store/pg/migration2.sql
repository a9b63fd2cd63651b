-- Migration 2 for PostgreSQL (as ../migration2.sql): signed gap records, observation intervals,
-- retired keys, the transparency log and its signed heads.

CREATE TABLE gap_records (
    host_id     TEXT NOT NULL,
    record_seq  BIGINT NOT NULL,
    first_seq   BIGINT NOT NULL,
    last_seq    BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (host_id, record_seq)
);

ALTER TABLE hosts ADD COLUMN interval_ms BIGINT;
ALTER TABLE hosts ADD COLUMN revoked_reason TEXT;

CREATE TABLE host_keys (
    host_id            TEXT NOT NULL,
    key_id             BYTEA NOT NULL,
    public_key         BYTEA NOT NULL,
    valid_through_seq  BIGINT NOT NULL,
    retired_at         BIGINT NOT NULL,
    PRIMARY KEY (host_id, key_id)
);

-- idx is assigned by the committing collector (MAX + 1 under the store's write lock): dense, in
-- commit order across replicas, as the Merkle tree needs.
CREATE TABLE log_leaves (
    idx        BIGINT PRIMARY KEY,
    host_id    TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    leaf_hash  BYTEA NOT NULL,
    UNIQUE (host_id, seq)
);

CREATE TABLE log_heads (
    tree_size  BIGINT PRIMARY KEY,
    root_hash  BYTEA NOT NULL,
    signature  BYTEA NOT NULL,
    signed_at  BIGINT NOT NULL
);
