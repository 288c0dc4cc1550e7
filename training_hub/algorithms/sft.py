"""Supervised fine-tuning: `SFTAlgorithm` and the `sft()` shortcut.

The algorithm validates every parameter (all problems at once, unknown names with a "did you
mean" hint, local paths checked) before its backend imports anything heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from training_hub.algorithms.base import Algorithm, Backend
from training_hub.algorithms.registry import AlgorithmRegistry
from training_hub.params import (
    DEFAULT_BACKEND,
    ParameterError,
    TrainRequest,
    local_path_problems,
    parse_train_kwargs,
)

if TYPE_CHECKING:
    from training_hub.backends.prepare import PreparedData


class SFTAlgorithm(Algorithm):
    """Supervised fine-tuning on a backend (default: instructlab-training)."""

    def __init__(self, backend: Backend | None = None, **kwargs: Any):
        if backend is None:
            backend = AlgorithmRegistry.get_backend("sft", DEFAULT_BACKEND)()
        if not isinstance(backend, Backend):
            raise TypeError(
                f"backend must be a Backend instance (e.g. InstructLabTrainingSFTBackend()), got {backend!r}; "
                "to choose a backend by name use create_algorithm('sft', name) or sft(backend=name)"
            )
        super().__init__(backend, **kwargs)

    def train(
        self,
        model_path: str | None = None,
        data_path: str | None = None,
        ckpt_output_dir: str | None = None,
        num_epochs: int | None = None,
        effective_batch_size: int | None = None,
        learning_rate: float | None = None,
        max_seq_len: int | None = None,
        max_tokens_per_gpu: int | None = None,
        data_output_dir: str | None = None,
        save_samples: int | None = None,
        warmup_steps: int | None = None,
        accelerate_full_state_at_epoch: bool | None = None,
        checkpoint_at_epoch: bool | None = None,
        is_pretraining: bool | None = None,
        block_size: int | None = None,
        document_column_name: str | None = None,
        nproc_per_node: int | None = None,
        nnodes: int | None = None,
        node_rank: int | None = None,
        rdzv_id: str | int | None = None,
        rdzv_endpoint: str | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run supervised fine-tuning; see `SFTParams` / `DistributedParams` for every parameter.

        `**kwargs` go to the backend by name (for instructlab-training: `TrainingArgs` fields such as
        `adamw_weight_decay`, `random_seed`, `disable_flash_attn`); unknown names are rejected.
        Returns the backend's result (`TrainingResult` for instructlab-training). Raises `ValueError`
        (`ParameterError`, listing every problem) for bad parameters, `RuntimeError` when training fails.
        """
        call = {name: value for name, value in locals().items() if name not in ("self", "kwargs", "backend")}
        call.update(kwargs)
        runner = self.backend if backend is None else _backend_named(backend, self.backend)
        request = self.validate(call, runner)
        return runner.execute_training(request_to_backend_params(request))

    def validate(self, kwargs: Mapping[str, Any], backend: Backend | None = None) -> TrainRequest:
        """Check a call's parameters and local paths; raise one `ParameterError` listing every problem."""
        backend = backend or self.backend
        problems = local_path_problems(kwargs)
        try:
            request = parse_train_kwargs(kwargs, backend.extra_arg_names)
        except ParameterError as exc:
            raise ParameterError(exc.problems + problems) from None
        if problems:
            raise ParameterError(problems)
        return request

    def get_required_params(self) -> dict[str, type]:
        return {
            "model_path": str,
            "data_path": str,
            "ckpt_output_dir": str,
            "num_epochs": int,
            "effective_batch_size": int,
            "learning_rate": float,
            "max_seq_len": int,
            "max_batch_len": int,  # Note: User-facing API uses max_tokens_per_gpu
        }

    def get_optional_params(self) -> dict[str, type]:
        return {
            "backend": str,
            "data_output_dir": str,
            "save_samples": int,
            "warmup_steps": int,
            "is_pretraining": bool,
            "block_size": int,
            "document_column_name": str,
            "checkpoint_at_epoch": bool,
            "accelerate_full_state_at_epoch": bool,
            "nproc_per_node": int,
            "nnodes": int,
            "node_rank": int,
            "rdzv_id": int,
            "rdzv_endpoint": str,
            # Plus additional backend-specific parameters via **kwargs
        }


def request_to_backend_params(request: TrainRequest) -> dict[str, Any]:
    """The flat snake_case mapping a `Backend` receives: set SFT fields, distributed settings, extras."""
    params = request.params.model_dump(exclude={"extra_args"}, exclude_none=True)
    params.update(request.distributed.model_dump(exclude_none=True))
    params.update(request.params.extra_args)
    return params


def _backend_named(name: str, current: Backend) -> Backend:
    backend_class = AlgorithmRegistry.get_backend("sft", name)
    return current if type(current) is backend_class else backend_class()


AlgorithmRegistry.register_algorithm("sft", SFTAlgorithm)


def _register_backends() -> None:
    from training_hub.backends.instructlab import InstructLabTrainingSFTBackend

    AlgorithmRegistry.register_backend("sft", DEFAULT_BACKEND, InstructLabTrainingSFTBackend)


_register_backends()


def sft(
    model_path: str | None = None,
    data_path: str | None = None,
    ckpt_output_dir: str | None = None,
    backend: str = DEFAULT_BACKEND,
    **kwargs: Any,
) -> Any:
    """Supervised fine-tuning in one call: `SFTAlgorithm` on the named backend, same parameters as `train()`."""
    from training_hub.algorithms.registry import create_algorithm

    algorithm = create_algorithm("sft", backend)
    return algorithm.train(model_path=model_path, data_path=data_path, ckpt_output_dir=ckpt_output_dir, **kwargs)


def prepare_data(
    model_path: str | None = None,
    data_path: str | None = None,
    ckpt_output_dir: str | None = None,
    *,
    force: bool = False,
    **kwargs: Any,
) -> "PreparedData":
    """Prepare `sft()`'s data once, on CPU, before training: the same parameters as `sft()`.

    Runs instructlab's data processing into `data_output_dir` (default `<ckpt_output_dir>/data`) atomically and
    writes a manifest of what it was made from; a later `sft()` with the same inputs reuses it instead of
    processing again. Does nothing (`reused=True`) when a matching manifest is there, unless `force`. Distributed
    settings, if given, are ignored. Raises `ParameterError` naming the file and line of bad data.
    """
    from training_hub.algorithms.registry import create_algorithm
    from training_hub.backends.prepare import prepare
    from training_hub.params import DISTRIBUTED_FIELDS

    algorithm = create_algorithm("sft", DEFAULT_BACKEND)
    call = {"model_path": model_path, "data_path": data_path, "ckpt_output_dir": ckpt_output_dir, **kwargs}
    call = {name: value for name, value in call.items() if name not in DISTRIBUTED_FIELDS}
    return prepare(algorithm.validate(call), force=force)
