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
}

impl Default for LocationPolicy {
    fn default() -> Self {
        LocationPolicy {
            tolerance_km: 500.0,
            min_landmarks: 3,
            window: "1h".into(),
            processing_floor_us: 0,
            unverified_after: "24h".into(),
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
}

/// A host's location verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// `verified`, `inconsistent`, `insufficient` or `unregistered`.
    pub verdict: &'static str,
    /// The tightest disc containing the site, km (for `verified`, the precision).
    pub precision_km: Option<f64>,
    /// Each landmark's disc, within the window.
    pub landmarks: Vec<Disc>,
    /// The registered site.
    pub site: Option<Site>,
    /// A sentence: why this verdict.
    pub reason: String,
}

/// The verdict for a host at `site` from its latest `measurements`, at `now` (Unix ms).
pub fn verdict(
    policy: &LocationPolicy,
    site: Option<&Site>,
    landmarks: &[LandmarkRow],
    measurements: &[Measurement],
    now: i64,
) -> Verdict {
    let window = policy.validate().unwrap_or(3_600_000);
    let discs: Vec<Disc> = measurements
        .iter()
        .filter(|m| now - m.measured_at <= window)
        .filter_map(|m| {
            let l = landmarks.iter().find(|l| l.name == m.landmark)?;
            Some(Disc {
                name: m.landmark.clone(),
                min_rtt_us: m.min_rtt_us,
                bound_km: bound_km(m.min_rtt_us, policy.processing_floor_us),
                site_distance_km: site.map(|s| distance_km(l.lat, l.lon, s.lat, s.lon)),
                lat: l.lat,
                lon: l.lon,
                measured_at: crate::timefmt::rfc3339(m.measured_at),
            })
        })
        .collect();
    let mut v = Verdict {
        verdict: "unregistered",
        precision_km: None,
        landmarks: discs,
        site: site.cloned(),
        reason: String::new(),
    };
    if site.is_none() {
        v.reason = "no registered site: `hosts set-site`, or enroll with a token that has one".into();
        return v;
    }
    // The landmark that excludes the site by the most.
    let worst = v.landmarks.iter().filter(|d| d.site_distance_km.is_some_and(|s| s > d.bound_km)).max_by(|a, b| {
        let ex = |d: &Disc| d.site_distance_km.unwrap_or(0.0) - d.bound_km;
        ex(a).total_cmp(&ex(b))
    });
    if let Some(d) = worst {
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
    v.precision_km = v.landmarks.iter().map(|d| d.bound_km).min_by(f64::total_cmp);
    if v.landmarks.len() < policy.min_landmarks {
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
    Ok(verdict(policy, site.as_ref(), landmarks, &store.measurements(host_id)?, now))
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
        keep.push(Measurement {
            landmark: l.name.clone(),
            min_rtt_us: r.min_rtt_us,
            median_rtt_us: r.median_rtt_us,
            rounds: r.rounds,
            measured_at: r.measured_at_unix_ms,
            record: s.record.clone(),
            signature: s.signature.clone(),
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
        }
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
        let v = verdict(&p, Some(&site), &ls, &honest, 1_000);
        assert_eq!(v.verdict, "verified", "{v:?}");
        assert!(v.precision_km.is_some_and(|k| k < 50.0), "{v:?}");
        // Answering Singapore's challenge in 0.2 ms: the host is within 20 km of Singapore.
        let diverted = [m("ashburn", 160_000), m("dallas", 150_000), m("singapore", 200)];
        let v = verdict(&p, Some(&site), &ls, &diverted, 1_000);
        assert_eq!(v.verdict, "inconsistent", "{v:?}");
        assert!(v.reason.contains("singapore"), "{v:?}");
        // Consistent, but every disc is wide.
        let wide = [m("ashburn", 160_000), m("dallas", 150_000), m("singapore", 170_000)];
        assert_eq!(verdict(&p, Some(&site), &ls, &wide, 1_000).verdict, "insufficient");
        // Too few landmarks, or too old.
        assert_eq!(verdict(&p, Some(&site), &ls, &honest[..2], 1_000).verdict, "insufficient");
        assert_eq!(verdict(&p, Some(&site), &ls, &honest, 1_000 + 3_600_001).verdict, "insufficient");
        assert_eq!(verdict(&p, None, &ls, &honest, 1_000).verdict, "unregistered");
    }
}
