#!/usr/bin/env bash
# Observation and fingerprint benchmark on the simulated NVML library: 8 GPUs, 64 live processes
# (8 per GPU), each process a real child with its own /proc entry, every GPU playing a training trace so
# the 1 Hz sampler reads every counter. Prints the agent's JSON figures.
# Usage: agent/benches/observe.sh [target/release]
set -euo pipefail
bin=${1:-target/release}
work=$(mktemp -d)
pids=()
for i in $(seq 64); do sleep 300 & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$work/scenario.json" "${pids[@]}" <<'PY'
import json, sys
path, pids = sys.argv[1], [int(p) for p in sys.argv[2:]]
# Every counter answers, and moves: a training step rhythm with NVLink bursts.
trace = [{"util_pct": 97 if t % 4 < 3 else 25, "mem_util_pct": 40, "power_w": 650 if t % 4 < 3 else 240,
          "sm_clock_mhz": 1980, "pcie_tx_kbps": 20000 + t, "pcie_rx_kbps": 25000 + t,
          "nvlink_tx_kbps": 600000 if t % 4 < 3 else 42000000, "nvlink_rx_kbps": 580000 if t % 4 < 3 else 41000000}
         for t in range(60)]
gpus = [{"processes": [{"pid": p, "used_memory_bytes": 9_000_000_000} for p in pids[g*8:(g+1)*8]], "samples": trace}
        for g in range(8)]
json.dump({"seed": "bench", "gpus": gpus, "sample_ms": 1}, open(path, "w"))
PY
GPUATTEST_NVML_SIM="$work/scenario.json" "$bin/gpuattest-agent" bench --nvml-lib "$bin/libgpuattest_nvml_sim.so" \
  --sys-root "$work" --scratch "$work" --iterations "${ITERATIONS:-2000}"
