"""``lora-analysis report <sweep> [key=value ...]``: rebuild a sweep's figures and report from saved results.

Composes ``conf/report.yaml`` (typed by ``ReportConfig``) with the overrides. Nothing is retrained: the
report reads ``runs.parquet``, the runs' ``history.csv`` and ``<sweep>/analysis/``; when the analysis is
missing or older than the sweep's finished runs it is run first (``analyze=true``), or that is the error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lora_analysis.analyze_app import ensure_analysis
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text, split_args

SUMMARY = """\
usage: lora-analysis report <sweep folder> [key=value ...]

Rebuild a sweep's report from saved results, without retraining: figures (PNG and PDF) under
<sweep>/report/figures/, a self-contained report.html and its Markdown twin report.md. The figures and
numbers follow Hu et al. (2021), Section 7 and Appendix H, beside the paper's own numbers.
"""


@dataclass
class ReportConfig:
    sweep: str | None = None  # the sweep folder (a folder with runs.parquet); also the positional argument
    layer: int | None = None  # layer of the single-layer figures (Figures 3, 4, 8); None: the middle adapted layer
    out: str | None = None  # output folder; None: <sweep>/report
    analyze: bool = True  # run the analysis first when <sweep>/analysis/ is missing or out of date

    def __post_init__(self) -> None:
        if self.sweep is None:
            raise LoraAnalysisError("no sweep folder: lora-analysis report <sweep folder>")


ConfigStore.instance().store(name="report_schema", node=ReportConfig)


def main(argv: Sequence[str] | None = None) -> int:
    overrides, wants_help = split_args(list(sys.argv[1:] if argv is None else argv), "sweep", many=False)
    if wants_help:
        print(help_text(SUMMARY, "report"))
        return 0
    cfg: ReportConfig = OmegaConf.to_object(compose("report", overrides))
    sweep = Path(cfg.sweep)
    if not (sweep / "runs.parquet").is_file():
        raise LoraAnalysisError(f"{sweep} is not a sweep folder: no runs.parquet there")
    ensure_analysis(sweep, cfg.analyze, "lora-analysis report")

    from lora_analysis.report import build_report

    html, markdown = build_report(sweep, cfg.out, layer=cfg.layer)
    print(f"markdown: {markdown}")
    print(f"report: {html}")
    return 0
