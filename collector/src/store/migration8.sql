-- Migration 8: location (issue 19).

-- Landmarks: where each is, the key its measurement records are checked with, the address agents dial.
CREATE TABLE landmarks (
    name        TEXT PRIMARY KEY,
    lat         REAL NOT NULL,
    lon         REAL NOT NULL,
    public_key  BLOB NOT NULL,
    address     TEXT NOT NULL,
    added_at    INTEGER NOT NULL
);

-- Where a host is registered to be: set per host (`hosts set-site`), else the site of the token that
-- enrolled it (`token_sites`, read through hosts.enroll_token_id).
ALTER TABLE hosts ADD COLUMN site_name TEXT;
ALTER TABLE hosts ADD COLUMN site_lat REAL;
ALTER TABLE hosts ADD COLUMN site_lon REAL;

CREATE TABLE token_sites (
    token_id  TEXT PRIMARY KEY,
    name      TEXT,
    lat       REAL NOT NULL,
    lon       REAL NOT NULL
);

-- Each landmark's latest signed measurement of each host (the record bytes and signature verbatim, so
-- exports and auditors can check them again). Read by host.
CREATE TABLE location_measurements (
    host_id        TEXT NOT NULL,
    landmark       TEXT NOT NULL,
    min_rtt_us     INTEGER NOT NULL,
    median_rtt_us  INTEGER NOT NULL,
    rounds         INTEGER NOT NULL,
    measured_at    INTEGER NOT NULL,
    record         BLOB NOT NULL,
    signature      BLOB NOT NULL,
    PRIMARY KEY (host_id, landmark)
);
