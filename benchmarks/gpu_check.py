"""The CUDA path, checked in one short run on a GPU (issue 24); ``--cpu-only`` runs the half any machine can.

    bash benchmarks/gpu_check.sh [--steps 300]                        # on the GPU machine (installs wheels)
    .venv/bin/python benchmarks/gpu_check.py --cpu-only --steps 8      # anywhere; CI runs this half

1) train the embedded default (MiniLM, LoRA r=8 on all six roles, batch 32) for ``--steps`` steps with
   ``optim.precision=auto`` on CUDA (fixed steps: no validation split, no early stopping);
2) the same config for the same steps on the CPU, and the two logged loss curves compared: the largest
   absolute difference of the per-``log_every`` mean loss, against ``--tolerance`` (bf16 on the GPU against
   fp32 or bf16 on the CPU: the curves agree to a few hundredths, not bit for bit);
3) transformers' Trainer + PEFT on the same device and config: examples/s of each, the ratio, and the
   achieved FLOP/s of each against the device's bf16 matrix-multiply peak measured in the same run;
4) ``analyze`` of the device's run against the CPU's: the analysis is numpy on the CPU, so the phi
   tables of the two adapters are compared for their shape and their random baselines (equal), and the
   top direction's phi for closeness (the adapters differ by the device's rounding);
5) one summary table, printed and written to ``--out``.
SmolLM2 (issue 23) is not embedded yet: its row says so.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import flop_model  # noqa: E402

from lora_analysis.analysis.compare import analyze  # noqa: E402
from lora_analysis.hydra_compose import compose  # noqa: E402
from lora_analysis.train.config import register_configs  # noqa: E402
from lora_analysis.train.sweep import run_overrides, settings_from  # noqa: E402

COMMON = ["lora.r=8", "lora.targets=all", "optim.batch_size=32", "optim.patience=0", "data.val_size=0",
          "optim.checkpoint_every=0", "optim.log_every=10", "progress=false"]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, seconds: float = 2.0) -> float:
    """FLOP/s of an n x n matrix multiply on ``device`` in ``dtype``, best of repeated synchronised timings."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(out: Path, name: str, device: str, steps: int) -> tuple[Path, dict, pd.DataFrame]:
    run_dir, metrics = run_overrides([*COMMON, f"optim.steps={steps}", f"device={device}", f"out_dir={out}",
                                      f"name={name}", "optim.precision=auto"], name=name)
    return run_dir, metrics, pd.read_csv(run_dir / "history.csv")


