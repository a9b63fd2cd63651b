//! Where a host is, from light: a landmark's challenge answered in `t` µs of round trip puts the
//! answerer within `(t - floor) / 2 × 0.2 km/µs` of the landmark (light in fiber, about 200 km per
//! ms; queueing and relays only add delay, never remove it). Each landmark's latest signed
//! measurement is a disc; the host's registered site must lie inside every disc, and the tightest
//! disc containing it says how precisely the site is proven.
//!
//! Verdicts: `verified` (inside every disc, and the tightest within the tolerance: that radius is the
//! precision), `inconsistent` (outside some disc: that landmark proves the host is elsewhere),
//! `insufficient` (consistent, but too few landmarks answered recently or no disc is tight enough),
//! `unregistered` (no site).

use gpuattest_proto::landmark::{FIBER_KM_PER_US, record_verifies};
use gpuattest_proto::pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::store::{LandmarkRow, Measurement, Site};

/// Mean Earth radius, km (IUGG).
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// The policy's `[location]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocationPolicy {
    /// The tightest disc containing the site must be at most this wide for `verified`, km.
    pub tolerance_km: f64,
    /// Fewer landmarks than this measured within the window: `insufficient`.
    pub min_landmarks: usize,
    /// Measurements older than this do not count, e.g. `1h`.
    pub window: String,
    /// Time every round trip spends outside the fiber (the agent's signing, the kernels), µs; it is
    /// subtracted before converting to distance. Keep it at or below the real minimum, so the bound
    /// stays sound.
    pub processing_floor_us: u64,
    /// A host with a registered site whose location is still not verified this long after it
    /// enrolled is flagged `location-unverified`, e.g. `24h`.
    pub unverified_after: String,
    /// The least time a GPU takes to produce an attestation report, µs, by GPU product name (the
    /// first key contained in the name wins; `*` for any other): subtracted from GPU-bound round trips
    /// before converting them to distance. Calibrate it as the minimum over many calls on that model
    /// (never a typical value), so the bound stays sound; unset, nothing is subtracted.
    pub gpu_attestation_floor_us: std::collections::BTreeMap<String, u64>,
}

impl Default for LocationPolicy {
    fn default() -> Self {
        LocationPolicy {
            tolerance_km: 500.0,
            min_landmarks: 3,
            window: "1h".into(),
            processing_floor_us: 0,
            unverified_after: "24h".into(),
            gpu_attestation_floor_us: std::collections::BTreeMap::new(),
        }
    }
}

impl LocationPolicy {
    /// Checks the values.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<i64, String> {
        if !(self.tolerance_km.is_finite() && self.tolerance_km > 0.0) {
            return Err("location.tolerance_km must be a positive number of km".into());
        }
        if self.min_landmarks == 0 {
            return Err("location.min_landmarks must be at least 1".into());
        }
        gpuattest_proto::units::parse_duration(&self.unverified_after)
            .map_err(|e| format!("location.unverified_after: {e}"))?;
        let w = gpuattest_proto::units::parse_duration(&self.window).map_err(|e| format!("location.window: {e}"))?;
        Ok(w.as_millis() as i64)
    }

    /// The attestation-time floor for a GPU product name, µs.
    pub fn gpu_floor_us(&self, model: &str) -> u64 {
        let lower = model.to_ascii_lowercase();
        self.gpu_attestation_floor_us
            .iter()
            .find(|(k, _)| *k != "*" && lower.contains(&k.to_ascii_lowercase()))
            .or_else(|| self.gpu_attestation_floor_us.get_key_value("*"))
            .map_or(0, |(_, v)| *v)
    }

    /// Whether the policy gives an attestation-time floor for this GPU product name.
    pub fn gpu_floor_configured(&self, model: &str) -> bool {
        let lower = model.to_ascii_lowercase();
        self.gpu_attestation_floor_us.keys().any(|k| k == "*" || lower.contains(&k.to_ascii_lowercase()))
    }

    /// `unverified_after`, ms (24 h if unreadable; `validate` refuses that at load).
    pub fn unverified_after_ms(&self) -> i64 {
        gpuattest_proto::units::parse_duration(&self.unverified_after).map_or(86_400_000, |d| d.as_millis() as i64)
    }
}

