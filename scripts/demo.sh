#!/usr/bin/env bash
# `make demo`: s2z doing its job on a local control plane, step by step.
#   1. build, start the plane (with real Knative Serving when it is built), install s2z
#   2. three orgs: active, about to go dormant, exempt; `kubectl s2z status`
#   3. wait for the dormancy flip; redeploy everything; pods started per org
#   4. wake the dormant org through the activity endpoint; `kubectl s2z defrag --dry-run`
# The plane is left running; `make demo-down` stops it. DEMO_CHECK=1 makes it fail on any
# unexpected result (CI runs it that way).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

state=${DEMO_STATE_DIR:-$root/.state/demo}
cluster=$root/tests/cluster/bin/s2z-cluster
certs=$state/webhook-certs
tls_port=${DEMO_TLS_PORT:-18443}
metrics_port=${DEMO_METRICS_PORT:-18080}
period=${DEMO_DORMANCY_SECS:-20}
check=${DEMO_CHECK:-0}

bold=$'\e[1m'; reset=$'\e[0m'
[[ -t 1 && -z ${NO_COLOR:-} ]] || { bold=; reset=; }
n=0
step() { n=$((n + 1)); printf '\n%s==> [%d] %s%s\n' "$bold" "$n" "$*" "$reset"; }
run() { printf '$ %s\n' "$*"; "$@"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

# Real Knative Serving and KServe need root: their webhooks run in a network namespace of their own.
knative=()
if [[ ${DEMO_KNATIVE:-1} == 1 && $(id -u) == 0 ]]; then knative=(--kserve); fi

step "Building the control plane (Go)${knative:+, Knative Serving and KServe (Go)} and s2z (Rust); a first build takes a while, later ones seconds"
# Targets relative to the Makefile, so make knows how to build them from a fresh clone.
make --no-print-directory packages tests/cluster/bin/s2z-cluster ${knative:+tests/knative/bin/knative-version tests/kserve/bin/kserve-version}
cargo build --bins -p s2z-webhook -p kubectl-s2z
export PATH=$root/target/debug:$root/tests/cluster/bin:$PATH
if [[ ${#knative[@]} -gt 0 ]]; then planned="with real Knative Serving and KServe (--kserve)"; else planned="(Knative CRDs only: real Knative needs root)"; fi
step "Starting the local control plane $planned"
run "$cluster" up --state-dir "$state" --nodes 4 --gpus-per-node 8 "${knative[@]}"
export KUBECONFIG=$state/admin.kubeconfig

step "Installing s2z from manifests/overlays/local (the webhook runs on this host, registered by URL)"
S2Z_LOCAL_CERT_DIR=$certs S2Z_LOCAL_PORT=$tls_port manifests/overlays/local/install.sh >/dev/null
kubectl get crd orgs.s2z.dev -o name
kubectl -n s2z-system patch configmap s2z-settings --type=merge \
  -p "{\"data\":{\"orgDormancyPeriodSecs\":\"86400\",\"orgWarmupRatelimitStr\":\"1/10s\"}}" >/dev/null

step "Starting s2z-webhook (webhook + dormancy controller + activity endpoint)"
if [[ -f $state/webhook.pid ]] && kill -0 "$(cat "$state/webhook.pid")" 2>/dev/null; then
  kill "$(cat "$state/webhook.pid")"; sleep 1
fi
nohup s2z-webhook --tls-addr 127.0.0.1:$tls_port --metrics-addr 127.0.0.1:$metrics_port \
  --tls-cert-file "$certs/tls.crt" --tls-key-file "$certs/tls.key" --log-format json \
  >"$state/webhook.log" 2>&1 &
echo $! >"$state/webhook.pid"
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null || fail "webhook not ready; see $state/webhook.log"
echo "ready: https://127.0.0.1:$tls_port (logs: $state/webhook.log)"

step "Creating three orgs: acme (active), sleepy (dormant after ${period}s idle), vip (exempt)"
kubectl apply -f - <<YAML
apiVersion: s2z.dev/v1alpha1
kind: Org
metadata: {name: acme}
spec: {scaleToZeroAllowed: true}
---
apiVersion: s2z.dev/v1alpha1
kind: Org
metadata: {name: sleepy}
spec: {scaleToZeroAllowed: true, dormancyPeriodSecs: $period}
---
apiVersion: s2z.dev/v1alpha1
kind: Org
metadata: {name: vip}
spec: {scaleToZeroAllowed: false}
YAML
source "$root/scripts/demo-workloads.sh"
for org in acme sleepy vip; do
  kubectl create namespace "$org" --dry-run=client -o yaml | kubectl label -f - --local -o yaml "s2z.dev/org=$org" | kubectl apply -f - >/dev/null
  deploy_workloads "$org" 1
done
wait_warm acme sleepy vip
if has_knative; then
  # Each model is a real InferenceService; KServe made its Knative Service, Knative its Revision.
  run kubectl get inferenceservices -n acme -o custom-columns='NAME:.metadata.name,MIN-REPLICAS:.spec.predictor.minReplicas,LATEST-REVISION:.status.components.predictor.latestCreatedRevision'
fi
step "kubectl s2z status"
run kubectl s2z status

step "Waiting for sleepy to go dormant (${period}s after its last activity; the controller flips it on time)"
for _ in $(seq 1 $((period * 5 + 100))); do
  [[ $(kubectl get org sleepy -o jsonpath='{.status.state}') == Dormant ]] && break; sleep 0.2
done
[[ $(kubectl get org sleepy -o jsonpath='{.status.state}') == Dormant ]] || fail "sleepy did not go dormant"
kubectl get events --field-selector involvedObject.name=sleepy,involvedObject.kind=Org -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | tail -n 2 || true
run kubectl s2z status
if has_knative; then
  step "Waiting for Knative to scale sleepy to zero (its revisions now say min-scale 0; the autoscaler sees no traffic)"
  start=$SECONDS
  wait_pods_gone sleepy || fail "sleepy still has pods: $(kubectl get pods -n sleepy -o name | tr '\n' ' ')"
  echo "sleepy's pods are gone after $((SECONDS - start))s: Knative scaled every revision to zero"
  kubectl get podautoscalers -n sleepy -o custom-columns='REVISION:.metadata.name,DESIRED:.status.desiredScale,ACTUAL:.status.actualScale'
  run kubectl s2z status
fi

step "Redeploying every pynode and model of every org (a new revision each)"
for org in acme sleepy vip; do deploy_workloads "$org" 2; done
report_redeploy acme sleepy vip

step "Waking sleepy through the activity endpoint (a ServiceAccount token, as a gateway would)"
kubectl -n s2z-system create serviceaccount demo-gateway --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create clusterrolebinding demo-gateway-activity --clusterrole=s2z-activity-sender \
  --serviceaccount=s2z-system:demo-gateway --dry-run=client -o yaml | kubectl apply -f - >/dev/null
token=$(kubectl -n s2z-system create token demo-gateway)
printf '$ TOKEN=$(kubectl -n s2z-system create token demo-gateway)\n'
printf '$ curl --cacert %s -H "Authorization: Bearer $TOKEN" -X POST https://127.0.0.1:%s/v1/orgs/sleepy/activity\n' "$certs/tls.crt" "$tls_port"
code=$(curl -sS --cacert "$certs/tls.crt" -H "Authorization: Bearer $token" -X POST \
  "https://127.0.0.1:$tls_port/v1/orgs/sleepy/activity" -o /dev/null -w '%{http_code}')
echo "HTTP $code"
[[ $code == 202 ]] || fail "activity endpoint answered $code"
for _ in $(seq 1 100); do
  [[ $(kubectl get org sleepy -o jsonpath='{.status.state}') == Active ]] && break; sleep 0.2
done
[[ $(kubectl get org sleepy -o jsonpath='{.status.state}') == Active ]] || fail "sleepy did not wake"
if has_knative; then
  start=$SECONDS
  # The model's pods load their weights for a few seconds: status lists what is still starting.
  run kubectl s2z status sleepy
  wait_warm sleepy || fail "sleepy is Active but not warm"
  echo "sleepy is warm again after $((SECONDS - start))s: its revisions born at zero were scaled to their min-scale (Event Warming)"
  kubectl get events --field-selector involvedObject.name=sleepy,involvedObject.kind=Org,reason=Warming -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | tail -n 1 || true
fi
run kubectl s2z status sleepy
echo "sleepy's revisions, declared values restored in place (no new revision):"
kubectl get revisions -n sleepy -o custom-columns='REVISION:.metadata.name,MIN-SCALE:.metadata.annotations.autoscaling\.knative\.dev/min-scale,INITIAL-SCALE:.metadata.annotations.autoscaling\.knative\.dev/initial-scale'
echo "(sleepy's dormancy period is ${period}s, so without more activity it goes dormant again ${period}s from now)"

step "kubectl s2z defrag --dry-run on the busiest GPU node"
node=$(kubectl get pods -A -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep . | sort | uniq -c | sort -rn | awk 'NR==1{print $2}')
run kubectl s2z defrag "${node:-gpu-node-0}" --dry-run

step "Done. The cluster is still running:"
cat <<MSG
  export KUBECONFIG=$KUBECONFIG
  export PATH=$root/target/debug:$root/tests/cluster/bin:\$PATH
  kubectl s2z status --watch
  kubectl s2z sleep acme && kubectl s2z status
  kubectl s2z settings set --dormancy-period 1m
  kubectl s2z sweep --dry-run
  kubectl s2z defrag ${node:-gpu-node-0} --dry-run
  kubectl get orgs -o wide
Stop everything with: make demo-down
MSG
