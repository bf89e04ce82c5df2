# s2z: `make demo` shows it working, `make test` runs every test against a real local control plane.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

STATE_DIR ?= $(CURDIR)/.state/cluster
CLUSTER   := tests/cluster/bin/s2z-cluster
GO_SRC    := $(shell find tests/cluster -name '*.go' -o -name '*.yaml' -path '*fixtures*') tests/cluster/go.mod tests/cluster/go.sum tests/cluster/build
export S2Z_STATE_DIR := $(STATE_DIR)

.PHONY: all build cluster cluster-up cluster-down test unit integration lint demo demo-down bench generate check-generated

all: build

## build: the Rust workspace (webhook, plugin) and the local control plane
build: $(CLUSTER)
	cargo build --workspace --bins

$(CLUSTER): $(GO_SRC)
	tests/cluster/build

## cluster-up / cluster-down: the local control plane, left running for you (see `$(CLUSTER) status`)
cluster-up: $(CLUSTER)
	$(CLUSTER) up --state-dir $(STATE_DIR)
cluster-down:
	@if [ -x $(CLUSTER) ]; then $(CLUSTER) down --state-dir $(STATE_DIR); fi

## test: everything CI runs: formatting, lints, generated files, unit tests and integration tests
test: build check-generated
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(CLUSTER) up --state-dir $(STATE_DIR)
	status=0; cargo test --workspace --no-fail-fast || status=$$?; \
	  $(CLUSTER) down --state-dir $(STATE_DIR) >/dev/null; exit $$status

## unit: the pure unit tests only, no cluster needed
unit:
	cargo test --workspace --lib --bins

## generate: regenerate committed YAML (the Org CRD) from the Rust types
generate:
	S2Z_UPDATE_GENERATED=1 cargo test -p s2z-core --lib generated -- --quiet

## check-generated: fail when the committed YAML is stale
check-generated:
	cargo test -p s2z-core --lib generated -- --quiet
