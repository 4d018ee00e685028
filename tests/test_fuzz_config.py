"""Fuzzing the config parser through the CLI (issue 12): train, analyze and report command lines with mutated
overrides (typos in keys, unknown groups, wrong types, huge and negative numbers, NaN strings, unbalanced
brackets and quotes, random regexes for lora.target_regex, random unicode). Every case ends in success or in
one ``lora-analysis <command>: error: ...`` line with exit 2 within a time bound, and a refused case leaves no
run folder (nor analysis, nor report) behind: never a traceback, a hang, or a partial output.

The train cases run a one-step run of a tiny BERT on 60 texts, so a case that is accepted ends at once; the
report cases name a layer the sweep lacks unless a mutation changes it (a report takes seconds to draw)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _tiny_models import peft_adapter
from bounds import hang_bound
from fabricate import shared_sweep
from tiny import tiny_overrides, write_tiny_csv

from lora_analysis import cli

CASES = {"train": 120, "analyze": 100, "report": 80}
SEEDS = {"train": 12, "analyze": 13, "report": 14}
TRAIN_KEYS = [
    "lora.r", "lora.alpha", "lora.dropout", "lora.init", "lora.init_stream", "lora.targets", "lora.layers",
    "lora.target_regex", "lora.budget", "lora.rank_pattern", "lora.rslora", "optim.lr", "optim.weight_decay",
    "optim.steps", "optim.batch_size", "optim.warmup_ratio", "optim.schedule", "optim.max_grad_norm",
    "optim.precision", "optim.eval_batch_size", "optim.checkpoint_every", "optim.log_every", "data.test_size",
    "data.train_size", "data.split_seed", "data.max_length", "data.text_column", "data.label_column",
    "data.shuffle_labels", "data.many_labels", "model.task", "model.revision", "method", "seed", "threads",
    "name", "device", "logger.kind", "progress",
]
ANALYZE_KEYS = [
    "subjects", "comparisons", "dw_side", "match_ignore", "random_seed", "rank_rtol", "w_tables", "w_directions",
    "w_max_elements", "intruders", "intruder_top_k", "intruder_threshold", "intruder_side", "workers",
    "progress", "data_path", "text_column", "max_length", "input_texts", "input_top", "input_dense_max",
    "geometry_moment", "geometry_draws", "base", "out",
]
REPORT_KEYS = ["layer", "out", "analyze", "sweep"]
GROUPS = ["model", "data", "lora", "optim", "logger", "experiment", "preset", "hydra/launcher", "hydra/sweeper"]
NUMBERS = ["0", "1", "2", "-1", "-7", "0.5", "-0.5", "1e308", "-1e308", "1e-320", "9" * 30, "-" + "9" * 30,
           "2147483648", "4294967296", "18446744073709551616", "nan", "NaN", "-nan", "inf", "-inf", "+inf", "1_000",
           "0x10", "1e3", "3.0", "1/2"]
WORDS = ["", "x", "abc", "true", "false", "null", "None", "q", "qv", "attn", "all", "q+v", "ffn_in", "fp32", "bf16",
         "auto", "lora", "full", "linear", "gaussian", "kaiming", "shared", "csv", "mlflow", "cpu", "cuda:7", "meta",
         "classification", "causal_lm", "left", "right", "A", "dW", "rank", "seed", "random", "covariance"]
BROKEN = ["[", "]", "[1,2", "[q,v", "q]", "{", "{a:1", "}", "'", '"', "'abc", 'abc"', "'a'b'", "${", "${oops}",
          "${lora.r}", "${oc.env:NOPE}", "${oc.decode:'[1'}", "[[[[[[[[", "((((", "\\", "a=b", "a,b,c", "1,2",
          "range(3)", "choice(1,2)", "glob(*)", "interval(0,1)", "[1,[2,[3]]]", "{a:{b:{c:1}}}", "[]", "{}", "''"]
# Values a key accepts, mixed in so that cases also reach the checks behind the parser (a layer the model
# lacks, a rank above a module's size, a regex that matches nothing).
PLAUSIBLE = {
    "lora.r": ["1", "3", "32", "33", "100000"], "lora.targets": ["q", "q+v", "[q,v]", "ffn", "qkv", "ffn_gate"],
    "lora.layers": ["[0]", "[1]", "[0,1]", "[2]", "[-1]", "[]"], "lora.budget": ["100", "r2@q", "r99@q", "1", "r0@q"],
    "lora.target_regex": [".*query", ".*dense", "nothing"], "lora.alpha": ["0.001", "16"], "lora.dropout": ["0.5"],
    "optim.lr": ["1e-2", "10"], "optim.batch_size": ["1", "1000"], "optim.log_every": ["100000"],
    "data.train_size": ["2", "100000"], "data.max_length": ["4", "128", "129"], "data.text_column": ["sentiment"],
    "data.label_column": ["review", "null"], "model.task": ["causal_lm"], "method": ["full"], "seed": ["4294967295"],
    "threads": ["1", "100000"], "data.shuffle_labels": ["true"], "optim.precision": ["fp32"], "logger.kind": ["csv"],
    "subjects": ["[A]", "[dW,B]", "[]"], "comparisons": ["[random]", "[]"], "w_directions": ["1", "null"],
    "w_max_elements": ["0", "1"], "intruder_top_k": ["1", "100000"], "workers": ["1", "64"], "random_seed": ["7"],
    "rank_rtol": ["0", "0.5"], "dw_side": ["left"], "base": ["/nonexistent", "."],
}
# Numbers at the edges of a numeric key's range, where a check written as ``x <= 0`` lets NaN through.
NUMERIC = {"lora.r", "lora.alpha", "lora.dropout", "lora.budget", "optim.lr", "optim.weight_decay", "optim.steps",
           "optim.batch_size", "optim.warmup_ratio", "optim.max_grad_norm", "optim.eval_batch_size",
           "optim.checkpoint_every", "optim.log_every", "data.test_size", "data.train_size", "data.split_seed",
           "data.max_length", "seed", "threads", "random_seed", "rank_rtol", "w_directions", "w_max_elements",
           "intruder_top_k", "intruder_threshold", "workers", "max_length", "input_texts", "input_top",
           "input_dense_max", "geometry_draws", "layer"}
EDGES = ["nan", "inf", "-inf", "-1", "0", "-0.0", "1e308", "1e-308", "2147483648"]
REGEX_ATOMS = ["(", ")", "[", "]", "{", "}", "*", "+", "?", "|", ".", "^", "$", "\\", "\\d", "\\w", "a-z", "{2,}",
               "query", "value", "dense", "encoder", "layer", ".*", "(?P<x>", "(?=", "(?<=", "\\1", "[^", "{99999}",
               "(?i)", "\\p{L}", "\\Q", "\\E", "(a*)*", "0", "_", "-"]


def _unicode(rng: np.random.Generator) -> str:
    pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x3FF), (0x4E00, 0x4E80), (0x200B, 0x202F), (0x1F600, 0x1F64F),
             (0xD800 - 16, 0xD7FF), (0xFFF0, 0xFFFF), (0x1, 0x1F)]
    chars = []
    for _ in range(int(rng.integers(1, 12))):
        low, high = pools[int(rng.integers(len(pools)))]
        chars.append(chr(int(rng.integers(low, high + 1))))
    return "".join(chars)


def _typo(key: str, rng: np.random.Generator) -> str:
    chars = list(key)
    where = int(rng.integers(len(chars)))
    kind = int(rng.integers(5))
    if kind == 0:
        del chars[where]
    elif kind == 1:
        chars.insert(where, chars[where])
    elif kind == 2 and where + 1 < len(chars):
        chars[where], chars[where + 1] = chars[where + 1], chars[where]
    elif kind == 3:
        return key.upper()
    else:
        return f"{key}.{_unicode(rng) if rng.random() < 0.3 else 'extra'}"
    return "".join(chars) or "x"


def _regex(rng: np.random.Generator) -> str:
    return "".join(str(rng.choice(REGEX_ATOMS)) for _ in range(int(rng.integers(1, 9))))


def _value(rng: np.random.Generator) -> str:
    pool = [NUMBERS, WORDS, BROKEN][int(rng.integers(3))] if rng.random() < 0.85 else None
    return _unicode(rng) if pool is None else str(rng.choice(pool))


def _quoted(value: str, rng: np.random.Generator) -> str:
    """Sometimes quoted for Hydra's grammar (so regexes and unicode reach the config whole)."""
    if rng.random() < 0.5 and "'" not in value:
        return f"'{value}'"
    return value


