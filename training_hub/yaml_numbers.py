"""YAML with YAML 1.2 numbers, for config files and manifests read in Python.

PyYAML implements YAML 1.1, where `1e-5` (no dot) is a string; Kubernetes and most YAML tools read
it as a number. With strict parameter types that difference would turn `learningRate: 1e-5` into
an error, so every YAML the project reads goes through this loader.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any


@cache
def yaml12_loader() -> Any:
    """A `yaml.SafeLoader` subclass that also reads `1e-5`, `2E3` and `.5` as floats."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
                   r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."),
    )
    return Loader
