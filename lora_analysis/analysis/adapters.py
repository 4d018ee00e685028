"""PEFT LoRA adapter folders, read lazily: the module table at once, tensors one module at a time.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``adapter_model.bin``,
read only with ``torch.load(weights_only=True)``), and for this toolkit's runs also
``adapter_init.safetensors`` (the initial ``A`` and ``B`` under the same keys). Tensor keys are

    base_model.model.<module path>.lora_A[.<adapter name>].weight    (r, in_features)
    base_model.model.<module path>.lora_B[.<adapter name>].weight    (out_features, r)

for every architecture, GPT-2's ``Conv1D`` (``fan_in_fan_out``) included. Other keys
(``modules_to_save`` copies such as a classifier head) are ignored. Per-module ``r`` and ``alpha``
come from ``rank_pattern`` / ``alpha_pattern`` matched as PEFT matches them.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from lora_analysis.analysis.delta import lora_scale
from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.layout import ADAPTER_BIN, ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunDir
from lora_analysis.targets import ROLES, parse_module_path, pattern_key

CONFIG_FILE = ADAPTER_CONFIG
SAFETENSORS_FILE = ADAPTER_WEIGHTS
BIN_FILE = ADAPTER_BIN
INIT_FILE = RunDir.INIT
RUN_CONFIG = RunDir.CONFIG  # a run of this toolkit's train app: resolved config, then DONE last
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
# Elements per read: a tensor is read in pieces (unbuffered ``readinto`` one buffer of the file's dtype) and
# converted into its float64 array, so neither a second full-size copy nor the file's pages (a memory
# map's count as resident while it is open) add to the peak. 1.6x faster than ``np.fromfile`` pieces.
_READ_CHUNK = 1 << 22


class TensorFile:
    """A safetensors file, each tensor read from its own bytes, or a ``.bin`` state dict (weights only).

    ``shapes`` maps every key to its shape. safetensors validates the file when it is opened; reads then
    take only the bytes of the tensors asked for, in pieces converted into the float64 result (no
    full-size copy in the file's dtype, no mapped pages), much faster than ``safe_open(...).get_tensor``.
    NaN and Inf are looked for in each piece before it is upcast.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._state: dict | None = None
        try:
            if self.path.suffix == ".safetensors":
                with safe_open(self.path, framework="np") as f:  # "pt" would import torch (1.5-2 s)
                    self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                self._entries, self._data_start = _safetensors_header(self.path)
            else:
                self._state = _load_bin(self.path)
                self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}
        except LoraAnalysisError:
            raise
        except Exception as error:  # safetensors raises its own types for truncated/corrupt files
            raise LoraAnalysisError(f"{self.path}: not a readable tensor file ({first_line(error)})") from error

    def read(self, *keys: str) -> list[np.ndarray]:
        """The tensors ``keys`` as float64 arrays (bf16/fp16/fp32 upcast); NaN or Inf is an error."""
        return [self._read(key) for key in keys]

    def _read(self, key: str) -> np.ndarray:
        if self._state is not None:
            return self._checked(key, self._state[key].double().numpy())
        entry = self._entries.get(key)
        if entry is None or entry["dtype"] not in _NUMPY_DTYPES:
            raise LoraAnalysisError(f"{self.path}: no floating-point tensor {key}")
        dtype, shape = np.dtype(_NUMPY_DTYPES[entry["dtype"]]), tuple(entry["shape"])
        count = math.prod(shape)
        out = np.empty(count, np.float64)
        # Unbuffered: each piece goes from the file straight into the buffer, no bytes object between.
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self._data_start + entry["data_offsets"][0])  # safetensors checked the offsets
            if dtype == np.float64:
                self._fill(handle, key, out)
                return self._checked(key, out.reshape(shape))
            raw = np.empty(min(count, _READ_CHUNK), dtype)  # one buffer, reused: no fresh pages per piece
            bad = 0
            for first in range(0, count, _READ_CHUNK):
                piece = raw[: min(_READ_CHUNK, count - first)]
                self._fill(handle, key, piece)
                if dtype == np.uint16:  # bfloat16 is the top half of a float32
                    piece = (piece.astype(np.uint32) << 16).view(np.float32)
                elif dtype == np.float16:
                    piece = piece.astype(np.float32)
                bad += _nonfinite(piece)  # float32 holds every value exactly: checked before the upcast
                out[first : first + piece.size] = piece
        if bad:
            raise LoraAnalysisError(f"{self.path}: tensor {key} has {bad} NaN/Inf values")
        return out.reshape(shape)

    def _fill(self, handle, key: str, buffer: np.ndarray) -> None:
        """The next ``buffer.nbytes`` bytes of ``handle`` into ``buffer``."""
        view, done = memoryview(buffer).cast("B"), 0
        while done < view.nbytes:
            got = handle.readinto(view[done:])
            if not got:  # cut short since it was opened
                raise LoraAnalysisError(f"{self.path}: tensor {key} is truncated")
            done += got

    def _checked(self, key: str, values: np.ndarray) -> np.ndarray:
        bad = _nonfinite(values)
        if bad:
            raise LoraAnalysisError(f"{self.path}: tensor {key} has {bad} NaN/Inf values")
        return values


