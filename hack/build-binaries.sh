#!/usr/bin/env bash
# Builds the local control plane's upstream binaries from the Go module proxy at the versions pinned in
# hack/versions.env, into a cache outside the repository:
#
#   ${KAIZEN_CACHE:-~/.cache/kaizen}/bin/kubernetes-<v>/  kube-apiserver kube-controller-manager kube-scheduler kubectl
#   ${KAIZEN_CACHE:-~/.cache/kaizen}/bin/etcd-<v>/        etcd
#   ${KAIZEN_CACHE:-~/.cache/kaizen}/bin/kwok-<v>/        kwok
#   ${KAIZEN_CACHE:-~/.cache/kaizen}/bin/helm-<v>/        helm
#   ${KAIZEN_CACHE:-~/.cache/kaizen}/bin/prometheus-<v>/  prometheus
#
# A folder that exists is complete (each is built in a temporary folder and renamed), so a second run is instant.
# Usage: hack/build-binaries.sh [kubernetes|etcd|kwok|helm|prometheus ...]   (default: all)
#        hack/build-binaries.sh --check   (only check that Go is there and new enough)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${KAIZEN_CACHE:-$HOME/.cache/kaizen}
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

log() { printf '%s build-binaries: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# GOTOOLCHAIN=local: the Go on PATH builds everything, so it must be new enough; say so in one line, not mid-build.
command -v go >/dev/null || { log "Go is missing: install Go >= $GO_MINIMUM (https://go.dev/dl/) and put it on PATH"; exit 1; }
go_version=$(go env GOVERSION)
go_version=${go_version#go}
if ! printf '%s\n%s\n' "$GO_MINIMUM" "${go_version%%[-+ ]*}" | sort -V -C; then
  log "Go $go_version is too old: these pinned versions need Go >= $GO_MINIMUM (https://go.dev/dl/)"
  exit 1
fi
[ "${1:-}" != --check ] || exit 0

# new_module DIR NAME: an empty wrapper module to build upstream commands from.
new_module() {
  rm -rf "$1" && mkdir -p "$1" && (cd "$1" && go mod init "$2" >/dev/null 2>&1)
}

# install_to NAME VERSION BUILD_FUNCTION: run BUILD_FUNCTION with $out set, then publish $out atomically.
install_to() {
  local name=$1 version=$2 fn=$3 dest="$cache/bin/$1-$2"
  if [ -d "$dest" ]; then log "$name $version is cached in $dest"; return; fi
  local started=$SECONDS
  out="$cache/bin/.$name-$version.partial"
  rm -rf "$out" && mkdir -p "$out"
  log "building $name $version"
  "$fn" "$version"
  mv "$out" "$dest"
  log "built $name $version in $((SECONDS - started))s -> $dest"
}

build_kubernetes() {
  # k8s.io/kubernetes replaces its staging modules (k8s.io/api, ...) with ./staging paths, which `go install` refuses.
  # The wrapper module requires it and replaces every staging module by the tag published with the release
  # (v1.X.Y -> v0.X.Y).
  local v=$1 src="$cache/src/kubernetes-$1" minor major staging
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  staging="v0.${v#v*.}"
  new_module "$src" kaizen.dev/hack/kubernetes
  cd "$src"
  go mod edit -require "k8s.io/kubernetes@$v"
  go mod download -json "k8s.io/kubernetes@$v" >/dev/null
  local upstream_mod
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$upstream_mod"); do
    go mod edit -replace "$m=$m@$staging"
  done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  go build -trimpath -ldflags "$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  # etcd's own main module replaces its sibling modules; its server module exports etcdmain, so a two-line main
  # builds the same binary from the published modules.
  local v=$1 src="$cache/src/etcd-$1"
  new_module "$src" kaizen.dev/hack/etcd
  cd "$src"
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod edit -require "go.etcd.io/etcd/server/v3@$v"
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
}

build_kwok() {
  local v=$1
  GOBIN="$out" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$v" \
    "sigs.k8s.io/kwok/cmd/kwok@$v"
}

build_helm() {
  local v=$1
  GOBIN="$out" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" \
    "helm.sh/helm/v3/cmd/helm@$v"
}

build_prometheus() {
  # Prometheus 3.x publishes its Go module as v0.3XX.Y (v0.316.0 is Prometheus 3.16.0). Built without the web UI's
  # assets (no builtinassets tag: the dev stack uses the HTTP API only) and with the file, HTTP and Kubernetes service
  # discoveries only (remove_all_sd + enable_kubernetes_sd), which leaves out the cloud providers' SDKs.
  local v=$1 minor release
  minor=${v#v0.}; minor=${minor%%.*}
  release="$((10#$minor / 100)).$((10#$minor % 100)).${v##*.}"
  GOBIN="$out" go install -trimpath -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release" \
    "github.com/prometheus/prometheus/cmd/prometheus@$v"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(etcd helm kwok prometheus kubernetes)
for t in "${targets[@]}"; do
  case $t in
    kubernetes) install_to kubernetes "$KUBERNETES_VERSION" build_kubernetes ;;
    etcd) install_to etcd "$ETCD_VERSION" build_etcd ;;
    kwok) install_to kwok "$KWOK_VERSION" build_kwok ;;
    helm) install_to helm "$HELM_VERSION" build_helm ;;
    prometheus) install_to prometheus "$PROMETHEUS_VERSION" build_prometheus ;;
    *) echo "build-binaries: unknown target '$t' (expected kubernetes, etcd, kwok, helm or prometheus)" >&2; exit 2 ;;
  esac
  cd "$here"
done
