"""benchmarks/gpu_check.py (issue 24): its --help and its CPU half run anywhere; the GPU half needs a device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_help_and_the_loss_curve_comparison():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--cpu-only" in done.stdout
    from gpu_check import curve_difference

    a = pd.DataFrame({"step": [10, 20, 30], "loss": [0.7, 0.6, 0.5]})
    b = pd.DataFrame({"step": [10, 20], "loss": [0.69, 0.64]})
    assert curve_difference(a, b) == pytest.approx(0.04)


@pytest.mark.slow  # trains the embedded default for a few steps and analyses it: about a minute
def test_the_cpu_half_writes_its_summary(tmp_path):
    out = tmp_path / "summary.txt"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-only", "--steps", "6",
                           "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    table = dict(line.split("  ", 1) for line in out.read_text().splitlines())
    table = {k.strip(): v.strip() for k, v in table.items()}
    assert table["gpu"] == "skipped: --cpu-only" and table["analysis: rows equal"] == "True"
    assert table["analysis: baselines equal"] == "True" and float(table["cpu: examples/s"]) > 0
