"""Typed training configuration, registered in Hydra's ConfigStore as ``train_schema``.

The YAML in ``conf/`` fills these dataclasses; a typo in a key or a value of the wrong type fails at
composition. ``OmegaConf.to_object`` builds the dataclasses, whose ``__post_init__`` checks the values
OmegaConf cannot (ranges, choices that depend on each other). Each field is documented once, here.
"""

from __future__ import annotations

import codecs
import json
import math
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore

from lora_analysis import patterns
from lora_analysis.embedded import DATA_NAME, MODEL_NAME
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.paths import user_path
from lora_analysis.targets import expand_roles, targets_label


class Task(str, Enum):
    classification = "classification"  # sequence classification on a labelled text column
    causal_lm = "causal_lm"  # next-token loss on a text column


class Method(str, Enum):
    lora = "lora"
    full = "full"  # full fine-tuning: the reference the paper compares against


class Init(str, Enum):
    # With alpha fixed the first updates grow as r falls: Adam moves each entry of B by about the learning
    # rate, so dW = (alpha/r) B A moves by about alpha lr sqrt(r) std(A) / r, i.e. r^-1.5 with gaussian and
    # r^-0.5 with kaiming. On the embedded default r=1, alpha=8 collapsed to the majority class with
    # gaussian and reached 0.794 with kaiming (runs/rank1_controls, README "Rank ablation").
    gaussian = "gaussian"  # A ~ N(0, 1/r^2): Gaussian as in the paper, with PEFT's std 1/r
    kaiming = "kaiming"  # A ~ kaiming-uniform(a=sqrt(5)), PEFT's default: std 1/sqrt(3 in_features), any r


class InitStream(str, Enum):
    per_module = "per_module"  # one random stream per (seed, rank, module): ranks share no init rows
    shared = "shared"  # one stream per (seed, module): A_init of rank r = first r rows of any larger rank (a control)


class Keep(str, Enum):
    best = "best"  # the state at the best validation evaluation (what every real run keeps)
    last = "last"  # the state at the last step: a control trained a matched number of steps (optim.steps=@run)


class Precision(str, Enum):
    auto = "auto"  # bf16 where the device multiplies bfloat16 fast (a probe, cached: train.precision), else fp32
    fp32 = "fp32"
    bf16 = "bf16"  # bfloat16 autocast for matrix products; weights, LoRA factors and optimizer stay fp32


class Schedule(str, Enum):
    # Constant is the default: a run stops at its validation optimum, and after the warm-up (warmup_ratio of the
    # ceiling, optim.steps) a constant rate does not depend on the ceiling: raising the ceiling changes the
    # path only through the warm-up's length. A decay over the ceiling would make every step's rate, hence the
    # step a run stops at and its state there, depend on the ceiling.
    constant = "constant"  # linear warm-up, then constant
    linear = "linear"  # linear warm-up, then linear decay to 0 at the ceiling


@dataclass
class ModelConfig:
    name_or_path: str = MODEL_NAME  # a transformers model directory or hub id; embedded:minilm is the default
    task: Task = Task.classification
    revision: str | None = None  # hub revision (branch, tag or commit)


