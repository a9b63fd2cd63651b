-- Migration 4: jobs across hosts (compute accounting and training/inference evidence), and where each
-- GPU was last seen (a chip that shows up on another host is a diversion signal).

CREATE TABLE job_usage (
    job_key               TEXT NOT NULL,
    host_id               TEXT NOT NULL,
    gpu_uuid              TEXT NOT NULL,
    gpu_name              TEXT NOT NULL,
    first_seen            INTEGER NOT NULL,
    last_seen             INTEGER NOT NULL,
    gpu_seconds           REAL NOT NULL,
    energy_joules         REAL NOT NULL,
    ops_upper             REAL NOT NULL,   -- Σ utilisation × peak dense BF16 × seconds (shared GPUs split)
    unknown_peak_seconds  REAL NOT NULL,   -- GPU-seconds on models the peak table does not know
    PRIMARY KEY (job_key, host_id, gpu_uuid)
);

CREATE TABLE jobs (
    job_key     TEXT PRIMARY KEY,
    tenant      TEXT,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    evidence    TEXT NOT NULL              -- JSON, compute::JobEvidence
);
CREATE INDEX jobs_by_tenant ON jobs (tenant, last_seen);

CREATE TABLE gpu_locations (
    uuid            TEXT PRIMARY KEY,
    host_id         TEXT NOT NULL,
    serial          TEXT NOT NULL,
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_energy_mj  INTEGER
);

-- Review: who is working on a flag, and the GPU series behind a job's timeline.
ALTER TABLE flags ADD COLUMN assignee TEXT;
CREATE INDEX report_gpus_by_uuid ON report_gpus (host_id, uuid, seq);
