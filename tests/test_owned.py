"""The toolkit deletes or replaces only files it wrote itself (issue 22): a user's file put in every folder a
command writes to survives that command, on success and on failure, and a folder of the user's is refused
in one line before any work."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny import tiny_overrides

from lora_analysis import cli
from lora_analysis.cli.reproduce import publish
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import ReportDir, RunDir, SweepDir
from lora_analysis.owned import check_ours, foreign_entries, remove_own

# a user's file may carry one of the toolkit's names (report.html), in a folder of theirs
USER_FILES = {"thesis.tex": "\\documentclass{article} my thesis", "sub/data.csv": "a,b\n1,2\n",
              "report.html": "<p>my own page</p>"}


def plant(folder, files=None):
    """Put the user's files into ``folder`` (made if missing); returns what must survive."""
    files = files or USER_FILES
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return {folder / name: text for name, text in files.items()}


def intact(planted):
    for path, text in planted.items():
        assert path.read_text() == text, path


def refused(capsys, command, folder):
    """The one error line of ``command``: it names the folder and what it holds."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if f"lora-analysis {command}: error:" in x]
    assert str(folder) in line and "did not write" in line, line
    return line


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One finished tiny run in a sweep: ``(sweep, run)``."""
    root = tmp_path_factory.mktemp("owned")
    model, csv = tiny
    assert cli.main(["train", *tiny_overrides(model, csv, root / "runs", 3), "name=s"]) == 0
    sweep = SweepDir(root / "runs" / "s")
    (run,) = sweep.finished_runs()
    return sweep, run


@pytest.mark.parametrize("data", ["good", "missing"])
def test_train_into_a_folder_of_the_users_is_refused_and_nothing_is_touched(tiny, tmp_path, capsys, data):
    model, csv = tiny
    thesis = tmp_path / "x" / "thesis"
    planted = plant(thesis)
    args = [*tiny_overrides(model, csv, tmp_path / "runs"), f"hydra.run.dir={thesis}"]
    if data == "missing":
        args.append(f"data.path={tmp_path / 'x' / 'missing.csv'}")
    assert cli.main(["train", *args]) == 2
    line = refused(capsys, "train", thesis)
    assert "not used as a run folder" in line and "(report.html, sub, thesis.tex)" in line
    intact(planted)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["thesis"]  # no runs.parquet, no lock above it


def test_a_sweep_folder_holding_a_users_file_is_refused(tiny, tmp_path, capsys):
    model, csv = tiny
    planted = plant(tmp_path / "runs" / "s", {"notes.md": "mine"})
    assert cli.main(["train", *tiny_overrides(model, csv, tmp_path / "runs"), "name=s"]) == 2
    assert "not used as a sweep folder" in refused(capsys, "train", tmp_path / "runs" / "s")
    intact(planted)
    assert sorted(p.name for p in (tmp_path / "runs" / "s").iterdir()) == ["notes.md"]


@pytest.mark.parametrize("outcome", ["success", "missing data", "diverged"])
def test_a_users_file_beside_the_sweep_survives_training(tiny, tmp_path, outcome):
    model, csv = tiny
    planted = plant(tmp_path / "runs")  # out_dir= is the user's folder; the sweep is a new folder in it
    extra = {"success": [], "missing data": [f"data.path={tmp_path / 'no.csv'}"],
             "diverged": ["optim.lr=1e30", "optim.max_grad_norm=0"]}[outcome]
    status = cli.main(["train", *tiny_overrides(model, csv, tmp_path / "runs"), "name=s", *extra])
    assert status == (0 if outcome == "success" else 2)
    intact(planted)


def test_a_relaunch_with_another_config_removes_only_the_trainers_files(trained, tmp_path):
    _, run = trained
    copy = RunDir(shutil.copytree(run.path, tmp_path / "r"))
    copy.done_path.unlink()
    (copy.path / "tensorboard").mkdir()
    (copy.path / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    (copy.path / ".config.yaml.0123456789abcdef0123456789abcdef.tmp").write_text("torn")
    (copy.path / RunDir.LOCK).write_text("1\n")
    planted = plant(copy.path, {"thesis.tex": "mine", "README.md": "# my notes, not PEFT's card"})
    assert {p.name for p in foreign_entries(copy.path, RunDir.owns)} == {"thesis.tex", "README.md"}
    remove_own(copy.path, RunDir.owns, keep=lambda entry: entry.name == RunDir.LOCK)
    intact(planted)
    assert sorted(p.name for p in copy.path.iterdir()) == [RunDir.LOCK, "README.md", "thesis.tex"]


def test_what_another_sweep_removes_while_it_is_judged_is_not_foreign(tmp_path):
    """Two sweeps into one folder: between one's listing of a folder and its judging an entry, the other
    releases a run's lock (the file goes) or drops a refused run's empty folder. Judged foreign, that
    refused the sweep (exit 2, CI of stop 33); a user's file beside it still is."""
    sweep = tmp_path / "sweep"
    (sweep / "r1").mkdir(parents=True)
    (sweep / "r2").mkdir()
    (sweep / "r1" / RunDir.LOCK).write_text("1\n")
    (sweep / "r1" / "thesis.tex").write_text("mine")

    def released_meanwhile(entry):
        if entry.name == RunDir.LOCK:
            entry.unlink()
        return RunDir.owns(entry)

    assert [p.name for p in foreign_entries(sweep / "r1", released_meanwhile)] == ["thesis.tex"]
    (sweep / "r1" / "thesis.tex").unlink()
    (sweep / "r1" / RunDir.LOCK).write_text("1\n")
    assert foreign_entries(sweep / "r1", released_meanwhile) == []

    def dropped_meanwhile(entry):
        if entry.name == "r2":
            entry.rmdir()
        return SweepDir.owns(entry)

    check_ours(sweep, "sweep", dropped_meanwhile)
    assert not (sweep / "r2").exists()


def test_peft_model_card_is_the_trainers_and_a_symlink_never_is(trained, tmp_path):
    _, run = trained
    assert (run.path / "README.md").is_file() and RunDir.owns(run.path / "README.md")
    assert not foreign_entries(run.path, RunDir.owns)
    (tmp_path / "target.txt").write_text("mine")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / RunDir.METRICS).symlink_to(tmp_path / "target.txt")
    with pytest.raises(LoraAnalysisError, match=r"holds files lora-analysis did not write \(metrics.json\)"):
        check_ours(tmp_path / "r", "run", RunDir.owns)
    with pytest.raises(LoraAnalysisError, match="is a file, not a run folder"):
        check_ours(tmp_path / "target.txt", "run", RunDir.owns)


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_analysis_and_compare_refuse_an_out_folder_of_the_users(trained, tmp_path, capsys, command):
    sweep, run = trained
    out = tmp_path / "out"
    inner = out / (SweepDir.ANALYSIS if command == "compare" else "")
    planted = plant(inner)
    inputs = [str(sweep.path)] if command == "analyze" else [str(run.path), str(run.path)]
    assert cli.main([command, *inputs, f"out={out}", "progress=false"]) == 2
    refused(capsys, command, inner)
    intact(planted)


