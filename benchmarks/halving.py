"""Successive halving replayed on a finished learning-rate search: steps saved, choices changed.

The baseline is the full grid (every rate of every cell to its validation optimum, ``ablate halving=0``).
For each rung fraction, the search's seed-0 runs are replayed from their own validation curves
(``history.csv``) through the same decision ``ablate`` makes (``train.halving.decide``): a run that halving
drops stops at the rung, so the steps it would not train are counted as saved; the rate then chosen (the best
validation among the runs that went on, as ``derive.tuned`` chooses) is set beside the full grid's. Steps are
training steps; each evaluation costs about a fifth of 100 steps on top, saved in proportion. Runs that a
finished sweep already halved (``stop_reason`` halved) cannot be replayed: the script says so and stops.

    .venv/bin/python benchmarks/halving.py runs/target_ablation_tuned [runs/rank_ablation_all ...]
        [--fractions 0.1 0.2 0.3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lora_analysis.derive.tuned import LR, lr_choices  # noqa: E402
from lora_analysis.train import halving  # noqa: E402
from lora_analysis.train.sweep import collect_runs  # noqa: E402


def search_runs(sweep: Path) -> pd.DataFrame:
    """The seed-0 real runs of every cell with more than one rate (the search)."""
    runs = collect_runs(sweep)
    runs = runs[(runs["seed"] == 0) & ~runs.get("data.shuffle_labels", pd.Series(False, runs.index)).fillna(False)
                .astype(bool)]
    def label(row: pd.Series) -> str:
        parts = [str(row.get("lora.targets")), f"r={row.get('lora.r')}", row.get("lora.rank_pattern")]
        return "full fine-tuning" if row.get("method") == "full" else " ".join(str(p) for p in parts if pd.notna(p))

    runs = runs.assign(cell=runs.apply(label, axis=1))
    return runs[runs.groupby("cell")[LR].transform("nunique") > 1]


def replay(runs: pd.DataFrame, sweep: Path, fraction: float) -> dict:
    """Steps of the full grid and of halving at ``fraction``, and the cells whose chosen rate would change."""
    full = runs["steps"].sum()
    ceiling, every = int(runs["ceiling"].max()), int(runs["optim.eval_every"].max())
    rung = halving.rung_step(ceiling, every, fraction)
    kept, changed = [], []
    for cell, group in runs.groupby("cell"):
        survivors = halving.decide([sweep / name for name in group["run"]], rung) if rung else set(group["run"])
        kept.append(group["run"].isin(survivors))
        chosen_full = _chosen(group)
        chosen_halved = _chosen(group[group["run"].isin(survivors)])
        if chosen_full != chosen_halved:
            lost = group.set_index(LR)["val_accuracy"]
            changed.append(f"{cell}: {chosen_full:g} ({lost[chosen_full]:.3f}) -> {chosen_halved:g} "
                           f"({lost[chosen_halved]:.3f})")
    went_on = pd.concat(kept)
    halved = runs["steps"].where(went_on, runs["steps"].clip(upper=rung)).sum()
    return {"rung": rung, "full": full, "halved": halved, "changed": changed, "cells": runs["cell"].nunique()}


def _chosen(group: pd.DataFrame) -> float:
    choices = lr_choices(group.assign(one="one"), ["one"])
    return float(choices.loc[choices["chosen"], "lr"].iloc[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.15, 0.2, 0.3])
    args = parser.parse_args()
    for sweep in args.sweeps:
        runs = search_runs(sweep)
        if "stop_reason" in runs and (runs["stop_reason"] == "halved").any():
            print(f"{sweep}: its search was halved already; replay needs the full grid")
            return 2
        rates = runs.groupby("cell")[LR].nunique()
        print(f"\n{sweep}: {len(runs)} search runs, {len(rates)} cells, {rates.min()}-{rates.max()} rates each; "
              f"ceiling {int(runs['ceiling'].max())} steps, evaluation every {int(runs['optim.eval_every'].max())}")
        print(f"{'rung':>16} {'steps':>8} {'of full':>8}  choices changed (full grid -> halving, validation)")
        print(f"{'full grid':>16} {int(runs['steps'].sum()):>8} {'100%':>8}")
        for fraction in args.fractions:
            r = replay(runs, sweep, fraction)
            label = f"{fraction:g} (step {r['rung']})"
            print(f"{label:>16} {int(r['halved']):>8} {r['halved'] / r['full']:>8.0%}  "
                  f"{len(r['changed'])} of {r['cells']}" + (": " + "; ".join(r["changed"]) if r["changed"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
