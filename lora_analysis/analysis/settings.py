"""Settings of ``analyze`` and ``compare`` (``conf/analyze.yaml``, ``conf/compare.yaml``), checked where
they are made, and the choices that follow from them alone (the default output folder, which modules get
the W tables)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lora_analysis.analysis.kinds import Comparison, Side, Subject
from lora_analysis.analysis.runs import MATCH_IGNORE
from lora_analysis.errors import LoraAnalysisError

if TYPE_CHECKING:
    from lora_analysis.analysis.adapters import LoraModule
    from lora_analysis.analysis.base_weights import BaseWeights

SUBJECTS = tuple(s.value for s in Subject)
COMPARISONS = tuple(c.value for c in Comparison)


@dataclass
class AnalyzeConfig:
    """Settings of ``analyze`` (``conf/analyze.yaml`` fills them for the command line)."""

    inputs: list[str] = field(default_factory=list)  # a sweep folder, run folders or PEFT adapter folders
    out: str | None = None  # None: <input>/analysis, or <common parent of the inputs>/analysis
    base: str | None = None  # base model dir (or cached hub id) for runs whose own base is not found locally
    subjects: list[str] = field(default_factory=lambda: list(SUBJECTS))
    comparisons: list[str] = field(default_factory=lambda: list(COMPARISONS))
    dw_side: str = "right"  # singular vectors of dW in the phi table: right (input space, like A) or left
    match_ignore: list[str] = field(default_factory=lambda: list(MATCH_IGNORE))  # config keys free within a pair
    across_groups: bool = False  # also pair one folder's runs of different configs (as other); compare: true
    random_seed: int = 0  # Gaussian baselines and Table 7's random directions
    rank_rtol: float = 1e-6  # singular values below rank_rtol * the largest count as zero
    w_tables: bool = True  # dw_vs_w, w_dw_phi, intruders (need the base weights and a dense SVD of W)
    w_directions: int | None = 512  # Figure 8: top-i directions of W, i <= this (None: all min(d, k))
    w_max_elements: int = 16_777_216  # W tables skip modules with d * k above this (dense SVD cost)
    intruders: bool = True  # intruder dimensions (a dense SVD of W + dW per run and module)
    intruder_top_k: int = 10
    intruder_threshold: float = 0.5
    intruder_side: str = "left"  # singular vectors compared: left (output space) or right
    workers: int | None = None  # threads, modules analysed in parallel; None: one per core, fewer for W tables
    progress: bool = True  # progress bar over modules on stderr
    # Input statistics (analysis/inputs.py) and the input-geometry baseline (analysis/geometry.py):
    input_stats: bool = True  # gather them (forward hooks on the frozen base model) and fill geometry_* in phi
    data_path: str | None = None  # texts of adapters without a run config.yaml (CSV/TSV/JSONL); runs use their own
    text_column: str = "text"  # data_path's text column
    max_length: int = 64  # tokens per data_path text (a run uses its own data.max_length)
    input_texts: int = 256  # training texts sampled (seeded by random_seed) for the statistics
    input_top: int = 64  # eigenpairs of M and of C kept per module
    input_dense_max: int = 2048  # in_features up to this: exact dense accumulation; above: an SVD sketch
    geometry_moment: str = "second_moment"  # null rows ~ N(0, M) (second_moment), or N(0, C) (covariance)
    geometry_draws: int = 32  # null pairs sampled per (module, r_a, r_b)

    def __post_init__(self) -> None:
        self.inputs = [str(p) for p in self.inputs]
        for name, values, allowed in (
            ("subjects", self.subjects, SUBJECTS),
            ("comparisons", self.comparisons, COMPARISONS),
        ):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise LoraAnalysisError(f"{name} {bad} unknown: expected some of {list(allowed)}")
        for name in ("dw_side", "intruder_side"):
            if getattr(self, name) not in tuple(Side):
                raise LoraAnalysisError(f"{name} must be left or right, got {getattr(self, name)!r}")
        if self.geometry_moment not in ("second_moment", "covariance"):
            raise LoraAnalysisError(f"geometry_moment: second_moment or covariance, not {self.geometry_moment!r}")
        if min(self.input_texts, self.input_top, self.input_dense_max, self.geometry_draws, self.max_length) < 1:
            raise LoraAnalysisError("input_texts, input_top, input_dense_max, geometry_draws, max_length must be >= 1")
        if self.random_seed < 0:  # numpy seeds are non-negative
            raise LoraAnalysisError(f"random_seed must be >= 0, got {self.random_seed}")
        if (self.workers is not None and self.workers < 1) or self.intruder_top_k < 1 or (
            self.w_directions is not None and self.w_directions < 1
        ):
            raise LoraAnalysisError("workers, intruder_top_k and w_directions must be >= 1")
        if not 0 < self.intruder_threshold <= 1 or not 0 <= self.rank_rtol < 1:
            raise LoraAnalysisError("intruder_threshold must be in (0, 1] and rank_rtol in [0, 1)")


@dataclass
class CompareConfig(AnalyzeConfig):
    """Settings of ``compare``: the analysis of two adapters, then their report.

    ``out`` is the folder of both (``<out>/analysis``, ``<out>/report``); None: ``runs/compare/<a>-vs-<b>``.
    """

    layer: int | None = None  # layer of the single-layer figures; None: the middle adapted layer
    across_groups: bool = True  # the two adapters named are compared whatever else differs

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.inputs) != 2:
            raise LoraAnalysisError(f"compare takes two adapter folders, got {len(self.inputs)}: "
                                    "lora-analysis compare ADAPTER_A ADAPTER_B [base=MODEL] [out=DIR]")

    def folder(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        a, b = (Path(p.rstrip("/")).name or p for p in self.inputs)
        return Path("runs") / "compare" / f"{a}-vs-{b}"



def default_out(inputs: list[str]) -> Path:
    """``<input>/analysis`` for one input, else ``<common parent of the inputs>/analysis``."""
    paths = [Path(p).resolve() for p in inputs]
    if len(paths) == 1:
        return paths[0] / "analysis"
    return Path(os.path.commonpath([p.parent for p in paths])) / "analysis"


def w_wanted(base: BaseWeights | None, m: LoraModule, cfg: AnalyzeConfig) -> bool:
    return cfg.w_tables and base is not None and m.out_features * m.in_features <= cfg.w_max_elements
