//! What the GPUs do between reports: counters sampled at 1 Hz (configurable), reduced per report window
//! to compact statistics (mean, min, max, standard deviation, and the dominant period with its
//! strength), so the collector can tell a training loop's step rhythm from request-driven serving by
//! behaviour rather than by the names a tenant chooses.
//!
//! The GPU source reads the counters (`GpuSource::sample` in the gpu module); this module keeps the
//! samples and reduces them. Pure arithmetic, no I/O.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// The sampled counters, in report order. Values are in the wire units of `gpuattest.v1.Metric`.
pub const METRICS: [Metric; 8] = [
    Metric::GpuUtil,
    Metric::MemUtil,
    Metric::Power,
    Metric::SmClock,
    Metric::PcieTx,
    Metric::PcieRx,
    Metric::NvlinkTx,
    Metric::NvlinkRx,
];

/// One sampled counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// GPU utilisation, 0.1 %.
    GpuUtil,
    /// Memory-controller utilisation, 0.1 %.
    MemUtil,
    /// Power, 0.1 W.
    Power,
    /// SM clock, MHz.
    SmClock,
    /// PCIe transmit, KB/s.
    PcieTx,
    /// PCIe receive, KB/s.
    PcieRx,
    /// NVLink transmit, KB/s.
    NvlinkTx,
    /// NVLink receive, KB/s.
    NvlinkRx,
}

impl Metric {
    /// The protobuf enum value.
    pub fn wire(self) -> i32 {
        self as i32 + 1
    }
}

/// Samples kept per counter for the period (spanning windows).
pub const HISTORY: usize = 64;
/// Samples kept per counter within one window (a bound for very long windows).
pub const MAX_WINDOW_SAMPLES: usize = 3_600;

/// One GPU's counters at one instant; `None` where the driver did not answer this time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSample {
    /// The GPU.
    pub uuid: String,
    /// Values in [`METRICS`] order.
    pub values: [Option<f64>; 8],
    /// Framebuffer in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Counters this GPU's driver does not answer (never asked again).
    pub unavailable: Vec<Metric>,
}

/// Statistics of one counter in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SeriesStats {
    /// The counter.
    pub metric: Option<Metric>,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Standard deviation (population).
    pub stddev: f64,
    /// Dominant period over the history, ms; 0 for none.
    pub period_ms: u32,
    /// Its autocorrelation, 0 to 1.
    pub period_strength: f64,
    /// Samples the period was computed over.
    pub history: u32,
}

/// One GPU's telemetry for one report window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Telemetry {
    /// Sample interval, ms.
    pub sample_ms: u32,
    /// Samples in the window.
    pub samples: u32,
    /// Per counter that answered.
    pub series: Vec<SeriesStats>,
    /// Memory-used slope, bytes per second.
    pub memory_used_trend_bytes_per_s: i64,
    /// Counters the driver does not answer.
    pub unavailable: Vec<Metric>,
}

#[derive(Default)]
struct GpuSeries {
    history: [VecDeque<f64>; 8],
    window: [Vec<f64>; 8],
    memory: Vec<(f64, f64)>,
    samples: u32,
    unavailable: Vec<Metric>,
}

/// Keeps samples per GPU and reduces them per window.
pub struct Sampler {
    sample_ms: u32,
    gpus: BTreeMap<String, GpuSeries>,
}

impl Sampler {
    /// A sampler for samples taken every `sample_ms`.
    pub fn new(sample_ms: u32) -> Self {
        Sampler { sample_ms: sample_ms.max(1), gpus: BTreeMap::new() }
    }

    /// Adds one round of samples taken at `at_ms`. GPUs absent from `samples` keep their history; GPUs
    /// unseen for a whole window are dropped at [`Sampler::take`].
    pub fn record(&mut self, at_ms: i64, samples: &[GpuSample]) {
        for s in samples {
            if s.uuid.is_empty() {
                continue;
            }
            let g = self.gpus.entry(s.uuid.clone()).or_default();
            g.samples = g.samples.saturating_add(1);
            for (i, v) in s.values.iter().enumerate() {
                let Some(v) = v.filter(|v| v.is_finite()) else { continue };
                if g.window[i].len() < MAX_WINDOW_SAMPLES {
                    g.window[i].push(v);
                }
                if g.history[i].len() == HISTORY {
                    g.history[i].pop_front();
                }
                g.history[i].push_back(v);
            }
            if let Some(m) = s.memory_used_bytes
                && g.memory.len() < MAX_WINDOW_SAMPLES
            {
                g.memory.push((at_ms as f64 / 1000.0, m as f64));
            }
            g.unavailable.clone_from(&s.unavailable);
        }
    }

    /// The window's telemetry per GPU UUID; starts the next window (the history stays).
    pub fn take(&mut self) -> BTreeMap<String, Telemetry> {
        let mut out = BTreeMap::new();
        self.gpus.retain(|_, g| g.samples > 0);
        for (uuid, g) in &mut self.gpus {
            let mut t = Telemetry {
                sample_ms: self.sample_ms,
                samples: g.samples,
                memory_used_trend_bytes_per_s: slope(&g.memory).round() as i64,
                unavailable: g.unavailable.clone(),
                series: Vec::new(),
            };
            for (i, metric) in METRICS.iter().enumerate() {
                let Some(mut st) = stats(&g.window[i]) else { continue };
                let hist: Vec<f64> = g.history[i].iter().copied().collect();
                st.metric = Some(*metric);
                st.history = hist.len() as u32;
                if let Some((lag, strength)) = dominant_period(&hist) {
                    st.period_ms = lag as u32 * self.sample_ms;
                    st.period_strength = strength;
                }
                t.series.push(st);
                g.window[i].clear();
            }
            g.memory.clear();
            g.samples = 0;
            out.insert(uuid.clone(), t);
        }
        out
    }
}

