"""The backend's mapping onto the installed instructlab-training's real TorchrunArgs/TrainingArgs,
and the small pure helpers around the run (host detection, launcher lookup, outputs)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from instructlab.training import PretrainingConfig, TorchrunArgs, TrainingArgs

from training_hub.backends.instructlab import (
    HostResources,
    InstructLabTrainingSFTBackend,
    TrainingResult,
    available_cpu_count,
    build_instructlab_args,
    cuda_visible_device_count,
    exit_status_from_log,
    failure_cause,
    find_checkpoints,
    latest_full_state_epoch,
    locate_torchrun,
    nvidia_device_count,
    visible_gpu_count,
)
from training_hub.backends.training_args_fields import TRAINING_ARGS_FIELDS
from training_hub.params import ParameterError, parse_train_kwargs

GPU_HOST = HostResources(gpu_count=8, cpu_count=32, flash_attn_installed=True)
CPU_HOST = HostResources(gpu_count=0, cpu_count=2, flash_attn_installed=False)
BASE = {"model_path": "/models/m", "data_path": "/data/train.jsonl", "ckpt_output_dir": "/ckpt", "num_epochs": 3,
        "effective_batch_size": 64, "learning_rate": 2e-5, "max_seq_len": 2048}


def build(resources: HostResources = GPU_HOST, **kwargs):
    request = parse_train_kwargs({**BASE, **kwargs}, InstructLabTrainingSFTBackend().extra_arg_names())
    return build_instructlab_args(request, resources)


def default_of(name: str):
    return TrainingArgs.model_fields[name].get_default(call_default_factory=True)


def test_minimal_call_maps_onto_real_models():
    torchrun, training = build()
    assert isinstance(torchrun, TorchrunArgs) and isinstance(training, TrainingArgs)
    assert (training.model_path, training.data_path, training.ckpt_output_dir) == ("/models/m", "/data/train.jsonl", "/ckpt")
    assert (training.num_epochs, training.effective_batch_size, training.learning_rate) == (3, 64, 2e-5)
    assert training.max_seq_len == 2048
    assert training.max_batch_len == 2048  # max_tokens_per_gpu omitted -> max_seq_len
    assert training.data_output_dir == "/ckpt/data"
    assert training.pretraining_config is None
    assert training.data_process_num_cpu_procs == 16  # min(16, 32 CPUs)
    # optional parameters left unset keep instructlab's own defaults
    for name in ("warmup_steps", "save_samples", "checkpoint_at_epoch", "accelerate_full_state_at_epoch",
                 "disable_flash_attn", "random_seed", "adamw_betas", "distributed_backend"):
        assert getattr(training, name) == default_of(name), name
    assert (torchrun.nproc_per_node, torchrun.nnodes, torchrun.node_rank) == (8, 1, 0)  # all visible GPUs
    assert torchrun.rdzv_endpoint is None and torchrun.master_addr is None  # -> torchrun --standalone
    assert isinstance(torchrun.rdzv_id, int)


def test_rdzv_id_random_when_omitted_fixed_when_given():
    ids = {build()[0].rdzv_id for _ in range(5)}
    assert len(ids) > 1
    request = parse_train_kwargs(BASE)
    assert build_instructlab_args(request, GPU_HOST, rdzv_id="abc")[0].rdzv_id == "abc"
    assert build(rdzv_id=77)[0].rdzv_id == 77


def test_every_page_parameter_reaches_instructlab():
    torchrun, training = build(
        max_tokens_per_gpu=45000, warmup_steps=10, data_output_dir="/scratch/data", save_samples=1000,
        checkpoint_at_epoch=False, accelerate_full_state_at_epoch=False, is_pretraining=True, block_size=1024,
        document_column_name="text", nproc_per_node=4, nnodes=4, node_rank=2, rdzv_id=12345,
        rdzv_endpoint="head.ns.svc:29500",
    )
    assert training.max_batch_len == 45000
    assert (training.warmup_steps, training.save_samples) == (10, 1000)
    assert training.data_output_dir == "/scratch/data"
    assert (training.checkpoint_at_epoch, training.accelerate_full_state_at_epoch) == (False, False)
    assert isinstance(training.pretraining_config, PretrainingConfig)
    assert training.pretraining_config.model_dump() == {"block_size": 1024, "document_column_name": "text"}
    assert torchrun.model_dump() == {"nproc_per_node": 4, "nnodes": 4, "node_rank": 2, "rdzv_id": 12345,
                                     "rdzv_endpoint": "head.ns.svc:29500", "master_addr": None, "master_port": None}


def test_extra_arguments_by_name_win_over_host_defaults():
    _, training = build(CPU_HOST, nproc_per_node=1, adamw_weight_decay=0.01, random_seed=7, adamw_betas=(0.8, 0.9),
                        data_process_num_cpu_procs=1, disable_flash_attn=False, distributed_backend="deepspeed",
                        keep_last_checkpoint_only=True)
    assert training.adamw_weight_decay == 0.01 and training.random_seed == 7 and training.adamw_betas == (0.8, 0.9)
    assert training.data_process_num_cpu_procs == 1 and training.disable_flash_attn is False
    assert training.distributed_backend.value == "deepspeed" and training.keep_last_checkpoint_only is True


def test_host_defaults_without_flash_attn_and_few_cpus():
    _, training = build(CPU_HOST, nproc_per_node=1)
    assert training.disable_flash_attn is True  # instructlab would refuse to start otherwise
    assert training.data_process_num_cpu_procs == 2


def test_simple_backend_values_are_checked_with_the_parameters():
    """Types come from the generated TrainingArgs table: reported before instructlab is imported."""
    with pytest.raises(ParameterError) as caught:
        build(distributed_backend="horovod", random_seed="x", adamw_weight_decay=True, adamw_betas=(0.9, float("nan")))
    assert sorted(caught.value.problems) == [
        "adamw_betas[1]: must be a finite number (got nan)",
        "adamw_weight_decay: must be a valid number (got True)",
        "distributed_backend: must be 'fsdp' or 'deepspeed' (got 'horovod')",
        "random_seed: must be a valid integer (got 'x')",
    ]


def test_values_training_args_rejects_become_parameter_errors():
    request = parse_train_kwargs({**BASE, "validation_split": 2.0}, TRAINING_ARGS_FIELDS)  # its range: TrainingArgs'
    with pytest.raises(ParameterError) as caught:
        build_instructlab_args(request, GPU_HOST)
    assert [p for p in caught.value.problems if p.startswith("validation_split")], caught.value.problems
    assert all(p.endswith("(TrainingArgs)") and "Value error, " not in p for p in caught.value.problems)


def test_a_bad_value_is_reported_before_the_missing_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    request = parse_train_kwargs({**BASE, "validation_split": 2.0}, TRAINING_ARGS_FIELDS)
    with pytest.raises(ParameterError):
        build_instructlab_args(request, CPU_HOST)


def test_no_gpu_and_no_nproc_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError) as caught:
        build(CPU_HOST)
    assert str(caught.value) == (
        "nproc_per_node was not given and no GPU is visible (CUDA_VISIBLE_DEVICES=); instructlab-training needs "
        "GPUs: run on a GPU node or set nproc_per_node"
    )


@pytest.mark.parametrize(("value", "count"), [("", 0), ("0", 1), ("0,1,2,3", 4), ("2, 5", 2), ("-1", 0),
                                              ("0,-1,2", 1), ("GPU-8f6c1a2b,GPU-1d2e", 2), ("0,,1", 1)])
def test_cuda_visible_devices(value, count):
    assert cuda_visible_device_count(value) == count


def test_gpu_count_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpu_count() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import torch

    assert visible_gpu_count() == torch.cuda.device_count()


def test_cpu_count_is_what_this_process_may_use():
    assert 1 <= available_cpu_count() <= len(os.sched_getaffinity(0))


def test_host_detection():
    host = HostResources.detect()
    assert host.cpu_count >= 1 and host.gpu_count >= 0
    assert isinstance(host.flash_attn_installed, bool)


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_torchrun_found_on_path_then_beside_python(tmp_path):
    on_path = _executable(tmp_path / "bin" / "torchrun")
    beside = _executable(tmp_path / "venv" / "bin" / "torchrun")
    python = tmp_path / "venv" / "bin" / "python"
    assert locate_torchrun(str(tmp_path / "bin"), str(python)) == on_path
    assert locate_torchrun(str(tmp_path / "empty"), str(python)) == beside  # un-activated virtualenv
    assert locate_torchrun(str(tmp_path / "empty"), str(tmp_path / "other" / "python")) is None


def test_checkpoints_in_training_order(tmp_path):
    for name in ("samples_128", "samples_1024", "samples_64", "no_config"):
        (tmp_path / "hf_format" / name).mkdir(parents=True)
        if name != "no_config":
            (tmp_path / "hf_format" / name / "config.json").write_text("{}")
    assert [p.name for p in find_checkpoints(tmp_path)] == ["samples_64", "samples_128", "samples_1024"]
    assert find_checkpoints(tmp_path / "missing") == []


def test_latest_full_state_epoch(tmp_path):
    assert latest_full_state_epoch(tmp_path) is None
    import torch

    for epoch in (0, 2, 1):
        (tmp_path / "full_state" / f"epoch_{epoch}").mkdir(parents=True)
        torch.save({"current_epoch": epoch, "samples_seen": 8}, tmp_path / "full_state" / f"epoch_{epoch}" /
                   "training_metadata.json")
    (tmp_path / "full_state" / "other").mkdir()
    assert latest_full_state_epoch(tmp_path) == 2
    (tmp_path / "full_state" / "epoch_3").mkdir()  # a save still in progress (or cut short): no metadata yet
    assert latest_full_state_epoch(tmp_path) == 2
    (tmp_path / "full_state" / "epoch_2" / "training_metadata.json").write_bytes(b"PK\x03\x04")  # truncated
    assert latest_full_state_epoch(tmp_path) == 1


def test_exit_status_from_torchrun_log():
    log = "[rank0]: boom\n  exitcode  : 1 (pid: 4242)\n  error_file: <N/A>\n"
    assert exit_status_from_log(log) == 1
    assert exit_status_from_log("exitcode  : -9 (pid: 1)") == -9
    assert exit_status_from_log("Training subprocess exited with code 3.") == 3
    assert exit_status_from_log("all good") is None


def test_result_summary_is_json_ready(tmp_path):
    result = TrainingResult(
        ckpt_output_dir=tmp_path, final_checkpoint=tmp_path / "hf_format" / "samples_64", checkpoints=(),
        last_metrics={"epoch": 1, "step": 8, "avg_loss": 2.5, "lr": 1e-5}, metrics_path=None,
        log_path=tmp_path / "full_logs_global0.log", resumed_from_epoch=0,
    )
    assert json.loads(json.dumps(result.summary())) == {
        "final_checkpoint": str(tmp_path / "hf_format" / "samples_64"), "epoch": 1, "step": 8, "loss": 2.5,
        "resumed_from_epoch": 0,
    }


# --- the cause of a failure, from the log ---------------------------------------------------------

NO_DRIVER_LOG = """\
[2026-11-29 10:00:01,000] torch.distributed.run: [WARNING] Setting OMP_NUM_THREADS environment variable to 1
[rank0]: Traceback (most recent call last):
[rank0]:   File "/venv/lib/python3.11/site-packages/instructlab/training/main_ds.py", line 880, in <module>
[rank0]:     torch.cuda.set_device(local_rank)
[rank0]: RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver
E1129 10:00:03.000 torch/distributed/elastic/multiprocessing/api.py:869] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 8, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
instructlab/training/main_ds.py FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_10:00:03
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 1234)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


