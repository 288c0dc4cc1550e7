"""Prepare the training data once: instructlab's data processing into `data_output_dir`, atomically, with a manifest.

instructlab-training's `run_training` tokenizes the data in the launcher of every node before torchrun starts.
On a multi-node run sharing one `data_output_dir`, N launchers then rewrite the same `data.jsonl` at once, and
a fast node's ranks can read it while a slow node truncates it. So the data is prepared here instead:

- `prepare(request)` runs the processing (chat or pretraining) into a temporary sibling of
  `data_output_dir` and renames it into place: a reader sees the old complete directory or the new complete
  one, never a half-written file. Next to `data.jsonl` it writes `MANIFEST_FILE`: what the data was made from
  (`DataIdentity`: the data file's sha256, the tokenizer files, the chat template, `max_seq_len`, the
  pretraining settings, the instructlab-training version). A matching manifest means the work is done: the
  data is reused, nothing is rewritten.
- `ensure_prepared(request)` is what training calls: node rank 0 (or a single node) prepares (or reuses);
  other nodes wait until a manifest matching what they would have made appears (`TRAINING_HUB_PREPARE_TIMEOUT`,
  default 3600 s), then training runs with instructlab's processing turned off.
- A manifest that does not match (the data, tokenizer, template or settings changed) is re-prepared, with
  the differences logged: the inputs decide, a stale directory never trains.

`training-hub prepare --config FILE` and `training_hub.prepare_data(**sft_kwargs)` run `prepare` (the operator's
prepare pod runs the command). Nothing heavy is
imported until processing starts: computing and comparing identities needs only the standard library.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from training_hub.params import ParameterError, TrainRequest

log = logging.getLogger(__name__)

MANIFEST_FILE = "training-hub-prepared.json"
DATA_FILE = "data.jsonl"  # what instructlab's processing writes and its trainer reads
MANIFEST_FORMAT = 1
PREPARE_TIMEOUT_VARIABLE = "TRAINING_HUB_PREPARE_TIMEOUT"
DEFAULT_PREPARE_TIMEOUT_S = 3600.0
# Files of a Hugging Face model directory that decide how text becomes tokens (the chat template included).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
)
_HASH_CHUNK = 1 << 20


class PrepareTimeout(RuntimeError):
    """A node waited too long for node rank 0's prepared data."""


# --- what the data is made from --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareSpec:
    """The settings data processing depends on, from a validated request."""

    data_path: Path
    data_output_dir: Path
    model_path: str
    max_seq_len: int
    is_pretraining: bool
    document_column_name: str
    block_size: int | None
    chat_tmpl_path: str | None  # instructlab's legacy template path (extra_args), when set
    num_cpu_procs: int | None  # extra_args.data_process_num_cpu_procs, when set

    @classmethod
    def from_request(cls, request: TrainRequest) -> "PrepareSpec":
        from training_hub.backends.instructlab import default_data_output_dir

        params, extra = request.params, request.params.extra_args
        chat_tmpl_path = extra.get("chat_tmpl_path")
        if extra.get("use_legacy_tmpl"):
            chat_tmpl_path = _legacy_template_path()
        return cls(
            data_path=Path(params.data_path).expanduser(),
            data_output_dir=Path(params.data_output_dir or default_data_output_dir(params.ckpt_output_dir)).expanduser(),
            model_path=params.model_path,
            max_seq_len=params.max_seq_len,
            is_pretraining=params.is_pretraining,
            document_column_name=params.document_column_name,
            block_size=params.block_size,
            chat_tmpl_path=str(chat_tmpl_path) if chat_tmpl_path else None,
            num_cpu_procs=extra.get("data_process_num_cpu_procs"),
        )


