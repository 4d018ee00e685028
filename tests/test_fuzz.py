"""Fuzzing the adapter loader through the CLI (issue 12): mutated adapter_config.json values and key sets,
truncated and bit-flipped safetensors, hostile regex keys. Every case ends in success or in one
``lora-analysis analyze: error: ...`` line with exit 2, within a time bound: never a traceback, a hang,
or a partial output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _tiny_models import peft_adapter
from bounds import hang_bound

from lora_analysis import cli
from lora_analysis.layout import ADAPTER_WEIGHTS, AnalysisDir

CASES = 240
VALUES = [None, -1, 0, 1, 2.5, float("nan"), 1e308, "x", "", "eight", True, [], ["query"], {}, {"query": 2},
          {"([a-z.0-9]*)*X": 4}, {"(unclosed": 2}, {"query": "two"}, "([a-z.0-9_]*)*X", 10**30]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return peft_adapter("bert", tmp_path_factory.mktemp("fuzz") / "adapter", r=2)


def _mutate(folder, rng: np.random.Generator) -> str:
    kind = rng.integers(4)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if kind == 0:  # a value replaced
        key = str(rng.choice(sorted(config)))
        config[key] = VALUES[rng.integers(len(VALUES))]
        config_path.write_text(json.dumps(config))
        return f"config[{key}]={config[key]!r}"
    if kind == 1:  # a key removed, or a foreign one added
        if rng.random() < 0.5:
            key = str(rng.choice(sorted(config)))
            del config[key]
        else:
            key = "rank_pattern" if rng.random() < 0.5 else "alpha_pattern"
            config[key] = VALUES[rng.integers(len(VALUES))]
        config_path.write_text(json.dumps(config))
        return f"config keys changed at {key}"
    weights = folder / (ADAPTER_WEIGHTS if rng.random() < 0.7 else "adapter_init.safetensors")
    data = bytearray(weights.read_bytes())
    if kind == 2:  # truncated
        cut = int(rng.integers(0, len(data)))
        weights.write_bytes(bytes(data[:cut]))
        return f"{weights.name} truncated to {cut} bytes"
    header = int.from_bytes(data[:8], "little") + 8 if len(data) >= 8 else len(data)
    where = int(rng.integers(0, header if rng.random() < 0.6 else len(data)))  # header or body
    data[where] ^= 1 << int(rng.integers(8))
    weights.write_bytes(bytes(data))
    return f"{weights.name} bit flipped at byte {where}"


def test_fuzzed_adapters_end_in_success_or_one_line(pristine, tmp_path, capsys):
    rng = np.random.default_rng(12)
    outcomes = {0: 0, 2: 0}
    for case in range(CASES):
        folder = shutil.copytree(pristine, tmp_path / f"a{case}")
        what = _mutate(folder, rng)
        out = tmp_path / f"out{case}"
        with hang_bound(30):
            code = cli.main(["analyze", str(folder), f"out={out}", "progress=false", "input_stats=false"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "note:" not in line
               and "warn" not in line.lower()]
        assert code in outcomes, (what, code)
        outcomes[code] += 1
        if code == 2:
            assert len(err) == 1 and err[0].startswith("lora-analysis analyze: error: "), (what, err)
            assert not out.exists(), (what, "a refused analysis left output")
        else:
            assert AnalysisDir(out).exists(), what
        shutil.rmtree(folder)
    print(f"fuzzed {CASES} adapters: {outcomes[0]} analysed, {outcomes[2]} refused in one line")
    assert outcomes[2] > CASES // 4  # most mutations are damage that must be refused
