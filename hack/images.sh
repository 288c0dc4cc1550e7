#!/usr/bin/env bash
# The project's container images, built on this machine without Docker: podman (buildah inside) builds
# images/operator/Dockerfile and images/trainer/Dockerfile unchanged, on a Python base image made here from
# Debian packages (mmdebstrap) and passed as a build argument. Production builds keep their upstream bases
# (python:3.11-slim, CUDA PyTorch); the trainer built here runs on CPU (PyPI's torch, instructlab-training
# without its CUDA extras). See docs/images.md.
#
#   hack/images.sh build [operator|trainer|base ...]   build (default: operator trainer); a build whose
#                                                     inputs did not change is skipped
#   hack/images.sh archive operator|trainer [PATH]    writes a docker-archive of the image (built first if
#                                                     needed) and prints its path; import it into a node with
#                                                     `ctr -n k8s.io images import PATH`
#   hack/images.sh names                              prints the image names, one per line
#   hack/images.sh env                                prints `export` lines so plain podman commands use the
#                                                     same configuration (host network, rlimits that fit)
#   hack/images.sh prereqs                            installs mmdebstrap, podman, buildah if missing (apt-get)
#   hack/images.sh check                              exits 0 when podman can run here, else prints why
#
# Always host networking: no bridge, no iptables rule, no host sysctl is ever touched (containers.conf below).
# Env: TRAINING_HUB_CACHE   cache root (default ${XDG_CACHE_HOME:-~/.cache}/training-hub)
#      TRAINING_HUB_UV_CACHE  uv cache mounted into the trainer build (default: `uv cache dir`, ~/.cache/uv)
# The braces make bash read the whole file before running it, so editing it mid-build is safe.
{
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${TRAINING_HUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/training-hub}"
STATE="$CACHE_ROOT/images"
TAG=dev
BASE_SUITE=bookworm
BASE_IMAGE="localhost/training-hub-base:$BASE_SUITE"
OPERATOR_IMAGE="localhost/training-hub-operator:$TAG"
TRAINER_IMAGE="localhost/training-hub-trainer:$TAG"
# The base: Debian's Python 3.11 in a venv on PATH, so `python`/`pip` behave as in python:3.11-slim
# (Debian's own interpreter refuses pip installs, PEP 668). passwd: the Dockerfiles run useradd.
BASE_PACKAGES=python3,python3-venv,passwd
BASE_RECIPE_VERSION=1   # bump when the recipe below changes in a way the inputs do not show
VENV=/opt/python
# The CPU trainer: instructlab-training without its CUDA extras (flash-attn, mamba-ssm need nvcc), without
# DeepSpeed (its ops target GPUs) and triton (GPU kernels, 1 GB); torch comes from PyPI with the rest: PyPI's Linux
# torch is the CUDA build, whose nvidia-* libraries (3 GB) it cannot import without, so they stay.
TRAINER_CPU_ARGS=(--build-arg INSTRUCTLAB_TRAINING_EXTRAS= --build-arg DEEPSPEED_VERSION= --build-arg EXCLUDE_PACKAGES=triton)

log() { echo "images: $*" >&2; }
die() { log "error: $*"; exit 1; }

image_of() {
  case $1 in
    operator) echo "$OPERATOR_IMAGE" ;;
    trainer) echo "$TRAINER_IMAGE" ;;
    base) echo "$BASE_IMAGE" ;;
    *) die "unknown image '$1' (allowed: operator, trainer, base)" ;;
  esac
}

# --- podman configuration, owned by the project (never /etc) ------------------------------------
hard_limit() {
  local value
  value=$(ulimit -H "$1")
  [[ $value == unlimited ]] && value=1048576
  echo "$value"
}

write_containers_conf() {
  mkdir -p "$STATE"
  local nofile nproc tmp
  nofile=$(hard_limit -n)
  nproc=$(hard_limit -u)
  # conmon (so the container's init) runs with at most 32768 processes here, whatever the shell's limit.
  (( nproc <= 32768 )) || nproc=32768
  tmp=$(mktemp "$STATE/containers.conf.XXXXXX")
  # podman's default rlimits exceed what root may set here (no CAP_SYS_RESOURCE): stay at the hard limits.
  # netns=host: no bridge or iptables chain is ever created. No default sysctls: none is written anywhere.
  # cgroupfs + file events: no systemd needed.
  cat > "$tmp" <<EOF
# Written by hack/images.sh; used through CONTAINERS_CONF. Regenerated on every run.
[containers]
netns = "host"
default_sysctls = []
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  mv "$tmp" "$STATE/containers.conf"
}

