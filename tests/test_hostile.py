"""Hostile input and faults (issue 12): no run called finished that failed, no traceback, no hang."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from tiny import tiny_overrides

from lora_analysis import cli
from lora_analysis.layout import ADAPTER_WEIGHTS, RunDir, SweepDir
from lora_analysis.train.divergence import DivergedError, check_step, grad_norm

DIVERGE = ["optim.lr=1e30", "optim.max_grad_norm=0"]


def train_args(tiny, tmp_path, *extra):
    model, csv = tiny
    return ["train", *tiny_overrides(model, csv, tmp_path / "runs", 4), "name=s", *extra]


def one_error_line(capsys, command):
    err = [line for line in capsys.readouterr().err.splitlines() if f"lora-analysis {command}: error:" in line]
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err


def test_non_finite_gradients_are_counted_and_huge_finite_ones_pass():
    loss = torch.tensor(0.5)
    grads = [torch.ones(3), torch.tensor([1.0, float("nan"), float("inf")])]
    with pytest.raises(DivergedError, match="2 non-finite gradient values at step 7"):
        check_step(loss, grads, grad_norm(grads), 7)
    huge = [torch.full((4,), 1e30)]  # finite, but the norm's squares overflow float32
    assert not torch.isfinite(grad_norm(huge))
    check_step(loss, huge, grad_norm(huge), 1)
    check_step(loss, [torch.ones(2)], grad_norm([torch.ones(2)]), 1)
    with pytest.raises(DivergedError, match="loss is nan at step 3"):
        check_step(torch.tensor(float("nan")), [], None, 3)


def test_a_diverged_run_is_recorded_as_failed_and_skipped_by_analysis(tiny, tmp_path, capsys):
    assert cli.main(train_args(tiny, tmp_path, *DIVERGE)) == 2
    (line,) = one_error_line(capsys, "train")
    assert "training diverged" in line and RunDir.FAILED in line
    sweep = SweepDir(tmp_path / "runs" / "s")
    (run,) = [RunDir(p) for p in sweep.path.iterdir() if p.is_dir()]
    assert not run.is_done() and not (run.path / ADAPTER_WEIGHTS).exists() and not run.checkpoint_path.exists()
    record = json.loads(run.failed_path.read_text())
    assert record["step"] >= 1 and "diverged" in record["reason"]
    # a good run beside it: the sweep table holds only that one, and analysis names the failed one
    assert cli.main(train_args(tiny, tmp_path, "seed=1")) == 0
    (good,) = sweep.finished_runs()
    assert list(pd.read_parquet(sweep.table_path)["run"]) == [good.name] != [run.name]
    capsys.readouterr()
    assert cli.main(["analyze", str(sweep.path), "progress=false"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {run.path}: failed run (training diverged" in err


def test_a_sweep_goes_on_past_a_diverged_run(tiny, tmp_path):
    args = ["train", "-m", *train_args(tiny, tmp_path, "optim.lr=1e30,1e-3", "optim.max_grad_norm=0")[1:]]
    done = subprocess.run([sys.executable, "-m", "lora_analysis", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "lora-analysis train: error:" in x]
    assert "Traceback" not in done.stderr
    sweep = SweepDir(tmp_path / "runs" / "s")
    (failed,), (good,) = sweep.failed_runs(), sweep.finished_runs()
    assert failed.name == "lr1e+30" and good.name == "lr0.001" and failed.name in line
    assert list(pd.read_parquet(sweep.table_path)["run"]) == [good.name]