def _mutation(keys: list[str], rng: np.random.Generator) -> str:
    kind = int(rng.integers(8))
    key = str(rng.choice(keys))
    if key in PLAUSIBLE and rng.random() < 0.3:
        return f"{key}={rng.choice(PLAUSIBLE[key])}"
    if key in NUMERIC and rng.random() < 0.4:
        return f"{key}={rng.choice(EDGES)}"
    if kind == 0:
        return f"{_typo(key, rng)}={_value(rng)}"
    if kind == 1:  # an unknown group, or a known group with an unknown option
        group = str(rng.choice(GROUPS)) if rng.random() < 0.7 else _unicode(rng)
        return f"{group}={_value(rng) or 'nope'}"
    if kind == 2:  # appending, deleting, or a key under a leaf
        return str(rng.choice([f"+{key}={_value(rng)}", f"~{key}", f"++{key}={_value(rng)}", f"{key}.sub=1",
                               f"+{_typo(key, rng)}=1", f"{key}", f"={_value(rng)}", f"{key}=={_value(rng)}"]))
    if kind == 3 and "lora.target_regex" in keys:
        return f"lora.target_regex={_quoted(_regex(rng), rng)}"
    if kind == 4 and "lora.rank_pattern" in keys:
        entries = [f'"{_regex(rng)}": {rng.choice(NUMBERS + WORDS[:3])}' for _ in range(int(rng.integers(0, 3)))]
        return f"lora.rank_pattern={_quoted('{' + ', '.join(entries) + ('}' if rng.random() < 0.8 else ''), rng)}"
    if kind == 5:
        return f"{key}={_quoted(_unicode(rng), rng)}"
    return f"{key}={_quoted(_value(rng), rng)}"


