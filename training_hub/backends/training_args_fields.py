"""The fields of instructlab-training's `TrainingArgs`, known without importing instructlab.

`TRAINING_ARGS_FIELDS` maps each field name to its type as Python source (simple types only; nested
models and callables are `Any` and are checked by `TrainingArgs` itself when training starts). The
library checks unknown keywords and simple values against it in well under a second; importing
instructlab to learn the same takes seconds.

The table between the markers is generated from the installed instructlab-training:
`python -m training_hub.backends.training_args_fields --write` (a unit test checks it is current).
"""

from __future__ import annotations

import sys
from pathlib import Path

# BEGIN GENERATED
INSTRUCTLAB_TRAINING_VERSION = "0.16.2"
TRAINING_ARGS_FIELDS: dict[str, str] = {
    "model_path": "str",
    "chat_tmpl_path": "str | None",
    "use_legacy_tmpl": "bool",
    "data_path": "str",
    "ckpt_output_dir": "str",
    "data_output_dir": "str",
    "max_seq_len": "int",
    "max_batch_len": "int",
    "num_epochs": "int",
    "effective_batch_size": "int",
    "save_samples": "int",
    "learning_rate": "float",
    "adamw_weight_decay": "float",
    "adamw_betas": "tuple[float, float]",
    "adamw_eps": "float",
    "warmup_steps": "int",
    "random_seed": "int",
    "use_dolomite": "bool",
    "is_padding_free": "bool",
    "checkpoint_at_epoch": "bool",
    "accelerate_full_state_at_epoch": "bool",
    "mock_data": "bool | None",
    "mock_data_len": "int",
    "deepspeed_options": "Any",
    "fsdp_options": "Any",
    "distributed_backend": "Literal['fsdp', 'deepspeed']",
    "disable_flash_attn": "bool | None",
    "lora": "Any",
    "process_data": "bool | None",
    "keep_last_checkpoint_only": "bool | None",
    "pretraining_config": "Any",
    "data_process_num_cpu_procs": "int",
    "use_liger": "bool",
    "trust_remote_code": "bool",
    "log_level": "Literal['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL']",
    "mlflow_tracking_uri": "str | None",
    "mlflow_experiment_name": "str | None",
    "mlflow_run_name": "str | None",
    "wandb_project": "str | None",
    "wandb_entity": "str | None",
    "wandb_run_name": "str | None",
    "tensorboard_log_dir": "str | None",
    "validation_split": "float",
    "validation_frequency": "int | None",
    "on_demand_checkpointing": "bool",
    "callbacks": "Any",
}
# END GENERATED


def annotation_source(annotation: object) -> str:
    """A `TrainingArgs` field's annotation as the Python source the table holds."""
    import enum
    import typing

    if annotation is type(None):
        return "None"
    if annotation in (int, float, bool, str):
        return annotation.__name__  # type: ignore[union-attr]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "Literal[" + ", ".join(repr(member.value) for member in annotation) + "]"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in args) + "]"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [annotation_source(arg) for arg in args]
        return "Any" if "Any" in parts else " | ".join(parts)
    if origin is tuple and args and Ellipsis not in args:
        parts = [annotation_source(arg) for arg in args]
        return "Any" if "Any" in parts else "tuple[" + ", ".join(parts) + "]"
    return "Any"


def generate() -> str:
    """The generated block for the installed instructlab-training."""
    from importlib.metadata import version

    from instructlab.training import TrainingArgs

    lines = [f'INSTRUCTLAB_TRAINING_VERSION = "{version("instructlab-training")}"',
             "TRAINING_ARGS_FIELDS: dict[str, str] = {"]
    lines += [f'    "{name}": "{annotation_source(info.annotation)}",' for name, info in TrainingArgs.model_fields.items()]
    return "\n".join(lines + ["}"])


def _write(path: Path = Path(__file__)) -> None:
    text = path.read_text()
    head, rest = text.split("# BEGIN GENERATED\n", 1)
    _, tail = rest.split("# END GENERATED\n", 1)
    path.write_text(f"{head}# BEGIN GENERATED\n{generate()}\n# END GENERATED\n{tail}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m training_hub.backends.training_args_fields --write")
    _write()
