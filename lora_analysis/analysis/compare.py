"""Comparisons over a sweep: phi grids across ranks, seeds and the random baseline, and per-module
diagnostics, as tidy DataFrames (``AnalysisResult``), streamed one module at a time.

For each module path, every run's factors are read, decomposed once (``delta.module_factors``) and
dropped; each pair of runs then costs one ``(p1, k) x (k, p2)`` product per subject. Pairs:

- ``rank``: same seed and group (the run config apart from r and seed), different r; ``run_a`` has the
  smaller r, so ``i <= r_a`` as in the paper's Figure 3;
- ``seed``: same r and group, different seed;
- ``random``: each run against two Gaussian matrices of its shape (``run_b = kinds.GAUSSIAN``), sampled once
  per shape from ``random_seed``;
- ``other``: two adapters of one base that differ in something else, or in what is not recorded: plain
  PEFT folders (seed unknown) of equal r, and runs of different configs from different folders (two tasks);
  plain PEFT folders of different r are ``rank`` pairs (``pair_kind``).

Subjects: ``A``, ``A_init`` and ``A_delta = A - A_init`` (right-singular vectors, input space),
``B`` (left-singular vectors, output space) and ``dW`` (right by default, ``dw_side=left`` for left).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from lora_analysis.analysis.adapters import MATCH_IGNORE, LoraModule, Run, find_runs
from lora_analysis.analysis.base_weights import BaseWeights, check_model_dir, chosen_base, no_base
from lora_analysis.analysis.delta import (
    ModuleFactors,
    WeightSVD,
    dw_vs_w,
    effective_rank,
    intruders,
    lora_delta,
    module_factors,
    stable_rank,
    w_dw_phi,
)
from lora_analysis.analysis.input_geometry import GeometryBaselines, gather
from lora_analysis.analysis.kinds import GAUSSIAN, Comparison, Side, Subject
from lora_analysis.analysis.memory import analysis_memory
from lora_analysis.analysis.subspace import frame_product, frobenius, overlap, phi_from_overlap, sampled_baseline
from lora_analysis.analysis.tables import SCHEMAS, AnalysisResult, TableBuilder, import_for_tables
from lora_analysis.errors import LoraAnalysisError

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


@lru_cache(maxsize=256)
def _grid_index(r1: int, r2: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-based ``i, j`` and ``max(i, j) / k`` of an ``r1 x r2`` grid, flattened row-major; shared, read-only."""
    i, j = np.meshgrid(np.arange(1, r1 + 1, dtype=np.int32), np.arange(1, r2 + 1, dtype=np.int32), indexing="ij")
    i, j = i.ravel(), j.ravel()
    baseline = np.maximum(i, j) / k
    for array in (i, j, baseline):
        array.flags.writeable = False
    return i, j, baseline


# --- pairs


@dataclass(frozen=True)
class Pair:
    comparison: Comparison  # rank | seed | other
    a: int  # index into the run list; run a has the smaller (r, seed)
    b: int


def plan_pairs(runs: list[Run], comparisons: list[str] | tuple[str, ...] = COMPARISONS,
               across_groups: bool = False) -> list[Pair]:
    """The rank, seed and other pairs among ``runs`` (see the module docstring and ``pair_kind``)."""
    pairs = []
    for (ia, a), (ib, b) in itertools.combinations(enumerate(runs), 2):
        kind = pair_kind(a, b, across_groups)
        if kind is not None and kind in comparisons:
            order = sorted(
                [(ia, a), (ib, b)], key=lambda x: (x[1].r, -1 if x[1].seed is None else x[1].seed, x[1].label)
            )
            pairs.append(Pair(kind, order[0][0], order[1][0]))
    return pairs


def pair_kind(a: Run, b: Run, across_groups: bool = False) -> Comparison | None:
    """How two runs are compared, or None when they are not.

    Within a group (same config apart from r and seed): ``rank`` when only r differs (or r differs and
    the seeds are unknown), ``seed`` when only the known seeds differ, ``other`` for equal r with unknown
    seeds (two plain PEFT adapters: what tells them apart is not recorded). Across groups: ``other`` for
    runs from different folders (two tasks, two sweeps); one sweep's own groups are its ablation axes,
    and a cross-group pair there would compare two settings at once, so it is made only ``across_groups``
    (``compare``: the user named the two runs), which also pairs runs differing in both r and seed.
    """
    known = a.seed is not None and b.seed is not None
    if a.group == b.group:
        if a.r != b.r and (not known or a.seed == b.seed):
            return Comparison.rank
        if a.r == b.r and known and a.seed != b.seed:
            return Comparison.seed
        return Comparison.other if (a.r == b.r and not known) or across_groups else None
    if known and a.folder.parent == b.folder.parent and not across_groups:
        return None
    return Comparison.other


