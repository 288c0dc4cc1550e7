"""GPU proof: a real SFT run through `training_hub.sft()` and through an SFTJob pod's command.

Run on a machine with one NVIDIA GPU and no network (see docs/gpu-proof.md; `bench/gpu_proof.sh`
installs the carried wheels first, then runs `python driver.py run`). Steps, each in its own
process with its own time budget, so a hang or crash in one is reported and the next still runs:

    environment  torch/CUDA/device name, versions, flash-attn present?, entrypoint and torchrun on PATH
    build        a few-million-parameter model + tokenizer and a chat dataset, built locally
    sft          training_hub.sft(), 2 epochs, checkpoint + full state per epoch; the result names the
                 final checkpoint, loss falls, the checkpoint loads with AutoModelForCausalLM and generates
    entrypoint   `training-hub sft --config params.json` with the TRAINING_HUB_* environment of a
                 1-node gang (as the operator renders it); exit 0, termination summary, progress lines
    preflight    `training-hub preflight` on the same environment: NCCL all-reduce, bandwidth
    resume       the entrypoint killed (whole process tree) once epoch 1's full state is saved, then
                 started again on the same checkpoint directory: it must resume at epoch 2
    direct       instructlab.training.run_training on the same data and settings: tokens/s of sft()
                 next to the direct call, as a ratio (the overhead of our layer)

It prints one line per step as it goes and, last, one JSON report (also written to --report).
Everything that needs no GPU here (settings, parameters, environment, metrics parsing, the report)
is a pure function, tested on CPU in tests/unit/bench/test_gpu_proof.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

TOTAL_BUDGET_S = 480.0  # the "within 8 minutes"
# Per-step caps (seconds). Their sum is more than the total on purpose: the expected run is far
# shorter, and the total deadline cuts whatever step is running when it passes.
STEP_BUDGETS_S: dict[str, float] = {
    "environment": 60,
    "build": 120,
    "sft": 180,
    "entrypoint": 150,
    "preflight": 90,
    "resume": 240,
    "direct": 150,
}
STEP_ORDER = tuple(STEP_BUDGETS_S)
MIN_USEFUL_S = 20.0  # a step given less than this is skipped, not started
REPORT_RESERVE_S = 5.0  # kept back at the end to write the report
GPU_STEPS = frozenset({"sft", "entrypoint", "preflight", "resume", "direct"})
STEP_NEEDS: dict[str, tuple[str, ...]] = {
    "sft": ("build",),
    "entrypoint": ("build",),
    "resume": ("build",),
    "direct": ("build",),
}

# "A few million parameters": what the build step must produce, checked on CPU too.
EXPECTED_PARAMETERS = (2_000_000, 20_000_000)


@dataclasses.dataclass(frozen=True)
class ProofSettings:
    """The model, data and training settings every step shares (written to <work>/settings.json)."""

    # model: llama architecture, ~4.7M parameters (the built-in corpus caps the BPE vocabulary near 1000)
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    # data: 1024 conversations -> 64 optimizer steps per epoch at batch 16, enough to see loss fall
    # and to leave the resume step a wide window between "epoch 1 saved" and "epoch 2 done"
    n_samples: int = 1024
    data_seed: int = 0
    # training
    num_epochs: int = 2
    effective_batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 4
    max_seq_len: int = 512
    max_tokens_per_gpu: int = 8192
    data_process_num_cpu_procs: int = 4
    random_seed: int = 42
    # the 1-node gang the operator would render for this job
    job_name: str = "gpu-proof"
    namespace: str = "default"
    rdzv_port: int = 29500


def load_settings(path: Path) -> ProofSettings:
    return ProofSettings(**json.loads(path.read_text()))


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


# --------------------------------------------------------------------------------------------
# Where things go under the work directory
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkLayout:
    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "settings.json"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def data(self) -> Path:
        return self.root / "data" / "chat.jsonl"

    def run_dir(self, step: str) -> Path:
        return self.root / "runs" / step

    def ckpt(self, step: str) -> Path:
        return self.run_dir(step) / "ckpt"

    def step_result(self, step: str) -> Path:
        return self.root / "steps" / f"{step}.json"

    def step_log(self, step: str) -> Path:
        return self.root / "logs" / f"{step}.log"


# --------------------------------------------------------------------------------------------
# Parameters: what sft() gets, what the pod's params.json holds, what the pod's environment is
# --------------------------------------------------------------------------------------------


def training_params(settings: ProofSettings, *, model_path: str, data_path: str, ckpt_output_dir: str,
                    flash_attn: bool) -> dict[str, Any]:
    """The SFT parameters (snake_case, SFTParams field names) of every run in the proof."""
    return {
        "model_path": model_path,
        "data_path": data_path,
        "ckpt_output_dir": ckpt_output_dir,
        "num_epochs": settings.num_epochs,
        "effective_batch_size": settings.effective_batch_size,
        "learning_rate": settings.learning_rate,
        "max_seq_len": settings.max_seq_len,
        "max_tokens_per_gpu": settings.max_tokens_per_gpu,
        "warmup_steps": settings.warmup_steps,
        "checkpoint_at_epoch": True,
        "accelerate_full_state_at_epoch": True,
        # TrainingArgs fields, passed by name to the backend
        "extra_args": {
            "disable_flash_attn": not flash_attn,
            "data_process_num_cpu_procs": settings.data_process_num_cpu_procs,
            "random_seed": settings.random_seed,
        },
    }


def sft_kwargs(params: Mapping[str, Any], *, rdzv_id: str, rdzv_endpoint: str) -> dict[str, Any]:
    """Keyword arguments of `training_hub.sft()`, as a user would write them: backend args flat."""
    kwargs = {key: value for key, value in params.items() if key != "extra_args"}
    kwargs.update(params.get("extra_args", {}))
    kwargs.update(nproc_per_node=1, nnodes=1, node_rank=0, rdzv_id=rdzv_id, rdzv_endpoint=rdzv_endpoint)
    return kwargs


def pod_params_document(params: Mapping[str, Any]) -> dict[str, Any]:
    """params.json as the operator's ConfigMap holds it: SFTParams in camelCase, unset fields left out."""
    from training_hub.params import SFTParams

    return SFTParams.model_validate(dict(params)).to_camel_dict()


