"""``lora-analysis compare ADAPTER_A ADAPTER_B [key=value ...]``: the analysis and the report of one pair.

Composes ``conf/compare.yaml`` (typed by ``analysis.settings.CompareConfig``: the keys of ``analyze`` and
``layer``), analyses the two adapters into ``<out>/analysis`` and writes their report to ``<out>/report``
(``show.analysis_report``). Each adapter is a PEFT folder, a run folder or a hub id in the local cache.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lora_analysis.analysis.settings import CompareConfig
from lora_analysis.analysis.sweep import analysis_with_notes
from lora_analysis.atomic import check_output_folder
from lora_analysis.hydra_compose import compose, help_text, split_args, to_settings
from lora_analysis.layout import AnalysisDir, ReportDir, SweepDir

SUMMARY = """\
usage: lora-analysis compare ADAPTER_A ADAPTER_B [base=MODEL] [data_path=FILE text_column=COL] [out=DIR]

Compare two LoRA adapters of one base model (two tasks, two seeds, two ranks, two releases): the subspace
similarity phi of A, B and dW with its random and input-geometry baselines, a verdict against the strongest
control, spectra, and dW against the base weights W (Table 7, Figure 8, intruder dimensions) when the base
is found. Writes <out>/analysis/*.parquet and <out>/report/report.html (default out: runs/compare/<a>-vs-<b>).
"""


def main(argv: Sequence[str] | None = None) -> int:
    overrides, wants_help = split_args(list(sys.argv[1:] if argv is None else argv), "inputs")
    if wants_help:
        print(help_text(SUMMARY, "compare"))
        return 0
    cfg: CompareConfig = to_settings(compose("compare", overrides))
    out = cfg.folder()
    analysis = out / SweepDir.ANALYSIS
    check_output_folder(analysis, "analysis", AnalysisDir.owns)  # before the analysis, not after it
    check_output_folder(out / SweepDir.REPORT, "report", ReportDir.owns)
    result = analysis_with_notes(cfg, "lora-analysis compare")
    result.save(analysis)
    print(f"analysed {', '.join(result.runs['run'].astype(str))}; wrote {analysis}")
    paths = [set(group) for _, group in result.modules.groupby("run", observed=True)["path"]]
    if len(paths) == 2 and not paths[0] & paths[1]:
        names = " and ".join(result.runs["run"].astype(str))
        print(f"lora-analysis compare: note: {names} share no adapted module (other target modules or another base "
              "model): there is no pair to compare, the report shows each adapter's spectra", file=sys.stderr)
    from lora_analysis.show.analysis_report import build_analysis_report

    html, markdown = build_analysis_report(analysis, out / SweepDir.REPORT, layer=cfg.layer)
    print(f"markdown: {markdown}")
    print(f"report: {html}")
    return 0
