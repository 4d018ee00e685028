"""``lora-analysis report <sweep> [key=value ...]``: rebuild a sweep's figures and report from saved results.

Composes ``conf/report.yaml`` (typed by ``ReportConfig``) with the overrides. Nothing is retrained: the
report reads ``runs.parquet``, the runs' ``history.csv`` and ``<sweep>/analysis/``; when the analysis is
missing or older than the sweep's finished runs it is run first (``analyze=true``), or that is the error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from lora_analysis.analysis.sweep import ensure_analysis
from lora_analysis.cli.schemas import ReportConfig
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text, split_args
from lora_analysis.layout import SweepDir

SUMMARY = """\
usage: lora-analysis report <sweep folder> [key=value ...]

Rebuild a sweep's report from saved results, without retraining: figures (PNG and PDF) under
<sweep>/report/figures/, a self-contained report.html and its Markdown twin report.md. The figures and
numbers follow Hu et al. (2021), Section 7 and Appendix H, beside the paper's own numbers.
"""


def main(argv: Sequence[str] | None = None) -> int:
    overrides, wants_help = split_args(list(sys.argv[1:] if argv is None else argv), "sweep", many=False)
    if wants_help:
        print(help_text(SUMMARY, "report"))
        return 0
    cfg: ReportConfig = OmegaConf.to_object(compose("report", overrides))
    sweep = Path(cfg.sweep)
    if not SweepDir(sweep).is_sweep():
        raise LoraAnalysisError(f"{sweep} is not a sweep folder: no {SweepDir.TABLE} there")
    ensure_analysis(sweep, cfg.analyze, "lora-analysis report")

    from lora_analysis.show.report import build_report

    html, markdown = build_report(sweep, cfg.out, layer=cfg.layer)
    print(f"markdown: {markdown}")
    print(f"report: {html}")
    return 0
