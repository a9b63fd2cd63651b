//! The demo GPUs' counter traces, played by the simulated NVML library one entry per sample: a
//! training step rhythm with all-reduce bursts for the fine-tuning job, request-driven bursts at
//! random times for the inference server. The classifier judges these, not the command lines.

use serde_json::{Value, json};

/// Entries per trace (it loops).
pub const LEN: usize = 60;

/// A small deterministic generator (the demo must look the same every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Training: three samples of compute at ~97%, one of gradient all-reduce (SMs waiting, NVLink
/// saturated), repeated.
pub fn training(seed: u64) -> Vec<Value> {
    let mut r = Lcg(seed);
    (0..LEN)
        .map(|t| {
            let compute = t % 4 < 3;
            let util = if compute { 95.0 + 3.0 * r.next() } else { 22.0 + 6.0 * r.next() };
            json!({
                "util_pct": util.round() as u32,
                "mem_util_pct": (util * 0.4).round() as u32,
                "power_w": (90.0 + 6.0 * util).round(),
                "nvlink_tx_kbps": if compute { 600_000 } else { 42_000_000 },
                "nvlink_rx_kbps": if compute { 580_000 } else { 41_000_000 },
                "pcie_tx_kbps": 20_000,
                "pcie_rx_kbps": 25_000,
            })
        })
        .collect()
}

/// Serving: requests arrive at random (about one every three samples) and keep the GPU busy for a
/// sample or two; decoding keeps the memory controller as busy as the SMs.
pub fn serving(seed: u64) -> Vec<Value> {
    let mut r = Lcg(seed);
    let mut busy = 0.0f64;
    (0..LEN)
        .map(|_| {
            if r.next() < 0.35 {
                busy += 0.5 + 2.5 * r.next();
            }
            let share = busy.min(1.0);
            busy = (busy - 1.0).max(0.0);
            let util = 3.0 + 89.0 * share * (0.7 + 0.3 * r.next());
            json!({
                "util_pct": util.round() as u32,
                "mem_util_pct": (util * 0.85).round() as u32,
                "power_w": (90.0 + 6.0 * util).round(),
                "nvlink_tx_kbps": (8_000_000.0 * share) as u64,
                "nvlink_rx_kbps": (7_600_000.0 * share) as u64,
            })
        })
        .collect()
}
