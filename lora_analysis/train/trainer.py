"""One training run: ``train(cfg, run_dir) -> metrics``, writing a self-explaining run folder.

The run folder ends up holding, each file written atomically:
``config.yaml`` (resolved config), ``adapter_init.safetensors`` (A and B at step 0),
``adapter_config.json`` + ``adapter_model.safetensors`` (the adapter at the validation optimum, in PEFT's
format; none for full fine-tuning), ``history.csv`` (step, loss, learning rate, and the validation loss
and accuracy where evaluated), ``metrics.json``, and ``DONE`` last. The run stops at its validation
optimum (``lora_analysis.stopping``). While it runs, ``checkpoint.safetensors`` (the best state
included) lets an interrupted run continue where it stopped, to the same tensors.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lora_analysis import stopping
from lora_analysis.atomic import write_atomic, write_text
from lora_analysis.layout import RunDir
from lora_analysis.machine import resolve_device
from lora_analysis.train import data as task_data
from lora_analysis.train import divergence, precision
from lora_analysis.train.config import Keep, Method, Precision, Schedule, Task, TrainConfig
from lora_analysis.train.dropout import use_fast_dropout
from lora_analysis.train.modeling import add_lora, load_model, load_tokenizer, lora_layers, lora_state

log = logging.getLogger(__name__)



@dataclass
class Progress:
    """What a checkpoint must carry besides tensors to continue a run exactly."""

    step: int = 0
    train_seconds: float = 0.0
    examples: int = 0
    tokens: int = 0
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # step, val_loss, val_accuracy at each evaluation
    stopping: dict = field(default_factory=dict)  # stopping.EarlyStopping.state()


def train(cfg: TrainConfig, run_dir: Path, on_log=None) -> dict | None:
    """Train one run in ``run_dir`` (resuming from its checkpoint if any) and return its metrics; None when it
    paused at ``cfg.pause_at`` (unfinished, its checkpoint written: the next call goes on from there).

    ``on_log(step, {"loss": ..., "lr": ...})`` receives each history row as it is logged (a tracker).
    """
    wall_start = time.perf_counter()
    # 1) determinism: the seed fixes the head init, dropout and batch order; LoRA init has its own streams
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # 2) data, tokenised once per (tokenizer, data, max length)
    tokenizer = load_tokenizer(cfg.model)
    cache_dir = Path(cfg.data.cache_dir or Path(cfg.out_dir) / ".cache")
    data = task_data.load_task_data(cfg.data, cfg.model.task, tokenizer, cache_dir, cfg.seed)
    # 3) model: the pretrained weights, a task head, and LoRA layers (or everything, for full fine-tuning)
    model = load_model(cfg.model, data.num_labels, tokenizer.pad_token_id)
    if cfg.method == Method.lora:
        model, _ = add_lora(model, cfg.lora, cfg.model.task, cfg.seed)
        init_state = lora_state(model)
        write_atomic(RunDir(run_dir).init_path, lambda p: save_file(init_state, str(p)))
    model.to(device)
    if cfg.optim.fast_dropout:
        use_fast_dropout(model)
    resolved = settle_precision(cfg, model, device, run_dir)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(cfg, params)
    # 4) continue from a checkpoint of this very run, if one exists
    progress, best = _load_checkpoint(run_dir, model, params, optimizer) or (Progress(), _copy(params))
    # 5) train to the validation optimum (or the ceiling), keeping the best state
    stopper = stopping.EarlyStopping(**(progress.stopping or {"patience": cfg.optim.patience}))
    _train_loop(cfg, model, params, optimizer, data, tokenizer.pad_token_id, device, run_dir, progress, stopper,
                best, on_log)
    at_rung = bool(cfg.pause_at) and cfg.pause_at <= progress.step < cfg.optim.steps and not stopper.should_stop()
    if at_rung and not cfg.halt:  # paused: unfinished, to go on from this checkpoint (train.halving)
        _save_checkpoint(run_dir, params, optimizer, progress, best)
        return None
    if stopper.evaluations and cfg.optim.keep == Keep.best:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(best[name])
    # 6) evaluate the kept state on the test split, once
    eval_start = time.perf_counter()
    metrics = evaluate(model, data.test, cfg, tokenizer.pad_token_id, device)
    eval_seconds = time.perf_counter() - eval_start
    kept = stopper.best_step if cfg.optim.keep == Keep.best else progress.step
    at_kept = next((e for e in progress.evals if e["step"] == kept), {})
    # 7) save the adapter, then the numbers
    if cfg.method == Method.lora:
        _save_adapter(model, run_dir)
        metrics["a_moved"] = _a_moved(init_state, lora_state(model))
        metrics["a_moved_mean"] = float(np.mean(list(metrics["a_moved"].values())))
    _write_history(run_dir, progress.history, progress.evals)
    tail = [row["loss"] for row in progress.history[-max(1, len(progress.history) // 10) :]]
    metrics.update(
        final_train_loss=float(np.mean(tail)) if tail else float("nan"),
        steps=progress.step,
        ceiling=cfg.optim.steps,
        best_step=stopper.best_step if stopper.evaluations else progress.step,
        kept_step=kept,
        stop_reason=(stopping.HALVED if at_rung else stopper.verdict() if cfg.optim.keep == Keep.best
                     else stopping.FIXED),
        evaluations=stopper.evaluations,
        val_loss=at_kept.get("val_loss", float("nan")),
        val_accuracy=at_kept.get("val_accuracy", float("nan")),
        val_examples=len(data.val),
        val_majority=_majority(data.val),
        examples_per_s=progress.examples / progress.train_seconds,
        tokens_per_s=progress.tokens / progress.train_seconds,
        train_seconds=progress.train_seconds,
        eval_seconds=eval_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        trainable_params=int(sum(p.numel() for p in params.values())),
        lora_params=int(sum(p.numel() for n, p in params.items() if ".lora_" in n)),
        train_examples=len(data.train),
        test_examples=len(data.test),
        dropped_empty_rows=data.dropped_rows.get("empty", 0),
        dropped_repeated_texts=data.dropped_rows.get("repeated", 0),
        threads=torch.get_num_threads(),
        device=str(device),
        **resolved.metrics(),
        val_seconds=sum(e["seconds"] for e in progress.evals),
    )
    (RunDir(run_dir).checkpoint_path).unlink(missing_ok=True)
    return metrics


def _train_loop(cfg, model, params, optimizer, data, pad_id, device, run_dir, progress: Progress,
                stopper: stopping.EarlyStopping, best: dict[str, torch.Tensor], on_log=None) -> None:
    """Train until ``stopper`` says stop or the ceiling ``optim.steps``; ``best`` holds the best state."""
    validate = len(data.val) > 0
    model.train()
    batches: Iterator[np.ndarray] = task_data.train_batches(data.train.lengths, cfg.optim.batch_size, cfg.seed)
    batches = islice(batches, progress.step, None)  # a resumed run skips the batches it has done
    bar = tqdm(total=cfg.optim.steps, initial=progress.step, desc=cfg.run_name, disable=not cfg.progress,
               dynamic_ncols=True, leave=False)
    losses: list[float] = []
    limit = min(cfg.optim.steps, cfg.pause_at or cfg.optim.steps)
    while progress.step < limit and not stopper.should_stop():
        rows = next(batches)
        batch = {k: v.to(device) for k, v in task_data.collate(data.train, rows, pad_id, cfg.model.task).items()}
        lr = learning_rate(cfg, progress.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        with autocast(cfg, device):
            loss = model(**batch).loss
        loss.backward()
        grads = [p.grad for p in params.values() if p.grad is not None]
        norm = divergence.grad_norm(grads)
        divergence.check_step(loss, grads, norm, progress.step + 1)  # before the step: no NaN reaches the weights
        if cfg.optim.max_grad_norm > 0:
            divergence.clip(list(params.values()), cfg.optim.max_grad_norm, norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # .item() syncs, so the timing below is honest on CUDA too
        progress.train_seconds += time.perf_counter() - start
        progress.examples += len(rows)
        progress.tokens += int(batch["attention_mask"].sum())
        progress.step += 1
        last = progress.step == cfg.optim.steps
        evaluate_now = validate and (progress.step % cfg.optim.eval_every == 0 or last)
        if progress.step % cfg.optim.log_every == 0 or last or evaluate_now:
            progress.history.append({"step": progress.step, "loss": float(np.mean(losses)), "lr": lr,
                                     "seconds": progress.train_seconds})
            if on_log is not None:
                on_log(progress.step, {"loss": progress.history[-1]["loss"], "lr": lr})
            losses = []
            bar.set_postfix(loss=f"{progress.history[-1]['loss']:.4f}",
                            ex_s=f"{progress.examples / progress.train_seconds:.0f}")
        bar.update(1)
        if evaluate_now:  # eval mode draws no random numbers: the run goes on as without it
            _validate(cfg, model, data.val, pad_id, device, progress, stopper, params, best, on_log)
        every = cfg.optim.checkpoint_every
        if every and progress.step % every == 0 and not last and not stopper.should_stop():
            _save_checkpoint(run_dir, params, optimizer, progress, best)
    bar.close()


def _validate(cfg, model, val, pad_id, device, progress: Progress, stopper: stopping.EarlyStopping, params, best,
              on_log=None) -> None:
    """Score the validation split now; keep the state in ``best`` when it is the best so far."""
    start = time.perf_counter()
    scores = evaluate(model, val, cfg, pad_id, device, prefix="val")
    row = {"step": progress.step, **{k: scores[k] for k in ("val_loss", "val_accuracy") if k in scores},
           "seconds": time.perf_counter() - start}
    progress.evals.append(row)
    if stopper.update(progress.step, scores["val_loss"]):
        with torch.no_grad():
            for name, p in params.items():
                best[name].copy_(p)
    progress.stopping = stopper.state()
    if on_log is not None:
        on_log(progress.step, {k: v for k, v in row.items() if k.startswith("val_")})


def _majority(examples: task_data.Examples) -> float:
    """The accuracy of always predicting the most frequent class (NaN without labels or examples)."""
    if examples.labels is None or len(examples) == 0:
        return float("nan")
    return float(np.bincount(examples.labels).max() / len(examples))


def _copy(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}


def settle_precision(cfg: TrainConfig, model, device: torch.device, run_dir: Path) -> precision.Resolved:
    """Resolve ``optim.precision=auto`` (``train.precision``), record the result in ``config.yaml`` so a
    rerun or resume uses the same one, and with bf16 store the frozen base's Linear weights in bfloat16."""
    threads = torch.get_num_threads()
    resolved = precision.resolve(cfg.optim.precision, device, precision.base_weight_shapes(model), threads)
    if resolved.precision != cfg.optim.precision:
        cfg.optim.precision = resolved.precision
        config_path = RunDir(run_dir).config_path
        if config_path.is_file():
            saved = yaml.safe_load(config_path.read_text())
            saved["optim"]["precision"] = resolved.precision.value
            write_text(config_path, yaml.safe_dump(saved, sort_keys=False))
    if resolved.precision == Precision.bf16 and cfg.method == Method.lora:
        precision.cast_frozen_linears(model, torch.bfloat16)
        precision.share_input_casts(lora_layers(model).values(), torch.bfloat16)
    return resolved


