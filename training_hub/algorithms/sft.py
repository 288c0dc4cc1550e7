"""Supervised fine-tuning: `SFTAlgorithm` and the `sft()` shortcut.

The algorithm validates every parameter (all problems at once, unknown names with a "did you
mean" hint, local paths and the data file checked) before its backend imports anything heavy.
The signatures of `sft()` and `train()` are generated from the parameter models
(`training_hub.algorithms.signature`); edit the models, then run
`python -m training_hub.algorithms.signature --write`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

from training_hub.algorithms.base import Algorithm, Backend
from training_hub.algorithms.registry import AlgorithmRegistry
from training_hub.params import (
    DEFAULT_BACKEND,
    ParameterError,
    TrainRequest,
    canonical_name,
    local_path_problems,
    parse_train_kwargs,
    suggest,
    _MODEL_FIELDS,
)

if TYPE_CHECKING:
    from training_hub.backends.prepare import PreparedData


class SFTAlgorithm(Algorithm):
    """Supervised fine-tuning on a backend (default: instructlab-training).

    Keyword arguments given here are defaults for every `train()` call of this instance (a call's
    own arguments win); their names are checked at once.
    """

    def __init__(self, backend: Backend | None = None, **kwargs: Any):
        if backend is None:
            backend = AlgorithmRegistry.get_backend("sft", DEFAULT_BACKEND)()
        if not isinstance(backend, Backend):
            raise TypeError(
                f"backend must be a Backend instance (e.g. InstructLabTrainingSFTBackend()), got {backend!r}; "
                "to choose a backend by name use create_algorithm('sft', name) or sft(backend=name)"
            )
        known = _MODEL_FIELDS | frozenset(backend.extra_arg_names())
        unknown = [name for name in kwargs if canonical_name(name, known) not in known]
        if unknown:
            raise ParameterError([
                f"{name}: unknown parameter" + (f"; did you mean {hint!r}?" if (hint := suggest(name, known)) else "")
                for name in unknown
            ])
        super().__init__(backend, **kwargs)

    # BEGIN GENERATED train
    def train(
        self,
        model_path: str | os.PathLike[str],
        data_path: str | os.PathLike[str],
        ckpt_output_dir: str | os.PathLike[str],
        *,
        num_epochs: int,
        effective_batch_size: int,
        learning_rate: float,
        max_seq_len: int,
        max_tokens_per_gpu: int | None = None,
        warmup_steps: int | None = None,
        data_output_dir: str | os.PathLike[str] | None = None,
        is_pretraining: bool = False,
        block_size: int | None = None,
        document_column_name: str = 'document',
        checkpoint_at_epoch: bool | None = None,
        accelerate_full_state_at_epoch: bool | None = None,
        save_samples: int | None = None,
        nproc_per_node: int | None = None,
        nnodes: int | None = None,
        node_rank: int | None = None,
        rdzv_id: str | int | None = None,
        rdzv_endpoint: str | None = None,
        extra_args: dict[str, Any] | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run supervised fine-tuning with this algorithm's backend (or the one named by `backend`).

        Args:
            model_path: Required. Path to the model to fine-tune. Can be a local directory path or a
                HuggingFace model ID (e.g. "Qwen/Qwen2.5-7B-Instruct") (at most 4095 characters, 255 per
                part).
            data_path: Required. Path to training data in JSONL format. Each line should contain a JSON
                object with a `messages` field (or the document column in pretraining mode) (at most 4095
                characters, 255 per part).
            ckpt_output_dir: Required. Directory where model checkpoints will be saved during and after
                training. Reusing it resumes from the last full state saved there (at most 4095 characters,
                255 per part).
            num_epochs: Required. Number of training epochs to run. Typical values: 1-10.
            effective_batch_size: Required. Effective batch size for the entire minibatch: the total number
                of samples processed before taking an optimizer step.
            learning_rate: Required. Learning rate for the optimizer.
            max_seq_len: Required. Maximum sequence length in tokens.
            max_tokens_per_gpu: Maximum number of tokens that can be on a single GPU at once (passed to the
                backend as max_batch_len). Defaults to max_seq_len; must be >= max_seq_len.
            warmup_steps: Number of warmup steps for the learning rate scheduler. Backend default: 0.
            data_output_dir: Directory for data processing outputs. Defaults to <ckpt_output_dir>/data (at
                most 4095 characters, 255 per part).
            is_pretraining: When true, enables pretraining mode for training on raw documents.
            block_size: Required when is_pretraining is true. Number of tokens per training block (recommend
                starting with 2048).
            document_column_name: Column containing raw documents when is_pretraining is true.
            checkpoint_at_epoch: If true, saves a checkpoint at the end of each epoch. Backend default:
                true.
            accelerate_full_state_at_epoch: If true, saves the full training state (optimizer, scheduler,
                ...) at each epoch for automatic resumption. Backend default: true.
            save_samples: Frequency based checkpointing: checkpoint after every save_samples samples seen (0
                disables). Backend default: 0.
            nproc_per_node: Number of processes (GPUs) to use per node. If not specified, uses all visible
                GPUs. None: from the environment (TRAINING_HUB_*, then torchrun's PET_*).
            nnodes: Total number of nodes for multi-node training. None: from the environment
                (TRAINING_HUB_*, then torchrun's PET_*).
            node_rank: Rank of this node (0 to nnodes-1). Node 0 is the master. None: from the environment
                (TRAINING_HUB_*, then torchrun's PET_*).
            rdzv_id: Unique job ID for rendezvous; all nodes must use the same ID. Random when omitted
                (single node only). None: from the environment (TRAINING_HUB_*, then torchrun's PET_*).
            rdzv_endpoint: Endpoint of node rank 0 as "host:port". Required for multi-node. None: from the
                environment (TRAINING_HUB_*, then torchrun's PET_*).
            extra_args: Additional backend-specific parameters passed by name to
                instructlab.training.TrainingArgs (e.g. adamw_weight_decay, random_seed, disable_flash_attn,
                distributed_backend). Names and simple values are checked against TrainingArgs before
                training starts.
            backend: a registered backend name, instead of this algorithm's backend.
            **kwargs: the backend's own arguments by name (instructlab-training: TrainingArgs fields such as
                adamw_weight_decay, random_seed); camelCase spellings of the parameters above. Unknown names
                are rejected with a hint.

        Returns the backend's result (`TrainingResult` for instructlab-training). Raises `ParameterError`
        (a ValueError) listing every problem with the parameters, `DataError` (a ValueError) for bad data,
        `RuntimeError` (`TrainingFailedError` naming the cause) when training fails.
        """
        given = {
            "model_path": model_path,
            "data_path": data_path,
            "ckpt_output_dir": ckpt_output_dir,
            "num_epochs": num_epochs,
            "effective_batch_size": effective_batch_size,
            "learning_rate": learning_rate,
            "max_seq_len": max_seq_len,
            "max_tokens_per_gpu": max_tokens_per_gpu,
            "warmup_steps": warmup_steps,
            "data_output_dir": data_output_dir,
            "is_pretraining": is_pretraining,
            "block_size": block_size,
            "document_column_name": document_column_name,
            "checkpoint_at_epoch": checkpoint_at_epoch,
            "accelerate_full_state_at_epoch": accelerate_full_state_at_epoch,
            "save_samples": save_samples,
            "nproc_per_node": nproc_per_node,
            "nnodes": nnodes,
            "node_rank": node_rank,
            "rdzv_id": rdzv_id,
            "rdzv_endpoint": rdzv_endpoint,
            "extra_args": extra_args,
        }
        return self._train(given, backend, kwargs)
    # END GENERATED train

    def _train(self, given: Mapping[str, Any], backend: str | None, kwargs: Mapping[str, Any]) -> Any:
        call = {**self.config, **{name: value for name, value in given.items() if value is not None}, **kwargs}
        runner = self.backend if backend is None else _backend_named(backend, self.backend)
        request = self.validate(call, runner)
        return runner.execute_training(request_to_backend_params(request))

    def validate(self, kwargs: Mapping[str, Any], backend: Backend | None = None,
                 environ: Mapping[str, str] | None = None) -> TrainRequest:
        """Check a call: parameters, launcher environment, local paths, then the backend's own checks
        (instructlab-training: the data file, GPUs). One `ParameterError` (or `DataError`) lists every problem."""
        from training_hub.launch.env import distributed_from_environment

        backend = backend or self.backend
        from_env, _, env_problems = distributed_from_environment(os.environ if environ is None else environ)
        call = {**from_env, **{name: value for name, value in kwargs.items() if value is not None}}
        problems = env_problems + local_path_problems(call)
        try:
            request = parse_train_kwargs(call, backend.extra_arg_names())
        except ParameterError as exc:
            raise ParameterError(exc.problems + problems) from None
        if problems:
            raise ParameterError(problems)
        backend.check(request)
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


