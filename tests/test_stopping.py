"""Early stopping at the validation optimum (issue 25): the step it stops at, the state it keeps, resume."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny import build_tiny_model, interrupted_at, tiny_overrides, write_tiny_csv
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lora_analysis import cli
from lora_analysis.layout import ADAPTER_WEIGHTS
from lora_analysis.stopping import EarlyStopping
from lora_analysis.train import trainer
from lora_analysis.train.config import DataConfig, Task
from lora_analysis.train.data import collate, eval_batches, load_task_data
from lora_analysis.train.sweep import run_overrides


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model("bert", root / "bert"), write_tiny_csv(root / "reviews.csv")


def overrides(tiny, tmp_path, steps, *extra):
    model, csv = tiny
    return [*tiny_overrides(model, csv, tmp_path / "runs", steps), "optim.checkpoint_every=0", *extra]


def test_the_stopper_counts_evaluations_without_improvement():
    stopper = EarlyStopping(patience=2)
    for step, loss in zip((1, 2, 3, 4), (1.0, 0.5, 0.6, 0.5), strict=True):
        stopper.update(step, loss)
    said = (stopper.best_step, stopper.since_best, stopper.should_stop(), stopper.verdict())
    assert said == (2, 2, True, "converged")
    still = EarlyStopping(patience=3)
    for step, loss in ((1, 1.0), (2, 0.9), (3, 0.95)):
        still.update(step, loss)
    assert (still.should_stop(), still.verdict()) == (False, "ceiling")
    assert EarlyStopping(patience=0).verdict() == "not measured"


def test_a_scripted_validation_curve_stops_at_the_right_step_and_keeps_the_best_state(tiny, tmp_path, monkeypatch):
    """Validation losses 1.0 0.8 0.7 0.75 0.72 0.71 0.9 ... with patience 3: best at step 3, stopped at step 6."""
    script = iter([1.0, 0.8, 0.7, 0.75, 0.72, 0.71, 0.9, 0.9, 0.9])
    snapshots = {}
    real = trainer.evaluate

    def scripted(model, examples, cfg, pad_id, device, prefix="test"):
        if prefix != "val":
            return real(model, examples, cfg, pad_id, device, prefix)
        step = len(snapshots) + 1
        snapshots[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return {"val_loss": next(script), "val_accuracy": 0.5}

    monkeypatch.setattr(trainer, "evaluate", scripted)
    run_dir, metrics = run_overrides(overrides(tiny, tmp_path, 20, "optim.eval_every=1", "optim.patience=3"))
    assert (metrics["best_step"], metrics["steps"], metrics["stop_reason"]) == (3, 6, "converged")
    assert metrics["val_loss"] == 0.7 and metrics["evaluations"] == 6 and metrics["ceiling"] == 20
    saved = load_file(str(run_dir / ADAPTER_WEIGHTS))
    factors = [k for k in saved if ".lora_A." in k or ".lora_B." in k]
    assert factors
    for key in factors:  # the state at the best evaluation (step 3), not the last (step 6)
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(saved[key], snapshots[3][name]) and not torch.equal(saved[key], snapshots[6][name])
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == "step,loss,lr,seconds,val_loss,val_accuracy"
    assert [row.split(",")[4] for row in history[1:7]] == ["1.000000", "0.800000", "0.700000", "0.750000",
                                                          "0.720000", "0.710000"]


def test_a_run_at_the_ceiling_still_improving_says_so(tiny, tmp_path, monkeypatch):
    script = iter([1.0, 0.9, 0.8, 0.7])
    real = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda m, e, c, p, d, prefix="test": real(m, e, c, p, d, prefix)
                        if prefix != "val" else {"val_loss": next(script), "val_accuracy": 0.5})
    _, metrics = run_overrides(overrides(tiny, tmp_path, 4, "optim.eval_every=1", "optim.patience=2"))
    assert (metrics["best_step"], metrics["steps"], metrics["stop_reason"]) == (4, 4, "ceiling")


def test_the_saved_adapter_scores_the_recorded_best_on_validation(tiny, tmp_path):
    model_dir, csv = tiny
    run_dir, metrics = run_overrides(overrides(tiny, tmp_path, 30, "optim.eval_every=3", "optim.patience=2",
                                               "optim.lr=3e-3", "optim.precision=fp32"))
    assert metrics["evaluations"] >= 2 and metrics["best_step"] % 3 == 0
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_task_data(DataConfig(path=str(csv), text_column="review", label_column="sentiment", test_size=40,
                                     val_size=40, max_length=24), Task.classification, tokenizer, tmp_path / "c")
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    loaded = PeftModel.from_pretrained(base, run_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for rows in eval_batches(data.val.lengths, 32):
            batch = collate(data.val, rows, tokenizer.pad_token_id, Task.classification)
            total += float(loaded(**batch).loss) * len(rows)
            count += len(rows)
    assert total / count == pytest.approx(metrics["val_loss"], rel=1e-5)


def test_an_interrupted_early_stopping_run_resumes_to_identical_tensors(tiny, tmp_path, monkeypatch):
    extra = ("optim.eval_every=2", "optim.patience=2", "optim.lr=3e-3", "lora.dropout=0.1")
    straight, straight_metrics = run_overrides([*overrides(tiny, tmp_path, 24, *extra), "name=straight"])
    real_save, save_then_stop = interrupted_at(4)

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_stop)
    cut = [*overrides(tiny, tmp_path, 24, *extra), "optim.checkpoint_every=2", "name=cut"]
    with pytest.raises(KeyboardInterrupt):
        run_overrides(cut)
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)
    resumed, metrics = run_overrides(cut)
    for key in ("best_step", "steps", "stop_reason", "val_loss", "test_accuracy", "test_loss"):
        assert metrics[key] == straight_metrics[key], key
    a, b = load_file(str(straight / ADAPTER_WEIGHTS)), load_file(str(resumed / ADAPTER_WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["data.val_size=100000"], "nothing is left to train on"),
    (["optim.patience=-1"], "optim.patience must be >= 0"),
    (["data.val_size=0"], "data.val_size=0 holds no validation split"),
    (["optim.eval_every=0"], "optim.eval_every must be >= 1"),
    (["pause_at=-2"], "pause_at must be a step >= 0"),
    (["halt=true"], "halt=true finishes a run at its pause_at step, but pause_at=0"),
])
def test_bad_stopping_settings_are_one_line(tiny, tmp_path, capsys, extra, message):
    assert cli.main(["train", *overrides(tiny, tmp_path, 4), *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err


def test_a_matched_control_keeps_its_last_state(tiny, tmp_path, monkeypatch):
    """optim.keep=last (a control trained a matched number of steps): no early stop, the last state saved."""
    script = iter([0.5, 0.9, 0.9, 0.9])
    snapshots = {}
    real = trainer.evaluate

    def scripted(model, examples, cfg, pad_id, device, prefix="test"):
        if prefix != "val":
            return real(model, examples, cfg, pad_id, device, prefix)
        snapshots[len(snapshots) + 1] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return {"val_loss": next(script), "val_accuracy": 0.5}

    monkeypatch.setattr(trainer, "evaluate", scripted)
    run_dir, metrics = run_overrides(overrides(tiny, tmp_path, 4, "optim.eval_every=1", "optim.patience=0",
                                               "optim.keep=last"))
    assert (metrics["best_step"], metrics["kept_step"], metrics["steps"], metrics["stop_reason"]) == (
        1, 4, 4, "fixed steps")
    saved = load_file(str(run_dir / ADAPTER_WEIGHTS))
    key = next(k for k in saved if ".lora_A." in k)
    assert torch.equal(saved[key], snapshots[4][key.replace(".weight", ".default.weight")])


def test_a_run_paused_at_its_rung_goes_on_to_identical_tensors_or_halts_there(tiny, tmp_path):
    """Successive halving's two ends of a rung (pause_at): going on gives the uninterrupted run; halting keeps
    the best state up to the rung, says so (stop_reason halved), and is the same from the config alone."""
    from lora_analysis.layout import RunDir

    extra = ("optim.eval_every=2", "optim.patience=0", "optim.lr=3e-3", "lora.dropout=0.1")
    straight, straight_metrics = run_overrides([*overrides(tiny, tmp_path, 12, *extra), "name=straight"])
    paused = [*overrides(tiny, tmp_path, 12, *extra), "name=paused"]
    run_dir, metrics = run_overrides([*paused, "pause_at=6"])
    assert metrics == {} and not RunDir(run_dir).is_done() and RunDir(run_dir).checkpoint_path.is_file()
    assert run_overrides([*paused, "pause_at=6"])[1] == {}  # relaunched at the rung: still paused, nothing redone
    resumed, metrics = run_overrides(paused)
    for key in ("best_step", "steps", "stop_reason", "val_loss", "test_accuracy"):
        assert metrics[key] == straight_metrics[key], key
    a, b = load_file(str(straight / ADAPTER_WEIGHTS)), load_file(str(resumed / ADAPTER_WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)

    halted = [*overrides(tiny, tmp_path, 12, *extra), "name=halted"]
    run_overrides([*halted, "pause_at=6"])
    halted_dir, at_rung = run_overrides([*halted, "pause_at=6", "halt=true"])
    assert (at_rung["steps"], at_rung["stop_reason"], at_rung["ceiling"]) == (6, "halved", 12)
    assert at_rung["best_step"] <= 6 and RunDir(halted_dir).is_done()
    fresh_dir, fresh = run_overrides([*overrides(tiny, tmp_path, 12, *extra), "name=fresh", "pause_at=6",
                                      "halt=true"])  # the saved config alone reproduces it
    assert (fresh["best_step"], fresh["val_loss"], fresh["test_accuracy"]) == (
        at_rung["best_step"], at_rung["val_loss"], at_rung["test_accuracy"])
    a, b = load_file(str(halted_dir / ADAPTER_WEIGHTS)), load_file(str(fresh_dir / ADAPTER_WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)
