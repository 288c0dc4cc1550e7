"""`sftjob-operator`: the operator's command line.

    sftjob-operator crd [--check FILE]                 the CRD YAML (deploy/crds/ holds its output)
    sftjob-operator render -f FILE [--attempt N]       the exact objects the operator would create, no cluster
    sftjob-operator run ...                            the operator itself (kopf)

Each subcommand is one `add_*_command(subparsers)` function; `COMMANDS` lists them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def add_crd_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "crd", help="print the SFTJob CustomResourceDefinition (generated from the models)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check", metavar="FILE", type=Path,
        help="instead of printing, exit 1 when FILE differs from the generated CRD (CI)",
    )
    parser.set_defaults(handler=crd_command)


def crd_command(args: argparse.Namespace) -> int:
    from .crd import render_crd_yaml

    generated = render_crd_yaml()
    if args.check is None:
        sys.stdout.write(generated)
        return 0
    try:
        committed = args.check.read_text()
    except OSError as exc:
        print(f"sftjob-operator crd --check: cannot read {args.check}: {exc.strerror}", file=sys.stderr)
        return 1
    if committed != generated:
        print(
            f"{args.check} is out of date: regenerate it with `sftjob-operator crd > {args.check}`", file=sys.stderr
        )
        return 1
    return 0


def add_render_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="print the Service, ConfigMap and Pods the operator would create for an SFTJob (no cluster needed)",
        description="Render an SFTJob manifest into the exact objects the operator creates for one gang attempt, "
        "as multi-document YAML. The operator's settings are read from the SFTJOB_OPERATOR_* environment.",
    )
    parser.add_argument("-f", "--filename", required=True, help="SFTJob manifest (YAML, may hold several); - for stdin")
    parser.add_argument("--attempt", type=_non_negative_int, default=0, help="gang attempt number (default 0)")
    parser.add_argument(
        "-n", "--namespace", default=None,
        help="namespace when the manifest has none (default: the manifest's, else 'default')",
    )
    parser.add_argument(
        "--uid", default=None,
        help="the SFTJob's uid (assigned by the API server; it goes into owner references and the rdzv id); "
        f"default: the manifest's, else {PLACEHOLDER_UID}",
    )
    parser.set_defaults(handler=render_command)


def _non_negative_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {raw!r})") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {raw!r})")
    return value


def _read_manifests(filename: str) -> list[Any]:
    text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    from training_hub.yaml_numbers import yaml12_loader

    return [doc for doc in yaml.load_all(text, Loader=yaml12_loader()) if doc is not None]  # noqa: S506 (safe)


def render_command(args: argparse.Namespace) -> int:
    from . import api
    from .config import ConfigError, OperatorConfig
    from .render import new_rdzv_id, render_gang

    try:
        config = OperatorConfig.from_env(os.environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        documents = _read_manifests(args.filename)
    except OSError as exc:
        print(f"sftjob-operator render: cannot read {args.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except yaml.YAMLError as exc:
        print(f"sftjob-operator render: {args.filename} is not valid YAML: {exc}", file=sys.stderr)
        return 1
    if not documents:
        print(f"sftjob-operator render: {args.filename} holds no SFTJob", file=sys.stderr)
        return 1

    rendered: list[dict[str, Any]] = []
    failed = False
    for index, document in enumerate(documents):
        where = f"{args.filename}" + (f" (document {index + 1})" if len(documents) > 1 else "")
        if not isinstance(document, dict) or document.get("kind") != api.KIND:
            kind = document.get("kind") if isinstance(document, dict) else type(document).__name__
            print(f"{where}: kind: must be {api.KIND} (got {kind!r})", file=sys.stderr)
            failed = True
            continue
        job = _with_defaults(document, namespace=args.namespace, uid=args.uid)
        try:
            gang = render_gang(
                job, attempt=args.attempt, rdzv_id=new_rdzv_id(job["metadata"]["uid"], args.attempt), config=config
            )
        except api.InvalidSFTJob as exc:
            name = (document.get("metadata") or {}).get("name")
            print(f"{where}: SFTJob {name!r} is invalid:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
            failed = True
            continue
        rendered.extend(gang.objects())
    if failed:
        return 1
    sys.stdout.write(dump_manifests(rendered))
    return 0


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (params.json) as literal blocks, so a reviewer reads them as written."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def dump_manifests(objects: list[dict[str, Any]]) -> str:
    """Objects as multi-document YAML, keys in the order render built them."""
    return yaml.dump_all(objects, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False, width=120)


def _with_defaults(document: dict[str, Any], *, namespace: str | None, uid: str | None) -> dict[str, Any]:
    """The job as the API server would hand it to the operator: with a namespace and a uid."""
    metadata = dict(document.get("metadata") or {})
    metadata["namespace"] = metadata.get("namespace") or namespace or "default"
    metadata["uid"] = uid or metadata.get("uid") or PLACEHOLDER_UID
    return {**document, "metadata": metadata}


def add_run_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the operator (watches SFTJobs; blocks until SIGTERM)",
        description="Run the operator. Settings come from the SFTJOB_OPERATOR_* environment (docs/operator.md).",
    )
    parser.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable); "
                        "default: SFTJOB_OPERATOR_NAMESPACES, else the whole cluster")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off; default 8080)")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness probe /healthz port (0: off; default 8081)")
    election = parser.add_argument_group(
        "leader election", "several replicas, one acting: a coordination.k8s.io/v1 Lease (docs/operator.md#high-availability)")
    election.add_argument("--leader-elect", action="store_true", default=None,
                          help="take part in leader election (env SFTJOB_OPERATOR_LEADER_ELECT=true); default: off, "
                          "this process acts alone")
    election.add_argument("--leader-elect-lease-name", dest="lease_name", default=None,
                          help="the Lease's name (default training-hub-operator)")
    election.add_argument("--leader-elect-namespace", dest="lease_namespace", default=None,
                          help="the Lease's namespace (default $POD_NAMESPACE, else the service account's, else default)")
    election.add_argument("--leader-elect-lease-duration", dest="lease_duration", type=float, default=None,
                          help="seconds a standby waits after the last renewal it saw before taking over (default 15)")
    election.add_argument("--leader-elect-renew-deadline", dest="renew_deadline", type=float, default=None,
                          help="seconds after its last successful renewal the leader stops acting (default 10; "
                          "less than the lease duration)")
    election.add_argument("--leader-elect-retry-period", dest="retry_period", type=float, default=None,
                          help="seconds between renewals and between a standby's tries (default 2)")
    parser.add_argument("--log-json", action="store_true", help="structured (JSON) logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .handlers import run_operator
    from .leader import LeaderElectionSettings

    try:
        leader_election = LeaderElectionSettings.from_env(
            os.environ, enabled=args.leader_elect, lease_name=args.lease_name, namespace=args.lease_namespace,
            lease_duration=args.lease_duration, renew_deadline=args.renew_deadline, retry_period=args.retry_period,
        )
        run_operator(
            namespaces=args.namespace, kubeconfig=args.kubeconfig, metrics_port=args.metrics_port or None,
            health_port=args.health_port or None, log_json=args.log_json, verbose=args.verbose,
            leader_election=leader_election,
        )
    except (ConfigError, ValueError) as exc:
        print(f"sftjob-operator run: {exc}", file=sys.stderr)
        return 1
    return 0


COMMANDS: list[Callable[[Any], None]] = [add_crd_command, add_render_command, add_run_command]


def build_parser(commands: Iterable[Callable[[Any], None]] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftjob-operator", description="Kubernetes operator that runs SFTJob resources as gangs of GPU pods."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in commands:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
