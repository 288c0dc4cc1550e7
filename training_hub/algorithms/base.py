"""The two abstractions of the library: an `Algorithm` (what to train) runs on a `Backend` (how)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Collection, Mapping


class Backend(ABC):
    """Executes one training run of an algorithm.

    `execute_training` receives the algorithm's parameters as one flat mapping of snake_case names
    (SFT parameters, distributed settings and backend-specific extras side by side), as in the
    reference implementation.
    """

    name: str = ""

    @abstractmethod
    def execute_training(self, algorithm_params: Mapping[str, Any]) -> Any:
        """Run training with these parameters and return the backend's result."""

    def extra_arg_names(self) -> Collection[str]:
        """Backend-specific keyword arguments this backend accepts beyond the algorithm's own.

        Called for every call, so it must be cheap (no heavy imports). A mapping of name -> type
        (as Python source, e.g. "int | None") also lets the values be checked before training.
        The default accepts none.
        """
        return ()

    def check(self, request: Any) -> None:
        """Cheap checks of a validated request against this machine before training starts (e.g. that
        the data file is usable, that the GPUs asked for exist). Raises ValueError. Default: none."""


class Algorithm(ABC):
    """A training algorithm: validates its parameters and delegates execution to a `Backend`."""

    def __init__(self, backend: Backend, **kwargs: Any):
        self.backend = backend
        self.config = kwargs

    @abstractmethod
    def train(self, **kwargs: Any) -> Any:
        """Run the algorithm and return the backend's result."""

    @abstractmethod
    def get_required_params(self) -> dict[str, type]:
        """Names and types of the parameters that define a run."""

    @abstractmethod
    def get_optional_params(self) -> dict[str, type]:
        """Names and types of the optional parameters."""
