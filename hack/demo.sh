#!/usr/bin/env bash
# The README's "run" command: the main job (4 nodes x 8 GPUs) on a local control plane, in one go.
#
#   bash hack/demo.sh          set up (or reuse) everything and run the sample SFTJob; leaves it all running
#   bash hack/demo.sh down     stop the operator and delete the cluster
#   bash hack/demo.sh --real-nodes        the Preflight example as a real gang: 2 real kubelet nodes (containerd +
#                                         runc) run the trainer image (hack/images.sh); rank 0's log shows the
#                                         all-reduce. Needs root; installs Debian packages it lacks.
#   bash hack/demo.sh --real-nodes down   stop that one
#
# Steps: the venv (hack/bootstrap.sh), a real control plane with 4 fake 8-GPU nodes (hack/control-plane.sh:
# etcd, kube-apiserver, controller-manager, scheduler built from source; kwok plays the kubelets, so
# containers do not really run), the CRD + ServiceAccount + RBAC from the Helm chart, the operator as a
# local process, and examples/sftjob-multi-node.yaml. Idempotent: a second run reuses what is there.
#
# Env: TRAINING_HUB_DEMO_CLUSTER  cluster name (default training-hub)
#      TRAINING_HUB_DEMO_JOB      SFTJob manifest (default examples/sftjob-multi-node.yaml)
#      TRAINING_HUB_DEMO_SKIP_BOOTSTRAP=1   use the existing .venv as is
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD

REAL_NODES=0
ARGS=()
for arg in "$@"; do
  if [[ "$arg" == --real-nodes ]]; then REAL_NODES=1; else ARGS+=("$arg"); fi
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
if [[ $REAL_NODES == 1 ]]; then
  CLUSTER=${TRAINING_HUB_DEMO_CLUSTER:-training-hub-real}
else
  CLUSTER=${TRAINING_HUB_DEMO_CLUSTER:-training-hub}
fi
JOB_MANIFEST=${TRAINING_HUB_DEMO_JOB:-examples/sftjob-multi-node.yaml}
NAMESPACE=default
RELEASE=training-hub-operator
RELEASE_NAMESPACE=training-hub-system
CACHE_ROOT="${TRAINING_HUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/training-hub}"
STATE_DIR="$CACHE_ROOT/demo/$CLUSTER"
OPERATOR_PID_FILE="$STATE_DIR/operator.pid"
OPERATOR_LOG="$STATE_DIR/operator.log"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "demo: error: $*" >&2; exit 1; }