/// Great-circle distance (haversine), km.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let (dp, dl) = ((lat2 - lat1).to_radians(), (lon2 - lon1).to_radians());
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// The farthest a host answering in `min_rtt_us` can be from the landmark, km.
pub fn bound_km(min_rtt_us: u64, floor_us: u64) -> f64 {
    min_rtt_us.saturating_sub(floor_us) as f64 / 2.0 * FIBER_KM_PER_US
}

/// A landmark's disc in a verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Disc {
    /// The landmark.
    pub name: String,
    /// Minimum round trip, µs.
    pub min_rtt_us: u64,
    /// The disc's radius, km.
    pub bound_km: f64,
    /// From the landmark to the registered site, km (absent without a site).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_distance_km: Option<f64>,
    /// Where the landmark is.
    pub lat: f64,
    /// Where the landmark is.
    pub lon: f64,
    /// When it measured (RFC 3339).
    pub measured_at: String,
    /// For a GPU-bound disc: the GPU whose attestation answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_uuid: Option<String>,
}

/// A host's location verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// `verified`, `inconsistent`, `insufficient` or `unregistered`.
    pub verdict: &'static str,
    /// The tightest disc containing the site, km (for `verified`, the precision).
    pub precision_km: Option<f64>,
    /// Each landmark's disc from host-key answers, within the window.
    pub landmarks: Vec<Disc>,
    /// Each landmark's disc from GPU attestation answers (GPUs in confidential-computing mode).
    pub gpu_landmarks: Vec<Disc>,
    /// Why a relay is suspected: the host key answers from near the site, the GPUs cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_suspected: Option<String>,
    /// The registered site.
    pub site: Option<Site>,
    /// A sentence: why this verdict.
    pub reason: String,
}

/// The disc that excludes the site by the most.
fn worst(discs: &[Disc]) -> Option<&Disc> {
    discs.iter().filter(|d| d.site_distance_km.is_some_and(|s| s > d.bound_km)).max_by(|a, b| {
        let ex = |d: &Disc| d.site_distance_km.unwrap_or(0.0) - d.bound_km;
        ex(a).total_cmp(&ex(b))
    })
}

/// The landmark where a GPU-bound answer lags the host key's the most, beyond the GPU model's
/// calibrated attestation time: (landmark, GPU, lag µs). Only models with a configured floor count:
/// without one, attestation time and distance cannot be told apart.
fn gpu_behind_key(
    policy: &LocationPolicy,
    measurements: &[Measurement],
    window: i64,
    now: i64,
) -> Option<(String, String, u64)> {
    use crate::store::measurement_kind::{GPU, KEY};
    let recent = || measurements.iter().filter(move |m| now - m.measured_at <= window);
    recent()
        .filter(|g| g.kind == GPU && policy.gpu_floor_configured(&g.gpu_model))
        .filter_map(|g| {
            let k = recent().find(|k| k.kind == KEY && k.landmark == g.landmark)?;
            let lag = g.min_rtt_us.saturating_sub(policy.gpu_floor_us(&g.gpu_model)).saturating_sub(k.min_rtt_us);
            Some((g.landmark.clone(), g.gpu_uuid.clone(), lag))
        })
        .max_by_key(|x| x.2)
}

