"""``lora-analysis reproduce preset=quick`` end to end on the embedded default (slow: ~3 minutes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from lora_analysis.cli.reproduce import main as reproduce_main


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    run = subprocess.run([sys.executable, "-m", "lora_analysis", "reproduce", "preset=quick", f"out_dir={tmp_path}",
                          f"figures={tmp_path / 'published'}"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    sweep = tmp_path / "quick"
    assert run.stdout.strip().splitlines()[-1] == f"report: {sweep / 'report' / 'report.html'}"
    assert "run 3 of 3: r64-seed1" in run.stderr
    table = pd.read_parquet(sweep / "runs.parquet")
    assert sorted(table["run"]) == ["r64-seed0", "r64-seed1", "r8-seed0"]
    phi = pd.read_parquet(sweep / "analysis" / "phi.parquet")
    assert {"rank", "seed", "random"} <= set(phi["comparison"].astype(str))
    html = (sweep / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 8 and "The paper" in html
    for name in ("fig3_rank_A", "fig4_seed_A", "fig8_w_dw", "controls_rank", "spectra_dw"):
        assert (tmp_path / "published" / "figures" / f"{name}.png").is_file()
        assert (tmp_path / "published" / "figures" / f"{name}.pdf").is_file()
    timing = json.loads((sweep / "reproduce.json").read_text())
    assert set(timing["train_seconds"]) == {"r8-seed0", "r64-seed0", "r64-seed1"}


def test_reproduce_help_and_bad_preset(capsys):
    assert reproduce_main(["--help"]) == 0
    assert "preset" in capsys.readouterr().out
    from lora_analysis import cli

    assert cli.main(["reproduce", "preset=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "preset/nope" in err and "quick" in err


@pytest.mark.slow
def test_reproduce_on_a_named_model_and_data(tmp_path, capfd):
    from tiny import build_tiny_model, tiny_overrides, write_tiny_csv

    from lora_analysis.cli.reproduce import reproduce
    from lora_analysis.cli.schemas import Preset, ReproduceConfig

    model, csv = build_tiny_model("llama", tmp_path / "llama"), write_tiny_csv(tmp_path / "reviews.csv")
    train = [o for o in tiny_overrides(model, csv, tmp_path / "unused") if o.split("=")[0] not in ("lora.r", "out_dir")]
    preset = Preset(name="tiny", common=["lora.targets=all", "optim.steps=3"],
                    runs=[["lora.r=2", "seed=0"], ["lora.r=8", "seed=0"], ["lora.r=8", "seed=1"], ["method=full"]])
    html = reproduce(ReproduceConfig(preset=preset, out_dir=str(tmp_path), workers=2), train)  # 2 processes
    sweep = tmp_path / "tiny"
    assert html == sweep / "report" / "report.html" and html.is_file()
    modules = pd.read_parquet(sweep / "analysis" / "modules.parquet")
    assert set(modules["module"].astype(str)) == {"q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out"}
    table7 = pd.read_parquet(sweep / "analysis" / "dw_vs_w.parquet")
    assert not table7.empty  # the tiny model's own weights were found for W
    assert "ffn_gate" in (sweep / "report" / "report.md").read_text()
    runs = pd.read_parquet(sweep / "runs.parquet").set_index("run")
    assert sorted(runs.index) == ["full", "r2-seed0", "r8-seed0", "r8-seed1"]
    err = capfd.readouterr().err
    assert "training 4 runs, 2 at a time" in err and "run 4 of 4: full finished" in err