@pytest.mark.parametrize(("log", "cause"), [
    (NO_DRIVER_LOG, "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
                    "installed a driver (no usable GPU on this node)"),
    ("step 3\n[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\nexitcode  : 1",
     "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU out of memory: lower "
     "max_tokens_per_gpu (or max_seq_len))"),
    ("[rank3]:[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank 3] Watchdog caught collective operation timeout: "
     "WorkNCCL(SeqNum=5, OpType=ALLREDUCE) ran for 600000 milliseconds before timing out.",
     "[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, "
     "OpType=ALLREDUCE) ran for 600000 milliseconds before timing out. (a collective (NCCL) failed or timed out: check "
     "the network between nodes and every rank's log)"),
    ("Traceback (most recent call last):\n  File \"x\"\nFileNotFoundError: [Errno 2] No such file or directory: "
     "'/models/m/config.json'", "FileNotFoundError: [Errno 2] No such file or directory: '/models/m/config.json' "
     "(a file is missing)"),
    ("Traceback (most recent call last):\n  File \"x\", line 1\nKeyError: 'messages'\nmore", "KeyError: 'messages'"),
    ("all fine\nexitcode  : 1 (pid: 3)", None),
])
def test_failure_cause_is_the_first_real_error(log, cause):
    assert failure_cause(log) == cause


