"""The public API as the reference page names it, the registry, and the light import."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import pytest

import training_hub
from training_hub import (
    Algorithm,
    AlgorithmRegistry,
    Backend,
    InstructLabTrainingSFTBackend,
    SFTAlgorithm,
    create_algorithm,
    sft,
)

# The page's train() parameters (required, then every optional one it lists).
PAGE_TRAIN_PARAMETERS = [
    "model_path", "data_path", "ckpt_output_dir", "num_epochs", "effective_batch_size", "learning_rate",
    "max_seq_len", "max_tokens_per_gpu", "backend", "warmup_steps", "data_output_dir", "is_pretraining",
    "block_size", "document_column_name", "checkpoint_at_epoch", "accelerate_full_state_at_epoch", "save_samples",
    "nproc_per_node", "nnodes", "node_rank", "rdzv_id", "rdzv_endpoint",
]


def test_reference_names_importable():
    for name in ("sft", "SFTAlgorithm", "Algorithm", "Backend", "InstructLabTrainingSFTBackend",
                 "AlgorithmRegistry", "create_algorithm"):
        assert name in training_hub.__all__ and name in dir(training_hub)
        assert getattr(training_hub, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        training_hub.nope  # noqa: B018


def test_class_hierarchy():
    assert issubclass(SFTAlgorithm, Algorithm) and issubclass(InstructLabTrainingSFTBackend, Backend)
    with pytest.raises(TypeError):
        Algorithm(backend=InstructLabTrainingSFTBackend())  # abstract
    with pytest.raises(TypeError):
        Backend()  # abstract


def test_train_and_sft_take_every_parameter_of_the_page():
    train = inspect.signature(SFTAlgorithm.train).parameters
    assert [p for p in PAGE_TRAIN_PARAMETERS if p not in train] == []
    assert train["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert list(train)[1:4] == ["model_path", "data_path", "ckpt_output_dir"]
    fn = inspect.signature(sft).parameters
    assert [p for p in PAGE_TRAIN_PARAMETERS if p not in fn] == []
    assert list(fn)[:3] == ["model_path", "data_path", "ckpt_output_dir"]
    assert fn["backend"].default == "instructlab-training"


def test_required_params_as_the_page_shows():
    assert SFTAlgorithm(InstructLabTrainingSFTBackend()).get_required_params() == {
        "model_path": str, "data_path": str, "ckpt_output_dir": str, "num_epochs": int,
        "effective_batch_size": int, "learning_rate": float, "max_seq_len": int, "max_batch_len": int,
    }


def test_optional_params_as_the_page_shows():
    assert SFTAlgorithm(InstructLabTrainingSFTBackend()).get_optional_params() == {
        "backend": str, "data_output_dir": str, "save_samples": int, "warmup_steps": int, "is_pretraining": bool,
        "block_size": int, "document_column_name": str, "checkpoint_at_epoch": bool,
        "accelerate_full_state_at_epoch": bool, "nproc_per_node": int, "nnodes": int, "node_rank": int,
        "rdzv_id": int, "rdzv_endpoint": str,
    }


def test_create_algorithm_by_name():
    algorithm = create_algorithm("sft", "instructlab-training")
    assert type(algorithm) is SFTAlgorithm and type(algorithm.backend) is InstructLabTrainingSFTBackend
    assert type(create_algorithm("sft").backend) is InstructLabTrainingSFTBackend  # default backend
    assert AlgorithmRegistry.list_algorithms() == ["sft"]
    assert AlgorithmRegistry.list_backends("sft") == ["instructlab-training"]
    assert AlgorithmRegistry.get_algorithm("sft") is SFTAlgorithm


def test_unknown_algorithm_names_the_known_ones():
    with pytest.raises(ValueError) as caught:
        create_algorithm("stf")
    assert str(caught.value) == "unknown algorithm 'stf'; known: 'sft' (did you mean 'sft'?)"
    with pytest.raises(ValueError, match=r"^unknown algorithm 'dpo'; known: 'sft'$"):
        AlgorithmRegistry.list_backends("dpo")


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError) as caught:
        create_algorithm("sft", "instructlab")
    assert str(caught.value) == (
        "unknown backend for algorithm 'sft': 'instructlab'; known: 'instructlab-training' "
        "(did you mean 'instructlab-training'?)"
    )


def test_sft_algorithm_needs_a_backend_instance():
    assert type(SFTAlgorithm().backend) is InstructLabTrainingSFTBackend
    with pytest.raises(TypeError, match="backend must be a Backend instance"):
        SFTAlgorithm(backend="instructlab-training")


class RecordingBackend(Backend):
    """A user-written backend: records what the algorithm hands over."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def execute_training(self, algorithm_params: Mapping[str, Any]) -> Any:
        self.calls.append(dict(algorithm_params))
        return "trained"

    def extra_arg_names(self):
        return {"my_option"}


