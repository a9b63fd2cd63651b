//! Location: landmarks, registered sites, and each landmark's latest signed measurement of each host
//! (migration 8).

use serde::Serialize;

use super::db::params;
use super::{Result, Store, StoreError, audit_tx, sql};

/// A registered landmark.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LandmarkRow {
    /// Its name (what its records say).
    pub name: String,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// Raw Ed25519 public key.
    #[serde(skip)]
    pub public_key: Vec<u8>,
    /// The key as agents and auditors see it: SHA-256 hex.
    pub key_id: String,
    /// HOST:PORT agents dial.
    pub address: String,
}

/// Where a host is registered to be.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Site {
    /// The site's name, where one was given.
    pub name: Option<String>,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
}

/// A landmark's latest measurement of a host, with the signed record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Measurement {
    /// The landmark.
    pub landmark: String,
    /// Minimum round trip, microseconds.
    pub min_rtt_us: u64,
    /// Median round trip, microseconds.
    pub median_rtt_us: u64,
    /// Challenges timed.
    pub rounds: u32,
    /// When the landmark measured, Unix ms.
    pub measured_at: i64,
    /// The `LocationRecord` bytes the landmark signed.
    #[serde(skip)]
    pub record: Vec<u8>,
    /// The landmark's signature.
    #[serde(skip)]
    pub signature: Vec<u8>,
    /// `key` (answered with the host key) or `gpu` (answered with a GPU's attestation report).
    pub kind: String,
    /// The GPU that answered, for `gpu`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gpu_uuid: String,
    /// Its product name as the host's report gave it (for the policy's attestation-time floor).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gpu_model: String,
}

/// Measurement kinds.
pub mod kind {
    /// Answered with the host key.
    pub const KEY: &str = "key";
    /// Answered with a GPU's attestation report.
    pub const GPU: &str = "gpu";
}

impl LandmarkRow {
    /// A landmark to register; its key id is the SHA-256 of the raw public key.
    pub fn new(name: &str, lat: f64, lon: f64, public_key: Vec<u8>, address: String) -> LandmarkRow {
        LandmarkRow {
            name: name.to_string(),
            lat,
            lon,
            key_id: gpuattest_proto::hex(&gpuattest_proto::sha256(&public_key)),
            public_key,
            address,
        }
    }
}

