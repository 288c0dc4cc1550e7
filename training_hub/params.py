"""The one model of the SFT parameters.

`SFTParams` is the single source of truth for what a fine-tuning run takes: the library validates
`sft(**kwargs)` with it, the operator's CRD schema (`spec.training`) is generated from it, and so
`kubectl explain sftjob.spec.training` shows the same descriptions as this file. Python uses
snake_case names; YAML/JSON uses the camelCase aliases.

`DistributedParams` holds the rendezvous settings. They are separate because in a cluster the
operator computes them per pod; they never appear in an SFTJob's `spec.training`.

Cross-field rules are written once (`CrossFieldRule`): the Python check and the CEL rule for the
API server sit side by side so they cannot drift apart.

Validation happens once, by these models: types are strict where a coercion would hide a mistake
(`True` is not an epoch count, `"yes"` not a boolean, `inf` not a learning rate), and
`validation_problems` is the one place that turns pydantic's errors into the lines users read
(library, entrypoint and operator). `parse_train_kwargs` adds what a model cannot know: the names a
call may use (snake_case or camelCase, never both for one parameter), the backend's own arguments,
and a "did you mean" for the rest.
"""

from __future__ import annotations

import difflib
import enum
import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Collection, Iterable, Literal, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_snake
from pydantic_core import PydanticCustomError

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
# Python counts UTF-8 bytes, as the kernel does; the API server counts characters (the same for ASCII).
MAX_PATH_LENGTH = 4095
MAX_PATH_PART_LENGTH = 255
_PATH_PART_MESSAGE = f"each part of the path between slashes must be at most {MAX_PATH_PART_LENGTH} characters"


def _fspath(value: Any) -> Any:
    # os.PathLike (pathlib.Path) is a path; bytes are not accepted (strict str rejects them).
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _path_within_limits(value: str) -> str:
    if "\0" in value:
        raise PydanticCustomError("path", "must not contain a NUL character")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_PATH_LENGTH:
        raise PydanticCustomError("path", "must be at most {limit} bytes in UTF-8 (PATH_MAX)", {"limit": MAX_PATH_LENGTH})
    for part in value.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_PATH_PART_LENGTH:
            raise PydanticCustomError("path", _PATH_PART_MESSAGE + " (bytes in UTF-8); one has {size}",
                                      {"size": len(part.encode("utf-8", "surrogateescape"))})
    return value


# A file-system path: `str` or `os.PathLike`, within the limits of Linux file systems.
PathText = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=MAX_PATH_LENGTH),
    BeforeValidator(_fspath),
    AfterValidator(_path_within_limits),
    WithJsonSchema({
        "type": "string", "minLength": 1, "maxLength": MAX_PATH_LENGTH,
        "x-kubernetes-validations": [
            {"rule": f"!self.matches('[^/]{{{MAX_PATH_PART_LENGTH + 1}}}')", "message": _PATH_PART_MESSAGE}],
    }),
]


def _path_field(description: str, **kwargs: Any) -> Any:
    return Field(
        description=f"{description} (at most {MAX_PATH_LENGTH} characters, {MAX_PATH_PART_LENGTH} per part).", **kwargs
    )


FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # ints are accepted, bools, strings, inf/nan not


def rule_violations(rules: Iterable[CrossFieldRule], values: Mapping[str, Any]) -> PydanticCustomError | None:
    """One error for the rules these values break (None if none); `validation_problems` reports each on its field."""
    broken = [rule for rule in rules if not rule.check(values)]
    if not broken:
        return None
    return PydanticCustomError(
        "cross_field", "; ".join(rule.message for rule in broken),
        {"violations": tuple((rule.field, rule.message, rule.fields) for rule in broken)},
    )


