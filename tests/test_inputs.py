"""Input statistics: hooks on a tiny base model, the big-k sketch against dense, storage, the analysis columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_models import peft_adapter
from tiny import build_tiny_model, tiny_overrides, write_tiny_csv

from lora_analysis.analysis.compare import analyze
from lora_analysis.analysis.inputs import InputStatistics, TextSource, gather_input_stats, match_modules
from lora_analysis.layout import AnalysisDir

PATHS = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.intermediate.dense"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_model("bert", tmp_path_factory.getbasetemp() / "tiny-bert-inputs")


def _batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(4):
        ids = torch.from_numpy(rng.integers(1000, 2000, size=(8, 12)))
        mask = torch.ones_like(ids)
        mask[:4, 8:] = 0  # padded positions: must not count
        yield ids, mask


def test_hooks_sketch_and_dense_agree_and_padding_is_excluded(base):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(base).eval()
    modules = match_modules(model, PATHS)
    assert set(modules) == set(PATHS)  # the task model's "bert." prefix dropped for the backbone
    dense = gather_input_stats(model, modules, _batches(), top=8)
    sketch = gather_input_stats(model, modules, _batches(), top=16, dense_max=0)  # the big-k path, 32 rows >= k
    captured = []
    handle = modules[PATHS[0]].register_forward_hook(lambda m, a, o: captured.append(a[0]))
    with torch.inference_mode():
        for ids, mask in _batches():
            model(input_ids=ids, attention_mask=mask)
    handle.remove()
    X = torch.cat([x[m.bool()] for x, (_, m) in zip(captured, _batches(), strict=True)]).to(torch.float64).numpy()
    M = X.T @ X / len(X)
    s = dense[PATHS[0]]
    assert s.count == len(X) == 4 * (8 * 12 - 4 * 4)
    np.testing.assert_allclose(s.values, np.linalg.eigvalsh(M)[::-1][:8], rtol=1e-9)
    np.testing.assert_allclose(s.mean, X.mean(0), rtol=1e-9, atol=1e-12)
    assert s.trace == pytest.approx(np.trace(M), rel=1e-12)
    C = M - np.outer(X.mean(0), X.mean(0))
    assert s.cov_trace == pytest.approx(np.trace(C), rel=1e-9)
    np.testing.assert_allclose(s.cov_values, np.linalg.eigvalsh(C)[::-1][:8], rtol=1e-8)
    for path in PATHS:  # 2 x 16 sketch rows span all k = 32 dims: exact, as the docstring says
        np.testing.assert_allclose(sketch[path].values[:8], dense[path].values, rtol=1e-9)
        np.testing.assert_allclose(sketch[path].cov_values[:8], dense[path].cov_values, rtol=1e-8)
        assert sketch[path].trace == pytest.approx(dense[path].trace, rel=1e-12)
        assert sketch[path].vectors.shape == (32, 16)


def test_statistics_round_trip(base, tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(base).eval()
    stats = gather_input_stats(model, match_modules(model, PATHS), _batches(), top=4)
    table = InputStatistics([TextSource(str(base), "x.csv")], {(0, p): s for p, s in stats.items()})
    back = InputStatistics.load(table.save(tmp_path / "inputs.safetensors"))
    assert back.sources == table.sources
    for key, s in table.stats.items():
        np.testing.assert_array_equal(back.stats[key].vectors, s.vectors)
        assert back.stats[key].count == s.count and back.stats[key].trace == s.trace


def test_foreign_adapters_get_geometry_columns_from_base_and_data(base, tmp_path):
    csv = write_tiny_csv(tmp_path / "reviews.csv")
    a = peft_adapter("bert", tmp_path / "a", r=2, seed=0)
    b = peft_adapter("bert", tmp_path / "b", r=4, seed=1)
    result = analyze([a, b], base=str(base), data_path=str(csv), text_column="review", progress=False,
                     input_texts=64)
    phi = result.phi
    inside = phi[phi["subject"].isin(["A", "A_init", "A_delta", "dW"])]
    assert inside["geometry_baseline"].notna().all() and inside["geometry_std"].notna().all()
    assert inside["geometry_baseline"].between(0, 1).all()
    assert phi.loc[phi["subject"] == "B", "geometry_baseline"].isna().all()
    result.save(tmp_path / "out")
    assert AnalysisDir(tmp_path / "out").inputs_path.is_file()
    assert result.inputs.stats[0, PATHS[0]].count > 64  # tokens of 64 texts, padding excluded
    with pytest.warns(UserWarning, match="data_path"):
        bare = analyze([a, b], base=str(base), progress=False)
    assert bare.phi["geometry_baseline"].isna().all() and bare.inputs is None


@pytest.mark.slow
def test_trained_runs_get_input_statistics_from_their_own_config(tmp_path):
    """Two runs trained by the train app on a tiny model: the analysis finds their base and texts in
    config.yaml alone, and the geometry baseline sits between the isotropic baseline and 1."""
    from lora_analysis.train.sweep import run_overrides

    model = build_tiny_model("bert", tmp_path / "bert")
    csv = write_tiny_csv(tmp_path / "reviews.csv")
    runs = tmp_path / "runs"
    for r in (2, 8):
        run_overrides([*tiny_overrides(model, csv, runs, steps=6), f"lora.r={r}", f"run_name=r{r}", "name=sweep"])
    result = analyze(runs / "sweep", progress=False, w_tables=False)
    assert result.inputs is not None and len(result.inputs.sources) == 1
    assert result.inputs.sources[0].data_path == str(csv) and result.inputs.sources[0].test_size == 40
    rank = result.phi.query("comparison == 'rank' and subject == 'A_delta'")
    assert rank["geometry_baseline"].notna().all()
    top = rank[(rank["i"] == 1) & (rank["j"] == 8)]
    assert (top["geometry_baseline"] >= top["baseline"] - 3 * top["geometry_std"]).all()
    assert (top["geometry_baseline"] <= 1).all() and (top["geometry_std"] > 0).all()
    assert result.phi.loc[result.phi["subject"] == "B", "geometry_baseline"].isna().all()


class _Recycler(torch.nn.Module):
    """q and k share one input; ``second`` then gets another tensor at the address and shape ``first``'s
    input had, as when the allocator hands a freed block to the next tensor of that size."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.first, self.second = (torch.nn.Linear(6, 6) for _ in range(4))

    def forward(self, input_ids, attention_mask):
        h = input_ids.to(torch.float32)[..., None] * torch.arange(1.0, 7.0)  # (B, T, 6)
        self.q(h), self.k(h)
        block = torch.empty_like(h)
        x = torch.sin(h, out=block[:])
        out = self.first(x)
        del x
        y = torch.cos(out, out=block[:])  # a new tensor on the same memory: same data_ptr, same shape
        return self.second(y)


def test_modules_sharing_an_address_are_not_aliased_only_the_same_input_is():
    model = _Recycler().eval()
    modules = {name: getattr(model, name) for name in ("q", "k", "first", "second")}
    batches = [(torch.arange(40).reshape(4, 10) % 7, torch.ones(4, 10, dtype=torch.long)) for _ in range(3)]
    stats = gather_input_stats(model, modules, batches, top=6)
    assert stats["k"] is stats["q"]  # the very same tensor: counted once
    for name in ("first", "second"):
        captured = []
        def keep(_module, args, _output, into=captured):
            into.append(args[0].reshape(-1, 6).clone())

        handle = modules[name].register_forward_hook(keep)
        with torch.inference_mode():
            for ids, mask in batches:
                model(ids, mask)
        handle.remove()
        X = torch.cat(captured).to(torch.float64).numpy()
        np.testing.assert_allclose(stats[name].mean, X.mean(0), rtol=1e-9, atol=1e-12)