def _nonfinite(values: np.ndarray) -> int:
    """How many values are NaN or Inf. They survive the dot product of the values with themselves: one
    BLAS pass, 2.5x faster than a sum; squares of large finite values can overflow, so a non-finite
    product is confirmed by counting."""
    flat = values.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow here is no note for the user
        probe = np.dot(flat, flat) if values.dtype in (np.float32, np.float64) else flat.sum()
    return 0 if math.isfinite(float(probe)) else int(np.count_nonzero(~np.isfinite(values)))


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file (key -> dtype, shape, data_offsets) and where the data starts."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def _load_bin(path: Path) -> dict:
    import torch  # only .bin adapters need it

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise LoraAnalysisError(
            f"{path}: refusing to unpickle anything but tensors ({first_line(error)}); convert it to safetensors"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoraAnalysisError(f"{path}: expected a state dict of tensors")
    return state


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight matrix: where it is, its rank, scale and shape ``W: (out_features, in_features)``."""

    path: str  # module path in the base model, e.g. ``bert.encoder.layer.0.attention.self.query``
    layer: int | None
    role: str
    r: int
    alpha: float
    scale: float
    in_features: int
    out_features: int
    key_A: str
    key_B: str


class Adapter:
    """A PEFT LoRA adapter folder: its config, its modules, and lazy access to their factors."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.config = _read_config(self.folder)
        weights = self.folder / SAFETENSORS_FILE
        if not weights.is_file():
            weights = self.folder / BIN_FILE
        if not weights.is_file():
            raise LoraAnalysisError(f"{self.folder} is not a PEFT adapter: no {SAFETENSORS_FILE} or {BIN_FILE}")
        self.weights = TensorFile(weights)
        init = self.folder / INIT_FILE
        self.init = TensorFile(init) if init.is_file() else None
        self.modules = self._parse_modules()
        if not self.modules:
            raise LoraAnalysisError(f"{weights}: no lora_A/lora_B tensors")
        if self.init is not None:
            self._check_init()

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config.get("fan_in_fan_out", False))

    @property
    def targets(self) -> str:
        """The module roles present, as a label in canonical role order: ``q+v``, ``q+k+v+o+ffn_in+ffn_out``."""
        roles = {m.role for m in self.modules.values()}
        known = [r for r in ROLES if r in roles]
        return "+".join(known + sorted(roles - set(ROLES)))

    def _parse_modules(self) -> dict[str, LoraModule]:
        found: dict[str, dict[str, str]] = {}
        names, skipped = set(), set()
        for key in self.weights.shapes:
            match = _LORA_KEY.match(key)
            if match is None:
                if ".lora_" in key:  # DoRA magnitudes, embedding adapters: not a B @ A update
                    skipped.add(key)
                continue
            names.add(match["name"])
            module = found.setdefault(match["path"], {})
            if match["ab"] in module:  # with and without base_model.model.: which one PEFT loads is not ours to guess
                raise LoraAnalysisError(f"{self.weights.path}: module {match['path']} has two lora_{match['ab']} "
                                        f"tensors, {module[match['ab']]} and {key}")
            module[match["ab"]] = key
        if len(names) > 1:
            raise LoraAnalysisError(f"{self.weights.path}: tensors of several adapters {sorted(map(str, names))}")
        if skipped:
            warnings.warn(
                f"{self.weights.path}: ignoring {len(skipped)} non-LoRA-matrix tensors such as {sorted(skipped)[0]}",
                stacklevel=3,
            )
        modules = [self._module(path, keys) for path, keys in found.items()]
        order = {role: i for i, role in enumerate(ROLES)}
        modules.sort(key=lambda m: (-1 if m.layer is None else m.layer, order.get(m.role, len(order)), m.path))
        return {m.path: m for m in modules}

    def _module(self, path: str, keys: dict[str, str]) -> LoraModule:
        file = self.weights.path
        for have, need in (("A", "B"), ("B", "A")):
            if need not in keys:
                raise LoraAnalysisError(f"{file}: tensor {keys[have]} has no matching lora_{need} tensor")
        shape_A, shape_B = self.weights.shapes[keys["A"]], self.weights.shapes[keys["B"]]
        if len(shape_A) != 2 or len(shape_B) != 2 or shape_A[0] != shape_B[1]:
            raise LoraAnalysisError(
                f"{file}: {keys['A']} {shape_A} and {keys['B']} {shape_B} are not (r, in) and (out, r)"
            )
        r = shape_A[0]
        if 0 in (*shape_A, *shape_B):
            raise LoraAnalysisError(f"{file}: {keys['A']} {shape_A} and {keys['B']} {shape_B} have an empty dimension "
                                    "(rank 0 or no features): not a LoRA update")
        rank_pattern = self.config.get("rank_pattern") or {}
        alpha_pattern = self.config.get("alpha_pattern") or {}
        source = f"{self.folder / CONFIG_FILE}"
        r_config = rank_pattern.get(pattern_key(rank_pattern, path, f"{source} rank_pattern"), self.config.get("r", r))
        if r_config != r:
            raise LoraAnalysisError(f"{file}: {keys['A']} has rank {r} but {CONFIG_FILE} says r={r_config}")
        alpha_key = pattern_key(alpha_pattern, path, f"{source} alpha_pattern")
        alpha = float(alpha_pattern.get(alpha_key, self.config.get("lora_alpha", r)))
        scale = lora_scale(alpha, r, bool(self.config.get("use_rslora", False)))
        target = parse_module_path(path)
        return LoraModule(
            path, target.layer, target.role, r, alpha, scale, shape_A[1], shape_B[0], keys["A"], keys["B"]
        )

    def _check_init(self) -> None:
        for m in self.modules.values():
            for key in (m.key_A, m.key_B):
                if key in self.init.shapes and self.init.shapes[key] != self.weights.shapes[key]:
                    raise LoraAnalysisError(
                        f"{self.init.path}: tensor {key} has shape {self.init.shapes[key]}, "
                        f"but {self.weights.shapes[key]} in {self.weights.path.name}"
                    )

    def factors(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Trained ``A: (r, in)`` and ``B: (out, r)`` of module ``path``, float64, read now."""
        m = self._get(path)
        A, B = self.weights.read(m.key_A, m.key_B)
        return A, B

    def init_A(self, path: str) -> np.ndarray | None:
        """Initial ``A: (r, in)`` from ``adapter_init.safetensors``; None without that file or key."""
        m = self._get(path)
        if self.init is None or m.key_A not in self.init.shapes:
            return None
        return self.init.read(m.key_A)[0]

    def _get(self, path: str) -> LoraModule:
        if path not in self.modules:
            raise LoraAnalysisError(f"{self.folder}: no LoRA module {path}")
        return self.modules[path]

    def __iter__(self) -> Iterator[LoraModule]:
        return iter(self.modules.values())

    def __repr__(self) -> str:
        return f"Adapter({str(self.folder)!r}, {len(self.modules)} modules)"


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise LoraAnalysisError(f"{folder} is not a folder")
    if not path.is_file():
        raise LoraAnalysisError(f"{folder} is not a PEFT adapter: no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LoraAnalysisError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise LoraAnalysisError(f"{path}: expected a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise LoraAnalysisError(f"{path}: peft_type {peft_type} is not LORA")
    _check_numbers(path, config)
    if config.get("use_dora"):
        warnings.warn(f"{path}: DoRA adapter; its magnitude vector is ignored, B @ A is analysed", stacklevel=4)
    return config


def _check_numbers(path: Path, config: dict) -> None:
    """The values this toolkit reads, of the types PEFT writes: ``r`` and ranks integers >= 1,
    ``lora_alpha`` and alphas finite numbers, names strings, switches booleans."""
    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise LoraAnalysisError(f"{path}: {key} must be a JSON object of pattern: value, got {config[key]!r}")
    for key in ("base_model_name_or_path", "peft_type", "task_type", "revision"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise LoraAnalysisError(f"{path}: {key} must be a string, got {config[key]!r}")
    for key in ("fan_in_fan_out", "use_rslora", "use_dora"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise LoraAnalysisError(f"{path}: {key} must be true or false, got {config[key]!r}")
    ranks = [("r", config["r"])] if "r" in config else []
    ranks += [(f"rank_pattern[{k!r}]", v) for k, v in (config.get("rank_pattern") or {}).items()]
    for name, value in ranks:
        if not number(value) or value != int(value) or value < 1:
            raise LoraAnalysisError(f"{path}: {name} must be an integer >= 1, got {value!r}")
    alphas = [("lora_alpha", config["lora_alpha"])] if "lora_alpha" in config else []
    alphas += [(f"alpha_pattern[{k!r}]", v) for k, v in (config.get("alpha_pattern") or {}).items()]
    for name, value in alphas:
        if not number(value):
            raise LoraAnalysisError(f"{path}: {name} must be a finite number, got {value!r}")


def load_adapter(folder: str | Path) -> Adapter:
    """Open a PEFT adapter folder: config and tensor headers now, tensors on demand."""
    return Adapter(folder)
