"""How much `import training_hub` costs: wall time and peak RSS of a fresh interpreter, next to `import torch`.

    python bench/import_time.py [--runs 7]

Each statement runs in its own `python -c` process, `--runs` times; the table shows the median and
the fastest wall time and the median peak RSS (from wait4), and ratios against `import torch`
(the yardstick: what training code pays anyway). Goal: `import training_hub` <= 0.15 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = [
    ("python -c pass (interpreter only)", "pass"),
    ("import training_hub", "import training_hub"),
    ("import training_hub; training_hub.sft", "import training_hub; training_hub.sft"),
    ("import torch", "import torch"),
    ("import instructlab.training", "import instructlab.training"),
]
YARDSTICK = "import torch"
GOAL_SECONDS = 0.15


def measure(statement: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh interpreter running `statement`."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", statement], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{statement!r} failed with exit status {process.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    results: dict[str, tuple[float, float, float]] = {}
    for label, statement in CASES:
        measure(statement)  # warm the page cache / bytecode
        walls, rss = zip(*(measure(statement) for _ in range(args.runs)))
        results[label] = (statistics.median(walls), min(walls), statistics.median(rss))

    torch_wall, _, torch_rss = results[YARDSTICK]
    print(f"python {sys.version.split()[0]}, {args.runs} runs each, {os.cpu_count()} CPUs\n")
    print(f"{'statement':<42} {'median s':>9} {'min s':>7} {'RSS MiB':>8} {'time/torch':>11} {'RSS/torch':>10}")
    for label, (wall, fastest, rss) in results.items():
        print(f"{label:<42} {wall:>9.3f} {fastest:>7.3f} {rss:>8.1f} {wall / torch_wall:>11.3f} {rss / torch_rss:>10.3f}")
    lib_wall = results["import training_hub"][0]
    print(f"\nimport training_hub: {lib_wall:.3f} s median "
          f"({'within' if lib_wall <= GOAL_SECONDS else 'OVER'} the {GOAL_SECONDS} s goal), "
          f"{torch_wall / lib_wall:.0f}x faster than import torch")


if __name__ == "__main__":
    main()
