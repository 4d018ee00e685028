"""Frozen base weights ``W: (out_features, in_features)``, read tensor by tensor without building the model.

A model directory holds ``model.safetensors``, or shards listed in ``model.safetensors.index.json``.
Adapter module paths are matched to tensor keys by suffix: an adapter trained on
``BertForSequenceClassification`` names ``bert.encoder.layer.0.attention.self.query`` while MiniLM's
``BertModel`` file has ``encoder.layer.0.attention.self.query.weight``, so leading path components are
dropped until ``<suffix>.weight`` exists. GPT-2's ``Conv1D`` stores ``(in, out)``; it is transposed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from lora_analysis import hub
from lora_analysis.embedded import embedded_model_dir, minilm_dir
from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.paths import user_path
from lora_analysis.targets import FAMILIES

INDEX_FILE = "model.safetensors.index.json"


def resolve_base(name_or_path: str | None, fetch: bool = True) -> Path | None:
    """A local model directory for ``name_or_path``: an embedded model, a folder, or a hub id in the
    Hugging Face cache (``hub.resolve``; fetched when online only with ``fetch``). None when none of these
    is found."""
    if not name_or_path:
        return None
    if name_or_path.startswith("embedded:"):
        return embedded_model_dir(name_or_path)
    path = user_path(name_or_path)
    if path.is_dir():
        return path
    if not hub.is_hub_id(name_or_path, bare=True):
        return None
    try:
        return hub.resolve(name_or_path, what="base model", fetch=fetch)
    except LoraAnalysisError:  # not cached (and not to be fetched): no base here
        return None


def check_model_dir(name_or_path: str) -> Path:
    """The model directory named by ``base=``, or one line saying why it is not one."""
    path = resolve_base(name_or_path)
    if path is None:
        raise LoraAnalysisError(f"base={name_or_path}: no such model directory (or hub id in the local cache)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise LoraAnalysisError(f"base={name_or_path}: {path} holds no model weights (*.safetensors)")
    if (path / "config.json").is_file():  # damaged settings or index: said now, not after the adapters are read
        read_config(path / "config.json")
    if (path / INDEX_FILE).is_file():
        read_index(path / INDEX_FILE)
    return path


def chosen_base(recorded: str | None, given: str | None) -> Path | None:
    """The base a run is analysed against: an explicit ``base=`` wins over the one the run records.

    A recorded hub id is looked up in the local cache only: an analysis never downloads a base model
    nobody named (a Llama adapter's base is 16 GB); ``base=`` named by the user may be fetched."""
    return resolve_base(given) if given else resolve_base(recorded, fetch=False)


def no_base(recorded: str | None) -> str:
    """Why a run has no base to analyse against, for its notes: none recorded, or the recorded one not found."""
    if recorded is None:
        return "no base model recorded (base_model_name_or_path) and none given"
    return f"base model {recorded!r} not found"


def read_config(path: Path) -> dict:
    """A model folder's ``config.json`` as a mapping, or one line saying what is wrong with it."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoraAnalysisError(f"{path}: not a readable JSON file ({first_line(error)})") from error
    if not isinstance(config, dict):
        raise LoraAnalysisError(f"{path}: expected a JSON object of model settings, got a {type(config).__name__}")
    return config


def read_index(index: Path) -> dict[str, Path]:
    """The tensor key -> shard file map of ``model.safetensors.index.json``, every shard checked.

    A shard must be a file inside the model folder: a name that leads out of it (``../../etc/passwd``, an
    absolute path, a symbolic link to elsewhere) is refused, and so is a missing shard.
    """
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise LoraAnalysisError(f"{index}: not a safetensors index ({first_line(error)})") from error
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LoraAnalysisError(f"{index}: weight_map is not a mapping of tensor names to shard file names")
    folder = index.parent.resolve()
    shards = {}
    for name in set(weight_map.values()):
        shard = (folder / name).resolve()
        if Path(name).is_absolute() or not shard.is_relative_to(folder):
            raise LoraAnalysisError(f"{index}: shard {name!r} lies outside the model folder {folder}; refused")
        if not shard.is_file():
            raise LoraAnalysisError(f"{index}: shard {name!r} is missing from {folder}")
        shards[name] = shard
    return {key: shards[name] for key, name in weight_map.items()}


class BaseWeights:
    """The weight tensors of one model directory (default: the embedded MiniLM)."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.dir = Path(model_dir) if model_dir is not None else minilm_dir()
        self.files = self._index()
        self.fan_in_fan_out = self._model_type() in {
            t for family in FAMILIES if family.fan_in_fan_out for t in family.model_types
        }

    def _index(self) -> dict[str, Path]:
        index = self.dir / INDEX_FILE
        if index.is_file():
            return read_index(index)
        shards = sorted(self.dir.glob("*.safetensors"))
        if not shards:
            raise LoraAnalysisError(f"{self.dir}: no model.safetensors or {INDEX_FILE} (only safetensors are read)")
        files = {}
        for shard in shards:
            try:
                with safe_open(shard, framework="np") as f:  # the keys only: no torch needed
                    files.update({key: shard for key in f.keys()})
            except Exception as error:  # safetensors raises its own error types
                raise LoraAnalysisError(f"{shard}: not a readable safetensors file ({error})") from error
        return files

    def _model_type(self) -> str | None:
        config = self.dir / "config.json"
        return read_config(config).get("model_type") if config.is_file() else None

    def key_for(self, module_path: str) -> str | None:
        """The tensor key of module ``module_path``'s weight, matched by suffix; None if absent."""
        parts = module_path.split(".")
        for start in range(len(parts)):
            key = ".".join(parts[start:]) + ".weight"
            if key in self.files:
                return key
        return None

    def weight(self, module_path: str, out_features: int, in_features: int, fan_in_fan_out: bool = False) -> np.ndarray:
        """``W: (out_features, in_features)`` float64 of module ``module_path``.

        A stored ``(in, out)`` tensor is transposed only where the format says so: ``fan_in_fan_out``
        set by the adapter, or a GPT-2-style base (Conv1D). Any other shape than the adapter's is refused,
        naming the module and both shapes (an adapter with in and out swapped, or another base).
        """
        import torch  # bfloat16 weights need it; only the W tables read W

        key = self.key_for(module_path)
        if key is None:
            raise LoraAnalysisError(f"{self.dir}: no weight for module {module_path}")
        file = self.files[key]
        try:
            with safe_open(file, framework="pt") as f:
                tensor = f.get_tensor(key)
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types, and OSError
            raise LoraAnalysisError(f"{file}: cannot read tensor {key} ({first_line(error)})") from error
        shape, want = tuple(tensor.shape), (out_features, in_features)
        transpose = fan_in_fan_out or self.fan_in_fan_out
        if transpose and shape == want[::-1]:
            tensor = tensor.T
        elif shape != want:
            raise LoraAnalysisError(
                f"{file}: tensor {key} has shape {shape}, but the adapter's module {module_path} "
                f"expects ({out_features}, {in_features})"
            )
        if not torch.isfinite(tensor).all():
            raise LoraAnalysisError(f"{file}: tensor {key} has NaN/Inf values")
        return np.ascontiguousarray(tensor.to(torch.float64).numpy())
