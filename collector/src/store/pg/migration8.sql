-- Migration 8 for PostgreSQL (as ../migration8.sql): location (issue 19).

-- Landmarks: where each is, the key its measurement records are checked with, the address agents dial.
CREATE TABLE landmarks (
    name        TEXT PRIMARY KEY,
    lat         DOUBLE PRECISION NOT NULL,
    lon         DOUBLE PRECISION NOT NULL,
    public_key  BYTEA NOT NULL,
    address     TEXT NOT NULL,
    added_at    BIGINT NOT NULL
);

-- Where a host is registered to be: set per host (`hosts set-site`), else the site of the token that
-- enrolled it (`token_sites`, read through hosts.enroll_token_id).
ALTER TABLE hosts ADD COLUMN site_name TEXT;
ALTER TABLE hosts ADD COLUMN site_lat DOUBLE PRECISION;
ALTER TABLE hosts ADD COLUMN site_lon DOUBLE PRECISION;

CREATE TABLE token_sites (
    token_id  TEXT PRIMARY KEY,
    name      TEXT,
    lat       DOUBLE PRECISION NOT NULL,
    lon       DOUBLE PRECISION NOT NULL
);

-- Each landmark's latest signed measurement of each host (the record bytes and signature verbatim, so
-- exports and auditors can check them again). Read by host.
CREATE TABLE location_measurements (
    host_id        TEXT NOT NULL,
    landmark       TEXT NOT NULL,
    min_rtt_us     BIGINT NOT NULL,
    median_rtt_us  BIGINT NOT NULL,
    rounds         BIGINT NOT NULL,
    measured_at    BIGINT NOT NULL,
    record         BYTEA NOT NULL,
    signature      BYTEA NOT NULL,
    PRIMARY KEY (host_id, landmark)
);