# The pod side of docs/architecture.md ("Contract: operator -> pod").
POD_CONFIG_PATH = "/etc/training-hub/params.json"
ENTRYPOINT_COMMAND = ("training-hub", "sft", "--config", POD_CONFIG_PATH)
PREFLIGHT_COMMAND = ("training-hub", "preflight")


@dataclasses.dataclass(frozen=True)
class PodInvocation:
    """What one training pod runs: its command, the environment the operator sets, the params file it reads."""

    command: tuple[str, ...]
    environment: dict[str, str]
    params_json: str
    source: str = ""  # where it came from: the operator's render, or the driver's own copy of the contract


def sftjob_manifest(settings: ProofSettings, params: Mapping[str, Any], uid: str) -> dict[str, Any]:
    """The 1-node, 1-GPU SFTJob a user would apply for this run."""
    return {
        "apiVersion": "training-hub.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": settings.job_name, "namespace": settings.namespace, "uid": uid},
        "spec": {"training": pod_params_document(params), "nnodes": 1, "nprocPerNode": 1,
                 "rdzvPort": settings.rdzv_port},
    }


def rendered_pod(settings: ProofSettings, params: Mapping[str, Any], *, uid: str, attempt: int) -> PodInvocation:
    """The rank-0 pod of gang attempt `attempt`, rendered by the operator's own `render_gang`."""
    from sftjob_operator import render
    from sftjob_operator.config import OperatorConfig

    gang = render.render_gang(sftjob_manifest(settings, params, uid), attempt=attempt,
                              rdzv_id=render.new_rdzv_id(uid, attempt), config=OperatorConfig())
    container = gang.pods[0]["spec"]["containers"][0]
    return PodInvocation(
        command=tuple(container["command"]) + tuple(container.get("args", ())),
        environment={item["name"]: item["value"] for item in container.get("env", []) if "value" in item},
        params_json=next(iter(gang.configmap["data"].values())),
        source="operator render (sftjob_operator.render.render_gang)",
    )


def contract_pod(settings: ProofSettings, params: Mapping[str, Any], *, rdzv_id: str) -> PodInvocation:
    """The same pod from docs/architecture.md alone, for a machine where the operator package is missing.
    The CPU test checks that it equals `rendered_pod`."""
    from training_hub.launch import env

    return PodInvocation(
        command=ENTRYPOINT_COMMAND,
        environment={
            env.NNODES: "1",
            env.NODE_RANK: "0",
            env.NPROC_PER_NODE: "1",
            env.RDZV_ID: rdzv_id,
            env.RDZV_ENDPOINT: gang_rdzv_endpoint(settings),
            env.RDZV_TIMEOUT: f"{env.DEFAULT_RDZV_TIMEOUT_S:g}",
            env.TERMINATION_LOG: env.DEFAULT_TERMINATION_LOG,
        },
        params_json=json.dumps(pod_params_document(params), indent=2, sort_keys=True) + "\n",
        source="driver's copy of the contract (operator package not importable)",
    )


def pod_for_attempt(settings: ProofSettings, params: Mapping[str, Any], *, uid: str, attempt: int) -> PodInvocation:
    try:
        return rendered_pod(settings, params, uid=uid, attempt=attempt)
    except ImportError:
        return contract_pod(settings, params, rdzv_id=f"{uid[:16]}-{attempt}")


def gang_rdzv_endpoint(settings: ProofSettings) -> str:
    """The endpoint the operator gives a gang: the rank-0 headless Service's DNS name and the rdzv port."""
    return f"{settings.job_name}.{settings.namespace}.svc:{settings.rdzv_port}"


def localize(pod: PodInvocation, *, config_path: str, rdzv_endpoint: str, termination_log: str) -> PodInvocation:
    """The pod as a local process: three things differ, and only these. The params file is read from
    `config_path` (no ConfigMap volume), the rank-0 endpoint is a local address (no cluster DNS), and
    the termination summary goes to a file (no /dev/termination-log)."""
    from training_hub.launch import env

    command = list(pod.command)
    command[command.index("--config") + 1] = config_path
    environment = {**pod.environment, env.RDZV_ENDPOINT: rdzv_endpoint, env.TERMINATION_LOG: termination_log}
    return dataclasses.replace(pod, command=tuple(command), environment=environment)


