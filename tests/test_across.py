"""``lora-analysis across``: two sweeps side by side, each judged as its own report judges it."""

from __future__ import annotations

import pandas as pd
import pytest
from fabricate import DELTA_TOP, SEED_SHARED, fabricate_sweep

from lora_analysis.cli import main as cli_main
from lora_analysis.show.across import MARK, across_table, differing
from lora_analysis.show.report import study


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("across")
    return (fabricate_sweep(root / "minilm-rt", layers=(0, 1), modules=("q", "v")),
            fabricate_sweep(root / "minilm-tweets", ("r8-seed0", "r64-seed0"), layers=(0, 1), modules=("q", "v"),
                            seed=1))


def test_a_column_per_sweep_with_the_numbers_its_report_states(sweeps):
    table = across_table(list(sweeps))
    assert list(table.columns) == ["quantity", "minilm-rt", "minilm-tweets"]
    delta = table[table["quantity"].str.startswith("A - A_init: ")]
    assert len(delta) == 1
    for name, sweep in zip(("minilm-rt", "minilm-tweets"), sweeps, strict=True):
        found = study(sweep).found.top_direction.values
        assert f"{found['A_delta']:.2f} vs " in delta[name].iloc[0]  # the same number as the sweep's own report
        assert abs(found["A_delta"] - DELTA_TOP) < 0.05  # the planted energy
    qv = table.set_index("quantity").loc["q vs v: directions of A - A_init two seeds share, per layer"]
    assert qv["minilm-rt"] == f"q {SEED_SHARED['q']:.2f}, v {SEED_SHARED['v']:.2f} (r=64)"
    assert qv["minilm-tweets"] == "not measured (no seed pair)"


def test_verdicts_that_differ_are_named():
    table = pd.DataFrame({"quantity": ["B: top direction", "A: top direction"],
                          "one": ["0.4 vs x: **weak**", "0.2: **not above control**"],
                          "two": ["0.5 vs y: **beyond control**", "0.1: **not above control**"]})
    assert differing(table) == ["B: weak on one, beyond control on two."]


def test_cli_writes_the_table_and_never_replaces_a_file_it_did_not_write(sweeps, tmp_path, capsys):
    out = tmp_path / "across.md"
    assert cli_main(["across", *map(str, sweeps), f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "| quantity | minilm-rt | minilm-tweets |" in printed
    assert out.read_text().startswith(MARK) and out.with_suffix(".csv").is_file()
    assert cli_main(["across", *map(str, sweeps), f"out={out}"]) == 0  # its own file: replaced
    mine = tmp_path / "mine.md"
    mine.write_text("my notes")
    assert cli_main(["across", *map(str, sweeps), f"out={mine}"]) == 2
    assert "not written by lora-analysis across" in capsys.readouterr().err
    assert mine.read_text() == "my notes"


def test_one_sweep_or_a_folder_that_is_not_one_is_one_line(sweeps, tmp_path, capsys):
    assert cli_main(["across", str(sweeps[0])]) == 2
    assert "name two or more sweeps" in capsys.readouterr().err
    assert cli_main(["across", str(sweeps[0]), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a sweep" in err and len(err.strip().splitlines()) == 1