def make_optimizer(cfg: TrainConfig, params: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW over the trainable tensors (float32 moments whatever the precision), fused into one kernel
    over all of them where torch has it for the device: LoRA has ~2 tensors per module, each tiny, so the
    per-tensor loop of the default implementation is mostly Python and launch overhead."""
    kwargs = {"lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay}
    tensors = list(params.values())
    fusable = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(tensors, **kwargs, **({"fused": True} if fusable else {"foreach": True}))


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """bfloat16 autocast when ``optim.precision=bf16`` (a no-op context for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.optim.precision == Precision.bf16)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0 (or constant)."""
    warmup = int(cfg.optim.warmup_ratio * cfg.optim.steps)
    if step < warmup:
        return cfg.optim.lr * (step + 1) / warmup
    if cfg.optim.schedule == Schedule.constant:
        return cfg.optim.lr
    return cfg.optim.lr * max(0.0, (cfg.optim.steps - step) / max(1, cfg.optim.steps - warmup))


@torch.inference_mode()
def evaluate(model, examples: task_data.Examples, cfg: TrainConfig, pad_id: int, device, prefix: str = "test") -> dict:
    """``<prefix>_accuracy``, ``<prefix>_loss`` and the majority class's accuracy (classification), or mean
    token loss and perplexity (causal LM), of ``examples`` (the test split, or ``prefix="val"``)."""
    model.eval()
    total_loss, correct, weight = 0.0, 0, 0
    for rows in task_data.eval_batches(examples.lengths, cfg.optim.eval_batch_size):
        batch = {k: v.to(device) for k, v in task_data.collate(examples, rows, pad_id, cfg.model.task).items()}
        with autocast(cfg, device):
            out = model(**batch)
        if cfg.model.task == Task.classification:
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            total_loss += float(out.loss) * len(rows)
            weight += len(rows)
        else:
            tokens = int((batch["labels"][:, 1:] != -100).sum())  # HF shifts labels by one
            total_loss += float(out.loss) * tokens
            weight += tokens
    model.train()
    loss = total_loss / weight
    if cfg.model.task == Task.classification:
        scores = {f"{prefix}_accuracy": correct / weight, f"{prefix}_loss": loss}
        return scores | ({"majority_accuracy": _majority(examples)} if prefix == "test" else {})
    return {f"{prefix}_loss": loss, f"{prefix}_perplexity": float(np.exp(loss))}


def _a_moved(init: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> dict[str, float]:
    """||A - A_init||_F / ||A_init||_F per adapted module path."""
    moved = {}
    for key, a0 in init.items():
        if key.endswith(".lora_A.weight"):
            path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            moved[path] = float((final[key].double() - a0.double()).norm() / a0.double().norm())
    return moved


def _save_adapter(model, run_dir: Path) -> None:
    """PEFT's own ``save_pretrained``, into a temporary folder, then each file moved in atomically."""
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".adapter-") as tmp:
        model.save_pretrained(tmp)
        for item in sorted(Path(tmp).iterdir()):
            if item.is_file():
                item.replace(run_dir / item.name)