def _check_rules(rules: tuple[CrossFieldRule, ...], value: Any, info: ValidationInfo) -> Any:
    """Run the cross-field rules reported on this field; skipped while a field they read is invalid."""
    values = {**info.data, info.field_name: value}
    mine = [rule for rule in rules if rule.field == info.field_name and all(name in values for name in rule.fields)]
    error = rule_violations(mine, values)
    if error is not None:
        raise error
    return value


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    _rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _one_spelling_each(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            conflicts = spelling_conflicts(data, cls.model_fields)
            if conflicts:
                raise PydanticCustomError("conflict", "; ".join(conflicts))
        return data

    def to_camel_dict(self) -> dict[str, Any]:
        """The form used in YAML/JSON (CRD, ConfigMap): camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SFTParams(_CamelModel):
    """Parameters of one supervised fine-tuning run (instructlab-training backend)."""

    model_config = ConfigDict(json_schema_extra=_schema_extra_for(SFT_RULES))
    _rules: ClassVar[tuple[CrossFieldRule, ...]] = SFT_RULES

    # Required
    model_path: PathText = _path_field(
        "Path to the model to fine-tune. Can be a local directory path or a HuggingFace model ID "
        '(e.g. "Qwen/Qwen2.5-7B-Instruct")',
    )
    data_path: PathText = _path_field(
        "Path to training data in JSONL format. Each line should contain a JSON object with a "
        "`messages` field (or the document column in pretraining mode)",
    )
    ckpt_output_dir: PathText = _path_field(
        "Directory where model checkpoints will be saved during and after training. Reusing it "
        "resumes from the last full state saved there",
    )
    num_epochs: StrictInt = Field(ge=1, description="Number of training epochs to run. Typical values: 1-10.")
    effective_batch_size: StrictInt = Field(
        ge=1,
        description="Effective batch size for the entire minibatch: the total number of samples processed "
        "before taking an optimizer step.",
    )
    learning_rate: FiniteFloat = Field(gt=0, description="Learning rate for the optimizer.")
    max_seq_len: StrictInt = Field(ge=1, description="Maximum sequence length in tokens.")

    # Training configuration
    max_tokens_per_gpu: StrictInt | None = Field(
        default=None,
        validate_default=True,
        ge=1,
        description="Maximum number of tokens that can be on a single GPU at once (passed to the backend as "
        "max_batch_len). Defaults to max_seq_len; must be >= max_seq_len.",
    )
    warmup_steps: StrictInt | None = Field(
        default=None, ge=0, description="Number of warmup steps for the learning rate scheduler. Backend default: 0."
    )

    # Data processing
    data_output_dir: PathText | None = _path_field(
        "Directory for data processing outputs. Defaults to <ckpt_output_dir>/data", default=None
    )

    # Pretraining mode
    is_pretraining: StrictBool = Field(
        default=False, description="When true, enables pretraining mode for training on raw documents."
    )
    block_size: StrictInt | None = Field(
        default=None,
        validate_default=True,
        ge=1,
        description="Required when is_pretraining is true. Number of tokens per training block "
        "(recommend starting with 2048).",
    )
    document_column_name: StrictStr = Field(
        default="document",
        min_length=1,
        description="Column containing raw documents when is_pretraining is true.",
    )

    # Checkpointing
    checkpoint_at_epoch: StrictBool | None = Field(
        default=None,
        description="If true, saves a checkpoint at the end of each epoch. Backend default: true.",
    )
    accelerate_full_state_at_epoch: StrictBool | None = Field(
        default=None,
        description="If true, saves the full training state (optimizer, scheduler, ...) at each epoch for "
        "automatic resumption. Backend default: true.",
    )
    save_samples: StrictInt | None = Field(
        default=None,
        validate_default=True,
        ge=0,
        description="Frequency based checkpointing: checkpoint after every save_samples samples seen "
        "(0 disables). Backend default: 0.",
    )

    # Anything else instructlab.training.TrainingArgs takes
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Additional backend-specific parameters passed by name to instructlab.training.TrainingArgs "
        "(e.g. adamw_weight_decay, random_seed, disable_flash_attn, distributed_backend). Names and simple "
        "values are checked against TrainingArgs before training starts.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator(*{rule.field for rule in SFT_RULES}, mode="after")
    @classmethod
    def _cross_field(cls, value: Any, info: ValidationInfo) -> Any:
        return _check_rules(SFT_RULES, value, info)


_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
HOST_PORT_MESSAGE = 'must be "host:port" (a DNS name, IPv4 address or [IPv6] address, and a port in 1..65535)'


def parse_host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); the one parser of rendezvous endpoints.

    Raises ValueError saying what is allowed. Hosts are DNS names (RFC 1123: letters, digits, "-",
    no "_"), IPv4 addresses or bracketed IPv6 addresses (`::1:29500` is ambiguous and refused).
    """
    import ipaddress

    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(HOST_PORT_MESSAGE)
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise ValueError(HOST_PORT_MESSAGE) from None
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(HOST_PORT_MESSAGE) from None
        raise ValueError(HOST_PORT_MESSAGE + f"; write an IPv6 address in brackets: [{host}]:{port}")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(HOST_PORT_MESSAGE) from None
    elif len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.removesuffix(".").split(".")):
        raise ValueError(HOST_PORT_MESSAGE)
    return host, int(port)


