"""The README's commands are valid as written. Each ablation command parses, names cells of its experiment,
and every cell's first run composes a training config (a renamed key, an unknown experiment or a typo in an
override fails here, not after an hour of a user's sweep); one runs as written at a tiny size, as the tiny
ablation tests (test_tuned, test_halving) run the same command. Each report, recommend, across, analyze
and compare command composes its typed config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(tool: str) -> list[str]:
    """Every ``lora-analysis <tool> ...`` of the README's code blocks, continuation lines joined, comments cut."""
    lines = README.read_text(encoding="utf-8").splitlines()
    commands, current = [], None
    for line in lines:
        if current is None and not line.startswith(f"lora-analysis {tool} "):
            continue
        text = re.sub(r"\s+#.*$", "", line).rstrip()
        current = (current or "") + " " + text.rstrip("\\").strip()
        if not text.endswith("\\"):
            commands.append(current.strip())
            current = None
    return commands


ABLATE = readme_commands("ablate")


def test_the_readme_holds_its_ablation_commands():
    assert len(ABLATE) >= 10  # the protocol's, the recommendation check, the rank, rsLoRA and target ablations
    assert any("targets=[all]" in c and "name=rank_ablation_attn_ffn" in c for c in ABLATE)
    assert any("target_ablation_roles" in c for c in ABLATE)


@pytest.mark.parametrize("command", ABLATE)
def test_each_readme_ablation_command_plans_its_runs(command, tmp_path, monkeypatch):
    from lora_analysis.cli import ablate
    from lora_analysis.train.sweep import planned_config, run_name

    monkeypatch.chdir(tmp_path)
    Path("ranks.json").write_text('{"query": 2, "value": 4}')  # as recommend writes it (the README's check)
    argv = shlex.split(command)[2:]
    cfg, train = ablate.parse(argv)
    common = [f"experiment={cfg.experiment}", *train, f"out_dir={tmp_path / 'runs'}", "name=readme"]
    cells = ablate.cells(cfg) + ([["method=full"]] if cfg.full_lrs else [])
    assert cells, command
    for cell in cells:
        overrides = [*common, *cell, f"optim.lr={(cfg.full_lrs if cell == ['method=full'] else cfg.lrs)[0]}",
                     "seed=0"]
        config = planned_config(overrides, run_name([*cell, "seed=0"]))
        values = dict(o.split("=", 1) for o in cell)
        if "lora.targets" in values:
            assert config["lora"]["targets"] == values["lora.targets"], command
        if "lora.r" in values:
            assert config["lora"]["r"] == int(values["lora.r"]), command


@pytest.mark.slow  # about 25 tiny runs (search, grid extension, seeds), an analysis and a report: about a minute
def test_a_readme_ablation_command_runs_as_written_at_a_tiny_size(tiny, tmp_path, monkeypatch):
    """The README's first target-ablation command, as written, with only the tiny model, data and step count
    added: it searches, extends, seeds and reports every cell it names."""
    from tiny import tiny_overrides

    from lora_analysis import cli
    from lora_analysis.derive import tuned
    from lora_analysis.layout import SweepDir

    (command,) = [c for c in ABLATE if "'targets=[q,v,q+v]'" in c]
    model, csv = tiny
    monkeypatch.setattr(tuned, "COLLAPSE_TOLERANCE", -1.0)  # six tiny steps stay at the majority class
    tiny_settings = [o for o in tiny_overrides(model, csv, tmp_path / "runs", 6) if not o.startswith("lora.r=")]
    assert cli.main([*shlex.split(command)[1:], *tiny_settings, "workers=1"]) == 0
    runs = SweepDir(tmp_path / "runs" / "target_ablation_roles").read_table()
    assert set(runs["lora.targets"]) == {"q", "v", "q+v"}
    for targets, cell in runs.groupby("lora.targets"):
        seeded = cell[cell["seed"] > 0]
        assert sorted(seeded["seed"]) == [1, 2] and seeded["optim.lr"].nunique() == 1, targets
        assert len(cell[cell["seed"] == 0]) >= 4  # the default grid, and any extension past its ends
    assert (tmp_path / "runs" / "target_ablation_roles" / "report" / "report.md").is_file()


# the other commands of the README with a typed config: (command, its config, its positional key, many)
_COMPOSED = (("report", "sweep", False), ("recommend", "sweep", False), ("across", "sweeps", True),
             ("analyze", "inputs", True), ("compare", "inputs", True))
OTHERS = [(tool, key, many, command) for tool, key, many in _COMPOSED for command in readme_commands(tool)]


def test_the_readme_holds_its_other_commands():
    assert {tool for tool, *_ in OTHERS} == {tool for tool, *_ in _COMPOSED}


@pytest.mark.parametrize("tool,key,many,command", OTHERS, ids=[c for *_, c in OTHERS])
def test_each_readme_command_composes_its_config(tool, key, many, command):
    """Each parses to its command's typed config as written: its keys exist, its values have their types (the
    paths it names are the README reader's, not checked here)."""
    from lora_analysis.hydra_compose import compose, split_args, to_settings

    overrides, wants_help = split_args(shlex.split(command)[2:], key, many=many)
    assert not wants_help
    to_settings(compose(tool, overrides))
