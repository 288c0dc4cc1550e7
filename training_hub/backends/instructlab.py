"""The instructlab-training backend: validated parameters -> `TorchrunArgs`/`TrainingArgs` -> `run_training`.

`build_instructlab_args` is the whole mapping, as a function of the request and of what the host
has (`HostResources`), so tests check it against the installed package's real models. The
backend then launches training and checks the outcome itself: instructlab-training returns
normally when `torchrun` cannot even be started, and raises a bare RuntimeError (exit status only
in its log) when training fails.

Nothing heavy is imported at module level: torch and instructlab load when training starts.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from training_hub.algorithms.base import Backend
from training_hub.backends.metrics import last_step_metrics, metrics_path
from training_hub.backends.prepare import ensure_prepared
from training_hub.backends.training_args_fields import TRAINING_ARGS_FIELDS
from training_hub.params import DEFAULT_BACKEND, ParameterError, TrainRequest, parse_train_kwargs, validation_problems

if TYPE_CHECKING:
    from instructlab.training import TorchrunArgs, TrainingArgs

log = logging.getLogger(__name__)

MAX_DATA_PROCESS_CPUS = 16  # instructlab's own default; more processes than cores only slows it down
LOG_FILE_TEMPLATE = "full_logs_global{node_rank}.log"
_EXIT_CODE_MESSAGE = "Training subprocess exited with code %d."  # instructlab 0.16 main_ds.run_training
_LAUNCH_FAILURE_MESSAGE = "Unexpected exception received during distributed training"


# --- what the host has -------------------------------------------------------------------------


@dataclass(frozen=True)
class HostResources:
    """The facts about this machine that defaults depend on."""

    gpu_count: int
    cpu_count: int
    flash_attn_installed: bool

    @classmethod
    def detect(cls) -> "HostResources":
        return cls(
            gpu_count=visible_gpu_count(),
            cpu_count=available_cpu_count(),
            flash_attn_installed=importlib.util.find_spec("flash_attn") is not None,
        )


def cuda_visible_device_count(value: str) -> int:
    """How many devices a CUDA_VISIBLE_DEVICES value exposes (CUDA stops at the first invalid entry)."""
    count = 0
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        count += 1
    return count


def nvidia_device_count() -> int | None:
    """GPUs this process may use, without importing torch: the NVIDIA device nodes it can see (a container
    gets only its own), capped by CUDA_VISIBLE_DEVICES. None when no NVIDIA driver is visible at all."""
    try:
        devices = sum(1 for name in os.listdir("/dev") if re.fullmatch(r"nvidia[0-9]+", name))
    except OSError:
        devices = 0
    if devices == 0 and not os.path.isdir("/proc/driver/nvidia"):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return devices if visible is None else min(devices, cuda_visible_device_count(visible))


def visible_gpu_count() -> int:
    """GPUs this process may use: honours CUDA_VISIBLE_DEVICES, then asks torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and cuda_visible_device_count(visible) == 0:
        return 0  # no need to import torch to learn that
    import torch

    return torch.cuda.device_count()


def available_cpu_count() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


# --- the mapping ---------------------------------------------------------------------------------


def training_args_field_names() -> frozenset[str]:
    """Field names of instructlab's `TrainingArgs` (from the generated table: no import of instructlab)."""
    return frozenset(TRAINING_ARGS_FIELDS)


def default_data_output_dir(ckpt_output_dir: str) -> str:
    return os.path.join(ckpt_output_dir, "data")