@dataclass
class DataConfig:
    path: str = DATA_NAME  # a CSV or JSONL file; embedded:rotten_tomatoes (the default) or embedded:tweets
    text_column: str = "text"
    encoding: str = "utf-8"  # of a data file (a byte-order mark is read past); e.g. cp1252, latin-1
    label_column: str | None = "label"  # None for causal_lm
    test_size: int = 2000
    # Held out of the training rows for every choice a run or an ablation makes (when to stop, which
    # learning rate): the test split is scored once per run, for the reported numbers only.
    val_size: int = 1000
    train_size: int | None = None  # None: every row not in the test or validation split
    split_seed: int = 0  # the split never depends on the run's seed
    max_length: int = 64  # tokens, including special tokens
    cache_dir: str | None = None  # tokenised data; None: <out_dir>/.cache
    # A control that destroys the task and keeps the inputs: the training labels permuted by the run's
    # seed (test labels untouched, label counts kept). For causal_lm each training text is paired with
    # the next-token targets of another training text (the same permutation), its inputs unchanged.
    shuffle_labels: bool = False
    many_labels: bool = False  # accept a label column that looks continuous (texts.read_text_table)

    def __post_init__(self) -> None:
        if self.test_size < 1:
            raise LoraAnalysisError(f"data.test_size must be >= 1, got {self.test_size}")
        if self.val_size < 0:
            raise LoraAnalysisError(f"data.val_size must be >= 0 (0: no validation split), got {self.val_size}")
        if self.train_size is not None and self.train_size < 1:
            raise LoraAnalysisError(f"data.train_size must be >= 1 or null, got {self.train_size}")
        if self.max_length < 4:
            raise LoraAnalysisError(f"data.max_length must be >= 4, got {self.max_length}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise LoraAnalysisError(f"data.encoding={self.encoding!r} is not an encoding Python knows (e.g. utf-8, "
                                    f"cp1252, latin-1)") from None
        if self.split_seed < 0:  # numpy seeds are non-negative
            raise LoraAnalysisError(f"data.split_seed must be >= 0, got {self.split_seed}")


def read_rank_pattern(spec: str) -> dict[str, int]:
    """A rank_pattern from inline JSON or a JSON file, checked: regex keys, integer ranks >= 1."""
    text = spec.strip()
    if not text.startswith("{"):
        path = user_path(text)
        if not path.is_file():
            raise LoraAnalysisError(f"lora.rank_pattern: {path} is not a file (expected a JSON rank_pattern)")
        text = path.read_text()
    try:
        pattern = json.loads(text)
    except json.JSONDecodeError as error:
        raise LoraAnalysisError(f"lora.rank_pattern {spec!r} is not valid JSON: {error}") from None
    if not isinstance(pattern, dict) or not pattern:
        raise LoraAnalysisError(f"lora.rank_pattern {spec!r} must be a non-empty JSON object of regex: rank")
    for key, rank in pattern.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise LoraAnalysisError(f"lora.rank_pattern: the rank of {key!r} must be an integer >= 1, got {rank!r}")
        patterns.check_key(key, "lora.rank_pattern")
    return pattern


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 8.0  # held fixed while r varies, as in the paper; scale = alpha / r (analysis.delta.lora_scale)
    rslora: bool = False  # scale = alpha / sqrt(r)
    dropout: float = 0.0
    init: Init = Init.gaussian
    init_stream: InitStream = InitStream.per_module
    targets: Any = "all"  # roles q,k,v,o,qkv,ffn_gate,ffn_in,ffn_out or presets qv,attn,ffn,all; "q+v" or a list
    layers: list[int] | None = None  # block indices to adapt; None: all
    target_regex: str | None = None  # full-match regex on module paths, instead of roles
    budget: Any = None  # trainable LoRA parameters (120000, or r32@q: what rank 32 on q costs); sets r
    # PEFT rank_pattern (regex on module paths -> rank; lora.r elsewhere): a JSON file, e.g. the one
    # lora-analysis recommend writes, or inline JSON. Kept as canonical JSON text, so config.yaml records it.
    rank_pattern: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise LoraAnalysisError(f"lora.r must be an integer >= 1, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraAnalysisError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.alpha < math.inf:  # written so, NaN is refused too
            raise LoraAnalysisError(f"lora.alpha must be a finite number > 0, got {self.alpha}")
        if isinstance(self.targets, list | tuple) and all(isinstance(t, str) for t in self.targets):
            self.targets = targets_label(list(self.targets))
        elif not isinstance(self.targets, str):
            raise LoraAnalysisError(f"lora.targets must be roles or presets (q+v, attn, [q,v]), got {self.targets!r}")
        if self.target_regex is None:
            expand_roles(self.targets)  # raises on an unknown role or preset
        elif not self.target_regex:  # '' would quietly fall back to the roles
            raise LoraAnalysisError("lora.target_regex is empty: give a regex, or null to choose lora.targets")
        else:  # before any run folder exists
            patterns.check(self.target_regex, "lora.target_regex")
        if self.rank_pattern is not None:
            self.rank_pattern = json.dumps(read_rank_pattern(self.rank_pattern), sort_keys=True)

    def ranks(self) -> dict[str, int]:
        """The rank_pattern as a dict (empty without one)."""
        return json.loads(self.rank_pattern) if self.rank_pattern else {}


@dataclass
class OptimConfig:
    lr: float | None = None  # None: 1e-3 for LoRA, 5e-5 for full fine-tuning
    weight_decay: float = 0.0
    steps: int = 2000  # the ceiling: a run stops earlier at its validation optimum (lora_analysis.stopping)
    eval_every: int = 100  # steps between evaluations of the validation split
    patience: int = 3  # evaluations without a lower validation loss before the run stops; 0: train to the ceiling
    keep: Keep = Keep.best  # the state saved and tested: best (validation optimum) or last (a matched control)
    batch_size: int = 32
    warmup_ratio: float = 0.06  # of the ceiling
    schedule: Schedule = Schedule.constant
    max_grad_norm: float = 1.0  # 0 disables clipping
    precision: Precision = Precision.auto  # resolved once per run; config.yaml records the result
    fast_dropout: bool = True  # the model's dropout masks from 15-bit random integers on the CPU (train.dropout)
    eval_batch_size: int = 32  # texts per evaluation forward; speed only (benchmarks/eval_batch.py)
    checkpoint_every: int = 100  # steps between resumable checkpoints; 0: never
    log_every: int = 10  # steps between history rows

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise LoraAnalysisError(f"optim.patience must be >= 0 (0: train to the ceiling), got {self.patience}")
        for name in ("steps", "batch_size", "eval_batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise LoraAnalysisError(f"optim.{name} must be >= 1, got {getattr(self, name)}")
        # Written as "not in range", so NaN is refused too (NaN <= 0 is false: it reached AdamW, a traceback).
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise LoraAnalysisError(f"optim.lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "max_grad_norm"):  # a negative max_grad_norm would quietly not clip
            if not 0 <= getattr(self, name) < math.inf:
                raise LoraAnalysisError(f"optim.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.log_every < 1 or self.checkpoint_every < 0:
            raise LoraAnalysisError(f"optim.log_every must be >= 1 and optim.checkpoint_every >= 0 (0: never), "
                                    f"got {self.log_every} and {self.checkpoint_every}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise LoraAnalysisError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


class LoggerKind(str, Enum):
    csv = "csv"  # history.csv in the run folder (always written)
    tensorboard = "tensorboard"  # also event files in <run>/tensorboard; pip install 'lora-analysis[tensorboard]'
    mlflow = "mlflow"  # also an MLflow run per run, the sweep as experiment; pip install 'lora-analysis[mlflow]'


@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.csv
    tracking_uri: str | None = None  # mlflow: any tracking URI; None: a local file store <out_dir>/mlruns


DEFAULT_LR = {Method.lora: 1e-3, Method.full: 5e-5}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # where the training curves go; not the results
    method: Method = Method.lora
    seed: int = 0  # model head, LoRA init streams, batch order and dropout; not the data split
    device: str = "auto"  # auto: CUDA when present, else CPU; or a torch device name
    threads: int | None = None  # CPU threads; None: the cores, divided among parallel workers
    name: str = "default"  # the sweep: runs go to <out_dir>/<name>/<run_name>
    out_dir: str = "runs"
    run_name: str = "default"  # set from the run's overrides by the train app (r8-seed0-attn)
    progress: bool = True  # progress bar on stderr
    # A search's rung (successive halving, lora-analysis ablate; train.halving): pause_at=N stops the run at step N
    # (0: never), unfinished, its checkpoint kept to go on from; with halt=true it finishes there instead, its
    # best state kept and tested (stop_reason "halved": the search dropped it). Volatile: the run is the same run.
    pause_at: int = 0
    halt: bool = False

    def __post_init__(self) -> None:
        if self.optim.lr is None:
            self.optim.lr = DEFAULT_LR[self.method]
        if self.optim.patience > 0 and self.data.val_size == 0:
            raise LoraAnalysisError(f"optim.patience={self.optim.patience} stops a run at its validation optimum, "
                                    "but data.val_size=0 holds no validation split: give data.val_size > 0, or "
                                    "optim.patience=0 to train to the ceiling")
        if self.model.task == Task.classification and not self.data.label_column:
            raise LoraAnalysisError("data.label_column is required for model.task=classification")
        if isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise LoraAnalysisError(f"seed must be an integer in [0, 2**32), got {self.seed}")
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\\0"):
            raise LoraAnalysisError(f"name must be a plain folder name (no / or ..), got {self.name!r}")
        if isinstance(self.pause_at, bool) or not isinstance(self.pause_at, int) or self.pause_at < 0:
            raise LoraAnalysisError(f"pause_at must be a step >= 0 (0: never pause), got {self.pause_at!r}")
        if self.halt and not self.pause_at:
            raise LoraAnalysisError("halt=true finishes a run at its pause_at step, but pause_at=0: give the step")
        cpus = os.cpu_count() or 1
        if self.threads is not None and not 1 <= self.threads <= cpus:  # 100000 OpenMP threads crash torch
            raise LoraAnalysisError(f"threads must be in [1, {cpus}] (this machine's logical CPUs) or null, "
                                    f"got {self.threads}")


def register_configs() -> None:
    """Make ``train_schema`` known to Hydra (idempotent)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