def _write_history(run_dir: Path, history: list[dict], evals: list[dict]) -> None:
    """One row per logged step; the validation loss and accuracy where the run evaluated (else empty)."""
    scored = {e["step"]: e for e in evals}

    def val(step: int, key: str) -> str:
        value = scored.get(step, {}).get(key)
        return "" if value is None else f"{value:.6f}"

    rows = [f"{h['step']},{h['loss']:.6f},{h['lr']:.6g},{h['seconds']:.3f},{val(h['step'], 'val_loss')},"
            f"{val(h['step'], 'val_accuracy')}" for h in history]
    lines = ["step,loss,lr,seconds,val_loss,val_accuracy", *rows]
    write_text(RunDir(run_dir).history_path, "\n".join(lines) + "\n")


def _save_checkpoint(run_dir: Path, params: dict, optimizer, progress: Progress, best: dict) -> None:
    """Trainable tensors, the best state so far, optimizer moments and RNG state in one safetensors file."""
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    tensors.update({f"best.{n}": t.detach().cpu().contiguous() for n, t in best.items()})
    index = {id(p): n for n, p in params.items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                value = torch.as_tensor(value).detach().cpu()
                tensors[f"optim.{index[id(p)]}.{key}"] = value.reshape(1) if value.dim() == 0 else value.clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"progress": json.dumps(progress.__dict__)}
    write_atomic(RunDir(run_dir).checkpoint_path, lambda p: save_file(tensors, str(p), metadata=meta))