def _check_host_port(value: str) -> str:
    parse_host_port(value)
    return value


HostPort = Annotated[StrictStr, AfterValidator(_check_host_port)]


class DistributedParams(_CamelModel):
    """Where this process sits in the gang. In a cluster the operator sets these per pod."""

    model_config = ConfigDict(json_schema_extra=_schema_extra_for(DISTRIBUTED_RULES))
    _rules: ClassVar[tuple[CrossFieldRule, ...]] = DISTRIBUTED_RULES

    nproc_per_node: StrictInt | None = Field(
        default=None,
        ge=1,
        description="Number of processes (GPUs) to use per node. If not specified, uses all visible GPUs.",
    )
    nnodes: StrictInt = Field(default=1, ge=1, description="Total number of nodes for multi-node training.")
    node_rank: StrictInt = Field(default=0, validate_default=True, ge=0, description="Rank of this node (0 to nnodes-1). Node 0 is the master.")
    rdzv_id: StrictStr | StrictInt | None = Field(
        default=None,
        validate_default=True,
        description="Unique job ID for rendezvous; all nodes must use the same ID. Random when omitted "
        "(single node only).",
    )
    rdzv_endpoint: HostPort | None = Field(
        default=None,
        validate_default=True,
        description='Endpoint of node rank 0 as "host:port". Required for multi-node.',
    )

    @field_validator(*{rule.field for rule in DISTRIBUTED_RULES}, mode="after")
    @classmethod
    def _cross_field(cls, value: Any, info: ValidationInfo) -> Any:
        return _check_rules(DISTRIBUTED_RULES, value, info)


SFT_FIELDS = frozenset(SFTParams.model_fields) - {"extra_args"}
DISTRIBUTED_FIELDS = frozenset(DistributedParams.model_fields)
_MODEL_FIELDS = SFT_FIELDS | DISTRIBUTED_FIELDS | {"extra_args"}


# ---------------------------------------------------------------- names


def canonical_name(name: str, known: Collection[str] = _MODEL_FIELDS) -> str:
    """The snake_case name of a parameter given as snake_case or camelCase; other names unchanged.

    Only the two exact spellings count: `numEpochs` is `num_epochs`, `NumEpochs` is nothing.
    """
    if name in known:
        return name
    snake = to_snake(name)
    return snake if snake in known and to_camel(snake) == name else name


