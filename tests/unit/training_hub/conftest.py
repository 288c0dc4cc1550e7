"""Fixtures for the library tests: a tiny local model and datasets (training_hub.testing), built once."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from training_hub.testing import TinyModel, build_tiny_model, write_chat_dataset, write_pretraining_dataset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat_dataset(tmp_path_factory.mktemp("data") / "chat.jsonl", n_samples=40, seed=7)


@pytest.fixture(scope="session")
def pretraining_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pretraining_dataset(tmp_path_factory.mktemp("data") / "docs.jsonl", n_docs=12, seed=3)


@pytest.fixture
def stand_in_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put an executable `torchrun` with the given script body first on PATH; returns its path.

    It stands in for the real launcher where a CPU machine cannot run training (instructlab's
    trainer needs CUDA): everything before the launch (validation, mapping, instructlab's data
    processing, `run_training` itself) is real.
    """
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")

    def write(body: str, *, interpreter: str = sys.executable) -> Path:
        path = directory / "torchrun"
        path.write_text(f"#!{interpreter}\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    return write