use_containers_conf() {
  write_containers_conf
  export CONTAINERS_CONF="$STATE/containers.conf"
}

missing_tools() {
  local tool missing=()
  for tool in podman buildah mmdebstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  echo "${missing[*]}"
}

install_prereqs() {
  local missing
  missing=$(missing_tools)
  [[ -z $missing ]] && return 0
  command -v apt-get >/dev/null || die "missing: $missing, and no apt-get to install them"
  log "installing $missing (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends $missing >/dev/null 2>&1 || {
    apt-get -o DPkg::Lock::Timeout=600 update >/dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends $missing >/dev/null
  }
}

# --- what goes into a build -------------------------------------------------------------------
ca_bundle() {
  local candidate
  for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    [[ -n $candidate && -f $candidate ]] && { echo "$candidate"; return; }
  done
}

host_index_url() {
  local url=${UV_INDEX_URL:-${PIP_INDEX_URL:-}}
  [[ -n $url ]] || url=$(python3 -m pip config get global.index-url 2>/dev/null || true)
  echo "$url"
}

# pip and uv inside the build see the host's index and CA bundle (mounted read-only, not in any layer).
write_tool_configs() {
  local index
  index=$(host_index_url)
  {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    echo "disable-pip-version-check = true"
    [[ -n $index ]] && echo "index-url = $index"
  } > "$STATE/pip.conf"
  {
    # uv >= 0.13 calls it system-certs (native-tls is deprecated there).
    if uv pip install --help 2>/dev/null | grep -q -- --system-certs; then echo "system-certs = true"; else echo "native-tls = true"; fi
    [[ -n $index ]] && echo "index-url = \"$index\""
  } > "$STATE/uv.toml"
  return 0
}

uv_cache_dir() {
  if [[ -n ${TRAINING_HUB_UV_CACHE:-} ]]; then echo "$TRAINING_HUB_UV_CACHE"; return; fi
  local dir
  dir=$(uv cache dir 2>/dev/null || true)
  echo "${dir:-${XDG_CACHE_HOME:-$HOME/.cache}/uv}"
}

uv_version() {
  local version
  version=$(uv --version 2>/dev/null | awk '{print $2}')
  echo "${version:-}"
}

hash_stream() { sha256sum | cut -c1-16; }

# The files each Dockerfile copies (its Dockerfile.dockerignore is an allow-list of these).
source_digest() {
  (cd "$REPO_ROOT" && find pyproject.toml README.md training_hub operator -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
    | sort -z | xargs -0 sha256sum) | hash_stream
}

image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

stamp_matches() {
  local name=$1 key=$2
  [[ -f "$STATE/$name.key" && "$(cat "$STATE/$name.key")" == "$key" && -n "$(image_id "$(image_of "$name")")" ]]
}

write_stamp() { echo "$2" > "$STATE/$1.key"; }

# --- the base image ----------------------------------------------------------------------------
debian_sources() {
  # The host's Debian sources when they are for the same release (mirror, security, updates); else the default.
  local file=/etc/apt/sources.list.d/debian.sources
  if [[ -f $file ]] && grep -q "$BASE_SUITE" "$file"; then echo "$file"; fi
}

build_base() {
  local key
  key=$(printf '%s\n' "$BASE_SUITE" "$BASE_PACKAGES" "$VENV" "$BASE_RECIPE_VERSION" | hash_stream)
  if stamp_matches base "$key"; then log "base $BASE_IMAGE is current"; return; fi
  log "building $BASE_IMAGE from Debian $BASE_SUITE packages (mmdebstrap)"
  local started=$SECONDS tar="$STATE/base-rootfs.tar" sources
  sources=$(debian_sources)
  rm -f "$tar"
  mmdebstrap --quiet --variant=apt --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="chroot \"\$1\" python3 -m venv $VENV" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    "$BASE_SUITE" "$tar" ${sources:+"$sources"}
  podman import --quiet \
    --change "ENV PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["python3"]' \
    "$tar" "$BASE_IMAGE" >/dev/null
  rm -f "$tar"
  write_stamp base "$key"
  log "base built in $((SECONDS - started)) s"
}

