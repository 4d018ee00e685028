"""Data that silently means something else (issue 12, item 6): continuous-looking labels refused, an
all-empty label column named as such, dropped rows counted in a warning and in metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tiny import build_tiny_model, tiny_overrides, write_tiny_csv

from lora_analysis import cli
from lora_analysis.texts import read_text_table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return build_tiny_model("bert", root / "bert"), pd.read_csv(write_tiny_csv(root / "reviews.csv"))


def _csv(frame: pd.DataFrame, path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def test_float_labels_with_many_values_are_refused_unless_asked_for(tiny, tmp_path, capsys):
    model, frame = tiny
    scores = frame.assign(sentiment=np.random.default_rng(0).uniform(0, 5, len(frame)).round(2))
    path = _csv(scores, tmp_path / "scores.csv")
    assert cli.main(["train", *tiny_overrides(model, path, tmp_path / "runs", 2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label column 'sentiment' looks continuous (numbers with a fractional part)" in err[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))
    table = read_text_table(path, "review", "sentiment", many_labels=True)
    assert len(table.names) == scores["sentiment"].nunique()
    many = frame.assign(sentiment=np.arange(len(frame)) % 120)  # integers, but 120 classes in 240 rows
    with pytest.raises(Exception, match="120 distinct values in 240 rows"):
        read_text_table(_csv(many, tmp_path / "many.csv"), "review", "sentiment")
    assert len(read_text_table(_csv(frame, tmp_path / "two.csv"), "review", "sentiment").names) == 2


def test_an_all_empty_label_column_says_so(tiny, tmp_path, capsys):
    model, frame = tiny
    path = _csv(frame.assign(sentiment=""), tmp_path / "nolabels.csv")
    assert cli.main(["train", *tiny_overrides(model, path, tmp_path / "runs", 2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"label column 'sentiment' is empty in all {len(frame)} rows" in err[0], err


def test_dropped_rows_are_counted_in_a_warning_and_in_metrics(tiny, tmp_path):
    model, frame = tiny
    frame = frame.copy().astype({"sentiment": object})
    frame.loc[:2, "sentiment"] = ""  # three empty labels
    frame = pd.concat([frame, frame.iloc[10:12]])  # two repeated texts
    path = _csv(frame, tmp_path / "messy.csv")
    with pytest.warns(UserWarning, match=r"5 of 242 rows dropped \(3 with an empty text or label, 2 repeated texts\)"):
        assert cli.main(["train", *tiny_overrides(model, path, tmp_path / "runs", 2), "name=messy"]) == 0
    (metrics,) = (tmp_path / "runs" / "messy").glob("*/metrics.json")
    found = json.loads(metrics.read_text())
    assert (found["dropped_empty_rows"], found["dropped_repeated_texts"]) == (3, 2)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_integer_labels_stay_integers_when_a_row_has_none(tmp_path, suffix):
    """A missing label makes pandas read an integer column as floats; the names stay "0" and "1", not "0.0"."""
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(20)] + [{"text": "no label"}]
    path = tmp_path / f"data{suffix}"
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_json(path, orient="records", lines=True)
    with pytest.warns(UserWarning, match="1 of 21 rows dropped"):
        table = read_text_table(str(path), "text", "label")
    assert table.names == ["0", "1"] and table.labels.tolist() == [i % 2 for i in range(20)]
