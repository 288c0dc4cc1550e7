from __future__ import annotations

import socket
import threading
import time

import pytest
from launch_helpers import clean_env, free_port, read_summary, run_cli, valid_params, write_params

from training_hub.launch.rendezvous import Endpoint, RendezvousTimeout, parse_endpoint, wait_for_endpoint

UNRESOLVABLE = "no-such-host.invalid"  # RFC 2606: never resolves


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("job-0.ns.svc:29500", Endpoint("job-0.ns.svc", 29500)), ("[fd00::1]:1", Endpoint("fd00::1", 1)), ("10.0.0.1:65535", Endpoint("10.0.0.1", 65535))],
)
def test_parse_endpoint(raw, expected):
    assert parse_endpoint(raw) == expected


@pytest.mark.parametrize("raw", ["host", "host:", ":29500", "host:0", "host:70000", "host:http"])
def test_parse_endpoint_rejects_bad_values(raw):
    with pytest.raises(ValueError, match="rdzv_endpoint: must be"):
        parse_endpoint(raw)


def test_rank_0_only_needs_the_name_to_resolve():
    port = free_port()  # nothing listens: rank 0 is the one that will serve it
    assert wait_for_endpoint(f"127.0.0.1:{port}", node_rank=0, timeout_s=5, log=lambda _: None) < 1


@pytest.mark.timeout(30)
def test_unresolvable_host_times_out_with_a_clear_message():
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(RendezvousTimeout) as caught:
        wait_for_endpoint(f"{UNRESOLVABLE}:29500", node_rank=0, timeout_s=1.0, poll_interval_s=0.2, log=lines.append)
    assert time.monotonic() - start < 10
    assert f"rendezvous endpoint {UNRESOLVABLE}:29500 not ready after 1s" in str(caught.value)
    assert "does not resolve" in str(caught.value)
    assert lines and "waiting for rendezvous endpoint" in lines[0]


@pytest.mark.timeout(30)
def test_other_ranks_wait_for_the_port_to_accept_connections():
    port = free_port()
    with pytest.raises(RendezvousTimeout, match="does not accept connections"):
        wait_for_endpoint(f"127.0.0.1:{port}", node_rank=1, timeout_s=0.5, poll_interval_s=0.1, log=lambda _: None)

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_later():
        time.sleep(0.5)
        server.bind(("127.0.0.1", port))
        server.listen()

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        waited = wait_for_endpoint(f"127.0.0.1:{port}", node_rank=1, timeout_s=20, poll_interval_s=0.1, log=lambda _: None)
        assert 0.3 < waited < 20
    finally:
        thread.join()
        server.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("endpoint", "node_rank", "reason"),
    [(f"{UNRESOLVABLE}:29500", "0", "does not resolve"), ("127.0.0.1:{port}", "1", "does not accept connections")],
)
def test_sft_exits_69_with_the_summary_when_the_endpoint_never_comes(tmp_path, endpoint, node_rank, reason):
    config = write_params(tmp_path / "params.json", **valid_params(tmp_path))
    summary = tmp_path / "termination-log"
    env = clean_env(
        TRAINING_HUB_NNODES="2", TRAINING_HUB_NODE_RANK=node_rank, TRAINING_HUB_NPROC_PER_NODE="1",
        TRAINING_HUB_RDZV_ID="gang-1", TRAINING_HUB_RDZV_ENDPOINT=endpoint.format(port=free_port()),
        TRAINING_HUB_RDZV_TIMEOUT="1", TRAINING_HUB_TERMINATION_LOG=str(summary),
    )
    start = time.monotonic()
    done = run_cli(["sft", "--config", str(config)], env=env, trainer="launch_fakes:must_not_run")
    assert done.returncode == 69, done.stderr
    assert time.monotonic() - start < 30
    written = read_summary(summary)
    assert written["outcome"] == "rendezvous_timeout"
    assert reason in written["message"] and "not ready after 1s" in written["message"]
    assert "waiting for rendezvous endpoint" in done.stderr
    assert not (tmp_path / "ckpt").exists()  # training never started


@pytest.mark.timeout(60)
def test_preflight_exits_69_too(tmp_path):
    summary = tmp_path / "termination-log"
    env = clean_env(
        TRAINING_HUB_NNODES="2", TRAINING_HUB_NODE_RANK="1", TRAINING_HUB_NPROC_PER_NODE="1",
        TRAINING_HUB_RDZV_ID="gang-1", TRAINING_HUB_RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
        TRAINING_HUB_TERMINATION_LOG=str(summary),
    )
    done = run_cli(["preflight", "--rdzv-timeout", "0.5"], env=env)
    assert done.returncode == 69, done.stderr
    assert read_summary(summary)["outcome"] == "rendezvous_timeout"
