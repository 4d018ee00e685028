"""``lora-analysis report <folder> [key=value ...]``: figures and a report from saved results.

Composes ``conf/report.yaml`` (typed by ``ReportConfig``) with the overrides. Nothing is retrained. The
folder is one of:

- a sweep (``runs.parquet`` beside its run folders): the sweep report (``show.report``), from the sweep
  table, the runs' ``history.csv`` and ``<sweep>/analysis/``, analysed first when missing or out of date;
- an analysis folder (``analysis.json``, written by ``analyze`` or ``compare``): the report of any set of
  adapters (``show.analysis_report``); a sweep's own ``analysis/`` gives the sweep report;
- a folder holding adapters (PEFT folders or run folders): its ``analysis/`` is used, or made first with the
  default settings, then reported like any analysis.

``analyze=false`` makes a missing or stale analysis an error instead. ``targets=ffn`` judges a sweep's ffn
subspaces (figures, controls, subspace findings) where it holds several target sets.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lora_analysis.analysis.sweep import ensure_adapter_analysis, ensure_analysis
from lora_analysis.cli.schemas import ReportConfig
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text, split_args, to_settings
from lora_analysis.layout import AnalysisDir, SweepDir, holds_adapters
from lora_analysis.show.document import report_folder

SUMMARY = """\
usage: lora-analysis report <sweep | analysis folder | folder of adapters> [key=value ...]

Rebuild a report from saved results, without retraining: figures (PNG and PDF) under <...>/report/figures/,
a self-contained report.html and its Markdown twin report.md. A sweep's report follows Hu et al. (2021),
Section 7 and Appendix H, beside the paper's own numbers; the report of other adapters (an analysis folder,
or a folder of PEFT adapters) shows their pairs, controls, spectra and dW against W.
"""


def main(argv: Sequence[str] | None = None) -> int:
    overrides, wants_help = split_args(list(sys.argv[1:] if argv is None else argv), "sweep", many=False)
    if wants_help:
        print(help_text(SUMMARY, "report"))
        return 0
    cfg: ReportConfig = to_settings(compose("report", overrides))
    folder = Path(cfg.sweep)
    if not folder.is_dir():
        raise LoraAnalysisError(f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    if cfg.out is not None:  # refused now, not after an analysis made first
        report_folder(cfg.out)
    if AnalysisDir(folder).exists() and folder.name == SweepDir.ANALYSIS and SweepDir(folder.parent).is_sweep():
        folder = folder.parent  # a sweep's own analysis: the sweep report
    if cfg.targets is not None and (AnalysisDir(folder).exists() or not SweepDir(folder).is_sweep()):
        raise LoraAnalysisError(f"targets={cfg.targets} chooses among a sweep's target sets; {folder} is not a sweep: "
                                "its report shows every adapter pair it holds")
    if AnalysisDir(folder).exists():
        html, markdown = _analysis_report(folder, cfg)
    elif SweepDir(folder).is_sweep():
        ensure_analysis(folder, cfg.analyze, "lora-analysis report")
        from lora_analysis.show.report import build_report

        html, markdown = build_report(folder, cfg.out, layer=cfg.layer, targets=cfg.targets)
    elif holds_adapters(folder):
        html, markdown = _analysis_report(ensure_adapter_analysis(folder, cfg.analyze, "lora-analysis report"), cfg)
    else:
        raise LoraAnalysisError(f"{folder} is not a sweep (no {SweepDir.TABLE}), an analysis folder (no "
                                f"{AnalysisDir.META}) or a folder of adapters (none in it or its subfolders)")
    print(f"markdown: {markdown}")
    print(f"report: {html}")
    return 0


def _analysis_report(analysis: Path, cfg: ReportConfig) -> tuple[Path, Path]:
    from lora_analysis.show.analysis_report import build_analysis_report

    return build_analysis_report(analysis, cfg.out, layer=cfg.layer)
