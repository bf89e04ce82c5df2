#!/usr/bin/env bash
# Installs s2z for a webhook running on this host (overlays/local) into the cluster of the
# current KUBECONFIG, e.g. the local control plane:
#
#   export KUBECONFIG=$PWD/.state/cluster/admin.kubeconfig   # or: eval "$(tests/cluster/bin/s2z-cluster env)"
#   manifests/overlays/local/install.sh
#   target/debug/s2z-webhook --tls-addr 127.0.0.1:8443 --metrics-addr 127.0.0.1:8080 \
#     --tls-cert-file .state/webhook-local/tls.crt --tls-key-file .state/webhook-local/tls.key
#
# Environment: KUBECTL (default: tests/cluster/bin/kubectl if built, else kubectl),
# S2Z_LOCAL_CERT_DIR (default .state/webhook-local), S2Z_LOCAL_PORT (default 8443).
# Uninstall: manifests/overlays/local/install.sh --uninstall
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
overlay="$root/manifests/overlays/local"
kubectl=${KUBECTL:-}
if [[ -z $kubectl ]]; then
  if [[ -x $root/tests/cluster/bin/kubectl ]]; then kubectl=$root/tests/cluster/bin/kubectl; else kubectl=kubectl; fi
fi
dir=${S2Z_LOCAL_CERT_DIR:-$root/.state/webhook-local}
port=${S2Z_LOCAL_PORT:-8443}

if [[ ${1:-} == --uninstall ]]; then
  # The namespace goes last (delete -k orders it so); the CRD's deletion removes every Org.
  "$kubectl" delete -k "$overlay" --ignore-not-found --wait=false
  exit 0
fi

# A certificate for 127.0.0.1, made once and reused so a running webhook keeps working.
mkdir -p "$dir"
if [[ ! -s $dir/tls.crt || ! -s $dir/tls.key ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/CN=s2z-webhook-local" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
  chmod 600 "$dir/tls.key"
  echo "generated $dir/tls.crt and tls.key"
fi

"$kubectl" apply -k "$overlay"
# The URL and the caBundle, in one patch so the API server never calls with a stale pair.
ca_bundle=$(base64 < "$dir/tls.crt" | tr -d '\n')
"$kubectl" patch mutatingwebhookconfiguration s2z-webhook --type=json -p "[
  {\"op\": \"replace\", \"path\": \"/webhooks/0/clientConfig\",
   \"value\": {\"url\": \"https://127.0.0.1:$port/mutate\", \"caBundle\": \"$ca_bundle\"}}
]"

cat <<MSG

s2z is installed for a webhook on this host. Start it with:

  $root/target/debug/s2z-webhook --tls-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:8080 \\
    --tls-cert-file $dir/tls.crt --tls-key-file $dir/tls.key

Until it runs, Revisions are admitted unchanged (failurePolicy: Ignore).
MSG
