"""What one SFTJob create costs the API server, against a ConfigMap of the same content: the part of `floor-cr / floor`
(bench/operator_anchors.py) that no operator driven by a custom resource can avoid.

    .venv/bin/python bench/sftjob_create_cost.py [--creates 200] [--rounds 4]

Kinds, created `--creates` at a time (16 concurrent POSTs) in interleaved rounds, each in its own namespace:
- configmap: a ConfigMap holding the SFTJob's spec as JSON;
- sftjob: the SFTJob as the benchmarks create it, under the CRD as shipped (deploy/crds/);
- sftjob-no-cel: the same under a copy of the CRD without its CEL rules (x-kubernetes-validations);
- sftjob-no-schema: the same under a copy whose spec is `x-kubernetes-preserve-unknown-fields` (no schema at all).
The copies are CRDs of their own (group *.bench.training-hub.io): the shipped CRD is never changed, so the bench can
run on someone else's cluster (TRAINING_HUB_KUBECONFIG, a kwokctl cluster: its API server's pid is needed).
Prints the API server's CPU milliseconds per create (/proc/<pid>/stat; median round) and each kind against the
ConfigMap.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from operator_anchors import POSTERS, Poster  # noqa: E402
from operator_common import bench_cluster, cpu_seconds, new_namespace, percentile  # noqa: E402

from tests.cluster.deploy_helpers import CRD_FILE, wait_established  # noqa: E402
from tests.cluster.operator_harness import sftjob  # noqa: E402

KINDS = ("configmap", "sftjob", "sftjob-no-cel", "sftjob-no-schema")
BENCH_GROUPS = {"sftjob-no-cel": "nocel.bench.training-hub.io", "sftjob-no-schema": "noschema.bench.training-hub.io"}


def _without_cel(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("x-kubernetes-validations", None)
        for value in node.values():
            _without_cel(value)
    elif isinstance(node, list):
        for value in node:
            _without_cel(value)


def bench_crd(shipped: dict, kind: str) -> dict:
    """A copy of the shipped CRD under a group of its own: without CEL rules, or without a spec schema."""
    crd = copy.deepcopy(shipped)
    group = BENCH_GROUPS[kind]
    crd["metadata"] = {"name": f"{crd['spec']['names']['plural']}.{group}"}
    crd["spec"]["group"] = group
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        if kind == "sftjob-no-cel":
            _without_cel(schema)
        else:
            schema.pop("x-kubernetes-validations", None)  # root rules read the spec
            schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return crd


def bodies(kind: str, namespace: str, names: list[str]) -> tuple[str, list[dict]]:
    """The collection path and the objects of one round."""
    jobs = [sftjob(name, namespace, nnodes=4, nproc_per_node=1) for name in names]
    if kind == "configmap":
        return f"/api/v1/namespaces/{namespace}/configmaps", [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": job["metadata"],
             "data": {"spec": json.dumps(job["spec"])}} for job in jobs]
    group = BENCH_GROUPS.get(kind, "training-hub.io")
    for job in jobs:
        job["apiVersion"] = f"{group}/v1alpha1"
    return f"/apis/{group}/v1alpha1/namespaces/{namespace}/sftjobs", jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=200, help="objects per kind and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"a subset of {','.join(KINDS)}")
    args = parser.parse_args(argv)
    kinds = [kind for kind in KINDS if kind in args.kinds.split(",")]
    shipped = yaml.safe_load(CRD_FILE.read_text())
    with bench_cluster("th-create-cost", pool_nodes=1) as cluster:
        apiserver = cluster.component_pids().get("kube-apiserver")
        if apiserver is None:
            raise SystemExit("the API server's process is not on this machine: run on a kwokctl cluster started here")
        crds = [bench_crd(shipped, kind) for kind in kinds if kind in BENCH_GROUPS]
        try:
            for crd in crds:
                cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(crd))
                wait_established(cluster, crd["metadata"]["name"])
            poster = Poster(cluster)
            namespaces = {kind: new_namespace(cluster, f"cost-{kind.replace('sftjob', 'sj')}") for kind in kinds}
            per_create: dict[str, list[float]] = {kind: [] for kind in kinds}
            for round_ in range(args.rounds + 1):  # round 0 warms the connections and the API server's caches up
                for kind in kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]:
                    path, objects = bodies(kind, namespaces[kind], [f"r{round_}-{i}" for i in range(args.creates)])
                    before = cpu_seconds(apiserver)
                    poster.post_all(path, objects)
                    time.sleep(0.2)  # the API server's work after the replies (watch fan-out)
                    if round_:
                        per_create[kind].append((cpu_seconds(apiserver) - before) / args.creates * 1000)
        finally:
            for crd in crds:
                cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--wait=false", "--ignore-not-found",
                                check=False)
    print(f"API server CPU per create ({args.creates} creates per round, {POSTERS} at a time; "
          f"median of {args.rounds} rounds)")
    base = percentile(per_create["configmap"], 50) if "configmap" in per_create else None
    for kind, values in per_create.items():
        median = percentile(values, 50)
        against = f"   {median / base:4.2f}x the ConfigMap" if base else ""
        print(f"  {kind:17} {median:5.2f} ms{against}   (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
