"""Which algorithms exist and which backends run them; `create_algorithm` builds one by name."""

from __future__ import annotations

import difflib
from typing import Any

from training_hub.algorithms.base import Algorithm, Backend


def _unknown(kind: str, name: object, known: list[str]) -> ValueError:
    hint = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    return ValueError(
        f"unknown {kind} {name!r}; known: {', '.join(repr(k) for k in known) or 'none'}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
    )


class AlgorithmRegistry:
    """Class-level registry. The built-in algorithms register themselves on first use."""

    _algorithms: dict[str, type[Algorithm]] = {}
    _backends: dict[str, dict[str, type[Backend]]] = {}  # algorithm -> backend name -> class; first = default
    _builtins_loaded = False

    @classmethod
    def _load_builtins(cls) -> None:
        if not cls._builtins_loaded:
            cls._builtins_loaded = True
            import training_hub.algorithms.sft  # noqa: F401  (registers "sft" and its backends)

    @classmethod
    def register_algorithm(cls, name: str, algorithm_class: type[Algorithm]) -> None:
        if not (isinstance(algorithm_class, type) and issubclass(algorithm_class, Algorithm)):
            raise TypeError(f"algorithm {name!r}: {algorithm_class!r} is not an Algorithm subclass")
        cls._algorithms[name] = algorithm_class
        cls._backends.setdefault(name, {})

    @classmethod
    def register_backend(cls, algorithm_name: str, backend_name: str, backend_class: type[Backend]) -> None:
        if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
            raise TypeError(f"backend {backend_name!r}: {backend_class!r} is not a Backend subclass")
        if algorithm_name not in cls._algorithms:
            raise _unknown("algorithm", algorithm_name, cls.list_algorithms())
        cls._backends[algorithm_name][backend_name] = backend_class

    @classmethod
    def get_algorithm(cls, name: str) -> type[Algorithm]:
        cls._load_builtins()
        try:
            return cls._algorithms[name]
        except (KeyError, TypeError):
            raise _unknown("algorithm", name, cls.list_algorithms()) from None

    @classmethod
    def get_backend(cls, algorithm_name: str, backend_name: str | None = None) -> type[Backend]:
        """The backend class; the algorithm's default backend when `backend_name` is None."""
        cls.get_algorithm(algorithm_name)
        backends = cls._backends[algorithm_name]
        if backend_name is None:
            if not backends:
                raise ValueError(f"algorithm {algorithm_name!r} has no registered backend")
            return next(iter(backends.values()))
        try:
            return backends[backend_name]
        except (KeyError, TypeError):
            raise _unknown(f"backend for algorithm {algorithm_name!r}:", backend_name, list(backends)) from None

    @classmethod
    def list_algorithms(cls) -> list[str]:
        cls._load_builtins()
        return list(cls._algorithms)

    @classmethod
    def list_backends(cls, algorithm_name: str) -> list[str]:
        cls.get_algorithm(algorithm_name)
        return list(cls._backends[algorithm_name])


def create_algorithm(algorithm_name: str, backend_name: str | None = None, **kwargs: Any) -> Algorithm:
    """An algorithm instance on a backend, both by name: `create_algorithm("sft", "instructlab-training")`."""
    algorithm_class = AlgorithmRegistry.get_algorithm(algorithm_name)
    backend_class = AlgorithmRegistry.get_backend(algorithm_name, backend_name)
    return algorithm_class(backend=backend_class(), **kwargs)
