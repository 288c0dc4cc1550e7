"""`training-hub sft | prepare | preflight | params`: what each SFTJob pod runs (also `python -m training_hub`).

    training-hub sft --config /etc/training-hub/params.json [--num-epochs 3 ...]
    training-hub prepare --config /etc/training-hub/params.json [--force]

Parameters come from the config file (JSON or YAML, camelCase or snake_case SFTParams), then the
TRAINING_HUB_* environment (distributed settings), then flags: later ones win. The command checks
everything it can cheaply (exit INVALID_CONFIG with every problem named), waits for the rendezvous
endpoint (exit RENDEZVOUS_TIMEOUT), runs `training_hub.sft` in a supervised child process while
printing progress lines, and writes the termination summary. See docs/entrypoint.md.

Importing this module stays light: torch loads only in the trainer and preflight processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from training_hub.launch import env as launch_env
from training_hub.launch.exit_codes import EXIT_CODE_OF, ExitCode, Outcome, exit_code_for_signal_death
from training_hub.backends.metrics import metrics_path
from training_hub.launch.progress import ConsoleWriter, MetricsTailer, format_progress_line, progress_event
from training_hub.launch.rendezvous import RendezvousTimeout, wait_for_endpoint
from training_hub.launch.summary import build_summary, write_summary
from training_hub.launch.supervisor import ChildExit, Interrupted, SignalState, run_child
from training_hub.launch.worker_failure import TorchrunOutputWatch

PROG = "training-hub"
USAGE = 2  # no command given: the help is printed
DEFAULT_TRAINER = "training_hub:sft"  # module:function the trainer process calls with the sft() kwargs


class ConfigError(ValueError):
    """The configuration cannot be used (permanent: exit INVALID_CONFIG)."""


class _Parser(argparse.ArgumentParser):
    # A usage error is a configuration error for the operator: permanent, reported in the summary.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


# ---------------------------------------------------------------- configuration (pure functions)


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping of parameters. Raises ConfigError naming the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read the file ({exc})") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--config {path}: not valid JSON ({exc})") from None
    else:
        import yaml  # YAML is a superset of JSON: also reads .json-like files with other names

        from training_hub.yaml_numbers import yaml12_loader

        try:
            data = yaml.load(text, Loader=yaml12_loader())  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must hold a mapping of parameter names to values (got {type(data).__name__})")
    return {str(key): value for key, value in data.items()}


def merge_settings(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge parameter mappings, later layers winning, under snake_case names (camelCase accepted).

    One layer (e.g. a config file) that spells one parameter both ways is an error naming both.
    """
    from training_hub.backends.training_args_fields import TRAINING_ARGS_FIELDS
    from training_hub.params import _MODEL_FIELDS, ParameterError, canonical_name, spelling_conflicts

    known = _MODEL_FIELDS | set(TRAINING_ARGS_FIELDS)
    merged: dict[str, Any] = {}
    for layer in layers:
        conflicts = spelling_conflicts(layer, known)
        if conflicts:
            raise ParameterError(conflicts)
        for name, value in layer.items():
            merged[canonical_name(name, known)] = value
    return merged


def check_train_kwargs(kwargs: Mapping[str, Any]):
    """Check the `sft()` arguments as `sft()` itself will, without importing the backend: every
    parameter, backend argument, local path and the data file. Returns the TrainRequest."""
    from training_hub.algorithms.registry import AlgorithmRegistry

    params = {k: v for k, v in kwargs.items() if k != "backend"}
    backend = AlgorithmRegistry.get_backend("sft", kwargs.get("backend"))()
    algorithm = AlgorithmRegistry.get_algorithm("sft")(backend)
    return algorithm.validate(params, environ={})  # the environment is one of the merged layers already


def progress_global_rank(node_rank: int, nproc_per_node: int | None) -> int | None:
    """Global rank of this node's local rank 0: the process that writes this node's metrics file."""
    if node_rank == 0:
        return 0
    return node_rank * nproc_per_node if nproc_per_node else None


