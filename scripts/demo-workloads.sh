# Workloads for scripts/demo.sh: each org gets one pynode (a Knative Service) and one model (a
# KServe InferenceService whose predictor declares minReplicas 2 and one GPU a pod).
# With real Knative and KServe, KServe makes the model's Knative Service (model-predictor) and
# Knative creates revisions and pods; with the CRD-only plane the demo creates the Revisions
# itself, as KServe and Knative's configuration controller would, and reports what their
# annotations make Knative start.
# shellcheck shell=bash

image="example.invalid/s2z-demo@sha256:$(printf '%064d' 0)"
# Knative's stable window for the demo's revisions (upstream default 60s; 6s is the minimum), so
# that an idle revision with min-scale 0 is seen scaling to zero within seconds.
window=${DEMO_WINDOW:-10s}

has_knative() { [[ $(kubectl get cm -n knative-serving config-deployment -o name 2>/dev/null) ]]; }

# deploy_workloads ORG GENERATION: create or update the org's services; a new generation is a redeploy.
deploy_workloads() {
  local org=$1 gen=$2
  if has_knative; then
    kubectl apply -f - >/dev/null <<YAML
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: pynode, namespace: $org}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/window: "$window"}
    spec:
      containers:
        - image: $image
          env: [{name: GENERATION, value: "$gen"}]
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: model
  namespace: $org
  # KServe copies these onto the Revision template of the Knative Service it makes
  # (model-predictor); the model server takes 3s to load its weights (KWOK reads the delay).
  annotations: {autoscaling.knative.dev/window: "$window", pod-ready.stage.kwok.x-k8s.io/delay: "3s"}
spec:
  predictor:
    minReplicas: 2
    containers:
      - name: kserve-container
        image: $image
        env: [{name: GENERATION, value: "$gen"}]
        resources: {limits: {nvidia.com/gpu: "1"}}
YAML
  else
    kubectl apply -f - >/dev/null <<YAML
apiVersion: serving.knative.dev/v1
kind: Revision
metadata:
  name: pynode-0000$gen
  namespace: $org
  labels: {serving.knative.dev/configuration: pynode, serving.knative.dev/service: pynode}
spec:
  containers: [{image: $image}]
---
apiVersion: serving.knative.dev/v1
kind: Revision
metadata:
  name: model-predictor-0000$gen
  namespace: $org
  labels:
    serving.knative.dev/configuration: model-predictor
    serving.knative.dev/service: model-predictor
    serving.kserve.io/inferenceservice: model
  annotations: {autoscaling.knative.dev/min-scale: "2"}
spec:
  containers: [{image: $image, resources: {limits: {nvidia.com/gpu: "1"}}}]
YAML
  fi
}

# wait_warm ORG...: with Knative, wait until every latest revision has a Ready pod; fails after
# a minute if one has none.
wait_warm() {
  has_knative || return 0
  local org svc rev ready
  for org in "$@"; do
    for svc in pynode model-predictor; do
      ready=0
      for _ in $(seq 1 300); do
        rev=$(kubectl get configuration "$svc" -n "$org" -o jsonpath='{.status.latestCreatedRevisionName}' 2>/dev/null || true)
        ready=$(kubectl get pods -n "$org" -l "serving.knative.dev/revision=$rev" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null | grep -c Running || true)
        [[ -n $rev && $ready -ge 1 ]] && break
        sleep 0.2
      done
      [[ $ready -ge 1 ]] || { echo "no Ready pod for $org/$svc's latest revision ${rev:-?}" >&2; return 1; }
    done
  done
}

# wait_pods_gone ORG: with Knative, wait until none of the org's pods is left (Knative's
# autoscaler scales each idle revision with min-scale 0 to zero).
wait_pods_gone() {
  has_knative || return 0
  local org=$1 left
  for _ in $(seq 1 900); do
    left=$(kubectl get pods -n "$org" -o name 2>/dev/null | wc -l)
    [[ $left -eq 0 ]] && return 0
    sleep 0.2
  done
  return 1
}

# wait_created GEN ORG...: with Knative, wait until every service of each org has created its
# revision of generation GEN (for a model, KServe first updates its Knative Service, then Knative
# makes the revision); fails after a minute if one has not.
wait_created() {
  has_knative || return 0
  local gen=$1 org svc latest
  shift
  for org in "$@"; do
    for svc in pynode model-predictor; do
      for _ in $(seq 1 300); do
        latest=$(kubectl get configuration "$svc" -n "$org" -o jsonpath='{.status.latestCreatedRevisionName}' 2>/dev/null || true)
        [[ $latest == "$svc-0000$gen" ]] && break
        sleep 0.2
      done
      [[ $latest == "$svc-0000$gen" ]] || { echo "$org/$svc did not create revision $svc-0000$gen (latest: ${latest:-none})" >&2; return 1; }
    done
  done
}

# report_redeploy ORG...: per org, the revisions the redeploy created and the pods they started.
report_redeploy() {
  local org svc rev pods total revs min init scales state
  wait_created 2 "$@" || fail "the redeploy did not create every revision"
  if has_knative; then sleep 10; fi # give Knative and the scheduler time to start what they would
  printf '%-8s %-9s %-10s %-10s %-22s %s\n' ORG STATE REVISIONS PODS_STARTED "MIN/INITIAL SCALE" WHY
  for org in "$@"; do
    total=0 revs=0 scales=
    for svc in pynode model-predictor; do
      if has_knative; then
        rev=$(kubectl get configuration "$svc" -n "$org" -o jsonpath='{.status.latestCreatedRevisionName}')
        pods=$(kubectl get pods -n "$org" -l "serving.knative.dev/revision=$rev" -o name | wc -l)
      else
        rev=$svc-00002
        # Without Knative nothing starts pods; Knative would start initial-scale (default 1).
        init=$(kubectl get revision "$rev" -n "$org" -o jsonpath='{.metadata.annotations.autoscaling\.knative\.dev/initial-scale}')
        pods=${init:-1}
      fi
      min=$(kubectl get revision "$rev" -n "$org" -o jsonpath='{.metadata.annotations.autoscaling\.knative\.dev/min-scale}')
      init=$(kubectl get revision "$rev" -n "$org" -o jsonpath='{.metadata.annotations.autoscaling\.knative\.dev/initial-scale}')
      total=$((total + pods)) revs=$((revs + 1))
      scales="$scales ${min:--}/${init:--}"
    done
    state=$(kubectl get org "$org" -o jsonpath='{.status.state}')
    printf '%-8s %-9s %-10s %-10s %-22s %s\n' "$org" "$state" "$revs" "$total" "${scales# }" \
      "$( [[ $state == Dormant ]] && echo 'born with min-scale 0, initial-scale 0' || echo 'warm')"
    scales=
    if [[ $check == 1 && $state == Dormant && $total -ne 0 ]]; then fail "dormant org $org started $total pods"; fi
  done
  has_knative || echo "(CRD-only plane: PODS_STARTED is what Knative would start from these annotations; run tests/knative/build for real Knative)"
}
