"""Input statistics of every adapted module: what the frozen base model feeds each LoRA ``A``.

For module ``(layer, role)`` with inputs ``x_t: (k,)`` (one per non-padding token ``t`` of a fixed,
seeded sample of the training texts, run through the frozen base model), with ``n`` tokens:

    M = (1/n) sum_t x_t x_t^T        (uncentred second moment: the span the rows of A - A_init live in)
    mu = (1/n) sum_t x_t,   C = M - mu mu^T   (covariance)

Kept compactly (``InputStats``): the top ``m`` eigenpairs of M and of C, their traces (total energy),
the mean and the token count; never a dense ``k x k`` matrix. Accumulation is float64, two ways:

- dense (``k <= dense_max``): ``sum x x^T`` accumulated transiently, then its top eigenpairs
  (``top_eigenpairs``: exact ``eigh`` for small k, subspace iteration above);
- sketch (larger ``k``, e.g. Llama's 14,336): the token matrix ``X: (n, k)`` kept as its top
  ``2m`` right-singular rows ``S Vh`` (an incremental truncated SVD: each batch is stacked under the
  sketch and re-factored), exact while the tokens span at most ``2m`` dimensions and otherwise exact
  in the top directions up to the energy truncated; the traces are accumulated exactly either way.

The texts are the run's own training split (``texts.py``: same file, split and ``max_length``), or,
for foreign adapters, every row of ``data_path`` (``AnalyzeConfig``).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lora_analysis.atomic import write_atomic
from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.texts import read_text_table, split_indices, tokenize

_POWER = 12  # subspace iterations in top_eigenpairs
_EXACT_UP_TO = 1024  # a full eigh up to this k: exact, and faster than the iteration there (20 ms at k = 384)


@dataclass(frozen=True)
class InputStats:
    """One module's input statistics. ``k`` = in_features, ``m`` = eigenpairs kept (``<= k``)."""

    count: int  # tokens
    mean: np.ndarray  # (k,)
    trace: float  # tr M = mean ||x||^2
    values: np.ndarray  # (m,) top eigenvalues of M, decreasing
    vectors: np.ndarray  # (k, m) their orthonormal eigenvectors
    cov_trace: float  # tr C = tr M - ||mu||^2
    cov_values: np.ndarray  # (m,) top eigenvalues of C
    cov_vectors: np.ndarray  # (k, m)

    @property
    def k(self) -> int:
        return len(self.mean)

    def moment(self, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
        """``(values (m,), vectors (k, m), trace)`` of M (``second_moment``) or C (``covariance``)."""
        if kind == "second_moment":
            return self.values, self.vectors, self.trace
        if kind == "covariance":
            return self.cov_values, self.cov_vectors, self.cov_trace
        raise ValueError(f"moment must be second_moment or covariance, got {kind!r}")


# --- accumulation (float64)


class _Dense:
    """``sum x x^T: (k, k)``, ``sum x`` and the count, for small ``k``."""

    def __init__(self, k: int) -> None:
        self.gram, self.sum, self.n = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64), 0

    def add(self, X: torch.Tensor) -> None:  # X: (n, k) float64
        self.gram.addmm_(X.T, X)
        self.sum += X.sum(0)
        self.n += X.shape[0]

    def second_moment(self, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``top`` eigenpairs of M, decreasing: values (m,), vectors (k, m)."""
        return top_eigenpairs(self.gram / self.n, top)

    def trace(self) -> float:
        return float(torch.diagonal(self.gram).sum()) / self.n


class _Sketch:
    """The token matrix as its top ``size`` right-singular rows ``S Vh: (size, k)``, for large ``k``."""

    def __init__(self, k: int, size: int) -> None:
        self.rows, self.size = torch.zeros(0, k, dtype=torch.float64), size
        self.sum, self.n, self.sq = torch.zeros(k, dtype=torch.float64), 0, 0.0

    def add(self, X: torch.Tensor) -> None:
        self.sum += X.sum(0)
        self.n += X.shape[0]
        self.sq += float((X * X).sum())
        self.rows = torch.cat([self.rows, X])
        if self.rows.shape[0] > 2 * self.size:  # re-factor only when the stack doubles: O(n k size) in all
            self._compress()

    def _compress(self) -> None:
        _, s, vh = torch.linalg.svd(self.rows, full_matrices=False)
        keep = min(self.size, len(s))
        self.rows = s[:keep, None] * vh[:keep]

    def second_moment(self, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._compress()
        _, s, vh = torch.linalg.svd(self.rows, full_matrices=False)
        return s**2 / self.n, vh.T

    def trace(self) -> float:
        return self.sq / self.n


def top_eigenpairs(S: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` largest eigenpairs of a symmetric ``S: (k, k)``, decreasing: ``(m,)``, ``(k, m)``.

    Exact ``eigh`` for ``k <= _EXACT_UP_TO`` or ``4 top >= k``; otherwise subspace iteration on ``2 top``
    seeded random vectors (``_POWER`` products with S,
    re-orthonormalised), then Rayleigh-Ritz: about half the time of a full ``eigh`` at k = 1536 (measured
    1.3 s against 2.9 s on one busy core). Approximate: on a slowly decaying spectrum (eigenvalues
    falling 900x over 1536) the 64th eigenvalue was off by 1e-3 relative, the leading ones far less.
    """
    k = S.shape[0]
    if 4 * top >= k or k <= _EXACT_UP_TO:
        values, vectors = torch.linalg.eigh(S)
        return values.flip(0), vectors.flip(1)
    generator = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(k, 2 * top, dtype=torch.float64, generator=generator))[0]
    for _ in range(_POWER):
        Q = torch.linalg.qr(S @ Q)[0]
    values, u = torch.linalg.eigh(Q.T @ S @ Q)
    return values.flip(0)[:top], (Q @ u.flip(1))[:, :top]


