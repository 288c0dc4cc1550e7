"""Helpers for the deployment tests (helm, examples, GitOps): the chart, a ServiceAccount's kubeconfig,
the operator as a local process, and `kubectl auth can-i` checks. Only the real API server is used."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "training-hub-operator"
CRD_FILE = REPO / "deploy" / "crds" / "training-hub.io_sftjobs.yaml"
EXAMPLES_DIR = REPO / "examples"
OPERATOR_CLI = Path(sys.executable).with_name("sftjob-operator")


def helm(cluster, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(cluster.bin_dir / "helm"), "--kubeconfig", cluster.kubeconfig, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cluster.env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def install_crd(cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    wait_established(cluster, "sftjobs.training-hub.io")


def wait_established(cluster, crd: str, timeout: float = 60) -> None:
    # A CRD created a moment ago may have no status yet: `kubectl wait` then fails at once
    # (".status.conditions accessor error") instead of waiting, so wait again until the deadline.
    deadline = time.monotonic() + timeout
    wait = ("wait", "--for=condition=Established", f"crd/{crd}", f"--timeout={int(timeout)}s")
    while cluster.kubectl(*wait, check=False).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    cluster.kubectl(*wait)


def restricted_namespace(cluster, name: str) -> str:
    """A namespace where Pod Security admission enforces (and warns about) the `restricted` standard."""
    return cluster.create_namespace(
        name,
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted",
        },
    )


def service_account_kubeconfig(cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token from `kubectl create token`)."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    config = yaml.safe_load(cluster.kubectl("config", "view", "--raw", "--minify", "--flatten").stdout)
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config["users"] = [{"name": user, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = user
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def operator_process(
    kubeconfig: str | Path,
    log_path: Path,
    *,
    namespaces: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """`sftjob-operator run` as a child process; stopped (SIGTERM, then SIGKILL) on exit."""
    cmd = [str(OPERATOR_CLI), "run", "--kubeconfig", str(kubeconfig), "--metrics-port", "0",
           "--health-port", str(free_port())]
    for namespace in namespaces:
        cmd += ["--namespace", namespace]
    env = {**os.environ, "SFTJOB_OPERATOR_RESYNC_SECONDS": "5", "SFTJOB_OPERATOR_REREAD_SECONDS": "5", **(extra_env or {})}
    # kopf's login reads $KUBECONFIG (the kubernetes client captures it at import time), so set both.
    env["KUBECONFIG"] = str(kubeconfig)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60, interval: float = 0.5,
              log_path: Path | None = None) -> Any:
    """Polls `probe` until it returns something truthy; on timeout the operator's log tail is in the error."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = ""
            if log_path and log_path.exists():
                tail = "\noperator log (tail):\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


def get_json(cluster, *args: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def sftjob_manifest(name: str, *, nnodes: int = 2, nproc_per_node: int = 8, **spec: Any) -> dict[str, Any]:
    """A small runnable SFTJob (no volumes: the fake nodes have no storage)."""
    return {
        "apiVersion": "training-hub.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": name},
        "spec": {
            "training": {
                "modelPath": "/models/tiny",
                "dataPath": "/data/train.jsonl",
                "ckptOutputDir": "/tmp/ckpt",
                "numEpochs": 1,
                "effectiveBatchSize": 16,
                "learningRate": 1e-5,
                "maxSeqLen": 512,
            },
            "nnodes": nnodes,
            "nprocPerNode": nproc_per_node,
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "prepare": {"enabled": False},  # kwok runs no containers: no prepare pod would ever finish
            **spec,
        },
    }


def job_pods(cluster, namespace: str, job: str) -> list[dict[str, Any]]:
    listing = get_json(cluster, "pods", "-n", namespace, "-l", f"training-hub.io/job-name={job}")
    return sorted((listing or {}).get("items", []), key=lambda p: p["metadata"]["name"])


def condition(job: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for item in ((job or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return item
    return None


def run_gang_to_success(cluster, namespace: str, job: str, nnodes: int, log_path: Path) -> dict[str, Any]:
    """Drive one SFTJob through the operator: gang created, running, every rank exits 0 -> Succeeded."""
    pods = wait_for(f"{nnodes} pods of sftjob {job}", lambda: len(job_pods(cluster, namespace, job)) == nnodes
                    and job_pods(cluster, namespace, job), timeout=90, log_path=log_path)
    assert sorted(p["metadata"]["labels"]["training-hub.io/node-rank"] for p in pods) == [str(r) for r in range(nnodes)]
    wait_for(f"sftjob {job} Running", lambda: ((get_json(cluster, "sftjob", "-n", namespace, job) or {})
             .get("status") or {}).get("phase") == "Running", timeout=90, log_path=log_path)
    for pod in pods:
        cluster.set_pod_terminated(namespace, pod["metadata"]["name"], 0)
    return wait_for(f"sftjob {job} Succeeded",
                    lambda: (c := condition(get_json(cluster, "sftjob", "-n", namespace, job), "Succeeded"))
                    and c["status"] == "True" and get_json(cluster, "sftjob", "-n", namespace, job),
                    timeout=90, log_path=log_path)


def permission_denials(log_path: Path) -> list[str]:
    """Lines where the reconciler (not kopf's optional cluster scans) hit a 403."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    return [line for line in lines if ("HTTP 403" in line or "Forbidden" in line or "forbidden" in line)
            and "Not enough permissions" not in line]


def can_i(cluster, user: str, verb: str, resource: str, namespace: str | None, name: str | None = None) -> bool:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    resource, _, subresource = resource.partition("/")
    if subresource:
        scope.append(f"--subresource={subresource}")
    if name:
        resource = f"{resource}/{name}"
    result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={user}", *scope, check=False)
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        raise AssertionError(f"kubectl auth can-i {verb} {resource}: {result.stdout} {result.stderr}")
    return answer == "yes"


def rules_granted(cluster, kubeconfig: Path, namespace: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the kubeconfig's user may use in `namespace` (SelfSubjectRulesReview)."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}}
    result = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig), "create", "--validate=false", "-f", "-", "-o", "json"],
        input=json.dumps(review), capture_output=True, text=True, timeout=60, env=cluster.env,
    )
    if result.returncode != 0:
        raise AssertionError(f"SelfSubjectRulesReview as {kubeconfig.name} in {namespace} failed: {result.stderr}")
    granted = set()
    for rule in json.loads(result.stdout)["status"]["resourceRules"]:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    return granted


ARGOCD_HEALTH_LUA = REPO / "deploy" / "argocd" / "training-hub.io" / "SFTJob" / "health.lua"


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """Argo CD's verdict on an object, by the shipped Lua check run in Lua 5.1 (as gopher-lua)."""
    import lupa.lua51

    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute(ARGOCD_HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}
