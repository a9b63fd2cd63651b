-- Migration 7: GPU attestation evidence (issue 18).

-- Every nonce the collector issued, to which host and when; a report whose GPU evidence answers it
-- marks it used (`used_seq`), so the same evidence cannot be sent again.
CREATE TABLE attestation_nonces (
    nonce      BLOB PRIMARY KEY,
    host_id    TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    used_seq   INTEGER
);

-- Each GPU's evidence verdict in a report (`detail` is the JSON of collector::evidence::GpuEvidence).
-- Read by host (hosts list, exports) and by report (the review page).
CREATE TABLE gpu_evidence (
    host_id        TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    gpu_uuid       TEXT NOT NULL,
    state          TEXT NOT NULL,
    device_serial  TEXT,
    detail         TEXT NOT NULL,
    PRIMARY KEY (host_id, seq, gpu_uuid)
);

-- Where each device identity (the serial in its NVIDIA certificate) was last proven: a chip proven
-- on another host than before has moved. Looked up by device serial at commit.
CREATE TABLE gpu_devices (
    device_serial  TEXT PRIMARY KEY,
    host_id        TEXT NOT NULL,
    gpu_uuid       TEXT NOT NULL,
    first_seen     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL
);
