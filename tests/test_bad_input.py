"""Bad input that used to end in a traceback (issue 12, items 5 and 7): one line and exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from _tiny_models import peft_adapter
from safetensors.torch import load_file
from tiny import tiny_overrides

from lora_analysis import cli
from lora_analysis.layout import ADAPTER_WEIGHTS, RunDir


def train(tiny, out, *extra):
    model, csv = tiny
    return cli.main(["train", *tiny_overrides(model, csv, out, 2), *extra])


def one_line(capsys, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"lora-analysis {command}: error: "), err
    return err[0]


@pytest.mark.parametrize("extra, message", [
    (["seed=-1"], "seed must be an integer in [0, 2**32)"),
    (["data.max_length=100000"], "data.max_length=100000 exceeds the model's"),
    (["name=../x"], "name must be a plain folder name"),
    (["lora.target_regex='(unclosed'"], "is not a valid regular expression"),
    (["+optim.stepz=3"], "config: unknown key 'optim.stepz' (did you mean 'optim.steps'?)"),  # `+` adds keys
    (["+seed_=1"], "config: unknown key 'seed_' (did you mean 'seed'?)"),
    (["optim.stps=3"], "Key 'stps' not in 'OptimConfig' (did you mean 'optim.steps'?)"),
    (["lora.rank=8"], "(did you mean 'lora.r'?)"),  # PEFT's and the Trainer's names point at ours
    (["optim.learning_rate=1e-3"], "(did you mean 'optim.lr'?)"),
    (["logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9"], "no MLflow server answers there"),
    (["logger=mlflow", "logger.tracking_uri=foo://bar"], "MLflow cannot use it"),
])
def test_bad_train_settings_are_one_line_and_leave_nothing(tiny, tmp_path, capsys, extra, message):
    assert train(tiny, tmp_path / "runs", *extra) == 2
    assert message in one_line(capsys, "train")
    left = [p for p in tmp_path.rglob("*") if p.name in (RunDir.CONFIG, RunDir.INIT)]
    assert left == [] and not (tmp_path / "x").exists()


def test_out_dir_that_is_a_file_is_one_line(tiny, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    assert train(tiny, tmp_path / "afile") == 2
    assert "afile" in one_line(capsys, "train")


@pytest.fixture
def adapter(tmp_path):
    return shutil.copytree(peft_adapter("bert", tmp_path / "src", r=2), tmp_path / "adapter")


@pytest.mark.parametrize("out", ["afile", "afile/below"])
def test_analyze_out_a_file_is_refused_before_the_analysis(adapter, tmp_path, capsys, monkeypatch, out):
    (tmp_path / "afile").write_text("x")
    import lora_analysis.cli.analyze as analyze

    monkeypatch.setattr(analyze, "analysis_with_notes", lambda *a: pytest.fail("the analysis ran first"))
    assert cli.main(["analyze", str(adapter), f"out={tmp_path / out}"]) == 2
    assert str(tmp_path / "afile") in one_line(capsys, "analyze")


@pytest.mark.parametrize("command, hint", [
    ("analyze", " (did you mean 'subjects'?)"), ("report", ""), ("recommend", " (did you mean 'subject'?)"),
])
def test_a_key_added_with_plus_that_no_schema_has_is_refused(adapter, tmp_path, capsys, command, hint):
    """Hydra's ``+key=value`` adds a key even to a structured config: it would run, and nothing would read it."""
    before = sorted(tmp_path.rglob("*"))
    assert cli.main([command, str(adapter), "+subjets=[A]"]) == 2
    assert one_line(capsys, command).endswith("config: unknown key 'subjets'" + hint)
    assert sorted(tmp_path.rglob("*")) == before  # nothing analysed or written


def test_a_bad_value_for_a_known_key_suggests_no_other_key(adapter, tmp_path, capsys):
    assert cli.main(["analyze", str(adapter), "workers=many"]) == 2
    assert "did you mean" not in one_line(capsys, "analyze")


def test_recommend_rank_pattern_a_folder_is_refused_first(sweep, tmp_path, capsys, monkeypatch):
    import lora_analysis.cli.recommend as recommend

    monkeypatch.setattr(recommend, "ensure_analysis", lambda *a: pytest.fail("analysed first"))
    assert cli.main(["recommend", str(sweep), f"rank_pattern={tmp_path}"]) == 2
    assert "expected a file path" in one_line(capsys, "recommend")


@pytest.mark.parametrize("change, message", [
    ({"lora_alpha": "eight"}, "lora_alpha must be a finite number, got 'eight'"),
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"r": True}, "r must be an integer >= 1, got True"),
    ({"rank_pattern": ["query"]}, "rank_pattern must be a JSON object"),
    ({"alpha_pattern": {"query": None}}, "alpha_pattern['query'] must be a finite number"),
])
def test_bad_numbers_in_an_adapter_config_are_one_line(adapter, tmp_path, capsys, change, message):
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    assert cli.main(["analyze", str(adapter), f"out={tmp_path / 'out'}", "progress=false"]) == 2
    assert message in one_line(capsys, "analyze")


def test_a_run_config_that_is_a_yaml_list_is_one_line(tiny, tmp_path, capsys):
    assert train(tiny, tmp_path / "runs", "name=s") == 0
    (run,) = [p for p in (tmp_path / "runs" / "s").iterdir() if p.is_dir()]
    (run / RunDir.CONFIG).write_text(yaml.safe_dump(["a", "list"]))
    capsys.readouterr()
    assert cli.main(["analyze", str(run.parent), "progress=false"]) == 2
    assert "expected a mapping of config keys, got a list" in one_line(capsys, "analyze")