def decide_training_outcome(child: ChildExit, report: Mapping[str, Any] | None) -> tuple[Outcome, int, str]:
    """(outcome, exit code, message) of a supervised training run."""
    status = (report or {}).get("status")
    message = str((report or {}).get("message") or "")
    if child.signal_received is not None and not (child.finished_before_signal and status == "succeeded"):
        name = signal.Signals(child.signal_received).name
        detail = f" (trainer: {message})" if message else ""
        return (
            Outcome.PREEMPTED,
            128 + child.signal_received,
            f"received {name} before training finished; resume by restarting with the same ckpt_output_dir{detail}",
        )
    if status == "succeeded" and child.returncode == 0:
        return Outcome.SUCCEEDED, ExitCode.SUCCESS, message or "training finished"
    if status == "invalid_config":
        return Outcome.INVALID_CONFIG, ExitCode.INVALID_CONFIG, message
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        return Outcome.FAILED, exit_code_for_signal_death(child.returncode), f"trainer killed by {name}. {message}".strip()
    if report is None:
        return Outcome.FAILED, ExitCode.TRAINING_FAILED, f"trainer exited with code {child.returncode} without a result"
    return Outcome.FAILED, ExitCode.TRAINING_FAILED, message or f"trainer exited with code {child.returncode}"


def training_summary(
    outcome: Outcome, message: str, report: Mapping[str, Any] | None, last_event: Mapping[str, Any] | None
) -> dict[str, Any]:
    result = (report or {}).get("result") or {}
    last = progress_event(result.get("last_metrics") or {}) or dict(last_event or {})
    return build_summary(
        outcome,
        message,
        final_checkpoint=result.get("final_checkpoint"),
        epoch=last.get("epoch"),
        step=last.get("step"),
        loss=last.get("loss"),
        resumed_from_epoch=result.get("resumed_from_epoch"),
    )


# ---------------------------------------------------------------- argument parsing


def _whole_number(minimum: int | None = None) -> Any:
    """An argparse type: ASCII digits only (int() would also take full-width digits), at least `minimum`."""
    bound = "" if minimum is None else f" >= {minimum}"

    def convert(raw: str) -> int:
        if not re.fullmatch(r"[-+]?[0-9]+", raw.strip()) or (minimum is not None and int(raw) < minimum):
            raise argparse.ArgumentTypeError(f"must be a whole number{bound} (got {raw!r})")
        return int(raw)

    return convert


def _finite_number(raw: str) -> float:
    try:
        value = float(raw) if raw.isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {raw!r})")
    return value


def _positive_number(raw: str) -> float:
    value = _finite_number(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {raw!r})")
    return value


_FLAG_TYPES: dict[str, tuple[Any, str]] = {"int": (_whole_number(), "INT"), "float": (_finite_number, "FLOAT")}


def _field_flag(group: Any, name: str, info: Any, *, env: str | None = None) -> None:
    """One flag for a model field: its type, metavar, and default or required marker in the help."""
    from training_hub.algorithms.signature import type_source

    flag = "--" + name.replace("_", "-")
    kind = type_source(info.annotation).replace(" | None", "")
    description = (info.description or "").strip().rstrip(".")
    if env:
        marker = f"[{env}]"
    elif info.is_required():
        marker = "(required, here or in --config)"
    elif info.default is None:
        marker = "" if "default" in description.lower() or "required when" in description.lower() else "(optional)"
    else:
        marker = f"(default: {info.default!r})"
    help_text = f"{description}. {marker}".strip().replace("%", "%%")
    if kind == "bool":
        group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    convert, metavar = _FLAG_TYPES.get(kind, (str, "PATH" if name.endswith(("_path", "_dir")) else "TEXT"))
    if name == "rdzv_endpoint":
        metavar = "HOST:PORT"
    group.add_argument(flag, dest=name, default=None, type=convert, metavar=metavar, help=help_text)


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    from training_hub.params import DistributedParams

    group = parser.add_argument_group(
        "distributed (each flag wins over its TRAINING_HUB_* variable, which wins over torchrun's PET_*)")
    variables = {field: variable for variable, field in launch_env.DISTRIBUTED_VARIABLES.items()}
    for name, info in DistributedParams.model_fields.items():
        _field_flag(group, name, info, env=variables[name])
    group.add_argument("--rdzv-timeout", type=_positive_number, metavar="SECONDS",
                       help=f"seconds to wait for the endpoint [{launch_env.RDZV_TIMEOUT}, default 600]")
    group.add_argument("--termination-log", metavar="PATH", help=(
        f"where the JSON summary goes [{launch_env.TERMINATION_LOG}; default {launch_env.DEFAULT_TERMINATION_LOG} "
        "inside a Kubernetes pod, else none]"))