/// The verdict for a host at `site` from its latest `measurements` (host-key and GPU-bound), at `now`
/// (Unix ms). `gpus_attest`: the host's GPUs are in confidential-computing mode, so `verified` also
/// needs GPU-bound measurements (a copied host key proves nothing about where the chips are).
pub fn verdict(
    policy: &LocationPolicy,
    site: Option<&Site>,
    landmarks: &[LandmarkRow],
    measurements: &[Measurement],
    gpus_attest: bool,
    now: i64,
) -> Verdict {
    let window = policy.validate().unwrap_or(3_600_000);
    let disc = |m: &Measurement| {
        let l = landmarks.iter().find(|l| l.name == m.landmark)?;
        let gpu = m.kind == crate::store::measurement_kind::GPU;
        let floor = policy.processing_floor_us + if gpu { policy.gpu_floor_us(&m.gpu_model) } else { 0 };
        Some(Disc {
            name: m.landmark.clone(),
            min_rtt_us: m.min_rtt_us,
            bound_km: bound_km(m.min_rtt_us, floor),
            site_distance_km: site.map(|s| distance_km(l.lat, l.lon, s.lat, s.lon)),
            lat: l.lat,
            lon: l.lon,
            measured_at: crate::timefmt::rfc3339(m.measured_at),
            gpu_uuid: gpu.then(|| m.gpu_uuid.clone()),
        })
    };
    let recent = measurements.iter().filter(|m| now - m.measured_at <= window);
    let (gpu, key): (Vec<&Measurement>, Vec<&Measurement>) =
        recent.partition(|m| m.kind == crate::store::measurement_kind::GPU);
    let mut v = Verdict {
        verdict: "unregistered",
        precision_km: None,
        landmarks: key.into_iter().filter_map(disc).collect(),
        gpu_landmarks: gpu.into_iter().filter_map(disc).collect(),
        relay_suspected: None,
        site: site.cloned(),
        reason: String::new(),
    };
    if site.is_none() {
        v.reason = "no registered site: `hosts set-site`, or enroll with a token that has one".into();
        return v;
    }
    if let Some(d) = worst(&v.landmarks) {
        v.verdict = "inconsistent";
        v.reason = format!(
            "landmark {} answered in {} µs, so the host is within {:.0} km of it; the registered site is {:.0} km away",
            d.name,
            d.min_rtt_us,
            d.bound_km,
            d.site_distance_km.unwrap_or(0.0)
        );
        return v;
    }
    if let Some(d) = worst(&v.gpu_landmarks) {
        // The host key answers as if from the site; a GPU cannot: the key is somewhere the chips are not.
        v.verdict = "inconsistent";
        v.reason = format!(
            "GPU {} attested to landmark {}'s challenge in {} µs, so the chip is within {:.0} km of it; the registered site is {:.0} km away",
            d.gpu_uuid.as_deref().unwrap_or("?"),
            d.name,
            d.min_rtt_us,
            d.bound_km,
            d.site_distance_km.unwrap_or(0.0)
        );
        v.relay_suspected = Some(format!(
            "the host key answers every landmark as if from the registered site, but the GPUs cannot: {}; the key is being used away from its GPUs (a relay)",
            v.reason
        ));
        return v;
    }
    // Where the model's attestation time is calibrated, a GPU that answers a landmark much later than
    // the host key does (beyond that time) is farther from it than the key: the key answers elsewhere.
    let excess = gpu_behind_key(policy, measurements, window, now);
    if let Some((landmark, uuid, excess_us)) = excess.filter(|(_, _, us)| bound_km(*us, 0) > policy.tolerance_km) {
        v.verdict = "inconsistent";
        v.reason = format!(
            "GPU {uuid} answered landmark {landmark} {:.1} ms later than the host key, beyond its model's attestation time: the chip is about {:.0} km farther from that landmark than whatever answers with the host key",
            excess_us as f64 / 1000.0,
            bound_km(excess_us, 0)
        );
        v.relay_suspected = Some(format!("the host key and the GPUs answer from different places: {}", v.reason));
        return v;
    }
    let key_precision = v.landmarks.iter().map(|d| d.bound_km).min_by(f64::total_cmp);
    let gpu_precision = v.gpu_landmarks.iter().map(|d| d.bound_km).min_by(f64::total_cmp);
    // With GPUs that attest, the place proven is the chips' only as precisely as their discs allow.
    v.precision_km = match (key_precision, gpu_precision) {
        (Some(k), Some(g)) if gpus_attest => Some(k.max(g)),
        (k, _) => k,
    };
    if gpus_attest && v.gpu_landmarks.is_empty() {
        v.verdict = "insufficient";
        v.reason = "the host's GPUs are in confidential-computing mode but none answered a GPU-bound challenge within the window: the host key alone does not place the chips".into();
    } else if v.landmarks.len() < policy.min_landmarks {
        v.verdict = "insufficient";
        v.reason = format!(
            "{} landmark(s) measured this host within the window; the policy asks for {}",
            v.landmarks.len(),
            policy.min_landmarks
        );
    } else if v.precision_km.is_some_and(|p| p <= policy.tolerance_km) {
        v.verdict = "verified";
        v.reason = format!("inside every landmark's disc; the tightest is {:.0} km", v.precision_km.unwrap_or(0.0));
    } else {
        v.verdict = "insufficient";
        v.reason = format!(
            "consistent with the site, but the tightest disc is {:.0} km, wider than the tolerance of {:.0} km",
            v.precision_km.unwrap_or(0.0),
            policy.tolerance_km
        );
    }
    v
}

