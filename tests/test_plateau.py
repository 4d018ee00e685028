"""Has the loss levelled off: the paired probe criterion, its fixed examples, run metrics, the finding."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from tiny import build_tiny_model, tiny_overrides, write_tiny_csv

from lora_analysis.plateau import plateau_metrics, probe_rows, probe_step, verdict
from lora_analysis.show import findings as F
from lora_analysis.train.sweep import run_overrides


def paired(change: float, spread: float, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-example losses before and after, falling by ``change`` of the mean, with paired noise ``spread``."""
    rng = np.random.default_rng(seed)
    before = rng.uniform(0.1, 0.9, n)
    after = before * (1 - change) + spread * rng.standard_normal(n)
    after += before.mean() * (1 - change) - after.mean()  # the mean falls by exactly ``change``
    return before, after


@pytest.mark.parametrize(("change", "spread", "said"), [
    (0.10, 0.01, "still falling"),
    (0.001, 0.01, "levelled off"),
    (-0.05, 0.01, "levelled off"),  # a loss that rises has stopped falling
    (0.02, 0.2, "cannot tell"),  # 2% with a standard error of ~1.3%: either side of the criterion
])  # fmt: skip
def test_the_verdict_weighs_the_fall_against_its_paired_standard_error(change, spread, said):
    before, after = paired(change, spread)
    metrics = plateau_metrics(before, after, 75, len(before))
    assert metrics["plateau_change"] == pytest.approx(change, abs=1e-12)
    se = np.std(before - after, ddof=1) / math.sqrt(len(before)) / before.mean()
    assert metrics["plateau_change_se"] == pytest.approx(se)
    assert metrics["plateau_verdict"] == said and metrics["plateau"] == (said == "levelled off")
    assert (metrics["plateau_from_step"], metrics["plateau_probe"]) == (75, 1000)


def test_no_probe_is_not_measured():
    metrics = plateau_metrics(None, None)
    assert metrics["plateau_verdict"] == "not measured" and not metrics["plateau"]
    assert math.isnan(metrics["plateau_change"]) and verdict(0.0, math.nan) == "not measured"
    assert probe_step(3) is None and probe_step(250) == 188


def test_the_probe_is_fixed_by_the_split_not_the_run():
    rows = probe_rows(10_752, 1024, split_seed=0)
    assert len(rows) == 1024 == len(set(rows)) and np.all(np.diff(rows) > 0) and rows.max() < 10_752
    assert np.array_equal(rows, probe_rows(10_752, 1024, split_seed=0))
    assert not np.array_equal(rows, probe_rows(10_752, 1024, split_seed=1))
    assert np.array_equal(probe_rows(50, 1024, split_seed=0), np.arange(50))  # capped at the training split


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model("bert", root / "bert"), write_tiny_csv(root / "reviews.csv")


def test_a_run_reports_its_plateau_and_the_probe_does_not_change_the_training(tiny, tmp_path):
    model, csv = tiny
    common = [*tiny_overrides(model, csv, tmp_path / "runs", steps=8), "lora.dropout=0.1"]  # dropout draws numbers
    probed_dir, probed = run_overrides([*common, "name=probed"])
    plain_dir, plain = run_overrides([*common, "name=plain", "optim.plateau_probe=0"])
    assert probed["plateau_from_step"] == 6 and probed["plateau_probe"] == 200  # 240 rows, 40 for test
    assert probed["plateau_verdict"] in ("levelled off", "still falling", "cannot tell")
    assert math.isfinite(probed["plateau_change"]) and probed["plateau_change_se"] > 0
    assert plain["plateau_verdict"] == "not measured" and plain["plateau_probe"] == 0
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (probed_dir, plain_dir))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert probed["test_accuracy"] == plain["test_accuracy"]


def test_the_finding_quotes_each_run_and_falls_back_to_the_logged_loss():
    runs = pd.DataFrame({
        "run": ["flat", "falling", "unsure", "old"],
        "plateau_verdict": ["levelled off", "still falling", "cannot tell", None],
        "plateau_change": [0.004, 0.081, 0.021, np.nan], "plateau_change_se": [0.003, 0.006, 0.011, np.nan],
        "plateau_loss_before": [0.40, 0.50, 0.45, np.nan], "plateau_loss_after": [0.398, 0.46, 0.44, np.nan],
        "plateau_from_step": [188, 188, 188, np.nan], "plateau_probe": [1024, 1024, 1024, np.nan],
    })  # fmt: skip
    step = np.arange(10, 210, 10)
    histories = {"old": pd.DataFrame({"step": step, "loss": 1.0 - step / 400}),
                 "flat": pd.DataFrame({"step": step, "loss": 1.0 - step / 400})}  # flat has a probe: not used
    finding = F.loss_levelled(runs, histories)
    probe, logged = finding.sentences
    assert "falling 8.1 ± 0.6% (still falling)" in probe and "flat 0.4 ± 0.3% (levelled off)" in probe
    assert "1 of 3 runs levelled off, 1 still falling, 1 cannot tell" in probe
    assert "old fell 18.5%" in logged and "0 of 1 under 2%" in logged
    assert finding.values == {"levelled off": 1.0, "still falling": 1.0, "cannot tell": 1.0, "runs": 4.0}
    assert "No run" in F.loss_levelled(pd.DataFrame({"run": []}), {}).sentences[0]
