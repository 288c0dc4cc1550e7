"""Every example in examples/ is a complete SFTJob the operator can run: `sftjob-operator render` turns it
into its Service, ConfigMap and one pod per node, with no cluster. (tests/cluster/test_examples.py
applies them to the real API server.)"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
OPERATOR_CLI = Path(sys.executable).with_name("sftjob-operator")
ROLE = "training-hub.io/role"


def gang_pods(objects):
    return [o for o in objects if o and o["kind"] == "Pod" and ROLE not in o["metadata"]["labels"]]


def prepare_pods(objects):
    return [o for o in objects if o and o["kind"] == "Pod" and o["metadata"]["labels"].get(ROLE) == "prepare"]


def test_the_promised_examples_exist():
    names = {p.name for p in EXAMPLES}
    for expected in (
        "sftjob-single-node.yaml",
        "sftjob-multi-node.yaml",
        "sftjob-pretraining.yaml",
        "sftjob-suspend-kueue.yaml",
        "sftjob-preflight.yaml",
    ):
        assert expected in names


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_renders_into_a_gang(example):
    job = yaml.safe_load(example.read_text())
    result = subprocess.run(
        [str(OPERATOR_CLI), "render", "-f", str(example)], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    kinds = [o["kind"] for o in objects]
    nnodes = job["spec"].get("nnodes", 1)
    training = job["spec"].get("mode", "Train") == "Train"
    assert len(gang_pods(objects)) == nnodes and len(prepare_pods(objects)) == (1 if training else 0)
    assert kinds.count("Pod") == nnodes + len(prepare_pods(objects))
    assert kinds.count("Service") == 1 and kinds.count("ConfigMap") == 1
    for pod in prepare_pods(objects):  # CPU only: never holds a GPU while it tokenizes
        limits = pod["spec"]["containers"][0]["resources"].get("limits") or {}
        assert job["spec"].get("gpuResourceName", "nvidia.com/gpu") not in limits
    for pod in gang_pods(objects):
        container = pod["spec"]["containers"][0]
        gpus = container["resources"]["limits"][job["spec"].get("gpuResourceName", "nvidia.com/gpu")]
        assert int(gpus) == job["spec"].get("nprocPerNode", 1)


def test_pretraining_example_sets_block_size():
    job = yaml.safe_load((REPO / "examples" / "sftjob-pretraining.yaml").read_text())
    assert job["spec"]["training"]["isPretraining"] is True
    assert job["spec"]["training"]["blockSize"] > 0


@pytest.mark.timeout(60)
def test_kueue_example_is_suspended_and_its_pods_form_one_pod_group():
    example = REPO / "examples" / "sftjob-suspend-kueue.yaml"
    job = yaml.safe_load(example.read_text())
    assert job["spec"]["suspend"] is True
    queue = job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    rendered = subprocess.run(
        [str(OPERATOR_CLI), "render", "-f", str(example)], capture_output=True, text=True, timeout=50, check=True
    ).stdout
    pods = gang_pods(yaml.safe_load_all(rendered))
    assert {p["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for p in pods} == {queue}
    assert len({p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods}) == 1
    assert {p["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] for p in pods} == {str(len(pods))}
    # The prepare pod runs before the gang: in the gang's pod group it would wait for the group's admission, which
    # waits for the whole group: a deadlock. Outside the queue it is a plain CPU pod the scheduler places at once.
    (prepare,) = prepare_pods(yaml.safe_load_all(rendered))
    assert not {k for k in {**prepare["metadata"]["labels"], **prepare["metadata"].get("annotations", {})}
                if k.startswith("kueue.x-k8s.io/")}


@pytest.mark.timeout(60)
def test_preflight_example_runs_the_preflight_on_four_nodes_and_training_examples_train():
    for example in EXAMPLES:
        job = yaml.safe_load(example.read_text())
        rendered = subprocess.run(
            [str(OPERATOR_CLI), "render", "-f", str(example)], capture_output=True, text=True, timeout=50, check=True
        ).stdout
        objects = list(yaml.safe_load_all(rendered))
        pods = gang_pods(objects)
        commands = {tuple(p["spec"]["containers"][0]["command"][:2]) for p in pods}
        prepare_commands = [p["spec"]["containers"][0]["command"] for p in prepare_pods(objects)]
        if example.name == "sftjob-preflight.yaml":
            assert job["spec"]["mode"] == "Preflight" and len(pods) == 4
            assert commands == {("training-hub", "preflight")} and prepare_commands == []
        else:
            assert job["spec"].get("mode", "Train") == "Train"
            assert commands == {("training-hub", "sft")}
            assert prepare_commands == [["training-hub", "prepare", "--config", "/etc/training-hub/params.json"]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_rendered_params_are_what_the_entrypoint_accepts(example, tmp_path):
    """The ConfigMap's params.json, read as the pod reads it, passes the entrypoint's (strict) validation."""
    from training_hub.backends.training_args_fields import TRAINING_ARGS_FIELDS
    from training_hub.launch.cli import load_config_file, merge_settings
    from training_hub.params import parse_train_kwargs

    result = subprocess.run(
        [str(OPERATOR_CLI), "render", "-f", str(example)], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    configmap = next(o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "ConfigMap")
    params_file = tmp_path / "params.json"
    params_file.write_text(configmap["data"]["params.json"])
    request = parse_train_kwargs(merge_settings(load_config_file(str(params_file))), TRAINING_ARGS_FIELDS)
    assert request.params.learning_rate > 0 and request.params.num_epochs >= 1
