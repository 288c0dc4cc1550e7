"""The signatures of `sft()` and `SFTAlgorithm.train()`, generated from the parameter models.

`help(sft)`, `inspect.signature(sft)` and IDEs show every parameter with its type, default and
description, and none of that is a second hand-kept list: the `def` lines of both functions in
`training_hub/algorithms/sft.py` are written by `python -m training_hub.algorithms.signature --write`
from `SFTParams` and `DistributedParams`, and a unit test checks they are current.
"""

from __future__ import annotations

import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic.fields import FieldInfo

from training_hub.params import DEFAULT_BACKEND, DistributedParams, SFTParams

POSITIONAL = ("model_path", "data_path", "ckpt_output_dir")  # as in the reference: sft(model_path, data_path, ckpt_output_dir, ...)
SFT_FILE = Path(__file__).with_name("sft.py")


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: str
    default: str | None  # Python source; None: required
    description: str


def type_source(annotation: object) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_source(args[0])
    if origin in (typing.Union, __import__("types").UnionType):
        return " | ".join(type_source(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if origin is dict:
        return "dict[str, Any]"
    return getattr(annotation, "__name__", str(annotation))


def _annotation(name: str, info: FieldInfo) -> str:
    source = type_source(info.annotation)
    if any(type(m).__name__ == "BeforeValidator" for m in info.metadata) or name in POSITIONAL or name == "data_output_dir":
        source = source.replace("str", "str | os.PathLike[str]", 1)
    return source


def parameters() -> list[Parameter]:
    """Every parameter of a call, in signature order."""
    found: list[Parameter] = []
    for name, info in SFTParams.model_fields.items():
        if name == "extra_args":
            continue
        default = None if info.is_required() else repr(info.default)
        found.append(Parameter(name, _annotation(name, info), default, info.description or ""))
    for name, info in DistributedParams.model_fields.items():
        annotation = _annotation(name, info)
        if "None" not in annotation:
            annotation += " | None"
        found.append(Parameter(name, annotation, "None", (info.description or "") + " None: from the environment "
                               "(TRAINING_HUB_*, then torchrun's PET_*)."))
    found.append(Parameter("extra_args", "dict[str, Any] | None", "None",
                           SFTParams.model_fields["extra_args"].description or ""))
    return found


def render(function: str, *, method: bool) -> str:
    """The generated `def` line, docstring and body of `sft` (method=False) or `SFTAlgorithm.train`."""
    indent = "    " if method else ""
    params = parameters()
    lines = [f"{indent}def {function}("]
    if method:
        lines.append(f"{indent}    self,")
    for index, p in enumerate(params):
        if index == len(POSITIONAL):
            lines.append(f"{indent}    *,")
        default = "" if p.default is None else f" = {p.default}"
        lines.append(f"{indent}    {p.name}: {p.annotation}{default},")
    backend = "str | None = None" if method else "str = DEFAULT_BACKEND"
    lines += [f"{indent}    backend: {backend},", f"{indent}    **kwargs: Any,", f"{indent}) -> Any:"]
    summary = (
        "Run supervised fine-tuning with this algorithm's backend (or the one named by `backend`)."
        if method else "Supervised fine-tuning in one call: `SFTAlgorithm` on the backend named `backend`."
    )
    doc = [summary, "", "Args:"]
    for p in params:
        text = f"{p.name}: {'Required. ' if p.default is None else ''}{p.description}"
        doc += textwrap.wrap(text, 100, initial_indent="    ", subsequent_indent="        ")
    doc += textwrap.wrap(
        "backend: " + ("a registered backend name, instead of this algorithm's backend." if method
                       else f'a registered backend name (default "{DEFAULT_BACKEND}").'),
        100, initial_indent="    ", subsequent_indent="        ")
    doc += textwrap.wrap(
        "**kwargs: the backend's own arguments by name (instructlab-training: TrainingArgs fields such as "
        "adamw_weight_decay, random_seed); camelCase spellings of the parameters above. Unknown names are "
        "rejected with a hint.", 100, initial_indent="    ", subsequent_indent="        ")
    doc += ["", "Returns the backend's result (`TrainingResult` for instructlab-training). Raises `ParameterError`",
            "(a ValueError) listing every problem with the parameters, `DataError` (a ValueError) for bad data,",
            "`RuntimeError` (`TrainingFailedError` naming the cause) when training fails."]
    lines.append(f'{indent}    """' + doc[0])
    lines += [f"{indent}    {line}" if line else "" for line in doc[1:]]
    lines.append(f'{indent}    """')
    lines.append(f"{indent}    given = {{")
    lines += [f'{indent}        "{p.name}": {p.name},' for p in params]
    lines.append(f"{indent}    }}")
    lines.append(f"{indent}    return " + ("self._train(given, backend, kwargs)" if method else "_sft(given, backend, kwargs)"))
    return "\n".join(lines)


def _blocks() -> dict[str, str]:
    return {"sft": render("sft", method=False), "train": render("train", method=True)}


def current_blocks(text: str) -> dict[str, str]:
    """The generated blocks as they stand in sft.py."""
    found = {}
    for name in ("sft", "train"):
        begin = text.index(f"# BEGIN GENERATED {name}\n") + len(f"# BEGIN GENERATED {name}\n")
        found[name] = text[begin:text.index(f"# END GENERATED {name}")].rstrip()
    return found


def write(path: Path = SFT_FILE) -> None:
    text = path.read_text()
    for name, block in _blocks().items():
        head, rest = text.split(f"# BEGIN GENERATED {name}\n", 1)
        old, tail = rest.split(f"# END GENERATED {name}", 1)
        indent = old[len(old.rstrip(" ")):]  # the marker's own indentation
        text = f"{head}# BEGIN GENERATED {name}\n{block}\n{indent}# END GENERATED {name}{tail}"
    path.write_text(text)


def expected_blocks() -> dict[str, str]:
    return {name: block.rstrip() for name, block in _blocks().items()}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m training_hub.algorithms.signature --write")
    write()