def curve_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The largest |difference| of the logged mean loss over the steps both curves have."""
    both = a.merge(b, on="step", suffixes=("_a", "_b"))
    return float((both["loss_a"] - both["loss_b"]).abs().max()) if len(both) else math.nan


def trainer_peft(steps: int, device: torch.device, out: Path) -> dict:
    """Trainer + PEFT on ``device`` (train_throughput.baseline, there pinned to the CPU)."""
    import train_throughput

    register_configs()
    settings = settings_from(compose("train", [*COMMON, f"optim.steps={steps}", f"out_dir={out}"]), "trainer")
    if device.type == "cpu":
        return train_throughput.baseline(settings, out / "trainer")
    from transformers import TrainingArguments

    real = TrainingArguments.__init__

    def on_device(self, *args, **kwargs):  # the baseline asks for the CPU; here it runs where the GPU is
        kwargs["use_cpu"], kwargs["bf16"] = False, True
        real(self, *args, **kwargs)

    TrainingArguments.__init__ = on_device
    try:
        return train_throughput.baseline(settings, out / "trainer")
    finally:
        TrainingArguments.__init__ = real


def compare_analyses(a: Path, b: Path) -> dict:
    """phi tables of two adapters of one config: same rows, same baselines, the top direction's phi apart by."""
    first, second = (analyze([p], progress=False, input_stats=False, w_tables=False).phi for p in (a, b))
    keys = ["comparison", "layer", "module", "subject", "i", "j"]
    both = first.merge(second, on=keys, suffixes=("_a", "_b"))
    top = both[(both["i"] == 1) & (both["comparison"] == "random")]
    return {"rows equal": len(first) == len(second) == len(both),
            "baselines equal": bool((both["baseline_a"] == both["baseline_b"]).all()),
            "top phi max |diff|": float((top["phi_a"] - top["phi_b"]).abs().max()) if len(top) else math.nan}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cpu-steps", type=int, default=None, help="steps of the CPU run (default: --steps)")
    parser.add_argument("--cpu-only", action="store_true", help="the CPU half only (any machine, CI)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest |loss difference| accepted")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.txt"))
    args = parser.parse_args(argv)
    register_configs()
    cuda = torch.cuda.is_available() and not args.cpu_only
    if not cuda and not args.cpu_only:
        print("gpu_check: no CUDA device here; run with --cpu-only for the CPU half", file=sys.stderr)
        return 2
    rows: list[tuple[str, str]] = [("device", torch.cuda.get_device_name(0) if cuda else "cpu only"),
                                   ("torch", torch.__version__)]
    steps_cpu = args.cpu_steps or args.steps
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cpu_dir, cpu_metrics, cpu_curve = train(out, "cpu", "cpu", steps_cpu)
        rows += [("cpu: precision", cpu_metrics["precision"]),
                 ("cpu: examples/s", f"{cpu_metrics['examples_per_s']:.1f}"),
                 ("cpu: final logged loss", f"{cpu_curve['loss'].iloc[-1]:.4f}")]
        if cuda:
            device = torch.device("cuda")
            gpu_dir, gpu_metrics, gpu_curve = train(out, "gpu", "cuda", args.steps)
            difference = curve_difference(gpu_curve, cpu_curve)
            rows += [("gpu: precision", gpu_metrics["precision"]),
                     ("gpu: examples/s", f"{gpu_metrics['examples_per_s']:.1f}"),
                     ("gpu: test accuracy", f"{gpu_metrics['test_accuracy']:.4f}"),
                     ("loss curves max |gpu - cpu|", f"{difference:.4f} (tolerance {args.tolerance}: "
                                                     f"{'ok' if difference <= args.tolerance else 'EXCEEDED'})")]
            theirs = trainer_peft(args.steps, device, out)
            peak = matmul_peak(device, torch.bfloat16)
            a, b = flop_model(settings_from(compose("train", [*COMMON, f"out_dir={out}"]), "flops"))
            width = gpu_metrics["tokens_per_s"] / gpu_metrics["examples_per_s"]  # mean unpadded tokens per text
            ours_flops = gpu_metrics["examples_per_s"] * width * (a + b * width)
            theirs_flops = theirs["examples_per_s"] * 64 * (a + b * 64)  # every text padded to 64 tokens
            rows += [("Trainer+PEFT: examples/s", f"{theirs['examples_per_s']:.1f}"),
                     ("ours / Trainer+PEFT", f"{gpu_metrics['examples_per_s'] / theirs['examples_per_s']:.2f}x"),
                     ("bf16 matmul peak (4096^3)", f"{peak / 1e12:.1f} TFLOP/s"),
                     ("ours: achieved, of the peak", f"{ours_flops / 1e12:.2f} TFLOP/s, {ours_flops / peak:.1%}"),
                     ("Trainer+PEFT: achieved, of the peak", f"{theirs_flops / 1e12:.2f} TFLOP/s, "
                                                             f"{theirs_flops / peak:.1%}")]
            analyses = compare_analyses(gpu_dir, cpu_dir)
            rows += [(f"analysis: {k}", str(v)) for k, v in analyses.items()]
        else:
            rows += [("gpu", "skipped: --cpu-only")]
            rows += [(f"analysis: {k}", str(v)) for k, v in compare_analyses(cpu_dir, cpu_dir).items()]
        rows.append(("SmolLM2 (issue 23)", "not embedded yet: not run"))
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    print(table)
    args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
