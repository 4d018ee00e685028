"""Hub ids through the Hugging Face cache, with the network forbidden: train, analyse and report.

The cache is the standard layout ``models--org--name/snapshots/<commit>/...`` with ``refs/main``,
built in ``tmp_path`` from the tiny test models; ``HF_HUB_CACHE`` points there, ``HF_HUB_OFFLINE=1``,
and any socket connection fails the test.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
from _tiny_models import peft_adapter
from tiny import build_tiny_model, tiny_overrides, write_tiny_csv

from lora_analysis import hub
from lora_analysis.cli import main as cli_main
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.train.provenance import data_hash, device_name

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo: str, source: Path, commit: str = COMMIT) -> Path:
    """Copy ``source`` into the cache as the snapshot of ``repo`` at ``commit``, with ``refs/main``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache


def test_hub_ids_parse():
    assert hub.split_hub_id("org/name") == ("org/name", None)
    assert hub.split_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert hub.split_hub_id("not an id") is None and hub.split_hub_id("a/b/c") is None
    assert hub.split_hub_id("gpt2") is None  # an adapter is always org/name
    assert hub.split_hub_id("gpt2", bare=True) == ("gpt2", None)
    assert hub.split_hub_id("bert-base-uncased@main", bare=True) == ("bert-base-uncased", "main")
    assert hub.split_hub_id("a b", bare=True) is None and hub.split_hub_id("-x", bare=True) is None


def test_a_model_may_go_by_a_bare_hub_id_an_adapter_may_not(offline_cache, tmp_path):
    """The hub's older canonical ids (``gpt2``, ``bert-base-uncased``) name models, as a base to train
    or to analyse against; a bare word given as an adapter is a folder that is not there."""
    from _tiny_models import save_base

    from lora_analysis.analysis.base_weights import chosen_base

    snapshot = cache_repo(offline_cache, "tiny-bert", save_base("bert", tmp_path / "base"))
    assert hub.resolve("tiny-bert") == snapshot
    assert chosen_base("tiny-bert", None) == snapshot  # recorded by an adapter: the cache only
    with pytest.raises(LoraAnalysisError, match=r"model 'no-such-model': no such folder, and not in the Hugging"):
        hub.resolve("no-such-model")
    with pytest.raises(LoraAnalysisError, match=r"adapter 'tiny-bert' is neither a folder nor a hub id \(org/"):
        hub.resolve("tiny-bert", what="adapter")


def test_train_analyse_and_report_from_hub_ids_offline(offline_cache, tmp_path, capsys):
    model = build_tiny_model("bert", tmp_path / "bert")
    cache_repo(offline_cache, "tiny-org/tiny-bert", model)
    csv = write_tiny_csv(tmp_path / "reviews.csv")
    base = tiny_overrides(model, csv, tmp_path / "runs", steps=2)
    base = [o for o in base if not o.startswith("model.name_or_path=")] + ["model.name_or_path=tiny-org/tiny-bert"]
    for r in (2, 4):
        assert cli_main(["train", *base, f"lora.r={r}", "name=hub"]) == 0
    sweep = tmp_path / "runs" / "hub"
    assert cli_main(["analyze", str(sweep)]) == 0
    assert cli_main(["report", str(sweep)]) == 0
    assert (sweep / "report" / "report.html").is_file()
    markdown = (sweep / "report" / "report.md").read_text()  # the settings table shows where the runs ran
    for shown in (f"| torch | {torch.__version__} |", f"| CPU / GPU | {device_name('cpu')} |",
                  f"| data sha256 (first 12) | {data_hash(str(csv))[:12]} |"):
        assert shown in markdown, shown


def test_adapter_and_base_given_as_hub_ids(offline_cache, tmp_path):
    from _tiny_models import save_base

    adapter = peft_adapter("bert", tmp_path / "adapter")
    cache_repo(offline_cache, "someone/tiny-lora", adapter)
    cache_repo(offline_cache, "someone/tiny-base", save_base("bert", tmp_path / "base"))
    out = tmp_path / "analysis"
    code = cli_main(["analyze", "inputs=[someone/tiny-lora@main]", "base=someone/tiny-base", f"out={out}"])
    assert code == 0 and (out / "modules.parquet").is_file()


def test_a_missing_hub_id_is_one_line_naming_the_id_and_the_cache(offline_cache, capsys):
    missing = r"'nobody/nothing': no such folder, and not in the Hugging Face cache .*hf-cache"
    with pytest.raises(LoraAnalysisError, match=missing):
        hub.resolve("nobody/nothing")
    assert cli_main(["analyze", "inputs=[nobody/nothing]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nobody/nothing" in err[0] and "hf-cache" in err[0]


@pytest.mark.parametrize("env", [
    {}, {"HF_HOME": "~/hf-home"}, {"XDG_CACHE_HOME": "/x/cache"}, {"HUGGINGFACE_HUB_CACHE": "/legacy"},
    {"HF_HUB_CACHE": "$HOME/hub-cache", "HUGGINGFACE_HUB_CACHE": "/legacy"}, {"HF_HOME": "/h", "XDG_CACHE_HOME": "/x"},
])  # fmt: skip
def test_env_cache_dir_follows_huggingface_hub_rules(env, monkeypatch):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME",
                                                                  "XDG_CACHE_HOME")}
    code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    expected = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                              check=True).stdout.strip()
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hub.env_cache_dir() == Path(expected)


def test_a_recorded_base_is_looked_up_in_the_cache_only(offline_cache, tmp_path, monkeypatch):
    """A hub id a run records as its base is never fetched, even online; an id with no cache folder is
    answered without importing huggingface_hub, one cached is found."""
    from _tiny_models import save_base

    from lora_analysis.analysis.base_weights import chosen_base

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: pytest.fail("not in the cache"))
    assert chosen_base("meta-llama/Meta-Llama-3-8B", None) is None
    snapshot = cache_repo(offline_cache, "someone/tiny-base", save_base("bert", tmp_path / "base"))
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_CACHE", str(offline_cache))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("network access attempted"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(offline_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert chosen_base("someone/tiny-base", None) == snapshot
