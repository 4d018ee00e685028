"""Training steps with torch's dropout and with ``train.dropout``'s, interleaved in one run on the same batches.

LoRA r=8 on q, k, v, o, ffn_in, ffn_out of MiniLM-L6 (the embedded default), batch 32, what the trainer
runs in ``--precision`` (bf16: autocast, frozen Linears in bfloat16, shared input casts). Three models,
identical but for their dropout, take turns: torch's (``optim.fast_dropout=false``), ``FastDropout`` in
the ``nn.Dropout`` layers only, and those plus the attention function ``ATTENTION`` (the default).
``--rounds`` rounds of ``--steps`` timed steps each, after warm-up steps; prints ms per step of each
(median over rounds) and the speed-ups over torch's. Interleaving matters here: this VM's speed drifts
by 10-20% from one minute to the next, more than the effect measured.

    .venv/bin/python benchmarks/dropout_speed.py [--steps 20] [--rounds 4] [--threads 2] [--precision bf16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from profile_step import interleaved, print_times, setup

from lora_analysis.train.dropout import use_fast_dropout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        common = ["lora.r=8", "lora.targets=all", f"out_dir={tmp}", f"optim.precision={args.precision}"]
        torch_dropout = setup([*common, "optim.fast_dropout=false"])
        layers_only = setup([*common, "optim.fast_dropout=false"])
        use_fast_dropout(layers_only[1], attention=False)
        both = setup([*common, "optim.fast_dropout=true"])
        times = interleaved({"torch dropout": torch_dropout, "fast, layers": layers_only,
                             "fast, layers+attention": both}, args.steps, args.rounds)
    print(f"{args.precision}, LoRA r=8 on all six roles, batch 32, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved")
    print_times(times)
    base = statistics.median(times["torch dropout"])
    for name in list(times)[1:]:
        print(f"  {name} / torch dropout speed-up: {base / statistics.median(times[name]):.2f}x")


if __name__ == "__main__":
    main()