def _sft_flag_fields() -> dict[str, Any]:
    from training_hub.params import SFTParams

    return {name: info for name, info in SFTParams.model_fields.items() if name != "extra_args"}


EXIT_CODES_HELP = """exit codes:
  0    succeeded: training returned a result (a checkpoint was saved)
  1    failed: training failed (retryable)
  2    no command given (this help)
  69   rendezvous_timeout: the rdzv endpoint did not come up in time (retryable)
  78   invalid_config: bad parameters, flags, environment, config file, paths or data (permanent)
  143  preempted: SIGTERM before training finished (resume from the last full state)
  128+N  the trainer was killed by signal N (137: SIGKILL, e.g. the OOM killer)"""

SFT_EPILOG = f"""parameters come from, later ones winning:
  1. --config FILE: JSON (.json) or YAML; SFT parameter names in camelCase (numEpochs) or snake_case
     (num_epochs), never both for one parameter; extraArgs holds instructlab TrainingArgs fields
  2. the environment: TRAINING_HUB_NNODES, _NODE_RANK, _NPROC_PER_NODE, _RDZV_ID, _RDZV_ENDPOINT,
     _RDZV_TIMEOUT, _TERMINATION_LOG; torchrun's PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE,
     PET_RDZV_ID, PET_RDZV_ENDPOINT (or PET_MASTER_ADDR + PET_MASTER_PORT) where those are unset
  3. the flags below
'{PROG} params' prints every parameter with its description.

{EXIT_CODES_HELP}"""


def _add_sft_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of SFT parameters (camelCase or snake_case)")
    params = parser.add_argument_group("SFT parameters (each wins over the config file)")
    for name, info in _sft_flag_fields().items():
        _field_flag(params, name, info)
    params.add_argument("--backend", default=None, metavar="NAME", help='training backend (default: "instructlab-training")')
    params.add_argument(
        "--extra", action="append", default=[], metavar="NAME=VALUE",
        help="a TrainingArgs field passed to the backend (VALUE parsed as JSON when it is JSON); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    from training_hub import __version__

    parser = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Supervised fine-tuning on instructlab-training: the library's command and the SFTJob pod entrypoint.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    sft = commands.add_parser(
        "sft", help="train (what an SFTJob pod runs)", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run supervised fine-tuning: check everything, wait for the rendezvous, train, write the summary.",
        epilog=SFT_EPILOG,
    )
    _add_sft_flags(sft)
    _add_distributed_flags(sft)

    prepare = commands.add_parser(
        "prepare", help="prepare the data once, on CPU (what an SFTJob's prepare pod runs)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP,
        description="Run instructlab's data processing once into data_output_dir, atomically, with a manifest that "
        "later training runs match against to skip processing. Takes the parameters of `sft`.",
    )
    _add_sft_flags(prepare)
    prepare.add_argument("--force", action="store_true", help="prepare again even when a matching manifest exists")
    prepare.add_argument("--termination-log", metavar="PATH", help=(
        f"where the JSON summary goes [{launch_env.TERMINATION_LOG}; default {launch_env.DEFAULT_TERMINATION_LOG} "
        "inside a Kubernetes pod, else none]"))

    preflight = commands.add_parser(
        "preflight", help="all-reduce across the gang under torchrun, print bandwidth",
        description="Check the gang's rendezvous and collective bandwidth before training.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP,
    )
    preflight.add_argument("--size-mb", default=64.0, type=_positive_number, metavar="MIB",
                           help="all-reduce size in MiB for the bandwidth figure (default: 64)")
    preflight.add_argument("--iters", default=5, type=_whole_number(1), metavar="INT", help="timed all-reduces (default: 5)")
    preflight.add_argument("--warmup", default=1, type=_whole_number(0), metavar="INT",
                           help="untimed all-reduces first (default: 1)")
    preflight.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto", help="auto: NCCL with CUDA, else gloo")
    _add_distributed_flags(preflight)

    reference = commands.add_parser("params", help="print the SFT parameter reference")
    reference.add_argument("--json-schema", action="store_true", help="print the JSON schema instead")
    return parser


