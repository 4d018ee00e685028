"""How an analysis runs on this machine: how many workers, their BLAS threads, the progress bar."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from lora_analysis.analysis.base_weights import BaseWeights
from lora_analysis.analysis.runs import Run
from lora_analysis.analysis.settings import AnalyzeConfig, w_wanted

SVD_MEMORY = 10  # peak bytes per byte of a float64 W while a worker runs its W tables (see auto_workers)


def auto_workers(runs: list[Run], bases: list[BaseWeights | None], cfg: AnalyzeConfig) -> int:
    """``workers=None``: one per usable core, but no more than half the available memory holds while each
    runs the W tables of the largest module: a dense SVD of W and one of W + dW, with W's kept, about
    ``SVD_MEMORY`` times W in float64 (measured: a 4096 x 4096 SVD raised peak RSS by 995 MB in numpy and
    808 MB in torch, 6-7x the 134 MB of W)."""
    from lora_analysis.machine import available_memory, usable_cores

    cores = usable_cores()
    largest = max((m.out_features * m.in_features for run, base in zip(runs, bases, strict=True)
                   for m in run.adapter if w_wanted(base, m, cfg)), default=0)  # fmt: skip
    memory = available_memory()
    if largest == 0 or memory is None:
        return cores
    return max(1, min(cores, int(memory / 2 / (SVD_MEMORY * 8 * largest))))


@contextmanager
def blas_threads(n: int | None, torch_too: bool) -> Iterator[None]:
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


@contextmanager
def progress_bar(total: int, shown: bool) -> Iterator:
    """A progress bar over modules on stderr, or a silent stand-in (tqdm is imported only to be shown)."""
    if not shown:
        yield SimpleNamespace(update=lambda: None)
        return
    from tqdm import tqdm

    with tqdm(total=total, desc="modules", unit="module", file=sys.stderr) as bar:
        yield bar