def _finish(acc: _Dense | _Sketch, top: int) -> InputStats:
    """Top ``top`` eigenpairs of M and of C = M - mu mu^T (C's within span(M's pairs, mu))."""
    values, vectors = acc.second_moment(top)
    mean = acc.sum / acc.n
    trace = acc.trace()
    if isinstance(acc, _Dense):
        cov_values, cov_vectors = top_eigenpairs(acc.gram / acc.n - torch.outer(mean, mean), top)
    else:  # C restricted to span(V, mu), where the sketch holds all of M it knows
        Q, _ = torch.linalg.qr(torch.cat([vectors, mean[:, None]], dim=1))
        c = Q.T @ vectors
        core = (c * values) @ c.T - torch.outer(Q.T @ mean, Q.T @ mean)
        cov_values, u = torch.linalg.eigh((core + core.T) / 2)
        cov_values, cov_vectors = cov_values.flip(0), Q @ u.flip(1)
    m = min(top, len(values))
    return InputStats(
        count=acc.n, mean=mean.numpy(), trace=trace, values=values[:m].clamp_min(0).numpy(),
        vectors=vectors[:, :m].contiguous().numpy(), cov_trace=trace - float(mean @ mean),
        cov_values=cov_values[:m].clamp_min(0).numpy(), cov_vectors=cov_vectors[:, :m].contiguous().numpy(),
    )  # fmt: skip


def match_modules(model: torch.nn.Module, paths: Iterable[str]) -> dict[str, torch.nn.Module]:
    """Adapter module paths matched to ``model``'s modules by suffix (a task model's ``bert.`` prefix
    is dropped for the backbone ``BertModel``); paths without a match are left out."""
    named = dict(model.named_modules())
    found = {}
    for path in paths:
        parts = path.split(".")
        for start in range(len(parts)):
            name = ".".join(parts[start:])
            if name in named:
                found[path] = named[name]
                break
    return found


