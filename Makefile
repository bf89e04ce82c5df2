# s2z: `make demo` shows it working, `make test` runs every test against a real local control plane.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

STATE_DIR ?= $(CURDIR)/.state/cluster
KNATIVE_STATE_DIR ?= $(CURDIR)/.state/knative
CLUSTER   := tests/cluster/bin/s2z-cluster
KNATIVE   := tests/knative/bin/knative-version
GO_SRC    := $(shell find tests/cluster -name '*.go' -o -name '*.yaml' -path '*fixtures*') tests/cluster/go.mod tests/cluster/go.sum tests/cluster/build
KNATIVE_SRC := $(shell find tests/knative/cmd tests/knative/internal -name '*.go') tests/knative/go.mod tests/knative/go.sum tests/knative/build
KSERVE    := tests/kserve/bin/kserve-version
KSERVE_SRC := tests/kserve/go.mod tests/kserve/go.sum tests/kserve/build
HELM      := tests/helm/bin/helm
HELM_SRC  := tests/helm/go.mod tests/helm/go.sum tests/helm/build
export S2Z_STATE_DIR := $(STATE_DIR)
export S2Z_KNATIVE_STATE_DIR := $(KNATIVE_STATE_DIR)

.PHONY: all build cluster cluster-up cluster-down knative-up knative-down test unit integration lint demo demo-down bench bench-webhook bench-status bench-dormancy bench-spike bench-wake webhook-local check-manifests generate check-generated chart check-chart dist image clean packages

all: build

## build: the Rust workspace (webhook, plugin), the local control plane, real Knative Serving,
## real KServe and Helm
build: packages $(CLUSTER) $(KNATIVE) $(KSERVE) $(HELM)
	cargo build --workspace --bins

## packages: the Debian packages the demo and the tests use (openssl, iproute2), installed if missing
packages:
	@scripts/ensure-packages

$(CLUSTER): $(GO_SRC)
	tests/cluster/build

$(KNATIVE): $(KNATIVE_SRC)
	tests/knative/build

# Real KServe (github.com/kserve/kserve, tests/kserve): its controller manager and webhooks, for the
# plane with Knative; a cold build takes 4 to 9 minutes on 2 cores.
$(KSERVE): $(KSERVE_SRC)
	tests/kserve/build

# Real Helm (helm.sh/helm/v4, tests/helm) for the chart tests; a cold build takes about 2 minutes.
$(HELM): $(HELM_SRC)
	tests/helm/build

## image: the s2z-webhook OCI image (target/image/oci, dist/s2z-webhook_v<version>_oci.tar), built
## with no container daemon: a static musl binary, written as an OCI layout by umoci
image: packages
	scripts/image

## cluster-up / cluster-down: the local control plane, left running for you (see `$(CLUSTER) status`)
cluster-up: $(CLUSTER)
	$(CLUSTER) up --state-dir $(STATE_DIR)
cluster-down:
	@if [ -x $(CLUSTER) ]; then $(CLUSTER) down --state-dir $(STATE_DIR); fi

## knative-up / knative-down: a second plane that also runs real Knative Serving (tests/knative)
## and real KServe (tests/kserve)
knative-up: $(CLUSTER) $(KNATIVE) $(KSERVE)
	$(CLUSTER) up --kserve --state-dir $(KNATIVE_STATE_DIR)
knative-down:
	@if [ -x $(CLUSTER) ]; then $(CLUSTER) down --state-dir $(KNATIVE_STATE_DIR); fi

## test: everything CI runs: formatting, lints, generated files, manifests, unit tests and integration tests
test: build image check-generated check-manifests
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(CLUSTER) up --state-dir $(STATE_DIR)
	status=0; cargo test --workspace --no-fail-fast || status=$$?; \
	  $(CLUSTER) down --state-dir $(STATE_DIR) >/dev/null; \
	  $(CLUSTER) down --state-dir $(KNATIVE_STATE_DIR) >/dev/null; exit $$status
	$(MAKE) --no-print-directory demo-check

## unit: the pure unit tests only, no cluster needed
unit:
	cargo test --workspace --lib --bins

## generate: regenerate committed YAML (the Org CRD) from the Rust types, then the Helm chart
generate:
	S2Z_UPDATE_GENERATED=1 cargo test -p s2z-core --lib generated -- --quiet
	$(MAKE) --no-print-directory chart

