"""User regexes matched in linear time (issue 12, item 1), with PEFT's meaning, tested against PEFT."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest
from _tiny_models import peft_adapter
from bounds import hang_bound
from peft.utils.other import get_pattern_key
from tiny import tiny_overrides

from lora_analysis import cli, patterns
from lora_analysis.analysis.adapters import Adapter
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.targets import pattern_key

EVIL = "([a-z.0-9_]*)*X"  # exponential in Python's re on any path without an X
PIECES = ["model", "layers", "0", "1", "11", "self_attn", "q_proj", "v_proj", "mlp", "down_proj", "bert",
          "encoder", "layer", "attention", "self", "query", "value", "output", "dense", "h", "c_attn"]
TOKENS = [*PIECES, ".", r"\.", ".*", r"\d+", "[0-9]", "[a-z_]+", "|", "(", ")", "?", "+", "^", "$", "_", "1?"]


def random_paths(rng: random.Random, n: int) -> list[str]:
    paths = [".".join(rng.choice(PIECES) for _ in range(rng.randint(1, 7))) for _ in range(n)]
    return paths + ["model.layers.1.mlp.down_proj\n", "", "a..b", ".query"]


def random_patterns(rng: random.Random, n: int) -> list[str]:
    """Random short patterns that Python's re compiles (the ones PEFT could be given)."""
    found = []
    while len(found) < n:
        pattern = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 6)))
        try:
            re.compile(rf"(.*\.)?({pattern})$")
        except re.error:
            continue
        try:
            patterns.check_key(pattern, "test")
        except LoraAnalysisError as error:  # possessive quantifiers (a++): refused, and saying so
            assert "cannot be matched in linear time" in str(error)
            continue
        found.append(pattern)
    return found


def valid(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def test_pattern_key_is_peft_get_pattern_key_on_random_keys_and_paths():
    rng = random.Random(0)
    paths, keys = random_paths(rng, 300), random_patterns(rng, 300)
    cases = 0
    with hang_bound():
        for _ in range(200):
            chosen = rng.sample(keys, rng.randint(1, 4))
            for path in rng.sample(paths, 30):
                assert pattern_key(chosen, path) == get_pattern_key(chosen, path), (chosen, path)
                cases += 1
        for key in keys:
            if not valid(key):  # valid inside PEFT's (...) but not alone: ")a(b"
                continue
            for path in paths[:60]:
                assert patterns.fullmatch(key, path, "test") == bool(re.fullmatch(key, path)), (key, path)
                cases += 1
    print(f"{cases} pattern/path cases agree with PEFT and re.fullmatch")
    assert cases > 10_000


def test_a_crafted_pattern_in_an_adapter_config_is_matched_in_linear_time(tmp_path):
    folder = peft_adapter("llama", tmp_path / "evil", r=2)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["alpha_pattern"] = {EVIL: 4}
    config["rank_pattern"] = {EVIL: 2}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with hang_bound(120):
        adapter = Adapter(folder)
        assert all(m.alpha == config["lora_alpha"] for m in adapter.modules.values())  # X matches nothing


@pytest.mark.parametrize("key, message", [
    (r"(a)\1", "cannot be matched in linear time"),
    ("(?=q)query", "cannot be matched in linear time"),
    ("(unclosed", "is not a valid regular expression"),
])
def test_patterns_re2_cannot_run_or_invalid_ones_are_one_line_naming_pattern_and_source(tmp_path, key, message):
    folder = tmp_path / "a"
    shutil.copytree(peft_adapter("llama", tmp_path / "src", r=2), folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["rank_pattern"] = {key: 2}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LoraAnalysisError) as caught:
        Adapter(folder)
    text = str(caught.value)
    assert message in text and repr(key) in text and "adapter_config.json rank_pattern" in text
    assert "\n" not in text


@pytest.mark.parametrize("regex, message", [
    ("(unclosed", "is not a valid regular expression"),
    (EVIL, "matches no module"),
    (r"(.)\1", "cannot be matched in linear time"),
])
def test_target_regex_errors_are_one_line_and_leave_no_run_folder(tiny, tmp_path, capsys, regex, message):
    model, csv = tiny
    with hang_bound(120):
        code = cli.main(["train", *tiny_overrides(model, csv, tmp_path / "runs", 2), f"lora.target_regex='{regex}'"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lora-analysis train: error:") and message in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_training_hands_peft_escaped_paths_not_the_users_keys(tiny, tmp_path):
    from lora_analysis.train.sweep import run_overrides

    model, csv = tiny
    spec = json.dumps({r"layer\.[0-9]+\.attention\.self\.query": 3})
    run_dir, _ = run_overrides([*tiny_overrides(model, csv, tmp_path / "runs", 2), f"lora.rank_pattern='{spec}'"])
    saved = json.loads((run_dir / "adapter_config.json").read_text())["rank_pattern"]
    assert saved and all(rank == 3 and key.endswith(r"attention\.self\.query") for key, rank in saved.items())
    assert {m.r for m in Adapter(run_dir).modules.values() if m.path.endswith("query")} == {3}
