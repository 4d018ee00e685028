"""Hydra sweeps through the real command line, in a subprocess: naming, sweep table, resume, launchers."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from tiny import tiny_overrides


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_analysis", "train", *args],
                          capture_output=True, text=True, timeout=600)


def fixed(tiny, tmp_path) -> list[str]:
    model, csv = tiny
    return [o for o in tiny_overrides(model, csv, tmp_path / "runs", steps=2) if not o.startswith("lora.r=")]


def test_two_rank_sweep_names_runs_and_resumes(tiny, tmp_path):
    done = train("-m", "lora.r=1,2", *fixed(tiny, tmp_path))
    assert done.returncode == 0, done.stderr
    sweep = tmp_path / "runs" / "default"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["r1", "r2"]
    table = pd.read_parquet(sweep / "runs.parquet")
    assert sorted(table["run"]) == ["r1", "r2"] and sorted(table["lora.r"]) == [1, 2]
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("r*/adapter_model.safetensors")}
    again = train("-m", "lora.r=1,2,4", *fixed(tiny, tmp_path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished already, skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(pd.read_parquet(sweep / "runs.parquet")) == 3
    before = (sweep / "multirun.yaml").read_bytes()
    refused = train("-m", "lora.r=1,2", "lora.alpha=3", *fixed(tiny, tmp_path))  # r1 exists with alpha 8
    assert refused.returncode == 2 and "different config" in refused.stderr, refused.stderr
    assert (sweep / "multirun.yaml").read_bytes() == before  # the refused launch left it untouched


def test_experiment_sweep_is_named_by_its_axes(tiny, tmp_path):
    done = train("-m", "experiment=target_ablation", "seed=0", "lora.targets=q,q+v,all", *fixed(tiny, tmp_path))
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(tmp_path / "runs" / "target_ablation" / "runs.parquet").set_index("run")
    assert sorted(table.index) == ["seed0-all", "seed0-q", "seed0-q+v"]
    # Tiny BERT, hidden 32 and FFN 64, 2 layers: r32@q costs 32 * (32 + 32) * 2 = 4096 parameters;
    # q+v costs 256 per rank, all costs (4 * 64 + 2 * 96) * 2 = 896 per rank.
    assert table["lora.r"].to_dict() == {"seed0-q": 32, "seed0-q+v": 16, "seed0-all": 4}
    assert table["lora_params"].to_dict() == {"seed0-q": 4096, "seed0-q+v": 4096, "seed0-all": 3584}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "submitit_local"])
def test_parallel_launchers(tiny, tmp_path, launcher):
    extra = ["hydra.launcher.timeout_min=10"] if launcher.startswith("submitit") else []
    args = [a for a in fixed(tiny, tmp_path) if not a.startswith("threads=")]
    done = train("-m", "lora.r=1,2", f"hydra/launcher={launcher}", *extra, *args)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(tmp_path / "runs" / "default" / "runs.parquet")
    assert sorted(table["run"]) == ["r1", "r2"]
    if launcher == "local":  # joblib, 2 workers on this machine's cores: the threads are divided
        assert set(table["threads"]) == {max(1, len(__import__("os").sched_getaffinity(0)) // 2)}
