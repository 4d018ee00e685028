"""``lora-analysis analyze <sweep folder | run folders | adapter folders> [key=value ...]``.

Composes ``conf/analyze.yaml`` (typed by ``AnalyzeConfig``) with the overrides, runs
``compare.run_analysis`` and writes the tables as Parquet under ``<sweep>/analysis/`` (or ``out=``).
Notes about skipped runs or analyses are printed on stderr, one line each.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lora_analysis.analysis.settings import AnalyzeConfig, default_out
from lora_analysis.analysis.sweep import analysis_with_notes
from lora_analysis.atomic import check_output_folder
from lora_analysis.hydra_compose import compose, help_text, split_args, to_settings
from lora_analysis.layout import AnalysisDir

SUMMARY = """\
usage: lora-analysis analyze <sweep folder | run folders | adapter folders> [key=value ...]

Subspace analysis of LoRA adapters (Hu et al. 2021, Section 7): phi grids across ranks, seeds and a
Gaussian baseline for A, A_init, A - A_init, B and dW; spectra; dW against the base weights W
(Table 7, Figure 8) and intruder dimensions. Tables go to <sweep>/analysis/*.parquet (or out=...).
Each module's input statistics (forward hooks on the frozen base over 256 training texts) give the
input-geometry baseline of the phi table; for foreign adapters name base=MODEL data_path=FILE text_column=COL.
"""

def main(argv: Sequence[str] | None = None) -> int:
    overrides, wants_help = split_args(list(sys.argv[1:] if argv is None else argv), "inputs")
    if wants_help:
        print(help_text(SUMMARY, "analyze"))
        return 0
    cfg: AnalyzeConfig = to_settings(compose("analyze", overrides))
    out = cfg.out or default_out(cfg.inputs)
    check_output_folder(out, "analysis", AnalysisDir.owns)  # before the analysis, not after it
    result = analysis_with_notes(cfg, "lora-analysis analyze")
    folder = result.save(out)
    rows = result.rows()
    print(f"analysed {rows['runs']} runs; wrote {folder} ({', '.join(f'{n} {k}' for n, k in rows.items())} rows)")
    return 0
