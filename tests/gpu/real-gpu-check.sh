#!/usr/bin/env bash
# The real-GPU check: run on a machine with an NVIDIA GPU, driver and nvidia-smi, from the repository
# root, in one call. It builds the agent (unless target/release/gpuattest-agent exists), starts a short
# PyTorch training loop and a separate inference loop on GPU 0 (when PyTorch is importable), runs
# `gpuattest-agent inspect --json` against the driver's real libnvidia-ml.so.1 while they run, saves that
# JSON and nvidia-smi's view, and compares them field by field: UUID, serial, PCI bus id, memory total,
# name, and the compute pids per GPU. Everything lands in $OUT (default ./real-gpu-check-out).
# Exit 0 only when every compared field matches.
set -uo pipefail
OUT=${OUT:-./real-gpu-check-out}
mkdir -p "$OUT"
log() { echo "[real-gpu-check] $*" | tee -a "$OUT/check.log"; }

command -v nvidia-smi >/dev/null || { log "nvidia-smi not found: not a GPU machine"; exit 2; }
nvidia-smi -L | tee "$OUT/nvidia-smi-L.txt"
nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1 | tee "$OUT/driver.txt"

AGENT=target/release/gpuattest-agent
if [ ! -x "$AGENT" ]; then
  log "building the agent (release)"
  cargo build --release -p gpuattest-agent 2>&1 | tail -n 3 | tee -a "$OUT/check.log"
fi

pids=()
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "starting a PyTorch training loop and an inference loop"
  python3 - <<'PY' > "$OUT/train.log" 2>&1 &
import time, torch
m = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096)).cuda()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
end = time.time() + 90
while time.time() < end:
    x = torch.randn(256, 4096, device="cuda")
    loss = m(x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
PY
  pids+=($!)
  python3 - <<'PY' > "$OUT/infer.log" 2>&1 &
import time, torch
m = torch.nn.Linear(4096, 4096).cuda().eval()
end = time.time() + 90
with torch.no_grad():
    while time.time() < end:
        m(torch.randn(64, 4096, device="cuda")); time.sleep(0.01)
PY
  pids+=($!)
  sleep 20
else
  log "PyTorch with CUDA is not importable: comparing identities without workloads"
fi

GPUATTEST_LOG=warn "$AGENT" inspect --json > "$OUT/inspect.json" 2> "$OUT/inspect.stderr"
rc=$?
nvidia-smi --query-gpu=index,uuid,serial,pci.bus_id,memory.total,name --format=csv,noheader,nounits > "$OUT/smi-gpus.csv"
nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits > "$OUT/smi-apps.csv"
nvidia-smi -q > "$OUT/nvidia-smi-q.txt" 2>&1
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
[ $rc -eq 0 ] || { log "inspect failed: $(cat "$OUT/inspect.stderr")"; exit 1; }

python3 - "$OUT" <<'PY' | tee -a "$OUT/check.log"
import csv, json, sys
out = sys.argv[1]
obs = json.load(open(f"{out}/inspect.json"))
agent = {g["uuid"]: g for g in obs["gpus"]}
bad = 0
def cmp(what, a, b):
    global bad
    ok = a == b
    bad += not ok
    print(f"{'ok ' if ok else 'DIFF'} {what}: agent={a!r} nvidia-smi={b!r}")
for row in csv.reader(open(f"{out}/smi-gpus.csv")):
    idx, uuid, serial, bus, mem_mib, name = [c.strip() for c in row]
    g = agent.get(uuid)
    if g is None:
        cmp(f"gpu {idx} present", None, uuid); continue
    cmp(f"gpu {idx} serial", g["serial"], serial)
    cmp(f"gpu {idx} pci_bus_id", g["pci_bus_id"].upper(), bus.upper())
    cmp(f"gpu {idx} name", g["name"], name)
    cmp(f"gpu {idx} memory MiB", g["memory_total_bytes"] // (1024 * 1024), int(mem_mib))
smi_pids = {}
for row in csv.reader(open(f"{out}/smi-apps.csv")):
    if len(row) >= 2:
        smi_pids.setdefault(row[0].strip(), set()).add(int(row[1]))
for uuid, g in agent.items():
    cmp(f"{uuid} compute pids", sorted(p["pid"] for p in g["processes"]), sorted(smi_pids.get(uuid, set())))
print(f"{bad} differences; gpu_source={obs['gpu_source']} driver={obs['driver_version']}")
sys.exit(1 if bad else 0)
PY
