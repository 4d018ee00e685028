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
    targets: str | None = None  # a sweep's target set whose subspaces the figures and findings judge (the accuracy
    #   findings read every set); None: all when the sweep has it, else its set with most analysed rows
    out: str | None = None  # output folder; None: report/ beside the analysis (<sweep>/report for a sweep)
    analyze: bool = True  # run the analysis first when it is missing or out of date

    def __post_init__(self) -> None:
        if self.sweep is None:
            raise LoraAnalysisError("no folder: lora-analysis report <sweep | analysis folder | folder of adapters>")


@dataclass
class AcrossConfig:
    sweeps: list[str] = field(default_factory=list)  # two or more sweep folders; also the positional arguments
    out: str | None = None  # a Markdown file for the table (and its .csv twin); None: printed only
    layer: int | None = None  # layer of Table 7's amplification; None: each sweep's middle adapted layer

    def __post_init__(self) -> None:
        if len(self.sweeps) < 2:
            raise LoraAnalysisError("name two or more sweeps: lora-analysis across runs/paper runs/tweets ...")
        if self.out is not None and not self.out.endswith(".md"):
            raise LoraAnalysisError(f"out= names a Markdown file (.md), got {self.out!r}")


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


@dataclass
class AblateConfig:
    experiment: str = "rank_ablation"  # conf/experiment/<name>.yaml (experiment=...): its target sets and ranks
    targets: list[str] | None = None  # target sets; None: the experiment's
    # ranks; None: the experiment's (none for a budget experiment: its rank is derived); []: the patterns alone
    ranks: list[int] | None = None
    # Learning rates tried per cell on seed 0 (half-decade steps); the best on validation is each cell's rate.
    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    full_lrs: list[float] = field(default_factory=list)  # full fine-tuning's own grid; empty: no full reference
    # Rank patterns under test (JSON files, as lora-analysis recommend writes them): each a cell per target set,
    # tuned and seeded as the uniform ranks beside it; the report sets them against those (accuracy vs parameters).
    patterns: list[str] = field(default_factory=list)
    # Successive halving of the search (train.halving): every rate of a cell trains to this fraction of the step
    # ceiling, then the better half on validation goes on to its optimum, the rest stop there; 0: no halving.
    halving: float = 0.2
    # Grid extension: a cell whose rate chosen on validation sits at an end of its grid gets the next rate past
    # that end (one grid step: on a 1-3 grid the next 1-3 value) on seed 0, up to this many times; 0: none.
    extend: int = 2
    seeds: int = 3  # seeds per cell at its chosen rate (seed 0 from the search, 1.. trained after it)
    # Shuffled-label twins of the rank pair (seed 0; r=8 and 64 where swept) and seed pair (seeds 0 and 1; a
    # budget experiment: its one cell) of the target set the report analyses (all where swept, else each set),
    # at the rate it analyses, for as many steps as their real twins kept: the subspace verdicts' strongest control.
    controls: bool = True
    out_dir: str = "runs"
    name: str | None = None  # the sweep folder; None: the experiment's name
    figures: str | None = None  # copy the report here
    workers: int | None = None  # runs trained at once; None: as reproduce

    def __post_init__(self) -> None:
        rates = [*self.lrs, *self.full_lrs]
        if not self.lrs or any(not (isinstance(r, int | float) and 0 < r < float("inf")) for r in rates):
            raise LoraAnalysisError(f"lrs and full_lrs must be learning rates > 0 (lrs non-empty), got {rates}")
        if self.extend < 0:
            raise LoraAnalysisError(f"extend must be a number of grid steps >= 0 (0: no extension), got {self.extend}")
        if self.seeds < 1 or (self.workers is not None and self.workers < 1):
            raise LoraAnalysisError(f"seeds and workers must be >= 1, got {self.seeds} and {self.workers}")
        if not 0 <= self.halving < 1:
            raise LoraAnalysisError(f"halving must be a fraction of the step ceiling in [0, 1) (0: none), got "
                                    f"{self.halving}")
        if self.ranks is not None and any(r < 1 for r in self.ranks):
            raise LoraAnalysisError(f"ranks must be >= 1, got {self.ranks}")
        if self.ranks == [] and not self.patterns:
            raise LoraAnalysisError("ranks=[] trains no uniform rank and patterns names no rank pattern: nothing to "
                                    "train (ranks=[] is for patterns=[...] alone, against uniform ranks already in "
                                    "the sweep)")
        from lora_analysis.paths import user_path
        from lora_analysis.train.config import read_rank_pattern

        for spec in self.patterns:
            try:  # one line on a missing or malformed file, before any run starts
                read_rank_pattern(spec)
            except LoraAnalysisError as error:
                raise LoraAnalysisError(f"patterns: {error}") from None
        # a file by its absolute path (the runs may start elsewhere); inline JSON as it is
        self.patterns = [p if p.strip().startswith("{") else str(user_path(p).resolve()) for p in self.patterns]


def register_schemas() -> None:
    """Store every command's schema in Hydra's ConfigStore (idempotent); ``compose`` needs them."""
    from lora_analysis.analysis.settings import AnalyzeConfig, CompareConfig
    from lora_analysis.train.config import register_configs

    register_configs()
    store = ConfigStore.instance()
    store.store(name="analyze_schema", node=AnalyzeConfig)
    store.store(name="compare_schema", node=CompareConfig)
    store.store(name="report_schema", node=ReportConfig)
    store.store(name="across_schema", node=AcrossConfig)
    store.store(name="recommend_schema", node=RecommendConfig)
    store.store(name="reproduce_schema", node=ReproduceConfig)
    store.store(name="ablate_schema", node=AblateConfig)
