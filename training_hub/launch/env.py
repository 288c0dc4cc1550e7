"""Environment variables the operator sets on each pod (see docs/architecture.md, "Contract: operator -> pod").

Only the distributed settings come from the environment; what to train comes from the config file.
Values are read as strings and validated here, so a bad value is reported with the variable's name.
torchrun's own PET_* variables (set by launchers such as Kubeflow's PyTorchJob/TrainJob) fill what the
TRAINING_HUB_* variables leave unset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

NNODES = "TRAINING_HUB_NNODES"
NODE_RANK = "TRAINING_HUB_NODE_RANK"
NPROC_PER_NODE = "TRAINING_HUB_NPROC_PER_NODE"
RDZV_ID = "TRAINING_HUB_RDZV_ID"
RDZV_ENDPOINT = "TRAINING_HUB_RDZV_ENDPOINT"
RDZV_TIMEOUT = "TRAINING_HUB_RDZV_TIMEOUT"
TERMINATION_LOG = "TRAINING_HUB_TERMINATION_LOG"

DEFAULT_RDZV_TIMEOUT_S = 600.0
DEFAULT_TERMINATION_LOG = "/dev/termination-log"

# env var -> DistributedParams field (snake_case)
DISTRIBUTED_VARIABLES: dict[str, str] = {
    NNODES: "nnodes",
    NODE_RANK: "node_rank",
    NPROC_PER_NODE: "nproc_per_node",
    RDZV_ID: "rdzv_id",
    RDZV_ENDPOINT: "rdzv_endpoint",
}
# What torchrun reads (every torchrun option OPT has a PET_OPT variable) and what launchers that run
# torchrun set: Kubeflow's PyTorchJob and TrainJob, for instance. Used for fields the TRAINING_HUB_*
# variables leave unset.
TORCHRUN_VARIABLES: dict[str, str] = {
    "PET_NNODES": "nnodes",
    "PET_NODE_RANK": "node_rank",
    "PET_NPROC_PER_NODE": "nproc_per_node",
    "PET_RDZV_ID": "rdzv_id",
    "PET_RDZV_ENDPOINT": "rdzv_endpoint",
}
PET_MASTER_ADDR = "PET_MASTER_ADDR"
PET_MASTER_PORT = "PET_MASTER_PORT"
_INTEGER_FIELDS = {"nnodes", "node_rank", "nproc_per_node"}
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() would also take full-width and other Unicode digits


class LaunchEnvironmentError(ValueError):
    """A TRAINING_HUB_* or PET_* variable holds a value that cannot be used (a configuration error)."""


@dataclass(frozen=True)
class LaunchEnvironment:
    distributed: dict[str, Any]  # DistributedParams fields that were set, snake_case
    rdzv_timeout_s: float
    termination_log: str | None  # None: not asked for (write the default only inside a pod)
    sources: dict[str, str] = field(default_factory=dict)  # field -> the variable it came from


def _value(variable: str, field_name: str, raw: str, problems: list[str]) -> Any:
    if field_name not in _INTEGER_FIELDS:
        return raw
    if variable.startswith("PET_") and field_name == "nproc_per_node" and raw in ("auto", "gpu"):
        return None  # torchrun's "all GPUs": the default here too
    if variable.startswith("PET_") and field_name == "nnodes" and ":" in raw:
        problems.append(f"{variable}: elastic node ranges (MIN:MAX, got {raw!r}) are not supported; set a fixed count")
        return None
    if not _DIGITS.fullmatch(raw):
        problems.append(f"{variable}: must be a whole number in ASCII digits (got {raw!r})")
        return None
    return int(raw)


def distributed_from_environment(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The distributed settings the environment gives: (values, field -> variable, problems).

    Precedence per field: TRAINING_HUB_* wins over PET_*; the caller's own arguments win over both.
    Without PET_RDZV_ENDPOINT, PET_MASTER_ADDR:PET_MASTER_PORT is the endpoint; a rendezvous id the
    launcher does not give defaults to that endpoint (the same on every node of the job).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for table in (DISTRIBUTED_VARIABLES, TORCHRUN_VARIABLES):
        for variable, field_name in table.items():
            raw = environ.get(variable, "").strip()
            if not raw or field_name in sources:
                continue
            value = _value(variable, field_name, raw, problems)
            sources[field_name] = variable
            if value is not None:
                values[field_name] = value
    addr, port = environ.get(PET_MASTER_ADDR, "").strip(), environ.get(PET_MASTER_PORT, "").strip()
    if "rdzv_endpoint" not in sources and addr and port:
        host = f"[{addr}]" if ":" in addr else addr
        values["rdzv_endpoint"] = f"{host}:{port}"
        sources["rdzv_endpoint"] = f"{PET_MASTER_ADDR}:{PET_MASTER_PORT}"
    if "rdzv_id" not in sources and "rdzv_endpoint" in values and sources["rdzv_endpoint"].startswith("PET_"):
        values["rdzv_id"] = values["rdzv_endpoint"]
        sources["rdzv_id"] = sources["rdzv_endpoint"]
    return values, sources, problems


def read_launch_environment(environ: Mapping[str, str]) -> LaunchEnvironment:
    """Read the TRAINING_HUB_* (and PET_*) variables. Unset or empty variables are left out; every bad one is reported."""
    distributed, sources, problems = distributed_from_environment(environ)
    timeout = DEFAULT_RDZV_TIMEOUT_S
    raw_timeout = environ.get(RDZV_TIMEOUT, "").strip()
    if raw_timeout:
        try:
            timeout = parse_timeout(raw_timeout)
        except ValueError as exc:
            problems.append(f"{RDZV_TIMEOUT}: {exc}")
    if problems:
        raise LaunchEnvironmentError("invalid environment:\n  - " + "\n  - ".join(problems))
    return LaunchEnvironment(
        distributed=distributed,
        rdzv_timeout_s=timeout,
        termination_log=environ.get(TERMINATION_LOG, "").strip() or None,
        sources=sources,
    )


def parse_timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds > 0 (got {raw!r})") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a number of seconds > 0 (got {raw!r})")
    return value
