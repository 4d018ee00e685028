"""The typed configs of the commands, and the one call that makes every schema known to Hydra.

Each key is documented once, here (the command configs) or in ``train/config.py`` and
``analysis/settings.py`` (training and analysis settings); ``conf/<command>.yaml`` fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from lora_analysis.errors import LoraAnalysisError


@dataclass
class ReportConfig:
    sweep: str | None = None  # a sweep, an analysis folder or a folder of adapters; also the positional argument
    layer: int | None = None  # layer of the single-layer figures (Figures 3, 4, 8); None: the middle adapted layer
    out: str | None = None  # output folder; None: report/ beside the analysis (<sweep>/report for a sweep)
    analyze: bool = True  # run the analysis first when it is missing or out of date

    def __post_init__(self) -> None:
        if self.sweep is None:
            raise LoraAnalysisError("no folder: lora-analysis report <sweep | analysis folder | folder of adapters>")


@dataclass
class RecommendConfig:
    sweep: str | None = None  # a sweep folder with finished runs (and runs.parquet)
    subject: str = "A_delta"  # the subspace counted: A_delta (A - A_init, the learned part), dW, A or B
    targets: str | None = None  # the target set whose runs are used; None: all, else the most frequent
    rank_pattern: str | None = None  # write the PEFT rank_pattern JSON here

    def __post_init__(self) -> None:
        if not self.sweep:
            raise LoraAnalysisError("name a sweep folder: lora-analysis recommend runs/<sweep>")
        if self.subject not in ("dW", "A_delta", "A", "B"):
            raise LoraAnalysisError(f"subject must be dW, A_delta, A or B, got {self.subject!r}")


@dataclass
class Preset:
    name: str = "paper"  # the sweep folder under out_dir
    description: str = ""
    common: list[str] = field(default_factory=list)  # training overrides for every run of the preset
    runs: list[list[str]] = field(default_factory=list)  # one list of overrides per run
    layer: int | None = None  # the layer Figures 3 and 4 show; None: the middle one


@dataclass
class ReproduceConfig:
    preset: Preset = field(default_factory=Preset)
    out_dir: str = "runs"
    name: str | None = None  # the sweep folder; None: the preset's name
    figures: str | None = None  # copy report.html, report.md and figures/ here (the repository's figures/)
    workers: int | None = None  # runs trained at once; None: 2 on a CPU with 2+ cores, 1 on a GPU

    def __post_init__(self) -> None:
        if not self.preset.runs:
            raise LoraAnalysisError(f"preset {self.preset.name!r} names no runs")


def register_schemas() -> None:
    """Store every command's schema in Hydra's ConfigStore (idempotent); ``compose`` needs them."""
    from lora_analysis.analysis.settings import AnalyzeConfig, CompareConfig
    from lora_analysis.train.config import register_configs

    register_configs()
    store = ConfigStore.instance()
    store.store(name="analyze_schema", node=AnalyzeConfig)
    store.store(name="compare_schema", node=CompareConfig)
    store.store(name="report_schema", node=ReportConfig)
    store.store(name="recommend_schema", node=RecommendConfig)
    store.store(name="reproduce_schema", node=ReproduceConfig)
