"""The operator's own configuration (not per job), read from the environment of the operator pod.

Every setting has a default that works on a plain cluster; the Helm chart sets the variables.
A bad value raises `ConfigError` naming the variable and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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

IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


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
        if problems:
            raise ConfigError("invalid operator configuration:\n  - " + "\n  - ".join(problems))
        return cls(**values)  # type: ignore[arg-type]
