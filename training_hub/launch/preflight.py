"""Preflight: a real all-reduce across the gang, run under torchrun, before hours of training start.

`training-hub preflight` (see cli.py) waits for the rendezvous endpoint like `training-hub sft`, then
starts `python -m torch.distributed.run` with the same static rendezvous instructlab-training uses
(`--rdzv-endpoint` + `--node-rank`; `--standalone` on a single node) and this module as the worker.
Each worker joins the process group (NCCL when CUDA is available, gloo otherwise), all-reduces a
tensor in which every rank wrote `rank + 1`, checks that every element is `world * (world + 1) / 2`,
then times all-reduces of `--size-bytes` (rank 0 prints `{"event": "progress", "step": i, "of": iters}` at most
once a second meanwhile, read by the operator like training progress) and rank 0 prints one JSON line:

    {"event": "preflight", "ok": true, "backend": "gloo", "world_size": 2, "size_bytes": ...,
     "iters": 5, "seconds_per_iter": ..., "algbw_gbps": ..., "busbw_gbps": ...}

Bandwidths follow nccl-tests: algbw = bytes / time, busbw = algbw * 2 (n - 1) / n for all-reduce.
A wrong sum makes that worker exit PREFLIGHT_SUM_MISMATCH; torchrun then fails the node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

from training_hub.launch.progress import PROGRESS_EVENT, format_progress_line

PREFLIGHT_EVENT = "preflight"
PREFLIGHT_SUM_MISMATCH = 3  # worker exit code; torchrun reports the node as failed
DEFAULT_SIZE_BYTES = 64 * 1024 * 1024
DEFAULT_ITERS = 5
DEFAULT_WARMUP = 1
PROGRESS_INTERVAL_S = 1.0  # at most one progress line per second from rank 0


def expected_sum(world_size: int) -> int:
    """Every rank contributes rank + 1, so the all-reduced value is 1 + 2 + ... + world_size."""
    return world_size * (world_size + 1) // 2


def bandwidth_gbps(size_bytes: int, seconds_per_iter: float, world_size: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 bytes) for an all-reduce, as nccl-tests reports them."""
    if seconds_per_iter <= 0:
        return float("inf"), float("inf")
    algbw = size_bytes / seconds_per_iter / 1e9
    busbw = algbw * (2 * (world_size - 1) / world_size) if world_size > 1 else 0.0
    return algbw, busbw


def torchrun_command(
    *,
    nnodes: int,
    node_rank: int,
    nproc_per_node: int,
    rdzv_id: str | int | None,
    rdzv_endpoint: str | None,
    worker_args: Sequence[str],
    python: str = sys.executable,
) -> list[str]:
    """The torchrun command line that runs the preflight worker on this node.

    Multi-node uses the static rendezvous (node rank 0 serves the store on the endpoint), exactly
    what instructlab-training passes to torchrun for training, so a passing preflight proves the
    settings training will use. No endpoint (single node): `--standalone`.
    """
    command = [python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
    if rdzv_endpoint:
        command += [f"--node-rank={node_rank}", f"--rdzv-id={rdzv_id}", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        command += ["--standalone"]
    return command + ["-m", "training_hub.launch.preflight", *worker_args]


def worker_args(*, size_bytes: int, iters: int, warmup: int, backend: str) -> list[str]:
    return [f"--size-bytes={size_bytes}", f"--iters={iters}", f"--warmup={warmup}", f"--backend={backend}"]


def run_worker(size_bytes: int, iters: int, warmup: int, backend: str = "auto") -> dict[str, Any]:
    """Inside torchrun: check one all-reduce, then time `iters` of them. Returns rank 0's report."""
    import datetime

    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and backend in ("auto", "nccl")
    chosen = "nccl" if use_cuda else ("gloo" if backend == "auto" else backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    dist.init_process_group(backend=chosen, timeout=datetime.timedelta(minutes=10))
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        numel = max(1, size_bytes // 4)
        tensor = torch.full((numel,), float(rank + 1), dtype=torch.float32, device=device)
        dist.all_reduce(tensor)
        want = float(expected_sum(world))
        wrong = int((tensor != want).sum().item())
        wrong_total = torch.tensor([wrong], dtype=torch.int64, device=device)
        dist.all_reduce(wrong_total)  # every rank learns whether any rank saw a wrong value
        sum_ok = int(wrong_total.item()) == 0
        report: dict[str, Any] = {
            "event": PREFLIGHT_EVENT,
            "ok": sum_ok,
            "backend": chosen,
            "world_size": world,
            "expected_sum": want,
            "wrong_elements": int(wrong_total.item()),
            "size_bytes": numel * 4,
        }
        if sum_ok:
            for _ in range(warmup):
                dist.all_reduce(tensor)
            _synchronize(torch, use_cuda)
            dist.barrier()
            start = last_progress = time.perf_counter()
            for step in range(1, iters + 1):
                dist.all_reduce(tensor)
                if rank == 0 and time.perf_counter() - last_progress >= PROGRESS_INTERVAL_S:
                    # A long preflight shows how far it is, like training does (the operator's status.progress).
                    print(format_progress_line({"event": PROGRESS_EVENT, "step": step, "of": iters}), flush=True)
                    last_progress = time.perf_counter()
            _synchronize(torch, use_cuda)
            elapsed = time.perf_counter() - start
            # the slowest rank defines the collective's time
            elapsed_t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            dist.all_reduce(elapsed_t, op=dist.ReduceOp.MAX)
            per_iter = float(elapsed_t.item()) / max(1, iters)
            algbw, busbw = bandwidth_gbps(numel * 4, per_iter, world)
            report.update(iters=iters, seconds_per_iter=per_iter, algbw_gbps=algbw, busbw_gbps=busbw)
        report["rank"] = rank
        return report
    finally:
        dist.destroy_process_group()


def _synchronize(torch: Any, use_cuda: bool) -> None:
    if use_cuda:
        torch.cuda.synchronize()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_hub.launch.preflight", description="preflight worker")
    parser.add_argument("--size-bytes", type=int, default=DEFAULT_SIZE_BYTES)
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    args = parser.parse_args(argv)
    report = run_worker(args.size_bytes, args.iters, args.warmup, args.backend)
    if report["rank"] == 0:
        print(json.dumps({k: v for k, v in report.items() if k != "rank"}), flush=True)
    if not report["ok"]:
        print(
            f"training-hub preflight: rank {report['rank']}: all-reduce sum wrong in "
            f"{report['wrong_elements']} elements (expected {report['expected_sum']})",
            file=sys.stderr,
            flush=True,
        )
        return PREFLIGHT_SUM_MISMATCH
    return 0


if __name__ == "__main__":
    sys.exit(main())
