"""Helpers for the entrypoint tests: run the real `training-hub` command in a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without TRAINING_HUB_*/PET_* settings (a developer's shell must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINING_HUB_", "PET_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def cli_command(args: Sequence[str], trainer: str | None = None) -> list[str]:
    """`python -m training_hub ARGS`, or the same `main` with the trainer function swapped."""
    if trainer is None:
        return [sys.executable, "-m", "training_hub", *args]
    code = f"import sys; from training_hub.launch.cli import main; sys.exit(main(sys.argv[1:], trainer={trainer!r}))"
    return [sys.executable, "-c", code, *args]


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, trainer: str | None = None, timeout: float = 120,
    cwd: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(args, trainer), env=dict(env or clean_env()), capture_output=True, text=True, timeout=timeout,
        cwd=cwd,
    )


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def write_params(path: Path, **params: Any) -> Path:
    path.write_text(json.dumps(params))
    return path


def valid_params(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "model").mkdir(exist_ok=True)
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    return {
        "modelPath": str(tmp_path / "model"),
        "dataPath": str(data),
        "ckptOutputDir": str(tmp_path / "ckpt"),
        "numEpochs": 1,
        "effectiveBatchSize": 8,
        "learningRate": 1e-5,
        "maxSeqLen": 512,
    }