/// A host's verdict from what the store holds now.
///
/// # Errors
/// The store's.
pub fn host_verdict(
    store: &crate::store::Store,
    policy: &LocationPolicy,
    host_id: &str,
    landmarks: &[LandmarkRow],
    now: i64,
) -> Result<Verdict, crate::store::StoreError> {
    let site = store.site(host_id)?;
    let gpus_attest = store.has_attesting_gpus(host_id)?;
    Ok(verdict(policy, site.as_ref(), landmarks, &store.measurements(host_id)?, gpus_attest, now))
}

/// Fills what `hosts list`, the hosts API and the demo show beside each host's accounting: each GPU's
/// evidence state and the location verdict. Returns each host's latest report, decoded once.
///
/// # Errors
/// The store's.
pub fn annotate_hosts(
    store: &crate::store::Store,
    policy: &LocationPolicy,
    hosts: &mut [crate::store::HostSummary],
    now: i64,
) -> Result<Vec<Option<pb::UsageReport>>, crate::store::StoreError> {
    let landmarks = store.landmarks()?;
    let mut latest = Vec::with_capacity(hosts.len());
    for h in hosts.iter_mut() {
        let r = store.decoded_report(&h.host_id, h.last_seq)?;
        h.gpu_evidence = store.gpu_evidence_states(&h.host_id, r.as_ref())?;
        h.location = serde_json::to_value(host_verdict(store, policy, &h.host_id, &landmarks, now)?).ok();
        latest.push(r);
    }
    Ok(latest)
}

