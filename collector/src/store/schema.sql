-- Migration 1: the first schema. Migrations are append-only: never edit a shipped one, add the next.

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,      -- first 12 hex digits of the hash; shown to operators
    hash        BLOB NOT NULL UNIQUE,  -- SHA-256 of the token; the token itself is never stored
    role        TEXT NOT NULL,
    tenant      TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER,
    created_by  TEXT NOT NULL
);

CREATE TABLE hosts (
    host_id          TEXT PRIMARY KEY,
    hostname         TEXT NOT NULL,
    machine_id       TEXT NOT NULL,
    tenant           TEXT,
    public_key       BLOB NOT NULL,
    key_id           BLOB NOT NULL UNIQUE,
    enrolled_at      INTEGER NOT NULL,
    enroll_token_id  TEXT NOT NULL,
    facts            TEXT NOT NULL,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    last_hash        BLOB,
    last_seen        INTEGER,
    revoked_at       INTEGER
);

-- The signed bytes verbatim (re-verifiable later) beside decoded fields. One row per (host, seq).
CREATE TABLE reports (
    host_id        TEXT NOT NULL REFERENCES hosts(host_id),
    seq            INTEGER NOT NULL,
    report         BLOB NOT NULL,
    signature      BLOB NOT NULL,
    key_id         BLOB NOT NULL,
    report_sha256  BLOB NOT NULL,
    received_at    INTEGER NOT NULL,
    agent_time     INTEGER NOT NULL,
    window_start   INTEGER NOT NULL,
    window_end     INTEGER NOT NULL,
    nonce_fresh    INTEGER NOT NULL,
    PRIMARY KEY (host_id, seq)
);

CREATE TABLE report_gpus (
    host_id       TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    gpu_index     INTEGER NOT NULL,
    uuid          TEXT NOT NULL,
    serial        TEXT NOT NULL,
    name          TEXT NOT NULL,
    pci_bus_id    TEXT NOT NULL,
    memory_total  INTEGER NOT NULL,
    memory_used   INTEGER,
    util_gpu      INTEGER,
    power_mw      INTEGER,
    energy_mj     INTEGER,
    lost          INTEGER NOT NULL,
    PRIMARY KEY (host_id, seq, gpu_index)
);
CREATE INDEX report_gpus_uuid ON report_gpus (uuid);

CREATE TABLE report_processes (
    host_id       TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    pid           INTEGER NOT NULL,
    start_time    INTEGER,
    gpu_uuids     TEXT NOT NULL,
    cmdline       TEXT NOT NULL,
    container_id  TEXT,
    pod_uid       TEXT,
    slurm_job_id  TEXT,
    uid           INTEGER,
    exe           TEXT NOT NULL,
    PRIMARY KEY (host_id, seq, pid)
);

-- One open flag per (rule, host, job); updated as evidence grows.
CREATE TABLE flags (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    rule           TEXT NOT NULL,
    severity       TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',
    host_id        TEXT NOT NULL,
    tenant         TEXT,
    job_key        TEXT NOT NULL,
    summary        TEXT NOT NULL,
    pid            INTEGER,
    gpu_uuids      TEXT NOT NULL,
    evidence       TEXT NOT NULL,
    policy_digest  TEXT NOT NULL,
    first_seq      INTEGER NOT NULL,
    last_seq       INTEGER NOT NULL,
    occurrences    INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (rule, host_id, job_key)
);

-- Append-only: who did what, when.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
