"""Every YAML in conf/ composes; run names; bad input gives one line, exit 2 and no leftovers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tiny import build_tiny_model, tiny_overrides, write_tiny_csv

from lora_analysis import cli
from lora_analysis.hydra_compose import compose, conf_dir
from lora_analysis.train.sweep import run_name, settings_from

GROUPS = ("model", "data", "lora", "optim")
REQUIRED = {"model/hf": ["model.name_or_path=/some/model"], "data/file": ["data.path=/some/file.csv"]}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose("train", [f"{group}={option}", *REQUIRED.get(f"{group}/{option}", [])])
    settings_from(cfg, "x")  # builds the typed config and runs every __post_init__ check


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose("train", [f"experiment={experiment}"])
    settings_from(cfg, "x")


@pytest.mark.parametrize("launcher", group_options("hydra/launcher") + ["joblib", "submitit_local", "submitit_slurm"])
def test_every_launcher_composes(launcher):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("train", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "_target_" in cfg.hydra.launcher


def test_run_names_come_from_meaningful_overrides():
    assert run_name(["seed=0", "lora.r=8", "lora.targets=attn"]) == "r8-seed0-attn"
    assert run_name(["lora.targets=attn", "lora.r=8", "seed=0"]) == "r8-seed0-attn"
    assert run_name(["method=full", "seed=1", "device=cpu", "name=x"]) == "full-seed1"
    assert run_name(["method=lora", "lora.targets=[q,v]"]) == "q+v"
    assert run_name(["optim.lr=0.003", "hydra/launcher=local"]) == "lr0.003"
    assert run_name([]) == "default"
    assert len(run_name([f"data.path=/{'x' * 300}.csv"])) <= 100


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model("bert", root / "bert"), write_tiny_csv(root / "reviews.csv"), root


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli.main(["train", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def bad_cases(tiny, tmp_path):
    model, csv, root = tiny
    empty = root / "empty.csv"
    pd.DataFrame({"review": [], "sentiment": []}).to_csv(empty, index=False)
    single = root / "single.csv"
    pd.DataFrame({"review": [f"text {i}" for i in range(80)], "sentiment": ["pos"] * 80}).to_csv(single, index=False)
    return {
        "unknown model path": (["model.name_or_path=/no/such/model"], "not a transformers model directory"),
        "role the architecture lacks": (
            ["lora.targets=ffn_gate"], "no ffn_gate role (roles: q, k, v, o, ffn_in, ffn_out)"
        ),
        "unknown role": (["lora.targets=mlp"], "unknown target 'mlp'"),
        "r <= 0": (["lora.r=0"], "lora.r must be an integer >= 1"),
        "r above min(in, out)": (["lora.r=40"], "exceeds min(in, out) = 32"),
        "empty data": ([f"data.path={empty}"], "no rows with a non-empty 'review'"),
        "missing column": (["data.text_column=body"], "no column 'body'"),
        "single class": ([f"data.path={single}"], "single class 'pos'"),
        "missing file": (["data.path=/no/such.csv"], "data file not found"),
        "config typo": (["lora.rr=4"], "lora.rr"),
        "bad choice": (["lora.init=xavier"], "xavier"),
        "bad device": (["device=tpu9"], "tpu9"),
    }


CASES = ["unknown model path", "role the architecture lacks", "unknown role", "r <= 0", "r above min(in, out)",
         "empty data", "missing column", "single class", "missing file", "config typo", "bad choice", "bad device"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_no_output(tiny, tmp_path, capsys, case):
    model, csv, _ = tiny
    args, expected = bad_cases(tiny, tmp_path)[case]
    out = tmp_path / "runs"
    code, err = run_cli([*tiny_overrides(model, csv, out), *args], capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("lora-analysis train: error: "), err
    assert expected in err
    leftovers = [p for p in Path(out).rglob("*") if p.is_file() and ".cache" not in p.parts]
    assert leftovers == []
    folders = [p for p in Path(out).rglob("*") if p.is_dir() and ".cache" not in p.parts]
    assert folders == []  # not even the empty run and sweep folders Hydra made


def test_public_api_resolves():
    import lora_analysis

    assert all(getattr(lora_analysis, name) is not None for name in lora_analysis.__all__)


def test_shuffled_label_runs_are_named_by_what_they_are():
    assert run_name(["lora.r=8", "seed=0", "data.shuffle_labels=true"]) == "r8-seed0-shuffled"
    assert run_name(["lora.r=8", "seed=0", "data.shuffle_labels=false"]) == "r8-seed0"
    swept = ["lora.r", "data.shuffle_labels"]
    assert run_name(["lora.r=8", "seed=0", "data.shuffle_labels=True"], swept) == "r8-shuffled"


def test_a_run_saved_before_shuffle_labels_existed_reads_as_unshuffled(tmp_path):
    import yaml

    from lora_analysis.layout import RunDir

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "data": {"path": "x.csv"}}))
    assert RunDir(tmp_path).load_config()["data"]["shuffle_labels"] is False


def test_a_saved_config_that_is_not_text_is_one_clear_error(tmp_path):
    from lora_analysis.errors import LoraAnalysisError
    from lora_analysis.layout import RunDir

    (tmp_path / "config.yaml").write_bytes(b"\xff\xfe\x00garbage\x9c")
    with pytest.raises(LoraAnalysisError, match=r"config\.yaml: cannot be read as UTF-8 text") as caught:
        RunDir(tmp_path).load_config()
    assert "\n" not in str(caught.value)
