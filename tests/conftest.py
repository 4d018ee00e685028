"""Fixtures shared by the plot and findings tests: one fabricated sweep with planted structure."""

from __future__ import annotations

import pytest
from fabricate import shared_sweep

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
