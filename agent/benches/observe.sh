#!/usr/bin/env bash
# Observation and fingerprint benchmark on the simulated NVML library: 8 GPUs, 64 live processes
# (8 per GPU), each process a real child with its own /proc entry. Prints the agent's JSON figures.
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
gpus = [{"processes": [{"pid": p, "used_memory_bytes": 9_000_000_000} for p in pids[g*8:(g+1)*8]]} for g in range(8)]
json.dump({"seed": "bench", "gpus": gpus}, open(path, "w"))
PY
GPUATTEST_NVML_SIM="$work/scenario.json" "$bin/gpuattest-agent" bench --nvml-lib "$bin/libgpuattest_nvml_sim.so" \
  --sys-root "$work" --scratch "$work" --iterations "${ITERATIONS:-2000}"
