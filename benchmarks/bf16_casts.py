"""bf16 steps with and without ``precision.share_input_casts``, interleaved in one run on the same batches.

LoRA r=8 on q, k, v, o, ffn_in, ffn_out of MiniLM-L6 (the embedded default), batch 32, bf16 autocast with
the frozen Linears stored in bfloat16 (what the trainer runs). Two models, identical but for the hooks,
take turns: ``--rounds`` rounds of ``--steps`` timed steps each, after warm-up steps. Prints ms per step
of each (median over rounds) and their ratio.

    .venv/bin/python benchmarks/bf16_casts.py [--steps 20] [--rounds 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from profile_step import setup, train_step

from lora_analysis.train import data as task_data
from lora_analysis.train.modeling import lora_layers


def stepper(settings, model, data, pad_id, batches):
    """A function timing the trainer's steps over a list of batches: ms per step."""
    step = train_step(settings, model)
    model.train()

    def run(batch_list) -> float:
        start = time.perf_counter()
        for batch in batch_list:
            step(batch)
        return (time.perf_counter() - start) / len(batch_list) * 1e3

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["lora.r=8", "lora.targets=all", f"out_dir={tmp}", "optim.precision=bf16"]
        plain = setup(overrides, shared_casts=False)
        shared = setup(overrides, shared_casts=True)
        settings, _, data, pad_id = plain
        order = task_data.train_batches(data.train.lengths, settings.optim.batch_size, 0)
        batches = [task_data.collate(data.train, next(order), pad_id, settings.model.task)
                   for _ in range(args.steps * args.rounds + 3)]
        runs = {"autocast casts": stepper(*plain, batches), "shared casts": stepper(*shared, batches)}
        for run in runs.values():
            run(batches[:3])  # warm-up
        times = {name: [] for name in runs}
        for r in range(args.rounds):
            chunk = batches[3 + r * args.steps: 3 + (r + 1) * args.steps]
            for name, run in runs.items():
                times[name].append(run(chunk))
    hooked = len(lora_layers(shared[1]))
    print(f"bf16, LoRA r=8 on all six roles ({hooked} layers), batch 32, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved")
    for name, values in times.items():
        print(f"  {name:<16} {statistics.median(values):7.1f} ms/step  (rounds: "
              + ", ".join(f"{v:.0f}" for v in values) + ")")
    ratio = statistics.median(times["autocast casts"]) / statistics.median(times["shared casts"])
    print(f"  shared / autocast speed-up: {ratio:.2f}x")


if __name__ == "__main__":
    main()
