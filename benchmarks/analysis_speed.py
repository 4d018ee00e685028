"""Analysis speed: the phi grid, the factored dW SVD, and a whole analysis at Llama-3-8B shapes, in one run.

1. phi grid (one product + cumulative sums) against the per-cell definition, both from precomputed
   bases, at r = 8 x 64 and 64 x 64, k = 4096. Target: >= 100x, max |difference| <= 1e-10.
2. SVD of dW = s * B @ A from its factors (two thin QRs + an r x r SVD) against the dense SVD of the
   4096 x 4096 matrix, r = 64. Target: >= 50x, singular values equal to 1e-8 relative.
3. ``analyze`` (rank and seed pairs plus the random baseline; subjects A, A_delta, dW; no W tables,
   synthetic adapters have no base) of three adapters with Llama-3-8B shapes: 32 layers, q, k, v, o,
   gate, up, down (hidden 4096, kv 1024, FFN 14336), r = 8 seed 0, r = 64 seeds 0 and 1, float32,
   each with adapter_init.safetensors, written once in PEFT format under /tmp and reused. Run in a
   child process (``--repeat`` times), after one read of the files (page cache warm): its whole wall
   time, split into python start + imports, analyze() and Parquet (and the exit, which frees the
   tables), its CPU time and its peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``); min and median
   over the repetitions.
   Target: <= 4 s whole child process wall (issue 11; before: <= 10 s), <= 2 GB peak, on 2 idle cores.
   ``--against DIR`` runs the same child on another checkout's code (e.g. main's, from
   ``git archive main | tar -x -C DIR``), alternating with this one, prints both side by side and
   checks that both wrote the same tables (``compare_analyses.py``).

    .venv/bin/python benchmarks/analysis_speed.py [--data /tmp/lora-analysis-bench] [--repeat 5]
        [--skip-kernels] [--against /tmp/main-checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from lora_analysis.analysis.delta import delta_svd, lora_delta
from lora_analysis.analysis.subspace import phi_cell, phi_grid

REPO = Path(__file__).resolve().parents[1]
HIDDEN, KV, FFN, LAYERS = 4096, 1024, 14336, 32
SHAPES = {  # module path inside a block -> (out_features, in_features)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN), "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}  # fmt: skip
RUNS = (("r8-seed0", 8, 0), ("r64-seed0", 64, 0), ("r64-seed1", 64, 1))


def best_time(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def orthonormal(k: int, r: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((k, r)))[0]


def bench_phi(rng: np.random.Generator) -> list[tuple[str, str]]:
    rows = []
    for r1, r2 in ((8, 64), (64, 64)):
        V1, V2 = orthonormal(4096, r1, rng), orthonormal(4096, r2, rng)
        grid = phi_grid(V1, V2)
        t_grid = best_time(lambda V1=V1, V2=V2: phi_grid(V1, V2), repeat=50)  # sub-ms: best of many
        start = time.perf_counter()
        cells = np.array([[phi_cell(V1, V2, i, j) for j in range(1, r2 + 1)] for i in range(1, r1 + 1)])
        t_cell = time.perf_counter() - start
        rows.append((f"phi grid {r1}x{r2}, k=4096", f"{t_grid * 1e3:.2f} ms"))
        rows.append((f"phi per cell {r1}x{r2}, k=4096", f"{t_cell * 1e3:.0f} ms"))
        rows.append(("  speed-up (target >= 100x)", f"{t_cell / t_grid:.0f}x"))
        rows.append(("  max |grid - per cell|", f"{np.abs(grid - cells).max():.1e}"))
    return rows


def bench_dw(rng: np.random.Generator) -> list[tuple[str, str]]:
    A, B = rng.standard_normal((64, 4096)) / 64, rng.standard_normal((4096, 64))
    t_fact = best_time(lambda: delta_svd(A, B, 0.125), repeat=3)
    _, s_fact, _ = delta_svd(A, B, 0.125)
    start = time.perf_counter()
    dense = torch.from_numpy(lora_delta(A, B, 0.125))
    s_dense = torch.linalg.svd(dense, full_matrices=False)[1].numpy()
    t_dense = time.perf_counter() - start
    rel = np.abs(s_fact - s_dense[:64]).max() / s_dense[0]
    return [
        ("dW SVD factored, 4096x4096 r=64", f"{t_fact * 1e3:.1f} ms"),
        ("dW SVD dense (torch gesdd)", f"{t_dense * 1e3:.0f} ms"),
        ("  speed-up (target >= 50x)", f"{t_dense / t_fact:.0f}x"),
        ("  max rel. singular value diff", f"{rel:.1e}"),
        ("  dense singular values 65..4096 (max)", f"{s_dense[64:].max() / s_dense[0]:.1e} x s_1"),
    ]


def write_sweep(root: Path) -> Path:
    """Three runs in PEFT format with init files; a learned direction per module shared by the runs."""
    sweep = root / "llama3-8b-shapes"
    if all((sweep / name / "DONE").is_file() for name, _, _ in RUNS):
        return sweep
    for name, r, seed in RUNS:
        folder = sweep / name
        folder.mkdir(parents=True, exist_ok=True)
        trained, init = {}, {}
        for layer in range(LAYERS):
            for index, (module, (d, k)) in enumerate(SHAPES.items()):
                key = f"base_model.model.model.layers.{layer}.{module}"
                rng = np.random.default_rng([seed, r, layer, index])
                shared = np.random.default_rng([layer, index]).standard_normal(k)
                A0 = rng.standard_normal((r, k), dtype=np.float32) / r  # PEFT's gaussian init: N(0, 1/r^2)
                A = A0 + 0.05 * np.outer(rng.standard_normal(r), shared / np.linalg.norm(shared)).astype(np.float32)
                A += 0.01 / r * rng.standard_normal((r, k), dtype=np.float32)
                B = 0.01 * rng.standard_normal((d, r), dtype=np.float32)
                trained[f"{key}.lora_A.weight"], trained[f"{key}.lora_B.weight"] = (
                    torch.from_numpy(A),
                    torch.from_numpy(B),
                )
                init[f"{key}.lora_A.weight"] = torch.from_numpy(A0)
                init[f"{key}.lora_B.weight"] = torch.zeros(d, r)
        save_file(trained, folder / "adapter_model.safetensors")
        save_file(init, folder / "adapter_init.safetensors")
        del trained, init
        config = {
            "peft_type": "LORA",
            "r": r,
            "lora_alpha": 16,
            "target_modules": [m.split(".")[-1] for m in SHAPES],
            "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B",
            "use_rslora": False,
        }
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
        run = {
            "run_name": name,
            "seed": seed,
            "method": "lora",
            "model": {"name_or_path": "meta-llama/Meta-Llama-3-8B"},
            "lora": {
                "r": r,
                "alpha": 16.0,
                "rslora": False,
                "targets": "all",
                "init": "gaussian",
                "init_stream": "per_module",
            },
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(run))
        (folder / "DONE").write_text("{}\n")
    return sweep


CHILD = """
import json, sys, time
first_line = time.time()
from lora_analysis.analysis.compare import analyze
imported = time.time()
result = analyze(sys.argv[1], subjects=["A", "A_delta", "dW"], w_tables=False, progress=False)
analysed = time.time()
result.save(sys.argv[2])
saved = time.time()
rows = result.rows() if hasattr(result, "rows") else {n: len(f) for n, f in result.tables().items()}  # older code
print(json.dumps({"first_line": first_line, "imported": imported, "analysed": analysed, "saved": saved,
                  "rows": rows}))
