"""Experiment tracking: the training curves where researchers look (``logger=csv|tensorboard|mlflow``).

``history.csv`` is always written by the trainer; a tracker receives the same rows as they happen
(``log``), then the run's test metrics and, for MLflow, the adapter folder (``finish``). Trackers are
optional extras, imported only when chosen; a missing one is one line saying what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunDir
from lora_analysis.train.config import LoggerKind, TrainConfig


class Tracker:
    """The csv default: history.csv is the trainer's own, so nothing more to do."""

    def log(self, step: int, values: dict[str, float]) -> None:
        pass

    def finish(self, run_dir: Path, metrics: dict) -> None:
        pass

    def pause(self) -> None:
        """The run paused unfinished (``pause_at``): close what is open; its continuation opens again."""


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise LoraAnalysisError("logger=tensorboard needs tensorboard: pip install 'lora-analysis[tensorboard]'"
                                    ) from error
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / RunDir.TENSORBOARD))

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def finish(self, run_dir: Path, metrics: dict) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(f"final/{key}", value, int(metrics.get("steps", 0)))
        self.writer.close()

    def pause(self) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run per training run, in the experiment named after the sweep; the resolved config as params."""

    def __init__(self, cfg: TrainConfig, config: dict) -> None:
        try:
            import mlflow
        except ImportError as error:
            raise LoraAnalysisError("logger=mlflow needs mlflow: pip install 'lora-analysis[mlflow]'") from error
        self.mlflow = mlflow
        uri = cfg.logger.tracking_uri or (Path(cfg.out_dir).resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its file store but asks to be told it is wanted
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # MLflow's default retries a dead server for minutes; a run should say so within seconds
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        check_reachable(uri)
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(cfg.name)
            self.run = mlflow.start_run(run_name=cfg.run_name)
        except Exception as error:  # noqa: BLE001 - MLflow raises its own types (an unknown scheme, a refusal)
            raise LoraAnalysisError(f"logger.tracking_uri={uri}: MLflow cannot use it ({first_line(error)}); "
                                    "fix the URI or train with logger=csv") from error
        params = pd.json_normalize(config, sep=".").iloc[0].to_dict()
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics(values, step=step)

    def finish(self, run_dir: Path, metrics: dict) -> None:
        self.mlflow.log_metrics(_scalars(metrics))
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunDir.INIT, RunDir.HISTORY):
            if (Path(run_dir) / name).is_file():
                self.mlflow.log_artifact(str(Path(run_dir) / name), artifact_path="adapter")
        self.mlflow.end_run()

    def pause(self) -> None:
        self.mlflow.end_run(status="KILLED")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Refuse an http(s) tracking URI whose server does not answer a TCP connection within ``timeout``."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as error:
        raise LoraAnalysisError(f"logger.tracking_uri={uri}: no MLflow server answers there ({first_line(error)}); "
                                "start it, or train with logger=csv") from error


def open_tracker(cfg: TrainConfig, run_dir: Path, config: dict) -> Tracker:
    """The tracker ``cfg.logger`` names (``config``: the resolved config as saved in config.yaml)."""
    if cfg.logger.kind == LoggerKind.tensorboard:
        return TensorBoardTracker(run_dir)
    if cfg.logger.kind == LoggerKind.mlflow:
        return MlflowTracker(cfg, config)
    return Tracker()


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