def build_instructlab_args(
    request: TrainRequest,
    resources: HostResources | None = None,
    *,
    rdzv_id: str | int | None = None,
) -> tuple["TorchrunArgs", "TrainingArgs"]:
    """Map a validated request onto instructlab-training's `TorchrunArgs` and `TrainingArgs`.

    - `max_tokens_per_gpu` -> `max_batch_len` (default: `max_seq_len`)
    - `data_output_dir` default: `<ckpt_output_dir>/data`
    - `is_pretraining` -> `pretraining_config=PretrainingConfig(block_size, document_column_name)`
    - unset optional parameters are left out, so TrainingArgs' own defaults apply
    - extra arguments by name, after (and so winning over) the host-dependent defaults:
      `data_process_num_cpu_procs` = min(16, usable CPUs), `disable_flash_attn` = True when the
      flash_attn package is not installed (instructlab would refuse to start)
    - `nproc_per_node` default: all visible GPUs; `rdzv_id` default: `rdzv_id` argument, else random

    Raises `ParameterError` when TrainingArgs rejects a value, `RuntimeError` when no GPU is
    visible and `nproc_per_node` was not given.
    """
    from instructlab.training import PretrainingConfig, TorchrunArgs, TrainingArgs
    from pydantic import ValidationError

    params, dist = request.params, request.distributed
    resources = resources or HostResources.detect()

    nproc_per_node = dist.nproc_per_node if dist.nproc_per_node is not None else resources.gpu_count

    training: dict[str, Any] = {
        "model_path": params.model_path,
        "data_path": params.data_path,
        "ckpt_output_dir": params.ckpt_output_dir,
        "data_output_dir": params.data_output_dir or default_data_output_dir(params.ckpt_output_dir),
        "num_epochs": params.num_epochs,
        "effective_batch_size": params.effective_batch_size,
        "learning_rate": params.learning_rate,
        "max_seq_len": params.max_seq_len,
        "max_batch_len": params.max_tokens_per_gpu or params.max_seq_len,
        "data_process_num_cpu_procs": min(MAX_DATA_PROCESS_CPUS, resources.cpu_count),
    }
    for name in ("warmup_steps", "save_samples", "checkpoint_at_epoch", "accelerate_full_state_at_epoch"):
        value = getattr(params, name)
        if value is not None:
            training[name] = value
    if params.is_pretraining:
        training["pretraining_config"] = PretrainingConfig(
            block_size=params.block_size, document_column_name=params.document_column_name
        )
    if not resources.flash_attn_installed:
        training["disable_flash_attn"] = True
    training.update(params.extra_args)

    torchrun = {
        "nproc_per_node": max(1, nproc_per_node),
        "nnodes": dist.nnodes,
        "node_rank": dist.node_rank,
        "rdzv_id": dist.rdzv_id if dist.rdzv_id is not None else (rdzv_id if rdzv_id is not None else random_rdzv_id()),
        "rdzv_endpoint": dist.rdzv_endpoint,
    }
    problems: list[str] = []
    built: dict[str, Any] = {}
    for key, model, values in (("torchrun", TorchrunArgs, torchrun), ("training", TrainingArgs, training)):
        try:
            built[key] = model(**values)
        except ValidationError as exc:
            problems += [f"{problem} ({model.__name__})" for problem in validation_problems(exc)]
    if problems:  # reported before the GPU count: a bad value is the caller's to fix either way
        raise ParameterError(problems)
    if nproc_per_node < 1:
        raise RuntimeError(
            "nproc_per_node was not given and no GPU is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            "instructlab-training needs GPUs: run on a GPU node or set nproc_per_node"
        )
    return built["torchrun"], built["training"]


def random_rdzv_id() -> int:
    return secrets.randbelow(2**31)


# --- outputs -------------------------------------------------------------------------------------


def _checkpoint_order(path: Path) -> tuple[int, float]:
    match = re.fullmatch(r"samples_(\d+)", path.name)
    # `last_epoch` (keep_last_checkpoint_only) is overwritten in place: it is always the latest
    return (int(match[1]) if match else sys.maxsize, path.stat().st_mtime)


def find_checkpoints(ckpt_output_dir: str | os.PathLike[str]) -> list[Path]:
    """Hugging Face format checkpoints under `<ckpt>/hf_format`, oldest first."""
    root = Path(ckpt_output_dir) / "hf_format"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(found, key=_checkpoint_order)


def checkpoint_state(ckpt_output_dir: str | os.PathLike[str]) -> dict[Path, float]:
    """Each checkpoint with the newest modification time of its files: compared before/after a run."""
    return {p: max((f.stat().st_mtime for f in p.iterdir() if f.is_file()), default=0.0)
            for p in find_checkpoints(ckpt_output_dir)}


FULL_STATE_METADATA = "training_metadata.json"
# Beside `full_state`, not inside it: instructlab sorts every entry of `full_state` by the integer after
# its last "_" (`int(str(path).rsplit("_", 1)[-1])`), so any other name there would crash its resume.
INCOMPLETE_FULL_STATES_DIR = "full_state_incomplete"


