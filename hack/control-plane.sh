#!/usr/bin/env bash
# A real Kubernetes control plane for tests, without Docker or downloads of release binaries:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, kwokctl and helm
# are built from Go modules (once; cached under ~/.cache/training-hub, keyed by version) and run
# by `kwokctl --runtime binary` on 127.0.0.1. See docs/control-plane.md.
#
#   hack/control-plane.sh build        build (or find) every binary; prints the bin dir
#   hack/control-plane.sh env          prints `export` lines (PATH, TRAINING_HUB_K8S_BIN); builds first if needed
#   hack/control-plane.sh up [NAME]    starts a cluster (default name: training-hub) with 4 fake 8-GPU nodes
#   hack/control-plane.sh down [NAME]  deletes it and every process it started
#   hack/control-plane.sh nodes [NAME] [COUNT] [GPUS]   adds fake GPU nodes
#   hack/control-plane.sh kubeconfig [NAME]             prints the cluster's kubeconfig path
#   hack/control-plane.sh status [NAME] | versions | bin-dir (prints the bin dir if complete; never builds)
#   hack/control-plane.sh node-build          build (or find) what real nodes need: kubelet, CoreDNS, pause; prints the dir
#   hack/control-plane.sh node-bin-dir        prints that dir if complete; never builds
#   hack/control-plane.sh node-deps           apt-get install containerd runc busybox-static if missing (root)
#   hack/control-plane.sh real-nodes [NAME] [COUNT] [GPUS]   adds real kubelet nodes (root; containerd + runc from Debian)
#   hack/control-plane.sh kueue-build   build (or find) Kueue: binary, CRDs, webhook manifests; prints its dir
#   hack/control-plane.sh kueue-dir     prints Kueue's dir if complete; never builds
#   hack/control-plane.sh peer-build    build (or find) the benchmarks' peer, Kubeflow training-operator: binary + CRDs
#   hack/control-plane.sh peer-dir      prints the peer's dir if complete; never builds
#   hack/control-plane.sh prefetch      downloads the Go modules of every build not yet cached (network only, no
#                                       compiling): hack/test.sh runs it beside the first build, so later builds
#                                       find their modules on disk instead of downloading between compiles
#
# Env: TRAINING_HUB_K8S_BIN   a directory that already holds all the binaries (skips the build)
#      TRAINING_HUB_NODE_BIN  a directory that already holds kubelet, coredns and pause (skips node-build)
#      TRAINING_HUB_CACHE     cache root (default ${XDG_CACHE_HOME:-~/.cache}/training-hub)
# The braces make bash read the whole file before running it, so editing it mid-build is safe.
{
set -euo pipefail

# --- versions: the one place they are recorded -------------------------------------------------
K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
KWOK_FALLBACK_VERSION=v0.7.0
HELM_VERSION=v3.22.0
KUEUE_VERSION=v0.17.0
# The peer bench/operator_peer.py holds the operator against (Kubeflow training-operator, PyTorchJob controller).
PEER_VERSION=v1.8.1
# Upstream's Makefile stamps the Kubernetes version helm assumes offline (`helm template`, lint
# deprecations) from its client-go (v0.37 -> 1.37); without it helm assumes 1.20.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37
HELM_BUILD="$HELM_VERSION-k8s$HELM_K8S_MAJOR.$HELM_K8S_MINOR"
REQUIRED_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm)
# Real nodes (tests/support/real_nodes.py): the kubelet of the same release, CoreDNS for cluster DNS, and the
# pod sandbox's pause binary compiled from Kubernetes' own build/pause/linux/pause.c.
COREDNS_VERSION=v1.15.0
PAUSE_VERSION=3.10.1
NODE_BINARIES=(kubelet coredns pause)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${TRAINING_HUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/training-hub}"
BIN_CACHE="$CACHE_ROOT/bin"
BUILD_ROOT="$CACHE_ROOT/build"
GO_BUILD_FLAGS=(-p 2 -trimpath)
K8S_TAGS="selinux,notest,grpcnotrace"