# --- the operator and trainer images ----------------------------------------------------------
build_image() {
  local name=$1 image dockerfile base_id key uv_cache uv_ver ca
  image=$(image_of "$name")
  dockerfile="images/$name/Dockerfile"
  base_id=$(image_id "$BASE_IMAGE")
  uv_ver=$(uv_version)
  local args=(--build-arg "PYTHON_IMAGE=$BASE_IMAGE")
  if [[ $name == trainer ]]; then
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE" "${TRAINER_CPU_ARGS[@]}")
    [[ -n $uv_ver ]] && args+=(--build-arg "UV_VERSION=$uv_ver")
  fi
  key=$( (cd "$REPO_ROOT" && cat "$dockerfile" "$dockerfile.dockerignore"; echo "$base_id"; echo "${args[*]}"; source_digest) | hash_stream)
  if stamp_matches "$name" "$key"; then log "$name $image is current"; return; fi

  log "building $image from $dockerfile"
  write_tool_configs
  local mounts=(-v "$STATE/pip.conf:/etc/pip.conf:ro" -v "$STATE/uv.toml:/etc/uv/uv.toml:ro")
  ca=$(ca_bundle)
  [[ -n $ca ]] && mounts+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
  if [[ $name == trainer ]]; then
    # The host's uv cache (warm after hack/bootstrap.sh: torch, instructlab-training): nothing downloads twice.
    uv_cache=$(uv_cache_dir)
    mkdir -p "$uv_cache"
    mounts+=(-v "$uv_cache:/var/cache/uv")
    args+=(--build-arg UV_NO_CACHE=0 --build-arg UV_CACHE_DIR=/var/cache/uv)
  fi
  local started=$SECONDS
  (cd "$REPO_ROOT" && podman build --pull=never --network host --layers \
    --ignorefile "$dockerfile.dockerignore" -f "$dockerfile" \
    "${args[@]}" "${mounts[@]}" -t "$image" .)
  write_stamp "$name" "$key"
  # The image this build replaced (and the layers only it used; the trainer's are GBs): no longer a cache for anything.
  podman image prune --force --filter "label=org.opencontainers.image.title=training-hub-$name" >/dev/null || true
  log "$name built in $((SECONDS - started)) s: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
}

build() {
  local targets=("$@") target
  [[ ${#targets[@]} -gt 0 ]] || targets=(operator trainer)
  install_prereqs
  use_containers_conf
  mkdir -p "$STATE"
  exec 9>"$STATE/build.lock"
  flock 9
  build_base
  for target in "${targets[@]}"; do
    image_of "$target" >/dev/null
    [[ $target == base ]] || build_image "$target"
  done
  flock -u 9
}

archive() {
  local name=${1:-} image path id
  [[ $name == operator || $name == trainer ]] || die "usage: hack/images.sh archive operator|trainer [PATH]"
  image=$(image_of "$name")
  path=${2:-$STATE/$name.tar}
  build "$name"
  mkdir -p "$(dirname "$path")"
  id=$(image_id "$image")
  # Re-exported only when the image changed.
  if [[ ! -f $path || ! -f "$path.id" || "$(cat "$path.id")" != "$id" ]]; then
    log "exporting $image to $path"
    rm -f "$path" "$path.id"
    local started=$SECONDS
    podman save --quiet --format docker-archive -o "$path.tmp.$$" "$image"
    mv "$path.tmp.$$" "$path"
    echo "$id" > "$path.id"
    log "exported in $((SECONDS - started)) s: $(du -m "$path" | cut -f1) MB"
  fi
  echo "$path"
}

check() {
  local missing
  missing=$(missing_tools)
  [[ -z $missing ]] || { echo "not installed: $missing (hack/images.sh prereqs installs them)"; return 1; }
  use_containers_conf
  podman info >/dev/null 2>&1 || { echo "podman cannot run here: $(podman info 2>&1 | tail -1)"; return 1; }
}

case "${1:-build}" in
  build) shift || true; build "$@" ;;
  archive) shift; archive "$@" ;;
  names) printf '%s\n' "$OPERATOR_IMAGE" "$TRAINER_IMAGE" ;;
  env) write_containers_conf; echo "export CONTAINERS_CONF=$STATE/containers.conf" ;;
  prereqs) install_prereqs ;;
  check) check ;;
  *) die "usage: hack/images.sh build [operator|trainer|base ...] | archive NAME [PATH] | names | env | prereqs | check" ;;
esac
exit
}
