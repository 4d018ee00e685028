"""Shared fixtures: one fabricated sweep with planted structure (plots, findings), and a tiny BERT with its
tiny sentiment data (training and command-line tests; a module may define its own ``tiny``)."""

from __future__ import annotations

import pytest
from fabricate import shared_sweep
from tiny import build_tiny_model, write_tiny_csv

from lora_analysis.analysis.tables import AnalysisResult
from lora_analysis.cli.schemas import register_schemas


@pytest.fixture(scope="session", autouse=True)
def schemas():
    """Every command's schema known to Hydra, as ``lora-analysis`` makes them before any command."""
    register_schemas()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return shared_sweep(tmp_path_factory, layers=(0, 1), modules=("q", "v", "ffn_out"))


@pytest.fixture(scope="module")
def tables(sweep):
    return AnalysisResult.load(sweep / "analysis")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT model folder and a tiny sentiment CSV: ``(model_dir, csv)``."""
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model("bert", root / "bert"), write_tiny_csv(root / "reviews.csv")