"""
BREAKDOWN_CHILD = """
import cProfile, json, pstats, sys, time
from threadpoolctl import threadpool_limits
from lora_analysis.analysis.compare import analyze
from lora_analysis.analysis.tables import import_for_tables
import_for_tables()  # imports are part 3's first phase, not the analysis's
with threadpool_limits(1, user_api="blas"):
    profile = cProfile.Profile()
    start = time.process_time()
    profile.enable()
    analyze(sys.argv[1], subjects=["A", "A_delta", "dW"], w_tables=False, progress=False, workers=1)
    profile.disable()
    cpu = time.process_time() - start
stats = {(path.rsplit("/", 1)[-1], name): (tt, ct) for (path, _, name), (_, _, tt, ct, _) in
         pstats.Stats(profile).stats.items()}
print(json.dumps({"cpu": cpu, **{f"{f}:{n}": v for (f, n), v in stats.items()}}))
"""
BREAKDOWN = (  # (label, file:function, its own time (else with its callees), a float64 kernel)
    ("  Grams X^T X (syrk, in qr_frame)", "subspace.py:qr_frame", True, True),
    ("  eigh of the r x r Grams", "_linalg.py:eigh", True, True),
    ("  products of frames and bases (gemm, mm)", "subspace.py:mm", True, True),
    ("  SVD of dW's r x r core and of R (svd)", "_linalg.py:svd", True, True),
    ("  reading, upcast to float64, NaN check", "adapters.py:_read", False, False),
)


def breakdown(sweep: Path) -> list[tuple[str, str]]:
    """Where ``analyze()``'s CPU time goes: one run on one thread (one worker, one BLAS thread) under
    cProfile, its own time per kernel; the float64 kernels spread over the cores at best, which is the
    floor the analysis cannot go below without computing less."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", BREAKDOWN_CHILD, str(sweep)], capture_output=True, text=True,
                           env=env, cwd=sweep.parent)  # fmt: skip
    if child.returncode != 0:
        raise SystemExit(child.stderr)
    t = json.loads(child.stdout.strip().splitlines()[-1])
    cpu, rows, kernels, accounted = t["cpu"], [], 0.0, 0.0
    rows.append(("analyze() on one thread, CPU time (cProfile on)", f"{cpu:.2f} s"))
    for label, key, own, kernel in BREAKDOWN:
        seconds = t.get(key, (0.0, 0.0))[0 if own else 1]
        accounted += seconds
        kernels += seconds if kernel else 0.0
        rows.append((label, f"{seconds:.2f} s ({seconds / cpu:.0%})"))
    rows.append(("  the rest (Python, tables, A - A_init, cProfile's overhead)", f"{cpu - accounted:.2f} s"))
    cores = os.cpu_count() or 1
    rows.append((f"float64 kernels alone over {cores} cores at best", f"{kernels / cores:.2f} s"))
    return rows