fn valid_position(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

impl Store {
    /// Registers (or replaces) a landmark.
    ///
    /// # Errors
    /// [`StoreError::Refused`] for an impossible position or a key that is not 32 bytes.
    pub fn add_landmark(&self, l: &LandmarkRow, actor: &str, now: i64) -> Result<()> {
        if !valid_position(l.lat, l.lon) || l.public_key.len() != 32 || l.name.is_empty() || l.name.len() > 64 {
            return Err(StoreError::Refused(
                "a landmark needs a name of 1 to 64 characters, --lat -90..90, --lon -180..180 and an Ed25519 key"
                    .into(),
            ));
        }
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        tx.execute("DELETE FROM landmarks WHERE name = ?1", params![&l.name]).map_err(sql("replace landmark"))?;
        tx.execute(
            "INSERT INTO landmarks (name, lat, lon, public_key, address, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![&l.name, l.lat, l.lon, &l.public_key, &l.address, now],
        )
        .map_err(sql("insert landmark"))?;
        audit_tx(
            &mut tx,
            now,
            actor,
            "landmark.add",
            &l.name,
            &format!("{} {} {} key {}", l.lat, l.lon, l.address, l.key_id),
        )?;
        tx.commit().map_err(sql("commit landmark"))
    }

    /// Every registered landmark, by name.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn landmarks(&self) -> Result<Vec<LandmarkRow>> {
        self.reader()
            .rows("SELECT name, lat, lon, public_key, address FROM landmarks ORDER BY name", params![], |r| {
                let public_key: Vec<u8> = r.get(3)?;
                Ok(LandmarkRow {
                    name: r.get(0)?,
                    lat: r.get(1)?,
                    lon: r.get(2)?,
                    key_id: gpuattest_proto::hex(&gpuattest_proto::sha256(&public_key)),
                    public_key,
                    address: r.get(4)?,
                })
            })
            .map_err(sql("list landmarks"))
    }

    /// Registers where a host is to be.
    ///
    /// # Errors
    /// [`StoreError::Refused`] for an impossible position or an unknown host.
    pub fn set_site(&self, host_id: &str, site: &Site, actor: &str, now: i64) -> Result<()> {
        if !valid_position(site.lat, site.lon) {
            return Err(StoreError::Refused("--lat must be within -90..90 and --lon within -180..180".into()));
        }
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let n = tx
            .execute(
                "UPDATE hosts SET site_name = ?2, site_lat = ?3, site_lon = ?4 WHERE host_id = ?1",
                params![host_id, &site.name, site.lat, site.lon],
            )
            .map_err(sql("set site"))?;
        if n == 0 {
            return Err(StoreError::Refused(format!("no host {host_id}; `hosts list` shows the enrolled ones")));
        }
        audit_tx(&mut tx, now, actor, "host.set-site", host_id, &format!("{} {}", site.lat, site.lon))?;
        tx.commit().map_err(sql("commit site"))
    }

    /// Gives an enroll token a site: the hosts it enrolls are registered there.
    ///
    /// # Errors
    /// [`StoreError::Refused`] for an impossible position.
    pub fn set_token_site(&self, token_id: &str, site: &Site) -> Result<()> {
        if !valid_position(site.lat, site.lon) {
            return Err(StoreError::Refused(
                "--site-lat must be within -90..90 and --site-lon within -180..180".into(),
            ));
        }
        self.conn()
            .execute(
                "INSERT INTO token_sites (token_id, name, lat, lon) VALUES (?1, ?2, ?3, ?4)",
                params![token_id, &site.name, site.lat, site.lon],
            )
            .map_err(sql("token site"))?;
        Ok(())
    }

    /// Where a host is registered: its own site, else its enroll token's.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn site(&self, host_id: &str) -> Result<Option<Site>> {
        let row = self
            .reader()
            .row(
                "SELECT COALESCE(h.site_name, t.name), COALESCE(h.site_lat, t.lat), COALESCE(h.site_lon, t.lon) \
                 FROM hosts h LEFT JOIN token_sites t ON t.token_id = h.enroll_token_id WHERE h.host_id = ?1",
                params![host_id],
                |r| Ok((r.get::<Option<String>>(0)?, r.get::<Option<f64>>(1)?, r.get::<Option<f64>>(2)?)),
            )
            .map_err(sql("read site"))?;
        Ok(match row {
            Some((name, Some(lat), Some(lon))) => Some(Site { name, lat, lon }),
            _ => None,
        })
    }

    /// Each landmark's latest measurement of a host.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn measurements(&self, host_id: &str) -> Result<Vec<Measurement>> {
        self.reader()
            .rows(
                "SELECT landmark, min_rtt_us, median_rtt_us, rounds, measured_at, record, signature, 'key', '', '' \
                 FROM location_measurements WHERE host_id = ?1 \
                 UNION ALL SELECT landmark, min_rtt_us, median_rtt_us, rounds, measured_at, record, signature, 'gpu', \
                   gpu_uuid, gpu_model FROM location_gpu_measurements WHERE host_id = ?1 ORDER BY 1, 8",
                params![host_id],
                |r| {
                    Ok(Measurement {
                        landmark: r.get(0)?,
                        min_rtt_us: r.u64(1)?,
                        median_rtt_us: r.u64(2)?,
                        rounds: r.get(3)?,
                        measured_at: r.get(4)?,
                        record: r.get(5)?,
                        signature: r.get(6)?,
                        kind: r.get(7)?,
                        gpu_uuid: r.get(8)?,
                        gpu_model: r.get(9)?,
                    })
                },
            )
            .map_err(sql("read measurements"))
    }

    /// Whether any GPU of the host has proven its identity with attestation evidence (it is in
    /// confidential-computing mode: its location must then be proven by the GPUs too).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn has_attesting_gpus(&self, host_id: &str) -> Result<bool> {
        let n: Vec<i64> = self
            .reader()
            .rows("SELECT 1 FROM gpu_devices WHERE host_id = ?1 LIMIT 1", params![host_id], |r| r.get(0))
            .map_err(sql("read gpu devices"))?;
        Ok(!n.is_empty())
    }

    /// Keeps verified measurements of a host, each replacing an older one from the same landmark.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn put_measurements(&self, host_id: &str, ms: &[Measurement]) -> Result<()> {
        if ms.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        for m in ms.iter().filter(|m| m.kind == kind::GPU) {
            tx.execute(
                "INSERT INTO location_gpu_measurements (host_id, landmark, gpu_uuid, gpu_model, min_rtt_us, median_rtt_us, rounds, measured_at, record, signature) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (host_id, landmark) DO UPDATE SET gpu_uuid = excluded.gpu_uuid, gpu_model = excluded.gpu_model, \
                   min_rtt_us = excluded.min_rtt_us, median_rtt_us = excluded.median_rtt_us, rounds = excluded.rounds, \
                   measured_at = excluded.measured_at, record = excluded.record, signature = excluded.signature \
                 WHERE excluded.measured_at > location_gpu_measurements.measured_at",
                params![host_id, &m.landmark, &m.gpu_uuid, &m.gpu_model, m.min_rtt_us as i64, m.median_rtt_us as i64, m.rounds, m.measured_at, &m.record, &m.signature],
            )
            .map_err(sql("keep GPU measurement"))?;
        }
        for m in ms.iter().filter(|m| m.kind != kind::GPU) {
            tx.execute(
                "INSERT INTO location_measurements (host_id, landmark, min_rtt_us, median_rtt_us, rounds, measured_at, record, signature) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (host_id, landmark) DO UPDATE SET min_rtt_us = excluded.min_rtt_us, \
                   median_rtt_us = excluded.median_rtt_us, rounds = excluded.rounds, measured_at = excluded.measured_at, \
                   record = excluded.record, signature = excluded.signature \
                 WHERE excluded.measured_at > location_measurements.measured_at",
                params![host_id, &m.landmark, m.min_rtt_us as i64, m.median_rtt_us as i64, m.rounds, m.measured_at, &m.record, &m.signature],
            )
            .map_err(sql("keep measurement"))?;
        }
        tx.commit().map_err(sql("commit measurements"))
    }
}