def gather_input_stats(
    model: torch.nn.Module,
    modules: dict[str, torch.nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    top: int = 64,
    dense_max: int = 2048,
) -> dict[str, InputStats]:
    """Input statistics of ``modules`` (path -> submodule of ``model``) over ``batches`` of
    ``(input_ids (B, T), attention_mask (B, T))``; padded positions (mask 0) are left out."""
    accumulators: dict[str, _Dense | _Sketch] = {}
    alias: dict[str, str] = {}  # a module fed the very tensor another one got (q, k, v): counted once
    state: dict = {}

    def hook(path: str):
        def record(_module, args, _output) -> None:
            x = args[0]
            # Keyed by the tensor object, not its address: a freed input's memory is reused by later
            # tensors of the same shape, and an address key then aliased unrelated modules.
            owner = state["seen"].get(id(x))
            if owner is not None and owner[0]() is x:
                alias[path] = owner[1]
                return
            state["seen"][id(x)] = (weakref.ref(x), path)
            X = x.reshape(-1, x.shape[-1])[state["keep"]].to(torch.float64)
            if path not in accumulators:
                k = X.shape[1]
                accumulators[path] = _Dense(k) if k <= dense_max else _Sketch(k, 2 * top)
            accumulators[path].add(X)

        return record

    handles = [module.register_forward_hook(hook(path)) for path, module in modules.items()]
    try:
        with torch.inference_mode():
            for input_ids, mask in batches:
                state["keep"], state["seen"] = mask.reshape(-1).bool(), {}
                model(input_ids=input_ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    found = {path: _finish(acc, top) for path, acc in accumulators.items() if acc.n > 0}
    found.update({path: found[owner] for path, owner in alias.items() if owner in found})
    return found


def padded_batches(
    ids: list[np.ndarray], pad_id: int, batch_size: int = 32
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, attention_mask)`` batches of similar lengths, each padded to its longest text."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = [ids[i] for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, seq in enumerate(rows):
            input_ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        yield torch.from_numpy(input_ids), torch.from_numpy(mask)


# --- which texts, which model


@dataclass(frozen=True)
class TextSource:
    """Where a run's input statistics come from: a base model directory and the texts it trained on.

    ``test_size`` None means every row is a candidate (foreign adapters: the user's data file).
    """

    model_dir: str
    data_path: str
    text_column: str = "text"
    max_length: int = 64
    causal_lm: bool = False
    test_size: int | None = None
    val_size: int = 0
    train_size: int | None = None
    split_seed: int = 0
    encoding: str = "utf-8"

    def texts(self, n: int, seed: int) -> list[str]:
        """A fixed sample of ``n`` training texts: seeded by ``seed`` alone, sorted by row."""
        texts = read_text_table(self.data_path, self.text_column, None, encoding=self.encoding).texts
        rows = np.arange(len(texts))
        if self.test_size is not None:
            rows = split_indices(len(texts), self.test_size, self.val_size, self.train_size, self.split_seed).train
        chosen = np.sort(np.random.default_rng([seed]).choice(rows, size=min(n, len(rows)), replace=False))
        return [texts[i] for i in chosen]


def source_statistics(
    source: TextSource, paths: Iterable[str], texts: int = 256, seed: int = 0, top: int = 64, dense_max: int = 2048
) -> dict[str, InputStats]:
    """Load the frozen base model of ``source`` and gather the input statistics of ``paths`` on its texts."""
    from transformers import AutoModel, AutoTokenizer  # heavy: imported only when statistics are wanted
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its load bar and reports are noise beside the analysis' own notes
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.model_dir)
        model = AutoModel.from_pretrained(source.model_dir).eval()
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # a damaged config.json too
        raise LoraAnalysisError(f"cannot load the base model {source.model_dir} for input statistics: "
                                f"{first_line(error)}") from error
    modules = match_modules(model, paths)
    ids = tokenize(tokenizer, source.texts(texts, seed), source.max_length, source.causal_lm)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return gather_input_stats(model, modules, padded_batches(ids, pad), top, dense_max)


# --- storage: one safetensors file beside the analysis tables

_FIELDS = ("mean", "values", "vectors", "cov_values", "cov_vectors")


@dataclass
class InputStatistics:
    """Every module's input statistics: ``stats[(source index, module path)]``, and the sources."""

    sources: list[TextSource]
    stats: dict[tuple[int, str], InputStats]

    def save(self, path: str | Path) -> Path:
        """Write atomically as safetensors: float64 tensors ``<source>/<path>/<field>``; counts, traces
        and the sources in the JSON metadata."""
        from safetensors.numpy import save_file

        tensors, scalars = {}, {}
        for (source, module), s in self.stats.items():
            for name in _FIELDS:
                tensors[f"{source}/{module}/{name}"] = np.ascontiguousarray(getattr(s, name), dtype=np.float64)
            scalars[f"{source}/{module}"] = {"count": s.count, "trace": s.trace, "cov_trace": s.cov_trace}
        metadata = {"sources": json.dumps([asdict(s) for s in self.sources]), "scalars": json.dumps(scalars)}
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> InputStatistics:
        """Read a file written by ``save``."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                arrays = {key: f.get_tensor(key) for key in f.keys()}
            sources = [TextSource(**s) for s in json.loads(meta["sources"])]
            scalars = json.loads(meta["scalars"])
        except Exception as error:  # safetensors and json raise their own types
            raise LoraAnalysisError(f"{path}: not an input statistics file ({first_line(error)})") from error
        stats = {}
        for key, values in scalars.items():
            source, module = key.split("/", 1)
            stats[int(source), module] = InputStats(**values, **{n: arrays[f"{key}/{n}"] for n in _FIELDS})
        return cls(sources, stats)
