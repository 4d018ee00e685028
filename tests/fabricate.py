"""A fabricated sweep folder with planted structure, following the table contracts of ``tables.SCHEMAS``.

Phi grids come from real orthonormal bases (so every grid is a possible one): run a's first n
directions are built to have a chosen energy ``e`` in run b's subspace, the others are random. Planted:

- rank pairs (same seed): the top direction of A - A_init has energy ``DELTA_TOP`` in the larger
  rank's subspace, that of dW ``DW_TOP``; A and A_init are random (A moved little, A_init independent);
- seed pairs: A - A_init and dW share ``SEED_SHARED[role]`` directions at energy ``SEED_ENERGY``
  (capped at r); A and A_init share none;
- Table 7, intruders, a_moved, accuracies and loss curves as in the constants below.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from lora_analysis.analysis.tables import SCHEMAS, AnalysisResult

DELTA_TOP, DW_TOP, SEED_ENERGY = 0.8, 0.7, 0.9
SEED_SHARED = {"q": 6, "v": 2, "ffn_in": 3, "ffn_out": 1}
SHAPES = {"q": (384, 384), "v": (384, 384), "ffn_in": (1536, 384), "ffn_out": (384, 1536)}  # (out, in)
A_MOVED = {4: 0.05, 8: 0.1, 64: 0.2}
TABLE7 = {4: (6.0, 0.3, 20.0, 0.02), 8: (4.0, 0.8, 30.0, 0.04), 64: (3.0, 1.5, 35.0, 0.3)}  # dw, proj dW, W, random
W_NORM = 60.0
INTRUDERS = {4: 0, 8: 1, 64: 2}  # per module
ACCURACY = {"r4-seed0": 0.771, "r8-seed0": 0.776, "r8-seed1": 0.780, "r64-seed0": 0.774, "r64-seed1": 0.770,
            "full-seed0": 0.801}
MAJORITY = 0.575
# Early stopping (lora_analysis.stopping): the step of the best validation loss and why the run stopped.
# r64-seed0 reached the ceiling still improving; the others converged.
STOPPED = {"r64-seed0": (150, 150, "ceiling")}
CONVERGED = (100, 150, "converged")
DEFAULT_RUNS = ("r4-seed0", "r8-seed0", "r64-seed0", "r8-seed1", "r64-seed1", "full-seed0")
QUICK_RUNS = ("r8-seed0", "r64-seed0", "r64-seed1")
SUBJECTS = ("A", "A_init", "A_delta", "dW")


def orthonormal(X: np.ndarray) -> np.ndarray:
    """Q of ``X``'s QR, on one torch thread: threaded BLAS crawls on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.qr(torch.from_numpy(X)).Q.numpy()
    finally:
        torch.set_num_threads(threads)


def planted_bases(k: int, r_a: int, r_b: int, energies, rng) -> tuple[np.ndarray, np.ndarray]:
    """``Va: (k, r_a)``, ``Vb: (k, r_b)`` orthonormal; ``||Vb^T Va[:, l]||^2 = energies[l]``, the rest random."""
    n = len(energies)
    Q = orthonormal(rng.standard_normal((k, r_b + n)))
    Vb = Q[:, :r_b]
    planted = np.sqrt(energies) * Q[:, :n] + np.sqrt(1 - np.asarray(energies)) * Q[:, r_b:r_b + n]
    Va = orthonormal(np.hstack([planted, rng.standard_normal((k, r_a - n))]))
    return Va, Vb


def phi_of(Va: np.ndarray, Vb: np.ndarray) -> np.ndarray:
    """Eq. 4 for every (i, j): cumulative sums of the squared overlap over min(i, j)."""
    m = (Va.T @ Vb) ** 2
    i, j = np.meshgrid(np.arange(1, m.shape[0] + 1), np.arange(1, m.shape[1] + 1), indexing="ij")
    return m.cumsum(0).cumsum(1) / np.minimum(i, j)


def grid_rows(grid: np.ndarray, k: int, **ids) -> pd.DataFrame:
    i, j = np.meshgrid(np.arange(1, grid.shape[0] + 1), np.arange(1, grid.shape[1] + 1), indexing="ij")
    return pd.DataFrame({**ids, "i": i.ravel(), "j": j.ravel(), "phi": grid.ravel(),
                         "baseline": np.maximum(i, j).ravel() / k})


def parse(run: str) -> tuple[str, int, int]:
    """``r8-seed1`` -> ("lora", 8, 1); ``full-seed0`` -> ("full", 8, 0)."""
    head, seed = run.split("-seed")
    return ("full", 8, int(seed)) if head == "full" else ("lora", int(head[1:]), int(seed))