@pytest.fixture
def recording_backend_registered():
    AlgorithmRegistry.register_backend("sft", "recording", RecordingBackend)
    yield
    AlgorithmRegistry._backends["sft"].pop("recording")


def test_algorithm_hands_the_backend_validated_flat_params(tmp_path, recording_backend_registered):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    algorithm = create_algorithm("sft", "recording")
    result = algorithm.train(
        model_path="org/model", data_path=str(data), ckpt_output_dir=str(tmp_path / "ckpt"), num_epochs=3,
        effective_batch_size=16, learning_rate=2e-5, max_seq_len=1024, max_tokens_per_gpu=4096, nproc_per_node=2,
        my_option="x",
    )
    assert result == "trained"
    assert algorithm.backend.calls == [{
        "model_path": "org/model", "data_path": str(data), "ckpt_output_dir": str(tmp_path / "ckpt"),
        "num_epochs": 3, "effective_batch_size": 16, "learning_rate": 2e-5, "max_seq_len": 1024,
        "max_tokens_per_gpu": 4096, "is_pretraining": False, "document_column_name": "document",
        "nproc_per_node": 2, "nnodes": 1, "node_rank": 0, "my_option": "x",
    }]
    with pytest.raises(ValueError, match="my_opton: unknown parameter; did you mean 'my_option'"):
        algorithm.train(model_path="org/model", data_path=str(data), ckpt_output_dir=str(tmp_path), num_epochs=1,
                        effective_batch_size=1, learning_rate=1.0, max_seq_len=8, my_opton=1)
    assert len(algorithm.backend.calls) == 1  # nothing reached the backend


def test_train_backend_argument_selects_a_registered_backend(tmp_path, recording_backend_registered):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    common = dict(model_path="org/model", data_path=str(data), ckpt_output_dir=str(tmp_path / "c"), num_epochs=1,
                  effective_batch_size=1, learning_rate=1.0, max_seq_len=8)
    assert SFTAlgorithm(InstructLabTrainingSFTBackend()).train(backend="recording", **common) == "trained"
    assert sft(backend="recording", **common) == "trained"
    with pytest.raises(ValueError, match="unknown backend for algorithm 'sft': 'nope'"):
        sft(backend="nope", **common)


def test_registering_rejects_non_classes():
    with pytest.raises(TypeError, match="is not an Algorithm subclass"):
        AlgorithmRegistry.register_algorithm("x", object)
    with pytest.raises(TypeError, match="is not a Backend subclass"):
        AlgorithmRegistry.register_backend("sft", "x", object)
    with pytest.raises(ValueError, match="unknown algorithm 'nope'"):
        AlgorithmRegistry.register_backend("nope", "x", RecordingBackend)


HEAVY = ("torch", "transformers", "instructlab", "datasets", "tokenizers")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "statement",
    [
        "import training_hub",
        "import training_hub; training_hub.sft; training_hub.SFTAlgorithm; training_hub.InstructLabTrainingSFTBackend",
        "import training_hub.testing; import training_hub.backends.metrics",
    ],
)
def test_import_stays_light(statement):
    code = f"{statement}\nimport sys, json\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.timeout(120)
def test_plain_import_does_not_load_pydantic_either():
    code = "import training_hub, sys; print('pydantic' in sys.modules, 'training_hub.params' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert out.stdout.split() == ["False", "False"], out.stderr
