"""The analysis folder is one unit (issue 12, item 4): old or new, never a mix; damage is one line."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from lora_analysis import cli
from lora_analysis.analysis import tables as tables_module
from lora_analysis.analysis.sweep import stale_reason
from lora_analysis.analysis.tables import SCHEMAS, AnalysisResult
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import AnalysisDir, SweepDir


def test_the_analysis_file_names_are_the_saved_tables():
    assert set(AnalysisDir.TABLES) == set(SCHEMAS)


def copy_sweep(sweep, tmp_path):
    return shutil.copytree(sweep, tmp_path / "sweep")


def same(a: AnalysisResult, b: AnalysisResult) -> bool:
    return all(a.tables()[n].equals(b.tables()[n]) for n in SCHEMAS) and a.notes == b.notes


def test_a_save_that_fails_midway_leaves_the_old_analysis_whole(sweep, tmp_path, monkeypatch):
    folder = copy_sweep(sweep, tmp_path) / "analysis"
    old = AnalysisResult.load(folder)
    new = AnalysisResult(**{n: f.iloc[:1] for n, f in old.tables().items()}, notes=["new"], config={})
    written = []
    real = tables_module._to_parquet

    def dies_on_the_third(frame, path, name):  # kill -9 in the middle of the analysis' writes
        written.append(name)
        if len(written) == 3:
            raise KeyboardInterrupt
        real(frame, path, name=name)

    monkeypatch.setattr(tables_module, "_to_parquet", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        new.save(folder)
    assert same(AnalysisResult.load(folder), old)
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".analysis")) == []
    monkeypatch.setattr(tables_module, "_to_parquet", real)
    new.save(folder)
    assert same(AnalysisResult.load(folder), new)
    (folder / "extra.bin").write_bytes(b"not written by lora-analysis")  # a file of someone else's: refused whole
    with pytest.raises(LoraAnalysisError, match=r"holds files lora-analysis did not write \(extra.bin\)"):
        old.save(folder)
    assert same(AnalysisResult.load(folder), new) and (folder / "extra.bin").read_bytes().startswith(b"not")


def test_a_folder_of_other_files_is_never_replaced(sweep, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    result = AnalysisResult.load(sweep / "analysis")
    with pytest.raises(LoraAnalysisError, match="holds files lora-analysis did not write"):
        result.save(other)
    assert (other / "thesis.tex").read_text() == "keep me"


@pytest.mark.parametrize("name", ["phi.parquet", "runs.parquet", "analysis.json"])
def test_a_truncated_analysis_file_is_one_line_naming_it_and_the_rebuild(sweep, tmp_path, capsys, name):
    root = copy_sweep(sweep, tmp_path)
    path = root / "analysis" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(LoraAnalysisError) as caught:
        AnalysisResult.load(root / "analysis")
    text = str(caught.value)
    assert str(path) in text and "unreadable" in text and "lora-analysis analyze" in text and "\n" not in text
    if name == "runs.parquet":  # the runs table says what is analysed: a damaged one has the sweep analysed again
        assert stale_reason(root) == f"{path} is unreadable ({text.split('unreadable (', 1)[1].split(');')[0]})"
        return
    assert cli.main(["recommend", str(root)]) == 2
    assert capsys.readouterr().err.strip() == f"lora-analysis recommend: error: {text}"


def test_a_truncated_sweep_table_is_one_line(sweep, tmp_path):
    root = SweepDir(copy_sweep(sweep, tmp_path))
    root.table_path.write_bytes(root.table_path.read_bytes()[:100])
    with pytest.raises(LoraAnalysisError, match=r"runs.parquet: unreadable .*re-launching"):
        root.read_table()
    assert isinstance(SweepDir(sweep).read_table(), pd.DataFrame)
    assert AnalysisDir(root.analysis.path).exists()
