"""Validation cost against ``optim.eval_batch_size``: the trainer's ``evaluate`` on the embedded default's
validation split (1,000 texts), LoRA r=16 on all six roles of MiniLM-L6, side by side for each batch size,
the default (256) as the baseline. A run of the protocol evaluates every ``optim.eval_every`` steps, so
this is a fixed share of every ablation's wall time.

    .venv/bin/python benchmarks/eval_batch.py [--sizes 32,64,128,256] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from profile_step import setup  # run as a script: benchmarks/ is on sys.path

from lora_analysis.train import trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="32,64,128,256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the new classifier head: the same scores in every run of this script
    settings, model, data, pad_id = setup(["lora.r=16", "lora.targets=all"])
    device = torch.device("cpu")
    print(f"{len(data.val)} validation texts, {torch.get_num_threads()} thread(s)")
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        settings.optim.eval_batch_size = size
        trainer.evaluate(model, data.val, settings, pad_id, device, prefix="val")  # warm-up
        times, scores = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            scores = trainer.evaluate(model, data.val, settings, pad_id, device, prefix="val")
            times.append(time.perf_counter() - start)
        results[size] = (statistics.median(times), scores)
    base = results.get(256, next(iter(results.values())))[0]
    print(f"{'eval_batch_size':>15} {'seconds':>8} {'vs 256':>7} {'val_loss':>10} {'val_accuracy':>12}")
    for size, (seconds, scores) in results.items():
        print(f"{size:>15} {seconds:8.2f} {base / seconds:6.2f}x {scores['val_loss']:10.6f} "
              f"{scores['val_accuracy']:12.4f}")


if __name__ == "__main__":
    main()