def _safe(mutation: str) -> str:
    """Accepted values that would make a case long (a million steps) are no parser test: kept small."""
    key, _, value = mutation.partition("=")
    if key.lstrip("+~").strip() == "optim.steps":
        try:
            if float(value.strip("'")) > 3:
                return "optim.steps=3"
        except ValueError:
            pass
    return mutation


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".cache" not in p.parts}


def _one_line(command: str, code: int, err: str, what) -> None:
    lines = [line for line in err.splitlines()
             if line.strip() and ": note: " not in line and "warn" not in line.lower()]
    assert code in (0, 2), (what, code, err[-3000:])
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"lora-analysis {command}: error: "), (what, err[-3000:])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("fuzzcfg")
    return {"model": tiny[0], "csv": write_tiny_csv(root / "reviews.csv", rows=60),
            "adapter": peft_adapter("bert", root / "adapter", r=2),
            "sweep": shared_sweep(tmp_path_factory, layers=(1,), modules=("q",))}


def _run(command: str, argv: list[str], work: Path, capsys, what) -> int:
    """``work``: the folder whose files a refused case must leave as they were (the cwd: relative paths)."""
    before = _files(work)
    with hang_bound(60):
        code = cli.main([command, *argv])
    _one_line(command, code, capsys.readouterr().err, what)
    if code == 2:  # an output root (runs/, empty or with the token cache) may stay; no run or sweep folder, no file
        left = sorted(p for p in _files(work) - before
                      if not p.is_dir() or any(c.name != ".cache" for c in p.iterdir()))
        assert not left, (what, "a refused case left", left[:5])
    return code


