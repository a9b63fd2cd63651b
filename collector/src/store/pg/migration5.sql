-- Migration 5 for PostgreSQL (as ../migration5.sql): fewer index pages written per report; GPU series
-- are found through the report's time on its host. IF NOT EXISTS: deploy/postgres/partition-reports.sql
-- may have created the index on a partitioned reports table already.

DROP INDEX report_gpus_uuid;
DROP INDEX report_gpus_by_uuid;
CREATE INDEX IF NOT EXISTS reports_by_host_time ON reports (host_id, window_end);