def _load_checkpoint(run_dir: Path, model, params: dict, optimizer) -> tuple[Progress, dict] | None:
    """The progress and the best state of this run's checkpoint, with the tensors restored; None without one."""
    path = RunDir(run_dir).checkpoint_path
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    wrong = next((n for n, p in params.items() for kind in ("param", "best")
                  if tuple(tensors.get(f"{kind}.{n}", torch.empty(0)).shape) != p.shape), None)
    if wrong is not None:  # written by another run's config (the folder reused by hand): not this run's state
        log.warning("%s: discarded %s, written for another config (parameter %s does not match); starting the run "
                    "again", run_dir, RunDir.CHECKPOINT, wrong)
        path.unlink()
        return None
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
    for name, p in params.items():
        prefix = f"optim.{name}."
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            state["step"] = state["step"].reshape(())  # AdamW keeps its step count on the CPU
            on_device = optimizer.defaults.get("fused")  # fused AdamW keeps its step count beside the tensor
            optimizer.state[p] = {k: v if k == "step" and not on_device else v.to(p.device) for k, v in state.items()}
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    progress = Progress(**json.loads(meta["progress"]))
    best = {name: tensors[f"best.{name}"].to(p.device) for name, p in params.items()}
    log.info("resuming %s from step %d", run_dir.name, progress.step)
    return progress, best

