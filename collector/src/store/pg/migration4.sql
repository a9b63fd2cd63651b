-- Migration 4 for PostgreSQL (as ../migration4.sql): jobs across hosts, GPU locations, flag assignees.

CREATE TABLE job_usage (
    job_key               TEXT NOT NULL,
    host_id               TEXT NOT NULL,
    gpu_uuid              TEXT NOT NULL,
    gpu_name              TEXT NOT NULL,
    first_seen            BIGINT NOT NULL,
    last_seen             BIGINT NOT NULL,
    gpu_seconds           DOUBLE PRECISION NOT NULL,
    energy_joules         DOUBLE PRECISION NOT NULL,
    ops_upper             DOUBLE PRECISION NOT NULL,
    unknown_peak_seconds  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_key, host_id, gpu_uuid)
);

CREATE TABLE jobs (
    job_key     TEXT PRIMARY KEY,
    tenant      TEXT,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    evidence    TEXT NOT NULL
);
CREATE INDEX jobs_by_tenant ON jobs (tenant, last_seen);

CREATE TABLE gpu_locations (
    uuid            TEXT PRIMARY KEY,
    host_id         TEXT NOT NULL,
    serial          TEXT NOT NULL,
    first_seen      BIGINT NOT NULL,
    last_seen       BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    last_energy_mj  BIGINT
);

ALTER TABLE flags ADD COLUMN assignee TEXT;
CREATE INDEX report_gpus_by_uuid ON report_gpus (host_id, uuid, seq);
