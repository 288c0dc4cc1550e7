"""CPU tests of the GPU proof (bench/gpu_proof.sh, bench/gpu_proof/driver.py): everything it does that
needs no GPU. The model/data it builds, the wheels it carries, the arguments it gives sft() and the pod
entrypoint (checked against the operator's own render and the library's own parsing), and the logic that
reads metrics, detects a resume, kills process trees and writes the report.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
PROOF_DIR = ROOT / "bench" / "gpu_proof"
DRIVER_PATH = PROOF_DIR / "driver.py"


def _load_driver():
    spec = importlib.util.spec_from_file_location("gpu_proof_driver", DRIVER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


driver = _load_driver()
SETTINGS = driver.ProofSettings()


# ------------------------------------------------------------------------------------ helpers


def _step(epoch: int, step: int, loss: float, *, tokens: int = 1000, batch: int = 16, at: float = 0.0) -> dict:
    """A step record as instructlab-training 0.16 writes it (the fields the driver reads, and a few more)."""
    stamp = datetime.datetime(2026, 11, 28, 12, 0, 0) + datetime.timedelta(seconds=at)
    return {"epoch": epoch, "step": step, "rank": 0, "overall_throughput": 100.0, "lr": 1e-3,
            "num_loss_counted_tokens": tokens // 2, "num_tokens_rank0": tokens, "batch_size": batch,
            "avg_loss": loss, "samples_seen": step * batch, "total_samples": 1024, "num_epoch_steps": 4,
            "timestamp": stamp.isoformat()}


def _hparams(**extra) -> dict:
    return {"model_name_or_path": "/work/model", "data_path": "/work/data.jsonl", "num_epochs": 2,
            "current_epoch": 0, "timestamp": "2026-11-28T12:00:00", **extra}


def _dataset_record() -> dict:
    return {"num_gpus": 1, "avg_sample_len": 120.0, "effective_batch_size": 16, "num_batches": 64}


def _write_metrics(path: Path, records: list[dict], torn_tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn_tail)
    return path


def _two_epoch_run(first_loss: float = 7.0, last_loss: float = 3.0, start_step: int = 1, epochs=(0, 1),
                   steps_per_epoch: int = 4) -> list[dict]:
    total = steps_per_epoch * len(epochs)
    records, step = [], start_step
    for index, epoch in enumerate(epochs):
        for i in range(steps_per_epoch):
            k = index * steps_per_epoch + i
            loss = first_loss + (last_loss - first_loss) * k / max(1, total - 1)
            records.append(_step(epoch, step, loss, at=k * 0.5))
            step += 1
    return records


def _checkpoint(ckpt: Path, name: str) -> Path:
    path = ckpt / "hf_format" / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _full_state(ckpt: Path, epoch: int, metadata: str = "zip") -> Path:
    """A full_state/epoch_N folder; its training_metadata.json as torch.save writes it (a zip), torn
    (a zip's head without its central directory), absent, or a non-zip file of a given age."""
    path = ckpt / "full_state" / f"epoch_{epoch}"
    path.mkdir(parents=True)
    (path / "optimizer.bin").write_bytes(b"x")
    meta = path / "training_metadata.json"
    if metadata in ("zip", "torn"):
        with zipfile.ZipFile(meta, "w") as archive:
            archive.writestr("training_metadata/data.pkl", b"\x80\x02}q\x00." * 50)
        if metadata == "torn":
            meta.write_bytes(meta.read_bytes()[:40])
            os.utime(meta, (time.time() + 60, time.time() + 60))  # still being written
    elif metadata in ("old", "new"):
        meta.write_bytes(b"\x80metadata")
        if metadata == "old":
            os.utime(meta, (time.time() - 10, time.time() - 10))
    return path


# ------------------------------------------------------------------ model and data (GPU sizes)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_step_makes_a_few_million_parameter_model_and_data_instructlab_keeps(tmp_path: Path):
    """The build step with the GPU settings, then instructlab's real data processing on its output:
    the model is in the expected size range and nearly every conversation survives max_seq_len."""
    layout = driver.WorkLayout(tmp_path)
    layout.settings.write_text(json.dumps(dataclasses.asdict(SETTINGS)))
    assert driver.run_step_here("build", layout, limit_s=300) == 0
    record = json.loads(layout.step_result("build").read_text())
    assert record["status"] == "passed", record
    low, high = driver.EXPECTED_PARAMETERS
    assert low <= record["num_parameters"] <= high
    assert record["samples"] == SETTINGS.n_samples

    from instructlab.training.data_process import process_data

    out = tmp_path / "processed"
    process_data(data_path=str(layout.data), data_output_path=str(out), max_seq_len=SETTINGS.max_seq_len,
                 model_path=str(layout.model), num_cpu_procs=1)
    kept = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(kept) >= 0.9 * SETTINGS.n_samples
    # enough optimizer steps per epoch for a loss trend and for the resume step's kill window
    assert len(kept) // SETTINGS.effective_batch_size >= 48
    assert max(sample["len"] for sample in kept) < SETTINGS.max_seq_len
    assert all(any(label != -100 for label in sample["labels"]) for sample in kept)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_on_cpu_reports_each_step_and_skips_gpu_steps(tmp_path: Path):
    """The whole driver as gpu_proof.sh runs it, on a machine without CUDA: the environment step fails,
    build still runs and passes, GPU steps are skipped with the reason, and the last line is the report."""
    report_file = tmp_path / "report.json"
    completed = subprocess.run(
        [sys.executable, str(DRIVER_PATH), "run", "--work", str(tmp_path / "work"), "--report", str(report_file),
         "--steps", "environment,build,sft,preflight"],
        capture_output=True, text=True, timeout=560, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert completed.returncode == 1, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == driver.compact_report(json.loads(report_file.read_text()))
    assert report["ok"] is False
    assert report["statuses"] == {"environment": "failed", "build": "passed", "sft": "skipped", "preflight": "skipped"}
    assert report["steps"]["environment"]["error"] == "torch sees no CUDA device"
    assert report["steps"]["environment"]["cuda_available"] is False
    assert report["steps"]["sft"]["error"] == "no CUDA device"
    assert driver.EXPECTED_PARAMETERS[0] <= report["figures"]["parameters"] <= driver.EXPECTED_PARAMETERS[1]
    assert re.search(r"\[gpu-proof\] build\s+passed", completed.stdout)


def test_flash_attention_is_disabled_unless_importable():
    params = driver.training_params(SETTINGS, model_path="m", data_path="d", ckpt_output_dir="c", flash_attn=False)
    assert params["extra_args"]["disable_flash_attn"] is True
    params = driver.training_params(SETTINGS, model_path="m", data_path="d", ckpt_output_dir="c", flash_attn=True)
    assert params["extra_args"]["disable_flash_attn"] is False
    assert driver.flash_attn_available() == (importlib.util.find_spec("flash_attn") is not None)


def test_step_budgets_fit_the_issue_limit_when_steps_take_their_expected_time():
    assert driver.TOTAL_BUDGET_S <= 8 * 60
    assert set(driver.STEP_BUDGETS_S) == set(driver.STEPS) == set(driver.STEP_ORDER)
    assert all(driver.MIN_USEFUL_S < budget <= driver.TOTAL_BUDGET_S for budget in driver.STEP_BUDGETS_S.values())


# --------------------------------------------------------------------------- carried wheels


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{line}: pin an exact version"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} listed twice: two versions stop the offline install"
        pins[name] = Version(specifier.version)
    return pins


def _names(path: Path) -> set[str]:
    return {canonicalize_name(line.strip()) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


CARRIED = _pins(PROOF_DIR / "wheels.txt")
DEVICE = _names(PROOF_DIR / "device-provides.txt")
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(DEVICE_MARKERS)


def test_carried_pins_are_the_versions_ci_tests():
    for name, version in CARRIED.items():
        assert Version(metadata.version(name)) == version, f"{name}: carried {version}, CI venv has {metadata.version(name)}"


def test_device_list_holds_what_the_issue_says_the_machine_has():
    assert {"torch", "transformers", "peft", "accelerate", "numba", "pyarrow", "tokenizers"} <= DEVICE
    # carried although the machine has them: their versions there may not meet pydantic's / datasets' ranges
    overrides = {"typing-extensions", "fsspec"}
    assert set(CARRIED) & DEVICE == overrides, "carry only what the machine lacks, or a version it must have"


def test_the_train_extra_is_covered_by_the_machine_and_the_carried_wheels():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["train"]]
    missing = [str(r) for r in needed if _applies(r) and canonicalize_name(r.name) not in set(CARRIED) | DEVICE]
    assert not missing, f"neither carried nor on the GPU machine: {missing}"
    for requirement in needed:  # a carried pin must satisfy the project's own range
        name = canonicalize_name(requirement.name)
        if name in CARRIED:
            assert requirement.specifier.contains(CARRIED[name], prereleases=True), f"{requirement} vs {CARRIED[name]}"


def test_every_requirement_of_the_carried_wheels_resolves_offline():
    """The closure: each carried package's requirements (for Python 3.12 on Linux) are carried, in a
    version that satisfies them, or on the machine. Read from the CI venv's metadata of the same versions."""
    problems = []
    for name in [*CARRIED, "training-hub"]:
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if not _applies(requirement):
                continue
            dep = canonicalize_name(requirement.name)
            if dep in CARRIED:
                if not requirement.specifier.contains(CARRIED[dep], prereleases=True):
                    problems.append(f"{name} needs {text}, carried {CARRIED[dep]}")
            elif dep not in DEVICE:
                problems.append(f"{name} needs {text}: neither carried nor on the machine")
    assert not problems, problems


def test_fetched_wheels_match_the_list_and_fit_the_carry_limit():
    folder = PROOF_DIR / "wheels"
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        pytest.skip("bench/gpu_proof/fetch_wheels.sh has not been run here (it needs PyPI)")
    found = {}
    for wheel in wheels:
        name, version, *tags = wheel.stem.split("-")
        python_tag, abi_tag, platform_tag = tags[-3:]
        assert python_tag in ("py3", "py312", "cp312") or "py3" in python_tag.split("."), wheel.name
        assert abi_tag in ("none", "abi3", "cp312"), wheel.name
        assert platform_tag == "any" or "x86_64" in platform_tag, wheel.name
        found[canonicalize_name(name)] = Version(version)
    assert found.pop("training-hub") == Version(metadata.version("training-hub"))
    assert found == CARRIED
    assert sum(w.stat().st_size for w in wheels) < 48 * 1024 * 1024


def test_scripts_install_offline_and_fetch_for_python_312():
    shell = (ROOT / "bench" / "gpu_proof.sh").read_text()
    assert re.search(r"pip install .*--no-index.*--no-deps", shell.replace("\\\n", " "))
    assert "--find-links" in shell and "HF_HUB_OFFLINE=1" in shell
    fetch = (PROOF_DIR / "fetch_wheels.sh").read_text().replace("\\\n", " ")
    assert re.search(r"download .*--no-deps --only-binary=:all: .*--python-version 3.12", fetch)
    assert (PROOF_DIR / ".gitignore").read_text().split().count("wheels/") == 1
    for script in (ROOT / "bench" / "gpu_proof.sh", PROOF_DIR / "fetch_wheels.sh"):
        assert os.access(script, os.X_OK), script
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


# ------------------------------------------------------------------------- argument wiring


def _params(tmp_path: Path) -> dict:
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    (tmp_path / "model").mkdir(exist_ok=True)
    return driver.training_params(SETTINGS, model_path=str(tmp_path / "model"), data_path=str(data),
                                  ckpt_output_dir=str(tmp_path / "ckpt"), flash_attn=False)


def test_pod_from_the_operator_render_equals_the_contract(tmp_path: Path):
    """The driver runs the pod the operator's render_gang gives for a 1-node gang; its fallback copy of the
    contract (used only where the operator package is missing) is the same pod."""
    params = _params(tmp_path)
    for attempt in (0, 1):
        rendered = driver.rendered_pod(SETTINGS, params, uid="3f1c-uid", attempt=attempt)
        rdzv_id = rendered.environment["TRAINING_HUB_RDZV_ID"]
        copy = driver.contract_pod(SETTINGS, params, rdzv_id=rdzv_id)
        assert (rendered.command, rendered.environment, rendered.params_json) == (copy.command, copy.environment, copy.params_json)
    assert rendered.command == ("training-hub", "sft", "--config", "/etc/training-hub/params.json")
    assert rendered.environment["TRAINING_HUB_NNODES"] == "1"
    assert rendered.environment["TRAINING_HUB_NPROC_PER_NODE"] == "1"
    first = driver.rendered_pod(SETTINGS, params, uid="3f1c-uid", attempt=0).environment["TRAINING_HUB_RDZV_ID"]
    assert first != rdzv_id, "a new gang attempt gets a fresh rdzv id"


def test_localize_changes_only_the_config_path_the_endpoint_and_the_summary_file(tmp_path: Path):
    pod = driver.rendered_pod(SETTINGS, _params(tmp_path), uid="uid-1", attempt=0)
    local = driver.localize(pod, config_path="/tmp/x/params.json", rdzv_endpoint="127.0.0.1:40000",
                            termination_log="/tmp/x/termination-log")
    assert local.command == ("training-hub", "sft", "--config", "/tmp/x/params.json")
    changed = {k for k in pod.environment if pod.environment[k] != local.environment[k]}
    assert changed == {"TRAINING_HUB_RDZV_ENDPOINT", "TRAINING_HUB_TERMINATION_LOG"}
    assert local.environment["TRAINING_HUB_RDZV_ENDPOINT"] == "127.0.0.1:40000"
    assert local.params_json == pod.params_json


def test_sft_call_and_pod_entrypoint_describe_the_same_training(tmp_path: Path):
    """What sft() is given and what the entrypoint reads (params.json + TRAINING_HUB_* env, parsed by the
    entrypoint's own functions) validate to the same SFT parameters and the same 1-node gang."""
    from training_hub.backends.instructlab import training_args_field_names
    from training_hub.launch.cli import check_train_kwargs, load_config_file, merge_settings
    from training_hub.launch.env import read_launch_environment
    from training_hub.params import parse_train_kwargs

    params = _params(tmp_path)
    pod = driver.localize(driver.rendered_pod(SETTINGS, params, uid="uid-2", attempt=0),
                          config_path=str(tmp_path / "params.json"), rdzv_endpoint="127.0.0.1:40001",
                          termination_log=str(tmp_path / "termination-log"))
    (tmp_path / "params.json").write_text(pod.params_json)
    from_pod = check_train_kwargs(merge_settings(load_config_file(str(tmp_path / "params.json")),
                                                 read_launch_environment(pod.environment).distributed))
    kwargs = driver.sft_kwargs(params, rdzv_id=pod.environment["TRAINING_HUB_RDZV_ID"], rdzv_endpoint="127.0.0.1:40001")
    from_sft = parse_train_kwargs(kwargs, training_args_field_names())
    assert from_sft.params == from_pod.params
    assert from_sft.distributed == from_pod.distributed
    assert from_sft.distributed.nproc_per_node == 1 and from_sft.distributed.nnodes == 1
    assert from_sft.params.checkpoint_at_epoch and from_sft.params.accelerate_full_state_at_epoch
    assert from_sft.params.num_epochs == 2


def test_direct_run_training_gets_what_the_backend_would_pass(tmp_path: Path):
    """The throughput baseline compares like with like: the hand-written TrainingArgs/TorchrunArgs of the
    direct call equal the backend's mapping of the sft() call, on a 1-GPU host without flash-attn."""
    from instructlab.training import TorchrunArgs, TrainingArgs
    from training_hub.backends.instructlab import HostResources, build_instructlab_args, training_args_field_names
    from training_hub.params import parse_train_kwargs

    params = _params(tmp_path)
    kwargs = driver.sft_kwargs(params, rdzv_id="rid-1", rdzv_endpoint="127.0.0.1:40002")
    request = parse_train_kwargs(kwargs, training_args_field_names())
    torch_args, train_args = build_instructlab_args(
        request, HostResources(gpu_count=1, cpu_count=16, flash_attn_installed=False))
    assert train_args.model_dump() == TrainingArgs(**driver.direct_training_args(params)).model_dump()
    assert torch_args.model_dump() == TorchrunArgs(nproc_per_node=1, nnodes=1, node_rank=0, rdzv_id="rid-1",
                                                   rdzv_endpoint="127.0.0.1:40002").model_dump()


# ------------------------------------------------------------ metrics, resume, throughput


def test_loss_trend_compares_window_means(tmp_path: Path):
    path = _write_metrics(tmp_path / "m.jsonl", [_hparams(), _dataset_record(), *_two_epoch_run(7.0, 3.0)])
    (run,) = driver.split_runs(driver.read_jsonl(path))
    trend = driver.loss_trend(run)
    assert trend["fell"] is True
    assert trend["loss_first"] == 7.0 and trend["loss_last"] == 3.0
    assert trend["window"] == 2 and trend["loss_first_mean"] > trend["loss_last_mean"]
    assert driver.loss_trend(_two_epoch_run(3.0, 3.5))["fell"] is False
    assert driver.loss_trend(_two_epoch_run()[:1]) == {"n_steps": 1, "fell": False, "reason": "fewer than 2 step records"}


def test_a_torn_last_line_and_non_step_records_are_ignored(tmp_path: Path):
    path = _write_metrics(tmp_path / "m.jsonl", [_hparams(), _dataset_record(), *_two_epoch_run()],
                          torn_tail='{"epoch": 1, "step": 9, "avg_lo')
    records = driver.read_jsonl(path)
    assert len(records) == 10
    assert [len(run) for run in driver.split_runs(records)] == [8]
    assert driver.read_jsonl(tmp_path / "missing.jsonl") == []


def test_resume_detected_from_metrics_of_a_killed_and_restarted_run(tmp_path: Path):
    killed = [_hparams(), _dataset_record(), *_two_epoch_run(epochs=(0,)), _step(1, 5, 4.0), _step(1, 6, 3.9)]
    # a restart from full_state/epoch_0 starts at epoch 1 with the step counter back at 1
    restarted = [_hparams(), _dataset_record(), *_two_epoch_run(4.0, 3.0, epochs=(1,))]
    path = _write_metrics(tmp_path / "m.jsonl", killed + restarted)
    records = driver.read_jsonl(path)
    assert [len(run) for run in driver.split_runs(records)] == [6, 4]
    assert driver.resumed_at_epoch(records) == 2
    fresh = [_hparams(), *_two_epoch_run()]
    assert driver.resumed_at_epoch(fresh) == 1
    assert driver.resumed_at_epoch([_hparams(), _dataset_record()]) is None


def test_runs_split_where_steps_restart_even_without_hyperparameter_records():
    records = [*_two_epoch_run(epochs=(0,)), *_two_epoch_run(epochs=(1,))]
    assert [len(run) for run in driver.split_runs(records)] == [4, 4]
    assert driver.resumed_at_epoch(records) == 2


def test_throughput_counts_tokens_per_wall_second_and_per_training_second():
    steps = [_step(0, i + 1, 5.0, tokens=1000, batch=16, at=i * 0.5) for i in range(5)]
    figures = driver.throughput(steps, wall_s=10.0)
    assert figures["tokens"] == 5000 and figures["samples"] == 80 and figures["steps"] == 5
    assert figures["tokens_per_s_wall"] == pytest.approx(500.0)
    assert figures["train_span_s"] == pytest.approx(2.0)
    assert figures["tokens_per_s_train"] == pytest.approx(4000 / 2.0)  # the first step is not in the span
    ratios = driver.throughput_ratio(figures, {"tokens_per_s_wall": 1000.0, "tokens_per_s_train": 2000.0})
    assert ratios == {"ratio_wall": pytest.approx(0.5), "ratio_train": pytest.approx(1.0)}
    assert driver.throughput_ratio(figures, {}) == {}
    assert "tokens_per_s_wall" not in driver.throughput(steps, wall_s=None)


def test_only_completely_saved_full_states_count(tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    assert driver.saved_full_states(ckpt) == []
    _full_state(ckpt, 0)
    _full_state(ckpt, 1, metadata="absent")  # accelerate still writing: a restart could not load it
    _full_state(ckpt, 2, metadata="torn")  # torch.save half way
    _full_state(ckpt, 3, metadata="new")  # not a zip, just written: wait for it to settle
    _full_state(ckpt, 4, metadata="old")
    assert driver.saved_full_states(ckpt) == [0, 4]


def test_checkpoints_are_ordered_by_samples_not_by_name(tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    for name in ("samples_1000", "samples_200", "samples_30"):
        _checkpoint(ckpt, name)
    (ckpt / "hf_format" / "samples_5").mkdir()  # no config.json: not a checkpoint
    assert [p.name for p in driver.hf_checkpoints(ckpt)] == ["samples_30", "samples_200", "samples_1000"]


def test_summary_check_names_each_problem(tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    _checkpoint(ckpt, "samples_992")
    newest = _checkpoint(ckpt, "samples_1984")
    good = {"outcome": "succeeded", "message": "", "final_checkpoint": str(newest), "epoch": 1, "step": 128, "loss": 2.5}
    assert driver.check_summary(good, ckpt_dir=ckpt, num_epochs=2) == []
    problems = driver.check_summary({**good, "outcome": "failed", "message": "boom",
                                     "final_checkpoint": str(ckpt / "hf_format" / "samples_992"), "loss": None},
                                    ckpt_dir=ckpt, num_epochs=2)
    assert len(problems) == 3
    assert "outcome is 'failed'" in problems[0] and "not the newest" in problems[1] and problems[2] == "loss missing"
    assert driver.check_summary(None, ckpt_dir=ckpt, num_epochs=2) == ["no termination summary was written"]
    assert driver.read_summary(tmp_path / "absent") is None


def test_result_problems_check_the_training_result_against_disk(tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    older, newest = _checkpoint(ckpt, "samples_992"), _checkpoint(ckpt, "samples_1984")
    good = {"final_checkpoint": str(newest), "checkpoints": [str(older), str(newest)], "last_metrics": {"avg_loss": 2.0}}
    assert driver.result_problems(good, ckpt) == []
    assert driver.result_problems({**good, "final_checkpoint": None}, ckpt)[0] == "the result names no final checkpoint"
    assert len(driver.result_problems({**good, "final_checkpoint": str(older), "last_metrics": None}, ckpt)) == 3


def test_progress_and_preflight_lines_are_found_in_mixed_output():
    output = "\n".join([
        "Epoch 0: 100%|####| 64/64",
        '{"event": "progress", "epoch": 0, "step": 1, "loss": 6.9, "samples_seen": 16, "lr": 0.001}',
        '{"not": "an event"}',
        '{"event": "progress", "epoch": 1, "step": 128, "loss": 2.1, "samples_seen": 2048, "lr": 0.001}',
        '{"event": "preflight", "ok": true, "backend": "nccl", "busbw_gbps": 0.0, "algbw_gbps": 512.0}',
        '{"event": "progress", broken',
    ])
    assert [e["step"] for e in driver.progress_events(output)] == [1, 128]
    assert driver.preflight_events(output) == [{"event": "preflight", "ok": True, "backend": "nccl",
                                                "busbw_gbps": 0.0, "algbw_gbps": 512.0}]


# ------------------------------------------------------------------------- report and plan


def test_report_collects_statuses_and_the_figures_to_quote():
    passed = lambda **fields: driver.step_record("passed", 1.0, 60, fields)  # noqa: E731
    results = {
        "environment": passed(device_name="NVIDIA H200", cuda_available=True),
        "build": passed(num_parameters=4_710_144),
        "sft": passed(loss={"loss_first": 6.9, "loss_last": 2.4}, throughput={"tokens_per_s_wall": 900.0}),
        "entrypoint": driver.step_record("failed", 3.0, 150, {"error": "exit code 1"}),
        "preflight": passed(preflight={"busbw_gbps": 0.0, "algbw_gbps": 400.0}),
        "resume": passed(resumed_at_epoch=2),
        "direct": passed(throughput={"tokens_per_s_wall": 1000.0}, ratio={"ratio_wall": 0.9, "ratio_train": 0.99}),
    }
    report = driver.build_report(results, total_s=300.04)
    assert report["ok"] is False
    assert report["statuses"]["entrypoint"] == "failed"
    assert report["figures"] == {
        "device": "NVIDIA H200", "parameters": 4_710_144, "loss_first": 6.9, "loss_last": 2.4,
        "resumed_at_epoch": 2, "tokens_per_s_sft": 900.0, "tokens_per_s_direct": 1000.0, "ratio_wall": 0.9,
        "ratio_train": 0.99, "preflight_busbw_gbps": 0.0, "preflight_algbw_gbps": 400.0}
    assert report["total_s"] == 300.0
    results["entrypoint"] = passed()
    assert driver.build_report(results, total_s=1.0)["ok"] is True
    assert driver.build_report({}, total_s=0.0)["statuses"]["sft"] == "not run"
    json.dumps(report)


def test_printed_report_drops_tails_and_shortens_errors_but_keeps_figures():
    failed = driver.step_record("failed", 5.0, 150, {
        "error": "x" * 5000, "output_tail": "y" * 3000, "traceback": "z" * 4000,
        "summary": {"outcome": "failed", "message": "m" * 4000}, "exit_code": 1})
    report = driver.build_report({"entrypoint": failed, "build": driver.step_record("passed", 1.0, 120, {"num_parameters": 5})},
                                 total_s=6.0)
    compact = driver.compact_report(report)
    entry = compact["steps"]["entrypoint"]
    assert "output_tail" not in entry and "traceback" not in entry
    assert entry["error"] == "x" * 400 + " [...]" and len(entry["summary"]["message"]) == 400
    assert entry["exit_code"] == 1 and entry["status"] == "failed"
    assert compact["figures"] == report["figures"] and compact["statuses"] == report["statuses"]
    assert report["steps"]["entrypoint"]["output_tail"] == "y" * 3000  # the full report is untouched
    assert len(json.dumps(compact)) < 4000


def test_step_record_keeps_status_fields_over_details():
    record = driver.step_record("failed", 2.26, 90, {"status": "passed", "seconds": 99, "error": "x"})
    assert record == {"status": "failed", "ok": False, "seconds": 2.3, "budget_s": 90, "error": "x"}


def test_steps_are_skipped_for_missing_needs_missing_cuda_or_time():
    ok = {"ok": True}
    assert driver.skip_reason("sft", {"build": {"ok": False}}, limit_s=100) == "needs step 'build', which did not pass"
    assert driver.skip_reason("sft", {"build": ok, "environment": {"cuda_available": False}}, limit_s=100) == "no CUDA device"
    assert driver.skip_reason("build", {"environment": {"cuda_available": False}}, limit_s=100) is None
    assert driver.skip_reason("preflight", {}, limit_s=5).startswith("out of time")
    assert driver.skip_reason("direct", {"build": ok, "environment": {"cuda_available": True}}, limit_s=100) is None
    now = 1000.0
    assert driver.plan_limit("sft", now=now, deadline=now + 1000) == driver.STEP_BUDGETS_S["sft"]
    assert driver.plan_limit("sft", now=now, deadline=now + 50) == 50 - driver.REPORT_RESERVE_S
    assert driver.plan_limit("sft", now=now, deadline=now - 1) == 0.0


def test_a_crashing_step_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    layout = driver.WorkLayout(tmp_path)
    layout.settings.write_text(json.dumps(dataclasses.asdict(SETTINGS)))

    def crash(*_args):
        raise KeyError("boom")

    monkeypatch.setitem(driver.STEPS, "direct", crash)
    assert driver.run_step_here("direct", layout, limit_s=10) == 1
    record = json.loads(layout.step_result("direct").read_text())
    assert record["status"] == "failed" and record["error"] == "KeyError: 'boom'" and "crash" in record["traceback"]


# ------------------------------------------------------------------------- processes


def test_descendants_walks_the_parent_table():
    table = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert driver.descendants(10, table) == [11, 12, 13]
    assert driver.descendants(13, table) == []


@pytest.mark.timeout(60)
def test_kill_tree_ends_grandchildren_in_their_own_session(tmp_path: Path):
    """torchrun's workers may sit in a session of their own: killing the tree must still reach them."""
    pid_file = tmp_path / "pids"
    script = (f"setsid sh -c 'echo $$ >> {pid_file}; exec sleep 300' & "
              f"sh -c 'echo $$ >> {pid_file}; exec sleep 300' & wait")
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 20
    while (not pid_file.exists() or len(pid_file.read_text().split()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert all(driver._alive(pid) for pid in pids)
    driver.kill_tree(process)
    assert process.returncode is not None
    assert not any(driver._alive(pid) for pid in pids)


@pytest.mark.timeout(60)
def test_run_logged_stops_on_condition_or_deadline_and_returns_only_its_own_output(tmp_path: Path):
    log = tmp_path / "pod.log"
    flag = tmp_path / "saved"
    first = driver.run_logged(["sh", "-c", f"echo first; sleep 0.3; touch {flag}; sleep 300"], log=log,
                              timeout_s=30, until=flag.exists, poll_s=0.05)
    assert first.returncode is None and first.timed_out is False and first.seconds < 20
    assert first.output.strip() == "first"
    second = driver.run_logged(["sh", "-c", "echo second; sleep 300"], log=log, timeout_s=0.5)
    assert second.returncode is None and second.timed_out is True
    assert second.output.strip() == "second"
    third = driver.run_logged(["sh", "-c", "echo third; exit 3"], log=log, timeout_s=30)
    assert (third.returncode, third.timed_out, third.output.strip()) == (3, False, "third")
    assert log.read_text().count("$ sh -c") == 3