def new_rdzv_id(settings: ProofSettings, attempt: int) -> str:
    """One id per gang attempt, as the operator makes them (a restart gets a fresh one)."""
    return f"{settings.job_name}-{attempt}-{secrets.token_hex(4)}"


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def direct_training_args(params: Mapping[str, Any]) -> dict[str, Any]:
    """instructlab TrainingArgs for the same run, written by hand as a direct user would."""
    ckpt = params["ckpt_output_dir"]
    return {
        "model_path": params["model_path"],
        "data_path": params["data_path"],
        "ckpt_output_dir": ckpt,
        "data_output_dir": str(Path(ckpt) / "data"),
        "max_seq_len": params["max_seq_len"],
        "max_batch_len": params["max_tokens_per_gpu"],
        "num_epochs": params["num_epochs"],
        "effective_batch_size": params["effective_batch_size"],
        "learning_rate": params["learning_rate"],
        "warmup_steps": params["warmup_steps"],
        "checkpoint_at_epoch": params["checkpoint_at_epoch"],
        "accelerate_full_state_at_epoch": params["accelerate_full_state_at_epoch"],
        **params.get("extra_args", {}),
    }


# --------------------------------------------------------------------------------------------
# Reading what training wrote: metrics, checkpoints, progress lines, summaries
# --------------------------------------------------------------------------------------------

METRICS_FILE = "training_params_and_metrics_global0.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; lines that are not JSON objects (a torn last line) are skipped."""
    records = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def is_step_record(record: Mapping[str, Any]) -> bool:
    return "avg_loss" in record and "step" in record


def is_run_start(record: Mapping[str, Any]) -> bool:
    # instructlab logs its hyper-parameters (vars(args)) once at the start of every run
    return "model_name_or_path" in record and not is_step_record(record)


