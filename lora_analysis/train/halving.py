"""Successive halving of a learning-rate search: one rung, the better half of each cell's rates goes on.

Every search run of a cell trains to the rung (``pause_at``, a fraction of the step ceiling on the
validation schedule); there each is scored by the state it would keep if it stopped now: its best validation
evaluation so far (lowest validation loss), read as the rate choice reads it (``derive.tuned``: validation
accuracy, then loss; loss alone for a causal LM). The better half (rounded up) goes on to its own validation
optimum; the rest finish at the rung (``halt=true``, stop_reason ``halved``), their best state kept, their
rate not chosen. A run that stopped at its optimum before the rung is scored the same way and keeps its slot.

The rung is read from each run's own validation curve (``history.csv`` of a finished run, the checkpoint of a
paused one) up to the rung step, so a relaunched search, or one replayed from finished runs
(``benchmarks/halving.py``), decides the same. The test split is never read.

Why one rung and not a ladder: the grid is four to six rates per cell and the runs that halving cuts are the
slow ones (low rates reach their optimum late); a second rung would cut runs that have mostly stopped by then.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lora_analysis.layout import RunDir
from lora_analysis.train.sweep import checkpoint_progress, config_difference

HALT = "halt=true"


def rung_step(ceiling: int, eval_every: int, fraction: float) -> int:
    """The rung: ``fraction`` of the step ceiling, on the validation schedule (a multiple of ``eval_every``, at
    least one evaluation); 0 when ``fraction`` is 0 (no halving) or the rung would be the ceiling itself."""
    if fraction <= 0:
        return 0
    step = max(eval_every, round(fraction * ceiling / eval_every) * eval_every)
    return step if step < ceiling else 0


def validation_curve(run_dir: Path) -> pd.DataFrame:
    """``step``, ``val_loss``, ``val_accuracy`` at each evaluation of a finished run (its history) or a paused or
    interrupted one (its checkpoint); empty when the run has neither."""
    run = RunDir(run_dir)
    columns = ["step", "val_loss", "val_accuracy"]
    if run.is_done() and run.history_path.is_file():
        history = pd.read_csv(run.history_path)
        if "val_loss" in history:
            return history.dropna(subset=["val_loss"]).reindex(columns=columns).reset_index(drop=True)
    return pd.DataFrame(checkpoint_progress(run).get("evals", []), columns=columns)


def reached(run_dir: Path, step: int, config: dict) -> bool:
    """Whether the run of ``config`` (``sweep.planned_config``) has finished, or has a checkpoint at ``step`` or
    beyond (paused there: nothing to redo). A folder whose saved config differs (reused by hand with other
    settings) has not: the trainer starts it again, and the rung is never read off another config's curve."""
    run = RunDir(run_dir)
    if config_difference(run, config) != "":
        return False
    if run.is_done():
        return True
    return checkpoint_progress(run).get("step", 0) >= step


def rung_score(curve: pd.DataFrame, step: int) -> tuple[float, float]:
    """(validation accuracy, minus validation loss) of the best evaluation up to ``step`` (the state the run
    would keep stopped there): higher is better on both; (-inf, -inf) when nothing was evaluated by then."""
    upto = curve[curve["step"] <= step].dropna(subset=["val_loss"])
    if upto.empty:
        return -math.inf, -math.inf
    best = upto.loc[upto["val_loss"].astype(float).idxmin()]
    accuracy = best.get("val_accuracy")
    accuracy = float(accuracy) if accuracy is not None and pd.notna(accuracy) else -math.inf
    return accuracy, -float(best["val_loss"])


def survivors(scores: dict[str, tuple[float, float]]) -> set[str]:
    """The better half (rounded up) of one cell's runs by their rung score; ties broken by name, so the
    decision does not depend on the order the runs finished in."""
    ranked = sorted(scores, key=lambda name: (scores[name], name), reverse=True)
    return set(ranked[: math.ceil(len(ranked) / 2)])


def decide(run_dirs: list[Path], step: int) -> set[str]:
    """The names among one cell's search runs ``run_dirs`` that go on past the rung ``step``."""
    return survivors({d.name: rung_score(validation_curve(d), step) for d in run_dirs})
