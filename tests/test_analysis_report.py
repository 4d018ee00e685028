"""The report of any analysis: adapters from anywhere (``compare``, ``report`` on an analysis or adapter folder),
and the pairs that exist between them (``plan_pairs``: rank, seed, other)."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _tiny_models import bert_sweep, peft_adapter

from lora_analysis.analysis.pairs import plan_pairs
from lora_analysis.analysis.runs import find_runs
from lora_analysis.analysis.tables import AnalysisResult
from lora_analysis.cli import main as cli_main
from lora_analysis.derive.controls import direction_controls, top_direction_summary


def _trained(model_dir: Path, folder: Path, r: int, seed: int) -> Path:
    """A PEFT adapter of the saved tiny BERT, as PEFT writes it (no adapter_init), with moved A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=8, target_modules=["query", "value"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            elif ".lora_A." in name:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    """Two "tasks" at r=4 and one at r=8, PEFT folders of the tiny BERT."""
    model_dir, _ = tiny
    root = tmp_path_factory.mktemp("foreign") / "adapters"
    for name, r, seed in (("task-a", 4, 0), ("task-b", 4, 1), ("task-a-r8", 8, 2)):
        _trained(model_dir, root / name, r, seed)
    return root


@pytest.fixture(scope="module")
def compared(adapters, tiny, tmp_path_factory):
    """``lora-analysis compare`` of the two r=4 adapters with base and texts: (out folder, exit code, stderr)."""
    model_dir, csv = tiny
    out = tmp_path_factory.mktemp("compare") / "pair"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = cli_main(["compare", str(adapters / "task-a"), str(adapters / "task-b"), f"base={model_dir}",
                         f"data_path={csv}", "text_column=review", "input_texts=32", f"out={out}", "progress=false"])
    return out, code, errors.getvalue()


# --- which pairs


def test_plain_folders_of_one_rank_are_other_pairs(adapters):
    runs, _ = find_runs([adapters])
    kinds = {(runs[p.a].label, runs[p.b].label): str(p.comparison) for p in plan_pairs(runs)}
    assert kinds == {("task-a", "task-a-r8"): "rank", ("task-b", "task-a-r8"): "rank", ("task-a", "task-b"): "other"}


def _sweep_copy(src: Path, dst: Path, data_path: str) -> Path:
    shutil.copytree(src, dst)
    for config_path in dst.glob("*/config.yaml"):
        config = yaml.safe_load(config_path.read_text())
        config.setdefault("data", {})["path"] = data_path
        config_path.write_text(yaml.safe_dump(config))
    return dst


def test_two_tasks_from_two_sweeps_are_other_pairs_and_one_sweeps_groups_are_not(tmp_path):
    """Runs of different configs from different folders (two tasks) are compared as ``other``; within one
    sweep, two settings at once (another group) are not."""
    sweep = bert_sweep(tmp_path / "bert")
    task_a = _sweep_copy(sweep, tmp_path / "task-a", "a.csv")
    task_b = _sweep_copy(sweep, tmp_path / "task-b", "b.csv")
    one, _ = find_runs([task_a])
    both, _ = find_runs([task_a, task_b])
    within = [str(p.comparison) for p in plan_pairs(one)]
    across = [(both[p.a].folder.parent.name, both[p.b].folder.parent.name, str(p.comparison))
              for p in plan_pairs(both)]
    assert "other" not in within and len(within) > 0
    others = [a for a in across if a[2] == "other"]
    assert others and all({x, y} == {"task-a", "task-b"} for x, y, _ in others)
    assert all(x == y for x, y, kind in across if kind != "other")  # rank and seed pairs stay within a sweep
    assert len(others) == len(one) * len(one)  # every run of one task against every run of the other


# --- compare and its report


def test_compare_writes_tables_figures_and_a_report(compared):
    out, code, err = compared
    assert code == 0, err
    analysis = AnalysisResult.load(out / "analysis")
    assert set(analysis.phi["comparison"].astype(str)) == {"other", "random"}
    assert analysis.phi["geometry_baseline"].notna().any() and len(analysis.dw_vs_w) > 0
    report = (out / "report" / "report.md").read_text()
    figures = {p.name for p in (out / "report" / "figures").glob("*.png")}
    assert {"pair1_phi.png", "pair1_layers.png", "spectra_dw.png", "fig8_1.png", "fig8_2.png"} <= figures
    assert "LoRA adapters compared: task-a and task-b" in report and "Not drawn" not in report
    for title in ("The adapters", "The pairs", "Shared directions against the strongest control", "Spectra",
                  "ΔW against the base weights W"):
        assert f"## {title}\n" in report
    assert "Notes of the analysis" not in report  # its only notes (no init) are said once, in the first section
    assert report.count("have no adapter_init.safetensors") == 1 and "Test accuracy, the training loss" in report
    html = (out / "report" / "report.html").read_text()
    assert html.count("<img") == len(figures)


def test_verdict_quotes_the_phi_table(compared):
    """The verdict sentence's e₁ is the mean over layers and roles of phi(1, r_b) of the pair's rows."""
    out, _, _ = compared
    phi = AnalysisResult.load(out / "analysis").phi
    rows = phi[(phi["comparison"] == "other") & (phi["subject"] == "dW") & (phi["i"] == 1) & (phi["j"] == 4)]
    summary = top_direction_summary(direction_controls(phi), keys=["run_a", "run_b", "subject"])
    row = summary[summary["subject"] == "dW"].iloc[0]
    assert row["energy"] == pytest.approx(rows["phi"].mean(), abs=1e-12) and row["cases"] == len(rows) == 4
    control = np.maximum(rows["baseline"].to_numpy(), rows["geometry_baseline"].to_numpy()).mean()
    assert row["control"] == pytest.approx(control, abs=1e-12)
    report = (out / "report" / "report.md").read_text()
    sentence = next(line for line in report.splitlines() if line.startswith("- ΔW, task-a vs task-b (other)"))
    assert f"e₁ = φ(1, r_b) = {row['energy']:.2f}" in sentence
    assert "input-geometry" in sentence and re.search(r"over 4 \(layer, role\) cases", sentence)
    assert "may be the shared random init" in sentence  # no init saved: the confound is named


def test_report_on_a_folder_of_adapters_analyses_once_then_reuses(adapters, tmp_path, capsys):
    folder = tmp_path / "adapters"
    shutil.copytree(adapters, folder)
    assert cli_main(["report", str(folder)]) == 0
    first = capsys.readouterr()
    assert "no analysis yet; analysing it" in first.err and (folder / "report" / "report.html").is_file()
    report = (folder / "report" / "report.md").read_text()
    assert "LoRA subspace analysis: 3 adapters" in report and "ΔW against the base weights W" in report  # recorded base
    assert "input-geometry baseline: the analysis fed no" in report  # no texts given: named once, not computed
    assert cli_main(["report", str(folder)]) == 0
    assert "analysing" not in capsys.readouterr().err  # up to date: reused
    peft_adapter("bert", folder / "extra", r=2)
    assert cli_main(["report", str(folder), "analyze=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of date" in err and "1 new" in err
    assert cli_main(["report", str(folder)]) == 0
    assert len(pd.read_parquet(folder / "analysis" / "runs.parquet")) == 4


def test_adapters_with_init_and_no_base(tmp_path, capsys):
    """Saved inits give A − A_init; a base recorded nowhere gives no W section, said once."""
    for name, r, seed in (("x", 2, 0), ("y", 2, 1)):
        peft_adapter("bert", tmp_path / "two" / name, r=r, seed=seed)
    assert cli_main(["report", str(tmp_path / "two")]) == 0
    report = (tmp_path / "two" / "report" / "report.md").read_text()
    assert "A − A_init, x vs y (other)" in report and "have no adapter_init" not in report
    assert report.count("the base model's weights were not found") == 1 and "ΔW against the base weights" not in report
    assert "may be the shared random init" not in report


def test_report_on_an_analysis_folder(compared, tmp_path, capsys):
    out, _, _ = compared
    assert cli_main(["report", str(out / "analysis"), f"out={tmp_path / 'again'}", "layer=1"]) == 0
    report = (tmp_path / "again" / "report.md").read_text()
    assert "at layer 1" in report and "The adapters" in report
    assert cli_main(["report", str(out / "analysis"), "layer=7"]) == 2
    assert "layer=7 is not an adapted layer" in capsys.readouterr().err


def test_report_on_a_sweeps_analysis_folder_is_the_sweep_report(sweep, tmp_path, capsys):
    assert cli_main(["report", str(sweep / "analysis"), f"out={tmp_path / 'r'}"]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "The paper's numbers and ours" in report and "The adapters" not in report


@pytest.mark.parametrize("args, expected", [
    (["only-one"], "compare takes two adapter folders, got 1"),
    (["a", "b", "c"], "compare takes two adapter folders, got 3"),
])
def test_compare_bad_input_one_line(args, expected, capsys):
    assert cli_main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lora-analysis compare: error: ") and expected in err


def test_compare_out_a_file_is_refused_before_the_analysis(adapters, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = ["compare", str(adapters / "task-a"), str(adapters / "task-b"), f"out={tmp_path / 'file'}"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a writable folder" in err and "file" in err


def test_compare_pairs_the_two_runs_named_whatever_differs(tmp_path, capsys):
    """Two runs of one sweep that differ in r and seed (or in config) form no pair in the sweep's analysis;
    named to compare, they are one ``other`` pair."""
    sweep = bert_sweep(tmp_path / "bert")
    a, b = sweep / "r2-seed0-q+v+ffn_in", sweep / "r4-seed1-q+v+ffn_in"
    runs, _ = find_runs([a, b])
    assert plan_pairs(runs) == []
    assert cli_main(["compare", str(a), str(b), f"out={tmp_path / 'ab'}", "input_stats=false", "progress=false"]) == 0
    phi = AnalysisResult.load(tmp_path / "ab" / "analysis").phi
    pairs = phi.loc[phi["comparison"] != "random", ["comparison", "run_a", "run_b"]].drop_duplicates().astype(str)
    assert pairs.values.tolist() == [["other", a.name, b.name]]
    assert "## The pairs" in (tmp_path / "ab" / "report" / "report.md").read_text()


def test_compare_of_adapters_that_share_no_module_says_so(tmp_path, capsys):
    a = peft_adapter("bert", tmp_path / "q", r=2, target_modules=["query"])
    b = peft_adapter("bert", tmp_path / "v", r=2, target_modules=["value"])
    assert cli_main(["compare", str(a), str(b), f"out={tmp_path / 'ab'}", "input_stats=false", "progress=false"]) == 0
    assert "q and v share no adapted module (other target modules or another base model)" in capsys.readouterr().err
    assert "there is no pair to compare" in (tmp_path / "ab" / "report" / "report.md").read_text()