# --- one module, all runs


@dataclass
class _Context:
    runs: list[Run]
    pairs: list[Pair]
    cfg: AnalyzeConfig
    bases: list[BaseWeights | None]
    random_grids: dict[tuple[int, int], np.ndarray | Future]
    geometry: GeometryBaselines | None = None

    def random_grid(self, r: int, k: int) -> np.ndarray:
        """The Gaussian baseline grid of shape ``(r, k)`` (``_random_grids``), waited for if still sampled."""
        grid = self.random_grids[r, k]
        return grid.result() if isinstance(grid, Future) else grid

    def space(self, subject: str, m: LoraModule) -> int:
        """Dimension of the space a subject's basis lives in."""
        left = subject == Subject.B or (subject == Subject.dW and self.cfg.dw_side == Side.left)
        return m.out_features if left else m.in_features


def _ids(run: Run, m: LoraModule) -> dict:
    return {"run": run.label, "r": m.r, "seed": run.seed, "layer": m.layer, "module": m.role}


def _builders() -> dict[str, TableBuilder]:
    return {name: TableBuilder(schema) for name, schema in SCHEMAS.items() if name != "runs"}


def analyse_module(path: str, ctx: _Context) -> tuple[dict[str, TableBuilder], list[str]]:
    """All table rows for module ``path``, in three steps (``_map_modules`` runs modules in parallel).

    1) each run's tensors are read and decomposed once (held until the module is done: ``workers``
    modules in memory at a time);
    2) each pair of runs: one product of their frames per subject; 3) each run against the baseline.
    """
    members = [index for index, run in enumerate(ctx.runs) if path in run.adapter.modules]
    w_cache = _weight_svds(path, members, ctx)
    out, notes, factors = _builders(), [], {}
    for index in members:
        factors[index], part, part_notes = _run_module(index, path, ctx, w_cache)
        notes.extend(part_notes)
        for name, builder in part.items():
            out[name].blocks.extend(builder.blocks)
    pairs = [pair for pair in ctx.pairs if pair.a in factors and pair.b in factors]
    for pair in pairs:
        grids = _pair_grids(pair, path, factors, ctx)
        run_a, run_b = ctx.runs[pair.a], ctx.runs[pair.b]
        targets = run_a.targets if run_a.targets == run_b.targets else f"{run_a.targets}|{run_b.targets}"
        for subject, grid, k in grids:
            geometry = ctx.geometry.grid(pair.a, pair.b, path, subject, grid.shape)
            _phi_rows(out, pair.comparison, run_a, run_b, path, targets, subject, grid, k, geometry)
    if Comparison.random in ctx.cfg.comparisons:
        for index in members:
            run, m = ctx.runs[index], ctx.runs[index].adapter.modules[path]
            for subject in ctx.cfg.subjects:
                basis = factors[index].bases.get(subject)
                if basis is not None and basis.rank > 0:
                    k = ctx.space(subject, m)
                    grid = ctx.random_grid(m.r, k)
                    geometry = ctx.geometry.grid(index, None, path, subject, grid.shape)
                    _phi_rows(out, Comparison.random, run, None, path, run.targets, subject, grid, k, geometry)
    return out, notes


def _weight_svds(path: str, members: list[int], ctx: _Context) -> dict[Path, tuple[np.ndarray, WeightSVD]]:
    """W and its dense SVD for module ``path``, once per base directory used by a run that needs it."""
    cache = {}
    for index in members:
        base, m = ctx.bases[index], ctx.runs[index].adapter.modules[path]
        if _w_wanted(base, m, ctx.cfg) and base.dir not in cache:
            W = base.weight(path, m.out_features, m.in_features, ctx.runs[index].adapter.fan_in_fan_out)
            cache[base.dir] = (W, WeightSVD.of(W))
    return cache


def _w_wanted(base: BaseWeights | None, m: LoraModule, cfg: AnalyzeConfig) -> bool:
    return cfg.w_tables and base is not None and m.out_features * m.in_features <= cfg.w_max_elements


