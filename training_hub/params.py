"""The one model of the SFT parameters.

`SFTParams` is the single source of truth for what a fine-tuning run takes: the library validates
`sft(**kwargs)` with it, the operator's CRD schema (`spec.training`) is generated from it, and so
`kubectl explain sftjob.spec.training` shows the same descriptions as this file. Python uses
snake_case names; YAML/JSON uses the camelCase aliases.

`DistributedParams` holds the rendezvous settings. They are separate because in a cluster the
operator computes them per pod; they never appear in an SFTJob's `spec.training`.

Cross-field rules are written once (`CrossFieldRule`): the Python check and the CEL rule for the
API server sit side by side so they cannot drift apart.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Collection, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel

DEFAULT_BACKEND = "instructlab-training"


@dataclass(frozen=True)
class CrossFieldRule:
    """A constraint over several fields, checked in Python and rendered as a CEL rule for the CRD."""

    field: str  # the field the error is reported on (snake_case)
    fields: tuple[str, ...]  # fields the check reads; skipped while any of them is itself invalid
    check: Callable[[Mapping[str, Any]], bool]
    message: str
    cel: str  # same rule over camelCase names, `self` = the object

    def json_schema(self) -> dict[str, str]:
        return {"rule": self.cel, "message": self.message, "fieldPath": "." + to_camel(self.field)}


def _schema_extra_for(rules: tuple[CrossFieldRule, ...]) -> Callable[[dict[str, Any]], None]:
    def add_validations(schema: dict[str, Any]) -> None:
        if rules:
            schema["x-kubernetes-validations"] = [rule.json_schema() for rule in rules]

    return add_validations


SFT_RULES: tuple[CrossFieldRule, ...] = (
    CrossFieldRule(
        field="block_size",
        fields=("is_pretraining", "block_size"),
        check=lambda v: not v.get("is_pretraining") or v.get("block_size") is not None,
        message="blockSize is required when isPretraining is true (recommended start: 2048)",
        cel="!(has(self.isPretraining) && self.isPretraining) || has(self.blockSize)",
    ),
    CrossFieldRule(
        field="save_samples",
        fields=("checkpoint_at_epoch", "save_samples"),
        check=lambda v: v.get("checkpoint_at_epoch") is not False or (v.get("save_samples") or 0) > 0,
        message="saveSamples must be > 0 when checkpointAtEpoch is false, otherwise no checkpoint is ever saved",
        cel="!has(self.checkpointAtEpoch) || self.checkpointAtEpoch || (has(self.saveSamples) && self.saveSamples > 0)",
    ),
    CrossFieldRule(
        field="max_tokens_per_gpu",
        fields=("max_tokens_per_gpu", "max_seq_len"),
        check=lambda v: v.get("max_tokens_per_gpu") is None or v["max_tokens_per_gpu"] >= v["max_seq_len"],
        message="maxTokensPerGpu must be >= maxSeqLen: one sample of maxSeqLen tokens must fit on a GPU",
        cel="!has(self.maxTokensPerGpu) || self.maxTokensPerGpu >= self.maxSeqLen",
    ),
)

DISTRIBUTED_RULES: tuple[CrossFieldRule, ...] = (
    CrossFieldRule(
        field="node_rank",
        fields=("node_rank", "nnodes"),
        check=lambda v: v.get("node_rank", 0) < v.get("nnodes", 1),
        message="nodeRank must be < nnodes (ranks are 0..nnodes-1)",
        cel="self.nodeRank < self.nnodes",
    ),
    CrossFieldRule(
        field="rdzv_endpoint",
        fields=("nnodes", "rdzv_endpoint"),
        check=lambda v: v.get("nnodes", 1) == 1 or v.get("rdzv_endpoint") is not None,
        message="rdzvEndpoint (host:port of node rank 0) is required when nnodes > 1",
        cel="self.nnodes == 1 || has(self.rdzvEndpoint)",
    ),
    CrossFieldRule(
        field="rdzv_id",
        fields=("nnodes", "rdzv_id"),
        check=lambda v: v.get("nnodes", 1) == 1 or v.get("rdzv_id") is not None,
        message="rdzvId is required when nnodes > 1: every node must use the same id, a random default would differ",
        cel="self.nnodes == 1 || has(self.rdzvId)",
    ),
)


# What Linux file systems accept (PATH_MAX, NAME_MAX): a longer path fails at its first open with "File name too
# long", after a gang was scheduled; the schema (and so the CRD, by the same rule in CEL) refuses it at once.
MAX_PATH_LENGTH = 4095
MAX_PATH_PART_LENGTH = 255
_PATH_PART_MESSAGE = f"each part of the path between slashes must be at most {MAX_PATH_PART_LENGTH} characters"


def _path_parts_fit(value: str) -> str:
    if re.search(f"[^/]{{{MAX_PATH_PART_LENGTH + 1}}}", value):
        raise ValueError(_PATH_PART_MESSAGE)
    return value


LocalPath = Annotated[str, AfterValidator(_path_parts_fit)]


def _path_field(description: str, **kwargs: Any) -> Any:
    rule = {"rule": f"!self.matches('[^/]{{{MAX_PATH_PART_LENGTH + 1}}}')", "message": _PATH_PART_MESSAGE}
    return Field(
        min_length=1, max_length=MAX_PATH_LENGTH, json_schema_extra={"x-kubernetes-validations": [rule]},
        description=f"{description} (at most {MAX_PATH_LENGTH} characters, {MAX_PATH_PART_LENGTH} per part).",
        **kwargs,
    )


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    _rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> "_CamelModel":
        problems = _rule_errors(self._rules, self.__dict__, set())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_camel_dict(self) -> dict[str, Any]:
        """The form used in YAML/JSON (CRD, ConfigMap): camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SFTParams(_CamelModel):
    """Parameters of one supervised fine-tuning run (instructlab-training backend)."""

    model_config = ConfigDict(json_schema_extra=_schema_extra_for(SFT_RULES))
    _rules: ClassVar[tuple[CrossFieldRule, ...]] = SFT_RULES

    # Required
    model_path: LocalPath = _path_field(
        "Path to the model to fine-tune. Can be a local directory path or a HuggingFace model ID "
        '(e.g. "Qwen/Qwen2.5-7B-Instruct")',
    )
    data_path: LocalPath = _path_field(
        "Path to training data in JSONL format. Each line should contain a JSON object with a "
        "`messages` field (or the document column in pretraining mode)",
    )
    ckpt_output_dir: LocalPath = _path_field(
        "Directory where model checkpoints will be saved during and after training. Reusing it "
        "resumes from the last full state saved there",
    )
    num_epochs: int = Field(ge=1, description="Number of training epochs to run. Typical values: 1-10.")
    effective_batch_size: int = Field(
        ge=1,
        description="Effective batch size for the entire minibatch: the total number of samples processed "
        "before taking an optimizer step.",
    )
    learning_rate: float = Field(gt=0, description="Learning rate for the optimizer.")
    max_seq_len: int = Field(ge=1, description="Maximum sequence length in tokens.")

    # Training configuration
    max_tokens_per_gpu: int | None = Field(
        default=None,
        ge=1,
        description="Maximum number of tokens that can be on a single GPU at once (passed to the backend as "
        "max_batch_len). Defaults to max_seq_len; must be >= max_seq_len.",
    )
    warmup_steps: int | None = Field(
        default=None, ge=0, description="Number of warmup steps for the learning rate scheduler. Backend default: 0."
    )

    # Data processing
    data_output_dir: LocalPath | None = _path_field(
        "Directory for data processing outputs. Defaults to <ckpt_output_dir>/data", default=None
    )

    # Pretraining mode
    is_pretraining: bool = Field(
        default=False, description="When true, enables pretraining mode for training on raw documents."
    )
    block_size: int | None = Field(
        default=None,
        ge=1,
        description="Required when is_pretraining is true. Number of tokens per training block "
        "(recommend starting with 2048).",
    )
    document_column_name: str = Field(
        default="document",
        min_length=1,
        description="Column containing raw documents when is_pretraining is true.",
    )

    # Checkpointing
    checkpoint_at_epoch: bool | None = Field(
        default=None,
        description="If true, saves a checkpoint at the end of each epoch. Backend default: true.",
    )
    accelerate_full_state_at_epoch: bool | None = Field(
        default=None,
        description="If true, saves the full training state (optimizer, scheduler, ...) at each epoch for "
        "automatic resumption. Backend default: true.",
    )
    save_samples: int | None = Field(
        default=None,
        ge=0,
        description="Frequency based checkpointing: checkpoint after every save_samples samples seen "
        "(0 disables). Backend default: 0.",
    )

    # Anything else instructlab.training.TrainingArgs takes
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Additional backend-specific parameters passed by name to instructlab.training.TrainingArgs "
        "(e.g. adamw_weight_decay, random_seed, disable_flash_attn, distributed_backend). Names are checked "
        "against TrainingArgs when training starts.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?):(?P<port>\d{1,5})$")


