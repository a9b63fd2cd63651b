-- Migration 6 for PostgreSQL (as ../migration6.sql): a decided flag no longer absorbs new evidence
-- silently.

ALTER TABLE flags ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE flags ADD COLUMN after_decision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE flags ADD COLUMN reopened BIGINT NOT NULL DEFAULT 0;
ALTER TABLE flags ADD COLUMN reopened_at BIGINT;

CREATE INDEX hosts_revoked_at ON hosts (revoked_at) WHERE revoked_at IS NOT NULL;

-- mTLS: the SHA-256 of the public key of the client certificate a host enrolled with; its streams must
-- present the same key, and no second live host may enroll with it.
ALTER TABLE hosts ADD COLUMN client_key_sha256 BYTEA;

-- The transparency log's perfect subtrees of 256 leaves and more, remembered once computed (the log
-- is append-only, so they never change): an inclusion proof then costs O(log n) lookups, not a pass
-- over the whole log. Filled by exports as they need them.
CREATE TABLE log_subtrees (
    level  BIGINT NOT NULL,
    idx    BIGINT NOT NULL,
    hash   BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);
