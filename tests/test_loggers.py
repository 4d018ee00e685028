"""Experiment tracking: the logs read back with each tool's own reader (TensorBoard, MlflowClient)."""

from __future__ import annotations

import pytest
from tiny import tiny_overrides

from lora_analysis.train.sweep import run_overrides


def test_tensorboard_events_hold_the_training_curve(tiny, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'lora-analysis[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, csv = tiny
    run_dir, metrics = run_overrides([*tiny_overrides(model, csv, tmp_path, steps=6), "optim.log_every=2",
                                      "logger=tensorboard"], name="tb")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6]
    history = (run_dir / "history.csv").read_text().splitlines()[1:]
    assert [round(e.value, 4) for e in loss] == [round(float(row.split(",")[1]), 4) for row in history]
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(metrics["test_accuracy"])


def test_mlflow_run_per_training_run_with_params_metrics_and_the_adapter(tiny, tmp_path):
    pytest.importorskip("mlflow", reason="pip install 'lora-analysis[mlflow]'")
    from mlflow.tracking import MlflowClient

    model, csv = tiny
    store = (tmp_path / "mlruns").as_uri()
    overrides = [*tiny_overrides(model, csv, tmp_path, steps=4), "optim.log_every=2", "logger=mlflow",
                 f"logger.tracking_uri={store}", "name=sweep-x"]
    for r in (2, 4):
        run_overrides([*overrides, f"lora.r={r}"], name=f"r{r}")
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("sweep-x")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["r2", "r4"]
    run = next(r for r in runs if r.info.run_name == "r4")
    assert run.data.params["lora.r"] == "4" and run.data.params["seed"] == "0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4]
    assert "test_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts
