"""Reading torchrun's failure report: the text is torch's own (ChildFailedError.format_msg), so a change of
format in a new torch release fails here, not silently in a gang."""

from __future__ import annotations

import pytest

from training_hub.launch.worker_failure import TorchrunOutputWatch

errors = pytest.importorskip("torch.distributed.elastic.multiprocessing.errors")

GLOO_RESET = (
    "[rank0]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [10.0.0.7]:43209: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)


def _report(exitcodes: dict[int, int]) -> list[str]:
    """torchrun's report for workers (global rank: exit code), as printed when it exits."""
    failures = {rank: errors.ProcessFailure(local_rank=rank % 2, pid=1000 + rank, exitcode=code, error_file="")
                for rank, code in exitcodes.items()}
    return ["Traceback (most recent call last):", *str(errors.ChildFailedError("train.py", failures)).splitlines()]


def _watch(lines: list[str]) -> TorchrunOutputWatch:
    watch = TorchrunOutputWatch()
    for line in lines:
        watch.feed(line)
    return watch


def test_a_worker_killed_by_a_signal_is_this_nodes_own_failure():
    failure = _watch(["step 3", *_report({5: -9})]).failure()
    assert failure.describe() == "worker rank 5 (local rank 1) was killed by SIGKILL"
    assert failure.exit_code(1) == 137 and failure.summary_fields() == {}


def test_a_signal_outranks_the_peers_that_lost_it_on_the_same_node():
    # Local rank 0 failed first (it lost local rank 1, which the OOM killer took): the signal is the cause.
    failure = _watch([GLOO_RESET, *_report({4: 1, 5: -9})]).failure()
    assert failure.killed_by_signal.rank == 5 and failure.summary_fields() == {}


def test_an_error_after_losing_a_peer_says_so_and_keeps_the_exit_code():
    failure = _watch(["loading", GLOO_RESET, *_report({0: 1})]).failure()
    assert failure.summary_fields() == {"peerLost": True} and failure.exit_code(1) == 1
    assert failure.describe().startswith("a worker lost its connection to another rank, which probably failed first")
    assert "Connection reset by peer" in failure.describe() and len(failure.lost_peer) <= 300


def test_the_local_workers_torchrun_stopped_after_the_first_failure_are_not_the_cause():
    # 2 GPUs on the node: rank 4 ran out of memory; torchrun then stopped rank 5 (SIGTERM), whose NCCL
    # communicator was aborted. The node failed on its own.
    lines = ["[rank4]: torch.OutOfMemoryError: CUDA out of memory.",
             "[rank5]: RuntimeError: NCCL communicator was aborted on rank 5.", *_report({4: 1, 5: -15})]
    watch = _watch(lines)
    assert watch.root_cause.rank == 4 and watch.failure() is None


def test_without_torchruns_report_any_lost_peer_line_of_the_node_counts():
    assert _watch([GLOO_RESET]).failure().summary_fields() == {"peerLost": True}


@pytest.mark.parametrize("lines", [
    [],
    ["ValueError: bad data", *_report({0: 1})],
    ["exitcode  : -9 (pid: 3)"],  # not in a report
    [GLOO_RESET, *_report({2: 1})],  # another rank's line: rank 2 failed on its own
])
def test_a_failure_of_its_own_or_no_report_says_nothing(lines):
    assert _watch(lines).failure() is None
