-- Turn gpuattest's `reports` table into one range-partitioned by received_at (Unix ms), on PostgreSQL.
-- Run once, with every collector replica stopped, after the collector has created its schema
-- (`gpuattest-collector --database URL hosts list`): psql "$URL" -v ON_ERROR_STOP=1 -f partition-reports.sql
-- The store's suite runs this very file before its tests (collector/src/store/tests.rs), so it stays true.
--
-- A partitioned table's primary key must include the partition key, so the key becomes
-- (host_id, seq, received_at). That (host_id, seq) stays unique is the collector's own guarantee: every
-- report commit checks for the pair under the store's write lock before inserting it.

BEGIN;
ALTER TABLE reports RENAME TO reports_unpartitioned;
ALTER TABLE reports_unpartitioned RENAME CONSTRAINT reports_pkey TO reports_unpartitioned_pkey;
-- The same columns as the table it replaces (so the file stays right as migrations add columns).
CREATE TABLE reports (LIKE reports_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (received_at);
ALTER TABLE reports ADD PRIMARY KEY (host_id, seq, received_at);
ALTER TABLE reports ADD FOREIGN KEY (host_id) REFERENCES hosts(host_id);
-- The lookups the collector makes by (host_id, seq) alone.
CREATE INDEX reports_by_host_seq ON reports (host_id, seq);
-- A host's reports by time (the GPU series on the review pages), as migration 5 creates it.
CREATE INDEX IF NOT EXISTS reports_by_host_time ON reports (host_id, window_end);
-- Anything outside the monthly partitions lands here; add months ahead of time (below) so it stays small.
CREATE TABLE reports_default PARTITION OF reports DEFAULT;
INSERT INTO reports SELECT * FROM reports_unpartitioned;
DROP TABLE reports_unpartitioned;
COMMIT;

-- Each month, ahead of time (bounds in Unix ms, UTC), for example December 2026:
--   CREATE TABLE reports_2026_12 PARTITION OF reports FOR VALUES FROM (1796083200000) TO (1798761600000);
-- Archive a month by detaching it (evidence is never deleted by gpuattest):
--   ALTER TABLE reports DETACH PARTITION reports_2026_12;