def test_compare_leaves_a_users_file_in_its_out_folder(trained, tmp_path, capsys):
    sweep, run = trained
    other = tmp_path / "other"
    shutil.copytree(run.path, other)
    planted = plant(tmp_path / "out", {"notes.md": "mine"})
    assert cli.main(["compare", str(run.path), str(other), f"out={tmp_path / 'out'}", "progress=false"]) == 0
    intact(planted)
    planted = plant(tmp_path / "out" / SweepDir.REPORT, {"slides.key": "mine"})
    assert cli.main(["compare", str(run.path), str(other), f"out={tmp_path / 'out'}", "progress=false"]) == 2
    refused(capsys, "compare", tmp_path / "out" / SweepDir.REPORT)
    intact(planted)


def test_report_refuses_an_out_folder_of_the_users_before_any_analysis(trained, tmp_path, capsys):
    sweep, _ = trained
    copy = SweepDir(shutil.copytree(sweep.path, tmp_path / "sweep"))
    shutil.rmtree(copy.analysis.path, ignore_errors=True)
    planted = plant(tmp_path / "paper-figures")
    assert cli.main(["report", str(copy.path), f"out={tmp_path / 'paper-figures'}"]) == 2
    refused(capsys, "report", tmp_path / "paper-figures")
    intact(planted)
    assert not copy.analysis.path.exists()  # refused first, not after minutes of analysis


def test_report_and_analysis_inside_a_sweep_never_touch_a_users_file(trained, tmp_path, capsys):
    sweep, _ = trained
    copy = SweepDir(shutil.copytree(sweep.path, tmp_path / "sweep"))
    planted = plant(copy.report_path, {"draft.md": "mine"})
    assert cli.main(["report", str(copy.path)]) == 2
    refused(capsys, "report", copy.report_path)
    intact(planted)


def test_reproduce_refuses_a_figures_folder_of_the_users_before_training(tmp_path, capsys):
    planted = plant(tmp_path / "figs")
    assert cli.main(["reproduce", "preset=quick", f"out_dir={tmp_path / 'runs'}", f"figures={tmp_path / 'figs'}"]) == 2
    refused(capsys, "reproduce", tmp_path / "figs")
    intact(planted)
    assert not (tmp_path / "runs").exists()


def test_publish_replaces_its_own_files_and_drops_only_its_stale_figures(tmp_path):
    source = ReportDir(tmp_path / "report")
    plant(source.path, {"report.html": "new", "report.md": "new", "figures/a.png": "A", "figures/a.pdf": "A"})
    target = ReportDir(tmp_path / "published")
    plant(target.path, {"report.html": "old", "runs.csv": "old", "figures/a.png": "old", "figures/stale.png": "x"})
    publish(source.path, target.path)
    assert sorted(p.name for p in target.figures_path.iterdir()) == ["a.pdf", "a.png"]
    assert target.html_path.read_text() == "new" and target.runs_csv_path.read_text() == "old"
    planted = plant(target.figures_path, {"photo.jpg": "mine"})
    with pytest.raises(LoraAnalysisError, match="not used as a figures folder"):
        publish(source.path, target.path)
    intact(planted)
    assert (target.figures_path / "a.png").read_text() == "A"


def test_recommend_never_replaces_a_file_that_is_not_a_rank_pattern(trained, tmp_path, capsys):
    sweep, _ = trained
    planted = plant(tmp_path, {"thesis.tex": "mine"})
    assert cli.main(["recommend", str(sweep.path), f"rank_pattern={tmp_path / 'thesis.tex'}"]) == 2
    err = capsys.readouterr().err
    assert "is not a rank pattern" in err and "not replaced" in err and "Traceback" not in err
    intact(planted)
    (tmp_path / "ranks.json").write_text(json.dumps({"q": 2}))  # one recommend wrote may be written again
    cli.main(["recommend", str(sweep.path), f"rank_pattern={tmp_path / 'ranks.json'}"])  # one run: nothing to pair
    assert "not a rank pattern" not in capsys.readouterr().err