/// Mean, min, max and population standard deviation; `None` for no samples.
pub fn stats(xs: &[f64]) -> Option<SeriesStats> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Some(SeriesStats {
        mean,
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        stddev: var.sqrt(),
        ..SeriesStats::default()
    })
}

/// The lag (in samples, at least 2) of the fundamental local peak of the autocorrelation (the shortest
/// within 10% of the highest, so a multiple of the rhythm is not taken for it), and that
/// autocorrelation (0 to 1). `None` for fewer than 8 samples, a flat series, or no positive peak.
///
/// The biased estimator (normalised by the whole series' variance) is used on purpose: long lags,
/// seen over few samples, are discounted rather than trusted.
pub fn dominant_period(xs: &[f64]) -> Option<(usize, f64)> {
    let n = xs.len();
    if n < 8 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let d: Vec<f64> = xs.iter().map(|x| x - mean).collect();
    let var: f64 = d.iter().map(|x| x * x).sum();
    let scale = xs.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1.0);
    // A series that moves by less than 0.5% of its size has no rhythm worth reporting.
    if var <= (0.005 * scale) * (0.005 * scale) * n as f64 {
        return None;
    }
    let max_lag = n / 2;
    let r: Vec<f64> = (0..=max_lag + 1)
        .map(|k| if k >= n { 0.0 } else { d[..n - k].iter().zip(&d[k..]).map(|(a, b)| a * b).sum::<f64>() / var })
        .collect();
    let peaks: Vec<(usize, f64)> =
        (2..=max_lag).filter(|&k| r[k] > r[k - 1] && r[k] >= r[k + 1] && r[k] > 0.0).map(|k| (k, r[k])).collect();
    let best = peaks.iter().map(|p| p.1).fold(0.0f64, f64::max);
    // A rhythm's multiples peak too, about as high where sampling jitters: the fundamental is the
    // shortest lag whose peak comes within 10% of the highest.
    peaks.into_iter().find(|(_, v)| *v >= 0.9 * best).map(|(k, v)| (k, v.min(1.0)))
}

/// Least-squares slope of (seconds, value) points, per second; 0 for fewer than 2 distinct times.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    if points.len() < 2 {
        return 0.0;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt) * (p.0 - mt)).sum();
    if den <= f64::EPSILON { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(uuid: &str, util: f64) -> GpuSample {
        GpuSample {
            uuid: uuid.into(),
            values: [Some(util), None, None, None, None, None, None, None],
            ..Default::default()
        }
    }

    #[test]
    fn a_step_rhythm_is_found_with_its_period() {
        // 3 s of compute, 2 s of all-reduce wait: a 5-sample period, with some noise.
        let xs: Vec<f64> =
            (0..64).map(|i| if i % 5 < 3 { 950.0 } else { 300.0 } + f64::from((i * 37 % 11) as u8) * 3.0).collect();
        let (lag, strength) = dominant_period(&xs).expect("periodic");
        assert_eq!(lag, 5);
        assert!(strength > 0.6, "{strength}");
        // Capping utilisation at 40% scales the wave; the rhythm stays.
        let capped: Vec<f64> = xs.iter().map(|x| x * 0.4).collect();
        assert_eq!(dominant_period(&capped).map(|p| p.0), Some(5));
    }

    #[test]
    fn flat_and_random_series_have_no_strong_period() {
        assert_eq!(dominant_period(&[970.0; 64]), None);
        assert_eq!(dominant_period(&[1.0, 2.0, 3.0]), None);
        // A pseudo-random request stream.
        let mut x = 12345u64;
        let xs: Vec<f64> = (0..64)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if (x >> 33).is_multiple_of(3) { 800.0 } else { 50.0 }
            })
            .collect();
        assert!(dominant_period(&xs).is_none_or(|(_, s)| s < 0.5), "{:?}", dominant_period(&xs));
        for bad in [f64::NAN, f64::INFINITY] {
            let mut s = Sampler::new(1000);
            s.record(0, &[sample("GPU-a", bad)]);
            assert!(s.take()["GPU-a"].series.is_empty(), "non-finite values are dropped");
        }
    }

    #[test]
    fn windows_reduce_and_history_spans_them() {
        let mut s = Sampler::new(1000);
        for i in 0..10 {
            let mut g = sample("GPU-a", if i % 2 == 0 { 1000.0 } else { 0.0 });
            g.memory_used_bytes = Some(1_000_000 + i as u64 * 1000);
            g.unavailable = vec![Metric::NvlinkTx];
            s.record(i * 1000, &[g]);
        }
        let t = &s.take()["GPU-a"];
        assert_eq!((t.samples, t.sample_ms, t.unavailable.clone()), (10, 1000, vec![Metric::NvlinkTx]));
        let u = t.series[0];
        assert_eq!((u.metric, u.mean, u.min, u.max, u.stddev), (Some(Metric::GpuUtil), 500.0, 0.0, 1000.0, 500.0));
        assert_eq!(u.period_ms, 2000);
        assert_eq!(t.memory_used_trend_bytes_per_s, 1000);
        s.record(11_000, &[sample("GPU-a", 1000.0)]);
        let t = &s.take()["GPU-a"];
        assert_eq!((t.samples, t.series[0].history), (1, 11), "the window restarts, the history does not");
        assert!(s.take().is_empty(), "a GPU with no samples in a window is dropped");
    }
}
