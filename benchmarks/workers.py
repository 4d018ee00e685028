"""Two runs in parallel on one thread each against one after another on every core: the choice
``cli.reproduce.default_workers`` makes for a sweep of 2 or 3 runs (today: one after another).

Both sides train the same two runs through ``train_all`` (the embedded default, LoRA r=8 on all six roles,
seeds 0 and 1, ``--steps`` steps each with a validation pass every ``--steps / 2``, the test split at the end:
the whole life of a short run, model loading included), each into its own temporary sweep. Prints each
side's wall time and the ratio. Run it on an otherwise idle machine.

    .venv/bin/python benchmarks/workers.py [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lora_analysis.cli.reproduce import train_all
from lora_analysis.machine import usable_cores


def side(workers: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        common = ["lora.r=8", "lora.targets=all", f"optim.steps={steps}", f"optim.eval_every={steps // 2}",
                  "optim.patience=0", "optim.checkpoint_every=0", "progress=false"]
        plan = [(f"seed{seed}", [*common, f"seed={seed}"]) for seed in (0, 1)]
        start = time.perf_counter()
        train_all(plan, Path(out) / "bench", out, workers)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    cores = usable_cores()
    print(f"{cores} usable cores, load {os.getloadavg()[0]:.2f}; 2 runs of {args.steps} steps each")
    parallel = side(2, args.steps)
    print(f"2 at a time, {max(1, cores // 2)} thread(s) each:   {parallel:7.1f} s", flush=True)
    sequential = side(1, args.steps)
    print(f"one after another, {cores} threads each: {sequential:7.1f} s   (2 at a time: {sequential / parallel:.2f}x "
          "faster)")


if __name__ == "__main__":
    main()
