"""Successive halving of the learning-rate search (issue 25, item 3): the rung, its scores, who goes on."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from test_tuned import sweep

from lora_analysis.derive import stats
from lora_analysis.derive.tuned import joint_rate, lr_choices
from lora_analysis.train import halving


def test_the_rung_is_a_fraction_of_the_ceiling_on_the_validation_schedule():
    assert halving.rung_step(2000, 100, 0.2) == 400
    assert halving.rung_step(2000, 100, 0.22) == 400  # rounded to an evaluation
    assert halving.rung_step(2000, 300, 0.01) == 300  # at least one evaluation
    assert halving.rung_step(2000, 100, 0) == 0  # no halving
    assert halving.rung_step(200, 100, 0.9) == 0  # a rung at the ceiling halves nothing


def test_the_rung_score_is_the_state_kept_if_stopped_there():
    curve = pd.DataFrame({"step": [100, 200, 300, 400, 500], "val_loss": [0.6, 0.5, 0.55, 0.52, 0.4],
                          "val_accuracy": [0.70, 0.78, 0.80, 0.79, 0.85]})
    assert halving.rung_score(curve, 400) == (0.78, -0.5)  # the lowest loss by step 400, not the best accuracy
    assert halving.rung_score(curve, 500) == (0.85, -0.4)
    assert halving.rung_score(curve, 50) == (-math.inf, -math.inf)  # nothing evaluated by then
    lm = curve.drop(columns="val_accuracy")  # a causal LM: loss only
    assert halving.rung_score(lm, 400) == (-math.inf, -0.5)


def test_the_better_half_goes_on_rounded_up_and_ties_do_not_depend_on_order():
    scores = {"lr1e-4": (0.70, -0.6), "lr3e-4": (0.80, -0.5), "lr1e-3": (0.80, -0.45), "lr3e-3": (0.57, -0.7)}
    assert halving.survivors(scores) == {"lr3e-4", "lr1e-3"}  # equal accuracy: the lower loss first
    assert halving.survivors({**scores, "lr1e-2": (0.79, -0.5)}) == {"lr3e-4", "lr1e-3", "lr1e-2"}
    tie = {"a": (0.8, -0.5), "b": (0.8, -0.5)}
    assert halving.survivors(tie) == halving.survivors(dict(reversed(tie.items()))) == {"b"}


def test_a_rate_stopped_at_the_rung_is_never_chosen():
    runs = sweep({("all", 8): {1e-4: ([0.83], [0.9]), 1e-3: ([0.80], [0.7]), 1e-2: ([0.78], [0.7])},
                  ("all", 64): {1e-4: ([0.70], [0.9]), 1e-3: ([0.79], [0.7]), 1e-2: ([0.80], [0.7])}})
    runs["stop_reason"] = ["halved" if lr == 1e-4 and r == 8 else "converged"
                           for lr, r in zip(runs["optim.lr"], runs["lora.r"], strict=True)]
    choices = stats.rate_choices(runs)
    r8 = choices[choices["r"] == 8].set_index("lr")
    assert r8.loc[1e-4, "halved"] and not r8.loc[1e-4, "chosen"] and r8.loc[1e-3, "chosen"]
    assert joint_rate(choices) == 1e-3  # 1e-4 would win on r=8's validation at its rung; it is out
    one = lr_choices(runs[runs["lora.r"] == 8].assign(cell="one"), ["cell"])
    assert list(one.loc[one["chosen"], "lr"]) == [1e-3]


def test_the_search_decides_the_same_from_finished_and_from_paused_runs(tmp_path):
    """decide reads a finished run's history.csv and a paused run's checkpoint; the rung is read off the curve."""
    import json

    import torch
    from safetensors.torch import save_file

    from lora_analysis.layout import RunDir

    curves = {"lr1e-4": [0.69, 0.66, 0.64, 0.60], "lr1e-3": [0.60, 0.50, 0.45, 0.48], "lr1e-2": [0.70, 0.70]}
    config = {"seed": 0, "optim": {"lr": 1e-4, "steps": 1000}, "threads": 2, "pause_at": 200}
    for name, losses in curves.items():
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        run.config_path.write_text(yaml.safe_dump(config))
        evals = [{"step": 100 * (i + 1), "val_loss": v, "val_accuracy": 1 - v} for i, v in enumerate(losses)]
        if name == "lr1e-4":  # paused past the rung (went on, then interrupted): the rung is read at step 200
            meta = {"progress": json.dumps({"step": 400, "evals": evals})}
            save_file({"x": torch.zeros(1)}, str(run.checkpoint_path), metadata=meta)
        else:
            rows = [f"{e['step']},0.5,0.001,1.0,{e['val_loss']},{e['val_accuracy']}" for e in evals]
            run.history_path.write_text("step,loss,lr,seconds,val_loss,val_accuracy\n" + "\n".join(rows) + "\n")
            run.done_path.write_text("{}")
    dirs = [tmp_path / name for name in curves]
    assert halving.decide(dirs, 200) == {"lr1e-3", "lr1e-4"}  # 0.50 and 0.66 by step 200, 0.70 for lr1e-2
    paused = tmp_path / "lr1e-4"
    config = RunDir(paused).load_config()  # as saved: with the settings added since filled in
    assert halving.reached(paused, 200, config) and not halving.reached(paused, 500, config)
    assert halving.reached(paused, 200, config | {"threads": 1, "pause_at": None})  # volatile keys aside
    # the folder holds another config's run (reused by hand): its checkpoint is no step of this run
    assert not halving.reached(paused, 200, config | {"optim": config["optim"] | {"steps": 3000}})
    assert not halving.reached(tmp_path / "lr1e-3", 200, config | {"seed": 1})  # finished, but not this run
    (paused / RunDir.CHECKPOINT).write_bytes(b"truncated")
    assert not halving.reached(paused, 200, config)  # unreadable: the trainer starts it again


@pytest.mark.parametrize("value", ["-0.1", "1.0"])
def test_a_halving_fraction_outside_0_1_is_one_line(tmp_path, capsys, value):
    from lora_analysis import cli

    assert cli.main(["ablate", f"halving={value}", f"out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "halving must be a fraction of the step ceiling in [0, 1)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # 4 tiny runs to the rung, 2 on, an analysis and a report: under a minute
def test_the_ablation_halves_its_search_at_the_rung_and_resumes_without_redoing_it(tiny, tmp_path, capsys,
                                                                                  monkeypatch):
    from tiny import tiny_overrides

    from lora_analysis import cli
    from lora_analysis.derive import tuned
    from lora_analysis.layout import SweepDir

    model, csv = tiny
    monkeypatch.setattr(tuned, "COLLAPSE_TOLERANCE", -1.0)  # a few tiny steps stay at the majority class
    train = [o for o in tiny_overrides(model, csv, tmp_path / "runs", 12) if not o.startswith("out_dir=")]
    command = ["ablate", "experiment=rank_ablation", "targets=[q]", "ranks=[2]", "lrs=[1e-4,1e-3,1e-2,1e-1]",
               "seeds=1", "controls=false", "halving=0.3", "extend=0", f"out_dir={tmp_path / 'runs'}", "workers=1",
               "name=sh", "optim.patience=0", *train]
    assert cli.main(command) == 0
    err = capsys.readouterr().err
    assert "search to the rung, step 4 of 12" in err and "2 runs go on to their optimum; 2 stop at the rung" in err
    runs = SweepDir(tmp_path / "runs" / "sh").read_table().set_index("optim.lr")
    stopped = runs[runs["stop_reason"] == "halved"]
    assert len(stopped) == 2 and set(stopped["steps"]) == {4} and (stopped["best_step"] <= 4).all()
    assert set(runs.loc[runs["stop_reason"] != "halved", "steps"]) == {12}  # the better half to the ceiling
    report = (tmp_path / "runs" / "sh" / "report" / "report.md").read_text()
    assert "Successive halving stopped 2 of 4 (cell, rate) searches at step 4" in report
    assert "2 stopped at the search's rung by successive halving" in report
    # relaunched: nothing trained again, the same decision
    assert cli.main(command) == 0
    err = capsys.readouterr().err
    assert "1b) 0 runs go on to their optimum; 0 stop at the rung" in err
    assert SweepDir(tmp_path / "runs" / "sh").read_table()["train_seconds"].sum() == pytest.approx(
        runs["train_seconds"].sum())


def test_the_pairs_rate_is_one_no_rank_dropped_and_else_says_which_were():
    from lora_analysis.derive.rates import analysed_rate

    runs = sweep({("all", 8): {1e-4: ([0.80], [0.8]), 1e-3: ([0.81], [0.8]), 1e-2: ([0.60], [0.6])},
                  ("all", 64): {1e-4: ([0.79], [0.8]), 1e-3: ([0.80], [0.8]), 1e-2: ([0.70], [0.7])}})
    halved = {(8, 1e-2), (64, 1e-4)}
    runs["stop_reason"] = ["halved" if (r, lr) in halved else "converged"
                           for r, lr in zip(runs["lora.r"], runs["optim.lr"], strict=True)]
    rate, note = analysed_rate(runs, "all")
    assert rate == 1e-3 and "successive halving" not in note
    halved |= {(8, 1e-3)}  # every rate dropped by some rank: the best complete one, and the note says so
    runs["stop_reason"] = ["halved" if (r, lr) in halved else "converged"
                           for r, lr in zip(runs["lora.r"], runs["optim.lr"], strict=True)]
    rate, note = analysed_rate(runs, "all")
    assert rate == 1e-3 and "the search stopped r=8 at its rung (successive halving)" in note
