"""Environment variables the operator sets on each pod (see docs/architecture.md, "Contract: operator -> pod").

Only the distributed settings come from the environment; what to train comes from the config file.
Values are read as strings and validated here, so a bad value is reported with the variable's name.
"""

from __future__ import annotations

from dataclasses import dataclass
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
_INTEGER_FIELDS = {"nnodes", "node_rank", "nproc_per_node"}


class LaunchEnvironmentError(ValueError):
    """A TRAINING_HUB_* variable holds a value that cannot be used (a configuration error)."""


@dataclass(frozen=True)
class LaunchEnvironment:
    distributed: dict[str, Any]  # DistributedParams fields that were set, snake_case
    rdzv_timeout_s: float
    termination_log: str


def read_launch_environment(environ: Mapping[str, str]) -> LaunchEnvironment:
    """Read the TRAINING_HUB_* variables. Unset or empty variables are left out; every bad one is reported."""
    problems: list[str] = []
    distributed: dict[str, Any] = {}
    for variable, field in DISTRIBUTED_VARIABLES.items():
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        if field in _INTEGER_FIELDS:
            try:
                distributed[field] = int(raw)
            except ValueError:
                problems.append(f"{variable}: must be an integer (got {raw!r})")
                continue
        else:
            distributed[field] = raw
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
        termination_log=environ.get(TERMINATION_LOG, "").strip() or DEFAULT_TERMINATION_LOG,
    )


def parse_timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds > 0 (got {raw!r})") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a number of seconds > 0 (got {raw!r})")
    return value