/// Checks the landmark records in a report from `host_id` (whose keys are `key_ids`): each must be
/// signed by a registered landmark, name this host and one of its keys, and be no newer than `now`.
/// Returns the measurements to keep and a sentence per record refused.
pub fn check_records(
    report: &pb::UsageReport,
    host_id: &str,
    key_ids: &[Vec<u8>],
    landmarks: &[LandmarkRow],
    evidence: &crate::evidence::EvidencePolicy,
    now: i64,
) -> (Vec<Measurement>, Vec<String>) {
    let mut keep = Vec::new();
    let mut refused = Vec::new();
    for s in report.location_records.iter().take(64) {
        let Ok(r) = pb::LocationRecord::decode(s.record.as_slice()) else {
            refused.push("a location record that does not decode".into());
            continue;
        };
        let Some(l) = landmarks.iter().find(|l| l.name == r.landmark) else {
            refused.push(format!("a location record from unregistered landmark {:?}", r.landmark));
            continue;
        };
        if !record_verifies(&l.public_key, &s.record, &s.signature) {
            refused.push(format!("a location record claiming landmark {} whose signature does not verify", l.name));
            continue;
        }
        if r.host_id != host_id || !key_ids.contains(&r.host_key_id) {
            refused.push(format!("landmark {}'s record measured another host or key: not this host's", l.name));
            continue;
        }
        if r.measured_at_unix_ms > now + 60_000 || r.rounds == 0 {
            refused.push(format!("landmark {}'s record is dated in the future or has no rounds", l.name));
            continue;
        }
        let gpu = r.kind == crate::store::measurement_kind::GPU;
        let mut gpu_model = String::new();
        if gpu {
            // The chip's own answer: its report must verify over the nonce the landmark derived from
            // its challenge, under a trusted root, and come from a GPU this report lists.
            let Some(g) = report.gpus.iter().find(|g| g.uuid == r.gpu_uuid && !r.gpu_uuid.is_empty()) else {
                refused.push(format!(
                    "landmark {}'s GPU-bound record names GPU {:?}, not one of this host's",
                    l.name, r.gpu_uuid
                ));
                continue;
            };
            let v = evidence.verifier.verify(&r.gpu_report, &r.gpu_cert_chain, &r.gpu_nonce, now / 1000);
            if !v.valid {
                refused.push(format!(
                    "landmark {}'s GPU-bound record carries an attestation of GPU {} that does not verify: {}",
                    l.name,
                    r.gpu_uuid,
                    v.errors.join("; ")
                ));
                continue;
            }
            gpu_model = g.name.clone();
        } else if !r.kind.is_empty() && r.kind != crate::store::measurement_kind::KEY {
            refused.push(format!("landmark {}'s record is of unknown kind {:?}", l.name, r.kind));
            continue;
        }
        keep.push(Measurement {
            landmark: l.name.clone(),
            min_rtt_us: r.min_rtt_us,
            median_rtt_us: r.median_rtt_us,
            rounds: r.rounds,
            measured_at: r.measured_at_unix_ms,
            record: s.record.clone(),
            signature: s.signature.clone(),
            kind: if gpu { crate::store::measurement_kind::GPU } else { crate::store::measurement_kind::KEY }.into(),
            gpu_uuid: r.gpu_uuid.clone(),
            gpu_model,
        });
    }
    (keep, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landmark(name: &str, lat: f64, lon: f64) -> LandmarkRow {
        LandmarkRow {
            name: name.into(),
            lat,
            lon,
            public_key: vec![0; 32],
            key_id: String::new(),
            address: String::new(),
        }
    }

    fn m(name: &str, rtt: u64) -> Measurement {
        Measurement {
            landmark: name.into(),
            min_rtt_us: rtt,
            median_rtt_us: rtt,
            rounds: 10,
            measured_at: 1_000,
            record: vec![],
            signature: vec![],
            kind: "key".into(),
            gpu_uuid: String::new(),
            gpu_model: String::new(),
        }
    }

    fn g(name: &str, rtt: u64) -> Measurement {
        Measurement {
            kind: "gpu".into(),
            gpu_uuid: "GPU-1".into(),
            gpu_model: "NVIDIA H100 80GB HBM3".into(),
            ..m(name, rtt)
        }
    }

    #[test]
    fn gpu_bound_discs_catch_a_relayed_host_key() {
        let mut p = LocationPolicy::default();
        let ls = [
            landmark("ashburn", ASHBURN.0, ASHBURN.1),
            landmark("dallas", 32.7767, -96.797),
            landmark("singapore", SINGAPORE.0, SINGAPORE.1),
        ];
        let site = Site { name: None, lat: ASHBURN.0, lon: ASHBURN.1 };
        let key = [m("ashburn", 200), m("dallas", 20_000), m("singapore", 160_000)];
        // Key answers from Ashburn; the GPU needs 170 ms to answer Ashburn: it is in Singapore.
        let mut relayed = key.to_vec();
        relayed.extend([g("ashburn", 170_000), g("singapore", 30_000)]);
        let v = verdict(&p, Some(&site), &ls, &relayed, true, 1_000);
        assert_eq!(v.verdict, "inconsistent", "{v:?}");
        assert!(v.relay_suspected.as_deref().is_some_and(|r| r.contains("relay") && r.contains("GPU-1")), "{v:?}");
        // Honest: the GPU answers Ashburn in 30 ms of attestation plus 0.2 ms of fiber. Without a
        // calibrated floor its disc (3,000 km) holds the site but is too wide to verify the chips.
        let mut honest = key.to_vec();
        honest.push(g("ashburn", 30_200));
        let v = verdict(&p, Some(&site), &ls, &honest, true, 1_000);
        assert_eq!((v.verdict, v.relay_suspected.is_none()), ("insufficient", true), "{v:?}");
        p.gpu_attestation_floor_us.insert("H100".into(), 30_000);
        p.gpu_attestation_floor_us.insert("*".into(), 1_000);
        assert_eq!(p.gpu_floor_us("NVIDIA H100 80GB HBM3"), 30_000);
        assert_eq!(p.gpu_floor_us("NVIDIA B200"), 1_000);
        let v = verdict(&p, Some(&site), &ls, &honest, true, 1_000);
        assert_eq!((v.verdict, v.relay_suspected.is_none()), ("verified", true), "{v:?}");
        assert!(v.gpu_landmarks[0].bound_km < 25.0, "{v:?}");
        // A relay near every landmark's expected distance: the key answers Ashburn in 0.2 ms, the GPU
        // (30 ms to attest) in 185 ms: 155 ms of lag, 15,500 km, though every disc holds the site.
        let mut lagging = key.to_vec();
        lagging.push(g("ashburn", 185_200));
        let v = verdict(&p, Some(&site), &ls, &lagging, true, 1_000);
        assert_eq!(v.verdict, "inconsistent", "{v:?}");
        assert!(v.relay_suspected.as_deref().is_some_and(|r| r.contains("ashburn") && r.contains("155.0 ms")), "{v:?}");
        // CC GPUs but no GPU-bound answer: the host key alone cannot verify.
        let v = verdict(&p, Some(&site), &ls, &key, true, 1_000);
        assert_eq!(v.verdict, "insufficient", "{v:?}");
        assert_eq!(verdict(&p, Some(&site), &ls, &key, false, 1_000).verdict, "verified");
    }

    const ASHBURN: (f64, f64) = (39.0438, -77.4874);
    const SINGAPORE: (f64, f64) = (1.3521, 103.8198);

    #[test]
    fn great_circle_distances_match_known_values() {
        // Ashburn to Singapore is about 15,550 km; one degree of latitude about 111.2 km.
        let d = distance_km(ASHBURN.0, ASHBURN.1, SINGAPORE.0, SINGAPORE.1);
        assert!((15_400.0..15_700.0).contains(&d), "{d}");
        assert!((distance_km(0.0, 0.0, 1.0, 0.0) - 111.19).abs() < 0.1);
        assert_eq!(bound_km(1_000, 0), 100.0, "1 ms round trip: 100 km");
        assert_eq!(bound_km(100, 200), 0.0, "under the floor: no distance");
    }

    #[test]
    fn verdicts_follow_the_discs() {
        let p = LocationPolicy::default();
        let ls = [
            landmark("ashburn", ASHBURN.0, ASHBURN.1),
            landmark("dallas", 32.7767, -96.797),
            landmark("singapore", SINGAPORE.0, SINGAPORE.1),
        ];
        let site = Site { name: Some("iad".into()), lat: ASHBURN.0, lon: ASHBURN.1 };
        let honest = [m("ashburn", 200), m("dallas", 20_000), m("singapore", 160_000)];
        let v = verdict(&p, Some(&site), &ls, &honest, false, 1_000);
        assert_eq!(v.verdict, "verified", "{v:?}");
        assert!(v.precision_km.is_some_and(|k| k < 50.0), "{v:?}");
        // Answering Singapore's challenge in 0.2 ms: the host is within 20 km of Singapore.
        let diverted = [m("ashburn", 160_000), m("dallas", 150_000), m("singapore", 200)];
        let v = verdict(&p, Some(&site), &ls, &diverted, false, 1_000);
        assert_eq!(v.verdict, "inconsistent", "{v:?}");
        assert!(v.reason.contains("singapore"), "{v:?}");
        // Consistent, but every disc is wide.
        let wide = [m("ashburn", 160_000), m("dallas", 150_000), m("singapore", 170_000)];
        assert_eq!(verdict(&p, Some(&site), &ls, &wide, false, 1_000).verdict, "insufficient");
        // Too few landmarks, or too old.
        assert_eq!(verdict(&p, Some(&site), &ls, &honest[..2], false, 1_000).verdict, "insufficient");
        assert_eq!(verdict(&p, Some(&site), &ls, &honest, false, 1_000 + 3_600_001).verdict, "insufficient");
        assert_eq!(verdict(&p, None, &ls, &honest, false, 1_000).verdict, "unregistered");
    }
}
