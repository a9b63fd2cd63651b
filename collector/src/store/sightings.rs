//! Where each GPU was last seen (`gpu_locations`) and each host's GPU energy counters (`hosts.gpu_energy`),
//! as a commit group reads, moves and writes them: a GPU seen on a second host is noticed in the same
//! transaction that stores the report, and each report's energy is its counters' delta since its host's
//! report before.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gpuattest_proto::pb;

use super::db::{Db, params};
use super::jobs::MovedGpu;
use super::{Result, sql};

/// How stale a stored `last_seen` may grow: a GPU's location row is written when the GPU appears, moves
/// or changes serial, a job's row when its evidence's slow part changes, and otherwise each once this
/// long after its last write, not for every report.
pub(super) const SIGHTING_REFRESH_MS: i64 = 60_000;

/// Where a GPU was last seen, as stored and then as the group moves it.
#[derive(Clone)]
pub(super) struct GpuAt {
    host: String,
    serial: String,
    /// Its last sighting: exact in memory (the group's, or the embedded store's running state's), up to
    /// [`SIGHTING_REFRESH_MS`] behind as read from the database.
    last_seen: i64,
    /// The `last_seen` its row holds.
    stored_seen: i64,
    /// What the group writes for it: set when it appears, moves, changes serial or is due a refresh.
    write: Option<GpuWrite>,
}

/// A GPU location the group writes.
#[derive(Clone)]
struct GpuWrite {
    /// When it arrived where it is now: the move's time where the group moved it (written over the
    /// stored `first_seen`), else its first sighting in the group (kept only for a new row).
    first_seen: i64,
    moved: bool,
    last_seq: u64,
}

/// A commit group's sightings: the GPUs its reports name, as stored (or as the running state holds
/// them) and as the group moves them, and its hosts' energy counters.
pub(super) struct Sightings {
    pub(super) gpus: HashMap<String, GpuAt>,
    /// Each host's GPU energy counters in its latest report: as stored before the group, then the
    /// group's (the next report's energy is the delta).
    counters: HashMap<String, HashMap<String, i64>>,
}

/// The energy counters of a report's GPUs (UUID to millijoules), which the next report of its host
/// takes its energy from: kept with the host's position as a JSON object. A lost GPU, or one without
/// a UUID or counter, has none.
fn counters(r: &pb::UsageReport) -> impl Iterator<Item = (&String, i64)> {
    r.gpus.iter().filter(|g| !g.uuid.is_empty() && !g.lost).filter_map(|g| Some((&g.uuid, g.energy_mj? as i64)))
}

/// [`counters`] as stored in `hosts.gpu_energy`.
pub(super) fn counters_json(r: &pb::UsageReport) -> String {
    serde_json::to_string(&counters(r).collect::<BTreeMap<_, _>>()).unwrap_or_default()
}

impl Sightings {
    /// The group's hosts' counters as stored (`hosts.gpu_energy`, by host); no GPU yet.
    pub(super) fn new(counters: &HashMap<&str, Option<&str>>) -> Sightings {
        Sightings {
            gpus: HashMap::new(),
            // Written by this store (a row that fails to parse counts as none: power x time instead).
            counters: counters
                .iter()
                .map(|(host, json)| {
                    let parsed = json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
                    ((*host).to_string(), parsed)
                })
                .collect(),
        }
    }

    /// Reads the locations of `uuids` (those the running state did not hold), in one query.
    pub(super) fn read(&mut self, tx: &mut Db, uuids: &BTreeSet<&String>) -> Result<()> {
        let pg = tx.is_postgres();
        if !uuids.is_empty() {
            // The gpu_locations primary key.
            let locations_sql = if pg {
                concat!("SELECT uuid, host_id, serial, last_seen FROM gpu_locations WHERE uuid", keys_in!(pg))
            } else {
                concat!("SELECT uuid, host_id, serial, last_seen FROM gpu_locations WHERE uuid", keys_in!(sqlite))
            };
            let rows = tx
                .rows(locations_sql, params![&json_list(uuids.iter().copied())], |row| {
                    let last_seen = row.get(3)?;
                    let at = GpuAt {
                        host: row.get(1)?,
                        serial: row.get(2)?,
                        last_seen,
                        stored_seen: last_seen,
                        write: None,
                    };
                    Ok((row.get::<String>(0)?, at))
                })
                .map_err(sql("read gpu locations"))?;
            self.gpus.extend(rows);
        }
        Ok(())
    }

