-- Migration 10: the transparency log is sequenced apart from the commit (issue 17). A report's commit
-- appends its leaf here, under its host's row alone; the sequencer (one per store: the elected replica
-- on PostgreSQL) moves queued leaves into log_leaves in batches, assigning dense indexes, and deletes
-- them from the queue in the same transaction, so each leaf is sequenced exactly once. id orders the
-- queue (a host's leaves in its commit order); nothing else reads it.
CREATE TABLE log_queue (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    leaf_hash  BLOB NOT NULL
);

-- Where in its host's chain each job used each GPU, so the review timeline reads a bounded range of the
-- host's reports by sequence number (the primary key) instead of searching them by time. NULL for
-- usage recorded before this migration (the timeline falls back to time for those).
ALTER TABLE job_usage ADD COLUMN first_seq BIGINT;
ALTER TABLE job_usage ADD COLUMN last_seq BIGINT;