def test_training_failure_carries_the_cause_not_a_tail(tmp_path):
    log = tmp_path / "full_logs_global0.log"
    log.write_text(NO_DRIVER_LOG)
    error = InstructLabTrainingSFTBackend._failure(1, log, 0)
    assert str(error) == (
        "training failed on node rank 0: torchrun ended with exit status 1. Cause: RuntimeError: Found no NVIDIA "
        "driver on your system. Please check that you have an NVIDIA GPU and installed a driver (no usable GPU on this "
        f"node). Log: {log}"
    )
    assert error.cause.startswith("RuntimeError: Found no NVIDIA driver") and error.exit_status == 1


# --- GPUs asked for against GPUs present -----------------------------------------------------------


def test_more_processes_than_gpus_fail_fast_with_both_numbers(tmp_path, monkeypatch):
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    request = parse_train_kwargs({**BASE, "data_path": str(data), "nproc_per_node": 1000}, TRAINING_ARGS_FIELDS)
    with pytest.raises(ParameterError) as caught:
        InstructLabTrainingSFTBackend(resources=GPU_HOST).check(request)
    assert caught.value.problems == [
        "nproc_per_node: 1000 processes asked for, but this machine shows 8 GPU(s) (CUDA_VISIBLE_DEVICES=<unset>); "
        "one process per GPU"
    ]
    request = parse_train_kwargs({**BASE, "data_path": str(data), "nproc_per_node": 8}, TRAINING_ARGS_FIELDS)
    InstructLabTrainingSFTBackend(resources=GPU_HOST).check(request)


def test_gpu_count_without_torch_follows_cuda_visible_devices(monkeypatch):
    count = nvidia_device_count()
    if count is None:  # no NVIDIA driver here: nothing to compare against, the check is skipped
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        assert nvidia_device_count() is None
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nvidia_device_count() == 0