def _run_module(index: int, path: str, ctx: _Context, w_cache: dict) -> tuple[ModuleFactors, dict, list[str]]:
    """One run's module: read, decompose once, and its rows of the per-run tables."""
    cfg, run, out, notes = ctx.cfg, ctx.runs[index], _builders(), []
    m = run.adapter.modules[path]
    A, B = run.adapter.factors(m.path)
    A_init = run.adapter.init_A(m.path)
    w_needed = _w_wanted(ctx.bases[index], m, cfg)
    if cfg.w_tables and ctx.bases[index] is not None and not w_needed:
        notes.append(
            f"W tables skipped for modules of shape ({m.out_features}, {m.in_features}): more than "
            f"w_max_elements={cfg.w_max_elements} entries for a dense SVD"
        )
    f = module_factors(A, B, m.scale, A_init, tuple(cfg.subjects), dense_left=w_needed, rtol=cfg.rank_rtol,
                       dw_side=Side(cfg.dw_side))
    if f.numerical_rank_A < min(m.r, m.in_features):
        notes.append(
            f"{run.label} {m.path}: A has numerical rank {f.numerical_rank_A} < r={m.r}; "
            f"using its top {f.numerical_rank_A} directions"
        )
    if f.dw.right.rank == 0:
        notes.append(f"{run.label} {m.path}: dW is zero (B = 0, or lora_alpha = 0); it has no subspace to compare")
    _module_rows(out, run, m, f)
    if w_needed:
        _w_rows(m, A, B, f, w_cache[ctx.bases[index].dir], cfg, out, _ids(run, m))
    return f, out, notes


def _module_rows(out: dict, run: Run, m: LoraModule, f: ModuleFactors) -> None:
    """The ``modules`` row and the ``spectra`` rows of one run's module."""
    ids, dw_values = _ids(run, m), f.spectra["dW"]
    out["modules"].add(
        1, **ids, targets=run.targets, path=m.path, in_features=m.in_features, out_features=m.out_features,
        scale=m.scale, norm_A=f.norm_A, norm_B=f.norm_B, norm_dW=frobenius(dw_values), a_moved=f.a_moved,
        effective_rank_dW=effective_rank(dw_values), stable_rank_dW=stable_rank(dw_values),
        numerical_rank_A=f.numerical_rank_A,
    )  # fmt: skip
    for subject in (Subject.dW, Subject.A, Subject.B, Subject.A_delta):
        if subject in f.spectra:
            s = f.spectra[subject]
            index = np.arange(1, len(s) + 1, dtype=np.int32)
            out["spectra"].add(len(s), **ids, subject=subject.value, index=index, singular_value=s)


def _w_rows(m, A, B, f, w_and_svd, cfg, out, ids) -> None:
    """Table 7, Figure 8 and intruder rows of one run's module against its base weight."""
    W, w_svd = w_and_svd
    rng = np.random.default_rng([cfg.random_seed, m.out_features, m.in_features, m.r])
    for row in dw_vs_w(W, w_svd, f.dw, m.r, rng):
        out["dw_vs_w"].add(1, **ids, **row)
    if f.dw.right.rank > 0:
        for side, grid in w_dw_phi(w_svd, f.dw, cfg.w_directions).items():
            k = m.out_features if side == Side.left else m.in_features
            i, j, baseline = _grid_index(*grid.shape, k)
            out["w_dw_phi"].add(grid.size, **ids, side=side, i=i, j=j, phi=grid, baseline=baseline)
    if cfg.intruders:
        cos = intruders(W, lora_delta(A, B, m.scale), w_svd, cfg.intruder_top_k, cfg.intruder_side)
        out["intruders"].add(
            len(cos),
            **ids,
            index=np.arange(1, len(cos) + 1, dtype=np.int32),
            max_abs_cos=cos,
            is_intruder=cos < cfg.intruder_threshold,
            threshold=cfg.intruder_threshold,
        )


def _pair_grids(pair: Pair, path: str, factors: dict, ctx: _Context) -> list[tuple[str, np.ndarray, int]]:
    """phi grids ``(subject, (rho_a, rho_b) grid, space dimension)`` of one pair of runs at module ``path``."""
    run_a, run_b = ctx.runs[pair.a], ctx.runs[pair.b]
    ma, mb = run_a.adapter.modules[path], run_b.adapter.modules[path]
    if (ma.out_features, ma.in_features) != (mb.out_features, mb.in_features):
        raise LoraAnalysisError(
            f"module {path} has base shape ({ma.out_features}, {ma.in_features}) in {run_a.folder} "
            f"but ({mb.out_features}, {mb.in_features}) in {run_b.folder}: not the same base model"
        )
    frame_products: dict[tuple[int, int], np.ndarray] = {}
    grids = []
    for subject in ctx.cfg.subjects:
        ba, bb = factors[pair.a].bases.get(subject), factors[pair.b].bases.get(subject)
        if ba is None or bb is None:
            continue
        key = (id(ba.frame), id(bb.frame))
        if key not in frame_products:  # A and dW share their frames: one big product for both
            frame_products[key] = frame_product(ba.frame, bb.frame)
        grids.append((subject, phi_from_overlap(overlap(ba, bb, frame_products[key])), ba.dim))
    return grids