## check-generated: fail when the committed YAML (CRD, Helm chart) is stale
check-generated: check-chart
	cargo test -p s2z-core --lib generated -- --quiet

## chart: regenerate the Helm chart charts/s2z from manifests/base (tests/tests/helm_chart.rs)
chart:
	S2Z_UPDATE_GENERATED=1 cargo test -p s2z-tests --test helm_chart generated -- --quiet

## check-chart: fail when charts/s2z differs from what manifests/base generates
check-chart:
	cargo test -p s2z-tests --test helm_chart generated -- --quiet

DEMO_STATE_DIR ?= $(CURDIR)/.state/demo

## demo: build, start a local control plane, install s2z and show it working; leaves it running
demo:
	DEMO_STATE_DIR=$(DEMO_STATE_DIR) scripts/demo.sh

## demo-check: the demo, non-interactive, with its output checked (part of `make test`)
demo-check: build
	@mkdir -p .state
	status=0; DEMO_CHECK=1 NO_COLOR=1 DEMO_STATE_DIR=$(CURDIR)/.state/demo-ci DEMO_TLS_PORT=18543 DEMO_METRICS_PORT=18180 \
	  scripts/demo.sh > .state/demo-ci.log 2>&1 || status=$$?; \
	  $(MAKE) --no-print-directory demo-down DEMO_STATE_DIR=$(CURDIR)/.state/demo-ci >/dev/null 2>&1 || true; \
	  if [ $$status -ne 0 ]; then tail -n 40 .state/demo-ci.log; exit $$status; fi
	@for want in 'sleepy   Dormant' 'born with min-scale 0, initial-scale 0' 'HTTP 202' 'Knative scaled every revision to zero' 'sleepy is warm again' 'Dry run: nothing was changed.' 'make demo-down'; do \
	  grep -qF "$$want" .state/demo-ci.log || { echo "demo-check: missing '$$want' in .state/demo-ci.log"; exit 1; }; done
	@echo "demo-check: ok (.state/demo-ci.log)"

## demo-down: stop the demo's webhook and control plane
demo-down:
	@if [ -f $(DEMO_STATE_DIR)/webhook.pid ]; then kill $$(cat $(DEMO_STATE_DIR)/webhook.pid) 2>/dev/null || true; rm -f $(DEMO_STATE_DIR)/webhook.pid; fi
	@if [ -x $(CLUSTER) ]; then $(CLUSTER) down --state-dir $(DEMO_STATE_DIR); fi

## bench: every benchmark
bench: bench-webhook bench-status bench-dormancy bench-spike bench-wake

## bench-webhook: /mutate over TLS vs the no-op baseline, open and closed loop, memory with 10,000
## orgs cached (release build; no cluster needed). Pass options with BENCH_ARGS="--duration 10".
bench-webhook:
	cargo bench -p s2z-webhook --bench mutate -- $(BENCH_ARGS)

## bench-status: `kubectl s2z status -o json` (release build, first on PATH) against the `kubectl get`s
## of the same objects, through the real kubectl, on a private plane the bench starts and stops
## (2,000 orgs, 10,000 revisions, 1,000 running pods). Options: BENCH_ARGS="--rounds 9".
bench-status: $(CLUSTER)
	cargo build --release -p kubectl-s2z
	cargo bench -p s2z-tests --bench status -- --plugin $(CURDIR)/target/release/kubectl-s2z $(BENCH_ARGS)

## bench-dormancy: the dormancy controller and activity endpoint on a private control plane with
## 2,000 orgs and 10,000 revisions (about 10 minutes). Options: BENCH_ARGS="--help".
bench-dormancy: $(CLUSTER)
	cargo build --release -p s2z-webhook
	S2Z_WEBHOOK_BIN=$(CURDIR)/target/release/s2z-webhook cargo bench -p s2z-tests --bench dormancy -- $(BENCH_ARGS)

## bench-spike: the deploy spike on real Knative and KServe: 60 orgs (50 dormant) redeploy their
## pynodes (Knative Services) and models (InferenceServices) without s2z, then with it, each on a
## clean slate; pods started, GPU-seconds in the 300 s after, revisions created. Own plane with
## Knative and KServe in .state/bench-spike, stopped at the end (about 15 minutes). Exits non-zero
## if, with s2z, a dormant org starts a pod. BENCH_ARGS="--window 60".
bench-spike: $(CLUSTER) $(KNATIVE) $(KSERVE)
	cargo build -p s2z-webhook
	cargo run -p s2z-tests --example spike -- $(BENCH_ARGS)

