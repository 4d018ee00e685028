"""Peak memory of ``analyze`` on one adapter with a single 256 MB LoRA module, a baseline commit beside this tree.

The adapter (PEFT format, written once under /tmp and reused): one BERT query module, r = 64,
in = out = 524,288, float32, so A (64 x 524288) and B (524288 x 64) are 128 MiB each, 256 MiB in all; no
adapter_init, no base model (no W tables), no input statistics. Each tree analyses it in a child process
of a child process of its own, whose ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is that analysis's peak RSS
alone; the baseline tree is ``git archive`` of the named commit. The analysis computes in float64, so A
and B read as float64 are 2x the module (512 MiB) whatever is done; what comes on top is the question.

    .venv/bin/python benchmarks/analysis_memory.py [--baseline main] [--data /tmp/lora-analysis-mem]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
R, FEATURES = 64, 2**19
PATH = "bert.encoder.layer.0.attention.self.query"
MODULE_MB = 2 * R * FEATURES * 4 / 2**20


def write_adapter(folder: Path, features: int = FEATURES) -> Path:
    """The one-module adapter (random A and B, float32), unless it is there already."""
    from safetensors.numpy import save_file

    if (folder / "adapter_model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = {
        f"base_model.model.{PATH}.lora_A.weight": rng.standard_normal((R, features), dtype=np.float32),
        f"base_model.model.{PATH}.lora_B.weight": rng.standard_normal((features, R), dtype=np.float32),
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": R, "lora_alpha": 8, "target_modules": ["query"],
              "base_model_name_or_path": None, "fan_in_fan_out": False, "use_rslora": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def export(rev: str, into: Path) -> str:
    """The package and configs of commit ``rev`` under ``into``; returns the commit's short hash."""
    short = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                           check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "lora_analysis", "conf"], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return short


MEASURE = """
import resource, subprocess, sys, time
import lora_analysis
assert lora_analysis.__file__.startswith(sys.argv[1]), (lora_analysis.__file__, sys.argv[1])
sys.argv.pop(1)
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_mb(tree: Path, adapter: Path, out: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of ``lora-analysis analyze`` of ``adapter`` run from the package in ``tree``."""
    command = [sys.executable, "-m", "lora_analysis", "analyze", str(adapter), f"out={out}", "progress=false",
               "input_stats=false", "w_tables=false", "workers=1"]
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and cwd: python -m puts the working folder first
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tree), *command], capture_output=True, text=True, env=env,
                          cwd=tree, check=True)
    seconds, kib = done.stdout.split()[-2:]
    return int(kib) / 1024, float(seconds)  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="the commit to compare with (default: main)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/lora-analysis-mem"))
    args = parser.parse_args()
    adapter = write_adapter(args.data / "adapter")
    print(f"one LoRA module {PATH}: r={R}, in=out={FEATURES}, float32 A and B = {MODULE_MB:.0f} MiB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        short = export(args.baseline, Path(tmp) / "baseline")
        empty = write_adapter(args.data / "tiny", features=64)  # imports and tables: what any analysis costs
        for label, tree in ((f"baseline {args.baseline} ({short})", Path(tmp) / "baseline"), ("this tree", REPO)):
            mb, seconds = peak_mb(tree, adapter, Path(tmp) / f"out-{len(rows)}")
            floor, _ = peak_mb(tree, empty, Path(tmp) / f"tiny-{len(rows)}")
            rows.append((label, mb, floor, seconds))
    print(f"{'analyze, one adapter':<34} {'peak RSS MiB':>12} {'x module':>9} {'tiny adapter':>12} "
          f"{'above it, x module':>18} {'wall s':>7}")
    for label, mb, floor, seconds in rows:
        print(f"{label:<34} {mb:>12.0f} {mb / MODULE_MB:>9.2f} {floor:>12.0f} {(mb - floor) / MODULE_MB:>18.2f} "
              f"{seconds:>7.1f}")
    print(f"this tree / baseline: {rows[1][1] / rows[0][1]:.2f}x the peak; the float64 A and B alone are 2.00x the "
          "module (wall times are one run each, on a shared machine: noisy)")


if __name__ == "__main__":
    main()
