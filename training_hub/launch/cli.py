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

PROG = "training-hub"
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

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must hold a mapping of parameter names to values (got {type(data).__name__})")
    return {str(key): value for key, value in data.items()}


def canonical_name(name: str) -> str:
    """The snake_case name of an SFT/distributed parameter given in either spelling; other names unchanged.

    (Other names are backend TrainingArgs fields, which are snake_case already.)
    """
    from training_hub.params import DISTRIBUTED_FIELDS, SFT_FIELDS

    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return snake if snake in SFT_FIELDS | DISTRIBUTED_FIELDS | {"extra_args"} else name


def merge_settings(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge parameter mappings, later layers winning, under snake_case names (camelCase accepted)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.items():
            merged[canonical_name(name)] = value
    return merged


def check_train_kwargs(kwargs: Mapping[str, Any]):
    """Check the `sft()` arguments as far as possible without importing the backend.

    Names that are not SFT or distributed parameters are left for the trainer to check against
    instructlab's TrainingArgs (importing those costs seconds); everything else is checked here,
    all problems at once, plus that the data path exists. Returns the TrainRequest.
    """
    from training_hub.params import SFT_FIELDS, DISTRIBUTED_FIELDS, ParameterError, parse_train_kwargs

    known = SFT_FIELDS | DISTRIBUTED_FIELDS
    params = {k: v for k, v in kwargs.items() if k != "backend"}
    extra = params.get("extra_args") or {}
    if not isinstance(extra, Mapping):
        raise ParameterError([f"extra_args: must be a mapping of TrainingArgs names to values (got {extra!r})"])
    unknown = {k for k in params if k not in known and k != "extra_args"}
    # A near miss of an SFT parameter is a typo, reported now with its "did you mean" (no TrainingArgs
    # field of instructlab-training 0.16 comes this close to one; a test checks that).
    deferred = {k for k in unknown if not looks_like_typo(k)}
    data_path = params.get("data_path")
    missing = (
        [f"data_path: no such file or directory: {data_path!r} (a JSONL file or a directory of them)"]
        if isinstance(data_path, str) and data_path and not os.path.exists(data_path)
        else []
    )
    try:
        request = parse_train_kwargs(params, backend_arg_names=deferred | set(extra))
    except ParameterError as exc:
        raise ParameterError(exc.problems + missing) from None
    if missing:
        raise ParameterError(missing)
    return request


TYPO_CUTOFF = 0.8


def looks_like_typo(name: str) -> bool:
    """True when `name` is not an SFT/distributed parameter but nearly spells one."""
    import difflib

    from pydantic.alias_generators import to_camel

    from training_hub.params import DISTRIBUTED_FIELDS, SFT_FIELDS

    known = SFT_FIELDS | DISTRIBUTED_FIELDS
    spellings = sorted(known | {to_camel(k) for k in known})
    return bool(difflib.get_close_matches(name, spellings, n=1, cutoff=TYPO_CUTOFF))


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


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distributed (override TRAINING_HUB_* variables)")
    group.add_argument("--nnodes", help=f"number of nodes [{launch_env.NNODES}]")
    group.add_argument("--node-rank", help=f"this node's rank [{launch_env.NODE_RANK}]")
    group.add_argument("--nproc-per-node", help=f"processes (GPUs) per node [{launch_env.NPROC_PER_NODE}]")
    group.add_argument("--rdzv-id", help=f"rendezvous id shared by the gang [{launch_env.RDZV_ID}]")
    group.add_argument("--rdzv-endpoint", help=f"host:port of node rank 0 [{launch_env.RDZV_ENDPOINT}]")
    group.add_argument("--rdzv-timeout", help=f"seconds to wait for the endpoint [{launch_env.RDZV_TIMEOUT}, default 600]")
    group.add_argument("--termination-log", help=f"summary file [{launch_env.TERMINATION_LOG}, default /dev/termination-log]")


def _sft_flag_fields() -> dict[str, Any]:
    from training_hub.params import SFTParams

    return {name: info for name, info in SFTParams.model_fields.items() if name != "extra_args"}


def _add_sft_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON or YAML file of SFT parameters (camelCase or snake_case)")
    params = parser.add_argument_group("SFT parameters (override the config file)")
    for name, info in _sft_flag_fields().items():
        flag = "--" + name.replace("_", "-")
        help_text = (info.description or "").split(". ")[0].replace("%", "%%")
        if info.annotation in (bool, bool | None):
            params.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:  # values are validated by the parameter model, so errors name the field
            params.add_argument(flag, dest=name, default=None, metavar="VALUE", help=help_text)
    params.add_argument("--backend", default=None, help='training backend (default "instructlab-training")')
    params.add_argument(
        "--extra", action="append", default=[], metavar="NAME=VALUE",
        help="a TrainingArgs field passed to the backend (VALUE parsed as JSON when it is JSON); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    from training_hub import __version__

    parser = _Parser(prog=PROG, description="Supervised fine-tuning on instructlab-training: pod entrypoint.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sft = commands.add_parser("sft", help="train (what an SFTJob pod runs)", description="Run SFT; see docs/entrypoint.md.")
    _add_sft_flags(sft)
    _add_distributed_flags(sft)

    prepare = commands.add_parser(
        "prepare", help="prepare the data once, on CPU (what an SFTJob's prepare pod runs)",
        description="Run instructlab's data processing once into data_output_dir, atomically, with a manifest that "
        "later training runs match against to skip processing. Takes the parameters of `sft`.",
    )
    _add_sft_flags(prepare)
    prepare.add_argument("--force", action="store_true", help="prepare again even when a matching manifest exists")
    prepare.add_argument("--termination-log", help=f"summary file [{launch_env.TERMINATION_LOG}, default /dev/termination-log]")

    preflight = commands.add_parser(
        "preflight", help="all-reduce across the gang under torchrun, print bandwidth",
        description="Check the gang's rendezvous and collective bandwidth before training.",
    )
    preflight.add_argument("--size-mb", default="64", help="all-reduce size in MiB for the bandwidth figure (default 64)")
    preflight.add_argument("--iters", default="5", help="timed all-reduces (default 5)")
    preflight.add_argument("--warmup", default="1", help="untimed all-reduces first (default 1)")
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

    def __init__(self, termination_log: str):
        self.termination_log = termination_log
        self.signals = SignalState().install()

    def finish(self, outcome: Outcome, message: str, code: int | None = None, summary: dict | None = None) -> int:
        summary = summary or build_summary(outcome, message)
        write_summary(summary, self.termination_log)
        stream = sys.stdout if outcome is Outcome.SUCCEEDED else sys.stderr
        print(f"{PROG}: {outcome.value}: {message}", file=stream, flush=True)
        self.signals.uninstall()
        return int(EXIT_CODE_OF[outcome] if code is None else code)


def _termination_log(args: argparse.Namespace | None, environ: Mapping[str, str]) -> str:
    flag = getattr(args, "termination_log", None) if args is not None else None
    return flag or environ.get(launch_env.TERMINATION_LOG, "").strip() or launch_env.DEFAULT_TERMINATION_LOG


def _rdzv_timeout(args: argparse.Namespace, launch: launch_env.LaunchEnvironment) -> float:
    if args.rdzv_timeout is None:
        return launch.rdzv_timeout_s
    try:
        return launch_env.parse_timeout(args.rdzv_timeout)
    except ValueError as exc:
        raise ConfigError(f"--rdzv-timeout: {exc}") from None


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
    from training_hub.params import DISTRIBUTED_FIELDS, ParameterError

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
        except ParameterError as exc:
            return run.finish(Outcome.INVALID_CONFIG, str(exc))
        except Exception as exc:  # retryable: a crash of the processing library, a full volume, ...
            return run.finish(Outcome.FAILED, f"data preparation failed: {type(exc).__name__}: {exc}")
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
        child = run_child(command, run.signals, console)
        if tailer is not None:
            tailer.stop()
        report = _read_report(result_file)
    outcome, code, message = decide_training_outcome(child, report)
    summary = training_summary(outcome, message, report, tailer.last_event if tailer else None)
    return run.finish(outcome, message, code, summary)


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
            size_bytes = int(_positive(args.size_mb, "--size-mb", float) * 1024 * 1024)
            iters = int(_positive(args.iters, "--iters", int))
            warmup = int(_positive(args.warmup, "--warmup", int, allow_zero=True))
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
        child = run_child(command, run.signals, ConsoleWriter(), on_line=lambda line: _collect_report(line, reports))
        if child.signal_received is not None:
            name = signal.Signals(child.signal_received).name
            return run.finish(Outcome.PREEMPTED, f"received {name} during preflight", 128 + child.signal_received)
        if child.returncode != 0:
            return run.finish(
                Outcome.FAILED,
                f"preflight failed: torchrun exited with code {child.returncode} "
                f"(node rank {distributed.node_rank} of {distributed.nnodes}, endpoint {distributed.rdzv_endpoint})",
                exit_code_for_signal_death(child.returncode) if child.returncode < 0 else ExitCode.TRAINING_FAILED,
            )
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

    from training_hub.params import DistributedParams, ParameterError

    try:
        return DistributedParams.model_validate(dict(values))
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'distributed'}: {e['msg']}" for e in exc.errors()]
        raise ParameterError(problems) from None


def _positive(raw: str, flag: str, kind: type, allow_zero: bool = False) -> float:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{flag}: must be a {'number' if kind is float else 'whole number'} (got {raw!r})") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{flag}: must be {'>= 0' if allow_zero else '> 0'} (got {raw!r})")
    return value


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
        write_summary(build_summary(Outcome.INVALID_CONFIG, str(exc)), summary_path)
        print(f"{exc}\n(see '{PROG} --help')", file=sys.stderr)
        return int(ExitCode.INVALID_CONFIG)
    if args.command == "sft":
        return command_sft(args, environ, trainer)
    if args.command == "prepare":
        return command_prepare(args, environ)
    if args.command == "preflight":
        return command_preflight(args, environ)
    return command_params(args)


if __name__ == "__main__":
    sys.exit(main())
