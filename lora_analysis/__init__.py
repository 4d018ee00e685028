"""lora-analysis: what subspace does a LoRA update learn, and what rank and which matrices does a task need.

The Python API (the command line, ``lora-analysis``, wraps the same functions)::

    from lora_analysis import analyze, recommend, build_report
    result = analyze("runs/paper")            # AnalysisResult: tidy tables phi, spectra, modules, ...
    result.save("runs/paper/analysis")
    build_report("runs/paper")                # report/report.html and report.md with the figures
    recommend("runs/rank_ablation").roles     # a rank per module role

    from lora_analysis import phi_grid, right_singular
    V1, _ = right_singular(A1)                # A: (r, in_features); the subspace is the rows of Vh
    grid = phi_grid(V1, right_singular(A2)[0])  # (r1, r2), Eq. 4 of the paper for every (i, j)

Names are imported on first use, so ``import lora_analysis`` (and the command line) starts fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LoraAnalysisError": "lora_analysis.errors",
    # training
    "run_overrides": "lora_analysis.train.sweep",
    "TrainConfig": "lora_analysis.train.config",
    "select_modules": "lora_analysis.targets",
    "expand_roles": "lora_analysis.targets",
    "rank_for_budget": "lora_analysis.train.budget",
    "lora_params": "lora_analysis.train.budget",
    # analysis
    "analyze": "lora_analysis.analysis.compare",
    "AnalysisResult": "lora_analysis.analysis.tables",
    "load_adapter": "lora_analysis.analysis.adapters",
    "BaseWeights": "lora_analysis.analysis.base_weights",
    "phi_grid": "lora_analysis.analysis.subspace",
    "phi_cell": "lora_analysis.analysis.subspace",
    "right_singular": "lora_analysis.analysis.subspace",
    "left_singular": "lora_analysis.analysis.subspace",
    "analytic_baseline": "lora_analysis.analysis.subspace",
    "sampled_baseline": "lora_analysis.analysis.subspace",
    "lora_delta": "lora_analysis.analysis.delta",
    "lora_scale": "lora_analysis.analysis.delta",
    "delta_svd": "lora_analysis.analysis.delta",
    "effective_rank": "lora_analysis.analysis.delta",
    "stable_rank": "lora_analysis.analysis.delta",
    "direction_energy": "lora_analysis.derive.stats",
    "shared_directions": "lora_analysis.derive.stats",
    # showing and deciding
    "build_report": "lora_analysis.show.report",
    "recommend": "lora_analysis.derive.recommend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