log() { echo "control-plane: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Directory holding one symlink per binary, named after the full version set, so PATH gets one entry.
bin_set_dir() {
  echo "$BIN_CACHE/set-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_BUILD"
}

has_all_binaries() {
  local dir=$1 b
  for b in "${REQUIRED_BINARIES[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

require_go() {
  command -v go >/dev/null || die "go is not installed; install Go >= 1.24, or set TRAINING_HUB_K8S_BIN to a directory with ${REQUIRED_BINARIES[*]}"
}

# Builds into a temporary folder, then renames it into place: a half-finished build is never taken for a cache hit.
finish_component() {
  local tmp=$1 final=$2
  rm -rf "$final"
  mv "$tmp" "$final"
}

# The wrapper module that requires k8s.io/kubernetes and pins each staging module (docs/control-plane.md).
prepare_kubernetes_module() {
  local mod_dir=$1
  mkdir -p "$mod_dir"
  local modfile
  modfile=$(cd "$mod_dir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  [[ -f "$modfile" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  local go_line godebug_line staging
  go_line=$(grep -m1 '^go ' "$modfile")
  godebug_line=$(grep -m1 '^godebug ' "$modfile" || true)
  # Consumers don't inherit k8s.io/kubernetes's `replace k8s.io/x => ./staging/...`: pin each staging module to v0.<minor>.<patch>.
  staging=$(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$modfile")
  [[ -n "$staging" ]] || die "no staging modules found in $modfile"
  # go.sum is kept: a later component (the kubelet) reuses what an earlier one (kube-apiserver) verified.
  {
    echo "module training-hub/control-plane/kubernetes"
    echo
    echo "$go_line"
    echo
    [[ -n "$godebug_line" ]] && echo "$godebug_line" && echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    local m
    for m in $staging; do echo "	$m => $m v0.${K8S_VERSION#v1.}"; done
    echo ")"
  } > "$mod_dir/go.mod"
  echo "$godebug_line"
}

# go get + go build of k8s.io/kubernetes commands into `out`, stamped with the version as upstream does.
build_kubernetes_commands() {
  local out=$1; shift
  local pkgs=("$@") mod_dir="$BUILD_ROOT/kubernetes-$K8S_VERSION" godebug_line minor
  godebug_line=$(prepare_kubernetes_module "$mod_dir")
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  (cd "$mod_dir" && go get "${pkgs[@]/%/@$K8S_VERSION}" >&2) || die "go get of kubernetes $K8S_VERSION failed"
  # Keep upstream's runtime defaults even if `go get` raised the go line.
  if [[ -n "$godebug_line" ]] && ! grep -q '^godebug ' "$mod_dir/go.mod"; then echo "$godebug_line" >> "$mod_dir/go.mod"; fi
  local date ldflags="-s -w" pkgpath
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkgpath in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkgpath.gitVersion=$K8S_VERSION -X $pkgpath.gitMajor=1 -X $pkgpath.gitMinor=$minor"
    ldflags+=" -X $pkgpath.gitTreeState=clean -X $pkgpath.buildDate=$date"
  done
  local tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$mod_dir" && CGO_ENABLED=0 go build "${GO_BUILD_FLAGS[@]}" -tags "$K8S_TAGS" -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}" >&2) \
    || die "building ${pkgs[*]##*/} $K8S_VERSION failed"
  finish_component "$tmp" "$out"
}

build_kubernetes() {
  local out="$BIN_CACHE/kubernetes-$K8S_VERSION"
  has_all_binaries_in "$out" kube-apiserver kube-controller-manager kube-scheduler kubectl && return 0
  require_go
  local started=$SECONDS
  log "building kubernetes $K8S_VERSION (cold: 15-30 min on 2 cores) in $BUILD_ROOT/kubernetes-$K8S_VERSION"
  build_kubernetes_commands "$out" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  log "kubernetes $K8S_VERSION built in $((SECONDS - started)) s"
}

build_kubelet() {
  local out="$BIN_CACHE/kubelet-$K8S_VERSION"
  has_all_binaries_in "$out" kubelet && return 0
  require_go
  local started=$SECONDS
  log "building kubelet $K8S_VERSION (about 1 min once kube-apiserver's Go cache is warm)"
  build_kubernetes_commands "$out" k8s.io/kubernetes/cmd/kubelet
  log "kubelet $K8S_VERSION built in $((SECONDS - started)) s"
}

# CoreDNS with only the plugins cluster DNS needs (no forward: nothing leaves the machine), registered the way
# CoreDNS documents for custom builds: a main package that imports them and sets the directive order.
build_coredns() {
  local out="$BIN_CACHE/coredns-$COREDNS_VERSION"
  has_all_binaries_in "$out" coredns && return 0
  require_go
  local started=$SECONDS mod_dir="$BUILD_ROOT/coredns-$COREDNS_VERSION"
  log "building coredns $COREDNS_VERSION (cold: about 7 min on 2 cores) in $mod_dir"
  mkdir -p "$mod_dir"
  printf 'module training-hub/node/coredns\n\ngo 1.24\n\nrequire github.com/coredns/coredns %s\n' "$COREDNS_VERSION" > "$mod_dir/go.mod"
  cat > "$mod_dir/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order CoreDNS's plugin.cfg gives these plugins.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
  (cd "$mod_dir" && go mod tidy >&2) || die "resolving coredns $COREDNS_VERSION failed"
  local tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$mod_dir" && CGO_ENABLED=0 go build "${GO_BUILD_FLAGS[@]}" \
     -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" -o "$tmp/coredns" . >&2) \
    || die "building coredns $COREDNS_VERSION failed"
  finish_component "$tmp" "$out"
  log "coredns $COREDNS_VERSION built in $((SECONDS - started)) s"
}

# The sandbox ("pause") binary, from the pause.c inside the k8s.io/kubernetes module: registry.k8s.io/pause
# cannot be pulled here. Static, so a scratch image holding only it works (tests/support/real_nodes.py makes it).
build_pause() {
  local out="$BIN_CACHE/pause-$PAUSE_VERSION-k8s-$K8S_VERSION"
  has_all_binaries_in "$out" pause && return 0
  require_go
  command -v gcc >/dev/null || die "gcc is not installed (apt-get install gcc libc6-dev); it compiles the pause binary"
  local src
  src=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  [[ -f "$src/build/pause/linux/pause.c" ]] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@$K8S_VERSION"
  local tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-training-hub" -o "$tmp/pause" "$src/build/pause/linux/pause.c" \
    || die "compiling pause.c failed"
  strip "$tmp/pause" 2>/dev/null || true
  finish_component "$tmp" "$out"
  log "pause $PAUSE_VERSION compiled"
}

build_etcd() {
  local out="$BIN_CACHE/etcd-$ETCD_VERSION"
  has_all_binaries_in "$out" etcd && return 0
  require_go
  local started=$SECONDS mod_dir="$BUILD_ROOT/etcd-$ETCD_VERSION"
  log "building etcd $ETCD_VERSION in $mod_dir"
  mkdir -p "$mod_dir"
  # A module of its own, so etcd's dependency versions never move kube-apiserver's etcd client.
  printf 'module training-hub/control-plane/etcd\n\ngo 1.24\n' > "$mod_dir/go.mod"
  (cd "$mod_dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2) || die "go get of etcd $ETCD_VERSION failed"
  local tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$mod_dir" && CGO_ENABLED=0 go build "${GO_BUILD_FLAGS[@]}" -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3 >&2) \
    || die "building etcd $ETCD_VERSION failed"
  finish_component "$tmp" "$out"
  log "etcd $ETCD_VERSION built in $((SECONDS - started)) s"
}

# `go install pkg@version`: these modules have no replace lines, so no wrapper module is needed.
go_install_into() {
  local dir=$1 ldflags=$2; shift 2
  (GOBIN="$dir" CGO_ENABLED=0 go install "${GO_BUILD_FLAGS[@]}" -ldflags "$ldflags" "$@" >&2)
}

build_kwok() {
  local out="$BIN_CACHE/kwok-$KWOK_VERSION"
  has_all_binaries_in "$out" kwok kwokctl && return 0
  require_go
  local started=$SECONDS version tmp
  for version in "$KWOK_VERSION" "$KWOK_FALLBACK_VERSION"; do
    log "building kwok and kwokctl $version"
    tmp="$out.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    if go_install_into "$tmp" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$version -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION" \
         "sigs.k8s.io/kwok/cmd/kwok@$version" "sigs.k8s.io/kwok/cmd/kwokctl@$version"; then
      [[ $version == "$KWOK_VERSION" ]] || log "warning: kwok $KWOK_VERSION failed to build; using $version"
      finish_component "$tmp" "$out"
      log "kwok $version built in $((SECONDS - started)) s"
      return 0
    fi
  done
  die "building kwok failed ($KWOK_VERSION and $KWOK_FALLBACK_VERSION)"
}

build_helm() {
  local out="$BIN_CACHE/helm-$HELM_BUILD"
  has_all_binaries_in "$out" helm && return 0
  require_go
  local started=$SECONDS tmp="$out.tmp.$$"
  log "building helm $HELM_VERSION"
  rm -rf "$tmp" && mkdir -p "$tmp"
  local caps="-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$HELM_K8S_MAJOR -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR"
  caps+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$HELM_K8S_MAJOR -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR"
  go_install_into "$tmp" "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean $caps" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "building helm $HELM_VERSION failed"
  finish_component "$tmp" "$out"
  log "helm $HELM_VERSION built in $((SECONDS - started)) s"
}

# Kueue (tests/support/kueue.py runs it beside a cluster): the binary plus the CRDs and webhook manifests of the
# same module, so a cached run needs no module cache. Cold: ~6 min on 2 cores.
kueue_dir() { echo "$BIN_CACHE/kueue-$KUEUE_VERSION"; }

kueue_complete() {
  local dir=$1
  [[ -x "$dir/kueue" && -f "$dir/webhook-manifests.yaml" && -f "$dir/crds/kueue.x-k8s.io_workloads.yaml" ]]
}

build_kueue() {
  local out
  out=$(kueue_dir)
  kueue_complete "$out" && return 0
  require_go
  mkdir -p "$BIN_CACHE"
  exec 8>"$CACHE_ROOT/kueue-build.lock"
  flock 8
  if ! kueue_complete "$out"; then
    local started=$SECONDS tmp="$out.tmp.$$" module
    log "building kueue $KUEUE_VERSION (cold: ~6 min on 2 cores)"
    rm -rf "$tmp" && mkdir -p "$tmp/crds"
    go_install_into "$tmp" "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
      "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION" || die "building kueue $KUEUE_VERSION failed"
    module=$(cd "$tmp" && go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
    [[ -d "$module/config/components" ]] || die "kueue $KUEUE_VERSION: module source not found ($module)"
    cp "$module"/config/components/crd/bases/*.yaml "$tmp/crds/"
    cp "$module/config/components/webhook/manifests.yaml" "$tmp/webhook-manifests.yaml"
    chmod -R u+w "$tmp"
    finish_component "$tmp" "$out"
    log "kueue $KUEUE_VERSION built in $((SECONDS - started)) s"
  fi
  flock -u 8
}

# The benchmarks' peer (bench/operator_peer.py runs it beside a cluster): Kubeflow training-operator's binary plus
# its PyTorchJob CRD, from the same Go module. Cold (empty Go caches, 2 cores): see docs/operator.md#performance.
peer_dir() { echo "$BIN_CACHE/training-operator-$PEER_VERSION"; }

peer_complete() {
  local dir=$1
  [[ -x "$dir/training-operator" && -f "$dir/crds/kubeflow.org_pytorchjobs.yaml" ]]
}

build_peer() {
  local out
  out=$(peer_dir)
  peer_complete "$out" && return 0
  require_go
  mkdir -p "$BIN_CACHE"
  exec 7>"$CACHE_ROOT/peer-build.lock"
  flock 7
  if ! peer_complete "$out"; then
    local started=$SECONDS tmp="$out.tmp.$$" module
    log "building Kubeflow training-operator $PEER_VERSION (the benchmarks' peer)"
    rm -rf "$tmp" && mkdir -p "$tmp/crds"
    go_install_into "$tmp" "-s -w" "github.com/kubeflow/training-operator/cmd/training-operator.v1@$PEER_VERSION" \
      || die "building training-operator $PEER_VERSION failed"
    mv "$tmp/training-operator.v1" "$tmp/training-operator"
    module=$(cd "$tmp" && go mod download -json "github.com/kubeflow/training-operator@$PEER_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
    [[ -f "$module/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" ]] || die "training-operator $PEER_VERSION: CRDs not found ($module)"
    cp "$module/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" "$tmp/crds/"
    chmod -R u+w "$tmp"
    finish_component "$tmp" "$out"
    log "training-operator $PEER_VERSION built in $((SECONDS - started)) s"
  fi
  flock -u 7
}

# `go get` in a scratch module loads each package graph and so downloads exactly the modules its build needs, without
# compiling. Run for the components whose binaries are missing, all at once (downloads are I/O; Go locks its module
# cache, so concurrent downloads and builds are safe). The Kubernetes module itself is left to its build, which
# comes first anyway.
prefetch_modules() {
  require_go
  mkdir -p "$BUILD_ROOT"
  local scratch pids=() started=$SECONDS
  scratch=$(mktemp -d "$BUILD_ROOT/prefetch.XXXXXX")
  fetch() {  # NAME PACKAGE@VERSION...
    local name=$1 dir="$scratch/$1"; shift
    mkdir -p "$dir"
    printf 'module training-hub/prefetch/%s\n\ngo 1.24\n' "$name" > "$dir/go.mod"
    (cd "$dir" && GOFLAGS=-mod=mod go get "$@" >/dev/null 2>&1) || log "prefetch of $name failed (its build will download it)"
  }
  has_all_binaries_in "$BIN_CACHE/etcd-$ETCD_VERSION" etcd || { fetch etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" & pids+=($!); }
  has_all_binaries_in "$BIN_CACHE/kwok-$KWOK_VERSION" kwok kwokctl \
    || { fetch kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" & pids+=($!); }
  has_all_binaries_in "$BIN_CACHE/helm-$HELM_BUILD" helm || { fetch helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" & pids+=($!); }
  kueue_complete "$(kueue_dir)" || { fetch kueue "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION" & pids+=($!); }
  has_all_binaries_in "$BIN_CACHE/coredns-$COREDNS_VERSION" coredns || {
    fetch coredns "github.com/coredns/coredns/coremain@$COREDNS_VERSION" "github.com/coredns/coredns/plugin/kubernetes@$COREDNS_VERSION" \
      "github.com/coredns/coredns/plugin/bind@$COREDNS_VERSION" & pids+=($!); }
  peer_complete "$(peer_dir)" || { fetch peer "github.com/kubeflow/training-operator/cmd/training-operator.v1@$PEER_VERSION" & pids+=($!); }
  if [[ ${#pids[@]} -eq 0 ]]; then rm -rf "$scratch"; log "module prefetch: nothing to download (every build is cached)"; return 0; fi
  log "module prefetch: downloading for ${#pids[@]} build(s)"
  wait "${pids[@]}"
  rm -rf "$scratch"
  log "module prefetch done in $((SECONDS - started)) s"
}

has_all_binaries_in() {
  local dir=$1 b; shift
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# Prints the directory holding every binary, building what is missing.
ensure_binaries() {
  if [[ -n "${TRAINING_HUB_K8S_BIN:-}" ]]; then
    has_all_binaries "$TRAINING_HUB_K8S_BIN" || die "TRAINING_HUB_K8S_BIN=$TRAINING_HUB_K8S_BIN lacks one of: ${REQUIRED_BINARIES[*]}"
    echo "$TRAINING_HUB_K8S_BIN"
    return 0
  fi
  local set_dir
  set_dir=$(bin_set_dir)
  if has_all_binaries "$set_dir"; then echo "$set_dir"; return 0; fi
  mkdir -p "$BIN_CACHE" "$BUILD_ROOT"
  # Several test runs may ask at once: one builds, the others wait for it.
  exec 9>"$CACHE_ROOT/build.lock"
  flock 9
  if ! has_all_binaries "$set_dir"; then
    local started=$SECONDS
    build_kubernetes
    build_etcd
    build_kwok
    build_helm
    mkdir -p "$set_dir"
    local b
    for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -sfn "$BIN_CACHE/kubernetes-$K8S_VERSION/$b" "$set_dir/$b"; done
    ln -sfn "$BIN_CACHE/etcd-$ETCD_VERSION/etcd" "$set_dir/etcd"
    ln -sfn "$BIN_CACHE/kwok-$KWOK_VERSION/kwok" "$set_dir/kwok"
    ln -sfn "$BIN_CACHE/kwok-$KWOK_VERSION/kwokctl" "$set_dir/kwokctl"
    ln -sfn "$BIN_CACHE/helm-$HELM_BUILD/helm" "$set_dir/helm"
    log "all binaries ready in $set_dir ($((SECONDS - started)) s)"
  fi
  flock -u 9
  echo "$set_dir"
}

# Debian packages real nodes run on: containerd + runc (+ the CNI loopback plugin they pull in), and busybox
# for the harness's smoke-test image. Installs only what is missing; needs root and apt.
ensure_node_packages() {
  local missing=() tool
  for tool in containerd runc busybox; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || { log "real nodes need: ${missing[*]} (not root or no apt-get; not installed)"; return 1; }
  local started=$SECONDS
  log "installing containerd runc busybox-static (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q containerd runc busybox-static >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q containerd runc busybox-static >&2; } \
    || die "apt-get install containerd runc busybox-static failed"
  log "node packages installed in $((SECONDS - started)) s"
}

node_set_dir() {
  echo "$BIN_CACHE/nodes-k8s-$K8S_VERSION-coredns-$COREDNS_VERSION-pause-$PAUSE_VERSION"
}

has_node_binaries() {
  has_all_binaries_in "$1" "${NODE_BINARIES[@]}"
}

# Prints the directory holding kubelet, coredns and pause, building what is missing (after the control plane:
# the kubelet reuses kube-apiserver's module and Go cache).
ensure_node_binaries() {
  if [[ -n "${TRAINING_HUB_NODE_BIN:-}" ]]; then
    has_node_binaries "$TRAINING_HUB_NODE_BIN" || die "TRAINING_HUB_NODE_BIN=$TRAINING_HUB_NODE_BIN lacks one of: ${NODE_BINARIES[*]}"
    echo "$TRAINING_HUB_NODE_BIN"
    return 0
  fi
  local set_dir
  set_dir=$(node_set_dir)
  if has_node_binaries "$set_dir"; then echo "$set_dir"; return 0; fi
  ensure_binaries >/dev/null
  mkdir -p "$BIN_CACHE" "$BUILD_ROOT"
  exec 9>"$CACHE_ROOT/build.lock"
  flock 9
  if ! has_node_binaries "$set_dir"; then
    local started=$SECONDS
    build_kubelet
    build_pause
    build_coredns
    mkdir -p "$set_dir"
    ln -sfn "$BIN_CACHE/kubelet-$K8S_VERSION/kubelet" "$set_dir/kubelet"
    ln -sfn "$BIN_CACHE/coredns-$COREDNS_VERSION/coredns" "$set_dir/coredns"
    ln -sfn "$BIN_CACHE/pause-$PAUSE_VERSION-k8s-$K8S_VERSION/pause" "$set_dir/pause"
    log "node binaries ready in $set_dir ($((SECONDS - started)) s)"
  fi
  flock -u 9
  echo "$set_dir"
}

python_bin() {
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then echo "$REPO_ROOT/.venv/bin/python"; else command -v python3; fi
}

# up/down/nodes/kubeconfig share one implementation with the pytest fixture.
cluster_cli() {
  local bin_dir
  bin_dir=$(ensure_binaries)
  PATH="$bin_dir:$PATH" TRAINING_HUB_K8S_BIN="$bin_dir" TRAINING_HUB_CACHE="$CACHE_ROOT" \
    exec "$(python_bin)" "$REPO_ROOT/tests/support/kwok_cluster.py" "$@"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    build) ensure_binaries ;;
    env)
      local bin_dir
      bin_dir=$(ensure_binaries)
      printf 'export TRAINING_HUB_K8S_BIN=%q\n' "$bin_dir"
      printf 'export PATH=%q:"$PATH"\n' "$bin_dir"
      if [[ -z "${TRAINING_HUB_KUEUE_DIR:-}" ]]; then build_kueue; printf 'export TRAINING_HUB_KUEUE_DIR=%q\n' "$(kueue_dir)"; fi
      ;;
    kueue-build) build_kueue; kueue_dir ;;
    peer-build) build_peer; peer_dir ;;
    peer-dir) peer_complete "$(peer_dir)" && peer_dir && exit 0; exit 1 ;;
    prefetch) prefetch_modules ;;
    kueue-dir) kueue_complete "${TRAINING_HUB_KUEUE_DIR:-$(kueue_dir)}" && echo "${TRAINING_HUB_KUEUE_DIR:-$(kueue_dir)}" && exit 0; exit 1 ;;
    bin-dir)  # prints the binaries' directory if complete; never builds
      if [[ -n "${TRAINING_HUB_K8S_BIN:-}" ]]; then has_all_binaries "$TRAINING_HUB_K8S_BIN" && echo "$TRAINING_HUB_K8S_BIN" && exit 0; exit 1; fi
      has_all_binaries "$(bin_set_dir)" && bin_set_dir && exit 0; exit 1 ;;
    node-build) ensure_node_binaries ;;
    node-deps) ensure_node_packages ;;
    node-bin-dir)  # prints the node binaries' directory if complete; never builds
      if [[ -n "${TRAINING_HUB_NODE_BIN:-}" ]]; then has_node_binaries "$TRAINING_HUB_NODE_BIN" && echo "$TRAINING_HUB_NODE_BIN" && exit 0; exit 1; fi
      has_node_binaries "$(node_set_dir)" && node_set_dir && exit 0; exit 1 ;;
    versions)
      echo "kubernetes $K8S_VERSION"; echo "etcd $ETCD_VERSION"; echo "kwok $KWOK_VERSION"; echo "helm $HELM_VERSION"
      echo "coredns $COREDNS_VERSION"; echo "pause $PAUSE_VERSION"; echo "kueue $KUEUE_VERSION"; echo "training-operator $PEER_VERSION (peer)" ;;
    real-nodes)
      local node_bin
      node_bin=$(ensure_node_binaries)
      TRAINING_HUB_NODE_BIN="$node_bin" cluster_cli "$cmd" "$@" ;;
    up|down|nodes|kubeconfig|status) cluster_cli "$cmd" "$@" ;;
    *) sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; [[ -z "$cmd" || "$cmd" == help || "$cmd" == -h ]] && exit 0; exit 2 ;;
  esac
}

main "$@"
exit $?
}