def split_runs(records: Iterable[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """Step records grouped by run. A restarted run appends to the same file: a new run begins at its
    hyper-parameter record, or (if that is missing) where the step counter starts again."""
    runs: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] | None = None
    for record in records:
        if is_run_start(record):
            current = []
            runs.append(current)
            continue
        if not is_step_record(record):
            continue
        if current is None or (current and _step(record) <= _step(current[-1])):
            current = []
            runs.append(current)
        current.append(dict(record))
    return [run for run in runs if run]


def _step(record: Mapping[str, Any]) -> int:
    try:
        return int(record.get("step", 0))
    except (TypeError, ValueError):
        return 0


def loss_trend(steps: Sequence[Mapping[str, Any]], window: int = 4) -> dict[str, Any]:
    """Loss at the start against loss at the end of one run, from its step records.

    Single steps are noisy, so "fell" compares the mean of the first `window` steps with the mean of
    the last `window` (each at most a quarter of the run, at least one step).
    """
    losses = [float(s["avg_loss"]) for s in steps if isinstance(s.get("avg_loss"), (int, float))]
    if len(losses) < 2:
        return {"n_steps": len(losses), "fell": False, "reason": "fewer than 2 step records"}
    k = max(1, min(window, len(losses) // 4))
    first_mean = sum(losses[:k]) / k
    last_mean = sum(losses[-k:]) / k
    return {
        "n_steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "window": k,
        "loss_first_mean": first_mean,
        "loss_last_mean": last_mean,
        "fell": last_mean < first_mean,
    }


def throughput(steps: Sequence[Mapping[str, Any]], wall_s: float | None) -> dict[str, Any]:
    """Tokens and samples trained, per second of the whole call (wall) and of training alone.

    Training alone spans the first to the last step record's timestamp, so it counts the tokens of
    every step after the first (the first step's duration is not in the span).
    """
    tokens = [int(s.get("num_tokens_rank0") or 0) for s in steps]
    samples = [int(s.get("batch_size") or 0) for s in steps]
    out: dict[str, Any] = {"tokens": sum(tokens), "samples": sum(samples), "steps": len(steps)}
    if wall_s and wall_s > 0:
        out["wall_s"] = wall_s
        out["tokens_per_s_wall"] = sum(tokens) / wall_s
    stamps = [_timestamp(s.get("timestamp")) for s in steps]
    if len(steps) >= 2 and stamps[0] is not None and stamps[-1] is not None:
        span = (stamps[-1] - stamps[0]).total_seconds()
        if span > 0:
            out["train_span_s"] = span
            out["tokens_per_s_train"] = sum(tokens[1:]) / span
    return out


def _timestamp(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None


def throughput_ratio(ours: Mapping[str, Any], direct: Mapping[str, Any]) -> dict[str, float]:
    """sft() tokens/s divided by direct run_training tokens/s (1.0 = no overhead; < 1 = slower)."""
    ratios = {}
    for key in ("tokens_per_s_wall", "tokens_per_s_train"):
        if ours.get(key) and direct.get(key):
            ratios[key.replace("tokens_per_s", "ratio")] = ours[key] / direct[key]
    return ratios


def resumed_at_epoch(records: Iterable[Mapping[str, Any]]) -> int | None:
    """The epoch (1-based) the last run's first training step was in, or None without step records.

    instructlab numbers epochs from 0 in its metrics; a run resumed from the full state saved after
    the first epoch starts at its epoch 1, i.e. the second epoch.
    """
    runs = split_runs(records)
    if not runs:
        return None
    epoch = runs[-1][0].get("epoch")
    return int(epoch) + 1 if isinstance(epoch, (int, float)) else None


def hf_checkpoints(ckpt_dir: Path) -> list[Path]:
    """HF-format checkpoints under <ckpt>/hf_format, oldest first (samples_N by N; last_epoch last)."""
    base = ckpt_dir / "hf_format"
    if not base.is_dir():
        return []

    def order(path: Path) -> tuple[int, int]:
        _, _, number = path.name.rpartition("_")
        return (1, 0) if path.name == "last_epoch" else (0, int(number) if number.isdigit() else -1)

    return sorted((p for p in base.iterdir() if p.is_dir() and (p / "config.json").exists()), key=order)


def saved_full_states(ckpt_dir: Path) -> list[int]:
    """Epochs (0-based, as instructlab names the folders) whose full state is completely saved.

    instructlab writes `training_metadata.json` after accelerate's save_state: its presence means
    the folder is complete and a restart can load it.
    """
    base = ckpt_dir / "full_state"
    epochs = []
    if base.is_dir():
        for path in base.glob("epoch_*"):
            number = path.name.removeprefix("epoch_")
            if number.isdigit() and _completely_written(path / "training_metadata.json"):
                epochs.append(int(number))
    return sorted(epochs)


def _completely_written(path: Path, settle_s: float = 0.3) -> bool:
    """torch.save writes a zip, readable only once its central directory (written last) is there;
    any other non-empty file counts once it has not changed for `settle_s`."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size == 0:
        return False
    return zipfile.is_zipfile(path) or time.time() - stat.st_mtime >= settle_s


def progress_events(output: str) -> list[dict[str, Any]]:
    """The entrypoint's JSON progress lines (docs/architecture.md) found in its stdout."""
    return _json_lines(output, "progress")


def preflight_events(output: str) -> list[dict[str, Any]]:
    return _json_lines(output, "preflight")


def _json_lines(output: str, event: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def check_summary(summary: Mapping[str, Any] | None, *, ckpt_dir: Path, num_epochs: int) -> list[str]:
    """Problems with a succeeded run's termination summary (empty list: it is right)."""
    if summary is None:
        return ["no termination summary was written"]
    problems = []
    if summary.get("outcome") != "succeeded":
        problems.append(f"outcome is {summary.get('outcome')!r}, expected 'succeeded' ({summary.get('message')!r})")
    final = summary.get("final_checkpoint")
    checkpoints = hf_checkpoints(ckpt_dir)
    if not final:
        problems.append("final_checkpoint missing")
    elif not checkpoints or Path(final).resolve() != checkpoints[-1].resolve():
        problems.append(f"final_checkpoint {final!r} is not the newest checkpoint "
                        f"({str(checkpoints[-1]) if checkpoints else 'none found'})")
    if not isinstance(summary.get("loss"), (int, float)):
        problems.append("loss missing")
    if summary.get("epoch") not in (num_epochs, num_epochs - 1):  # 1-based or 0-based: either names the last
        problems.append(f"epoch is {summary.get('epoch')!r}, expected the last epoch ({num_epochs})")
    return problems


def read_summary(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------
# Processes: run with a deadline, kill a whole tree (torchrun's workers included)
# --------------------------------------------------------------------------------------------


def process_table() -> dict[int, int]:
    """pid -> parent pid, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (2nd field) may hold spaces and parentheses: split after the last ')'
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 2:
            table[int(entry.name)] = int(fields[1])
    return table


def descendants(root: int, table: Mapping[int, int]) -> list[int]:
    """Every process below `root` in the parent table, children before grandchildren."""
    children: dict[int, list[int]] = {}
    for pid, parent in table.items():
        children.setdefault(parent, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        nxt = []
        for pid in frontier:
            for child in sorted(children.get(pid, [])):
                if child not in found and child != root:
                    found.append(child)
                    nxt.append(child)
        frontier = nxt
    return found


def kill_tree(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGKILL a process and everything below it, as when a pod is killed.

    Stop first, then kill: a stopped parent cannot start new children, and a killed parent's
    children would be re-parented away from the tree before we saw them.
    """
    pids = [process.pid, *descendants(process.pid, process_table())]
    for pid in pids:
        _signal(pid, signal.SIGSTOP)
    pids += [p for p in descendants(process.pid, process_table()) if p not in pids]
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the session we started it in
    except OSError:
        pass
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids[1:]):
        time.sleep(0.1)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclasses.dataclass
class Finished:
    returncode: int | None  # None: killed by us at the deadline
    seconds: float
    output: str
    timed_out: bool


def run_logged(command: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
               timeout_s: float, until: Callable[[], bool] | None = None, poll_s: float = 0.1) -> Finished:
    """Run `command` in a new session, stdout+stderr to `log` (appended). Kill its tree at the
    deadline, or as soon as `until()` turns true (checked every `poll_s`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("ab") as sink:
        sink.write(f"\n$ {' '.join(command)}\n".encode())
        sink.flush()
        offset = sink.tell()
        process = subprocess.Popen(list(command), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=dict(env) if env is not None else None, start_new_session=True)
        stopped = False
        while process.poll() is None:
            if time.monotonic() - start > timeout_s or (until is not None and until()):
                stopped = True
                kill_tree(process)
                break
            time.sleep(poll_s)
    with log.open("rb") as source:  # this run's output only: the log may hold earlier runs
        source.seek(offset)
        output = source.read().decode("utf-8", errors="replace")
    return Finished(None if stopped else process.returncode, time.monotonic() - start, output,
                    stopped and (until is None or not until()))


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


class StepFailed(Exception):
    """A check of a step did not hold; `details` go into the report next to the message."""

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.details = details


def step_record(status: str, seconds: float, budget_s: float, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One step's entry in the report: its details, then status/ok/seconds/budget_s (these win)."""
    return {**(fields or {}), "status": status, "ok": status == "passed", "seconds": round(seconds, 1),
            "budget_s": budget_s}


def plan_limit(step: str, *, now: float, deadline: float) -> float:
    """Seconds a step may run: its own budget, cut by what is left of the total."""
    return max(0.0, min(STEP_BUDGETS_S[step], deadline - now - REPORT_RESERVE_S))


def skip_reason(step: str, results: Mapping[str, Mapping[str, Any]], *, limit_s: float) -> str | None:
    """Why a step is not started (None: start it)."""
    for needed in STEP_NEEDS.get(step, ()):
        if not results.get(needed, {}).get("ok"):
            return f"needs step {needed!r}, which did not pass"
    env = results.get("environment", {})
    if step in GPU_STEPS and env and env.get("cuda_available") is False:
        return "no CUDA device"
    if limit_s < MIN_USEFUL_S:
        return f"out of time ({limit_s:.0f}s left of the {TOTAL_BUDGET_S:.0f}s total)"
    return None


def build_report(results: Mapping[str, Mapping[str, Any]], *, total_s: float,
                 steps: Sequence[str] = STEP_ORDER) -> dict[str, Any]:
    """The final JSON: every step's record, plus the figures the issue asks to quote."""
    env = results.get("environment", {})
    sft = results.get("sft", {})
    resume = results.get("resume", {})
    direct = results.get("direct", {})
    figures = {
        "device": env.get("device_name"),
        "parameters": results.get("build", {}).get("num_parameters"),
        "loss_first": sft.get("loss", {}).get("loss_first"),
        "loss_last": sft.get("loss", {}).get("loss_last"),
        "resumed_at_epoch": resume.get("resumed_at_epoch"),
        "tokens_per_s_sft": sft.get("throughput", {}).get("tokens_per_s_wall"),
        "tokens_per_s_direct": direct.get("throughput", {}).get("tokens_per_s_wall"),
        "ratio_wall": direct.get("ratio", {}).get("ratio_wall"),
        "ratio_train": direct.get("ratio", {}).get("ratio_train"),
        "preflight_busbw_gbps": results.get("preflight", {}).get("preflight", {}).get("busbw_gbps"),
        "preflight_algbw_gbps": results.get("preflight", {}).get("preflight", {}).get("algbw_gbps"),
    }
    statuses = {step: results.get(step, {}).get("status", "not run") for step in steps}
    return {
        "event": "gpu_proof",
        "ok": all(status == "passed" for status in statuses.values()),
        "total_s": round(total_s, 1),
        "budget_s": TOTAL_BUDGET_S,
        "statuses": statuses,
        "figures": figures,
        "steps": {step: results.get(step, {}) for step in steps},
    }


BULKY_FIELDS = ("output_tail", "traceback")


def compact_report(report: Mapping[str, Any], max_error_chars: int = 400) -> dict[str, Any]:
    """The report without output tails and tracebacks, errors shortened: what is printed last, so that
    it survives a tool that keeps only the end of the output. The full report goes to --report."""
    steps = {}
    for name, record in report.get("steps", {}).items():
        slim = {k: v for k, v in record.items() if k not in BULKY_FIELDS}
        if isinstance(slim.get("error"), str) and len(slim["error"]) > max_error_chars:
            slim["error"] = slim["error"][:max_error_chars] + " [...]"
        if isinstance(slim.get("summary"), dict) and isinstance(slim["summary"].get("message"), str):
            slim["summary"] = {**slim["summary"], "message": slim["summary"]["message"][:max_error_chars]}
        steps[name] = slim
    return {**report, "steps": steps}


def format_step_line(step: str, record: Mapping[str, Any]) -> str:
    text = f"[gpu-proof] {step:<11} {record.get('status', '?'):<8} {record.get('seconds', 0):>6.1f}s"
    if record.get("error"):
        text += f"  {str(record['error']).splitlines()[0][:300]}"
    return text


# --------------------------------------------------------------------------------------------
# Steps (each runs in its own process: `driver.py step NAME --work DIR --limit S`)
# --------------------------------------------------------------------------------------------


def step_environment(layout: WorkLayout, settings: ProofSettings, limit_s: float) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "flash_attn": flash_attn_available(),
        "training_hub_cli": shutil.which("training-hub"),
        "torchrun": shutil.which("torchrun"),
        "versions": _versions(["training-hub", "instructlab-training", "transformers", "datasets", "accelerate",
                               "peft", "trl", "pydantic", "tokenizers", "numba", "pyarrow"]),
    }
    if info["cuda_available"]:
        info["device_name"] = torch.cuda.get_device_name(0)
        info["device_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as exc:  # informative only; the preflight step proves NCCL
            info["nccl"] = f"unknown ({exc})"
    missing = [name for name in ("training_hub_cli", "torchrun") if not info[name]]
    if not info["cuda_available"]:
        raise StepFailed("torch sees no CUDA device", **info)
    if missing:
        raise StepFailed(f"not on PATH: {', '.join(missing)}", **info)
    return info


def _versions(names: Iterable[str]) -> dict[str, str | None]:
    import importlib.metadata as metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def step_build(layout: WorkLayout, settings: ProofSettings, limit_s: float) -> dict[str, Any]:
    from training_hub.testing import build_tiny_model, write_chat_dataset

    model = build_tiny_model(layout.model, vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
                             num_layers=settings.num_layers, num_heads=settings.num_heads)
    write_chat_dataset(layout.data, n_samples=settings.n_samples, seed=settings.data_seed)
    lines = sum(1 for _ in layout.data.open())
    details = {"num_parameters": model.num_parameters, "vocab_size": model.vocab_size,
               "model_path": str(layout.model), "data_path": str(layout.data), "samples": lines}
    low, high = EXPECTED_PARAMETERS
    if not low <= model.num_parameters <= high:
        raise StepFailed(f"model has {model.num_parameters} parameters, expected {low}..{high}", **details)
    return details


def _params_for(layout: WorkLayout, settings: ProofSettings, step: str) -> dict[str, Any]:
    return training_params(settings, model_path=str(layout.model), data_path=str(layout.data),
                           ckpt_output_dir=str(layout.ckpt(step)), flash_attn=flash_attn_available())


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def step_sft(layout: WorkLayout, settings: ProofSettings, limit_s: float) -> dict[str, Any]:
    import training_hub

    _fresh(layout.run_dir("sft"))
    params = _params_for(layout, settings, "sft")
    kwargs = sft_kwargs(params, rdzv_id=new_rdzv_id(settings, 0), rdzv_endpoint=f"127.0.0.1:{free_local_port()}")
    start = time.monotonic()
    result = training_hub.sft(**kwargs)
    wall = time.monotonic() - start
    ckpt = layout.ckpt("sft")
    records = read_jsonl(ckpt / METRICS_FILE)
    runs = split_runs(records)
    steps = runs[-1] if runs else []
    details: dict[str, Any] = {
        "wall_s": wall,
        "result": _describe_result(result),
        "loss": loss_trend(steps),
        "throughput": throughput(steps, wall),
        "epochs_seen": sorted({int(s["epoch"]) for s in steps if isinstance(s.get("epoch"), int)}),
        "full_states": saved_full_states(ckpt),
    }
    problems = result_problems(details["result"], ckpt)
    if not details["loss"]["fell"]:
        problems.append(f"loss did not fall: {details['loss']}")
    if details["epochs_seen"] != list(range(settings.num_epochs)):
        problems.append(f"metrics cover epochs {details['epochs_seen']}, expected {settings.num_epochs}")
    if problems:
        raise StepFailed("; ".join(problems), **details)
    details["generation"] = load_and_generate(Path(details["result"]["final_checkpoint"]), layout.model)
    return details


def _describe_result(result: Any) -> dict[str, Any]:
    """The TrainingResult's documented fields as plain JSON (missing ones are None)."""
    described = {}
    for name in ("final_checkpoint", "checkpoints", "last_metrics", "metrics_path", "log_path", "resumed_from_epoch"):
        value = getattr(result, name, None)
        if isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        described[name] = value
    return json.loads(json.dumps(described, default=str))


def result_problems(result: Mapping[str, Any], ckpt_dir: Path) -> list[str]:
    """What is wrong with sft()'s result, checked against the checkpoints on disk."""
    problems = []
    on_disk = hf_checkpoints(ckpt_dir)
    final = result.get("final_checkpoint")
    if not final:
        problems.append("the result names no final checkpoint")
    elif not on_disk or Path(final).resolve() != on_disk[-1].resolve():
        problems.append(f"result.final_checkpoint {final!r} is not the newest checkpoint on disk "
                        f"({str(on_disk[-1]) if on_disk else 'none'})")
    listed = [Path(p).resolve() for p in result.get("checkpoints") or []]
    if listed and final and listed[-1] != Path(final).resolve():
        problems.append("result.checkpoints does not end with the final checkpoint")
    if not result.get("last_metrics"):
        problems.append("result.last_metrics is empty")
    return problems


def load_and_generate(checkpoint: Path, base_model: Path) -> dict[str, Any]:
    """Reload the checkpoint as a user would and generate a few tokens on the GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer, tokenizer_from = AutoTokenizer.from_pretrained(checkpoint), "checkpoint"
    except (OSError, ValueError):  # reported, not fatal: the model weights are what is being proven
        tokenizer, tokenizer_from = AutoTokenizer.from_pretrained(base_model), "base model (none in checkpoint)"
    model = AutoModelForCausalLM.from_pretrained(checkpoint).to("cuda").eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the loss of the model?"}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to("cuda")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    if new_tokens.numel() == 0:
        raise StepFailed("the reloaded checkpoint generated no tokens")
    return {"checkpoint": str(checkpoint), "model_class": type(model).__name__, "tokenizer_from": tokenizer_from,
            "new_tokens": int(new_tokens.numel()), "text": tokenizer.decode(new_tokens)}


def _pod_run(layout: WorkLayout, settings: ProofSettings, step: str, *, uid: str,
             attempt: int) -> tuple[PodInvocation, dict[str, str], Path]:
    """The rank-0 pod of attempt `attempt` of this step's SFTJob, ready to run here: its params.json
    written where --config points, and the process environment (this machine's + the pod's)."""
    run_dir = layout.run_dir(step)
    run_dir.mkdir(parents=True, exist_ok=True)
    pod = pod_for_attempt(settings, _params_for(layout, settings, step), uid=uid, attempt=attempt)
    termination_log = run_dir / f"termination-log.{attempt}"
    termination_log.unlink(missing_ok=True)
    local = localize(pod, config_path=str(run_dir / "params.json"),
                     rdzv_endpoint=f"127.0.0.1:{free_local_port()}", termination_log=str(termination_log))
    (run_dir / "params.json").write_text(local.params_json)
    return local, {**os.environ, **local.environment}, termination_log


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _training_hub_env(environment: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environment.items() if k.startswith("TRAINING_HUB_")}


def _new_uid(step: str) -> str:
    return f"{step}-{secrets.token_hex(8)}"


def step_entrypoint(layout: WorkLayout, settings: ProofSettings, limit_s: float) -> dict[str, Any]:
    _fresh(layout.run_dir("entrypoint"))
    pod, environment, termination_log = _pod_run(layout, settings, "entrypoint", uid=_new_uid("entrypoint"), attempt=0)
    finished = run_logged(pod.command, log=layout.run_dir("entrypoint") / "pod.log", env=environment,
                          timeout_s=limit_s - 5)
    summary = read_summary(termination_log)
    progress = progress_events(finished.output)
    details = {"command": list(pod.command), "pod_from": pod.source,
               "pod_environment": _training_hub_env(pod.environment), "exit_code": finished.returncode, "run_s": round(finished.seconds, 1),
               "summary": summary, "progress_lines": len(progress), "last_progress": progress[-1] if progress else None}
    problems = []
    if finished.returncode != 0:
        problems.append(f"exit code {finished.returncode} (timed out: {finished.timed_out})")
    problems += check_summary(summary, ckpt_dir=layout.ckpt("entrypoint"), num_epochs=settings.num_epochs)
    if not progress:
        problems.append("no progress lines on stdout")
    if problems:
        raise StepFailed("; ".join(problems), **details, output_tail=finished.output[-3000:])
    return details


def step_preflight(layout: WorkLayout, settings: ProofSettings, limit_s: float) -> dict[str, Any]:
    run_dir = _fresh(layout.run_dir("preflight"))
    _, environment, _ = _pod_run(layout, settings, "preflight", uid=_new_uid("preflight"), attempt=0)
    finished = run_logged(list(PREFLIGHT_COMMAND), log=run_dir / "preflight.log", env=environment,
                          timeout_s=limit_s - 5)
    events = preflight_events(finished.output)
    details = {"exit_code": finished.returncode, "preflight": events[-1] if events else None}
    problems = []
    if finished.returncode != 0:
        problems.append(f"exit code {finished.returncode}")
    if not events:
        problems.append("no preflight JSON line in the output")
    elif not events[-1].get("ok") or events[-1].get("backend") != "nccl":
        problems.append(f"expected ok on nccl, got {events[-1]}")
    if problems:
        raise StepFailed("; ".join(problems), **details, output_tail=finished.output[-3000:])
    return details


def step_resume(layout: WorkLayout, settings: ProofSettings, limit_s: float) -> dict[str, Any]:
    start = time.monotonic()
    run_dir = _fresh(layout.run_dir("resume"))
    ckpt = layout.ckpt("resume")
    log = run_dir / "pod.log"
    # attempt 0: killed as soon as the first epoch's full state is completely saved
    uid = _new_uid("resume")  # one SFTJob, two gang attempts
    pod, environment, _ = _pod_run(layout, settings, "resume", uid=uid, attempt=0)
    first = run_logged(pod.command, log=log, env=environment, timeout_s=limit_s * 0.6,
                       until=lambda: 0 in saved_full_states(ckpt), poll_s=0.05)
    states_at_kill = saved_full_states(ckpt)
    details: dict[str, Any] = {"killed_after_s": round(first.seconds, 1), "full_states_at_kill": states_at_kill,
                               "first_exit_code": first.returncode}
    if first.returncode is not None:
        raise StepFailed(f"the first run ended by itself (exit {first.returncode}) before epoch 1's full state "
                         "was seen; nothing to kill", **details, output_tail=first.output[-3000:])
    if first.timed_out or states_at_kill != [0]:
        raise StepFailed(f"expected exactly epoch 1's full state at the kill, found {states_at_kill} "
                         f"(timed out: {first.timed_out})", **details, output_tail=first.output[-3000:])
    # attempt 1: what the operator does after a failure: same params and checkpoint dir, fresh rdzv id
    pod, environment, termination_log = _pod_run(layout, settings, "resume", uid=uid, attempt=1)
    second = run_logged(pod.command, log=log, env=environment, timeout_s=limit_s - (time.monotonic() - start) - 5)
    summary = read_summary(termination_log)
    records = read_jsonl(ckpt / METRICS_FILE)
    runs = split_runs(records)
    details.update(
        second_exit_code=second.returncode,
        summary=summary,
        runs_in_metrics=len(runs),
        resumed_at_epoch=resumed_at_epoch(records),
        summary_resumed_from_epoch=(summary or {}).get("resumed_from_epoch"),
        log_says_loading_state="Loading state from" in second.output + _read_text(ckpt / "full_logs_global0.log"),
        restarted_run_loss=loss_trend(runs[-1]) if runs else None,
    )
    problems = []
    if second.returncode != 0:
        problems.append(f"restart exit code {second.returncode}")
    if details["resumed_at_epoch"] != 2:
        problems.append(f"the restarted run began at epoch {details['resumed_at_epoch']}, expected 2")
    if not details["log_says_loading_state"]:
        problems.append("the restarted run's log does not say it loaded the saved state")
    if details["summary_resumed_from_epoch"] != states_at_kill[-1]:
        # TrainingResult.resumed_from_epoch names the full state it resumed from, numbered as instructlab's folders
        problems.append(f"summary resumed_from_epoch is {details['summary_resumed_from_epoch']!r}, expected "
                        f"{states_at_kill[-1]} (the full_state/epoch_{states_at_kill[-1]} it resumed from)")
    problems += check_summary(summary, ckpt_dir=ckpt, num_epochs=settings.num_epochs)
    if problems:
        raise StepFailed("; ".join(problems), **details, output_tail=second.output[-3000:])
    return details


def step_direct(layout: WorkLayout, settings: ProofSettings, limit_s: float) -> dict[str, Any]:
    from instructlab.training import TorchrunArgs, TrainingArgs, run_training

    _fresh(layout.run_dir("direct"))
    params = _params_for(layout, settings, "direct")
    torch_args = TorchrunArgs(nproc_per_node=1, nnodes=1, node_rank=0, rdzv_id=new_rdzv_id(settings, 0),
                              rdzv_endpoint=f"127.0.0.1:{free_local_port()}")
    train_args = TrainingArgs(**direct_training_args(params))
    start = time.monotonic()
    run_training(torch_args, train_args)
    wall = time.monotonic() - start
    runs = split_runs(read_jsonl(layout.ckpt("direct") / METRICS_FILE))
    steps = runs[-1] if runs else []
    details: dict[str, Any] = {"wall_s": wall, "throughput": throughput(steps, wall), "loss": loss_trend(steps)}
    ours = _load_step(layout, "sft")
    if ours.get("ok"):
        details["ratio"] = throughput_ratio(ours.get("throughput", {}), details["throughput"])
        details["note"] = "sft ran first in this session (cold caches); direct second"
    if not steps:
        raise StepFailed("the direct run wrote no step metrics", **details)
    return details


STEPS: dict[str, Callable[[WorkLayout, ProofSettings, float], dict[str, Any]]] = {
    "environment": step_environment,
    "build": step_build,
    "sft": step_sft,
    "entrypoint": step_entrypoint,
    "preflight": step_preflight,
    "resume": step_resume,
    "direct": step_direct,
}
assert tuple(STEPS) == STEP_ORDER


def _load_step(layout: WorkLayout, step: str) -> dict[str, Any]:
    try:
        return json.loads(layout.step_result(step).read_text())
    except (OSError, ValueError):
        return {}


def run_step_here(step: str, layout: WorkLayout, limit_s: float) -> int:
    """`driver.py step NAME`: run one step in this process and write its record."""
    settings = load_settings(layout.settings)
    start = time.monotonic()
    try:
        details = STEPS[step](layout, settings, limit_s)
        record = step_record("passed", time.monotonic() - start, STEP_BUDGETS_S[step], details)
    except StepFailed as failure:
        record = step_record("failed", time.monotonic() - start, STEP_BUDGETS_S[step],
                             {**failure.details, "error": str(failure)})
    except BaseException as exc:  # a crash is this step's failure, not the proof's
        record = step_record("failed", time.monotonic() - start, STEP_BUDGETS_S[step],
                             {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
    layout.step_result(step).parent.mkdir(parents=True, exist_ok=True)
    layout.step_result(step).write_text(json.dumps(record, indent=2, default=str))
    return 0 if record["ok"] else 1


def run_all(layout: WorkLayout, settings: ProofSettings, *, steps: Sequence[str] = STEP_ORDER,
            total_budget_s: float = TOTAL_BUDGET_S, python: str = sys.executable) -> dict[str, Any]:
    """Run the steps in order, each in a child process with its limit; never stop at a failure."""
    start = time.monotonic()
    deadline = start + total_budget_s
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.settings.write_text(json.dumps(dataclasses.asdict(settings), indent=2))
    results: dict[str, dict[str, Any]] = {}
    for step in steps:
        limit = plan_limit(step, now=time.monotonic(), deadline=deadline)
        reason = skip_reason(step, results, limit_s=limit)
        if reason:
            results[step] = step_record("skipped", 0.0, STEP_BUDGETS_S[step], {"error": reason})
        else:
            layout.step_result(step).unlink(missing_ok=True)
            command = [python, str(Path(__file__).resolve()), "step", step, "--work", str(layout.root),
                       "--limit", f"{limit:.0f}"]
            finished = run_logged(command, log=layout.step_log(step), timeout_s=limit)
            record = _load_step(layout, step)
            if finished.timed_out:
                record = step_record("timeout", finished.seconds, STEP_BUDGETS_S[step],
                                     {**record, "error": f"killed after its {limit:.0f}s limit",
                                      "output_tail": finished.output[-3000:]})
            elif not record:
                record = step_record("failed", finished.seconds, STEP_BUDGETS_S[step],
                                     {"error": f"the step process exited {finished.returncode} without a result",
                                      "output_tail": finished.output[-3000:]})
            results[step] = record
        print(format_step_line(step, results[step]), flush=True)
        if not results[step]["ok"] and results[step]["status"] != "skipped":
            tail = results[step].get("output_tail") or results[step].get("traceback")
            if tail:
                print("\n".join("    " + line for line in str(tail).splitlines()[-25:]), flush=True)
    return build_report(results, total_s=time.monotonic() - start, steps=steps)


def _put_interpreter_bin_on_path() -> None:
    """`training-hub` and `torchrun` are installed next to the interpreter; a venv need not be activated."""
    here = str(Path(sys.executable).parent)
    if here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + here


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proof (all steps) and print the JSON report")
    run.add_argument("--work", default="/tmp/gpu-proof", help="work directory (emptied first)")
    run.add_argument("--report", help="also write the JSON report here")
    run.add_argument("--steps", default=",".join(STEP_ORDER), help="comma-separated subset, in order")
    run.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="total seconds")
    one = sub.add_parser("step", help="run one step in this process (used by run)")
    one.add_argument("name", choices=STEP_ORDER)
    one.add_argument("--work", required=True)
    one.add_argument("--limit", type=float, required=True)
    args = parser.parse_args(argv)

    if args.command == "step":
        return run_step_here(args.name, WorkLayout(Path(args.work)), args.limit)

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; known: {', '.join(STEP_ORDER)}")
    layout = WorkLayout(Path(args.work))
    shutil.rmtree(layout.root, ignore_errors=True)
    _put_interpreter_bin_on_path()
    report = run_all(layout, ProofSettings(), steps=steps, total_budget_s=args.budget)
    text = json.dumps(compact_report(report), default=str)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    print(text, flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