def _sft(given: Mapping[str, Any], backend: str, kwargs: Mapping[str, Any]) -> Any:
    from training_hub.algorithms.registry import create_algorithm

    return create_algorithm("sft", backend)._train(given, None, kwargs)  # type: ignore[attr-defined]


# BEGIN GENERATED sft
def sft(
    model_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    ckpt_output_dir: str | os.PathLike[str],
    *,
    num_epochs: int,
    effective_batch_size: int,
    learning_rate: float,
    max_seq_len: int,
    max_tokens_per_gpu: int | None = None,
    warmup_steps: int | None = None,
    data_output_dir: str | os.PathLike[str] | None = None,
    is_pretraining: bool = False,
    block_size: int | None = None,
    document_column_name: str = 'document',
    checkpoint_at_epoch: bool | None = None,
    accelerate_full_state_at_epoch: bool | None = None,
    save_samples: int | None = None,
    nproc_per_node: int | None = None,
    nnodes: int | None = None,
    node_rank: int | None = None,
    rdzv_id: str | int | None = None,
    rdzv_endpoint: str | None = None,
    extra_args: dict[str, Any] | None = None,
    backend: str = DEFAULT_BACKEND,
    **kwargs: Any,
) -> Any:
    """Supervised fine-tuning in one call: `SFTAlgorithm` on the backend named `backend`.

    Args:
        model_path: Required. Path to the model to fine-tune. Can be a local directory path or a
            HuggingFace model ID (e.g. "Qwen/Qwen2.5-7B-Instruct") (at most 4095 characters, 255 per
            part).
        data_path: Required. Path to training data in JSONL format. Each line should contain a JSON
            object with a `messages` field (or the document column in pretraining mode) (at most 4095
            characters, 255 per part).
        ckpt_output_dir: Required. Directory where model checkpoints will be saved during and after
            training. Reusing it resumes from the last full state saved there (at most 4095 characters,
            255 per part).
        num_epochs: Required. Number of training epochs to run. Typical values: 1-10.
        effective_batch_size: Required. Effective batch size for the entire minibatch: the total number
            of samples processed before taking an optimizer step.
        learning_rate: Required. Learning rate for the optimizer.
        max_seq_len: Required. Maximum sequence length in tokens.
        max_tokens_per_gpu: Maximum number of tokens that can be on a single GPU at once (passed to the
            backend as max_batch_len). Defaults to max_seq_len; must be >= max_seq_len.
        warmup_steps: Number of warmup steps for the learning rate scheduler. Backend default: 0.
        data_output_dir: Directory for data processing outputs. Defaults to <ckpt_output_dir>/data (at
            most 4095 characters, 255 per part).
        is_pretraining: When true, enables pretraining mode for training on raw documents.
        block_size: Required when is_pretraining is true. Number of tokens per training block (recommend
            starting with 2048).
        document_column_name: Column containing raw documents when is_pretraining is true.
        checkpoint_at_epoch: If true, saves a checkpoint at the end of each epoch. Backend default:
            true.
        accelerate_full_state_at_epoch: If true, saves the full training state (optimizer, scheduler,
            ...) at each epoch for automatic resumption. Backend default: true.
        save_samples: Frequency based checkpointing: checkpoint after every save_samples samples seen (0
            disables). Backend default: 0.
        nproc_per_node: Number of processes (GPUs) to use per node. If not specified, uses all visible
            GPUs. None: from the environment (TRAINING_HUB_*, then torchrun's PET_*).
        nnodes: Total number of nodes for multi-node training. None: from the environment
            (TRAINING_HUB_*, then torchrun's PET_*).
        node_rank: Rank of this node (0 to nnodes-1). Node 0 is the master. None: from the environment
            (TRAINING_HUB_*, then torchrun's PET_*).
        rdzv_id: Unique job ID for rendezvous; all nodes must use the same ID. Random when omitted
            (single node only). None: from the environment (TRAINING_HUB_*, then torchrun's PET_*).
        rdzv_endpoint: Endpoint of node rank 0 as "host:port". Required for multi-node. None: from the
            environment (TRAINING_HUB_*, then torchrun's PET_*).
        extra_args: Additional backend-specific parameters passed by name to
            instructlab.training.TrainingArgs (e.g. adamw_weight_decay, random_seed, disable_flash_attn,
            distributed_backend). Names and simple values are checked against TrainingArgs before
            training starts.
        backend: a registered backend name (default "instructlab-training").
        **kwargs: the backend's own arguments by name (instructlab-training: TrainingArgs fields such as
            adamw_weight_decay, random_seed); camelCase spellings of the parameters above. Unknown names
            are rejected with a hint.

    Returns the backend's result (`TrainingResult` for instructlab-training). Raises `ParameterError`
    (a ValueError) listing every problem with the parameters, `DataError` (a ValueError) for bad data,
    `RuntimeError` (`TrainingFailedError` naming the cause) when training fails.
    """
    given = {
        "model_path": model_path,
        "data_path": data_path,
        "ckpt_output_dir": ckpt_output_dir,
        "num_epochs": num_epochs,
        "effective_batch_size": effective_batch_size,
        "learning_rate": learning_rate,
        "max_seq_len": max_seq_len,
        "max_tokens_per_gpu": max_tokens_per_gpu,
        "warmup_steps": warmup_steps,
        "data_output_dir": data_output_dir,
        "is_pretraining": is_pretraining,
        "block_size": block_size,
        "document_column_name": document_column_name,
        "checkpoint_at_epoch": checkpoint_at_epoch,
        "accelerate_full_state_at_epoch": accelerate_full_state_at_epoch,
        "save_samples": save_samples,
        "nproc_per_node": nproc_per_node,
        "nnodes": nnodes,
        "node_rank": node_rank,
        "rdzv_id": rdzv_id,
        "rdzv_endpoint": rdzv_endpoint,
        "extra_args": extra_args,
    }
    return _sft(given, backend, kwargs)
# END GENERATED sft


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
    return prepare(algorithm.validate(call, environ={}), force=force)  # no gang: the environment's settings do not apply
