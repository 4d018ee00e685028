"""Where a run was computed: library versions, the machine, threads, and the data file's hash.

Written to the run folder's ``provenance.json`` when a run starts; a run resumed on a machine whose
versions or CPU differ says so in one line (its adapter then mixes two environments). The run's
precision is in ``metrics.json`` (``precision``, ``precision_reason``), beside its other numbers.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import torch

from lora_analysis.atomic import write_json
from lora_analysis.embedded import EMBEDDED_DATA, data_file
from lora_analysis.layout import RunDir
from lora_analysis.paths import user_path

PACKAGES = ("torch", "transformers", "peft", "lora-analysis")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_name(device: str) -> str:
    """The GPU's name on CUDA, else the CPU's model name (``/proc/cpuinfo`` on Linux)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def data_hash(path: str) -> str:
    """sha256 of the data file's bytes (the embedded file for ``embedded:rotten_tomatoes`` or ``embedded:tweets``)."""
    file = data_file(path) if path in EMBEDDED_DATA else user_path(path)
    if not file.is_file():
        return "missing"  # the data loader says so in its own words
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(device: str, threads: int, data_path: str) -> dict:
    return {"versions": versions(), "device": device, "device_name": device_name(device), "threads": threads,
            "python": platform.python_version(), "data_sha256": data_hash(data_path)}


def record(run_dir: Path, device: str, threads: int, data_path: str) -> str | None:
    """Write ``provenance.json`` for a starting run; for a resumed one, keep the first and return a note
    naming what differs now (None when nothing does)."""
    path = RunDir(run_dir).provenance_path
    now = provenance(device, threads, data_path)
    if not path.is_file():
        write_json(path, now)
        return None
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        write_json(path, now)
        return None
    keys = ("versions", "device_name", "data_sha256")
    changed = [f"{k}: {before.get(k)} then, {now[k]} now" for k in keys if before.get(k) != now[k]]
    return f"{run_dir.name} resumed in another environment ({'; '.join(changed)})" if changed else None


def columns(run_dir: Path) -> dict[str, str]:
    """The run's provenance as flat sweep-table columns (``provenance.torch``, ..., ``provenance.data_sha256``
    shortened to 12 hex digits); none for a run without a readable ``provenance.json`` (older runs)."""
    try:
        found = json.loads(RunDir(run_dir).provenance_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    out = {f"provenance.{name}": str(v) for name, v in (found.get("versions") or {}).items()}
    for key in ("device_name", "python"):
        if key in found:
            out[f"provenance.{key}"] = str(found[key])
    if "data_sha256" in found:
        out["provenance.data_sha256"] = str(found["data_sha256"])[:12]
    return out
