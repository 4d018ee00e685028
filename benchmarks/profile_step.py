"""Where a training step spends its time: ``torch.profiler`` over real steps of the embedded default.

LoRA r=8 on q, k, v, o, ffn_in, ffn_out of MiniLM-L6, batch 32 of real length-grouped batches, in fp32
and under bfloat16 autocast; prints the top operators by self CPU time for each precision, and the
share of the step spent in matrix products (aten::mm/addmm/bmm/linear and their backward).

    .venv/bin/python benchmarks/profile_step.py [--steps 20] [--threads 2] [--top 15] [--dropouts fast,torch]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lora_analysis.hydra_compose import compose
from lora_analysis.train import data as task_data
from lora_analysis.train import divergence, precision, trainer
from lora_analysis.train.config import register_configs
from lora_analysis.train.dropout import use_fast_dropout
from lora_analysis.train.modeling import add_lora, load_model, load_tokenizer, lora_layers
from lora_analysis.train.sweep import settings_from

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_dot_product")


def setup(overrides: list[str], shared_casts: bool | None = None):
    """The trainer's model, data and pad id for ``overrides``; ``shared_casts`` (default: unless
    ``--no-shared-casts``) hooks ``precision.share_input_casts`` in bf16, and ``optim.fast_dropout``
    (default true) swaps in ``train.dropout``, as the trainer does."""
    register_configs()
    settings = settings_from(compose("train", overrides), "profile")
    tokenizer = load_tokenizer(settings.model)
    data = task_data.load_task_data(settings.data, settings.model.task, tokenizer, Path(settings.out_dir) / ".c")
    model, _ = add_lora(load_model(settings.model, 2, tokenizer.pad_token_id), settings.lora, settings.model.task, 0)
    if settings.optim.fast_dropout:
        use_fast_dropout(model)
    if settings.optim.precision == "bf16":  # as the trainer does (train.trainer.resolve_precision)
        precision.cast_frozen_linears(model, torch.bfloat16)
        if shared_casts if shared_casts is not None else "--no-shared-casts" not in sys.argv:
            precision.share_input_casts(lora_layers(model).values(), torch.bfloat16)
    return settings, model, data, tokenizer.pad_token_id


def train_step(settings, model):
    """One optimiser step on a batch, as the trainer takes it (autocast, the divergence check, clipping,
    fused AdamW)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = trainer.make_optimizer(settings, params)
    device = torch.device("cpu")

    def step(batch):
        with trainer.autocast(settings, device):
            loss = model(**batch).loss
        loss.backward()
        grads = [p.grad for p in params.values() if p.grad is not None]
        norm = divergence.grad_norm(grads)
        divergence.check_step(loss, grads, norm, 1)
        divergence.clip(list(params.values()), 1.0, norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved(models: dict[str, tuple], steps: int, rounds: int) -> dict[str, list[float]]:
    """ms per step of each of ``models`` (name -> ``setup(...)``), taking turns on the same batches:
    3 warm-up steps each, then ``rounds`` rounds of ``steps`` timed steps per model."""
    settings, _, data, pad_id = next(iter(models.values()))
    order = task_data.train_batches(data.train.lengths, settings.optim.batch_size, 0)
    batches = [task_data.collate(data.train, next(order), pad_id, settings.model.task)
               for _ in range(steps * rounds + 3)]
    runs = {name: timed_steps(*setup_) for name, setup_ in models.items()}
    for run in runs.values():
        run(batches[:3])  # warm-up
    times = {name: [] for name in runs}
    for r in range(rounds):
        chunk = batches[3 + r * steps: 3 + (r + 1) * steps]
        for name, run in runs.items():
            times[name].append(run(chunk))
    return times


def timed_steps(settings, model, data=None, pad_id=None):
    """A function taking the trainer's steps over a list of batches and returning ms per step."""
    step = train_step(settings, model)
    model.train()

    def run(batch_list) -> float:
        start = time.perf_counter()
        for batch in batch_list:
            step(batch)
        return (time.perf_counter() - start) / len(batch_list) * 1e3

    return run


def print_times(times: dict[str, list[float]]) -> None:
    """Each model's median ms per step over the rounds, and the rounds."""
    for name, values in times.items():
        print(f"  {name:<24} {statistics.median(values):7.1f} ms/step  (rounds: "
              + ", ".join(f"{v:.0f}" for v in values) + ")")


def profile_steps(settings, model, data, pad_id, steps: int):
    batches = task_data.train_batches(data.train.lengths, settings.optim.batch_size, 0)
    batch_list = [task_data.collate(data.train, next(batches), pad_id, settings.model.task) for _ in range(steps + 3)]
    model.train()
    step = train_step(settings, model)
    for batch in batch_list[:3]:  # warm-up
        step(batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batch_list[3:]:
            step(batch)
    return prof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--no-shared-casts", action="store_true", help="bf16 without precision.share_input_casts")
    parser.add_argument("--dropouts", default="fast", help="fast (train.dropout), torch, or fast,torch for both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for precision, dropout in itertools.product(args.precisions.split(","), args.dropouts.split(",")):
            overrides = ["lora.r=8", "lora.targets=all", f"out_dir={tmp}", f"optim.precision={precision}",
                         f"optim.fast_dropout={dropout == 'fast'}"]
            prof = profile_steps(*setup(overrides), args.steps)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            matmul = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL) or "Mm" in e.key)
            print(f"\n== {precision}, {dropout} dropout: {total / 1e3 / args.steps:.1f} ms per step (self CPU, "
                  f"profiled), matrix products {matmul / total:.0%}")
            print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
            copies = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::copy_"]
            copies.sort(key=lambda e: -e.self_cpu_time_total)
            print("aten::copy_ by input shapes (self ms per step, calls per step):")
            for e in copies[:8]:
                ms, calls = e.self_cpu_time_total / 1e3 / args.steps, e.count / args.steps
                print(f"  {ms:8.1f} {calls:6.0f}  {e.input_shapes}")


if __name__ == "__main__":
    main()