def test_a_truncated_checkpoint_is_discarded_and_the_run_starts_again(tiny, tmp_path, capsys):
    assert train(tiny, tmp_path / "runs", "name=s") == 0
    (run,) = [RunDir(p) for p in (tmp_path / "runs" / "s").iterdir() if p.is_dir()]
    first = load_file(str(run.path / ADAPTER_WEIGHTS))
    run.done_path.unlink()  # as if killed after a checkpoint, which was cut short
    run.checkpoint_path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    assert train(tiny, tmp_path / "runs", "name=s") == 0
    assert "discarded an unreadable checkpoint.safetensors; starting the run again" in capsys.readouterr().out
    again = load_file(str(run.path / ADAPTER_WEIGHTS))
    assert run.is_done() and not run.checkpoint_path.exists()
    assert all((first[k] == again[k]).all() for k in first)  # the same run, trained from the start


def test_report_markdown_makes_html_in_user_strings_inert():
    from lora_analysis.show.document import Bullets, Paragraph, md_safe

    assert md_safe("sweep <svg onload=alert(1)> & `r<8`") == "sweep &lt;svg onload=alert(1)&gt; &amp; `r<8`"
    assert "<svg" not in Paragraph("run <svg onload=x>").markdown()
    assert "<img" not in Bullets(("a <img src=x onerror=y>",)).markdown()


def test_an_adapter_path_with_an_equals_sign_is_a_path(adapter, tmp_path, capsys):
    odd = shutil.copytree(adapter, tmp_path / "lr=1e-3" / "adapter")
    assert cli.main(["analyze", str(odd), f"out={tmp_path / 'out'}", "progress=false", "input_stats=false"]) == 0
    assert (tmp_path / "out" / "analysis.json").is_file()


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_one_folder_given_twice_is_named(adapter, capsys, command):
    assert cli.main([command, str(adapter), f"{adapter}/", "progress=false"]) == 2
    assert f"the same run or adapter folder given more than once: {adapter}" in one_line(capsys, command)


@pytest.mark.parametrize("command, override, expected", [
    ("train", "lora.r=4,8", "'lora.r=4,8' (a list: lora.r=[4,8]; one string: lora.r='4,8'; a sweep over it: add -m)"),
    ("analyze", "subjects=A,B", "'subjects=A,B' (a list: subjects=[A,B]; one string: subjects='A,B')"),
])
def test_a_comma_list_without_brackets_says_the_ways_out(adapter, capsys, command, override, expected):
    """Hydra's answer is three lines (a list, a quoted string, a sweep); one line keeps all of them."""
    args = [override] if command == "train" else [str(adapter), override]
    assert cli.main([command, *args]) == 2
    assert one_line(capsys, command).endswith("config: Ambiguous value for argument " + expected)


def test_a_mistyped_command_names_the_nearest(capsys):
    assert cli.main(["analyse", "x"]) == 2
    assert "unknown command 'analyse' (did you mean 'analyze'?)" in capsys.readouterr().err


def test_a_checkpoint_of_another_config_is_discarded_and_the_run_starts_again(tiny, tmp_path, monkeypatch, capsys):
    from lora_analysis.train import trainer

    real_save = trainer._save_checkpoint

    def save_then_stop(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cli_main_raising(tiny, tmp_path / "other", "lora.r=4", "optim.checkpoint_every=1")
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)
    (foreign,) = (tmp_path / "other").rglob(RunDir.CHECKPOINT)
    assert train(tiny, tmp_path / "runs", "name=s") == 0
    (run,) = [RunDir(p) for p in (tmp_path / "runs" / "s").iterdir() if p.is_dir()]
    first = load_file(str(run.path / ADAPTER_WEIGHTS))
    run.done_path.unlink()
    shutil.copy(foreign, run.checkpoint_path)  # r=4 tensors where r=2 ones belong
    capsys.readouterr()
    assert train(tiny, tmp_path / "runs", "name=s") == 0
    assert "written for another config" in capsys.readouterr().out
    again = load_file(str(run.path / ADAPTER_WEIGHTS))
    assert run.is_done() and all((first[k] == again[k]).all() for k in first)


def cli_main_raising(tiny, out, *extra):
    """``train`` in this process with a KeyboardInterrupt let through (cli.main turns it into 130)."""
    from lora_analysis.train.sweep import run_overrides

    model, csv = tiny
    return run_overrides([*tiny_overrides(model, csv, out, 2), *extra])


def test_a_finished_run_whose_adapter_was_deleted_is_trained_again(tiny, tmp_path, capsys):
    assert train(tiny, tmp_path / "runs", "name=s") == 0
    (run,) = [RunDir(p) for p in (tmp_path / "runs" / "s").iterdir() if p.is_dir()]
    (run.path / ADAPTER_WEIGHTS).unlink()
    capsys.readouterr()
    assert train(tiny, tmp_path / "runs", "name=s") == 0
    assert "its adapter files are missing; training the run again" in capsys.readouterr().out
    assert run.is_done() and (run.path / ADAPTER_WEIGHTS).is_file()
    assert cli.main(["report", str(run.path.parent)]) == 0