def spelling_conflicts(data: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """`x and xCamel` for each parameter given in both spellings (whichever won would be a silent guess)."""
    return [
        f"{name} and {to_camel(name)}: two spellings of one parameter; give it once"
        for name in names
        if to_camel(name) != name and name in data and to_camel(name) in data
    ]


# Names other tools use for a parameter: a hint worth more than the nearest spelling.
_SYNONYMS: Mapping[str, str] = {
    "lr": "learning_rate",
    "epochs": "num_epochs",
    "n_epochs": "num_epochs",
    "num_train_epochs": "num_epochs",
    "batch_size": "effective_batch_size",
    "max_length": "max_seq_len",
    "model_name_or_path": "model_path",
    "output_dir": "ckpt_output_dir",
    "weight_decay": "adamw_weight_decay",
    "adam_beta1": "adamw_betas",
    "adam_beta2": "adamw_betas",
    "beta1": "adamw_betas",
    "beta2": "adamw_betas",
    "betas": "adamw_betas",
    "adam_epsilon": "adamw_eps",
    "eps": "adamw_eps",
    "seed": "random_seed",
    "master_addr": "rdzv_endpoint",
    "master_port": "rdzv_endpoint",
}
_HINT_NOTES: Mapping[str, str] = {"adamw_betas": "=(beta1, beta2)", "rdzv_endpoint": '="host:port"'}
SUGGESTION_CUTOFF = 0.8  # difflib ratio: catches transpositions and dropped letters, not "lr" -> "lora"


def suggest(name: str, candidates: Collection[str]) -> str | None:
    """The parameter `name` was probably meant to be, spelled as `name` is (camelCase or snake_case)."""
    camel = name != name.lower()
    snake = to_snake(name) if camel else name
    hit = _SYNONYMS.get(snake) if _SYNONYMS.get(snake) in candidates else None
    if hit is None:
        close = difflib.get_close_matches(snake, sorted(candidates), n=1, cutoff=SUGGESTION_CUTOFF)
        hit = close[0] if close else None
    if hit is None:
        return None
    return (to_camel(hit) if camel else hit) + _HINT_NOTES.get(hit, "")


# ---------------------------------------------------------------- errors


class ParameterError(ValueError):
    """Every problem found in one set of parameters, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid SFT parameters:\n  - " + "\n  - ".join(problems))


def _location(parts: Iterable[Any], by_alias: bool) -> str:
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        part = str(part)
        name = canonical_name(part)
        if name in _MODEL_FIELDS:
            part = to_camel(name) if by_alias else name
        path += ("." if path else "") + part
    return path


def _describe(error: Mapping[str, Any], by_alias: bool) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        name = canonical_name(str(error["loc"][-1])) if error["loc"] else ""
        info = SFTParams.model_fields.get(name) or DistributedParams.model_fields.get(name)
        return f"required ({info.description.split('.')[0]})" if info is not None and info.description else "required"
    if kind == "conflict":
        return str(error["msg"])
    # our own validators: their text without pydantic's "Value error, " prefix
    message = str(ctx["error"]) if kind == "value_error" else str(error["msg"]).replace("Input should be", "must be")
    message = message[:1].lower() + message[1:]
    return message if kind in ("extra_forbidden",) else f"{message} (got {error.get('input')!r})"


def _line(path: str, message: str, by_alias: bool = True) -> str:
    subject = path.rpartition(".")[2] + " "
    # camelCase paths keep the CRD's own message (what the API server says); Python's read "x: must be ..."
    if not by_alias and message.startswith(subject) and not message[len(subject):].startswith("("):
        message = message[len(subject):]  # "x must be ..." reads "x: must be ..."; "x (what) is ..." keeps it
    return f"{path}: {message}" if path else message


def validation_problems(error: ValidationError, *, by_alias: bool = False, prefix: Iterable[Any] = ()) -> list[str]:
    """The one formatter of pydantic errors: one "field: what is wrong (got value)" line per problem.

    `by_alias`: field names in camelCase (YAML, the operator) rather than snake_case (Python);
    `prefix`: where the validated object sits (e.g. `("spec",)`).
    """
    problems = []
    for item in error.errors(include_url=False):
        location = (*prefix, *item["loc"])
        if item["type"] != "cross_field":
            problems.append(_line(_location(location, by_alias), _describe(item, by_alias), by_alias))
            continue
        for field_name, message, names in item["ctx"]["violations"]:  # a rule over several fields, on its field
            on_field = location and canonical_name(str(location[-1])) == field_name
            path = _location(location if on_field else (*location, field_name), by_alias)
            for name in () if by_alias else names:  # Python callers know the snake_case names
                message = message.replace(to_camel(name), name)
            problems.append(_line(path, message, by_alias))
    return problems


# ---------------------------------------------------------------- one call


@dataclass(frozen=True)
class TrainRequest:
    """A validated call: what to train, and where this process sits in the gang."""

    params: SFTParams
    distributed: DistributedParams


# Backend (TrainingArgs) fields that SFT parameters set: passing them directly would be ambiguous.
RESERVED_BACKEND_ARGS: Mapping[str, str] = {
    "max_batch_len": "max_tokens_per_gpu",
    "pretraining_config": "is_pretraining, block_size and document_column_name",
    "data_output_path": "data_output_dir",
}

# How the backend's argument types are written (`training_hub.backends.training_args_fields`), strict
# like the SFT parameters: a bool is not an int, a string not a number.
_BACKEND_TYPES: dict[str, Any] = {
    "int": StrictInt, "float": FiniteFloat, "bool": StrictBool, "str": StrictStr,
    "Any": Any, "Literal": Literal, "tuple": tuple, "None": None,
}
_backend_adapters: dict[str, TypeAdapter] = {}


def _backend_value_problems(name: str, value: Any, source: str) -> list[str]:
    if source not in _backend_adapters:
        _backend_adapters[source] = TypeAdapter(eval(source, {"__builtins__": {}}, _BACKEND_TYPES))  # noqa: S307
    try:
        _backend_adapters[source].validate_python(value.value if isinstance(value, enum.Enum) else value)
    except ValidationError as exc:
        return validation_problems(exc, prefix=(name,))
    return []


def parse_train_kwargs(
    kwargs: Mapping[str, Any], backend_arg_names: Mapping[str, str] | Collection[str] = ()
) -> TrainRequest:
    """Validate the keyword arguments of `sft()` / `SFTAlgorithm.train()` and report every problem at once.

    Names may be snake_case or camelCase (not both for one parameter); `None` means "not given". A
    name that is neither an SFT nor a distributed parameter goes to the backend when it is one of
    `backend_arg_names` (a mapping name -> type as Python source also checks the value), and is rejected
    with a "did you mean" hint otherwise; so are entries of `extra_args`. Raises `ParameterError`.
    """
    backend_names = frozenset(backend_arg_names)
    known = _MODEL_FIELDS | backend_names
    given = {name: value for name, value in kwargs.items() if value is not None}
    problems = spelling_conflicts(given, known)
    sft_data: dict[str, Any] = {}
    distributed_data: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    raw_extra = given.get("extra_args", given.get("extraArgs", {}))
    if not isinstance(raw_extra, Mapping):
        problems.append(f"extra_args: must be a mapping of TrainingArgs field names to values (got {raw_extra!r})")
        raw_extra = {}

    def to_backend(label: str, name: str, value: Any) -> None:
        if name in RESERVED_BACKEND_ARGS:
            problems.append(f"{label}: set through {RESERVED_BACKEND_ARGS[name]}, not directly")
        elif name not in backend_names:
            in_extra = label.startswith("extra_args.")
            hint = suggest(label.rpartition(".")[2], backend_names if in_extra else known)
            hint_text = f"; did you mean {hint!r}?" if hint else ""
            problems.append(
                f"{label}: not a field of the backend's TrainingArgs{hint_text}" if in_extra else
                f"{label}: unknown parameter{hint_text} (neither an SFT parameter nor a field of the backend's "
                "TrainingArgs)"
            )
        else:
            extra[name] = value

    for label, value in given.items():
        name = canonical_name(label, known)
        if name == "extra_args":
            continue
        if name in SFT_FIELDS:
            sft_data[name] = value
        elif name in DISTRIBUTED_FIELDS:
            distributed_data[name] = value
        else:
            to_backend(label, name, value)
    for label, value in raw_extra.items():
        name = canonical_name(str(label), known)
        if name in SFT_FIELDS | DISTRIBUTED_FIELDS:
            problems.append(f"extra_args.{label}: is a parameter of its own; set {name} directly")
        elif name in extra:
            problems.append(f"extra_args.{label}: given twice (also outside extra_args); give it once")
        else:
            to_backend(f"extra_args.{label}", name, value)
    if isinstance(backend_arg_names, Mapping):
        for name, value in extra.items():
            problems += _backend_value_problems(name, value, backend_arg_names[name])

    validated: list[BaseModel] = []
    for model, data in ((SFTParams, {**sft_data, "extra_args": extra}), (DistributedParams, distributed_data)):
        try:
            validated.append(model.model_validate(data))
        except ValidationError as exc:
            problems += validation_problems(exc)
    if problems:
        raise ParameterError(problems)
    return TrainRequest(*validated)  # type: ignore[arg-type]


# ---------------------------------------------------------------- local paths


_HF_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def local_path_problems(kwargs: Mapping[str, Any]) -> list[str]:
    """Problems with the local paths of a call, found before anything heavy starts.

    Checked here and not in `SFTParams`: the operator validates parameters away from the pod's
    volumes, where these paths do not exist. Names may be snake_case or camelCase; values that are
    not paths, or too long to be one, are left to the field validation.
    """
    def given(name: str) -> str | None:
        value = _fspath(kwargs.get(name, kwargs.get(to_camel(name))))
        try:
            return _path_within_limits(value) if isinstance(value, str) and value else None
        except PydanticCustomError:
            return None

    problems: list[str] = []
    checks = (("data_path", _data_file_problem), ("model_path", _model_problem),
              ("ckpt_output_dir", writable_dir_problem), ("data_output_dir", writable_dir_problem))
    for name, check in checks:
        value = given(name)
        if value is None:
            continue
        try:
            problem = check(value)
        except OSError as exc:  # e.g. a parent that cannot be searched
            problem = f"cannot check {value!r}: {exc.strerror or exc}"
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def _data_file_problem(data_path: str) -> str | None:
    path = Path(data_path).expanduser()
    if path.is_dir():
        return f"{data_path!r} is a directory; expected a JSONL file"
    if not path.exists():
        return (f"no such file {data_path!r} (resolved to {path.resolve()}); it must be a local JSONL file, "
                "dataset names from the Hugging Face Hub are not supported")
    return None


def _model_problem(model_path: str) -> str | None:
    path = Path(model_path).expanduser()
    if path.exists() and not path.is_dir():
        return f"{model_path!r} is a file; expected a Hugging Face model directory"
    if not path.exists() and not _HF_MODEL_ID.match(model_path):
        return (f"no such directory {model_path!r} (resolved to {path.resolve()}), and not a Hugging Face "
                "model id of the form 'org/name'")
    return None


def writable_dir_problem(value: str | os.PathLike[str]) -> str | None:
    """Why files cannot be created in this directory (or in the directory it would be created in), or None.

    Checked by trying (a file created and removed at once): permission bits say nothing about root,
    read-only mounts or /sys.
    """
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return f"{str(path)!r} exists and is not a directory"
    target = path.absolute()
    while not target.exists():
        target = target.parent
    if not target.is_dir():
        return f"cannot create {str(path)!r}: {str(target)!r} is not a directory"
    try:
        handle, probe = tempfile.mkstemp(prefix=".training-hub-write-check-", dir=target)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        where = "" if target == path.absolute() else f"cannot create {str(path)!r}: "
        return f"{where}{str(target)!r} is not writable ({exc.strerror or errno.errorcode.get(exc.errno, exc)})"
    return None