@pytest.mark.parametrize("command", sorted(CASES), ids=lambda c: f"{c}-{CASES[c]}-cases")
def test_fuzzed_command_lines_end_in_success_or_one_line(command, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative out_dir or name lands here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(SEEDS[command])
    outcomes = {0: 0, 2: 0}
    for case in range(CASES[command]):
        work = tmp_path / f"c{case}"
        work.mkdir()
        if command == "train":
            base = [o for o in tiny_overrides(inputs["model"], inputs["csv"], work / "runs", steps=1)
                    if not o.startswith("data.test_size")] + ["data.test_size=8", "optim.checkpoint_every=0"]
            keys, head = TRAIN_KEYS, []
        elif command == "analyze":
            base, keys = [f"out={work / 'analysis'}", "progress=false", "input_stats=false"], ANALYZE_KEYS
            head = [str(inputs["adapter"])]
        else:
            sweep = shutil.copytree(inputs["sweep"], work / "sweep")
            # layer=5 is not in the sweep: a report (seconds to draw) is built only when a mutation sets layer=1
            base, keys, head = [f"out={work / 'report'}", "analyze=false", "layer=5"], REPORT_KEYS, [str(sweep)]
        mutations = [_safe(_mutation(keys, rng)) for _ in range(int(rng.integers(1, 4)))]
        code = _run(command, [*head, *base, *mutations], tmp_path, capsys, mutations)
        outcomes[code] += 1
        shutil.rmtree(work)
    print(f"fuzzed {CASES[command]} {command} command lines: {outcomes[0]} accepted, {outcomes[2]} refused in one line")
    assert outcomes[2] > CASES[command] // 3, outcomes  # most mutations are typos and bad values


# Each a traceback (or a crash, or two lines) the fuzz found, now one line: (command, override, the line says).
FOUND = [
    ("train", "model=1e308", "Config group override must be a string"),  # Hydra's own ValueError
    ("train", "lora.layers.extra={a:{b:1}}", "Unexpected type for root"),  # OmegaConf's AssertionError
    ("train", "lora.targets=inf", "lora.targets must be roles or presets"),  # and Hydra's "Error executing job"
    ("train", "threads=100000", "threads must be in [1, "),  # 100000 OpenMP threads: a segfault in torch
    ("train", "optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),  # AdamW's ValueError
    ("train", "lora.alpha=nan", "lora.alpha must be a finite number > 0, got nan"),  # a NaN run, left behind
    ("train", "optim.weight_decay=-inf", "optim.weight_decay must be a finite number >= 0"),  # AdamW's ValueError
    ("train", "optim.max_grad_norm=-1", "optim.max_grad_norm must be a finite number >= 0"),  # silently no clipping
    ("train", "data.split_seed=-1", "data.split_seed must be >= 0"),  # numpy's ValueError
    ("train", "optim.log_every=0", "optim.log_every must be >= 1"),  # ZeroDivisionError
    ("train", "optim.checkpoint_every=-1", "optim.checkpoint_every >= 0"),  # a checkpoint every step
    ("train", "lora.target_regex=''", "lora.target_regex is empty"),  # quietly trained the roles instead
    ("train", "device=meta", "device 'meta': expected auto, cpu, cuda"),  # autocast's RuntimeError
    ("train", "lora.layers=[]", "lora.layers=[] leaves no module to adapt"),  # PEFT's NoMatchingPeftModuleError
    ("analyze", "~nobody_here", "~nobody_here"),  # expanduser's RuntimeError (no such user), via is_hub_id
    ("analyze", "base='~nobody_here'", "base=~nobody_here: no such model directory"),  # the same, via base=
    ("report", "sweep='a\rb\u2028c'", "error: a\\rb\\u2028c "),  # one message, three lines
    ("analyze", "random_seed=-1", "random_seed must be >= 0"),  # numpy's ValueError
]


@pytest.mark.parametrize(("command", "override", "says"), FOUND, ids=[f"{c}:{o}" for c, o, _ in FOUND])
def test_what_the_fuzz_found_is_one_line(command, override, says, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if command == "train":
        argv = [o for o in tiny_overrides(inputs["model"], inputs["csv"], tmp_path / "runs", steps=1)
                if not o.startswith("data.test_size")] + ["data.test_size=8", override]
    elif command == "analyze":
        adapter = [] if override.startswith("~") else [str(inputs["adapter"])]  # a positional input of its own
        argv = [*adapter, f"out={tmp_path / 'analysis'}", "progress=false", "input_stats=false", override]
    else:
        argv = [f"out={tmp_path / 'report'}", override]
    with hang_bound(60):
        code = cli.main([command, *argv])
    err = capsys.readouterr().err
    assert code == 2 and says in err, err
    _one_line(command, code, err, override)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ".cache" not in p.parts], "a refused run left files"