PHASES = (  # (label, key): the breakdown of the whole child process, in order
    ("  python start + imports", "imports"),
    ("  analyze() (224 modules x 3 runs)", "analyze"),
    ("  save Parquet", "parquet"),
    ("  exit (freeing the tables)", "exit"),
    ("whole child process wall (target <= 4 s; was <= 10 s)", "wall"),
    ("  child CPU time (user + sys)", "cpu"),
    ("  child minor page faults (thousands)", "faults"),
)


def run_child(sweep: Path, out: Path, source: Path | None) -> dict:
    """One analysis in a fresh interpreter on the code of ``source`` (None: this checkout): its phases
    (s), CPU time and table sizes. It runs in the data folder: ``python -c`` puts its working folder
    first on the path, where another checkout's code would win over ``source``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(source or REPO)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned = time.time()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(sweep), str(out)], capture_output=True, text=True, env=env, cwd=sweep.parent
    )
    ended = time.time()
    if child.returncode != 0:
        raise SystemExit(child.stderr)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = json.loads(child.stdout.strip().splitlines()[-1])
    faults = (cpu.ru_minflt - cpu_before.ru_minflt) / 1000
    return {
        "imports": t["imported"] - spawned, "analyze": t["analysed"] - t["imported"],
        "parquet": t["saved"] - t["analysed"], "exit": ended - t["saved"], "wall": ended - spawned,
        "cpu": cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, "faults": faults,
        "rows": t["rows"],
    }  # fmt: skip


def min_median(values: list[float], unit: str = " s") -> str:
    return f"{min(values):.2f}{unit} (median {statistics.median(values):.2f})"


def first_touch() -> list[tuple[str, str]]:
    """What a fresh page costs here: a new 69 MB array (the size of one phi column) filled, against the
    same array filled again (best of 5 each); why the analysis reuses freed memory (analysis/memory.py)."""
    fresh, again = [], []
    for _ in range(5):
        start = time.perf_counter()
        column = np.empty(8_644_608)
        column.fill(1.0)
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        column.fill(2.0)
        again.append(time.perf_counter() - start)
        del column
    times = f"{min(fresh) * 1e3:.1f} ms | {min(again) * 1e3:.1f} ms"
    return [("fresh 69 MB array filled | refilled (best of 5)", times)]


def bench_analysis(data: Path, repeat: int, against: Path | None) -> list[tuple[str, str]]:
    start = time.perf_counter()
    sweep = write_sweep(data)
    written = time.perf_counter() - start
    files = sorted(sweep.rglob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    start = time.perf_counter()
    for file in files:  # into the page cache, as right after writing: the timing is not the disk's
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass
    warm = time.perf_counter() - start
    ours, theirs = [], []
    for _ in range(repeat):  # alternating, so both see the same machine load
        ours.append(run_child(sweep, data / "analysis", None))
        if against is not None:
            theirs.append(run_child(sweep, data / "analysis-against", against))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB; max of all
    rows = [
        (
            "sweep on disk (float32, 3 runs + init)",
            f"{size / 1e9:.2f} GB" + (f", written in {written:.0f} s" if written > 1 else ", reused"),
        ),
        ("  read once before timing (page cache warm)", f"{warm:.2f} s"),
        (f"child process runs{' (this code | --against)' if against else ''}", f"{repeat}, min (median)"),
    ]
    for label, key in PHASES:
        unit = "" if key == "faults" else " s"
        value = min_median([r[key] for r in ours], unit)
        if against is not None:
            value += "  |  " + min_median([r[key] for r in theirs], unit)
        rows.append((label, value))
    if against is not None:
        ratio = min(r["wall"] for r in theirs) / min(r["wall"] for r in ours)
        rows.append(("  --against / this code (min wall)", f"{ratio:.2f}x"))
    rows.append(("peak RSS of the children (target <= 2 GB)", f"{peak / 1e9:.2f} GB"))
    rows.append(("rows", ", ".join(f"{n} {v:,}" for n, v in ours[-1]["rows"].items() if v)))
    return rows


def same_tables(data: Path) -> str:
    """Whether this code and --against wrote the same tables (bit for bit, or floats to 1e-12)."""
    from compare_analyses import compare

    from lora_analysis.analysis.tables import AnalysisResult

    old, new = AnalysisResult.load(data / "analysis-against"), AnalysisResult.load(data / "analysis")
    return "same tables" if compare(old, new, rtol=1e-12) else "TABLES DIFFER"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/lora-analysis-bench"))
    parser.add_argument("--repeat", type=int, default=5, help="child processes (min and median are printed)")
    parser.add_argument("--skip-kernels", action="store_true", help="only part 3 (part 2's dense SVD takes 25 s)")
    parser.add_argument("--against", type=Path, help="another checkout whose analyze() runs alternately")
    parser.add_argument("--breakdown", action="store_true", help="also analyze() on one thread under cProfile")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads {torch.get_num_threads()}")
    rows = [] if args.skip_kernels else bench_phi(rng) + bench_dw(rng)
    rows += first_touch() + bench_analysis(args.data, args.repeat, args.against)
    if args.breakdown:
        rows += breakdown(write_sweep(args.data))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("peak memory measured as getrusage(RUSAGE_CHILDREN).ru_maxrss: the largest of the analysis child processes")
    if args.against is not None:
        print(f"tables of this code against --against {args.against}:")
        print(same_tables(args.data))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
