-- Migration 9: GPU-bound location measurements (issue 19). A landmark's latest GPU-bound
-- measurement of each host: answered with a GPU's attestation report over a nonce derived from the
-- landmark's challenge, so the chip, not only the host key, was timed. The signed record (with the
-- attestation in it) is kept verbatim for exports and auditors.
CREATE TABLE location_gpu_measurements (
    host_id        TEXT NOT NULL,
    landmark       TEXT NOT NULL,
    gpu_uuid       TEXT NOT NULL,
    gpu_model      TEXT NOT NULL,
    min_rtt_us     INTEGER NOT NULL,
    median_rtt_us  INTEGER NOT NULL,
    rounds         INTEGER NOT NULL,
    measured_at    INTEGER NOT NULL,
    record         BLOB NOT NULL,
    signature      BLOB NOT NULL,
    PRIMARY KEY (host_id, landmark)
);