def _legacy_template_path() -> str:
    import importlib.util

    found = importlib.util.find_spec("instructlab.training")
    root = Path(found.origin).parent if found and found.origin else Path("instructlab/training")
    return str(root / "chat_templates" / "ibm_legacy_tmpl.py")


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def instructlab_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("instructlab-training")
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class DataIdentity:
    """What prepared data was made from. Equal identities give equal `data.jsonl` files."""

    data: Mapping[str, Any]  # {"path", "size", "mtime_ns", "sha256"}
    tokenizer: Mapping[str, Any]  # {"model_path", "files": {name: sha256}} or {"model_path", "hub_id"}
    chat_template: Mapping[str, Any]  # {"source", "sha256"}
    max_seq_len: int | None  # None for pretraining: its processing does not cut by length
    pretraining: Mapping[str, Any] | None  # {"document_column_name", "block_size"}
    instructlab_training: str

    def key(self) -> dict[str, Any]:
        """The parts that decide the output (paths, times and block_size do not: the trainer blocks the data)."""
        return manifest_key(self.as_manifest())

    def as_manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "data": dict(self.data),
            "tokenizer": dict(self.tokenizer),
            "chat_template": dict(self.chat_template),
            "max_seq_len": self.max_seq_len,
            "pretraining": dict(self.pretraining) if self.pretraining is not None else None,
            "instructlab_training": self.instructlab_training,
        }


