"""``lora-analysis across <sweep> <sweep> ... [out=table.md]``: the findings of several sweeps side by side.

Composes ``conf/across.yaml`` (typed by ``AcrossConfig``). Each sweep is read and judged as its own report
judges it (``show.report.study``; analysed first when its analysis is missing or stale), and the table
(``show.across``) has a row per quantity and a column per sweep, then the verdicts that differ.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lora_analysis.analysis.sweep import ensure_analysis
from lora_analysis.cli.schemas import AcrossConfig
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text, split_args, to_settings
from lora_analysis.layout import SweepDir

SUMMARY = """\
usage: lora-analysis across <sweep> <sweep> ... [out=table.md] [layer=N]

The findings of two or more sweeps (say one model on two tasks, two models on one task) side by side: test
accuracy with its interval, where validation accuracy stops improving, the top directions of A, A - A_init,
dW and B against their strongest control with their verdicts, q against v, and Table 7's amplification.
Printed as Markdown, and written to out= (with a .csv twin) when given.
"""


def main(argv: Sequence[str] | None = None) -> int:
    overrides, wants_help = split_args(list(sys.argv[1:] if argv is None else argv), "sweeps")
    if wants_help:
        print(help_text(SUMMARY, "across"))
        return 0
    cfg: AcrossConfig = to_settings(compose("across", overrides))
    for sweep in cfg.sweeps:
        if not SweepDir(Path(sweep)).is_sweep():
            raise LoraAnalysisError(f"{sweep} is not a sweep (no {SweepDir.TABLE})")
        ensure_analysis(Path(sweep), True, "lora-analysis across")
    from lora_analysis.show.across import across_table, markdown, write_across

    table = across_table(cfg.sweeps, cfg.layer)
    print(markdown(table))
    if cfg.out is not None:
        print(f"wrote {write_across(table, Path(cfg.out))}")
    return 0
