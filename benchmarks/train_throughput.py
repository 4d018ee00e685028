"""Training throughput: this toolkit's loop against transformers' Trainer + PEFT, in one run.

Both train LoRA r=8 on q, k, v, o and the FFN of the embedded MiniLM on Rotten Tomatoes, same batch
size, steps, learning-rate schedule, LoRA init and seed; both evaluate on the same 2,000 test texts.
The baseline is the common recipe: tokenise with ``padding="max_length"`` (64) and hand a dataset to
``Trainer``. Ours pads each length-grouped batch to its own longest text and evaluates under
``torch.inference_mode``.

Three loops: ours in fp32, ours with ``optim.precision=auto`` (its choice, and why, in the header) and
the baseline. Printed: examples/s, test accuracy and achieved FLOP/s of each against the matrix-multiply
peak of its own number format (fp32 or bf16, 2048^3) measured here in the same run, and the ratios.
FLOPs are counted by ``torch.utils.flop_counter`` on real forward+backward steps, fitted as
``B * T * (a + b * T)`` in batch size B and padded width T, and summed over the batches each loop ran.

    .venv/bin/python benchmarks/train_throughput.py [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lora_analysis.hydra_compose import compose
from lora_analysis.train import data as task_data
from lora_analysis.train.config import TrainConfig, register_configs
from lora_analysis.train.modeling import add_lora, load_model, load_tokenizer
from lora_analysis.train.precision import cpu_model
from lora_analysis.train.sweep import run_overrides, settings_from


def matmul_peak(seconds: float = 3.0, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n matrix multiply in ``dtype``, best of repeated timings."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def flop_model(settings: TrainConfig) -> tuple[float, float]:
    """(a, b) such that one training step on a (B, T) batch costs B * T * (a + b * T) FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    tokenizer = load_tokenizer(settings.model)
    model, _ = add_lora(load_model(settings.model, 2, tokenizer.pad_token_id), settings.lora, settings.model.task, 0)
    counts = []
    for width in (16, 64):
        ids = torch.full((4, width), 1000)
        with FlopCounterMode(display=False) as counter:
            labels = torch.zeros(4, dtype=torch.long)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        counts.append(counter.get_total_flops() / (4 * width))
    b = (counts[1] - counts[0]) / (64 - 16)
    return counts[0] - b * 16, b


def ours(overrides: list[str], settings: TrainConfig) -> dict:
    run_dir, metrics = run_overrides(overrides)
    tokenizer = load_tokenizer(settings.model)
    cache = Path(settings.out_dir) / ".cache"
    train = task_data.load_task_data(settings.data, settings.model.task, tokenizer, cache).train
    batches = task_data.train_batches(train.lengths, settings.optim.batch_size, settings.seed)
    steps = zip(batches, range(settings.optim.steps), strict=False)  # the first optim.steps batches
    shapes = [(len(rows), int(train.lengths[rows].max())) for rows, _ in steps]
    return {"examples_per_s": metrics["examples_per_s"], "accuracy": metrics["test_accuracy"],
            "train_seconds": metrics["train_seconds"], "batch_shapes": shapes, "precision": metrics["precision"],
            "reason": metrics["precision_reason"]}