    /// Moves this report's GPUs to its host in memory: each GPU's energy in the window (the counter's
    /// delta since the host's previous report where the GPU stayed, else power x time) and the GPUs
    /// last seen elsewhere. The report's counters become the host's.
    pub(super) fn locate(&mut self, host_id: &str, r: &pb::UsageReport, at: i64, dt: f64) -> (Vec<f64>, Vec<MovedGpu>) {
        let mut moved = Vec::new();
        let mut energy = vec![0.0f64; r.gpus.len()];
        let before = self.counters.insert(host_id.to_string(), counters(r).map(|(u, c)| (u.clone(), c)).collect());
        for (i, g) in r.gpus.iter().enumerate() {
            // A lost GPU, or one without a UUID, is not located and adds no energy.
            if g.uuid.is_empty() || g.lost {
                continue;
            }
            let power = f64::from(g.power_mw.unwrap_or(0)) / 1000.0 * dt;
            let at_now = |moved, first_seen| GpuAt {
                host: host_id.to_string(),
                serial: g.serial.clone(),
                last_seen: at,
                stored_seen: at,
                write: Some(GpuWrite { first_seen, moved, last_seq: r.seq }),
            };
            match self.gpus.get_mut(&g.uuid) {
                Some(prev) if prev.host != host_id => {
                    energy[i] = power;
                    moved.push(MovedGpu {
                        uuid: g.uuid.clone(),
                        serial: g.serial.clone(),
                        previous_serial: std::mem::take(&mut prev.serial),
                        from_host: std::mem::take(&mut prev.host),
                        from_last_seen: prev.last_seen,
                    });
                    *prev = at_now(true, at);
                }
                Some(prev) => {
                    let last = before.as_ref().and_then(|c| c.get(&g.uuid)).copied();
                    energy[i] = match (last, g.energy_mj.map(|v| v as i64)) {
                        (Some(last), Some(now)) if now >= last => (now - last) as f64 / 1000.0,
                        _ => power,
                    };
                    prev.last_seen = prev.last_seen.max(at);
                    let due = prev.serial != g.serial || prev.last_seen - prev.stored_seen >= SIGHTING_REFRESH_MS;
                    prev.serial.clone_from(&g.serial);
                    if let Some(w) = &mut prev.write {
                        w.last_seq = r.seq;
                    } else if due {
                        prev.write = Some(GpuWrite { first_seen: at, moved: false, last_seq: r.seq });
                    }
                }
                None => {
                    energy[i] = power;
                    self.gpus.insert(g.uuid.clone(), at_now(false, at));
                }
            }
        }
        (energy, moved)
    }

    /// The GPUs as the committed group left them, each as its row now holds it.
    pub(super) fn committed(self) -> impl Iterator<Item = (String, GpuAt)> {
        self.gpus.into_iter().map(|(uuid, mut g)| {
            if g.write.take().is_some() {
                g.stored_seen = g.last_seen;
            }
            (uuid, g)
        })
    }

    /// Writes the locations the group changed: moves, then sightings, one multi-row statement each.
    pub(super) fn write(&self, tx: &mut Db) -> Result<()> {
        let (mut moves, mut stays) = (Vec::new(), Vec::new());
        // In UUID order, so two writers' row locks on PostgreSQL are taken in one order.
        let gpus: BTreeMap<&String, &GpuAt> = self.gpus.iter().collect();
        for (uuid, g) in gpus {
            let Some(w) = &g.write else { continue };
            let ps = if w.moved { &mut moves } else { &mut stays };
            ps.extend_from_slice(params![
                uuid.as_str(),
                g.host.as_str(),
                g.serial.as_str(),
                w.first_seen,
                g.last_seen,
                w.last_seq
            ]);
        }
        tx.defer_values(
            "INSERT INTO gpu_locations (uuid, host_id, serial, first_seen, last_seen, last_seq) VALUES ",
            6,
            " ON CONFLICT (uuid) DO UPDATE SET host_id = excluded.host_id, serial = excluded.serial, \
               first_seen = excluded.first_seen, last_seen = excluded.last_seen, last_seq = excluded.last_seq, \
               last_energy_mj = NULL",
            &moves,
        )
        .map_err(sql("move gpu locations"))?;
        tx.defer_values(
            "INSERT INTO gpu_locations (uuid, host_id, serial, first_seen, last_seen, last_seq) VALUES ",
            6,
            " ON CONFLICT (uuid) DO UPDATE SET serial = excluded.serial, \
               last_seen = CASE WHEN excluded.last_seen > gpu_locations.last_seen THEN excluded.last_seen ELSE gpu_locations.last_seen END, \
               last_seq = excluded.last_seq, last_energy_mj = NULL",
            &stays,
        )
        .map_err(sql("record gpu locations"))?;
        Ok(())
    }
}

/// A JSON array of strings, for the `keys_in!` lists.
pub(super) fn json_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    serde_json::to_string(&items.into_iter().collect::<Vec<_>>()).unwrap_or_default()
}