def _check_host_port(value: str) -> str:
    match = _HOST_PORT.match(value)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise ValueError('must be "host:port" with a port in 1..65535')
    return value


# Part of the type, so the per-field validation in `parse_train_kwargs` runs it too.
HostPort = Annotated[str, AfterValidator(_check_host_port)]


class DistributedParams(_CamelModel):
    """Where this process sits in the gang. In a cluster the operator sets these per pod."""

    model_config = ConfigDict(json_schema_extra=_schema_extra_for(DISTRIBUTED_RULES))
    _rules: ClassVar[tuple[CrossFieldRule, ...]] = DISTRIBUTED_RULES

    nproc_per_node: int | None = Field(
        default=None,
        ge=1,
        description="Number of processes (GPUs) to use per node. If not specified, uses all visible GPUs.",
    )
    nnodes: int = Field(default=1, ge=1, description="Total number of nodes for multi-node training.")
    node_rank: int = Field(default=0, ge=0, description="Rank of this node (0 to nnodes-1). Node 0 is the master.")
    rdzv_id: str | int | None = Field(
        default=None,
        description="Unique job ID for rendezvous; all nodes must use the same ID. Random when omitted "
        "(single node only).",
    )
    rdzv_endpoint: HostPort | None = Field(
        default=None,
        description='Endpoint of node rank 0 as "host:port". Required for multi-node.',
    )