def _flag_distributed(args: argparse.Namespace) -> dict[str, Any]:
    names = ("nnodes", "node_rank", "nproc_per_node", "rdzv_id", "rdzv_endpoint")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _parse_extra(pairs: Sequence[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--extra: expected NAME=VALUE (got {pair!r})")
        try:
            extra[name] = json.loads(raw)
        except ValueError:
            extra[name] = raw
    return extra


# ---------------------------------------------------------------- commands


class _Run:
    """State shared by a command's steps: where the summary goes, and the signals received."""

    def __init__(self, termination_log: str | None):
        self.termination_log = termination_log  # None: no summary file (outside a pod, none asked for)
        self.signals = SignalState().install()

    def finish(self, outcome: Outcome, message: str, code: int | None = None, summary: dict | None = None) -> int:
        summary = summary or build_summary(outcome, message)
        write_summary(summary, self.termination_log)
        stream = sys.stdout if outcome is Outcome.SUCCEEDED else sys.stderr
        print(f"{PROG}: {outcome.value}: {message}", file=stream, flush=True)
        self.signals.uninstall()
        return int(EXIT_CODE_OF[outcome] if code is None else code)


def _termination_log(args: argparse.Namespace | None, environ: Mapping[str, str]) -> str | None:
    """The flag, else the variable, else /dev/termination-log inside a Kubernetes pod (KUBERNETES_SERVICE_HOST
    is set in every pod); elsewhere no summary file unless asked for."""
    flag = getattr(args, "termination_log", None) if args is not None else None
    asked = flag or environ.get(launch_env.TERMINATION_LOG, "").strip()
    if asked:
        return asked
    return launch_env.DEFAULT_TERMINATION_LOG if environ.get("KUBERNETES_SERVICE_HOST") else None


def _rdzv_timeout(args: argparse.Namespace, launch: launch_env.LaunchEnvironment) -> float:
    return launch.rdzv_timeout_s if args.rdzv_timeout is None else args.rdzv_timeout


def _wait_for_rendezvous(run: _Run, distributed: Any, timeout_s: float) -> int | None:
    """Exit code when waiting failed, None when the endpoint is ready (or there is none)."""
    if not distributed.rdzv_endpoint:
        return None
    try:
        wait_for_endpoint(distributed.rdzv_endpoint, node_rank=distributed.node_rank, timeout_s=timeout_s)
    except RendezvousTimeout as exc:
        return run.finish(Outcome.RENDEZVOUS_TIMEOUT, str(exc))
    return None


def command_sft(args: argparse.Namespace, environ: Mapping[str, str], trainer: str = DEFAULT_TRAINER) -> int:
    run = _Run(_termination_log(args, environ))
    try:
        try:
            launch = launch_env.read_launch_environment(environ)
            kwargs = _sft_settings(args, launch.distributed, _flag_distributed(args))
            request = check_train_kwargs(kwargs)
            timeout_s = _rdzv_timeout(args, launch)
        except ValueError as exc:  # ConfigError, ParameterError, LaunchEnvironmentError
            return run.finish(Outcome.INVALID_CONFIG, str(exc))

        failed = _wait_for_rendezvous(run, request.distributed, timeout_s)
        if failed is not None:
            return failed
        return _train(run, kwargs, request, trainer)
    except Interrupted as exc:
        return run.finish(Outcome.PREEMPTED, f"{exc} before training started", 128 + exc.signum)


def _sft_settings(args: argparse.Namespace, *distributed: Mapping[str, Any]) -> dict[str, Any]:
    """The sft() keyword arguments: config file, then the distributed layers, then flags (later ones win)."""
    file_values = load_config_file(args.config) if args.config else {}
    flag_values = {name: getattr(args, name) for name in _sft_flag_fields() if getattr(args, name) is not None}
    if args.backend is not None:
        flag_values["backend"] = args.backend
    extra = _parse_extra(args.extra)
    if extra:
        file_extra = merge_settings(file_values).get("extra_args") or {}
        flag_values["extra_args"] = {**(file_extra if isinstance(file_extra, Mapping) else {}), **extra}
    return merge_settings(file_values, *distributed, flag_values)


def command_prepare(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`training-hub prepare`: the data processing of `sft`, once, in this process (no GPU, no rendezvous)."""
    from training_hub.params import DISTRIBUTED_FIELDS

    run = _Run(_termination_log(args, environ))
    try:
        try:
            kwargs = {k: v for k, v in _sft_settings(args).items() if k not in DISTRIBUTED_FIELDS}
            check_train_kwargs(kwargs)
        except ValueError as exc:
            return run.finish(Outcome.INVALID_CONFIG, str(exc))
        from training_hub.algorithms.sft import prepare_data

        kwargs.pop("backend", None)
        try:
            prepared = prepare_data(force=args.force, **kwargs)
        except Interrupted:
            raise  # preempted, not failed (below)
        except Exception as exc:  # permanent (bad data, a path too long, a full volume) or retryable, as in training
            from training_hub.launch.trainer import STATUS_INVALID_CONFIG, classify_error, describe_error

            if classify_error(exc) == STATUS_INVALID_CONFIG:
                return run.finish(Outcome.INVALID_CONFIG, str(exc) if isinstance(exc, ValueError) else describe_error(exc))
            return run.finish(Outcome.FAILED, f"data preparation failed: {describe_error(exc)}")
        extra = {"data_output_dir": str(prepared.data_output_dir), "samples": prepared.samples,
                 "reused": prepared.reused, "seconds": round(prepared.seconds, 3)}
        message = prepared.describe()
        return run.finish(Outcome.SUCCEEDED, message, summary=build_summary(Outcome.SUCCEEDED, message, extra=extra))
    except Interrupted as exc:
        return run.finish(Outcome.PREEMPTED, f"{exc} while preparing the data", 128 + exc.signum)


def _train(run: _Run, kwargs: Mapping[str, Any], request: Any, trainer: str) -> int:
    console = ConsoleWriter()
    rank = progress_global_rank(request.distributed.node_rank, request.distributed.nproc_per_node)
    tailer = None
    if rank is not None:
        path = metrics_path(request.params.ckpt_output_dir, rank)
        tailer = MetricsTailer(path, lambda event: console.line(format_progress_line(event))).start()
    with _scratch_directory(request.params.ckpt_output_dir) as workdir:
        request_file, result_file = Path(workdir, "request.json"), Path(workdir, "result.json")
        request_file.write_text(json.dumps({"function": trainer, "kwargs": dict(kwargs)}, default=str))
        run.signals.done_marker = str(result_file)
        run.signals.on_first_signal = lambda signum: write_summary(
            training_summary(
                Outcome.PREEMPTED,
                f"received {signal.Signals(signum).name}; stopping training (this summary is replaced when it stops)",
                None,
                tailer.last_event if tailer else None,
            ),
            run.termination_log,
        )
        command = [sys.executable, "-m", "training_hub.launch.trainer", str(request_file), str(result_file)]
        workers = TorchrunOutputWatch()
        child = run_child(command, run.signals, console, on_line=workers.feed)
        if tailer is not None:
            tailer.stop()
        report = _read_report(result_file)
    outcome, code, message = decide_training_outcome(child, report)
    extra: dict[str, Any] = {}
    if outcome == Outcome.FAILED:
        message, code, extra = workers.explain(message, code)
    summary = training_summary(outcome, message, report, tailer.last_event if tailer else None)
    return run.finish(outcome, message, code, {**summary, **extra})


def _scratch_directory(ckpt_output_dir: str) -> tempfile.TemporaryDirectory:
    """A private directory for the request/result files: the temp dir, or the checkpoint dir when
    the container has no writable temp dir (readOnlyRootFilesystem without an emptyDir on /tmp)."""
    try:
        return tempfile.TemporaryDirectory(prefix="training-hub-")
    except OSError:
        Path(ckpt_output_dir).mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=".training-hub-", dir=ckpt_output_dir)


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def command_preflight(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from training_hub.launch import preflight

    run = _Run(_termination_log(args, environ))
    try:
        try:
            launch = launch_env.read_launch_environment(environ)
            distributed = _check_distributed(merge_settings(launch.distributed, _flag_distributed(args)))
            timeout_s = _rdzv_timeout(args, launch)
            size_bytes = int(args.size_mb * 1024 * 1024)
            iters, warmup = args.iters, args.warmup
        except ValueError as exc:
            return run.finish(Outcome.INVALID_CONFIG, str(exc))
        failed = _wait_for_rendezvous(run, distributed, timeout_s)
        if failed is not None:
            return failed
        nproc = distributed.nproc_per_node or _visible_gpus() or 1
        command = preflight.torchrun_command(
            nnodes=distributed.nnodes,
            node_rank=distributed.node_rank,
            nproc_per_node=nproc,
            rdzv_id=distributed.rdzv_id if distributed.rdzv_id is not None else "preflight",
            rdzv_endpoint=distributed.rdzv_endpoint,
            worker_args=preflight.worker_args(size_bytes=size_bytes, iters=iters, warmup=warmup, backend=args.backend),
        )
        reports: list[dict[str, Any]] = []
        workers = TorchrunOutputWatch()

        def on_line(line: str) -> None:
            workers.feed(line)
            _collect_report(line, reports)

        child = run_child(command, run.signals, ConsoleWriter(), on_line=on_line)
        if child.signal_received is not None:
            name = signal.Signals(child.signal_received).name
            return run.finish(Outcome.PREEMPTED, f"received {name} during preflight", 128 + child.signal_received)
        if child.returncode != 0:
            message, code, extra = workers.explain(
                f"torchrun exited with code {child.returncode} (node rank {distributed.node_rank} of "
                f"{distributed.nnodes}, endpoint {distributed.rdzv_endpoint})",
                exit_code_for_signal_death(child.returncode) if child.returncode < 0 else ExitCode.TRAINING_FAILED,
            )
            message = f"preflight failed: {message}"
            return run.finish(Outcome.FAILED, message, code, build_summary(Outcome.FAILED, message, extra=extra))
        message = f"all-reduce sum correct on every rank (node rank {distributed.node_rank} of {distributed.nnodes})"
        if reports:
            r = reports[-1]
            message += (
                f"; {r['world_size']} ranks ({r['backend']}): {r['size_bytes']} bytes, "
                f"algbw {r['algbw_gbps']:.3f} GB/s, busbw {r['busbw_gbps']:.3f} GB/s"
            )
        return run.finish(Outcome.SUCCEEDED, message)
    except Interrupted as exc:
        return run.finish(Outcome.PREEMPTED, f"{exc} before preflight started", 128 + exc.signum)


def _collect_report(line: str, reports: list[dict[str, Any]]) -> None:
    line = line.strip()
    if line.startswith("{") and '"preflight"' in line:
        report = json.loads(line)
        if report.get("event") == "preflight" and report.get("ok"):
            reports.append(report)


def _check_distributed(values: Mapping[str, Any]):
    from pydantic import ValidationError

    from training_hub.params import DistributedParams, ParameterError, validation_problems

    try:
        return DistributedParams.model_validate(dict(values))
    except ValidationError as exc:
        raise ParameterError(validation_problems(exc)) from None


def _visible_gpus() -> int:
    import torch  # only here: preflight without an explicit process count

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def command_params(args: argparse.Namespace) -> int:
    from training_hub.params import DistributedParams, SFTParams

    if args.json_schema:
        print(json.dumps({"SFTParams": SFTParams.model_json_schema(), "DistributedParams": DistributedParams.model_json_schema()}, indent=2))
        return 0
    for model in (SFTParams, DistributedParams):
        print(f"{model.__name__}: {(model.__doc__ or '').strip()}")
        for name, info in model.model_fields.items():
            default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
            alias = info.alias or name
            print(f"  {name} ({alias}) [{default}]\n      {info.description or ''}")
        print()
    return 0


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, *, trainer: str = DEFAULT_TRAINER
) -> int:
    """The console command. `trainer` is the function the training process calls (tests swap it)."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ConfigError as exc:
        summary_path = _termination_log(None, environ)
        if summary_path is not None:
            write_summary(build_summary(Outcome.INVALID_CONFIG, str(exc)), summary_path)
        print(f"{exc}\n(see '{PROG} --help')", file=sys.stderr)
        return int(ExitCode.INVALID_CONFIG)
    if args.command is None:  # a bare `training-hub`: show what it does
        parser.print_help()
        return USAGE
    if args.command == "sft":
        return command_sft(args, environ, trainer)
    if args.command == "prepare":
        return command_prepare(args, environ)
    if args.command == "preflight":
        return command_preflight(args, environ)
    return command_params(args)


if __name__ == "__main__":
    sys.exit(main())
