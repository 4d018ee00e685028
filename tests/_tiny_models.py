"""Tiny BERT, GPT-2 and Llama models and LoRA adapters saved by PEFT itself (no downloads).

Adapters are "trained" synthetically: each module's ``A`` moves from its init along one direction
shared by all runs (a known answer: the learned parts ``A - A_init`` share their top direction), and
``B`` gets random values. Builders write into a folder and return at once if it already exists.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
import yaml
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from tiny import tiny_config
from transformers import BertForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM

TARGETS = {
    "bert": ["query", "value", "intermediate.dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


TASK_MODELS = {"bert": BertForSequenceClassification, "gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}


def tiny_model(family: str, hidden: int = 32):
    """A 2-block randomly initialised task model (``tiny.tiny_config``), the same weights on every call (seed 0)."""
    torch.manual_seed(0)
    return TASK_MODELS[family](tiny_config(family, hidden, vocab=100, positions=64, special=(1, 2), pad=None))


def save_base(family: str, folder: Path, hidden: int = 32) -> Path:
    """The backbone alone (``BertModel``, ``GPT2Model``, ``LlamaModel``): keys without the task prefix."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        model = tiny_model(family, hidden)
        backbone = getattr(model, {"bert": "bert", "gpt2": "transformer", "llama": "model"}[family])
        backbone.save_pretrained(folder)
    return folder


def peft_adapter(family: str, folder: Path, r: int = 4, alpha: float = 8.0, seed: int = 0,
                 adapter_name: str = "default", hidden: int = 32, train: bool = True, **lora) -> Path:
    """Save a PEFT adapter of a tiny model (plus ``adapter_init.safetensors``); returns its folder.

    Extra keyword arguments go to ``LoraConfig`` (``rank_pattern``, ``use_rslora``, ...). A non-default
    adapter name is saved by PEFT in ``folder/<name>/``, which is returned.
    """
    folder = Path(folder)
    target = folder if adapter_name == "default" else folder / adapter_name
    if (target / "adapter_config.json").is_file():
        return target
    model = tiny_model(family, hidden)
    torch.manual_seed(seed)
    lora.setdefault("target_modules", TARGETS[family])
    lora.setdefault("init_lora_weights", "gaussian")
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, **lora), adapter_name=adapter_name)
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    init = {k: v.clone().contiguous() for k, v in state.items() if ".lora_" in k}
    if train:
        _fake_training(peft_model, seed)
    peft_model.save_pretrained(folder)
    save_file(init, target / "adapter_init.safetensors")
    return target


def _fake_training(peft_model, seed: int) -> None:
    """Move each A along a direction fixed per module (shared by all runs); give B random values."""
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:
                module = name.split(".lora_A.")[0]
                shared = torch.Generator().manual_seed(zlib.crc32(module.encode()))
                direction = torch.randn(param.shape[1], generator=shared)
                direction /= direction.norm()
                weights = torch.randn(param.shape[0], 1, generator=generator)
                param += 2.0 * weights * direction + 0.01 * torch.randn(param.shape, generator=generator)
            elif ".lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def toolkit_run(sweep: Path, base: Path, r: int, seed: int, targets: str = "q+v+ffn_in", done: bool = True,
                method: str = "lora", family: str = "bert") -> Path:
    """A run folder as the train app writes it: adapter, init, config.yaml, metrics.json, DONE."""
    name = f"r{r}-seed{seed}-{targets}" + ("" if method == "lora" else f"-{method}")
    folder = Path(sweep) / name
    if method == "lora":
        peft_adapter(family, folder, r=r, alpha=8.0, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "run_name": name, "seed": seed, "method": method, "name": Path(sweep).name, "out_dir": str(Path(sweep).parent),
        "model": {"name_or_path": str(base), "task": "classification"},
        "lora": {"r": r, "alpha": 8.0, "rslora": False, "targets": targets, "init": "gaussian",
                 "init_stream": "per_module"},
        "optim": {"lr": 0.001, "steps": 10},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text('{"test_accuracy": 0.5}\n')
    if done:
        (folder / "DONE").write_text("{}\n")
    return folder


def bert_sweep(root: Path) -> Path:
    """A sweep: r2/r4 with seed 0, r4 with seed 1, an unfinished run and a full fine-tuning run."""
    root = Path(root)
    sweep, base = root / "sweep", save_base("bert", root / "base")
    if not (sweep / "r4-seed1-q+v+ffn_in" / "DONE").is_file():
        for r, seed in ((2, 0), (4, 0), (4, 1)):
            toolkit_run(sweep, base, r, seed)
        toolkit_run(sweep, base, 8, 0, done=False)
        toolkit_run(sweep, base, 4, 0, method="full")
    return sweep
