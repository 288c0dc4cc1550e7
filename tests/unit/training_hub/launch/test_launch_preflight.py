from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from launch_helpers import clean_env, cli_command, free_port, read_summary

from training_hub.launch.preflight import bandwidth_gbps, expected_sum, torchrun_command, worker_args


def test_expected_sum_of_rank_plus_one():
    assert [expected_sum(n) for n in (1, 2, 4, 16)] == [1, 3, 10, 136]


def test_bandwidth_follows_nccl_tests():
    algbw, busbw = bandwidth_gbps(1_000_000_000, 0.5, 8)
    assert algbw == pytest.approx(2.0)
    assert busbw == pytest.approx(2.0 * 2 * 7 / 8)
    assert bandwidth_gbps(10, 1.0, 1)[1] == 0.0  # nothing crosses a link with one rank


def test_multi_node_uses_the_static_rendezvous_like_instructlab():
    command = torchrun_command(
        nnodes=4, node_rank=2, nproc_per_node=8, rdzv_id="job-3", rdzv_endpoint="job-0.ns.svc:29500",
        worker_args=worker_args(size_bytes=1024, iters=2, warmup=0, backend="auto"), python="py",
    )
    assert command == [
        "py", "-m", "torch.distributed.run", "--nnodes=4", "--nproc-per-node=8", "--node-rank=2", "--rdzv-id=job-3",
        "--rdzv-endpoint=job-0.ns.svc:29500", "-m", "training_hub.launch.preflight",
        "--size-bytes=1024", "--iters=2", "--warmup=0", "--backend=auto",
    ]
    single = torchrun_command(nnodes=1, node_rank=0, nproc_per_node=1, rdzv_id=None, rdzv_endpoint=None, worker_args=[])
    assert "--standalone" in single and not any(arg.startswith("--rdzv") for arg in single)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_nodes_of_one_process_all_reduce_over_gloo(tmp_path):
    """Two `training-hub preflight` processes on 127.0.0.1 as node ranks 0 and 1 of one gang."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for rank in (1, 0):  # rank 1 first: it must wait until rank 0 serves the store
        env = clean_env(
            TRAINING_HUB_NNODES="2", TRAINING_HUB_NODE_RANK=str(rank), TRAINING_HUB_NPROC_PER_NODE="1",
            TRAINING_HUB_RDZV_ID="preflight-test", TRAINING_HUB_RDZV_ENDPOINT=endpoint, TRAINING_HUB_RDZV_TIMEOUT="120",
            TRAINING_HUB_TERMINATION_LOG=str(tmp_path / f"summary-{rank}"), GLOO_SOCKET_IFNAME="lo",
        )
        command = cli_command(["preflight", "--size-mb", "1", "--iters", "3", "--backend", "gloo"])
        procs.append((rank, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    results = {}
    for rank, proc in procs:
        try:
            out, err = proc.communicate(timeout=200)
        except subprocess.TimeoutExpired:
            for _, other in procs:
                other.kill()
            raise
        results[rank] = (proc.returncode, out, err)
    for rank, (code, out, err) in results.items():
        assert code == 0, f"rank {rank}:\n{out}\n{err}"
        summary = read_summary(tmp_path / f"summary-{rank}")
        assert summary["outcome"] == "succeeded"
        assert f"all-reduce sum correct on every rank (node rank {rank} of 2)" in summary["message"]
    reports = [json.loads(line) for line in results[0][1].splitlines() if line.startswith('{"event": "preflight"')]
    assert len(reports) == 1
    report = reports[0]
    assert report["ok"] and report["backend"] == "gloo" and report["world_size"] == 2
    assert report["expected_sum"] == 3.0 and report["wrong_elements"] == 0
    assert report["size_bytes"] == 1024 * 1024 and report["iters"] == 3
    assert report["algbw_gbps"] > 0 and report["busbw_gbps"] == pytest.approx(report["algbw_gbps"])  # 2(n-1)/n = 1
    print(f"\npreflight 2x1 gloo on 127.0.0.1, 1 MiB: algbw {report['algbw_gbps']:.3f} GB/s", file=sys.stderr)
    assert "waiting for rendezvous endpoint" in results[1][2]  # rank 1 really waited for rank 0's store


def _descendants(pid: int) -> list[int]:
    try:
        children = [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []
    return children + [d for c in children for d in _descendants(c)]


def _cmdline(pid: int) -> list[bytes]:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_worker_is_told_apart_from_the_rank_that_lost_it(tmp_path):
    """Rank 1's worker is SIGKILLed mid-all-reduce: rank 1 reports the signal (137), rank 0 that it lost a peer.
    Both torchruns exit 1 in the same second, so without this the operator cannot tell which rank failed first."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = {}
    for rank in (0, 1):
        env = clean_env(
            TRAINING_HUB_NNODES="2", TRAINING_HUB_NODE_RANK=str(rank), TRAINING_HUB_NPROC_PER_NODE="1",
            TRAINING_HUB_RDZV_ID="kill-test", TRAINING_HUB_RDZV_ENDPOINT=endpoint, TRAINING_HUB_RDZV_TIMEOUT="120",
            TRAINING_HUB_TERMINATION_LOG=str(tmp_path / f"summary-{rank}"), GLOO_SOCKET_IFNAME="lo",
        )
        command = cli_command(["preflight", "--size-mb", "4", "--iters", "100000", "--backend", "gloo"])
        procs[rank] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in procs[0].stdout:  # all-reducing once rank 0 reports progress
            if '"progress"' in line:
                break
        workers = [p for p in _descendants(procs[1].pid)
                   if b"training_hub.launch.preflight" in _cmdline(p) and b"torch.distributed.run" not in _cmdline(p)]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        codes = {rank: proc.wait(timeout=120) for rank, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    killed, lost = read_summary(tmp_path / "summary-1"), read_summary(tmp_path / "summary-0")
    assert codes[1] == 128 + signal.SIGKILL and "peerLost" not in killed
    assert "worker rank 1 (local rank 0) was killed by SIGKILL" in killed["message"], killed
    assert codes[0] == 1 and lost["peerLost"] is True and lost["outcome"] == "failed"
    assert "lost its connection to another rank" in lost["message"] and "by peer" in lost["message"], lost


@pytest.mark.timeout(60)
def test_bad_preflight_flags_exit_78(tmp_path):
    env = clean_env(TRAINING_HUB_TERMINATION_LOG=str(tmp_path / "summary"))
    done = subprocess.run(cli_command(["preflight", "--size-mb", "-1"]), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    assert read_summary(tmp_path / "summary") == {
        "outcome": "invalid_config", "message": "training-hub preflight: argument --size-mb: must be > 0 (got '-1')"}


@pytest.mark.timeout(60)
def test_bad_preflight_environment_has_no_pydantic_prefixes(tmp_path):
    env = clean_env(TRAINING_HUB_TERMINATION_LOG=str(tmp_path / "summary"), TRAINING_HUB_NNODES="2",
                    TRAINING_HUB_RDZV_ID="x", TRAINING_HUB_RDZV_ENDPOINT="::1:29500")
    done = subprocess.run(cli_command(["preflight"]), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    message = read_summary(tmp_path / "summary")["message"]
    assert message == ('invalid SFT parameters:\n  - rdzv_endpoint: must be "host:port" (a DNS name, IPv4 address or '
                       "[IPv6] address, and a port in 1..65535); write an IPv6 address in brackets: [::1]:29500 (got "
                       "'::1:29500')")
    assert "Value error" not in done.stderr


@pytest.mark.timeout(120)
def test_rank0_prints_progress_lines_the_operator_reads(monkeypatch, capsys):
    """One in-process rank over gloo: with the interval at 0 every timed all-reduce gives a progress line."""
    from sftjob_operator.status import parse_progress_line
    from training_hub.launch import preflight

    monkeypatch.setattr(preflight, "PROGRESS_INTERVAL_S", 0.0)
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                        "GLOO_SOCKET_IFNAME": "lo"}.items():
        monkeypatch.setenv(name, value)
    report = preflight.run_worker(size_bytes=4096, iters=3, warmup=0, backend="gloo")
    assert report["ok"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"progress"' in line]
    assert lines == [{"event": "progress", "step": step, "of": 3} for step in (1, 2, 3)]
    assert parse_progress_line("\n".join(json.dumps(line) for line in lines))["step"] == 3
