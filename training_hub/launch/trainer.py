"""The training process the entrypoint supervises: `python -m training_hub.launch.trainer REQUEST RESULT`.

It reads the `sft()` keyword arguments from the REQUEST json file, calls `training_hub.sft(**kwargs)`
(the request names the function: `{"function": "training_hub:sft", "kwargs": {...}}`)
and writes what happened to the RESULT json file:

    {"status": "succeeded" | "invalid_config" | "failed", "message": "...", "result": {...} | null}

Training runs here, not in the entrypoint itself, so that the entrypoint (PID 1 of the container)
stays responsive to SIGTERM and always writes the termination summary, even if training crashes
hard. On SIGTERM/SIGINT this process forwards the signal to its own children (torchrun, which
stops its workers) and interrupts `run_training` as a Ctrl-C would, so instructlab's own shutdown
path runs. (With instructlab's on-demand checkpointing enabled, instructlab replaces this handler
while training runs and saves a checkpoint instead; the entrypoint still reports "preempted".)
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

STATUS_SUCCEEDED = "succeeded"
STATUS_INVALID_CONFIG = "invalid_config"
STATUS_FAILED = "failed"
EXIT_OF_STATUS = {STATUS_SUCCEEDED: 0, STATUS_INVALID_CONFIG: 78, STATUS_FAILED: 1}


def child_pids(pid: int | None = None) -> list[int]:
    """Direct children of a process (Linux /proc); empty where that is not available."""
    task_dir = Path(f"/proc/{pid or os.getpid()}/task")
    pids: list[int] = []
    try:
        for task in task_dir.iterdir():
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        return []
    return sorted(set(pids))


def forward_signal_to_children(signum: int) -> list[int]:
    sent = []
    for pid in child_pids():
        try:
            os.kill(pid, signum)
            sent.append(pid)
        except ProcessLookupError:
            pass
    return sent


def install_forwarding_handlers() -> None:
    def handle(signum: int, _frame: Any) -> None:
        forward_signal_to_children(signum)
        # Only the first signal interrupts; later ones must not break instructlab's cleanup.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: forward_signal_to_children(s))
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def result_to_jsonable(result: Any) -> Any:
    """A TrainingResult (dataclass, pydantic model or plain object) as JSON-ready data."""
    if result is None or isinstance(result, (str, int, float, bool)):
        return result
    if isinstance(result, os.PathLike):
        return os.fspath(result)
    if isinstance(result, dict):
        return {str(k): result_to_jsonable(v) for k, v in result.items()}
    if isinstance(result, (list, tuple, set, frozenset)):
        return [result_to_jsonable(v) for v in result]
    if hasattr(result, "model_dump"):
        return result_to_jsonable(result.model_dump())
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return result_to_jsonable({f.name: getattr(result, f.name) for f in dataclasses.fields(result)})
    if hasattr(result, "__dict__"):
        return result_to_jsonable({k: v for k, v in vars(result).items() if not k.startswith("_")})
    return str(result)


def classify_error(exc: BaseException) -> str:
    """invalid_config for bad inputs (retrying cannot help), failed for everything else.

    Workers run under torchrun in other processes, so their errors reach this process as the
    RuntimeError of run_training; a ValueError here comes from validation or data processing, i.e.
    from the parameters or the data.
    """
    from training_hub.params import ParameterError

    if isinstance(exc, (ParameterError, ValueError)):
        return STATUS_INVALID_CONFIG
    return STATUS_FAILED


def resolve_function(spec: str) -> Callable[..., Any]:
    """`module:function` -> the function (the entrypoint always asks for `training_hub:sft`)."""
    import importlib

    module_name, _, function_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def run(request: dict[str, Any]) -> dict[str, Any]:
    train = resolve_function(request.get("function") or "training_hub:sft")
    try:
        result = train(**request["kwargs"])
    except KeyboardInterrupt as exc:
        return {"status": STATUS_FAILED, "message": f"training interrupted ({exc})", "result": None}
    except Exception as exc:  # every failure becomes a result the entrypoint can report
        traceback.print_exc()
        return {"status": classify_error(exc), "message": f"{type(exc).__name__}: {exc}", "result": None}
    return {"status": STATUS_SUCCEEDED, "message": "training finished", "result": result_to_jsonable(result)}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m training_hub.launch.trainer REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request_path, result_path = args
    install_forwarding_handlers()
    request = json.loads(Path(request_path).read_text())
    outcome = run(request)
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(outcome, default=str))
    tmp.replace(result_path)  # atomic: the entrypoint never reads half a result
    return EXIT_OF_STATUS[outcome["status"]]


if __name__ == "__main__":
    sys.exit(main())
