"""What is generated from the models or from instructlab, and checked here to be current."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys

from training_hub import SFTAlgorithm, sft
from training_hub.algorithms import signature
from training_hub.backends import training_args_fields
from training_hub.params import DISTRIBUTED_FIELDS, SFT_FIELDS, DistributedParams, SFTParams


def test_training_args_table_matches_the_installed_instructlab():
    from importlib.metadata import version

    from instructlab.training import TrainingArgs

    assert training_args_fields.INSTRUCTLAB_TRAINING_VERSION == version("instructlab-training")
    assert list(training_args_fields.TRAINING_ARGS_FIELDS) == list(TrainingArgs.model_fields)
    text = open(training_args_fields.__file__).read()
    assert training_args_fields.generate() in text, (
        "stale table: run python -m training_hub.backends.training_args_fields --write")


def test_signatures_in_sft_py_are_the_generated_ones():
    current = signature.current_blocks(signature.SFT_FILE.read_text())
    assert current == signature.expected_blocks(), "stale: run python -m training_hub.algorithms.signature --write"


def test_every_parameter_of_the_models_is_in_both_signatures_with_its_default():
    for function, skip in ((sft, 0), (SFTAlgorithm.train, 1)):
        params = dict(list(inspect.signature(function).parameters.items())[skip:])
        assert set(params) == SFT_FIELDS | DISTRIBUTED_FIELDS | {"extra_args", "backend", "kwargs"}
        for name in SFT_FIELDS:
            info = SFTParams.model_fields[name]
            expected = inspect.Parameter.empty if info.is_required() else info.default
            assert params[name].default == expected, name
        for name in DISTRIBUTED_FIELDS:  # None: from the launcher's environment, else the model's default
            assert params[name].default is None and "None" in params[name].annotation
        assert [p.kind for p in params.values()][:3] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
        assert params["num_epochs"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["num_epochs"].annotation == "int" and params["learning_rate"].annotation == "float"
        assert params["model_path"].annotation == "str | os.PathLike[str]"


def test_help_shows_every_parameter_with_its_description():
    text = pydoc.render_doc(sft, renderer=pydoc.plaintext)
    for name, info in {**SFTParams.model_fields, **DistributedParams.model_fields}.items():
        assert f"{name}:" in text
        assert " ".join((info.description or "").split()[:4]) in " ".join(text.split()), name
    assert "max_seq_len: 'int'" in text and "is_pretraining: 'bool' = False" in text


def test_signature_and_table_do_not_import_instructlab():
    code = ("import sys, time; t = time.perf_counter(); import inspect, training_hub; inspect.signature(training_hub.sft);"
            " from training_hub.backends.training_args_fields import TRAINING_ARGS_FIELDS;"
            " print(sorted(m for m in ('torch', 'instructlab', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