def _full_state_epoch_dirs(ckpt_output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Every `<ckpt>/full_state/epoch_N` folder, newest epoch first."""
    root = Path(ckpt_output_dir) / "full_state"
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m[1]), p) for p in entries if (m := re.fullmatch(r"epoch_(\d+)", p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def _read_full_state_metadata(state_dir: Path) -> dict[str, Any] | None:
    """The metadata of a complete full state; None if the save never finished.

    instructlab-training 0.16.2 (`utils.save_full_state`) writes the folder with `accelerator.save_state`
    (every rank's model/optimizer shards, scheduler, RNG states), then the main process writes
    `training_metadata.json` (a torch pickle) as the last file. A save cut short leaves it missing or
    truncated, and its resume (`load_latest_full_state`) would crash on that folder.
    """
    try:
        import torch

        metadata = torch.load(state_dir / FULL_STATE_METADATA, weights_only=True)
    except Exception:  # missing, truncated, or moved away meanwhile
        return None
    if not isinstance(metadata, dict) or not {"current_epoch", "samples_seen"} <= metadata.keys():
        return None  # instructlab's resume reads both keys
    return metadata


def full_state_is_complete(state_dir: str | os.PathLike[str]) -> bool:
    """Whether a `full_state/epoch_N` folder holds a finished save (its metadata, written last, is readable)."""
    return _read_full_state_metadata(Path(state_dir)) is not None


def latest_full_state_epoch(ckpt_output_dir: str | os.PathLike[str]) -> int | None:
    """The epoch of the newest complete `<ckpt>/full_state/epoch_N`: a run in this directory resumes from it."""
    return next((epoch for epoch, path in _full_state_epoch_dirs(ckpt_output_dir) if full_state_is_complete(path)),
                None)


@dataclass(frozen=True)
class SetAsideFullState:
    epoch: int
    source: Path
    destination: Path | None  # None: another process moved it first


def set_aside_incomplete_full_states(ckpt_output_dir: str | os.PathLike[str]) -> list[SetAsideFullState]:
    """Move incomplete `full_state/epoch_N` folders newer than the newest complete one out of the way.

    instructlab resumes from the highest epoch folder without checking it: a pod killed while saving
    would make every later attempt crash on the half-written state. Each such folder is renamed (never
    deleted) to `<ckpt>/full_state_incomplete/epoch_N-<UTC time>-<random>`; older folders are left alone
    (instructlab never picks them). Safe when several processes do it at once on a shared volume: a
    rename is atomic, and a folder another process moved first is counted with `destination=None`.
    """
    ckpt = Path(ckpt_output_dir)
    moved: list[SetAsideFullState] = []
    for epoch, path in _full_state_epoch_dirs(ckpt):
        if full_state_is_complete(path):
            break
        aside_root = ckpt / INCOMPLETE_FULL_STATES_DIR
        aside_root.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        destination = aside_root / f"{path.name}-{stamp}-{secrets.token_hex(3)}"
        try:
            os.rename(path, destination)  # same volume: atomic, no copying of a large state
        except FileNotFoundError:
            log.info("%s was already set aside by another process", path)
            moved.append(SetAsideFullState(epoch, path, None))
            continue
        except OSError as exc:
            raise RuntimeError(
                f"{path} is an incomplete full state (its {FULL_STATE_METADATA} is missing or unreadable: the save "
                f"was interrupted) and could not be moved to {destination}: {exc}; move or remove it, or "
                "instructlab-training will crash trying to resume from it"
            ) from exc
        moved.append(SetAsideFullState(epoch, path, destination))
    resume_epoch = latest_full_state_epoch(ckpt)
    resume_from = "the start" if resume_epoch is None else f"the full state of epoch {resume_epoch}"
    for item in moved:
        if item.destination is not None:
            log.warning(
                "%s is an incomplete full state (no readable %s: its save was interrupted); moved it to %s. "
                "Training resumes from %s.", item.source, FULL_STATE_METADATA, item.destination, resume_from,
            )
    return moved


@dataclass(frozen=True)
class FullState:
    """The newest resumable state in a checkpoint directory."""

    epoch: int
    global_step: int | None  # set for an on-demand (mid-epoch) save; None at the end of an epoch
    saved_at: float  # mtime of its metadata
    readable: bool = True  # always: only complete states are read

    @property
    def epoch_complete(self) -> bool:
        return self.readable and self.global_step is None


def read_full_state(ckpt_output_dir: str | os.PathLike[str]) -> FullState | None:
    """What the newest complete `<ckpt>/full_state/epoch_N/training_metadata.json` (a torch pickle) says."""
    for epoch, path in _full_state_epoch_dirs(ckpt_output_dir):
        metadata = _read_full_state_metadata(path)
        if metadata is None:
            continue
        try:
            saved_at = (path / FULL_STATE_METADATA).stat().st_mtime
        except OSError:
            continue  # moved away since
        return FullState(epoch, metadata.get("global_step"), saved_at, True)
    return None


def log_path_for(ckpt_output_dir: str | os.PathLike[str], node_rank: int) -> Path:
    return Path(ckpt_output_dir) / LOG_FILE_TEMPLATE.format(node_rank=node_rank)


def exit_status_from_log(text: str) -> int | None:
    """The exit status torchrun reports for a failed worker (`exitcode  : 1 (pid: ...)`), if any."""
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", text) or re.findall(r"exited with code (-?\d+)", text)
    return int(codes[-1]) if codes else None


# What ends a run, most specific first: (pattern, what it means for the user). The first line of the
# log that matches the earliest pattern is the cause; torchrun's own summary at the end never is.
_KNOWN_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p, re.IGNORECASE), hint) for p, hint in (
    (r"Found no NVIDIA driver|no CUDA GPUs are available|CUDA driver version is insufficient",
     "no usable GPU on this node"),
    (r"CUDA out of memory|OutOfMemoryError", "GPU out of memory: lower max_tokens_per_gpu (or max_seq_len)"),
    (r"Watchdog caught collective operation timeout|NCCL.*(timeout|timed out)|DistNetworkError|DistBackendError|"
     r"NCCL error", "a collective (NCCL) failed or timed out: check the network between nodes and every rank's log"),
    (r"No space left on device|Disk quota exceeded", "the disk is full"),
    (r"FileNotFoundError|No such file or directory|does not appear to have a file named", "a file is missing"),
    (r"PermissionError|Permission denied|Read-only file system", "a path is not writable"),
))
_EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b:?.*)$")
_RANK_PREFIX = re.compile(r"^\[(?:default)?rank\d+\]:\s*")


def failure_cause(text: str) -> str | None:
    """The first real error in a training log (one line, rank prefix removed), with what it means.

    Known causes first (no GPU, CUDA out of memory, NCCL timeouts, disk full, missing files, ...),
    else the exception that ended the first traceback; None when the log names none.
    """
    lines = [_RANK_PREFIX.sub("", line).strip() for line in text.splitlines()]
    for pattern, meaning in _KNOWN_CAUSES:
        for line in lines:
            if pattern.search(line):
                return f"{line[:500]} ({meaning})"
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and (match := _EXCEPTION_LINE.match(line)):
            return match[1][:500]
    return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class TrainingResult:
    """What one `train()` call produced on this node."""

    ckpt_output_dir: Path
    final_checkpoint: Path | None  # newest Hugging Face format checkpoint (loads with AutoModelForCausalLM)
    checkpoints: tuple[Path, ...]  # every checkpoint under <ckpt>/hf_format, oldest first
    last_metrics: dict[str, Any] | None  # last per-step record of the metrics file
    metrics_path: Path | None
    log_path: Path  # torchrun's output for this node
    node_rank: int = 0
    resumed_from_epoch: int | None = None  # a complete full state of this epoch existed before the run
    torchrun_args: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready summary (for a termination message): checkpoint, epoch, step, loss."""
        metrics = self.last_metrics or {}
        return {
            "final_checkpoint": str(self.final_checkpoint) if self.final_checkpoint else None,
            "epoch": metrics.get("epoch"),
            "step": metrics.get("step"),
            "loss": metrics.get("avg_loss"),
            "resumed_from_epoch": self.resumed_from_epoch,
        }


class TrainingFailedError(RuntimeError):
    """Training ran and failed: carries torchrun's exit status and where the log is."""

    def __init__(self, message: str, *, exit_status: int | None, log_path: Path, node_rank: int,
                 cause: str | None = None):
        super().__init__(message)
        self.cause = cause  # the first real error found in the log
        self.exit_status = exit_status
        self.log_path = log_path
        self.node_rank = node_rank


class TrainingInterruptedError(RuntimeError):
    """Training saved an on-demand (mid-epoch) state and stopped, e.g. on SIGTERM: resumable."""


def locate_torchrun(path_env: str | None = None, python_executable: str | None = None) -> Path | None:
    """`torchrun` on PATH, else next to the Python interpreter (a virtualenv that is not activated)."""
    found = shutil.which("torchrun", path=path_env if path_env is not None else os.environ.get("PATH", ""))
    if found:
        return Path(found)
    beside = Path(python_executable or sys.executable).parent / "torchrun"
    return beside if beside.is_file() and os.access(beside, os.X_OK) else None


# --- the backend ---------------------------------------------------------------------------------


class _RunLogCapture(logging.Handler):
    """Picks instructlab's exit-code and swallowed-launch-error records out of its logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.exit_status: int | None = None
        self.launch_error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("instructlab.training"):
            return
        if record.msg == _EXIT_CODE_MESSAGE and record.args:
            self.exit_status = int(record.args[0])  # type: ignore[index]
        elif record.msg == _LAUNCH_FAILURE_MESSAGE and record.exc_info:
            self.launch_error = record.exc_info[1]


@contextmanager
def _launcher_on_path(torchrun: Path) -> Iterator[None]:
    """run_training starts plain `torchrun`: make sure the one we found is the one PATH finds."""
    original = os.environ.get("PATH", "")
    if shutil.which("torchrun", path=original) == str(torchrun):
        yield
        return
    os.environ["PATH"] = str(torchrun.parent) + os.pathsep + original
    try:
        yield
    finally:
        os.environ["PATH"] = original


class InstructLabTrainingSFTBackend(Backend):
    """Runs SFT with instructlab-training (`run_training` under torchrun)."""

    name = DEFAULT_BACKEND

    def __init__(self, resources: HostResources | None = None):
        self.resources = resources  # None: detected when training starts

    def extra_arg_names(self) -> Mapping[str, str]:
        return TRAINING_ARGS_FIELDS

    def check(self, request: TrainRequest) -> None:
        """The data file (every line), and an explicit nproc_per_node against the GPUs present."""
        from training_hub.data import check_data_file

        check_data_file(request.params.data_path, is_pretraining=request.params.is_pretraining,
                        document_column_name=request.params.document_column_name)
        wanted = request.distributed.nproc_per_node
        present = self.resources.gpu_count if self.resources is not None else nvidia_device_count()
        if wanted is not None and present is not None and wanted > present:
            raise ParameterError([
                f"nproc_per_node: {wanted} processes asked for, but this machine shows {present} GPU(s)"
                f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); one process per GPU"
            ])

    def execute_training(self, algorithm_params: Mapping[str, Any] | TrainRequest) -> TrainingResult:
        if isinstance(algorithm_params, TrainRequest):
            request = algorithm_params
        else:
            request = parse_train_kwargs(algorithm_params, self.extra_arg_names())
            self.check(request)
        return self.run(request)

    def run(self, request: TrainRequest) -> TrainingResult:
        torchrun_args, training_args = build_instructlab_args(request, self.resources or HostResources.detect())
        ckpt = Path(training_args.ckpt_output_dir)
        node_rank = torchrun_args.node_rank
        log_path = log_path_for(ckpt, node_rank)
        torchrun = locate_torchrun()
        if torchrun is None:
            raise RuntimeError(
                f"torchrun not found on PATH nor next to {sys.executable}; install torch in this environment "
                "(it provides torchrun) or put its bin directory on PATH"
            )
        if node_rank == 0:
            # The rendezvous waits for every node, this one included, so no rank loads a state before this is
            # done. Other nodes leave the folders alone: on a volume they do not share, their epoch folders
            # never hold the metadata (global rank 0 writes it), yet instructlab still needs them there.
            set_aside_incomplete_full_states(ckpt)
        if training_args.process_data is not False:
            # Once per data set, not per node: node rank 0 prepares (or reuses a matching manifest), the other
            # nodes wait for it; instructlab would otherwise rewrite the shared data.jsonl on every node at once.
            ensure_prepared(request)
            training_args = training_args.model_copy(update={"process_data": False})
        state_before = read_full_state(ckpt)
        if state_before is not None:
            log.info("%s holds a full state of epoch %d: training resumes from it", ckpt, state_before.epoch)
        checkpoints_before = checkpoint_state(ckpt)
        started = time.time()
        capture = _RunLogCapture()
        # On the parent: run_training's dictConfig replaces the handlers of "instructlab.training"
        # (and makes it propagate), so a handler there would be gone before the records it wants.
        instructlab_logger = logging.getLogger("instructlab")
        instructlab_logger.addHandler(capture)
        try:
            from instructlab.training import run_training

            with _launcher_on_path(torchrun):
                run_training(torch_args=torchrun_args, train_args=training_args)
        except RuntimeError as exc:
            if capture.exit_status is None and not str(exc).startswith("Suffered a failure during distributed"):
                raise  # not the launcher's failure: let it through unchanged
            raise self._failure(capture.exit_status, log_path, node_rank) from exc
        finally:
            instructlab_logger.removeHandler(capture)

        if capture.launch_error is not None:
            raise RuntimeError(
                f"could not launch torchrun ({torchrun}): {capture.launch_error}; "
                "instructlab-training reported success without training"
            )
        if not log_path.exists() or log_path.stat().st_mtime < started - 1:
            raise RuntimeError(f"torchrun did not run: it wrote no log at {log_path}")
        return self._result(request, torchrun_args, ckpt, log_path, checkpoints_before, state_before)

    @staticmethod
    def _failure(exit_status: int | None, log_path: Path, node_rank: int) -> TrainingFailedError:
        try:
            text = log_path.read_text(errors="replace")
        except OSError:
            text = ""
        if exit_status is None:
            exit_status = exit_status_from_log(text)
        status = "unknown exit status" if exit_status is None else (
            f"killed by signal {-exit_status}" if exit_status < 0 else f"exit status {exit_status}"
        )
        cause = failure_cause(text)
        message = f"training failed on node rank {node_rank}: torchrun ended with {status}. "
        message += f"Cause: {cause}. " if cause else "No error found in the log. "
        message += f"Log: {log_path}"
        if not cause:
            tail = _tail(log_path, 5)
            message += "\nLast log lines:\n" + tail if tail else " (empty)"
        return TrainingFailedError(message, exit_status=exit_status, log_path=log_path, node_rank=node_rank,
                                   cause=cause)

    @staticmethod
    def _result(
        request: TrainRequest,
        torchrun_args: "TorchrunArgs",
        ckpt: Path,
        log_path: Path,
        checkpoints_before: dict[Path, float],
        state_before: FullState | None,
    ) -> TrainingResult:
        checkpoints = find_checkpoints(ckpt)
        saved_now = [p for p, mtime in checkpoint_state(ckpt).items() if checkpoints_before.get(p, -1.0) < mtime]
        already_done = (
            state_before is not None and state_before.epoch_complete
            and state_before.epoch >= request.params.num_epochs - 1
        )
        # Only global rank 0 (on node rank 0) writes checkpoints; other nodes may not share the volume.
        if torchrun_args.node_rank == 0 and not saved_now and not (already_done and checkpoints):
            state_after = read_full_state(ckpt)
            saved_state_now = state_after is not None and state_after != state_before and state_after.readable
            if saved_state_now and state_after.global_step is not None:
                raise TrainingInterruptedError(
                    f"training stopped in epoch {state_after.epoch} at step {state_after.global_step} after an "
                    f"on-demand checkpoint (saved under {ckpt / 'full_state'}); run again with the same "
                    "ckpt_output_dir to resume from it"
                )
            tail = _tail(log_path)
            raise RuntimeError(
                f"training ended without saving a checkpoint under {ckpt / 'hf_format'}; see the log {log_path}"
                + (f"\nLast log lines:\n{tail}" if tail else " (empty)")
            )
        nproc = int(torchrun_args.nproc_per_node) if str(torchrun_args.nproc_per_node).isdigit() else 0
        candidates = [metrics_path(ckpt, torchrun_args.node_rank * nproc), metrics_path(ckpt, 0)]
        metrics_file = next((p for p in candidates if p.exists()), None)
        return TrainingResult(
            ckpt_output_dir=ckpt,
            final_checkpoint=checkpoints[-1] if checkpoints else None,
            checkpoints=tuple(checkpoints),
            last_metrics=last_step_metrics(metrics_file) if metrics_file else None,
            metrics_path=metrics_file,
            log_path=log_path,
            node_rank=torchrun_args.node_rank,
            resumed_from_epoch=state_before.epoch if state_before is not None else None,
            torchrun_args=torchrun_args.model_dump(),
        )
