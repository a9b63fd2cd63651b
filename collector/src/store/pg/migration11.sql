-- Migration 11: fewer rows rewritten per report (issue 17).
--
-- A GPU's energy counter moves from its location row to its host's row. Each
-- report's energy is the counter's delta since the host's previous report, so the counters of the
-- host's latest report are kept with its chain position, in the row every report updates anyway, as a
-- JSON object {"GPU UUID": millijoules}. gpu_locations is then written only when a GPU appears, moves,
-- changes serial, or was last written there a minute ago, not for every report (8 row updates a report
-- on an 8-GPU host before). Its last_energy_mj is no longer read.
ALTER TABLE hosts ADD COLUMN gpu_energy TEXT;

-- A job's evidence counters (utilisation samples and GPU-windows by kind; see classify.rs) are added
-- here, to the usage row each report updates anyway, as commutative counters: the job's evidence is
-- the JSON in jobs.evidence (lists, largest values, step periods, and the counters it held before this
-- migration) plus these columns summed over the job's rows. jobs.evidence is then rewritten only when
-- its slow-changing part changes, and jobs.last_seen (the job list's order) once a minute; readers
-- take the exact last sighting from job_usage.
ALTER TABLE job_usage ADD COLUMN util_samples BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN util_sum DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN util_sq_sum DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN windows BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN rhythmic BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN synced BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN bursty BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN steady BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_usage ADD COLUMN memory_bound BIGINT NOT NULL DEFAULT 0;