def _phi_rows(out, comparison, run_a, run_b, path, targets, subject, grid, k, geometry) -> None:
    """phi rows of one grid; ``geometry``: (mean, std) grids of the input-geometry baseline, or NaNs."""
    if grid.size == 0:
        return
    ma = run_a.adapter.modules[path]
    i, j, baseline = _grid_index(*grid.shape, k)
    out["phi"].add(
        grid.size,
        comparison=Comparison(comparison).value,
        run_a=run_a.label,
        run_b=GAUSSIAN if run_b is None else run_b.label,
        r_a=ma.r,
        r_b=ma.r if run_b is None else run_b.adapter.modules[path].r,
        seed_a=run_a.seed,
        seed_b=None if run_b is None else run_b.seed,
        targets=targets,
        layer=ma.layer,
        module=ma.role,
        subject=Subject(subject).value,
        i=i,
        j=j,
        phi=grid,
        baseline=baseline,
        geometry_baseline=geometry[0],
        geometry_std=geometry[1],
    )


# --- entry points


def default_out(inputs: list[str]) -> Path:
    """``<input>/analysis`` for one input, else ``<common parent of the inputs>/analysis``."""
    paths = [Path(p).resolve() for p in inputs]
    if len(paths) == 1:
        return paths[0] / "analysis"
    return Path(os.path.commonpath([p.parent for p in paths])) / "analysis"


def analyze(inputs: list[str | Path] | str | Path, **options) -> AnalysisResult:
    """Analyse a sweep folder, run folders or PEFT adapter folders; options are ``AnalyzeConfig`` fields.

    Example: ``analyze("runs/paper", subjects=["A", "A_delta", "dW"], base="/models/minilm")``.
    """
    inputs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    return run_analysis(AnalyzeConfig(inputs=[str(p) for p in inputs], **options))


def run_analysis(cfg: AnalyzeConfig) -> AnalysisResult:
    """The analysis for validated settings; notes are also issued as warnings."""
    with analysis_memory():
        return _run_analysis(cfg)


def _run_analysis(cfg: AnalyzeConfig) -> AnalysisResult:
    if not cfg.inputs:
        raise LoraAnalysisError("no input: give a sweep folder, run folders or adapter folders")
    runs, notes = find_runs(cfg.inputs, tuple(cfg.match_ignore))
    if not runs:
        raise LoraAnalysisError(f"no finished LoRA run in {cfg.inputs}: " + "; ".join(notes))
    bases = _bases(runs, cfg, notes)
    cfg = replace(cfg, workers=cfg.workers or auto_workers(runs, bases, cfg))  # saved with the tables
    ctx = _Context(runs, plan_pairs(runs, cfg.comparisons, cfg.across_groups), cfg, bases, {})
    inputs, members = gather(runs, cfg, notes)
    ctx.geometry = GeometryBaselines(inputs, members, cfg)
    for run in runs:
        if run.adapter.init is None and {Subject.A_init, Subject.A_delta} & set(cfg.subjects):
            notes.append(f"{run.label}: no adapter_init.safetensors; A_init and A_delta skipped, a_moved is NaN")
    torch_too = inputs is not None or any(b is not None for b in ctx.bases)  # W tables, input-geometry grids
    with _blas_threads(1 if cfg.workers > 1 else None, torch_too):
        results = _map_modules(_module_paths(runs), ctx)
    built = {name: TableBuilder(schema) for name, schema in SCHEMAS.items()}
    for tables_of_module, module_notes in results:
        notes.extend(module_notes)
        for name, builder in tables_of_module.items():
            built[name].blocks.extend(builder.blocks)
    for run, base in zip(runs, ctx.bases, strict=True):
        built["runs"].add(
            1,
            run=run.label,
            folder=str(run.folder),
            r=run.r,
            seed=run.seed,
            targets=run.targets,
            base=None if base is None else str(base.dir),
            modules=len(run.adapter.modules),
            has_init=run.adapter.init is not None,
        )
    notes = list(dict.fromkeys(notes))  # one note per message, not per module
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return AnalysisResult(**built, notes=notes, config=asdict(cfg), inputs=inputs)  # tables assembled when read


SVD_MEMORY = 10  # peak bytes per byte of a float64 W while a worker runs its W tables (see auto_workers)


