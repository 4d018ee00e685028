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

import math
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from lora_analysis.analysis.adapters import LoraModule
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
from lora_analysis.analysis.execution import auto_workers, blas_threads, progress_bar
from lora_analysis.analysis.input_geometry import GeometryBaselines, gather
from lora_analysis.analysis.kinds import GAUSSIAN, Comparison, Side, Subject
from lora_analysis.analysis.memory import analysis_memory
from lora_analysis.analysis.pairs import Pair, plan_pairs
from lora_analysis.analysis.runs import Run, find_runs
from lora_analysis.analysis.settings import AnalyzeConfig, w_wanted
from lora_analysis.analysis.subspace import frame_product, frobenius, overlap, phi_from_overlap, sampled_baseline
from lora_analysis.analysis.tables import SCHEMAS, AnalysisResult, TableBuilder, import_for_tables
from lora_analysis.errors import LoraAnalysisError, utf8


@lru_cache(maxsize=256)
def _grid_index(r1: int, r2: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-based ``i, j`` and ``max(i, j) / k`` of an ``r1 x r2`` grid, flattened row-major; shared, read-only."""
    i, j = np.meshgrid(np.arange(1, r1 + 1, dtype=np.int32), np.arange(1, r2 + 1, dtype=np.int32), indexing="ij")
    i, j = i.ravel(), j.ravel()
    baseline = np.maximum(i, j) / k
    for array in (i, j, baseline):
        array.flags.writeable = False
    return i, j, baseline


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
        if w_wanted(base, m, ctx.cfg) and base.dir not in cache:
            W = base.weight(path, m.out_features, m.in_features, ctx.runs[index].adapter.fan_in_fan_out)
            cache[base.dir] = (W, WeightSVD.of(W))
    return cache


def _run_module(index: int, path: str, ctx: _Context, w_cache: dict) -> tuple[ModuleFactors, dict, list[str]]:
    """One run's module: read, decompose once, and its rows of the per-run tables."""
    cfg, run, out, notes = ctx.cfg, ctx.runs[index], _builders(), []
    m = run.adapter.modules[path]
    A, B = run.adapter.factors(m.path)
    A_init = run.adapter.init_A(m.path)
    w_needed = w_wanted(ctx.bases[index], m, cfg)
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
    ctx = _Context(runs, plan_pairs(runs, cfg.comparisons, cfg.across_groups, notes), cfg, bases, {})
    inputs, members = gather(runs, cfg, notes)
    ctx.geometry = GeometryBaselines(inputs, members, cfg)
    for run in runs:
        if run.adapter.init is None and {Subject.A_init, Subject.A_delta} & set(cfg.subjects):
            notes.append(f"{run.label}: no adapter_init.safetensors; A_init and A_delta skipped, a_moved is NaN")
    torch_too = inputs is not None or any(b is not None for b in ctx.bases)  # W tables, input-geometry grids
    with blas_threads(1 if cfg.workers > 1 else None, torch_too):
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
            folder=utf8(str(run.folder)),
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


def _map_modules(paths: list[str], ctx: _Context) -> list:
    """Analyse the modules, ``ctx.cfg.workers`` at a time on threads; the results in module order.

    Whole modules in parallel, not a module's runs: a module's runs and pairs differ in size (r = 8
    against 64), and the threads then waited for the largest one (a quarter of their time, measured).
    """
    workers = min(ctx.cfg.workers, max(len(paths), 1))
    with ThreadPoolExecutor(workers) as pool, progress_bar(len(paths), ctx.cfg.progress) as bar:
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
