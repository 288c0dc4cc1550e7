"""The operator's own configuration (not per job), read from the environment of the operator pod.

Every setting has a default that works on a plain cluster; the Helm chart sets the variables.
A bad value raises `ConfigError` naming the variable and what is allowed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import metadata
from typing import Mapping

from training_hub.launch import env as launch_env

ENV_PREFIX = "SFTJOB_OPERATOR_"
TRAINER_IMAGE = ENV_PREFIX + "TRAINER_IMAGE"
IMAGE_PULL_POLICY = ENV_PREFIX + "IMAGE_PULL_POLICY"
NAMESPACES = ENV_PREFIX + "NAMESPACES"
RDZV_TIMEOUT = ENV_PREFIX + "RDZV_TIMEOUT"
CLUSTER_DOMAIN = ENV_PREFIX + "CLUSTER_DOMAIN"
SHM_SIZE_LIMIT = ENV_PREFIX + "SHM_SIZE_LIMIT"
FORCE_DELETE_AFTER = ENV_PREFIX + "FORCE_DELETE_AFTER"
DEFAULT_TRAINER_RESOURCES = ENV_PREFIX + "DEFAULT_TRAINER_RESOURCES"
DEFAULT_PREPARE_RESOURCES = ENV_PREFIX + "DEFAULT_PREPARE_RESOURCES"

IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_RESOURCE_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)

# (requests, limits): each a sorted tuple of (resource name, quantity); hashable, so OperatorConfig stays frozen.
ResourceDefaults = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def quantity_value(quantity: int | float | str) -> Decimal:
    """The number a Kubernetes quantity stands for (`500m` -> 0.5, `2Gi` -> 2147483648), to compare two of them.
    Raises ValueError for anything that is not a quantity."""
    text = str(quantity)
    if isinstance(quantity, bool) or not re.match(QUANTITY_PATTERN, text):
        raise ValueError(f"must be a Kubernetes quantity such as 8, 500m, 64Gi (got {quantity!r})")
    try:
        if text[-2:] in _BINARY_SUFFIXES:
            return Decimal(text[:-2]) * _BINARY_SUFFIXES[text[-2:]]
        if text[-1] in _DECIMAL_SUFFIXES:
            return Decimal(text[:-1]).scaleb(_DECIMAL_SUFFIXES[text[-1]])
        return Decimal(text)  # plain number or e-notation (1e3)
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers Decimal reads
        raise ValueError(f"must be a Kubernetes quantity such as 8, 500m, 64Gi (got {quantity!r})") from None


def parse_resource_defaults(raw: str) -> ResourceDefaults:
    """`{"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "64Gi"}}` (JSON, a container's
    `resources` without the GPU) -> ResourceDefaults. Quantities are kept as strings ("4"), as the API stores
    them. A default request above the default limit of the same resource is an error: no pod could use both."""
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be JSON such as {{\"requests\": {{\"cpu\": \"4\"}}}} ({exc})") from None
    if not isinstance(document, dict) or set(document) - {"requests", "limits"}:
        raise ValueError(f"must be a JSON object with only the keys requests and limits (got {raw!r})")
    parts: dict[str, dict[str, str]] = {}
    for part in ("requests", "limits"):
        entries = document.get(part) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"{part} must be an object of resource name -> quantity (got {entries!r})")
        parts[part] = {}
        for name, quantity in entries.items():
            if not _RESOURCE_NAME.match(name) or len(name) > 253:
                raise ValueError(f"{part}: {name!r} is not a resource name such as cpu, memory, ephemeral-storage")
            try:
                negative = quantity_value(quantity) < 0
            except ValueError as exc:
                raise ValueError(f"{part}.{name}: {exc}") from None
            if negative:
                raise ValueError(f"{part}.{name}: must not be negative (got {quantity!r})")
            parts[part][name] = str(quantity)
    for name, request in parts["requests"].items():
        limit = parts["limits"].get(name)
        if limit is not None and quantity_value(request) > quantity_value(limit):
            raise ValueError(f"requests.{name} ({request}) must not exceed limits.{name} ({limit})")
    return (tuple(sorted(parts["requests"].items())), tuple(sorted(parts["limits"].items())))


def _package_version() -> str:
    try:
        return metadata.version("training-hub")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "latest"


DEFAULT_TRAINER_IMAGE = f"training-hub-trainer:{_package_version()}"


class ConfigError(ValueError):
    """An operator setting (environment variable) has a value that cannot be used."""


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings. `render` reads the image/rendezvous ones; the handlers read the rest."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the training pods when an SFTJob does not set spec.image."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of the training container when an SFTJob does not set spec.imagePullPolicy."""
    namespaces: tuple[str, ...] = ()
    """Namespaces the operator watches; empty means the whole cluster."""
    rdzv_timeout_s: float = launch_env.DEFAULT_RDZV_TIMEOUT_S
    """How long each pod waits for the rank-0 endpoint (TRAINING_HUB_RDZV_TIMEOUT)."""
    cluster_domain: str = ""
    """When set (e.g. cluster.local), the rdzv endpoint is the Service's FQDN; else `<job>.<namespace>.svc`,
    which resolves through the pod's DNS search path in any cluster domain."""
    shm_size_limit: str | None = None
    """Default sizeLimit of the /dev/shm memory volume when an SFTJob does not set spec.shmSize."""
    force_delete_after_s: float = 300.0
    """A pod still Terminating this long after deletion (lost node) is removed with grace period 0."""
    default_trainer_resources: ResourceDefaults = ((), ())
    """(requests, limits) of the training container for the resources an SFTJob's spec.resources leaves out
    (render.py merges them per resource; the job's own values win)."""
    default_prepare_resources: ResourceDefaults = ((), ())
    """The same for the prepare pod (an SFTJob's spec.prepare.resources wins per resource)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "OperatorConfig":
        """Read every SFTJOB_OPERATOR_* variable; unset or empty ones keep their default. Reports all bad ones."""
        problems: list[str] = []
        values: dict[str, object] = {}

        def get(name: str) -> str:
            return environ.get(name, "").strip()

        if image := get(TRAINER_IMAGE):
            if any(ch.isspace() for ch in image):
                problems.append(f"{TRAINER_IMAGE}: must be an image reference without spaces (got {image!r})")
            values["trainer_image"] = image
        if policy := get(IMAGE_PULL_POLICY):
            if policy not in IMAGE_PULL_POLICIES:
                problems.append(f"{IMAGE_PULL_POLICY}: must be one of {', '.join(IMAGE_PULL_POLICIES)} (got {policy!r})")
            values["image_pull_policy"] = policy
        if raw := get(NAMESPACES):
            names = tuple(sorted({n.strip() for n in raw.split(",") if n.strip()}))
            bad = [n for n in names if not _DNS_LABEL.match(n) or len(n) > 63]
            if bad:
                problems.append(f"{NAMESPACES}: comma-separated namespace names (DNS labels); invalid: {', '.join(bad)}")
            values["namespaces"] = names
        for variable, name in ((RDZV_TIMEOUT, "rdzv_timeout_s"), (FORCE_DELETE_AFTER, "force_delete_after_s")):
            if raw := get(variable):
                try:
                    values[name] = launch_env.parse_timeout(raw)
                except ValueError as exc:
                    problems.append(f"{variable}: {exc}")
        if domain := get(CLUSTER_DOMAIN):
            domain = domain.rstrip(".")
            if not _DNS_NAME.match(domain):
                problems.append(f"{CLUSTER_DOMAIN}: must be a DNS name such as cluster.local (got {domain!r})")
            values["cluster_domain"] = domain
        if size := get(SHM_SIZE_LIMIT):
            if not re.match(QUANTITY_PATTERN, size):
                problems.append(f"{SHM_SIZE_LIMIT}: must be a Kubernetes quantity such as 16Gi (got {size!r})")
            values["shm_size_limit"] = size
        for variable, name in ((DEFAULT_TRAINER_RESOURCES, "default_trainer_resources"),
                               (DEFAULT_PREPARE_RESOURCES, "default_prepare_resources")):
            if raw := get(variable):
                try:
                    values[name] = parse_resource_defaults(raw)
                except ValueError as exc:
                    problems.append(f"{variable}: {exc}")
        if problems:
            raise ConfigError("invalid operator configuration:\n  - " + "\n  - ".join(problems))
        return cls(**values)  # type: ignore[arg-type]