SFT_FIELDS = frozenset(SFTParams.model_fields) - {"extra_args"}
DISTRIBUTED_FIELDS = frozenset(DistributedParams.model_fields)


def _field_value_errors(model: type[BaseModel], data: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Validate each given field on its own, so every bad field is reported, and return the good values."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name not in data:
            if info.is_required():
                problems.append(f"{name}: required ({info.description.split('.')[0]})")
            elif not callable(info.default_factory):
                values[name] = info.default
            continue
        try:
            values[name] = TypeAdapter(info.rebuild_annotation()).validate_python(data[name])
        except ValidationError as exc:
            for error in exc.errors():
                problems.append(f"{name}: {_pydantic_message(error)} (got {data[name]!r})")
    return problems, values


def _pydantic_message(error: Mapping[str, Any]) -> str:
    # A ValueError raised by our own validator carries our message; pydantic would prefix "Value error, ".
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else str(error["msg"])
    return message[0].lower() + message[1:] if message else message


def _rule_errors(rules: tuple[CrossFieldRule, ...], values: Mapping[str, Any], bad: set[str]) -> list[str]:
    problems = []
    for rule in rules:
        if any(name in bad for name in rule.fields):
            continue  # already reported on its own
        if not rule.check(values):
            message = rule.message
            for name in rule.fields:  # Python callers know the snake_case names
                message = message.replace(to_camel(name), name)
            short = message.removeprefix(rule.field + " ")
            # "x must be ..." reads as "x: must be ..."; "x (what it is) is ..." keeps its subject
            problems.append(f"{rule.field}: {message if short.startswith('(') else short}")
    return problems


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class TrainRequest:
    """A validated call: what to train, and where this process sits in the gang."""

    params: SFTParams
    distributed: DistributedParams


class ParameterError(ValueError):
    """Every problem found in one set of parameters, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid SFT parameters:\n  - " + "\n  - ".join(problems))


# Backend (TrainingArgs) fields that SFT parameters set: passing them directly would be ambiguous.
RESERVED_BACKEND_ARGS: Mapping[str, str] = {
    "max_batch_len": "max_tokens_per_gpu",
    "pretraining_config": "is_pretraining, block_size and document_column_name",
    "data_output_path": "data_output_dir",
}


def parse_train_kwargs(
    kwargs: Mapping[str, Any],
    backend_arg_names: Collection[str] | Callable[[], Collection[str]] = (),
) -> TrainRequest:
    """Validate the keyword arguments of `sft()` / `SFTAlgorithm.train()` and report every problem at once.

    Names may be snake_case or camelCase. A name that is neither an SFT nor a distributed parameter
    is passed to the backend when it is one of `backend_arg_names` (e.g. TrainingArgs fields), and
    rejected with a "did you mean" hint otherwise; entries of `extra_args` are checked against
    `backend_arg_names` when it is not empty. `backend_arg_names` may be a callable: it is only called
    when some name needs it, so a call with only SFT parameters never imports the backend.
    Raises `ParameterError` (a `ValueError`).
    """
    sft_data: dict[str, Any] = {}
    distributed_data: dict[str, Any] = {}
    raw_extra = kwargs.get("extra_args", kwargs.get("extraArgs")) or {}
    problems: list[str] = []
    if not isinstance(raw_extra, Mapping):
        problems.append(f"extra_args: must be a mapping of TrainingArgs field names to values (got {raw_extra!r})")
        raw_extra = {}
    extra: dict[str, Any] = dict(raw_extra)
    known = SFT_FIELDS | DISTRIBUTED_FIELDS
    backend_names: Collection[str] | None = None if callable(backend_arg_names) else backend_arg_names

    def backend_names_now() -> Collection[str]:
        nonlocal backend_names
        if backend_names is None:
            backend_names = frozenset(backend_arg_names())  # type: ignore[operator]
        return backend_names

    for given, value in kwargs.items():
        if given in ("extra_args", "extraArgs"):
            continue
        name = given if given in known else _snake(given)
        if name in SFT_FIELDS:
            if value is not None:  # None means "not given": required fields then report "required"
                sft_data[name] = value
        elif name in DISTRIBUTED_FIELDS:
            if value is not None:
                distributed_data[name] = value
        elif given in RESERVED_BACKEND_ARGS:
            problems.append(f"{given}: set through {RESERVED_BACKEND_ARGS[given]}, not directly")
        elif given in backend_names_now():
            extra[given] = value
        else:
            hint = difflib.get_close_matches(given, sorted(known | set(backend_names_now())), n=1, cutoff=0.6)
            problems.append(
                f"{given}: unknown parameter" + (f"; did you mean {hint[0]!r}?" if hint else "")
                + " (neither an SFT parameter nor a field of the backend's TrainingArgs)"
            )
    for name in raw_extra:
        if name in known or _snake(name) in known:
            problems.append(f"extra_args.{name}: is a parameter of its own; set {_snake(name)} directly")
            extra.pop(name, None)
        elif name in RESERVED_BACKEND_ARGS:
            problems.append(f"extra_args.{name}: set through {RESERVED_BACKEND_ARGS[name]}, not directly")
        elif backend_names_now() and name not in backend_names_now():  # unchecked when no backend names are known
            hint = difflib.get_close_matches(name, sorted(backend_names_now()), n=1, cutoff=0.6)
            problems.append(
                f"extra_args.{name}: not a field of the backend's TrainingArgs"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
            )

    sft_problems, sft_values = _field_value_errors(SFTParams, sft_data)
    dist_problems, dist_values = _field_value_errors(DistributedParams, distributed_data)
    bad_sft = {p.split(":", 1)[0] for p in sft_problems}
    bad_dist = {p.split(":", 1)[0] for p in dist_problems}
    problems += sft_problems + _rule_errors(SFT_RULES, sft_values, bad_sft)
    problems += dist_problems + _rule_errors(DISTRIBUTED_RULES, dist_values, bad_dist)
    if problems:
        raise ParameterError(problems)
    return TrainRequest(
        params=SFTParams.model_validate({**sft_data, "extra_args": extra}),
        distributed=DistributedParams.model_validate(distributed_data),
    )


_HF_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def local_path_problems(kwargs: Mapping[str, Any]) -> list[str]:
    """Problems with the local paths of a call, found before anything heavy starts.

    Checked here and not in `SFTParams`: the operator validates parameters away from the pod's
    volumes, where these paths do not exist. Names may be snake_case or camelCase; values that are
    not strings are left to the field validation.
    """
    def given(name: str) -> Any:
        return kwargs.get(name, kwargs.get(to_camel(name)))

    problems: list[str] = []
    data_path = given("data_path")
    if isinstance(data_path, str) and data_path:
        path = Path(data_path).expanduser()
        if path.is_dir():
            problems.append(f"data_path: {data_path!r} is a directory; expected a JSONL file")
        elif not path.exists():
            problems.append(
                f"data_path: no such file {data_path!r} (resolved to {path.resolve()}); it must be a local JSONL "
                "file, dataset names from the Hugging Face Hub are not supported"
            )
    model_path = given("model_path")
    if isinstance(model_path, str) and model_path:
        path = Path(model_path).expanduser()
        if path.exists() and not path.is_dir():
            problems.append(f"model_path: {model_path!r} is a file; expected a Hugging Face model directory")
        elif not path.exists() and not _HF_MODEL_ID.match(model_path):
            problems.append(
                f"model_path: no such directory {model_path!r} (resolved to {path.resolve()}), and not a "
                "Hugging Face model id of the form 'org/name'"
            )
    for name in ("ckpt_output_dir", "data_output_dir"):
        value = given(name)
        if isinstance(value, str) and value:
            problem = _writable_dir_problem(Path(value).expanduser())
            if problem:
                problems.append(f"{name}: {problem}")
    return problems


def _writable_dir_problem(path: Path) -> str | None:
    if path.exists():
        if not path.is_dir():
            return f"{str(path)!r} exists and is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{str(path)!r} is not writable"
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create {str(path)!r}: {str(ancestor)!r} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create {str(path)!r}: {str(ancestor)!r} is not writable"
    return None
