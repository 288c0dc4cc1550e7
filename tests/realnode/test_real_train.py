"""A Train SFTJob in real containers on two real kubelet nodes: the prepare pod (trainer image, CPU only) prepares the
chat data once onto one volume both nodes share; the gang (2 nodes x 1 process, spec.hostNetwork) then finds the
matching manifest on every rank and writes nothing; training stops for want of a GPU, and the SFTJob's status and
events say so in words ("no NVIDIA driver" / "no usable GPU"), not only an exit code.

The shared volume is a hostPath PersistentVolume: the real nodes of the harness run on one host, so a directory of
the test's tmp dir is the same storage for both, as an NFS or CephFS volume would be on a real cluster."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.cluster.deploy_helpers import install_crd
from tests.cluster.operator_harness import (
    OperatorProcess,
    apply,
    condition,
    describe_job,
    get_job,
    job_pods,
    sftjob,
    shared_volume,
    wait_phase,
    wait_until,
)
from tests.support import real_nodes
from training_hub.backends.prepare import DATA_FILE, MANIFEST_FILE
from training_hub.testing import build_tiny_model, write_chat_dataset

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(1800)]

TRAINER_UID = 1000  # images/trainer/Dockerfile: USER 1000:1000 (group 0 owns its home)
TRAINER_GID = 1000
MOUNT = "/shared"
NO_GPU = re.compile(r"no NVIDIA driver|no usable GPU|no GPU", re.IGNORECASE)
ROLE = "training-hub.io/role"


@pytest.fixture(scope="module")
def train_namespace(real_cluster, real_images, tmp_path_factory):
    """The CRD, a namespace, and the operator (a local process) watching it with the trainer image as default."""
    install_crd(real_cluster)
    namespace = real_cluster.create_namespace(f"real-train-{os.getpid()}")
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    operator = OperatorProcess(
        real_cluster, [namespace], log,
        env={"SFTJOB_OPERATOR_TRAINER_IMAGE": real_images["trainer"], "SFTJOB_OPERATOR_IMAGE_PULL_POLICY": "Never"},
    ).start()
    yield namespace
    operator.stop()
    if os.environ.get("TRAINING_HUB_KEEP_OPERATOR_LOG"):
        print(operator.log_tail(200))
    real_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _give_to_trainer(root: Path) -> None:
    """The trainer runs as uid 1000: it must read the model and data and write the checkpoint and prepared data."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, TRAINER_UID, TRAINER_GID, follow_symlinks=False)
        if path.is_dir():
            path.chmod(0o775)


def _listing(root: Path) -> list[str]:
    rows = []
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "d" if path.is_dir() else "f"
        rows.append(f"{kind} {st.st_size:>9} uid {st.st_uid} {path.relative_to(root)}")
    return rows


def _snapshot(data_dir: Path) -> dict:
    """What identifies the prepared data: the directory's inode, its files' inode, mtime and size, the manifest's text.

    Not the directory's mtime: every rank's parameter check tries that `data_output_dir` is writable by creating and
    removing a probe file in it (params.writable_dir_problem), which moves the mtime without writing any data."""
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in data_dir.iterdir()}
    return {"dir_inode": data_dir.stat().st_ino, "files": files, "manifest": (data_dir / MANIFEST_FILE).read_text()}


