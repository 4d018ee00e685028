"""The number format of the frozen base's matrix products: ``optim.precision=auto`` resolved once per run.

``auto`` chooses bfloat16 autocast where the device multiplies bfloat16 matrices fast, float32 otherwise:

- CUDA: bfloat16 when ``torch.cuda.is_bf16_supported()``.
- CPU: a probe times float32 against bfloat16 products of the model's own shapes (a batch of
  ``PROBE_TOKENS`` token rows times each distinct weight shape of the transformer blocks), best of
  repeats for about ``PROBE_SECONDS`` each; bfloat16 is chosen when it is at least ``MIN_SPEEDUP`` times
  faster. CPUs with AMX or AVX512-BF16 pass (5x measured on an AMD EPYC with AVX512-BF16); CPUs that
  emulate bfloat16 do not. The result is cached per machine in the user's cache directory
  (``$XDG_CACHE_HOME/lora-analysis/precision-probe.json``), keyed by CPU model, torch version, thread
  count and shapes, so each run does not pay the probe again.

Whatever the choice, LoRA factors, optimizer state, the loss and everything saved stay float32 (autocast
computes in bfloat16 and gives float32 gradients to float32 parameters). The resolved precision is what
``config.yaml`` records, so a rerun or resume of that config uses the same one; ``metrics.json`` says
why (``precision_reason``, and the probe's ``precision_probe_speedup``).
"""

from __future__ import annotations

import json
import os
import platform
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_analysis.atomic import write_json
from lora_analysis.train.config import Precision

PROBE_TOKENS = 1024  # rows of a product: a batch of 32 texts of 32 tokens
PROBE_SECONDS = 0.1  # per format and shape group; two formats: ~0.2 s in all, once per machine
MIN_SPEEDUP = 1.5


@dataclass
class Resolved:
    precision: Precision
    reason: str
    speedup: float | None = None  # the probe's fp32 / bf16 time ratio, when a probe decided

    def metrics(self) -> dict:
        return {"precision": self.precision.value, "precision_reason": self.reason,
                "precision_probe_speedup": self.speedup}


def resolve(requested: Precision, device: torch.device, shapes: list[tuple[int, int]], threads: int) -> Resolved:
    """The concrete precision for ``requested`` on ``device``; ``shapes`` are (out, in) of the base's weights."""
    if requested != Precision.auto:
        return Resolved(requested, f"optim.precision={requested.value} asked for")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return Resolved(Precision.bf16 if ok else Precision.fp32,
                        f"auto: CUDA {'with' if ok else 'without'} bfloat16 support")
    if device.type != "cpu":
        return Resolved(Precision.fp32, f"auto: float32 on {device.type}")
    speedup = cpu_speedup(shapes, threads)
    chosen = Precision.bf16 if speedup >= MIN_SPEEDUP else Precision.fp32
    return Resolved(chosen, f"auto: bfloat16 products {speedup:.2f}x float32 on this CPU "
                            f"({'>=' if chosen == Precision.bf16 else '<'} {MIN_SPEEDUP}x)", speedup)


def cpu_speedup(shapes: list[tuple[int, int]], threads: int) -> float:
    """fp32 time / bf16 time of the model's products on this CPU, from the cache or a fresh probe."""
    shapes = sorted(set(shapes))
    key = f"{cpu_model()}|torch {torch.__version__}|threads {threads}|{shapes}"
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), int | float):
        return float(cached[key])
    speedup = probe(shapes)
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = speedup
    try:
        write_json(path, cached)
    except OSError:  # a read-only home: probe again next time
        pass
    return speedup


def probe(shapes: list[tuple[int, int]], tokens: int = PROBE_TOKENS, seconds: float = PROBE_SECONDS) -> float:
    """fp32 / bf16 time of ``x (tokens, in) @ W^T (in, out)`` summed over ``shapes``, best of repeats."""
    generator = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(tokens, i, generator=generator), torch.randn(o, i, generator=generator)) for o, i in shapes]
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        cast = [(x.to(dtype), w.to(dtype)) for x, w in pairs]
        for x, w in cast:  # warm-up: first calls pick kernels and allocate
            torch.nn.functional.linear(x, w)
        best, stop = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < stop or best == float("inf"):
            start = time.perf_counter()
            for x, w in cast:
                torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - start)
        times[dtype] = best
    return times[torch.float32] / times[torch.bfloat16]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lora-analysis" / "precision-probe.json"


def base_weight_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(out, in) of every frozen Linear weight (of every Linear for full fine-tuning): the products autocast
    would run in bfloat16."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    frozen = [m for m in linears if not m.weight.requires_grad] or linears
    return sorted({tuple(m.weight.shape) for m in frozen})


def cast_frozen_linears(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store frozen Linear weights (and biases) in ``dtype`` once, so autocast does not cast them every step.

    Only frozen tensors: they are never saved or updated, so their format changes nothing but speed
    (autocast would round them to ``dtype`` before each product anyway). Returns how many were cast.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(dtype)
            count += 1
    return count


def share_input_casts(layers: Iterable[torch.nn.Module], dtype: torch.dtype = torch.bfloat16) -> int:
    """Cast each LoRA layer's input to ``dtype`` once, under autocast, for its base and its ``lora_A`` alike.

    Autocast casts a float32 activation again at every product that reads it: twice per LoRA layer (its
    frozen base and ``lora_A``) and six times for the hidden states that q, k and v share; and PEFT casts
    a bfloat16 input (o's, ffn_out's) up to ``lora_A``'s float32 before autocast casts it down again. The
    casts were 22% of a bf16 step (``benchmarks/profile_step.py``). Here a forward pre-hook casts the
    input once, the next layer fed the same tensor object (q, k, v) reuses that cast, and PEFT's own cast
    is switched off (``cast_input_dtype_enabled``). The products see the same bfloat16 values as under
    autocast; only the order in which their gradients are summed back changes (in bfloat16 into the one
    cast, instead of each cast back to float32 first). Returns how many layers were hooked.
    """
    last: dict[str, object] = {"source": None, "cast": None}  # one slot: q, k and v run one after another

    def cast_input(module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            return None
        if not torch.is_autocast_enabled(x.device.type) or torch.get_autocast_dtype(x.device.type) != dtype:
            return None
        source = last["source"]() if last["source"] is not None else None
        if source is not x:
            last["source"], last["cast"] = weakref.ref(x), x.to(dtype)
        return (last["cast"], *args[1:])

    count = 0
    for layer in layers:
        layer.register_forward_pre_hook(cast_input)
        layer.cast_input_dtype_enabled = False
        count += 1
    return count