operator_pid() {
  # The recorded pid, only while it is still our operator (pids get reused).
  [[ -f "$OPERATOR_PID_FILE" ]] || return 1
  local pid
  pid=$(cat "$OPERATOR_PID_FILE")
  [[ -n "$pid" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "sftjob-operator run" || return 1
  echo "$pid"
}

stop_operator() {
  local pid
  if pid=$(operator_pid); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    echo "demo: operator (pid $pid) stopped" >&2
  fi
  rm -f "$OPERATOR_PID_FILE"
}

start_operator() {
  if pid=$(operator_pid); then
    echo "demo: operator already running (pid $pid)" >&2
  else
    # Ports 0: no metrics/health servers, so nothing clashes with other local processes.
    nohup .venv/bin/sftjob-operator run --kubeconfig "$KUBECONFIG" --metrics-port 0 --health-port 0 \
      >>"$OPERATOR_LOG" 2>&1 </dev/null &
    echo $! > "$OPERATOR_PID_FILE"
    sleep 2
    operator_pid >/dev/null || { tail -20 "$OPERATOR_LOG" >&2; die "the operator exited at start"; }
    echo "demo: operator started (pid $(cat "$OPERATOR_PID_FILE"))" >&2
  fi
}

# The Preflight example (examples/sftjob-preflight.yaml) as a real gang: 2 real kubelet nodes beside 1 fake one,
# the trainer image in real containers, rendezvous through the rank-0 Service's DNS name, all-reduce over gloo.
real_nodes_demo() {
  step "1/7 Python environment (.venv: the library and the operator)"
  if [[ "${TRAINING_HUB_DEMO_SKIP_BOOTSTRAP:-}" != 1 ]]; then
    bash hack/bootstrap.sh operator
  fi
  step "2/7 The trainer image (hack/images.sh: Debian base, podman; built once, then cached)"
  bash hack/images.sh prereqs >&2
  local archive trainer_image
  archive=$(bash hack/images.sh archive trainer | tail -n 1)  # a build first prints its log on stdout too
  trainer_image=$(bash hack/images.sh names | grep -- '-trainer:')
  step "3/7 Real-node binaries (kubelet, CoreDNS, pause; built once, then cached) and containerd + runc"
  eval "$(bash hack/control-plane.sh env)"
  bash hack/control-plane.sh node-deps
  bash hack/control-plane.sh node-build >/dev/null
  step "4/7 Control plane '$CLUSTER' with 1 fake node, then 2 real kubelet nodes holding the trainer image"
  KUBECONFIG=$(bash hack/control-plane.sh up "$CLUSTER" --nodes 1 --gpus-per-node 8)
  export KUBECONFIG
  if [[ $(kubectl get nodes -l training-hub.io/node-kind=real -o name | wc -l) -lt 2 ]]; then
    bash hack/control-plane.sh real-nodes "$CLUSTER" 2 8 --image "$archive" >/dev/null
  fi
  kubectl get nodes -L training-hub.io/node-kind,nvidia.com/gpu.count
  step "5/7 CRD and RBAC from the Helm chart; the operator as a local process (log: $OPERATOR_LOG)"
  helm upgrade --install "$RELEASE" deploy/helm/training-hub-operator --namespace "$RELEASE_NAMESPACE" \
    --create-namespace --set replicaCount=0 --wait --timeout 120s >/dev/null
  kubectl wait --for=condition=Established crd/sftjobs.training-hub.io --timeout=60s >/dev/null
  start_operator
  step "6/7 examples/sftjob-preflight.yaml, sized for this machine: 2 nodes x 1 process, gloo, host network"
  local job=llama-preflight-4x8
  kubectl delete sftjob "$job" -n "$NAMESPACE" --ignore-not-found --wait=true >/dev/null
  .venv/bin/python - "$trainer_image" <<'PY' | kubectl apply -n "$NAMESPACE" -f -
import json, sys, yaml
job = yaml.safe_load(open("examples/sftjob-preflight.yaml"))
spec = job["spec"]
# Real nodes here have no pod network: the product's host-network mode. One CPU process per node, gloo.
spec.update(nnodes=2, nprocPerNode=1, hostNetwork=True, image=sys.argv[1], imagePullPolicy="Never",
            nodeSelector={"training-hub.io/node-kind": "real"}, shmSize="1Gi")
spec["preflight"].update(sizeMb=64, iters=5, warmup=1, backend="gloo")
spec.pop("tolerations", None)
spec["env"] = [e for e in spec.get("env", []) if not e["name"].startswith("NCCL_")]
print(json.dumps(job))
PY
  local started=$SECONDS
  kubectl wait --for=condition=Succeeded "sftjob/$job" -n "$NAMESPACE" --timeout=600s >/dev/null \
    || { kubectl describe sftjob "$job" -n "$NAMESPACE" >&2; die "the preflight did not succeed"; }
  step "7/7 Succeeded in $((SECONDS - started)) s: what the operator read from the kubelet"
  kubectl get sftjob,pods -n "$NAMESPACE" -o wide
  echo
  echo "\$ kubectl logs $job-node-0   # rank 0: the all-reduce report"
  kubectl logs "$job-node-0" -n "$NAMESPACE" | grep -F '"event": "preflight"' | tail -1
  echo
  echo "status.summary.message: $(kubectl get sftjob "$job" -n "$NAMESPACE" -o jsonpath='{.status.summary.message}')"
  cat >&2 <<EOF

Two real kubelets ran the gang in containers (containerd + runc): rank 1 found rank 0 through the headless
Service's DNS name (CoreDNS), they rendezvoused and all-reduced over gloo, and the operator read the outcome
from the pods' termination messages.

  export KUBECONFIG=$KUBECONFIG
  kubectl logs $job-node-1          # rank 1: waited for the rendezvous endpoint, then ran
  kubectl describe sftjob $job

Tear it all down:  bash hack/demo.sh --real-nodes down
EOF
}

if [[ "${1:-}" == "down" ]]; then
  stop_operator
  bash hack/control-plane.sh down "$CLUSTER"
  rm -rf "$STATE_DIR"
  echo "demo: cluster $CLUSTER deleted" >&2
  exit 0
fi
[[ $# -eq 0 ]] || die "usage: bash hack/demo.sh [--real-nodes] [down]"
[[ -f "$JOB_MANIFEST" ]] || die "no such SFTJob manifest: $JOB_MANIFEST"
mkdir -p "$STATE_DIR"

if [[ $REAL_NODES == 1 ]]; then
  real_nodes_demo
  exit 0
fi

step "1/6 Python environment (.venv: the library and the operator; no training stack, nothing here trains)"
if [[ "${TRAINING_HUB_DEMO_SKIP_BOOTSTRAP:-}" != 1 ]]; then
  bash hack/bootstrap.sh operator
fi
[[ -x .venv/bin/sftjob-operator ]] || die ".venv/bin/sftjob-operator missing; run bash hack/bootstrap.sh"

step "2/6 Control plane '$CLUSTER' with 4 nodes x 8 nvidia.com/gpu (binaries are built once, then cached)"
eval "$(bash hack/control-plane.sh env)"
KUBECONFIG_PATH=$(bash hack/control-plane.sh up "$CLUSTER" --nodes 4 --gpus-per-node 8)
export KUBECONFIG=$KUBECONFIG_PATH
kubectl get nodes -L nvidia.com/gpu.count

step "3/6 CRD, ServiceAccount and RBAC from the Helm chart (replicaCount=0: the operator runs locally below)"
helm upgrade --install "$RELEASE" deploy/helm/training-hub-operator \
  --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set replicaCount=0 --wait --timeout 120s >/dev/null
kubectl wait --for=condition=Established crd/sftjobs.training-hub.io --timeout=60s >/dev/null
helm list --namespace "$RELEASE_NAMESPACE"

step "4/6 The operator, as a local process (log: $OPERATOR_LOG)"
start_operator

step "5/6 The sample SFTJob ($JOB_MANIFEST) and what it mounts"
# The example mounts a ReadWriteMany claim `shared-training`; here a static volume stands in for shared storage.
kubectl apply --server-side --field-manager=training-hub-demo -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: training-hub-demo-shared
spec:
  capacity: {storage: 1Ti}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: /tmp/training-hub-demo-shared}
  claimRef: {namespace: $NAMESPACE, name: shared-training}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: shared-training
  namespace: $NAMESPACE
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: training-hub-demo-shared
  resources: {requests: {storage: 1Ti}}
YAML
kubectl apply --server-side --field-manager=training-hub-demo -n "$NAMESPACE" -f "$JOB_MANIFEST"
JOB=$(kubectl create --dry-run=client -o jsonpath='{.metadata.name}' -f "$JOB_MANIFEST")

step "6/6 Waiting for the prepare pod, then the gang: pods created, scheduled one per node, running"
# The operator first runs $JOB-prepare-0 (training-hub prepare: the data processing, on CPU); the gang waits for it.
# kwok runs no containers, so the demo ends that pod as a kubelet would once the command exited 0.
PREPARE_POD="$JOB-prepare-0"
deadline=$((SECONDS + 180))
until [[ "$(kubectl get pod "$PREPARE_POD" -n "$NAMESPACE" -o jsonpath='{.status.phase}' 2>/dev/null)" =~ ^(Running|Succeeded)$ ]] \
    || [[ -n "$(kubectl get pods -n "$NAMESPACE" -l "training-hub.io/job-name=$JOB,!training-hub.io/role" -o name 2>/dev/null)" ]]; do
  (( SECONDS < deadline )) || { tail -30 "$OPERATOR_LOG" >&2; die "no prepare pod for sftjob/$JOB after 180 s"; }
  sleep 1
done
if [[ "$(kubectl get pod "$PREPARE_POD" -n "$NAMESPACE" -o jsonpath='{.status.phase}' 2>/dev/null)" == Running ]]; then
  summary='{\"outcome\": \"succeeded\", \"message\": \"demo: kwok ran no container; marked finished as a kubelet would\", \"reused\": false}'
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kubectl patch pod "$PREPARE_POD" -n "$NAMESPACE" --subresource=status --type=strategic -p "{\"status\": {\"phase\": \"Succeeded\",
    \"containerStatuses\": [{\"name\": \"prepare\", \"image\": \"\", \"imageID\": \"\", \"ready\": false, \"restartCount\": 0,
    \"state\": {\"terminated\": {\"exitCode\": 0, \"reason\": \"Completed\", \"finishedAt\": \"$now\", \"message\": \"$summary\"}}}]}}" >/dev/null
fi
GANG="training-hub.io/job-name=$JOB,!training-hub.io/role"
until [[ -n "$(kubectl get pods -n "$NAMESPACE" -l "$GANG" -o name 2>/dev/null)" ]]; do
  (( SECONDS < deadline )) || { tail -30 "$OPERATOR_LOG" >&2; die "no gang pods for sftjob/$JOB after 180 s"; }
  sleep 1
done
kubectl wait --for=condition=Ready pod -n "$NAMESPACE" -l "$GANG" --timeout=180s >/dev/null
kubectl wait --for=jsonpath='{.status.phase}'=Running "sftjob/$JOB" -n "$NAMESPACE" --timeout=120s >/dev/null

echo
kubectl get sftjobs,pods,svc -n "$NAMESPACE" -o wide
cat >&2 <<EOF

The SFTJob '$JOB' runs as a gang of pods, one per GPU node. (kwok simulates the kubelets: the pods
report Running but no container runs; a real cluster with the trainer image trains for real.)

  export KUBECONFIG=$KUBECONFIG
  kubectl get sftjobs -w               # phase, nodes ready, GPUs/node, restarts, progress
  kubectl describe sftjob $JOB         # conditions and events
  kubectl get sftjob $JOB -o yaml      # the full status
  tail -f $OPERATOR_LOG

Tear it all down:  bash hack/demo.sh down
EOF