def baseline(settings: TrainConfig, out: Path) -> dict:
    """transformers.Trainer + PEFT, every text padded to max_length, default data collator."""
    from transformers import Trainer, TrainingArguments

    tokenizer = load_tokenizer(settings.model)
    texts, labels, _, _ = task_data.load_table(settings.data, settings.model.task)
    split = task_data.split_indices(len(texts), settings.data.test_size, settings.data.val_size, None,
                                    settings.data.split_seed)
    train_rows, test_rows = split.train, split.test

    def dataset(rows):
        enc = tokenizer([texts[i] for i in rows], padding="max_length", truncation=True,
                        max_length=settings.data.max_length, return_tensors="pt")
        return [{"input_ids": enc["input_ids"][k], "attention_mask": enc["attention_mask"][k],
                 "labels": torch.tensor(labels[i])} for k, i in enumerate(rows)]

    torch.manual_seed(settings.seed)
    model, _ = add_lora(load_model(settings.model, 2, tokenizer.pad_token_id), settings.lora, settings.model.task,
                        settings.seed)
    args = TrainingArguments(
        output_dir=str(out), max_steps=settings.optim.steps, per_device_train_batch_size=settings.optim.batch_size,
        per_device_eval_batch_size=settings.optim.eval_batch_size, learning_rate=settings.optim.lr,
        warmup_steps=int(settings.optim.warmup_ratio * settings.optim.steps), lr_scheduler_type="linear",
        weight_decay=settings.optim.weight_decay, max_grad_norm=settings.optim.max_grad_norm, seed=settings.seed,
        report_to=[], save_strategy="no", logging_steps=50, use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset(train_rows))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    predictions = trainer.predict(dataset(test_rows))
    accuracy = float((predictions.predictions.argmax(-1) == predictions.label_ids).mean())
    steps = settings.optim.steps
    return {"examples_per_s": steps * settings.optim.batch_size / seconds, "accuracy": accuracy,
            "train_seconds": seconds,
            "batch_shapes": [(settings.optim.batch_size, settings.data.max_length)] * steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"optim.steps={args.steps}", "lora.r=8", "lora.targets=all", f"out_dir={tmp}",
                     f"threads={args.threads}", "progress=false", "optim.checkpoint_every=0",
                     "optim.patience=0", "data.val_size=0"]  # fixed steps, no validation: throughput only
        register_configs()
        settings = settings_from(compose("train", [*overrides, "optim.precision=fp32"]), "bench")
        peaks = {"fp32": matmul_peak(), "bf16": matmul_peak(dtype=torch.bfloat16)}
        a, b = flop_model(settings)
        results = {
            "ours fp32": ours([*overrides, "optim.precision=fp32", "name=fp32"], settings),
            "ours auto": ours([*overrides, "optim.precision=auto", "name=auto"], settings),
            "Trainer + PEFT (pad to 64, fp32)": baseline(settings, Path(tmp) / "trainer"),
        }
    results["Trainer + PEFT (pad to 64, fp32)"]["precision"] = "fp32"
    auto = results["ours auto"]
    print(f"\nCPU: {cpu_model()}; auto chose {auto['precision']} ({auto['reason']})")
    print(f"MiniLM-L6 + LoRA r=8 on q,k,v,o,ffn_in,ffn_out; batch {settings.optim.batch_size}, {args.steps} steps, "
          f"{args.threads} threads; matmul peak (2048^3) fp32 {peaks['fp32'] / 1e9:.1f}, "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s\n")
    print(f"{'loop':<34} {'format':>6} {'examples/s':>10} {'test acc':>9} {'train s':>8} {'GFLOP/s':>8} {'of peak':>8}")
    for name, r in results.items():
        flops = sum(n * t * (a + b * t) for n, t in r["batch_shapes"])
        rate = flops / r["train_seconds"]
        print(f"{name:<34} {r['precision']:>6} {r['examples_per_s']:>10.1f} {r['accuracy']:>9.4f} "
              f"{r['train_seconds']:>8.1f} {rate / 1e9:>8.1f} {rate / peaks[r['precision']]:>8.1%}")
    fp32, theirs = results["ours fp32"], results["Trainer + PEFT (pad to 64, fp32)"]
    print(f"\nauto / Trainer+PEFT: {auto['examples_per_s'] / theirs['examples_per_s']:.2f}x "
          "(target >= 4x on a bf16 CPU, >= 2.4x fp32-only)")
    print(f"auto / ours fp32: {auto['examples_per_s'] / fp32['examples_per_s']:.2f}x (target >= 1.6x on a bf16 CPU)")
    print(f"ours fp32 / Trainer+PEFT: {fp32['examples_per_s'] / theirs['examples_per_s']:.2f}x")
    print(f"accuracy auto - Trainer+PEFT: {100 * (auto['accuracy'] - theirs['accuracy']):+.2f} points, "
          f"auto - ours fp32: {100 * (auto['accuracy'] - fp32['accuracy']):+.2f} points")


if __name__ == "__main__":
    main()
