#!/usr/bin/env bash
# Installs what tests/unit/test_k8s_manifests.py renders and validates deploy/k8s with, pinned:
#   - kustomize, built by `go install` from the Go module proxy (no prebuilt download exists that we may fetch);
#   - the CRDs of KEDA (ScaledObject, TriggerAuthentication) and of the Prometheus operator (PodMonitor,
#     ServiceMonitor), taken from the YAML files their Go modules ship.
# Into .thumbs/tools (bin/kustomize, crds/). Idempotent: a second run checks the versions and returns.
# Needs Go (/usr/local/go/bin/go or `go` on PATH); a clean install takes about a minute on two cores.
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2  # v5.8.3 needs Go 1.27
KEDA_VERSION=v2.21.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0  # the newest the module proxy serves

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=$root/.thumbs/tools
crds=$tools/crds
crd_stamp="keda $KEDA_VERSION, prometheus-operator $PROMETHEUS_OPERATOR_VERSION"

kustomize_current() {
    [ -x "$tools/bin/kustomize" ] && [ "$("$tools/bin/kustomize" version 2>/dev/null)" = "$KUSTOMIZE_VERSION" ]
}

crds_current() {
    [ -f "$crds/VERSIONS" ] && [ "$(cat "$crds/VERSIONS")" = "$crd_stamp" ]
}

if kustomize_current && crds_current; then
    exit 0
fi

go=$(command -v go || true)
go=${go:-/usr/local/go/bin/go}
if [ ! -x "$go" ]; then
    echo "kustomize.sh: Go is needed to install kustomize and the CRDs (not on PATH, nor at $go)" >&2
    exit 1
fi

if ! kustomize_current; then
    # Built into a scratch folder and moved in whole, so an interrupted run leaves no half-written binary.
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    GOBIN=$scratch "$go" install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
    mkdir -p "$tools/bin"
    mv -f "$scratch/kustomize" "$tools/bin/kustomize"
fi

if ! crds_current; then
    # `go mod download -json` prints the module's unpacked folder in the module cache as "Dir".
    module_dir() {
        "$go" mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
    }
    keda=$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")
    prom=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
    rm -rf "$crds"
    mkdir -p "$crds"
    cp "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
        "$keda/config/crd/bases/keda.sh_triggerauthentications.yaml" \
        "$prom/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" \
        "$prom/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
        "$crds/"
    chmod u+w "$crds"/*.yaml  # the module cache's files are read-only
    echo "$crd_stamp" >"$crds/VERSIONS"
fi

echo "kustomize $("$tools/bin/kustomize" version); CRDs of $(cat "$crds/VERSIONS")"