def _events(cluster, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return [(e.get("type", ""), e["reason"], e.get("message", "")) for e in items["items"]]


def _logs(cluster, namespace: str, pod: str) -> str:
    return cluster.kubectl("logs", "-n", namespace, pod, check=False).stdout


def test_train_prepares_once_on_the_shared_volume_then_stops_for_want_of_a_gpu_with_the_cause_in_status(
    real_cluster, train_namespace, tmp_path
):
    ns = train_namespace
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    build_tiny_model(host_dir / "model")
    write_chat_dataset(host_dir / "chat.jsonl", n_samples=48, seed=9)
    _give_to_trainer(host_dir)
    volume = shared_volume(real_cluster, ns, source={"hostPath": {"path": str(host_dir), "type": "Directory"}})
    real_only = {real_nodes.REAL_NODE_LABEL: "real"}
    port = 31000 + os.getpid() % 500 * 2  # real nodes share the host's network: a port of this job's own
    job = sftjob(
        "train", ns, nnodes=2, nproc_per_node=1,
        training={"modelPath": f"{MOUNT}/model", "dataPath": f"{MOUNT}/chat.jsonl", "ckptOutputDir": f"{MOUNT}/ckpt",
                  "dataOutputDir": f"{MOUNT}/prepared", "numEpochs": 1, "effectiveBatchSize": 8,
                  "learningRate": 1e-4, "maxSeqLen": 256, "extraArgs": {"data_process_num_cpu_procs": 1}},
        # cleanPodPolicy None: both ranks stay for the checks below. The first rank to find no GPU fails the job at
        # once (not a lost peer); by default a rank still starting then would be deleted as still running.
        volumes=[volume], hostNetwork=True, rdzvPort=port, backoffLimit=0, cleanPodPolicy="None",
        nodeSelector=real_only, tolerations=[],
        prepare={"enabled": True, "nodeSelector": real_only,
                 "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}}},
    )
    timeline: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - t0, what))

    apply(real_cluster, job)
    mark("applied")
    wait_phase(real_cluster, ns, "train", "Preparing", timeout=120)
    mark("phase Preparing")

    # The prepare pod runs in a real container on a real node (never the fake kwok node) and succeeds ...
    job_state = wait_until(
        lambda: (j := get_job(real_cluster, ns, "train")) and (c := condition(j, "Prepared")) and c["status"] == "True" and j,
        900, "Prepared=True", interval=1, describe=describe_job(real_cluster, ns, "train"),
    )
    mark("Prepared=True (prepare pod succeeded)")
    prepared = condition(job_state, "Prepared")
    assert prepared["reason"] == "DataPrepared", prepared
    data_dir = host_dir / "prepared"
    before = _snapshot(data_dir)  # taken before any rank can have got past importing torch
    dir_mtime_before = data_dir.stat().st_mtime_ns
    manifest = json.loads(before["manifest"])
    assert manifest["samples"] > 0 and DATA_FILE in before["files"]

    prepare_pod = real_cluster.kubectl_json("get", "pod", "train-prepare-0", "-n", ns)
    assert prepare_pod["spec"]["nodeName"] in real_cluster.real_nodes.names()
    terminated = prepare_pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["containerID"].startswith("containerd://")
    assert json.loads(terminated["message"])["reused"] is False  # the container's own termination summary

    # ... then the gang: one pod per real node; training stops for want of a GPU; backoffLimit 0 ends the job.
    failed = wait_phase(real_cluster, ns, "train", "Failed", timeout=900)
    mark("phase Failed")
    pods = job_pods(real_cluster, ns, "train")
    gang = [p for p in pods if ROLE not in p["metadata"]["labels"]]
    prepares = [p["metadata"]["name"] for p in pods if ROLE in p["metadata"]["labels"]]
    assert prepares == ["train-prepare-0"]  # exactly one prepare pod, one attempt
    assert sorted(p["spec"]["nodeName"] for p in gang) == sorted(real_cluster.real_nodes.names())

    status = failed["status"]
    last = status["lastFailure"]
    failed_condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    events = _events(real_cluster, ns, "train")
    ranks = {p["metadata"]["name"]: _logs(real_cluster, ns, p["metadata"]["name"]) for p in gang}
    after = _snapshot(data_dir)
    dir_mtime_moved = data_dir.stat().st_mtime_ns != dir_mtime_before

    print("\n--- Train 2x1 on real nodes ---")
    print("timeline:\n" + "\n".join(f"  {t:6.1f} s  {what}" for t, what in timeline))
    print(f"prepare pod on {prepare_pod['spec']['nodeName']}: {prepared['message']}")
    print(f"lastFailure: {json.dumps(last)}")
    print(f"Failed condition: {failed_condition.get('reason')}: {failed_condition.get('message')}")
    summaries = {p["metadata"]["name"]: ((p["status"]["containerStatuses"][0]["state"].get("terminated") or {}).get("message"))
                 for p in gang}
    print("ranks' termination summaries (from the kubelet):\n" + "\n".join(f"  {n}: {m}" for n, m in summaries.items()))
    print("events:\n" + "\n".join(f"  {t} {reason}: {message}" for t, reason, message in events))
    for name, text in ranks.items():
        lines = [line for line in text.splitlines() if re.search(r"prepar|reus|NVIDIA|GPU|Cause", line, re.IGNORECASE)]
        print(f"{name} log (selected lines):\n" + "\n".join(f"  {line[:300]}" for line in lines[-12:]))
    print(f"prepared data after the gang: files and manifest {'unchanged' if after == before else 'CHANGED'}; "
          f"directory mtime {'moved (the ranks write probes)' if dir_mtime_moved else 'unchanged'}")
    print("shared directory (model/ files left out):\n" + "\n".join(f"  {row}" for row in _listing(host_dir)
                                                                 if not row.split()[-1].startswith("model/")))

    # The cause in words: in lastFailure, the Failed condition, a Warning event and the container's termination summary — not only an exit code.
    assert last["exitCode"] != 0 and last["rank"] in (0, 1)
    assert NO_GPU.search(last["message"]), last
    assert NO_GPU.search(failed_condition["message"]), failed_condition
    assert any(m and NO_GPU.search(m) for m in summaries.values()), summaries  # the container's own words
    assert any(t == "Warning" and NO_GPU.search(message) for t, reason, message in events), events
    assert status.get("restarts", 0) == 0 and status.get("attempt", 0) == 0

    # Prepared once: the gang's ranks found the matching manifest and wrote nothing to the data directory.
    assert after == before, (before, after)
    assert [reason for _, reason, _ in events].count("DataPrepared") == 1
    assert not [p.name for p in host_dir.iterdir() if ".preparing-" in p.name or ".prepare-failed" in p.name]
