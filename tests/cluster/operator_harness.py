"""Running the real operator (`sftjob-operator run`, a subprocess) against the test cluster, and small helpers
to apply SFTJobs and watch what happens. Used by tests/cluster/test_operator*.py and bench/operator_*.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

JOB_LABEL = "training-hub.io/job-name"

# Short timings so failure paths finish in seconds (production defaults are in reconcile.ReconcilePolicy).
FAST_ENV = {
    "SFTJOB_OPERATOR_RESTART_BACKOFF_SECONDS": "0.5",
    "SFTJOB_OPERATOR_RESTART_BACKOFF_MAX_SECONDS": "2",
    "SFTJOB_OPERATOR_RECHECK_SECONDS": "0.5",
    "SFTJOB_OPERATOR_PROGRESS_INTERVAL_SECONDS": "1",
    "SFTJOB_OPERATOR_RESYNC_SECONDS": "10",
    "SFTJOB_OPERATOR_REREAD_SECONDS": "10",
    "SFTJOB_OPERATOR_DEBOUNCE_SECONDS": "0.1",
    "SFTJOB_OPERATOR_FORCE_DELETE_AFTER": "5",
    "SFTJOB_OPERATOR_TRAINER_IMAGE": "training-hub-trainer:test",
}

TRAINING = {
    "modelPath": "/shared/models/granite",
    "dataPath": "/shared/data/train.jsonl",
    "ckptOutputDir": "/shared/checkpoints/run",
    "numEpochs": 2,
    "effectiveBatchSize": 32,
    "learningRate": 1.0e-5,
    "maxSeqLen": 1024,
}


# The operator tests run on their own tainted node pool, so GPUs held by other tests' pods never make a gang wait.
POOL_LABEL = "training-hub.io/test-pool"
POOL = "operator"
POOL_NODE_PREFIX = "op-gpu"


def create_pool(cluster, count: int = 4, gpus_per_node: int = 8) -> list[str]:
    names = cluster.create_gpu_nodes(count, gpus_per_node, prefix=POOL_NODE_PREFIX, labels={POOL_LABEL: POOL})
    cluster.kubectl("taint", "nodes", *names, f"{POOL_LABEL}={POOL}:NoSchedule", "--overwrite")
    return names


class OperatorProcess:
    """`sftjob-operator run -n <namespace>` with the test kubeconfig; logs go to a file for failure reports."""

    def __init__(self, cluster, namespaces: list[str], log_path: Path, env: Mapping[str, str] | None = None,
                 metrics_port: int = 0, fast: bool = True, health_port: int = 0) -> None:
        self.cluster = cluster
        self.namespaces = namespaces
        self.log_path = log_path
        timings = FAST_ENV if fast else {"SFTJOB_OPERATOR_TRAINER_IMAGE": FAST_ENV["SFTJOB_OPERATOR_TRAINER_IMAGE"]}
        self.env = {**os.environ, **timings, **(env or {}), "KUBECONFIG": cluster.kubeconfig}
        self.metrics_port = metrics_port
        self.health_port = health_port
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "OperatorProcess":
        self.starts += 1
        command = [sys.executable, "-m", "sftjob_operator.cli", "run", "--kubeconfig", self.cluster.kubeconfig,
                   "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        for namespace in self.namespaces:
            command += ["-n", namespace]
        log = open(self.log_path, "a")
        log.write(f"\n===== start {self.starts}: {' '.join(command)}\n")
        log.flush()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: the crash case (no cleanup at all)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sftjob(name: str, namespace: str, *, nnodes: int = 4, nproc_per_node: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "training-hub.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nnodes": nnodes,
            "nprocPerNode": nproc_per_node,
            "training": dict(TRAINING),
            "nodeSelector": {POOL_LABEL: POOL},
            "tolerations": [{"key": POOL_LABEL, "operator": "Equal", "value": POOL, "effect": "NoSchedule"}],
            # kwok runs no containers, so a prepare pod would never finish by itself: the gang tests start at the
            # gang; tests/cluster/test_operator_prepare.py runs the prepare pods (prepare={"enabled": True}).
            "prepare": {"enabled": False},
            **spec,
        },
    }


def apply(cluster, *objects: Mapping[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def get_job(cluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "sftjob", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def job_pods(cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"{JOB_LABEL}={name}")["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def condition(job: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for item in ((job or {}).get("status") or {}).get("conditions") or ():
        if item.get("type") == type_:
            return item
    return None


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3,
               describe: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = describe() if describe else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")
        time.sleep(interval)


NFS_SOURCE = {"nfs": {"server": "nfs.example.invalid", "path": "/export"}}  # kwok never mounts it


def shared_volume(cluster, namespace: str, claim: str = "shared", source: Mapping[str, Any] = NFS_SOURCE
                  ) -> dict[str, Any]:
    """A bound ReadWriteMany PVC on a PV with the given volume source (NFS by default: the scheduler needs it
    bound; real nodes take a hostPath, one directory of this host that pods on every real node mount)."""
    pv_name = f"{namespace}-{claim}"[:63]
    apply(
        cluster,
        {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "manual",
                **source,
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": pv_name,
                     "resources": {"requests": {"storage": "100Gi"}}},
        },
    )
    wait_until(
        lambda: cluster.kubectl("get", "pvc", claim, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout == "Bound",
        60, f"PVC {claim} bound",
    )
    return {"name": "shared", "claimName": claim, "mountPath": "/shared"}


def delete_pv(cluster, namespace: str, claim: str = "shared") -> None:
    cluster.kubectl("delete", "pv", f"{namespace}-{claim}"[:63], "--wait=false", "--ignore-not-found", check=False)


def describe_job(cluster, namespace: str, name: str):
    def describe() -> str:
        job = get_job(cluster, namespace, name) or {}
        pods = [(p["metadata"]["name"], p["metadata"]["labels"].get("training-hub.io/attempt"), (p.get("status") or {}).get("phase"),
                 bool(p["metadata"].get("deletionTimestamp"))) for p in job_pods(cluster, namespace, name)]
        return f"status: {json.dumps(job.get('status'), indent=1)}\npods: {pods}"

    return describe


def wait_phase(cluster, namespace: str, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_until(
        lambda: (job := get_job(cluster, namespace, name)) and (job.get("status") or {}).get("phase") == phase and job,
        timeout, f"SFTJob {name} phase {phase}", describe=describe_job(cluster, namespace, name),
    )


def wait_gang_running(cluster, namespace: str, name: str, nnodes: int, attempt: int = 0, timeout: float = 60) -> list[dict]:
    def running():
        pods = [p for p in job_pods(cluster, namespace, name) if not p["metadata"].get("deletionTimestamp")
                and "training-hub.io/role" not in p["metadata"]["labels"]]  # the gang, not its prepare pod
        ok = len(pods) == nnodes and all(
            (p.get("status") or {}).get("phase") == "Running"
            and p["metadata"]["labels"]["training-hub.io/attempt"] == str(attempt) for p in pods
        )
        return pods if ok else None

    pods = wait_until(running, timeout, f"gang {name} attempt {attempt} running", describe=describe_job(cluster, namespace, name))
    wait_phase(cluster, namespace, name, "Running", timeout)
    return pods


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}


class KubeletEndsDeletedPods:
    """What kwok leaves out: a kubelet stops the containers of a deleted pod and reports it terminated (exit 143,
    SIGTERM). kwok only removes deleted pods that have no finalizer, so a pod that Kueue keeps a finalizer on would
    stay Running forever. This thread ends such pods (bound to a node, being deleted, not terminated yet) in one
    namespace, as their kubelet would; unbound ones are the pod GC's (controller-manager) business, as in a cluster.
    Use as a context manager; `ended` lists the pods it ended."""

    def __init__(self, cluster, namespace: str, interval: float = 0.2) -> None:
        import threading

        self.cluster, self.namespace, self.interval = cluster, namespace, interval
        self.ended: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{namespace}", daemon=True)

    def __enter__(self) -> "KubeletEndsDeletedPods":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            result = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "json", check=False)
            if result.returncode != 0:
                continue
            for pod in json.loads(result.stdout)["items"]:
                meta, status = pod["metadata"], pod.get("status") or {}
                if (meta.get("deletionTimestamp") and pod["spec"].get("nodeName")
                        and status.get("phase") not in ("Succeeded", "Failed")):
                    try:
                        self.cluster.set_pod_terminated(self.namespace, meta["name"], 143, reason="Error")
                        self.ended.append(meta["name"])
                    except Exception:  # noqa: BLE001 - gone meanwhile: nothing left to end
                        pass
