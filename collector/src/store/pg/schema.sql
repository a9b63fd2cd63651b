-- Migration 1 for PostgreSQL: the same tables, columns and keys as ../schema.sql, in PostgreSQL's types
-- (every integer 64-bit, bytes as BYTEA). Append-only: never edit a shipped migration, add the next.
-- host_id leads every key of the per-host tables, so they can be distributed by host (see deploy/README.md).

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    hash        BYTEA NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    tenant      TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT,
    created_by  TEXT NOT NULL
);

CREATE TABLE hosts (
    host_id          TEXT PRIMARY KEY,
    hostname         TEXT NOT NULL,
    machine_id       TEXT NOT NULL,
    tenant           TEXT,
    public_key       BYTEA NOT NULL,
    key_id           BYTEA NOT NULL UNIQUE,
    enrolled_at      BIGINT NOT NULL,
    enroll_token_id  TEXT NOT NULL,
    facts            TEXT NOT NULL,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_hash        BYTEA,
    last_seen        BIGINT,
    revoked_at       BIGINT
);

CREATE TABLE reports (
    host_id        TEXT NOT NULL REFERENCES hosts(host_id),
    seq            BIGINT NOT NULL,
    report         BYTEA NOT NULL,
    signature      BYTEA NOT NULL,
    key_id         BYTEA NOT NULL,
    report_sha256  BYTEA NOT NULL,
    received_at    BIGINT NOT NULL,
    agent_time     BIGINT NOT NULL,
    window_start   BIGINT NOT NULL,
    window_end     BIGINT NOT NULL,
    nonce_fresh    BIGINT NOT NULL,
    PRIMARY KEY (host_id, seq)
);

CREATE TABLE report_gpus (
    host_id       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    gpu_index     BIGINT NOT NULL,
    uuid          TEXT NOT NULL,
    serial        TEXT NOT NULL,
    name          TEXT NOT NULL,
    pci_bus_id    TEXT NOT NULL,
    memory_total  BIGINT NOT NULL,
    memory_used   BIGINT,
    util_gpu      BIGINT,
    power_mw      BIGINT,
    energy_mj     BIGINT,
    lost          BIGINT NOT NULL,
    PRIMARY KEY (host_id, seq, gpu_index)
);
CREATE INDEX report_gpus_uuid ON report_gpus (uuid);

CREATE TABLE report_processes (
    host_id       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    pid           BIGINT NOT NULL,
    start_time    BIGINT,
    gpu_uuids     TEXT NOT NULL,
    cmdline       TEXT NOT NULL,
    container_id  TEXT,
    pod_uid       TEXT,
    slurm_job_id  TEXT,
    uid           BIGINT,
    exe           TEXT NOT NULL,
    PRIMARY KEY (host_id, seq, pid)
);

CREATE TABLE flags (
    id             BIGSERIAL PRIMARY KEY,
    rule           TEXT NOT NULL,
    severity       TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',
    host_id        TEXT NOT NULL,
    tenant         TEXT,
    job_key        TEXT NOT NULL,
    summary        TEXT NOT NULL,
    pid            BIGINT,
    gpu_uuids      TEXT NOT NULL,
    evidence       TEXT NOT NULL,
    policy_digest  TEXT NOT NULL,
    first_seq      BIGINT NOT NULL,
    last_seq       BIGINT NOT NULL,
    occurrences    BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    UNIQUE (rule, host_id, job_key)
);

CREATE TABLE audit (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE FUNCTION gpuattest_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION gpuattest_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION gpuattest_audit_append_only();
