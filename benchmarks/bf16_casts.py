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

import torch
from profile_step import interleaved, print_times, setup

from lora_analysis.train.modeling import lora_layers


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
        times = interleaved({"autocast casts": plain, "shared casts": shared}, args.steps, args.rounds)
    hooked = len(lora_layers(shared[1]))
    print(f"bf16, LoRA r=8 on all six roles ({hooked} layers), batch 32, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved")
    print_times(times)
    ratio = statistics.median(times["autocast casts"]) / statistics.median(times["shared casts"])
    print(f"  shared / autocast speed-up: {ratio:.2f}x")


if __name__ == "__main__":
    main()
