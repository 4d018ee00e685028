"""The analysis' use of input statistics: which texts and base model each run gets, gathering them
once per source, and the cached input-geometry baseline grid of every phi row that lives in input space.

A toolkit run's source is its ``config.yaml`` (model.name_or_path, model.task and data.*: the same
file, split and max_length it trained on); a foreign PEFT adapter's is ``base=`` (or its
``base_model_name_or_path``) with ``data_path=``/``text_column=``/``max_length=`` (``AnalyzeConfig``).
A run with no known base or no texts gets none, with one note saying which is missing.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from lora_analysis.analysis.base_weights import chosen_base, no_base
from lora_analysis.analysis.runs import Run
from lora_analysis.embedded import DATA_NAME
from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.layout import RunDir

if TYPE_CHECKING:  # inputs and geometry import torch and scipy (2 s): only an analysis with a base needs them
    from lora_analysis.analysis.inputs import InputStatistics, TextSource

INPUT_SPACE = ("A", "A_init", "A_delta")  # and dW when its right side is analysed


def run_source(run: Run, cfg) -> tuple[TextSource | None, str | None]:
    """The run's ``TextSource``, or None and what is missing. ``cfg``: an ``AnalyzeConfig``."""
    config = RunDir(run.folder).load_config() if (run.folder / RunDir.CONFIG).is_file() else None
    model_dir = chosen_base(run.base, cfg.base)
    if model_dir is None:
        return None, f"{no_base(run.base)} (give base=<model dir>)"
    from lora_analysis.analysis.inputs import TextSource

    if config is not None and cfg.data_path is None:
        data, model = config.get("data") or {}, config.get("model") or {}
        return TextSource(
            model_dir=str(model_dir), data_path=str(data.get("path", DATA_NAME)),
            text_column=str(data.get("text_column", "text")), max_length=int(data.get("max_length", 64)),
            causal_lm=model.get("task", "classification") == "causal_lm", test_size=int(data.get("test_size", 2000)),
            val_size=int(data.get("val_size") or 0), train_size=data.get("train_size"),
            split_seed=int(data.get("split_seed", 0)), encoding=str(data.get("encoding") or "utf-8"),
        ), None  # fmt: skip
    if cfg.data_path is None:
        return None, "no training texts known (give data_path=<CSV/TSV/JSONL> and text_column=)"
    causal = "CAUSAL" in str(run.adapter.config.get("task_type") or "").upper()
    return TextSource(str(model_dir), cfg.data_path, cfg.text_column, cfg.max_length, causal), None


def gather(runs: list[Run], cfg, notes: list[str]) -> tuple[InputStatistics | None, list[int | None]]:
    """Input statistics of every adapted module, once per distinct source; each run's source index."""
    if not cfg.input_stats:
        return None, [None] * len(runs)
    sources: list[TextSource] = []
    members: list[int | None] = []
    for run in runs:
        source, missing = run_source(run, cfg)
        if source is None:
            notes.append(f"{run.label}: input statistics and the input-geometry baseline skipped: {missing}")
            members.append(None)
            continue
        if source not in sources:
            sources.append(source)
        members.append(sources.index(source))
    stats = {}
    if sources:
        from lora_analysis.analysis.inputs import InputStatistics, source_statistics
    for index, source in enumerate(sources):
        paths = sorted({m.path for run, s in zip(runs, members, strict=True) if s == index for m in run.adapter})
        try:
            with _one_thread():  # 2 torch threads on 2 busy cores: eigh/QR ~4x slower (measured)
                found = source_statistics(source, paths, cfg.input_texts, cfg.random_seed, cfg.input_top,
                                          cfg.input_dense_max)
        except (LoraAnalysisError, RuntimeError, IndexError, ValueError) as error:  # no tokenizer, ids out of range
            notes.append(f"input statistics skipped for base {source.model_dir} and data {source.data_path}: "
                         f"{first_line(error)}")
            continue
        unmatched = [p for p in paths if p not in found]
        if unmatched:
            notes.append(f"input statistics: {len(unmatched)} module(s) not found in {source.model_dir} "
                         f"(e.g. {unmatched[0]}); no input-geometry baseline for them")
        stats.update({(index, path): s for path, s in found.items()})
    return (InputStatistics(sources, stats) if stats else None), members


@contextmanager
def _one_thread() -> Iterator[None]:
    # Batched small SVDs in torch thrash with 2 threads on 2 busy cores (measured 100 ms -> 8 s).
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class GeometryBaselines:
    """``geometry_baseline``/``geometry_std`` grids per (source, module, rho_a, rho_b), sampled once.

    Seeded by ``(random_seed, module path, rho_a, rho_b)``: deterministic, and the same for every pair
    of runs with those sizes at that module.
    """

    def __init__(self, inputs: InputStatistics | None, members: list[int | None], cfg) -> None:
        self.inputs, self.members, self.cfg, self.cache = inputs, members, cfg, {}

    def input_space(self, subject: str) -> bool:
        return subject in INPUT_SPACE or (subject == "dW" and self.cfg.dw_side == "right")

    def grid(self, a: int, b: int | None, path: str, subject: str, shape: tuple[int, int]):
        """(mean, std) arrays of ``shape`` for runs ``a`` and ``b`` (None: a against Gaussians), or NaN.

        Runs on different texts (two tasks) get the null pair drawn each from its own inputs."""
        source = self.members[a]
        other = source if b is None else self.members[b]
        if other != source:
            return self._cross(source, other, path, subject, shape)
        stats = None if self.inputs is None or source is None else self.inputs.stats.get((source, path))
        if stats is None or not self.input_space(subject):
            return np.nan, np.nan
        key = (source, path, *shape)
        if key not in self.cache:
            from lora_analysis.analysis.geometry import sampled_geometry, tail_level

            values, _, trace = stats.moment(self.cfg.geometry_moment)
            rng = np.random.default_rng([self.cfg.random_seed, zlib.crc32(path.encode()), *shape])
            with _one_thread():
                self.cache[key] = sampled_geometry(
                    values, tail_level(values, trace, stats.k), stats.k, *shape, self.cfg.geometry_draws, rng
                )
        return self.cache[key]

    def _cross(self, source: int | None, other: int | None, path: str, subject: str, shape: tuple[int, int]):
        both = [None if self.inputs is None or s is None else self.inputs.stats.get((s, path)) for s in (source, other)]
        if any(s is None for s in both) or not self.input_space(subject) or both[0].k != both[1].k:
            return np.nan, np.nan
        key = (source, other, path, *shape)
        if key not in self.cache:
            from lora_analysis.analysis.geometry import sampled_cross_geometry, tail_level

            moments = []
            for stats in both:
                values, vectors, trace = stats.moment(self.cfg.geometry_moment)
                moments.append((values, vectors, tail_level(values, trace, stats.k)))
            rng = np.random.default_rng([self.cfg.random_seed, zlib.crc32(path.encode()), *shape, 1])
            with _one_thread():
                self.cache[key] = sampled_cross_geometry(*moments, *shape, self.cfg.geometry_draws, rng)
        return self.cache[key]