def energies_for(comparison: str, subject: str, module: str, r_a: int) -> list[float]:
    if subject in ("A", "A_init"):
        return []
    if comparison == "rank":
        return [DELTA_TOP if subject == "A_delta" else DW_TOP]
    return [SEED_ENERGY] * min(SEED_SHARED[module], r_a)


def phi_table(runs: list[str], layers, modules, rng) -> pd.DataFrame:
    lora = [(run, *parse(run)[1:]) for run in runs if parse(run)[0] == "lora"]
    pairs = []
    for a, b in itertools.combinations(sorted(lora, key=lambda x: (x[1], x[2])), 2):  # a: smaller (r, seed)
        if a[2] == b[2] and a[1] != b[1]:
            pairs.append(("rank", a, b))
        elif a[1] == b[1]:
            pairs.append(("seed", a, b))
    random_grids = {}
    frames = []
    for layer in layers:
        for module in modules:
            k = SHAPES[module][1]
            for subject in SUBJECTS:
                for comparison, (ra_name, r_a, s_a), (rb_name, r_b, s_b) in pairs:
                    Va, Vb = planted_bases(k, r_a, r_b, energies_for(comparison, subject, module, r_a), rng)
                    frames.append(grid_rows(phi_of(Va, Vb), k, comparison=comparison, run_a=ra_name, run_b=rb_name,
                                            r_a=r_a, r_b=r_b, seed_a=s_a, seed_b=s_b, layer=layer, module=module,
                                            subject=subject))
                for name, r, seed in lora:
                    if (r, k) not in random_grids:
                        random_grids[r, k] = phi_of(*planted_bases(k, r, r, [], rng))
                    frames.append(grid_rows(random_grids[r, k], k, comparison="random", run_a=name, run_b="gaussian",
                                            r_a=r, r_b=r, seed_a=seed, seed_b=None, layer=layer, module=module,
                                            subject=subject))
    return pd.concat(frames, ignore_index=True).assign(targets="all")


def run_tables(runs: list[str], layers, modules, rng, w_tables: bool) -> dict[str, pd.DataFrame]:
    """spectra, modules, dw_vs_w, w_dw_phi, intruders for the LoRA runs."""
    rows = {name: [] for name in ("spectra", "modules", "dw_vs_w", "w_dw_phi", "intruders")}
    for run in runs:
        method, r, seed = parse(run)
        if method != "lora":
            continue
        for layer in layers:
            for module in modules:
                out, k = SHAPES[module]
                ids = dict(run=run, r=r, seed=seed, layer=layer, module=module)
                dw, proj_dw, proj_w, proj_rand = TABLE7[r]
                for subject, top in (("dW", dw), ("A", 1.0), ("B", 0.1), ("A_delta", 0.1)):
                    values = top * np.exp(-np.arange(r) / 3.0)
                    rows["spectra"].append(pd.DataFrame(dict(ids, subject=subject, index=np.arange(1, r + 1),
                                                             singular_value=values)))
                rows["modules"].append(pd.DataFrame([dict(
                    ids, targets="all", path=f"bert.encoder.layer.{layer}.{module}", in_features=k,
                    out_features=out, scale=8.0 / r, norm_A=1.0, norm_B=0.1, norm_dW=dw, a_moved=A_MOVED[r],
                    effective_rank_dW=2.5, stable_rank_dW=1.5, numerical_rank_A=r)]))
                if not w_tables:
                    continue
                rows["dw_vs_w"].append(pd.DataFrame([
                    dict(ids, source=src, top=r, projection_norm=p, w_norm=W_NORM, dw_norm=dw,
                         amplification=dw / p if src == "dW" else np.nan)
                    for src, p in (("dW", proj_dw), ("W", proj_w), ("random", proj_rand))]))
                for side in ("left", "right"):
                    Vw, Vd = planted_bases(k, 40, r, [], rng)
                    rows["w_dw_phi"].append(grid_rows(phi_of(Vw, Vd), k, side=side, **ids))
                cos = np.where(np.arange(10) < INTRUDERS[r], 0.3, 0.9)
                rows["intruders"].append(pd.DataFrame(dict(ids, index=np.arange(1, 11), max_abs_cos=cos,
                                                           is_intruder=cos < 0.5, threshold=0.5)))
    return {name: pd.concat(f, ignore_index=True) if f else pd.DataFrame() for name, f in rows.items()}


