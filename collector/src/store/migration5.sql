-- Migration 5: fewer index pages written per report. Every index whose key does not follow the order
-- reports arrive in costs one page per GPU per commit in the write-ahead log (a real fleet's reports
-- come from thousands of hosts, so those pages are never shared within a batch): the two indexes on
-- report_gpus by UUID were 16 of the ~25 pages each 8-GPU report wrote. GPU series are now found
-- through the report's time on its host (one page per report), then by the report's own key.
-- A GPU's current host is in gpu_locations; its full history by UUID alone is a scan of report_gpus.

DROP INDEX report_gpus_uuid;
DROP INDEX report_gpus_by_uuid;
CREATE INDEX IF NOT EXISTS reports_by_host_time ON reports (host_id, window_end);
