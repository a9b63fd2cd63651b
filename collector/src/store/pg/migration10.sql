-- Migration 10: the transparency log is sequenced apart from the commit (issue 17). A report's commit
-- appends its leaf here, under its host's row alone (no store-wide lock); the sequencer (the replica
-- holding the sequencer's advisory lock) moves queued leaves into log_leaves in batches, assigning
-- dense indexes under the log's own lock, and deletes them from the queue in the same transaction, so
-- each leaf is sequenced exactly once. id orders the queue (a host's leaves in its commit order);
-- nothing else reads it.
CREATE TABLE log_queue (
    id         BIGSERIAL PRIMARY KEY,
    host_id    TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    leaf_hash  BYTEA NOT NULL
);

-- The signed bytes are protobuf (hardly compressible), 2-15 KB: kept in the row, uncompressed, up to
-- a page, rather than compressed and moved to the TOAST table (a second heap and index insert) on
-- every commit.
ALTER TABLE reports ALTER COLUMN report SET STORAGE EXTERNAL;
ALTER TABLE reports SET (toast_tuple_target = 8160);

-- Where in its host's chain each job used each GPU, so the review timeline reads a bounded range of the
-- host's reports by sequence number (the primary key) instead of searching them by time. NULL for
-- usage recorded before this migration (the timeline falls back to time for those).
ALTER TABLE job_usage ADD COLUMN first_seq BIGINT;
ALTER TABLE job_usage ADD COLUMN last_seq BIGINT;