def typed(frame: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """The columns of ``schema``, in its order and dtypes (an empty frame if ``frame`` has no rows)."""
    out = {}
    for column, kind in schema.items():
        values = frame[column] if column in frame else pd.Series([], dtype=object)
        if kind == "cat":
            codes, uniques = pd.factorize(values.astype(str))
            out[column] = pd.Categorical.from_codes(codes, pd.Index(list(uniques), dtype="str"))
        else:
            out[column] = values.astype(kind) if len(values) else pd.Series([], dtype=kind)
    return pd.DataFrame(out)


def sweep_rows(runs: list[str]) -> pd.DataFrame:
    rows = []
    for run in runs:
        method, r, seed = parse(run)
        rows.append({
            "run": run, "method": method, "seed": seed, "name": "fabricated", "run_name": run,
            "model.name_or_path": "embedded:minilm", "model.task": "classification",
            "data.path": "embedded:rotten_tomatoes", "data.test_size": 2000, "data.split_seed": 0,
            "data.max_length": 64, "lora.r": r, "lora.alpha": 8.0, "lora.dropout": 0.0, "lora.init": "gaussian",
            "lora.init_stream": "per_module", "lora.targets": "all", "lora.budget": None, "optim.steps": 150,
            "optim.lr": 1e-3 if method == "lora" else 5e-5, "optim.batch_size": 32,
            "test_accuracy": ACCURACY[run], "test_loss": 0.46, "majority_accuracy": MAJORITY,
            "a_moved_mean": A_MOVED.get(r) if method == "lora" else np.nan, "final_train_loss": 0.43, "steps": 150,
            "examples_per_s": 56.0, "tokens_per_s": 1510.0, "train_seconds": 85.0, "eval_seconds": 25.0,
            "wall_seconds": 111.0, "trainable_params": 22_700_000 if method == "full" else 3000 * r,
            "lora_params": 0 if method == "full" else 2900 * r, "train_examples": 10752, "test_examples": 2000,
            "threads": 2, "device": "cpu",
            **stop_row(*STOPPED.get(run, CONVERGED)), "val_accuracy": ACCURACY[run],
        })
    return pd.DataFrame(rows)


def stop_row(best_step: int, steps: int, reason: str) -> dict:
    return {"best_step": best_step, "ceiling": 150, "stop_reason": reason, "evaluations": steps // 25,
            "val_loss": 0.45, "val_accuracy": 0.78, "val_examples": 1000}


def history(seed: int) -> pd.DataFrame:
    step = np.arange(10, 151, 10)
    wiggle = 0.005 * np.sin(step + seed)
    return pd.DataFrame({"step": step, "loss": 0.43 + 0.27 * np.exp(-step / 25.0) + wiggle,
                         "lr": 1e-3 * (1 - step / 150), "seconds": step * 0.55})


_SHARED: dict[tuple, Path] = {}


def shared_sweep(tmp_path_factory, runs=DEFAULT_RUNS, **options) -> Path:
    """One fabricated sweep per set of options for the whole test session, for tests that only read it."""
    key = (tuple(runs), tuple(sorted(options.items())))
    if key not in _SHARED:
        _SHARED[key] = fabricate_sweep(tmp_path_factory.mktemp("shared") / "sweep", runs, **options)
    return _SHARED[key]


def fabricate_sweep(root: Path, runs=DEFAULT_RUNS, *, layers=(0, 1, 2), modules=tuple(SHAPES), w_tables: bool = True,
                    seed: int = 0) -> Path:
    """Write ``root`` as a finished, analysed sweep of ``runs`` (names like ``r8-seed0``, ``full-seed0``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    runs = list(runs)
    table = sweep_rows(runs)
    root.mkdir(parents=True, exist_ok=True)
    table.to_parquet(root / "runs.parquet", index=False)
    for run, row in zip(runs, table.to_dict("records"), strict=True):
        folder = root / run
        folder.mkdir(exist_ok=True)
        history(parse(run)[2]).to_csv(folder / "history.csv", index=False)
        (folder / "metrics.json").write_text(json.dumps({k: v for k, v in row.items() if "." not in k}, default=str))
        (folder / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in row.items() if "." in k}))
        (folder / "DONE").write_text("{}")
    tables = run_tables(runs, layers, modules, rng, w_tables)
    tables["phi"] = phi_table(runs, layers, modules, rng)
    lora = [r for r in runs if parse(r)[0] == "lora"]
    tables["runs"] = pd.DataFrame({"run": lora, "folder": [str(root / r) for r in lora],
                                   "r": [parse(r)[1] for r in lora], "seed": [parse(r)[2] for r in lora],
                                   "targets": "all", "base": "embedded:minilm", "modules": len(layers) * len(modules),
                                   "has_init": True})
    result = AnalysisResult(**{name: typed(tables.get(name, pd.DataFrame()), schema)
                               for name, schema in SCHEMAS.items()}, notes=[], config={"subjects": list(SUBJECTS)})
    result.save(root / "analysis")
    return root
