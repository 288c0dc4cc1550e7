"""training_hub: supervised fine-tuning of LLMs on instructlab-training.

Public API (the names of the reference, https://github.com/Red-Hat-AI-Innovation-Team/training_hub):

    from training_hub import sft, SFTAlgorithm, Algorithm, Backend, InstructLabTrainingSFTBackend
    from training_hub import AlgorithmRegistry, create_algorithm

    result = sft(model_path=..., data_path="train.jsonl", ckpt_output_dir="ckpt", num_epochs=3,
                 effective_batch_size=8, learning_rate=1e-5, max_seq_len=2048, max_tokens_per_gpu=45000)
    result.final_checkpoint, result.last_metrics          # a TrainingResult

- `sft(**params)` / `SFTAlgorithm(backend).train(**params)`: the parameters are those of
  `training_hub.params.SFTParams` (what to train) and `DistributedParams` (where this process sits
  in the gang); other keyword arguments go to instructlab's `TrainingArgs` by name.
- Bad parameters raise `ParameterError` (a `ValueError`) listing every problem, a bad data file
  `DataError` (a `ValueError`) naming file and line; a failed run raises
  `RuntimeError` (`TrainingFailedError` with `.exit_status` and `.log_path` when torchrun failed,
  `TrainingInterruptedError` when it stopped after an on-demand checkpoint and can resume).
- `prepare_data(**params)`: instructlab's data processing once, into `data_output_dir`, with a manifest;
  `sft()` then reuses it (see docs/library.md, "Prepared data").
- `create_algorithm("sft", "instructlab-training")`, `AlgorithmRegistry.list_algorithms()`,
  `AlgorithmRegistry.list_backends("sft")`.
- Also exported: `TrainingResult`, `TrainingFailedError`, `TrainingInterruptedError`,
  `ParameterError`, `DataError`, `SFTParams`, `DistributedParams`.

Importing this package is cheap: every name loads on first use (PEP 562), and torch, transformers
and instructlab load only when training starts. Where this API differs from the reference page, see
docs/library.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "sft": "training_hub.algorithms.sft",
    "prepare_data": "training_hub.algorithms.sft",
    "SFTAlgorithm": "training_hub.algorithms.sft",
    "Algorithm": "training_hub.algorithms.base",
    "Backend": "training_hub.algorithms.base",
    "AlgorithmRegistry": "training_hub.algorithms.registry",
    "create_algorithm": "training_hub.algorithms.registry",
    "InstructLabTrainingSFTBackend": "training_hub.backends.instructlab",
    "TrainingResult": "training_hub.backends.instructlab",
    "TrainingFailedError": "training_hub.backends.instructlab",
    "TrainingInterruptedError": "training_hub.backends.instructlab",
    "ParameterError": "training_hub.params",
    "DataError": "training_hub.data",
    "SFTParams": "training_hub.params",
    "DistributedParams": "training_hub.params",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from training_hub.algorithms.base import Algorithm, Backend
    from training_hub.algorithms.registry import AlgorithmRegistry, create_algorithm
    from training_hub.algorithms.sft import SFTAlgorithm, prepare_data, sft
    from training_hub.backends.instructlab import (
        InstructLabTrainingSFTBackend,
        TrainingFailedError,
        TrainingInterruptedError,
        TrainingResult,
    )
    from training_hub.data import DataError
    from training_hub.params import DistributedParams, ParameterError, SFTParams


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'training_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