def data_identity(spec: PrepareSpec, known: Mapping[str, Any] | None = None) -> DataIdentity:
    """The identity of what `spec` would prepare. `known`: a manifest whose data hash may be reused when the data
    file has the same path, size and modification time (hashing a large file on every gang start costs time)."""
    try:
        stat = spec.data_path.stat()
    except OSError as exc:
        raise ParameterError([f"data_path: cannot read {str(spec.data_path)!r} ({exc.strerror or exc})"]) from None
    data: dict[str, Any] = {"path": str(spec.data_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    previous = (known or {}).get("data") or {}
    if all(previous.get(k) == data[k] for k in ("path", "size", "mtime_ns")) and previous.get("sha256"):
        data["sha256"] = previous["sha256"]
    else:
        data["sha256"] = sha256_of_file(spec.data_path)

    model_dir = Path(spec.model_path).expanduser()
    tokenizer: dict[str, Any] = {"model_path": spec.model_path}
    template_source, template_text = "none", ""
    if model_dir.is_dir():
        tokenizer["files"] = {name: sha256_of_file(model_dir / name) for name in TOKENIZER_FILES
                              if (model_dir / name).is_file()}
        template_source, template_text = _tokenizer_chat_template(model_dir)
    else:  # a Hub id: the files are fetched at processing time; the id (and any revision in it) is what we know
        tokenizer["hub_id"] = spec.model_path
    if spec.chat_tmpl_path and not spec.is_pretraining:
        path = Path(spec.chat_tmpl_path)
        template_source = f"chat_tmpl_path {path}"
        template_text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else f"missing {path}"
    chat_template = {"source": template_source, "sha256": hashlib.sha256(template_text.encode()).hexdigest()}
    if spec.is_pretraining:
        chat_template = {"source": "not used (pretraining)", "sha256": None}
    return DataIdentity(
        data=data,
        tokenizer=tokenizer,
        chat_template=chat_template,
        max_seq_len=None if spec.is_pretraining else spec.max_seq_len,
        pretraining={"document_column_name": spec.document_column_name, "block_size": spec.block_size}
        if spec.is_pretraining else None,
        instructlab_training=instructlab_version(),
    )


def _tokenizer_chat_template(model_dir: Path) -> tuple[str, str]:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return "chat_template.jinja", jinja.read_text(encoding="utf-8", errors="replace")
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "none", ""
    template = config.get("chat_template") if isinstance(config, dict) else None
    if template is None:
        return "none", ""
    return "tokenizer_config.json", template if isinstance(template, str) else json.dumps(template, sort_keys=True)


# --- the manifest ----------------------------------------------------------------------------------------------


def read_manifest(data_output_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of prepared data, or None when there is none (or it cannot be read)."""
    try:
        manifest = json.loads((Path(data_output_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def manifest_key(manifest: Mapping[str, Any]) -> dict[str, Any]:
    pretraining = manifest.get("pretraining") or {}
    tokenizer = manifest.get("tokenizer") or {}
    return {
        "format": manifest.get("format"),
        "data_sha256": (manifest.get("data") or {}).get("sha256"),
        "tokenizer": {k: v for k, v in tokenizer.items() if k != "model_path"},
        "chat_template": dict(manifest.get("chat_template") or {}),
        "max_seq_len": manifest.get("max_seq_len"),
        "document_column_name": pretraining.get("document_column_name"),
        "instructlab_training": manifest.get("instructlab_training"),
    }


def manifest_differences(manifest: Mapping[str, Any] | None, identity: DataIdentity) -> list[str]:
    """What differs between prepared data and what would be prepared now; empty when the data can be reused."""
    if manifest is None:
        return ["no manifest"]
    have, want = manifest_key(manifest), identity.key()
    names = {
        "format": "manifest format", "data_sha256": "data file content (sha256)", "tokenizer": "tokenizer files",
        "chat_template": "chat template", "max_seq_len": "max_seq_len",
        "document_column_name": "document_column_name", "instructlab_training": "instructlab-training version",
    }
    return [f"{names[k]}: {_short(have.get(k))} -> {_short(want[k])}" for k in want if have.get(k) != want[k]]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def is_prepared(data_output_dir: Path, identity: DataIdentity) -> bool:
    return not manifest_differences(read_manifest(data_output_dir), identity) and (data_output_dir / DATA_FILE).is_file()


# --- checking the input ----------------------------------------------------------------------------------------


def data_file_problems(spec: PrepareSpec) -> list[str]:
    """Problems of the JSONL data file, each with its file and line, found before any tokenizing (the library's one
    data check, `training_hub.data`): a bad line fails the job at once with where it is."""
    from training_hub.data import data_file_problems as problems_of

    found = problems_of(spec.data_path, is_pretraining=spec.is_pretraining,
                        document_column_name=spec.document_column_name)
    return [f"data_path: {problem}" for problem in found]


# --- preparing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """The outcome of `prepare`: where the data is and whether it was made now or reused."""

    data_output_dir: Path
    manifest: Mapping[str, Any]
    reused: bool
    seconds: float
    changes: tuple[str, ...] = field(default=())  # why it was (re-)prepared

    @property
    def data_file(self) -> Path:
        return self.data_output_dir / DATA_FILE

    @property
    def samples(self) -> int | None:
        return self.manifest.get("samples")

    def describe(self) -> str:
        if self.reused:
            return (f"reused the prepared data in {self.data_output_dir} ({self.samples} samples; its manifest matches "
                    f"the data, tokenizer, chat template and settings)")
        why = f" ({'; '.join(self.changes)})" if self.changes and self.changes != ("no manifest",) else ""
        return f"prepared {self.samples} samples into {self.data_output_dir} in {self.seconds:.1f} s{why}"


def prepare(request: TrainRequest, *, force: bool = False, num_cpu_procs: int | None = None) -> PreparedData:
    """Prepare the request's data into its `data_output_dir` unless a matching manifest says it is there already.

    Raises `ParameterError` for problems of the data or the settings (naming file and line), `RuntimeError` when
    processing fails otherwise. Safe when several processes prepare the same directory at once: each writes its
    own temporary sibling, the rename publishes one complete directory, the others' equal results are dropped.
    """
    started = time.monotonic()
    spec = PrepareSpec.from_request(request)
    _check_output_dir(spec)
    existing = read_manifest(spec.data_output_dir)
    identity = data_identity(spec, known=existing)
    changes = manifest_differences(existing, identity)
    if not force and not changes and (spec.data_output_dir / DATA_FILE).is_file():
        result = PreparedData(spec.data_output_dir, existing or {}, True, time.monotonic() - started)
        log.info("%s", result.describe())
        return result
    if force:
        changes = ["forced"]
    _failure_marker(spec).unlink(missing_ok=True)
    problems = data_file_problems(spec)
    if problems:
        _record_failure(spec, identity, problems)
        raise ParameterError(problems)
    if existing is not None:
        log.info("re-preparing %s: %s", spec.data_output_dir, "; ".join(changes))
    procs = num_cpu_procs or spec.num_cpu_procs or _default_cpu_procs()
    staging = spec.data_output_dir.parent / f".{spec.data_output_dir.name}.preparing-{secrets.token_hex(4)}"
    spec.data_output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        try:
            _process(spec, staging, procs)
        except ParameterError as exc:  # no sample fits max_seq_len: decided by the inputs too
            _record_failure(spec, identity, exc.problems)
            raise
        samples = _count_lines(staging / DATA_FILE)
        manifest = {
            **identity.as_manifest(),
            "samples": samples,
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prepared_by": f"{socket.gethostname()} pid {os.getpid()}",
            "seconds": round(time.monotonic() - started, 3),
        }
        _write_json(staging / MANIFEST_FILE, manifest)
        published = _publish(staging, spec.data_output_dir, identity)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = PreparedData(spec.data_output_dir, manifest if published else (read_manifest(spec.data_output_dir) or manifest),
                          False, time.monotonic() - started, tuple(changes))
    log.info("%s", result.describe())
    return result


def _failure_marker(spec: PrepareSpec) -> Path:
    return spec.data_output_dir.parent / f".{spec.data_output_dir.name}.prepare-failed.json"


def _record_failure(spec: PrepareSpec, identity: DataIdentity, problems: list[str]) -> None:
    """Tell waiting nodes that these inputs cannot be prepared (a data problem: the same inputs fail the same way),
    so they fail at once with node rank 0's reason instead of waiting for their timeout."""
    try:
        spec.data_output_dir.parent.mkdir(parents=True, exist_ok=True)
        _write_json(_failure_marker(spec), {"key": identity.key(), "problems": problems})
    except OSError as exc:
        log.warning("could not record the preparation failure for waiting nodes: %s", exc)


def _default_cpu_procs() -> int:
    from training_hub.backends.instructlab import MAX_DATA_PROCESS_CPUS, available_cpu_count

    return min(MAX_DATA_PROCESS_CPUS, available_cpu_count())


def _check_output_dir(spec: PrepareSpec) -> None:
    """The output directory is replaced whole: refuse one that holds anything but prepared data."""
    target = spec.data_output_dir
    if target.exists() and not target.is_dir():
        raise ParameterError([f"data_output_dir: {str(target)!r} exists and is not a directory"])
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in (DATA_FILE, MANIFEST_FILE))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ParameterError([
                f"data_output_dir: {str(target)!r} holds other files ({shown}); prepared data replaces the whole "
                "directory, so point data_output_dir at a directory of its own (default <ckpt_output_dir>/data)"
            ])


# Seconds a stopped processing child gets to exit after SIGTERM before it (and its pool workers) are killed.
CHILD_STOP_GRACE_S = 5.0


def _process(spec: PrepareSpec, output: Path, num_cpu_procs: int) -> None:
    """instructlab's data processing into `output`, in a child process of its own session.

    Not in this process: the processing forks a multiprocessing pool whose workers would inherit this process's
    signal handlers (the entrypoint's turn SIGTERM into an exception), and a pool whose worker raised instead of
    dying, or died holding a task, leaves its parent waiting forever. Here a SIGTERM (preemption, suspend) reaches
    only this process; any exception while waiting (the entrypoint's Interrupted, KeyboardInterrupt) stops the
    child's whole process group, SIGTERM then SIGKILL, before it propagates: nothing is left writing into
    `output`, which the caller removes. The child dies with this process, and its workers with it
    (PR_SET_PDEATHSIG), so a SIGKILL of this process leaves nothing running either."""
    import subprocess
    import sys
    import tempfile

    fd, report_name = tempfile.mkstemp(prefix="training-hub-prepare-", suffix=".json")
    os.close(fd)
    report = Path(report_name)
    job = {"spec": {k: str(v) if isinstance(v, Path) else v for k, v in spec.__dict__.items()},
           "output": str(output), "num_cpu_procs": num_cpu_procs, "report": str(report)}
    try:
        child = subprocess.Popen([sys.executable, "-m", "training_hub.backends.prepare", json.dumps(job)],
                                 start_new_session=True)
        try:
            returncode = child.wait()
        except BaseException:
            _stop_process_group(child)
            raise
        try:
            outcome = json.loads(report.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            outcome = {}
    finally:
        report.unlink(missing_ok=True)
    if returncode == 0 and outcome.get("kind") == "done":
        if not (output / DATA_FILE).is_file():
            raise RuntimeError(f"instructlab-training's data processing wrote no {DATA_FILE} into {output}")
        return
    raise _error_of(outcome, returncode)


def _stop_process_group(child: Any) -> None:
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, CHILD_STOP_GRACE_S), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            child.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The child is gone; its pool workers share its group: end any still running.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return


def _error_of(outcome: Mapping[str, Any], returncode: int) -> Exception:
    """The child's failure as the exception the processing raised (so it is classified the same way)."""
    kind = outcome.get("kind")
    if kind == "parameter":
        return ParameterError([str(problem) for problem in outcome.get("problems") or []])
    if kind == "oserror" and outcome.get("errno") is not None:
        return OSError(outcome["errno"], outcome.get("strerror") or "", outcome.get("filename"), None,
                       outcome.get("filename2"))
    if kind == "error":
        return RuntimeError(f"data processing failed: {outcome.get('type')}: {outcome.get('message')}")
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return RuntimeError(f"the data processing process ended without a result ({how})")


def _process_in_child(job: Mapping[str, Any]) -> int:
    """The child's side of `_process`: run the processing, write what happened to the report file."""
    _die_with_parent()
    os.register_at_fork(after_in_child=_die_with_parent)  # the pool's workers die with this process in turn
    spec_fields = dict(job["spec"])
    for name in ("data_path", "data_output_dir"):
        spec_fields[name] = Path(spec_fields[name])
    spec = PrepareSpec(**spec_fields)
    try:
        _process_here(spec, Path(job["output"]), int(job["num_cpu_procs"]))
        outcome: dict[str, Any] = {"kind": "done"}
    except ParameterError as exc:
        outcome = {"kind": "parameter", "problems": list(exc.problems)}
    except OSError as exc:
        import traceback

        traceback.print_exc()
        outcome = {"kind": "oserror", "errno": exc.errno, "strerror": exc.strerror or str(exc),
                   "filename": exc.filename, "filename2": exc.filename2}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        import traceback

        traceback.print_exc()
        outcome = {"kind": "error", "type": type(exc).__name__, "message": str(exc)[:2000]}
    _write_json(Path(job["report"]), outcome)
    return 0 if outcome["kind"] == "done" else 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a killed entrypoint leaves no processing behind)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _process_here(spec: PrepareSpec, output: Path, num_cpu_procs: int) -> None:
    from instructlab.training import data_process

    environ = os.environ  # datasets' multi-process map replaces os.environ with a copy: put the real one back
    try:
        if spec.is_pretraining:
            data_process.process_documents_for_pretraining(
                data_path=str(spec.data_path), data_output_path=str(output), model_path=spec.model_path,
                num_cpu_procs=num_cpu_procs, document_column_name=spec.document_column_name,
            )
        else:
            data_process.process_data(
                data_path=str(spec.data_path), data_output_path=str(output), max_seq_len=spec.max_seq_len,
                model_path=spec.model_path, num_cpu_procs=num_cpu_procs, chat_tmpl_path=spec.chat_tmpl_path,
            )
    except RuntimeError as exc:
        if str(exc).startswith("Dataset does not contain any samples"):
            raise ParameterError([f"max_seq_len: every sample of {spec.data_path} is longer than "
                                  f"max_seq_len={spec.max_seq_len} tokens; raise max_seq_len"]) from exc
        raise
    finally:
        os.environ = environ


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _publish(staging: Path, target: Path, identity: DataIdentity) -> bool:
    """Rename the staging directory to `target`. Returns False when another process published equal data first."""
    for _ in range(10):
        try:
            os.rename(staging, target)  # atomic; succeeds when target is absent (or an empty directory)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if is_prepared(target, identity):
            return False  # a concurrent preparer got there first with the same data
        aside = target.parent / f".{target.name}.replaced-{secrets.token_hex(4)}"
        try:
            os.rename(target, aside)  # readers holding the old data.jsonl open keep reading the old file
        except FileNotFoundError:
            continue
        try:
            os.rename(staging, target)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    raise RuntimeError(f"could not publish the prepared data at {target}: it kept being replaced by other processes")


# --- in training -----------------------------------------------------------------------------------------------


def prepare_timeout(environ: Mapping[str, str] = os.environ) -> float:
    raw = environ.get(PREPARE_TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_PREPARE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ParameterError([f"{PREPARE_TIMEOUT_VARIABLE}: must be a number of seconds > 0 (got {raw!r})"])
    return value


def wait_for_prepared_data(
    request: TrainRequest, *, timeout_s: float | None = None, poll_s: float = 1.0, report_every_s: float = 30.0
) -> PreparedData:
    """Wait until data matching this request is prepared in its data_output_dir (by node rank 0 or beforehand)."""
    started = time.monotonic()
    timeout_s = prepare_timeout() if timeout_s is None else timeout_s
    spec = PrepareSpec.from_request(request)
    node_rank = request.distributed.node_rank
    identity = data_identity(spec, known=read_manifest(spec.data_output_dir))
    next_report = started + report_every_s
    while True:
        manifest = read_manifest(spec.data_output_dir)
        if not manifest_differences(manifest, identity) and (spec.data_output_dir / DATA_FILE).is_file():
            return PreparedData(spec.data_output_dir, manifest or {}, True, time.monotonic() - started)
        try:
            failure = json.loads(_failure_marker(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            failure = None
        if isinstance(failure, dict) and failure.get("key") == identity.key():
            raise ParameterError([f"node rank 0 could not prepare the data for node rank {node_rank}:",
                                  *map(str, failure.get("problems") or [])])
        now = time.monotonic()
        if now - started >= timeout_s:
            why = "; ".join(manifest_differences(manifest, identity))
            raise PrepareTimeout(
                f"node rank {node_rank} waited {timeout_s:g} s for node rank 0 to prepare the data in "
                f"{spec.data_output_dir} (a {MANIFEST_FILE} matching this run: {why}). data_output_dir must be on a "
                "volume every node shares; on node-local disks run `training-hub prepare --config FILE` on each "
                f"node first. Raise the wait with {PREPARE_TIMEOUT_VARIABLE}."
            )
        if now >= next_report:
            log.warning("node rank %d still waiting (%.0f s) for node rank 0 to prepare %s", node_rank,
                        now - started, spec.data_output_dir)
            next_report = now + report_every_s
        time.sleep(poll_s)


def ensure_prepared(request: TrainRequest, *, timeout_s: float | None = None) -> PreparedData:
    """Before training: node rank 0 (and a single node) prepares or reuses; the other nodes wait for it."""
    if request.distributed.node_rank == 0:
        return prepare(request)
    log.info("node rank %d: waiting for node rank 0 to prepare the data", request.distributed.node_rank)
    return wait_for_prepared_data(request, timeout_s=timeout_s)


if __name__ == "__main__":  # the processing child of `_process`
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(_process_in_child(json.loads(sys.argv[1])))
