-- Migration 6: a decided flag no longer absorbs new evidence silently. `kind` is what the evidence is
-- about (the rule and, where it has them, the developer, family or threshold); `after_decision` counts
-- occurrences since the last decision; a flag re-opens when evidence of another kind arrives after a
-- decision (or on any new occurrence, where the policy says so), counted in `reopened`, last at
-- `reopened_at`.

ALTER TABLE flags ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE flags ADD COLUMN after_decision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flags ADD COLUMN reopened INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flags ADD COLUMN reopened_at INTEGER;

-- The collector looks for hosts revoked since its last look every few seconds, to close their streams.
CREATE INDEX hosts_revoked_at ON hosts (revoked_at) WHERE revoked_at IS NOT NULL;

-- mTLS: the SHA-256 of the public key of the client certificate a host enrolled with; its streams must
-- present the same key, and no second live host may enroll with it.
ALTER TABLE hosts ADD COLUMN client_key_sha256 BLOB;

-- The transparency log's perfect subtrees of 256 leaves and more, remembered once computed (the log
-- is append-only, so they never change): an inclusion proof then costs O(log n) lookups, not a pass
-- over the whole log. Filled by exports as they need them.
CREATE TABLE log_subtrees (
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (level, idx)
);
