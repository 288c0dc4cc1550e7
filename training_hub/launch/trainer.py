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
import errno
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from training_hub.launch.exit_codes import EXIT_CODE_OF, Outcome

STATUS_SUCCEEDED = Outcome.SUCCEEDED.value
STATUS_INVALID_CONFIG = Outcome.INVALID_CONFIG.value
STATUS_FAILED = Outcome.FAILED.value


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


# File-system errors no retry can fix: a restart would only burn the job's backoffLimit.
PERMANENT_ERRNOS = frozenset({
    errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EACCES, errno.EPERM,
    errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST, errno.ENOTEMPTY, errno.EXDEV, errno.EFBIG,
})


def classify_error(exc: BaseException) -> str:
    """invalid_config when retrying cannot help, failed (retryable) for everything else.

    Permanent: our own verdicts on the input (`ParameterError`, `DataError`) and file-system errors
    in PERMANENT_ERRNOS (a path too long, missing, not writable, a full disk). Training failures
    (`TrainingFailedError`), launch problems and anything unknown are retryable. Workers run under
    torchrun in other processes, so their errors arrive here as TrainingFailedError.
    """
    from training_hub.data import DataError
    from training_hub.params import ParameterError

    if isinstance(exc, (ParameterError, DataError)):
        return STATUS_INVALID_CONFIG
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return STATUS_INVALID_CONFIG
    return STATUS_FAILED


def describe_error(exc: BaseException) -> str:
    """The message the summary carries: the error, with the path an OSError is about."""
    if isinstance(exc, OSError) and exc.errno is not None:
        paths = " -> ".join(repr(p) for p in (exc.filename, exc.filename2) if p is not None)
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{type(exc).__name__} [{name}] {exc.strerror or exc}" + (f": {paths}" if paths else "")
    return f"{type(exc).__name__}: {exc}"


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
        return {"status": classify_error(exc), "message": describe_error(exc), "result": None}
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
    return int(EXIT_CODE_OF[Outcome(outcome["status"])])


if __name__ == "__main__":
    sys.exit(main())
