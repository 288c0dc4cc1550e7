from __future__ import annotations

import pytest

from training_hub.launch import env


def test_reads_every_distributed_variable():
    launch = env.read_launch_environment(
        {
            env.NNODES: "4",
            env.NODE_RANK: "2",
            env.NPROC_PER_NODE: "8",
            env.RDZV_ID: "job-a-3",
            env.RDZV_ENDPOINT: "job-a.ns.svc:29500",
            env.RDZV_TIMEOUT: "30",
            env.TERMINATION_LOG: "/tmp/summary",
        }
    )
    assert launch.distributed == {
        "nnodes": 4,
        "node_rank": 2,
        "nproc_per_node": 8,
        "rdzv_id": "job-a-3",
        "rdzv_endpoint": "job-a.ns.svc:29500",
    }
    assert launch.rdzv_timeout_s == 30.0
    assert launch.termination_log == "/tmp/summary"


def test_defaults_when_unset_or_empty():
    launch = env.read_launch_environment({env.NNODES: "", env.RDZV_TIMEOUT: " "})
    assert launch.distributed == {}
    assert launch.rdzv_timeout_s == env.DEFAULT_RDZV_TIMEOUT_S == 600
    assert launch.termination_log is None  # not asked for: the entrypoint decides (the default path in a pod)


def test_every_bad_value_is_named():
    with pytest.raises(env.LaunchEnvironmentError) as caught:
        env.read_launch_environment({env.NNODES: "two", env.NODE_RANK: "1.5", env.RDZV_TIMEOUT: "-3"})
    message = str(caught.value)
    assert "TRAINING_HUB_NNODES: must be a whole number in ASCII digits (got 'two')" in message
    assert "TRAINING_HUB_NODE_RANK: must be a whole number in ASCII digits (got '1.5')" in message
    assert "TRAINING_HUB_RDZV_TIMEOUT: must be a number of seconds > 0 (got '-3')" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("raw", ["0", "nan", "inf", "soon"])
def test_timeout_must_be_positive_and_finite(raw):
    with pytest.raises(ValueError, match="must be a number of seconds > 0"):
        env.parse_timeout(raw)


def test_unicode_digits_are_not_numbers():
    with pytest.raises(env.LaunchEnvironmentError, match="TRAINING_HUB_NPROC_PER_NODE: must be a whole number in ASCII"):
        env.read_launch_environment({env.NPROC_PER_NODE: "\uff18"})  # full-width 8: int() would take it


def test_torchrun_variables_fill_what_training_hub_variables_leave_unset():
    """What Kubeflow's PyTorchJob/TrainJob set on each pod: the gang must not train node by node."""
    launch = env.read_launch_environment(
        {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "4", "PET_RDZV_ENDPOINT": "10.0.0.1:29500"}
    )
    assert launch.distributed == {"nnodes": 2, "node_rank": 1, "nproc_per_node": 4,
                                  "rdzv_endpoint": "10.0.0.1:29500", "rdzv_id": "10.0.0.1:29500"}
    assert launch.sources["node_rank"] == "PET_NODE_RANK"


def test_training_hub_variables_win_over_torchrun_ones():
    launch = env.read_launch_environment({"PET_NNODES": "2", env.NNODES: "4", "PET_NODE_RANK": "1", env.NODE_RANK: "3",
                                          env.RDZV_ID: "gang-1", "PET_RDZV_ID": "other"})
    assert launch.distributed == {"nnodes": 4, "node_rank": 3, "rdzv_id": "gang-1"}
    assert launch.sources == {"nnodes": env.NNODES, "node_rank": env.NODE_RANK, "rdzv_id": env.RDZV_ID}


def test_master_addr_and_port_make_the_endpoint():
    launch = env.read_launch_environment({"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "job-master-0",
                                          "PET_MASTER_PORT": "23456"})
    assert launch.distributed["rdzv_endpoint"] == "job-master-0:23456"
    assert launch.distributed["rdzv_id"] == "job-master-0:23456"  # the same on every node
    ipv6 = env.read_launch_environment({"PET_MASTER_ADDR": "fd00::1", "PET_MASTER_PORT": "1"})
    assert ipv6.distributed["rdzv_endpoint"] == "[fd00::1]:1"


@pytest.mark.parametrize(("raw", "expected"), [("auto", {}), ("gpu", {}), ("8", {"nproc_per_node": 8})])
def test_torchrun_nproc_words_mean_all_gpus(raw, expected):
    assert env.read_launch_environment({"PET_NPROC_PER_NODE": raw}).distributed == expected


def test_elastic_node_ranges_are_refused_by_name():
    with pytest.raises(env.LaunchEnvironmentError, match=r"PET_NNODES: elastic node ranges \(MIN:MAX, got '1:4'\)"):
        env.read_launch_environment({"PET_NNODES": "1:4"})
