"""Which base W an adapter is analysed against (issue 12, item 3): ``base=`` wins over the recorded base,
a base of other shapes is refused naming the module and both shapes, W is transposed only where the
format says so."""

from __future__ import annotations

import json
import shutil

import pytest
from _tiny_models import peft_adapter, save_base
from safetensors.torch import load_file, save_file

from lora_analysis import cli
from lora_analysis.analysis.compare import analyze


@pytest.fixture
def adapter_and_bases(tmp_path):
    recorded = save_base("bert", tmp_path / "recorded")
    doubled = shutil.copytree(recorded, tmp_path / "doubled")  # same shapes, every weight times 2
    for file in doubled.glob("*.safetensors"):
        save_file({k: 2 * v for k, v in load_file(file).items()}, file, metadata={"format": "pt"})
    adapter = peft_adapter("bert", tmp_path / "adapter", r=2)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(recorded)}))
    return adapter, recorded, doubled


def _w_norms(result):
    table = result.dw_vs_w
    return table[table["source"] == "W"].groupby("module")["w_norm"].first()


def test_an_explicit_base_wins_over_the_recorded_one(adapter_and_bases):
    adapter, recorded, doubled = adapter_and_bases
    own = _w_norms(analyze([adapter], progress=False, input_stats=False))
    given = _w_norms(analyze([adapter], progress=False, input_stats=False, base=str(doubled)))
    assert len(own) > 0
    assert ((given / own - 2).abs() < 1e-9).all()  # the doubled weights were used, not the recorded ones


def test_a_base_of_other_shapes_is_refused_naming_module_and_shapes(adapter_and_bases, tmp_path, capsys):
    adapter, _, _ = adapter_and_bases
    wide = save_base("bert", tmp_path / "wide", hidden=64)
    assert cli.main(["analyze", str(adapter), f"base={wide}", f"out={tmp_path / 'out'}", "progress=false",
                     "input_stats=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has shape (64, 64)" in err[0] and "expects (32, 32)" in err[0], err
    assert "attention.self.query" in err[0] or "attention.self.value" in err[0]


def test_a_folder_without_weights_as_base_is_one_line(adapter_and_bases, tmp_path, capsys):
    adapter, _, _ = adapter_and_bases
    (tmp_path / "empty").mkdir()
    assert cli.main(["analyze", str(adapter), f"base={tmp_path / 'empty'}", f"out={tmp_path / 'out'}",
                     "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no model weights" in err[0], err


def test_an_adapter_with_in_and_out_swapped_is_refused_not_transposed(adapter_and_bases, tmp_path, capsys):
    adapter, _, _ = adapter_and_bases
    for file in (adapter / "adapter_model.safetensors", adapter / "adapter_init.safetensors"):
        tensors = load_file(file)
        for key in [k for k in tensors if "intermediate.dense.lora_A" in k]:  # A (r, 32) -> (r, 64), B -> (32, r)
            b_key = key.replace("lora_A", "lora_B")
            a, b = tensors[key], tensors[b_key]
            tensors[key], tensors[b_key] = b.T.contiguous(), a.T.contiguous()
        save_file(tensors, file, metadata={"format": "pt"})
    assert cli.main(["analyze", str(adapter), f"out={tmp_path / 'out'}", "progress=false", "input_stats=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "intermediate.dense" in err[0] and "has shape (64, 32)" in err[0], err
    assert "expects (32, 64)" in err[0]