## bench-wake: 100 dormant orgs woken at once on real Knative, s2z (POST activity, warm-up of the
## revisions born at zero) against the seed's way (edit each ksvc: a new revision): time from each
## wake request to the declared pods Ready (p50/p99/max) and API writes per woken revision. Own
## plane in .state/bench-wake, stopped at the end (about 10 minutes). BENCH_ARGS="--orgs 20".
bench-wake: $(CLUSTER) $(KNATIVE)
	cargo build -p s2z-webhook
	cargo run -p s2z-tests --example wake -- $(BENCH_ARGS)

## webhook-local: install s2z for a webhook running on this host into the current KUBECONFIG's
## cluster (manifests/overlays/local), e.g. the local control plane
webhook-local:
	cargo build -p s2z-webhook
	manifests/overlays/local/install.sh

## check-manifests: every kustomize overlay renders (self-signed with a throwaway certificate), and
## the prometheus-operator and grafana-dashboard components on top of one
check-manifests: $(CLUSTER)
	tests/cluster/bin/kubectl kustomize manifests/base >/dev/null
	tests/cluster/bin/kubectl kustomize manifests/overlays/cert-manager >/dev/null
	tests/cluster/bin/kubectl kustomize manifests/overlays/local >/dev/null
	tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && cp -r manifests $$tmp/ && \
	  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=check \
	    -keyout $$tmp/manifests/overlays/self-signed/tls.key -out $$tmp/manifests/overlays/self-signed/tls.crt 2>/dev/null && \
	  tests/cluster/bin/kubectl kustomize $$tmp/manifests/overlays/self-signed | grep -q caBundle && \
	  mkdir $$tmp/manifests/overlays/with-monitoring && \
	  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../cert-manager]\ncomponents: [../../components/prometheus-operator]\n' \
	    > $$tmp/manifests/overlays/with-monitoring/kustomization.yaml && \
	  tests/cluster/bin/kubectl kustomize $$tmp/manifests/overlays/with-monitoring | grep -q 'kind: ServiceMonitor' && \
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../cert-manager]\ncomponents: [../../components/grafana-dashboard]\n' \
    > $$tmp/manifests/overlays/with-monitoring/kustomization.yaml && \
  tests/cluster/bin/kubectl kustomize $$tmp/manifests/overlays/with-monitoring | grep -q 'name: s2z-grafana-dashboard'
	@echo "check-manifests: ok"

## dist: the release files in dist/: the plugin's krew archives kubectl-s2z_v<version>_<os>_<arch>.tar.gz
## (release build; kubectl-s2z and LICENSE), SHA256SUMS (with the image's), and s2z.yaml
## (plugin/krew/s2z.yaml with each archive's sha256), then checks them with the krew test.
## DIST_PLATFORMS="linux/amd64 linux/arm64" adds arm64 (needs its rustup target and
## gcc-aarch64-linux-gnu; see scripts/dist).
DIST_PLATFORMS ?= linux/amd64
# After `image`, so that SHA256SUMS also covers dist/s2z-webhook_v<version>_oci.tar.
dist: image
	DIST_PLATFORMS="$(DIST_PLATFORMS)" scripts/dist --out dist
	S2Z_DIST_DIR=dist cargo test -p kubectl-s2z --test krew dist -- --quiet

## clean: stop every plane this checkout started (cluster, Knative, demo, demo-check, bench-spike)
## and delete .state and target/ (tens of GB after the benches); the Go binaries in tests/*/bin stay
clean:
	$(MAKE) --no-print-directory cluster-down knative-down demo-down
	$(MAKE) --no-print-directory demo-down DEMO_STATE_DIR=$(CURDIR)/.state/demo-ci
	$(MAKE) --no-print-directory cluster-down STATE_DIR=$(CURDIR)/.state/bench-spike
	$(MAKE) --no-print-directory cluster-down STATE_DIR=$(CURDIR)/.state/bench-wake
	$(MAKE) --no-print-directory cluster-down STATE_DIR=$(CURDIR)/.state/helm
	rm -rf .state target
