#!/usr/bin/env bash
# Checks every deployment file against the tools that will consume it. Called by .ci/run; run it by
# hand after editing anything under deploy/.
#
#   deploy/check.sh [BIN_DIR]     BIN_DIR holds gpuattest-agent and gpuattest-collector (target/release)
#   deploy/check.sh --update      re-render deploy/kubernetes/gpuattest.yaml from the chart
#
# Needs: systemd-analyze (systemd), python3 with pyyaml and kubernetes-validate (PYTHONPATH), openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
render=(python3 deploy/helm/render.py deploy/helm/gpuattest)
k8s_versions=(1.28.0 1.33.0)

if [ "${1:-}" = "--update" ]; then
  "${render[@]}" -f deploy/kubernetes/values.yaml -o deploy/kubernetes/gpuattest.yaml
  echo "rendered deploy/kubernetes/gpuattest.yaml"
  exit 0
fi
bin=${1:-target/release}
for b in gpuattest-agent gpuattest-collector; do
  [ -x "$bin/$b" ] || { echo "check.sh: $bin/$b is missing; build it first (cargo build --release --workspace)"; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check.sh: $*" >&2; exit 1; }

echo "-- systemd units: systemd-analyze verify, exposure, sysusers and tmpfiles"
root="$tmp/root"
mkdir -p "$root/usr/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp "$bin/gpuattest-agent" "$bin/gpuattest-collector" "$root/usr/bin/"
cp -r /lib/systemd/system "$root/usr/lib/systemd/"
cp deploy/systemd/*.service "$root/etc/systemd/system/"
cp deploy/systemd/gpuattest.sysusers "$root/usr/lib/sysusers.d/gpuattest.conf"
cp deploy/systemd/gpuattest.tmpfiles "$root/usr/lib/tmpfiles.d/gpuattest.conf"
# verify exits 0 on unknown keys and bad values, so any message at all is a failure.
out=$(systemd-analyze verify --root="$root" gpuattest-agent.service gpuattest-collector.service 2>&1) \
  || fail "systemd-analyze verify failed: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"
for u in gpuattest-agent gpuattest-collector; do
  # --threshold is in tenths: 30 is an overall exposure of 3.0.
  systemd-analyze security --offline=yes --root="$root" --threshold=30 "$u.service" >"$tmp/$u.security" 2>&1 \
    || fail "$u.service: exposure above 3.0: $(tail -n 1 "$tmp/$u.security")"
  tail -n 1 "$tmp/$u.security"
done
systemd-sysusers --root="$root" --dry-run >"$tmp/sysusers" 2>&1 || fail "sysusers: $(cat "$tmp/sysusers")"
grep -q "gpuattest-collector" "$tmp/sysusers" || fail "sysusers created no gpuattest-collector user: $(cat "$tmp/sysusers")"
# tmpfiles names its groups, which exist once sysusers has run.
systemd-sysusers --root="$root" >/dev/null 2>&1
systemd-tmpfiles --root="$root" --create "$root/usr/lib/tmpfiles.d/gpuattest.conf" 2>&1 | tee "$tmp/tmpfiles"
[ ! -s "$tmp/tmpfiles" ] || fail "tmpfiles: $(cat "$tmp/tmpfiles")"
[ "$(stat -c %a "$root/etc/gpuattest")" = 755 ] || fail "tmpfiles: /etc/gpuattest is not 0755"
# Each daemon, as its own user, reads its own config and not the other's secret: setpriv over the tree
# sysusers and tmpfiles made (the scratch root's users, by number).
if command -v setpriv >/dev/null; then
  chmod 755 "$tmp" "$root" "$root/etc"
  id_of() { awk -F: -v u="$1" '$1 == u {print $3 ":" $4}' "$root/etc/passwd"; }
  gid_of() { awk -F: -v g="$1" '$1 == g {print $3}' "$root/etc/group"; }
  cp deploy/config/collector.toml "$root/etc/gpuattest/collector.toml"
  printf 'gpa_test\n' >"$root/etc/gpuattest/enroll-token"
  systemd-tmpfiles --root="$root" --create "$root/usr/lib/tmpfiles.d/gpuattest.conf"
  as() { local ug; ug=$(id_of "$1"); setpriv --reuid="${ug%%:*}" --regid="${ug##*:}" --clear-groups "${@:2}"; }
  as gpuattest-collector cat "$root/etc/gpuattest/collector.toml" >/dev/null \
    || fail "the collector's user cannot read /etc/gpuattest/collector.toml"
  if as gpuattest-collector cat "$root/etc/gpuattest/enroll-token" >/dev/null 2>&1; then
    fail "the collector's user can read the agent's enroll token"
  fi
  ug=$(id_of gpuattest)
  setpriv --reuid="${ug%%:*}" --regid="${ug##*:}" --groups="$(gid_of gpuattest)" cat "$root/etc/gpuattest/enroll-token" >/dev/null \
    || fail "the agent's user cannot read /etc/gpuattest/enroll-token"
  echo "systemd: each daemon's user reads its own file under /etc/gpuattest (setpriv)"
else
  echo "setpriv not installed: file access as the service users not checked"
fi
echo "systemd: units verified, users and directories created in a scratch root"

echo "-- Helm chart: rendered, every manifest checked against the Kubernetes schemas (strict)"
for v in "${k8s_versions[@]}"; do
  "${render[@]}" --validate "$v" >/dev/null 2>"$tmp/render.log" || fail "$(cat "$tmp/render.log")"
  "${render[@]}" -f deploy/kubernetes/values.yaml --validate "$v" >/dev/null 2>"$tmp/render.log" \
    || fail "$(cat "$tmp/render.log")"
done
cat >"$tmp/scale.yaml" <<'VALUES'
collector:
  replicas: 3
  database:
    existingSecret: gpuattest-postgres
    caSecret: gpuattest-postgres-ca
  exportKey:
    existingSecret: gpuattest-export-key
  policy: |
    extend_builtin = true
agent:
  nvmlHostPath: /usr/lib/x86_64-linux-gnu
  clientCertSecret: gpuattest-agent-client
  kubelet:
    enabled: true
    insecureSkipTLSVerify: true
VALUES
"${render[@]}" -f "$tmp/scale.yaml" --validate "${k8s_versions[-1]}" >"$tmp/scale.out" 2>"$tmp/render.log" \
  || fail "$(cat "$tmp/render.log")"
grep -q "GPUATTEST_DATABASE" "$tmp/scale.out" || fail "database values did not reach the Deployment"
grep -q "secretName: gpuattest-export-key" "$tmp/scale.out" || fail "the shared export key is not mounted"
grep -q "secretName: gpuattest-postgres-ca" "$tmp/scale.out" || fail "the database CA is not mounted"
printf 'collector:\n  replicas: 2\n  database:\n    existingSecret: pg\n' >"$tmp/nokey.yaml"
if "${render[@]}" -f "$tmp/nokey.yaml" >/dev/null 2>"$tmp/nokey.log"; then
  fail "replicas on a shared store without a shared export key rendered; the chart must refuse them"
fi
grep -q "exportKey.existingSecret" "$tmp/nokey.log" || fail "refusal does not say what to do: $(cat "$tmp/nokey.log")"
grep -q -- "--kubelet-insecure-skip-tls-verify" "$tmp/scale.out" || fail "kubelet values did not reach the DaemonSet"
printf 'collector:\n  replicas: 2\n' >"$tmp/bad.yaml"
if "${render[@]}" -f "$tmp/bad.yaml" >/dev/null 2>"$tmp/bad.log"; then
  fail "two replicas on the embedded store rendered; the chart must refuse them"
fi
grep -q "existingSecret" "$tmp/bad.log" || fail "refusal does not say what to do: $(cat "$tmp/bad.log")"
"${render[@]}" -f deploy/kubernetes/values.yaml -o "$tmp/gpuattest.yaml"
diff -u deploy/kubernetes/gpuattest.yaml "$tmp/gpuattest.yaml" \
  || fail "deploy/kubernetes/gpuattest.yaml is stale; run deploy/check.sh --update"
if command -v helm >/dev/null; then
  helm lint deploy/helm/gpuattest
  helm template gpuattest deploy/helm/gpuattest -n gpuattest -f deploy/kubernetes/values.yaml >"$tmp/helm.yaml"
  python3 - "$tmp/helm.yaml" "$tmp/gpuattest.yaml" <<'PY'
import sys, yaml
a, b = ([d for d in yaml.safe_load_all(open(p)) if d] for p in sys.argv[1:])
sys.exit(0 if a == b else "helm template and render.py disagree")
PY
else
  echo "helm not installed: rendered with deploy/helm/render.py only"
fi

echo "-- configs the chart renders pass --check-config (TLS paths replaced by scratch PEMs)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=gpuattest-collector \
  -addext subjectAltName=DNS:gpuattest-collector -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null
python3 - "$tmp/gpuattest.yaml" "$tmp" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap":
        for name, text in d["data"].items():
            open(f"{sys.argv[2]}/{name}", "w").write(text)
PY
"$bin/gpuattest-agent" run --check-config --config "$tmp/agent.toml" --tls-ca "$tmp/tls.crt"
"$bin/gpuattest-collector" serve --check-config --config "$tmp/collector.toml" --data "$tmp/data" \
  --tls-cert "$tmp/tls.crt" --tls-key "$tmp/tls.key" --client-ca "$tmp/tls.crt" \
  --http-tls-cert "$tmp/tls.crt" --http-tls-key "$tmp/tls.key"
echo "deploy checks passed"
