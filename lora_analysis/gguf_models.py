"""A GGUF model file converted once into a cached transformers folder, read from then on like any other.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package) by
dequantising every tensor to float32, which takes about 20 s for SmolLM2-135M. Training, the W tables and
the input statistics each load the base model, so the conversion is done once: the model (safetensors,
float32: the dequantised 4-bit weights, exactly what a QLoRA run trains on) and its tokenizer are saved
into ``<cache>/<gguf name>/`` with ``converted.json`` naming the source file (size, sha256) and every
file written (size, sha256). The folder is written beside its final name and renamed into place in one
step, so a crash leaves no half-written cache under that name; a folder whose manifest is missing, or
whose files or source no longer match it, is rebuilt, never read. The cache is ``$LORA_ANALYSIS_CACHE``,
else ``$XDG_CACHE_HOME/lora-analysis`` (``~/.cache/lora-analysis``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from lora_analysis.atomic import locked, replaced_folder, write_json
from lora_analysis.errors import LoraAnalysisError, first_line

MANIFEST = "converted.json"
MAGIC = b"GGUF"
# What a conversion writes (transformers' save_pretrained of a Llama model and its tokenizer); anything
# else in a cache folder is not ours and is never removed.
_WRITTEN = {MANIFEST, "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
_verified: dict[tuple[str, int], bool] = {}  # (folder, manifest mtime) -> checked in this process


def cache_root() -> Path:
    own = os.environ.get("LORA_ANALYSIS_CACHE")
    if own:
        return Path(os.path.expanduser(own))
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lora-analysis"


def owns(entry: Path) -> bool:
    shard = entry.name.startswith("model-") and entry.suffix == ".safetensors"
    return entry.is_file() and not entry.is_symlink() and (entry.name in _WRITTEN or shard)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> None:
    """One line naming ``path`` unless it is a complete GGUF file (its header, metadata and every tensor's
    bytes inside the file): a truncated download or another format is refused before transformers sees it."""
    if not path.is_file():
        raise LoraAnalysisError(f"GGUF file not found: {path}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != MAGIC:
        raise LoraAnalysisError(f"{path}: not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise LoraAnalysisError(f"{path}: reading a GGUF file needs the package 'gguf': pip install gguf "
                                "(or: make venv)") from None
    try:
        reader = GGUFReader(path)
        size = path.stat().st_size
        for tensor in reader.tensors:
            if tensor.data_offset + tensor.n_bytes > size:
                raise ValueError(f"tensor {tensor.name} ends past the end of the file")
    except Exception as error:  # noqa: BLE001 - a damaged header raises anything from struct to numpy
        raise LoraAnalysisError(f"{path}: a damaged or truncated GGUF file ({first_line(error)})") from None
    if not reader.tensors:
        raise LoraAnalysisError(f"{path}: a GGUF file without tensors")


def converted_dir(gguf_path: Path, cache: Path | None = None) -> Path:
    """The cached transformers folder of ``gguf_path``, converted now if missing, half written or stale."""
    gguf_path = Path(gguf_path)
    folder = (cache or cache_root()) / gguf_path.stem
    if _valid(folder, gguf_path):
        return folder
    check_gguf(gguf_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with locked(folder.parent / f".{folder.name}.lock"):  # two runs starting together convert once
        if _valid(folder, gguf_path):
            return folder
        print(f"converting {gguf_path.name} once into {folder} (dequantised to float32; about 30 s)",
              file=sys.stderr, flush=True)
        with replaced_folder(folder, "model cache", owns) as tmp:
            _convert(gguf_path, tmp)
        # its files were hashed into the manifest as they were written: not hashed again in this process
        _verified[(str(folder.resolve()), (folder / MANIFEST).stat().st_mtime_ns)] = True
    return folder


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - an architecture or tokenizer transformers cannot read
        raise LoraAnalysisError(f"{gguf_path}: transformers cannot convert this GGUF file "
                                f"({first_line(error)})") from None
    # Dequantised on load, the model is plain float32; the quantisation record would make transformers
    # refuse to save it (and claim a quantisation that is no longer there).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_path.stem
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(out.iterdir()) if p.is_file()}
    unknown = [name for name in files if not owns(out / name)]
    if unknown:  # a transformers version that writes other files: they must be known to be ours
        raise LoraAnalysisError(f"converting {gguf_path.name} wrote files lora-analysis does not know: {unknown}")
    source = {"name": gguf_path.name, "bytes": gguf_path.stat().st_size, "mtime_ns": gguf_path.stat().st_mtime_ns,
              "sha256": sha256(gguf_path)}
    write_json(out / MANIFEST, {"source": source, "files": files, "dtype": "float32",
                                "note": "dequantised from the GGUF file on conversion"})


def _valid(folder: Path, gguf_path: Path) -> bool:
    """Whether ``folder`` holds a complete conversion of ``gguf_path``: its manifest, every file it lists at
    its size and sha256 (checked once per process), and the source unchanged (size and time, else its hash)."""
    manifest = folder / MANIFEST
    try:
        stamp = manifest.stat().st_mtime_ns
        record = json.loads(manifest.read_text())
        source, files = record["source"], record["files"]
        stat = gguf_path.stat()
        if source["name"] != gguf_path.name or source["bytes"] != stat.st_size:
            return False
        if source["mtime_ns"] != stat.st_mtime_ns and source["sha256"] != sha256(gguf_path):
            return False
        key = (str(folder.resolve()), stamp)
        if key not in _verified:
            _verified[key] = bool(files) and "config.json" in files and all(
                (folder / name).is_file() and (folder / name).stat().st_size == entry["bytes"]
                and sha256(folder / name) == entry["sha256"] for name, entry in files.items())
        return _verified[key]
    except (OSError, ValueError, KeyError, TypeError):
        return False