def auto_workers(runs: list[Run], bases: list[BaseWeights | None], cfg: AnalyzeConfig) -> int:
    """``workers=None``: one per usable core, but no more than half the available memory holds while each
    runs the W tables of the largest module: a dense SVD of W and one of W + dW, with W's kept, about
    ``SVD_MEMORY`` times W in float64 (measured: a 4096 x 4096 SVD raised peak RSS by 995 MB in numpy and
    808 MB in torch, 6-7x the 134 MB of W)."""
    from lora_analysis.machine import available_memory, usable_cores

    cores = usable_cores()
    largest = max((m.out_features * m.in_features for run, base in zip(runs, bases, strict=True)
                   for m in run.adapter if _w_wanted(base, m, cfg)), default=0)  # fmt: skip
    memory = available_memory()
    if largest == 0 or memory is None:
        return cores
    return max(1, min(cores, int(memory / 2 / (SVD_MEMORY * 8 * largest))))


@contextmanager
def _blas_threads(n: int | None, torch_too: bool) -> Iterator[None]:
    """numpy's BLAS threads (and torch's, which the W tables use) set to ``n`` for the block, one per
    worker, since nested threading thrashes; ``None`` leaves them as they are. torch is imported only
    when ``torch_too``: it takes longer to import than the rest of an analysis without a base."""
    from threadpoolctl import threadpool_limits

    if n is None:
        yield
        return
    with threadpool_limits(n, user_api="blas"):
        if not torch_too:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _map_modules(paths: list[str], ctx: _Context) -> list:
    """Analyse the modules, ``ctx.cfg.workers`` at a time on threads; the results in module order.

    Whole modules in parallel, not a module's runs: a module's runs and pairs differ in size (r = 8
    against 64), and the threads then waited for the largest one (a quarter of their time, measured).
    """
    workers = min(ctx.cfg.workers, max(len(paths), 1))
    with ThreadPoolExecutor(workers) as pool, _progress(len(paths), ctx.cfg.progress) as bar:
        if Comparison.random in ctx.cfg.comparisons:  # queued first: no module waits for a grid not started
            ctx.random_grids = _random_grids(ctx, pool if workers > 1 else None)
        results = []
        mapped = (pool.map if workers > 1 else map)(lambda path: analyse_module(path, ctx), paths)
        if workers > 1:  # every module is queued now; the main thread would only wait
            import_for_tables()
        for result in mapped:
            results.append(result)
            bar.update()
    return results


@contextmanager
def _progress(total: int, shown: bool) -> Iterator:
    """A progress bar over modules on stderr, or a silent stand-in (tqdm is imported only to be shown)."""
    if not shown:
        yield SimpleNamespace(update=lambda: None)
        return
    from tqdm import tqdm

    with tqdm(total=total, desc="modules", unit="module", file=sys.stderr) as bar:
        yield bar


def _module_paths(runs: list[Run]) -> list[str]:
    seen = {}
    for run in runs:
        for index, m in enumerate(run.adapter):
            seen.setdefault(m.path, (math.inf if m.layer is None else m.layer, index))
    return sorted(seen, key=seen.get)


def _bases(runs: list[Run], cfg: AnalyzeConfig, notes: list[str]) -> list[BaseWeights | None]:
    """Each run's base weights (shared per directory): ``base=`` when given (it wins over what the run
    records), else its own base (config.yaml or adapter_config.json) if found locally; None, with a note,
    where neither is found."""
    if not cfg.w_tables:
        return [None] * len(runs)
    if cfg.base is not None:
        check_model_dir(cfg.base)
    opened: dict[Path, BaseWeights] = {}
    bases = []
    for run in runs:
        path = chosen_base(run.base, cfg.base)
        if path is None:
            notes.append(
                f"{run.label}: {no_base(run.base)}; dw_vs_w, w_dw_phi and intruders "
                "skipped (give base=<model dir>)"
            )
        elif path not in opened:
            opened[path] = BaseWeights(path)
        bases.append(None if path is None else opened[path])
    return bases


def _random_grids(ctx: _Context, pool: ThreadPoolExecutor | None) -> dict[tuple[int, int], np.ndarray | Future]:
    """One sampled Gaussian phi grid per (r, k) needed, seeded from ``random_seed``, r and k; sampled on
    ``pool`` (futures) beside the first modules, or now without one."""
    shapes = {(m.r, ctx.space(s, m)) for run in ctx.runs for m in run.adapter for s in ctx.cfg.subjects}

    def grid(r: int, k: int) -> np.ndarray:
        return sampled_baseline(r, r, k, np.random.default_rng([ctx.cfg.random_seed, r, k]))

    if pool is None:
        return {(r, k): grid(r, k) for r, k in sorted(shapes)}
    return {(r, k): pool.submit(grid, r, k) for r, k in sorted(shapes)}
