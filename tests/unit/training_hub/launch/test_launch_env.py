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
    assert launch.termination_log == "/dev/termination-log"


def test_every_bad_value_is_named():
    with pytest.raises(env.LaunchEnvironmentError) as caught:
        env.read_launch_environment({env.NNODES: "two", env.NODE_RANK: "1.5", env.RDZV_TIMEOUT: "-3"})
    message = str(caught.value)
    assert "TRAINING_HUB_NNODES: must be an integer (got 'two')" in message
    assert "TRAINING_HUB_NODE_RANK: must be an integer (got '1.5')" in message
    assert "TRAINING_HUB_RDZV_TIMEOUT: must be a number of seconds > 0 (got '-3')" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("raw", ["0", "nan", "inf", "soon"])
def test_timeout_must_be_positive_and_finite(raw):
    with pytest.raises(ValueError, match="must be a number of seconds > 0"):
        env.parse_timeout(raw)
