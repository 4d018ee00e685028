"""Sweep comparisons: pairs, table rows against direct computation, Parquet round trip, CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _tiny_models import bert_sweep, peft_adapter
from omegaconf import OmegaConf
from safetensors.numpy import load_file

from lora_analysis.analysis.compare import analyze
from lora_analysis.analysis.pairs import plan_pairs
from lora_analysis.analysis.runs import find_runs
from lora_analysis.analysis.settings import AnalyzeConfig
from lora_analysis.analysis.subspace import phi_grid
from lora_analysis.analysis.tables import AnalysisResult
from lora_analysis.cli import main as cli_main
from lora_analysis.cli.analyze import main as analyze_main
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose

COLUMNS = {  # the contract with the plotting and report code
    "phi": ["comparison", "run_a", "run_b", "r_a", "r_b", "seed_a", "seed_b", "targets", "layer", "module",
            "subject", "i", "j", "phi", "baseline", "geometry_baseline", "geometry_std"],
    "spectra": ["run", "r", "seed", "layer", "module", "subject", "index", "singular_value"],
    "modules": ["run", "r", "seed", "targets", "layer", "module", "path", "in_features", "out_features", "scale",
                "norm_A", "norm_B", "norm_dW", "a_moved", "effective_rank_dW", "stable_rank_dW", "numerical_rank_A"],
    "dw_vs_w": ["run", "r", "seed", "layer", "module", "source", "top", "projection_norm", "w_norm", "dw_norm",
                "amplification"],
    "w_dw_phi": ["run", "r", "seed", "layer", "module", "side", "i", "j", "phi", "baseline"],
    "intruders": ["run", "r", "seed", "layer", "module", "index", "max_abs_cos", "is_intruder", "threshold"],
}
R2, R4, R4S1 = "r2-seed0-q+v+ffn_in", "r4-seed0-q+v+ffn_in", "r4-seed1-q+v+ffn_in"
VALUE = "bert.encoder.layer.1.attention.self.value"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return bert_sweep(tmp_path_factory.getbasetemp() / "bert-sweep")


@pytest.fixture(scope="module")
def result(sweep):
    with pytest.warns(UserWarning, match="unfinished run"):
        return analyze(sweep, progress=False)


def test_pairs_and_skipped_runs(sweep, result):
    pairs = result.phi[["comparison", "run_a", "run_b"]].drop_duplicates().astype(str)
    assert set(map(tuple, pairs.to_numpy())) == {
        ("rank", R2, R4), ("seed", R4, R4S1), ("random", R2, "gaussian"), ("random", R4, "gaussian"),
        ("random", R4S1, "gaussian"),
    }
    assert any("r8-seed0" in n and "unfinished" in n for n in result.notes)
    assert any("full" in n and "no adapter" in n for n in result.notes)
    assert list(result.runs["run"]) == [R2, R4, R4S1]


def test_columns_are_the_contract(result):
    for name, columns in COLUMNS.items():
        assert list(getattr(result, name).columns) == columns, name
        assert len(getattr(result, name)) > 0, name
    assert str(result.phi["seed_a"].dtype) == "Int64" and str(result.phi["layer"].dtype) == "Int64"


def A_matrix(sweep, run, path, file="adapter_model.safetensors", ab="A"):
    return load_file(sweep / run / file)[f"base_model.model.{path}.lora_{ab}.weight"].astype(np.float64)


def rows(result, comparison, run_a, subject, module="v", layer=1):
    p = result.phi
    sel = p[(p["comparison"] == comparison) & (p["run_a"] == run_a) & (p["subject"] == subject)
            & (p["module"] == module) & (p["layer"] == layer)]
    return sel.pivot(index="i", columns="j", values="phi").to_numpy()


def right_vectors(M):
    return np.linalg.svd(M, full_matrices=False)[2].T


def test_phi_rows_equal_direct_computation(sweep, result):
    A2, A4 = A_matrix(sweep, R2, VALUE), A_matrix(sweep, R4, VALUE)
    I2, I4 = (A_matrix(sweep, run, VALUE, "adapter_init.safetensors") for run in (R2, R4))
    B2, B4 = A_matrix(sweep, R2, VALUE, ab="B"), A_matrix(sweep, R4, VALUE, ab="B")
    expected = {
        "A": phi_grid(right_vectors(A2), right_vectors(A4)),
        "A_init": phi_grid(right_vectors(I2), right_vectors(I4)),
        "A_delta": phi_grid(right_vectors(A2 - I2), right_vectors(A4 - I4)),
        "B": phi_grid(np.linalg.svd(B2)[0][:, :2], np.linalg.svd(B4)[0][:, :4]),
        "dW": phi_grid(right_vectors(B2 @ A2)[:, :2], right_vectors(B4 @ A4)[:, :4]),
    }
    for subject, grid in expected.items():
        np.testing.assert_allclose(rows(result, "rank", R2, subject), grid, atol=1e-9, err_msg=subject)


def test_learned_parts_share_their_top_direction(result):
    """The fake training moves every A along one direction per module: a known answer for A - A_init."""
    p = result.phi
    top = p[(p["subject"] == "A_delta") & (p["i"] == 1) & (p["j"] == 1) & (p["comparison"] != "random")]
    assert len(top) == 2 * 6 and (top["phi"] > 0.99).all()
    init = p[(p["subject"] == "A_init") & (p["i"] == 1) & (p["j"] == 1) & (p["comparison"] != "random")]
    assert (init["phi"] < 0.9).all()  # independent init streams share nothing special


def test_baselines_and_random_rows(result):
    p = result.phi
    np.testing.assert_allclose(p["baseline"], np.maximum(p["i"], p["j"]) / np.where(
        (p["subject"] == "B") & (p["module"] == "ffn_in"), 64, 32))
    random = p[p["comparison"] == "random"]
    assert (random["r_a"] == random["r_b"]).all() and random["seed_b"].isna().all()
    r4 = random[(random["run_a"] == R4) & (random["subject"] == "A") & (random["module"] == "q")]
    assert len(r4) == 2 * 16  # two layers, a 4 x 4 grid each
    again = analyze([result.runs["folder"][1]], progress=False, w_tables=False, subjects=["A"])
    mine = again.phi[(again.phi["module"] == "q")]
    np.testing.assert_array_equal(mine["phi"].to_numpy(), r4["phi"].to_numpy())  # seeded, reproducible


def test_modules_and_spectra(sweep, result):
    m = result.modules.set_index(["run", "path"]).loc[(R4, VALUE)]
    A, B = A_matrix(sweep, R4, VALUE), A_matrix(sweep, R4, VALUE, ab="B")
    A0 = A_matrix(sweep, R4, VALUE, "adapter_init.safetensors")
    dW = 2.0 * B @ A  # alpha 8, r 4
    assert m["scale"] == 2.0 and m["norm_dW"] == pytest.approx(np.linalg.norm(dW), rel=1e-9)
    assert m["a_moved"] == pytest.approx(np.linalg.norm(A - A0) / np.linalg.norm(A0), rel=1e-9)
    s = result.spectra
    sel = s[(s["run"] == R4) & (s["layer"] == 1) & (s["module"] == "v") & (s["subject"] == "dW")]
    np.testing.assert_allclose(sel["singular_value"], np.linalg.svd(dW, compute_uv=False)[:4], rtol=1e-9)


def test_w_tables_against_the_base(sweep, result):
    base = load_file(sweep.parent / "base" / "model.safetensors")
    W = base["encoder.layer.1.attention.self.value.weight"].astype(np.float64)
    A, B = A_matrix(sweep, R2, VALUE), A_matrix(sweep, R2, VALUE, ab="B")
    dW = 4.0 * B @ A
    U, _, Vh = np.linalg.svd(dW)
    t7 = result.dw_vs_w.set_index(["run", "layer", "module", "source"]).loc[(R2, 1, "v", "dW")]
    assert t7["projection_norm"] == pytest.approx(np.linalg.norm(U[:, :2].T @ W @ Vh[:2].T), rel=1e-9)
    assert t7["w_norm"] == pytest.approx(np.linalg.norm(W)) and t7["top"] == 2
    intr = result.intruders
    sel = intr[(intr["run"] == R2) & (intr["layer"] == 1) & (intr["module"] == "v")]
    U_t, U_w = np.linalg.svd(W + dW)[0], np.linalg.svd(W)[0]
    np.testing.assert_allclose(sel["max_abs_cos"], np.abs(U_t[:, :10].T @ U_w).max(axis=1), atol=1e-8)
    assert (sel["is_intruder"] == (sel["max_abs_cos"] < 0.5)).all()


def test_save_and_load_identically(result, tmp_path):
    result.save(tmp_path / "a")
    loaded = AnalysisResult.load(tmp_path / "a")
    for name, frame in result.tables().items():
        pd.testing.assert_frame_equal(loaded.tables()[name], frame, obj=name)
    assert loaded.notes == result.notes


def test_tables_saved_in_pieces_load_as_the_whole_frames(sweep, tmp_path, monkeypatch):
    """``save`` streams a large table from its blocks, row group by row group, without assembling it;
    the file loads equal to the frame assembled from the same blocks (values, dtypes, categories)."""
    from pyarrow.parquet import ParquetFile

    from lora_analysis.analysis import tables as tables_module

    fresh = analyze(sweep, progress=False, w_tables=False)
    rows = fresh.rows()
    monkeypatch.setattr(tables_module, "ROW_GROUP", 50)  # every table above 50 rows in pieces of ~50
    fresh.save(tmp_path / "pieces")
    assert all(isinstance(fresh._tables[n], tables_module.TableBuilder) for n in ("phi", "spectra")), "not assembled"
    groups = ParquetFile(tmp_path / "pieces" / "phi.parquet").metadata.num_row_groups
    assert rows["phi"] > 500 and groups >= rows["phi"] // 100, (rows["phi"], groups)
    loaded = AnalysisResult.load(tmp_path / "pieces")
    assert loaded.rows() == rows
    for name, frame in fresh.tables().items():  # assembled now, from the same blocks
        pd.testing.assert_frame_equal(loaded.tables()[name], frame, obj=name)


def test_empty_tables_round_trip(sweep, tmp_path):
    result = analyze(sweep, progress=False, w_tables=False, comparisons=["seed"], subjects=["dW"])
    assert len(result.dw_vs_w) == 0 and set(result.phi["comparison"]) == {"seed"}
    loaded = AnalysisResult.load(result.save(tmp_path))
    for name, frame in result.tables().items():
        pd.testing.assert_frame_equal(loaded.tables()[name], frame, obj=name)


def test_id_columns_are_written_required_and_missing_values_survive(sweep, tmp_path):
    import pyarrow.parquet as pq

    result = analyze(sweep, progress=False, w_tables=False)
    spectra = result.spectra.copy()
    spectra.loc[spectra.index[:3], "layer"] = pd.NA  # a module outside the layers, as in a foreign adapter
    spectra.loc[spectra.index[:2], "singular_value"] = np.nan
    edited = AnalysisResult(**{**result.tables(), "spectra": spectra}, notes=result.notes, config={})
    folder = edited.save(tmp_path / "edited")
    schema = pq.read_schema(folder / "spectra.parquet")
    assert not schema.field("run").nullable and not schema.field("r").nullable  # never missing: required
    assert schema.field("layer").nullable and schema.field("singular_value").nullable  # holds missing values
    assert not pq.read_schema(folder / "phi.parquet").field("i").nullable
    loaded = AnalysisResult.load(folder)
    for name, frame in edited.tables().items():
        pd.testing.assert_frame_equal(loaded.tables()[name], frame, obj=name)


def test_runs_grouped_by_config(sweep, tmp_path):
    other = tmp_path / "sweep"
    shutil.copytree(sweep, other)
    config_path = other / R4S1 / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["lora"]["init"] = "kaiming"
    config_path.write_text(yaml.safe_dump(config))
    runs, _ = find_runs([other])
    assert [(p.comparison, runs[p.a].label, runs[p.b].label) for p in plan_pairs(runs)] == [("rank", R2, R4)]
    config["lora"]["init"] = "gaussian"
    config["lora"].pop("rank_pattern", None)  # saved before the setting existed: null and absent are one group
    config["lora"]["budget"] = None
    config_path.write_text(yaml.safe_dump(config))
    runs, _ = find_runs([other])
    assert len(plan_pairs(runs)) == len(plan_pairs(find_runs([sweep])[0])) > 1


def test_plain_adapters_every_pair(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "plain"
    folders = [peft_adapter("bert", root / name, r=r, seed=seed) for name, r, seed in
               (("small", 2, 0), ("big", 4, 0), ("big-again", 4, 1))]
    runs, _ = find_runs(folders)
    kinds = {(runs[p.a].label, runs[p.b].label): p.comparison for p in plan_pairs(runs)}
    assert kinds == {("small", "big"): "rank", ("small", "big-again"): "rank", ("big", "big-again"): "other"}
    with pytest.warns(UserWarning, match=r"no base model recorded \(base_model_name_or_path\) and none given"):
        result = analyze(folders, progress=False, subjects=["A", "dW"], dw_side="left")
    assert result.phi["seed_a"].isna().all() and len(result.dw_vs_w) == 0
    dw = result.phi[(result.phi["subject"] == "dW") & (result.phi["module"] == "ffn_in")]
    np.testing.assert_allclose(dw["baseline"], np.maximum(dw["i"], dw["j"]) / 64)  # left: output space


def test_different_base_shapes_are_named(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "shapes"
    a = peft_adapter("bert", root / "h32", r=2)
    b = peft_adapter("bert", root / "h48", r=2, hidden=48)
    with pytest.raises(LoraAnalysisError, match=r"attention\.self\.query has base shape \(32, 32\) in .*h32 "
                                                 r"but \(48, 48\) in .*h48"):
        analyze([a, b], progress=False, w_tables=False)


def test_config_composes_to_the_defaults():
    cfg = OmegaConf.to_object(compose("analyze", ["inputs=[x]"]))
    assert cfg == AnalyzeConfig(inputs=["x"])
    with pytest.raises(LoraAnalysisError, match="dw_side"):
        OmegaConf.to_object(compose("analyze", ["dw_side=up"]))


def test_cli_bad_folder_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["analyze", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lora-analysis analyze: error: ") and "empty" in err


def test_cli_writes_parquet(sweep, result, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["analyze", str(sweep), f"out={out}", "progress=false"]) == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out and "note: skipped" in captured.err
    for name in COLUMNS:
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), getattr(result, name), obj=name)
    assert analyze_main(["--help"]) == 0 and "intruder_threshold" in capsys.readouterr().out


def test_embedded_minilm_base_end_to_end(tmp_path):
    """A run on the real embedded model (``embedded:minilm``): W found by suffix, Table 7 on real weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    from lora_analysis.embedded import minilm_dir

    model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                  init_lora_weights="gaussian"))
    _fake_train(peft_model)
    run = tmp_path / "sweep" / "r4-seed0"
    peft_model.save_pretrained(run)
    config = {"run_name": "r4-seed0", "seed": 0, "method": "lora", "model": {"name_or_path": "embedded:minilm"},
              "lora": {"r": 4, "alpha": 8.0, "targets": "q+v"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "DONE").write_text("{}")
    result = analyze(tmp_path / "sweep", progress=False, subjects=["A", "dW"], w_directions=16)
    assert len(result.modules) == 12 and set(result.modules["in_features"]) == {384}
    W = load_file(minilm_dir() / "model.safetensors")["encoder.layer.3.attention.self.value.weight"].astype(np.float64)
    t7 = result.dw_vs_w.set_index(["layer", "module", "source"]).loc[(3, "v", "W")]
    s = np.linalg.svd(W, compute_uv=False)
    assert t7["projection_norm"] == pytest.approx(np.sqrt(np.sum(s[:4] ** 2)), rel=1e-9)
    assert t7["w_norm"] == pytest.approx(np.linalg.norm(W), rel=1e-12)
    assert result.w_dw_phi["i"].max() == 16 and len(result.intruders) == 12 * 10


def _fake_train(peft_model) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def test_workers_default_to_the_cores_fewer_when_the_w_tables_would_not_fit(tmp_path, monkeypatch):
    """``workers=None``: one per usable core; with W tables, at most what half the available memory holds
    at ``SVD_MEMORY`` times the largest W (float64) per worker, and never fewer than one."""
    from _tiny_models import save_base

    import lora_analysis.machine as machine
    from lora_analysis.analysis import compare, execution

    adapter = peft_adapter("bert", tmp_path / "a", r=2)
    base = save_base("bert", tmp_path / "base")
    monkeypatch.setattr(machine, "usable_cores", lambda: 16)
    runs, _ = find_runs([adapter])
    largest = max(m.out_features * m.in_features for m in runs[0].adapter)
    per_worker = execution.SVD_MEMORY * 8 * largest
    without_w = AnalyzeConfig(inputs=[str(adapter)], w_tables=False)
    with_w = AnalyzeConfig(inputs=[str(adapter)], base=str(base))
    bases = compare._bases(runs, with_w, [])
    monkeypatch.setattr(machine, "available_memory", lambda: 2 * 5 * per_worker)
    assert execution.auto_workers(runs, [None], without_w) == 16
    assert execution.auto_workers(runs, bases, with_w) == 5
    monkeypatch.setattr(machine, "available_memory", lambda: per_worker)
    assert execution.auto_workers(runs, bases, with_w) == 1
    monkeypatch.setattr(machine, "available_memory", lambda: None)  # unknown: the cores
    assert execution.auto_workers(runs, bases, with_w) == 16
    result = analyze([adapter], w_tables=False, progress=False, input_stats=False)
    assert result.config["workers"] == 16  # the count used is what analysis.json records
