"""The report of a fabricated sweep: sections, computed findings, self-contained HTML, Markdown links, CLI."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
from fabricate import QUICK_RUNS, fabricate_sweep, shared_sweep
from omegaconf import OmegaConf

from lora_analysis.analysis.tables import AnalysisResult
from lora_analysis.cli import main as cli_main
from lora_analysis.derive import stats as S
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, split_args
from lora_analysis.show import findings as F
from lora_analysis.show.document import write_report
from lora_analysis.show.focus import Focus, choose_focus
from lora_analysis.show.report import Findings, build_report, side_by_side
from lora_analysis.show.sections import ablation_section, experiment_table
from lora_analysis.show.sweep import SweepData

SECTIONS = ["In short", "Findings", "The experiment", "The paper's numbers and ours", "Our figures, beside the paper's",
            "Controls the paper lacks", "Accuracy against rank and target set (Tables 5 and 6)",
            "Rank recommendation", "Runs",
            "Environment"]
FIGURES = {"fig3_rank_A", "fig3_rank_A_delta", "fig4_seed_A", "fig4_seed_A_delta", "fig6_rank_layers_A",
           "fig6_rank_layers_A_delta", "fig7_seed_layers_A", "fig7_seed_layers_A_delta", "fig8_w_dw", "spectra_dw",
           "controls_rank", "controls_seed", "controls_strongest", "accuracy_rank", "loss_curves"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep = shared_sweep(tmp_path_factory, layers=(0, 1), modules=("q", "v", "ffn_out"))
    html, markdown = build_report(sweep)
    return sweep, html.read_text(), markdown.read_text()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """A quick-preset sweep without base weights (empty W tables), one table file and one history gone."""
    sweep = fabricate_sweep(tmp_path_factory.mktemp("report") / "quick", QUICK_RUNS, layers=(0,), modules=("q",),
                            w_tables=False)
    (sweep / "analysis" / "intruders.parquet").unlink()
    (sweep / "r64-seed1" / "history.csv").unlink()
    return sweep


def headings(markdown: str) -> list[str]:
    return [line[3:] for line in markdown.splitlines() if line.startswith("## ")]


def test_every_section_in_the_papers_order(report):
    sweep, html, markdown = report
    assert headings(markdown) == SECTIONS
    assert all(f"<h2>{title}</h2>".replace("'", "&#x27;") in html for title in SECTIONS)


def test_recommendation_section_says_how_each_rank_was_reached(report):
    markdown = report[2]
    section = markdown[markdown.index("## Rank recommendation"):markdown.index("## Runs")]
    assert "Rank per role from the A_delta subspaces of target set all" in section
    assert "q: rank 1, the median over 2 layers of min(seed-shared, rank-shared) (medians 6 and 1" in section
    # r=4 has one seed: no interval, so where accuracy stops improving is not claimed (the report's rule)
    assert ("Accuracy cross-check: where validation accuracy stops improving cannot tell (a rank has one seed, so no "
            "interval); the best validation mean is at r=8.") in section
    assert r"`layer\.\d+\.ffn_out`: 1" in section  # fabricated paths: the key generalises the layer index


def test_findings_are_the_planted_numbers_beside_the_papers(report):
    _, _, markdown = report
    for sentence in ("A − A_init: φ(1, 64) between r=8 and r=64 is 0.80", "ΔW: φ(1, 64) between r=8 and r=64 is 0.70",
                     "q shares 6.0 directions across seeds on average, v 2.0",
                     "q shows a higher intrinsic rank than v", "is 20.0 at r=4 against 2.0 at r=64",
                     "A moved ||A − A_init||_F / ||A_init||_F = 5% at r=4", "shared directions 0.0 on average",
                     "1.00 per module at r=8", "full fine-tuning 0.801 (n=1 at lr 5e-05)",
                     "5 of 6 runs converged, 1 reached the step ceiling still improving",
                     "r64-seed0 best at step 150 of 150 (ceiling)",
                     "1 of 5 real LoRA runs reached the step ceiling still improving on validation"):
        assert sentence in markdown, sentence
    table7 = next(line for line in markdown.splitlines() if "ours r=4): amplification" in line)
    assert "| 21.5 | 20.0 |" in table7
    assert "| 0.30 / 20.00 / 0.02 |" in markdown and "0.32 / 21.67 / 0.02" in markdown and "61.95" in markdown
    # 95% t-intervals over 2 seeds; Markdown shows the escaped brackets as [ and ]
    assert r"| all | 0.771 (1) | 0.778 \[0.753, 0.803\] (2) | 0.772 \[0.747, 0.797\] (2) |" in markdown
    assert "| full-seed0 | full | — | — |" in markdown  # no LoRA settings for the full fine-tuning run


def test_html_is_self_contained(report):
    sweep, html, _ = report
    assert "http" not in html and "<script" not in html and "<link" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in sources)
    names = {p.stem for p in (sweep / "report" / "figures").glob("*.png")}
    assert names == FIGURES and names == {p.stem for p in (sweep / "report" / "figures").glob("*.pdf")}


def test_markdown_references_existing_figures(report):
    sweep, _, markdown = report
    links = re.findall(r"\]\((figures/[^)]+)\)", markdown)
    assert len(links) == 2 * len(FIGURES)
    assert all((sweep / "report" / link).is_file() for link in links)


def test_cli_reports_a_quick_sweep_with_gaps(quick, capsys):
    assert cli_main(["report", str(quick)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"report: {quick / 'report' / 'report.html'}"
    markdown = (quick / "report" / "report.md").read_text()
    assert headings(markdown) == SECTIONS and (quick / "report" / "report.html").is_file()
    for gap in ("analysis/intruders.parquet", "r64-seed1/history.csv",
                "Table 7: no rows in the analysis", "Not drawn — Figure 8",
                "no full fine-tuning run in the sweep", "No full fine-tuning run in this sweep"):
        assert gap in markdown, gap
    assert "fig3_rank_A_delta.png" in markdown and "no q and v pair to compare; shared directions by role: q 6.0" \
        in markdown
    assert not (quick / "report" / "figures" / "fig8_w_dw.png").exists()


def test_a_bad_sweep_is_one_line_and_exit_2(tmp_path, capsys, quick):
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lora-analysis report: error:") and "does not exist" in err[0]
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a sweep (no runs.parquet), an analysis folder" in err[0]
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(quick / "runs.parquet", bare / "runs.parquet")
    assert cli_main(["report", str(bare), "analyze=false"]) == 2
    assert "lora-analysis analyze" in capsys.readouterr().err
    assert cli_main(["report", str(quick), "layer=7"]) == 2
    assert "layer=7" in capsys.readouterr().err
    assert cli_main(["report", str(quick), "targets=ffn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "targets=ffn is not a target set of this sweep's analysed runs: expected one of ['all']" \
        in err[0]
    alone = tmp_path / "alone"  # an analysis folder outside a sweep: no target sets to choose among
    shutil.copytree(quick / "analysis", alone)
    assert cli_main(["report", str(alone), "targets=all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "targets=all chooses among a sweep's target sets" in err[0]


def test_config_composes_and_checks_the_sweep():
    overrides, _ = split_args(["runs/paper", "layer=2"], "sweep", many=False)
    cfg = OmegaConf.to_object(compose("report", overrides))
    assert (cfg.sweep, cfg.layer, cfg.out, cfg.analyze) == ("runs/paper", 2, None, True)
    with pytest.raises(LoraAnalysisError, match="no folder: lora-analysis report"):
        OmegaConf.to_object(compose("report"))
    assert cli_main(["report", "a", "b"]) == 2


def test_side_by_side_keeps_rows_it_cannot_fill(report):
    sweep, _, _ = report
    tables = AnalysisResult.load(sweep / "analysis")
    one_rank = tables.dw_vs_w[tables.dw_vs_w["r"] == 8]
    unused = F.Finding.missing("unused", "not in the table", "not read by side_by_side")
    found = Findings(top_direction=F.top_direction(tables.phi, r_small=2),
                     q_vs_v=F.q_vs_v(S.shared_directions(tables.phi.iloc[0:0])), init_control=unused, controls=unused,
                     a_moved=F.a_moved(tables.modules), amplification=F.amplification(one_rank, layer=0),
                     w_dw_overlap=F.w_dw_overlap(tables.w_dw_phi.iloc[0:0], layer=0), intruders=unused,
                     accuracy=unused, sets=unused, budget=unused, patterns=unused, rates=unused,
                     loss=unused)
    table = side_by_side(Focus("all", 0, "q", None, None), found).set_index("quantity")
    assert table.filter(like="Figure 3", axis=0).iloc[:, 1].str.startswith("not measured: No rank pair").all()
    assert table.loc["Table 7 (paper r=64)"].iloc[1] == "only r=8 in this sweep"
    assert table.loc["Table 7 (paper r=4, ours r=8): amplification ||ΔW||_F / ||UᵀWVᵀ||_F"].iloc[1] == "5.0"
    assert table.loc["Figure 8: φ(top 10% of W, top 4 of ΔW)"].iloc[1].startswith("not measured")


def test_ablation_section_for_several_target_sets(tmp_path):
    rows = [{"run": f"r{r}-seed{s}-{t}", "method": "lora", "seed": s, "lora.r": r, "lora.targets": t,
             "test_accuracy": 0.7 + 0.01 * r ** 0.5 + 0.002 * s + (0.01 if t == "all" else 0), "lora_params": 1000 * r}
            for r in (1, 4, 16) for s in (0, 1, 2) for t in ("q", "ffn", "all")]
    # a full fine-tuning run carries the config's LoRA defaults, which it never used
    rows.append({"run": "full-seed0", "method": "full", "seed": 0, "test_accuracy": 0.9, "lora.r": 8,
                 "lora.targets": "attn"})
    runs = pd.DataFrame(rows)
    html, markdown = write_report("Rank ablation", [ablation_section(runs)], tmp_path)
    text = markdown.read_text()
    assert "| targets | r=1 | r=4 | r=16 |" in text
    assert "Full fine-tuning reference, at its own rate: 0.900 (n=1)." in text
    assert r"0.712 \[0.707, 0.717\] (3)" in text  # q at r=1: 0.71 + 0.002 * seed over seeds 0, 1, 2; t-interval
    assert (tmp_path / "figures" / "accuracy_rank.png").is_file() and "base64" in html.read_text()
    settings = experiment_table(runs).set_index("setting")["value"]
    assert settings["rank r"] == "1, 4, 16" and settings["LoRA targets"] == "all, ffn, q"


def test_accuracy_table_is_saved_as_parquet(report):
    sweep, _, _ = report
    table = pd.read_parquet(sweep / "report" / "accuracy.parquet")
    assert list(table.columns) == ["targets", "r", "lr", "lrs", "n", "mean", "std", "ci_low", "ci_high", "at_edge",
                                   "collapsed", "lora_params"]
    runs = pd.read_parquet(sweep / "runs.parquet")
    lora = runs[runs["method"] == "lora"]
    assert table["n"].sum() == len(lora)
    expected = lora.groupby("lora.r")["test_accuracy"].mean().to_dict()
    assert table.set_index("r")["mean"].to_dict() == pytest.approx(expected)


def test_focus_without_the_papers_pair_stays_in_the_shown_target_set(tmp_path):
    pairs = [("rank", "all", 1, 64), ("rank", "all", 4, 64), ("rank", "all", 16, 64), ("rank", "all", 4, 16),
             ("rank", "q", 8, 32), ("seed", "all", 16, 16), ("seed", "all", 64, 64), ("seed", "q", 32, 32)]
    phi = pd.DataFrame([dict(comparison=c, targets=t, r_a=a, r_b=b, layer=layer, module="q")
                        for c, t, a, b in pairs for layer in (0, 1, 2)])
    data = SweepData(tmp_path, pd.DataFrame(), {}, {"phi": phi, "modules": phi.drop(columns=["r_a", "r_b"])})
    focus = choose_focus(data)
    assert (focus.targets, focus.layer, focus.rank_pair, focus.seed_rank) == ("all", 1, (4, 64), 64)
    assert focus.notes == ["no r=8 vs r=64 pair: the rank figures use r=4 vs r=64"]
    named = choose_focus(data, targets="q")  # the other set's pairs: its own rank pair and seeded rank
    assert (named.targets, named.rank_pair, named.seed_rank) == ("q", (8, 32), 32)
    with pytest.raises(LoraAnalysisError, match=r"targets=ffn is not a target set .*expected one of \['all', 'q'\]"):
        choose_focus(data, targets="ffn")


def test_run_table_is_saved_as_csv_without_lora_values_for_full_runs(report):
    sweep, _, _ = report
    table = pd.read_csv(sweep / "report" / "runs.csv")
    runs = pd.read_parquet(sweep / "runs.parquet")
    assert list(table.columns) == list(runs.columns) and list(table["run"]) == list(runs["run"])
    full = table[table["method"] == "full"]
    assert len(full) == 1 and full["lora.r"].isna().all()
    assert table.loc[table["method"] == "lora", "lora.r"].notna().all()


def test_no_recommendation_from_a_single_rank(tmp_path):
    sweep = fabricate_sweep(tmp_path / "seeds", ("r64-seed0", "r64-seed1"), layers=(0,), modules=("q",),
                            w_tables=False)
    markdown = build_report(sweep)[1].read_text()
    section = markdown[markdown.index("## Rank recommendation"):markdown.index("## Runs")]
    assert "No recommendation: target set all was trained at one rank only" in section


def test_the_report_opens_with_each_verdict_and_its_number(report):
    _, _, markdown = report
    short = markdown[markdown.index("## In short"):markdown.index("## Findings")]
    # the best cell with its t-interval over seeds as in the accuracy table; the planted A − A_init sharing
    assert (r"Best LoRA cell (chosen on validation): all at r=8, test 0.778 \[0.753, 0.803\] (n=2 at lr 1e-03); "
            "full fine-tuning 0.801") in short
    assert ("A − A_init, r=8 vs r=64: φ(1, r_b) 0.80 against the strongest control 0.12 (isotropic baseline), "
            "excess +0.68") in short and "shared beyond the control (task-specific in 12)" in short
    assert "ΔW, two seeds at r=64" in short and "5 of 6 runs converged, 1 reached the step ceiling" in short
    assert short.count("\n- ") == 6  # a line per verdict, not the detail


def test_an_adapter_at_the_majority_class_is_left_out_of_the_pairs_and_the_report_says_so(tmp_path):
    from fabricate import fabricate_sweep

    from lora_analysis.show.report import study

    sweep = fabricate_sweep(tmp_path / "sweep", layers=(0,), modules=("q",))
    table = pd.read_parquet(sweep / "runs.parquet")
    table.loc[table["run"] == "r4-seed0", "val_accuracy"] = 0.576  # one class predicted on validation
    table.to_parquet(sweep / "runs.parquet", index=False)
    studied = study(sweep)
    assert any("r4-seed0" in note and "majority class" in note for note in studied.focus.notes)
    phi = studied.tables["phi"]
    assert not phi.empty and "r4-seed0" not in set(phi["run_a"]) | set(phi["run_b"])
    assert "r4-seed0" in set(studied.data.runs["run"])  # its accuracy is still shown
    assert not any("majority class" in note for note in study(fabricate_sweep(tmp_path / "fine", layers=(0,),
                                                                              modules=("q",))).focus.notes)


def test_runs_still_to_finish_are_said_first_and_counted_in_their_cells(tmp_path):
    import yaml

    sweep = fabricate_sweep(tmp_path / "sweep", QUICK_RUNS, layers=(0,), modules=("q",), w_tables=False)
    started = {"r8-seed2": {"lora": {"targets": "all", "r": 8}}, "r16-seed0": {"lora": {"targets": "all", "r": 16}},
               "full-seed1": {"method": "full", "lora": {"targets": "all", "r": 8}},
               "r8-seed0-shuffled": {"lora": {"targets": "all", "r": 8}, "data": {"shuffle_labels": True}},
               "r8-seed3": {"lora": {"targets": "all", "r": 8}}}
    for name, config in started.items():  # a config and a checkpoint, no DONE: started, not finished
        (sweep / name).mkdir()
        (sweep / name / "config.yaml").write_text(yaml.safe_dump({"method": "lora", "seed": 2, **config}))
    (sweep / "r8-seed3" / "FAILED.json").write_text("{}")  # a failed run is not one still to finish
    (sweep / "r32-seed0").mkdir()
    (sweep / "r32-seed0" / "config.yaml").write_bytes(b"\x00\xffnot yaml")  # damaged: named, its cell unknown
    _, markdown = build_report(sweep)
    text = markdown.read_text()
    short = text[text.index("## In short"):text.index("## Findings")]
    assert short.split("\n- ")[1] == (
        "5 run(s) unfinished when this report was built (a sweep still running, or stopped): in no table, figure or "
        "verdict here; the cells they will join may change (their rate, mean, interval): full fine-tuning (1), all "
        "r=16 (1), config unreadable (1), all r=8 (shuffled labels) (1), all r=8 (1)")
    accuracy = text.split("## Accuracy against rank")[1]
    assert ("| targets | r=8 | r=16 | r=64 |" in accuracy  # r = 16 has no finished run yet: its column all the same
            and "| all | 0.776 (1), 1 unfinished | — (1 unfinished) | 0.772 \\[0.747, 0.797\\] (2) |" in accuracy)
    assert "(full-seed1, r16-seed0, r32-seed0, r8-seed0-shuffled, r8-seed2)" in text  # named under The experiment
    for name in ("r16-seed0", "full-seed1", "r32-seed0", "r8-seed0-shuffled", "r8-seed2"):
        shutil.rmtree(sweep / name)  # only the failed run left: nothing pending, nothing said
    _, markdown = build_report(sweep)
    text = markdown.read_text()
    assert "unfinished" not in text.split("## Runs")[0] and "| all | 0.776 (1) | 0.772 \\[0.747, 0.797\\] (2) |" in text


def test_the_recommendation_reads_the_reports_target_set(tmp_path):
    """``report targets=q+v`` recommends for q+v, as ``recommend targets=q+v`` would: it read ``all`` whenever the
    sweep held it, so a report on another set printed all's recommendation (or none) under that set's findings."""
    import dataclasses

    from lora_analysis.show.sections import recommendation_section
    from lora_analysis.show.sweep import load_sweep

    sweep = fabricate_sweep(tmp_path / "two", ("r4-seed0", "r8-seed0", "r64-seed0", "r8-seed1", "r64-seed1"),
                            layers=(0,), modules=("q", "v"))
    data = load_sweep(sweep)

    def with_twin_set(frame: pd.DataFrame) -> pd.DataFrame:  # the same numbers under a second target set
        return pd.concat([frame.astype({"targets": str}), frame.astype({"targets": str}).assign(targets="q+v")],
                         ignore_index=True)

    data = dataclasses.replace(data, tables=dict(data.tables, phi=with_twin_set(data.tables["phi"]),
                                                 modules=with_twin_set(data.tables["modules"])))
    for targets in ("all", "q+v"):
        phi, modules = (data.tables[t][data.tables[t]["targets"] == targets] for t in ("phi", "modules"))
        section = recommendation_section(data, S.Derived.compute(phi, modules, data.runs, targets))
        text = "\n".join(map(str, section.blocks))
        assert f"target set {targets}" in text and f"target set {({'all', 'q+v'} - {targets}).pop()}" not in text
    unnamed = "\n".join(map(str, recommendation_section(data).blocks))  # no report target set: all, as before
    assert "target set all" in unnamed
