"""GPU-reserved seconds per job spent before training starts, without and with the prepare step.

Without it (instructlab's own way), every gang pod runs the data processing in its launcher before torchrun starts,
while its GPUs are allocated to it, and every gang attempt (restart, resume) does it again. With it, one CPU pod
prepares the data once per input; the gang pods only check the manifest (node rank 0) or wait for it (others).

Measured for real on this machine (CPU): a chat data set of --samples conversations, the tiny local model
(training_hub.testing), each phase a fresh Python process as in a pod:

    without   python -c 'instructlab.training.data_process.process_data(...)'      (what run_training runs per node)
    prepare   training-hub prepare --config params.json   (the prepare pod: CPU only)
    with      python -c 'training_hub.backends.prepare.ensure_prepared(...)'     (what sft() runs per node now)

GPU-reserved seconds = nnodes x nproc_per_node x (seconds the gang pods spend before torchrun) x gang attempts.
The processing on a gang node is CPU work whatever the GPUs: its time here stands for its time there (a real node
has more cores: pass --cpus to give the processing as many processes as such a node would use).

    .venv/bin/python bench/prepare_gpu_seconds.py [--samples 20000] [--nnodes 4] [--nproc-per-node 8] [--attempts 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INSTRUCTLAB_LAUNCHER = textwrap.dedent("""
    import sys
    from instructlab.training import data_process
    model, data, out, procs = sys.argv[1:5]
    data_process.process_data(data_path=data, data_output_path=out, max_seq_len=1024, model_path=model,
                              num_cpu_procs=int(procs))
""")

LIBRARY_LAUNCHER = textwrap.dedent("""
    import sys
    from training_hub.backends.prepare import ensure_prepared
    from training_hub.params import parse_train_kwargs
    model, data, ckpt, rank, nnodes = sys.argv[1:6]
    request = parse_train_kwargs(dict(model_path=model, data_path=data, ckpt_output_dir=ckpt, num_epochs=1,
        effective_batch_size=8, learning_rate=1e-4, max_seq_len=1024, nnodes=int(nnodes), node_rank=int(rank),
        rdzv_id="bench", rdzv_endpoint="127.0.0.1:29500"))
    prepared = ensure_prepared(request, timeout_s=60)
    assert prepared.reused, "the gang found no matching manifest"
""")


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000, help="chat conversations in the data set")
    parser.add_argument("--nnodes", type=int, default=4)
    parser.add_argument("--nproc-per-node", type=int, default=8, help="GPUs per node")
    parser.add_argument("--attempts", type=int, default=2, help="gang attempts per job (1 = no restart)")
    parser.add_argument("--cpus", type=int, default=None, help="data processing processes (default: this machine's)")
    args = parser.parse_args(argv)

    from training_hub.backends.instructlab import available_cpu_count
    from training_hub.testing import build_tiny_model, write_chat_dataset

    cpus = args.cpus or min(16, available_cpu_count())
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        data = write_chat_dataset(root / "train.jsonl", n_samples=args.samples, seed=1)
        print(f"data set: {args.samples} conversations, {data.stat().st_size / 1e6:.1f} MB; processing with {cpus} "
              f"process(es); gang {args.nnodes} x {args.nproc_per_node} GPUs, {args.attempts} attempt(s)", flush=True)

        without = timed([sys.executable, "-c", INSTRUCTLAB_LAUNCHER, str(model), str(data), str(root / "plain"),
                         str(cpus)], env)
        params = root / "params.json"
        params.write_text(json.dumps({
            "modelPath": str(model), "dataPath": str(data), "ckptOutputDir": str(root / "ckpt"), "numEpochs": 1,
            "effectiveBatchSize": 8, "learningRate": 1e-4, "maxSeqLen": 1024,
            "extraArgs": {"data_process_num_cpu_procs": cpus},
        }))
        prepare_pod = timed([str(Path(sys.executable).with_name("training-hub")), "prepare", "--config", str(params),
                             "--termination-log", str(root / "summary.json")], env)
        summary = json.loads((root / "summary.json").read_text())
        assert summary["reused"] is False, summary
        gang_rank0 = timed([sys.executable, "-c", LIBRARY_LAUNCHER, str(model), str(data), str(root / "ckpt"), "0",
                            str(args.nnodes)], env)
        gang_other = timed([sys.executable, "-c", LIBRARY_LAUNCHER, str(model), str(data), str(root / "ckpt"), "1",
                            str(args.nnodes)], env)

    gpus = args.nnodes * args.nproc_per_node
    per_attempt_with = max(gang_rank0, gang_other)  # the gang starts torchrun when its slowest node is ready
    gpu_seconds_without = gpus * without * args.attempts
    gpu_seconds_with = gpus * per_attempt_with * args.attempts
    print(f"seconds before torchrun, per gang attempt: without prepare step {without:.1f} s (every node processes); "
          f"with it {per_attempt_with:.1f} s (node rank 0 {gang_rank0:.1f} s: manifest check; others "
          f"{gang_other:.1f} s)")
    print(f"prepare pod (CPU only, once per input): {prepare_pod:.1f} s, {summary['samples']} samples")
    print(f"GPU-reserved seconds per job: without {gpu_seconds_without:.0f}, with {gpu_seconds_with:.0f} "
          f"(ratio {gpu_seconds_without / gpu_seconds_with:.1f}x; saved {gpu_seconds_without - gpu_seconds_with:.0f} "
          f"GPU-seconds = {(gpu_seconds_without - gpu_seconds_with) / 3600:.2f} GPU-hours)")
    print("(the Python start and imports are in every figure; on this data set they dominate the 'with' side)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
