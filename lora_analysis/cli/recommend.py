"""usage: lora-analysis recommend <sweep> [subject=A_delta] [targets=all] [rank_pattern=ranks.json]

Prints the rank each module role needs, with how it was reached (see lora_analysis/recommend.py), and
with rank_pattern=<file> writes it as JSON that peft.LoraConfig(rank_pattern=...) accepts:

    LoraConfig(r=8, target_modules=[...], rank_pattern=json.load(open("ranks.json")))

The sweep needs its analysis/ folder; it is computed first when missing or older than the sweep's runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lora_analysis.analysis.sweep import ensure_analysis
from lora_analysis.atomic import write_json
from lora_analysis.cli.schemas import RecommendConfig
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text, split_args, to_settings


def main(argv: Sequence[str]) -> int:
    overrides, wants_help = split_args(argv, "sweep", many=False)
    if wants_help:
        print(help_text(__doc__, "recommend"))
        return 0
    cfg: RecommendConfig = to_settings(compose("recommend", overrides))
    from lora_analysis.derive.recommend import recommend

    sweep = Path(cfg.sweep)
    if not sweep.is_dir():
        raise LoraAnalysisError(f"sweep folder {sweep} does not exist")
    if cfg.rank_pattern and (Path(cfg.rank_pattern).is_dir() or not Path(cfg.rank_pattern).parent.is_dir()):
        raise LoraAnalysisError(f"rank_pattern={cfg.rank_pattern}: expected a file path in an existing folder")
    if cfg.rank_pattern and Path(cfg.rank_pattern).exists() and not _is_rank_pattern(Path(cfg.rank_pattern)):
        raise LoraAnalysisError(f"rank_pattern={cfg.rank_pattern}: the file exists and is not a rank pattern (a "
                                "JSON mapping of module names to ranks, as recommend writes): not replaced; choose "
                                "another file")
    ensure_analysis(sweep, True, "lora-analysis recommend")
    result = recommend(sweep, cfg.subject, cfg.targets)
    if result.nothing:  # an answer, not an error: there is nothing above the controls to size a rank by
        print("\n".join(result.explain()))
        if cfg.rank_pattern:
            print(f"no rank_pattern written to {cfg.rank_pattern}")
        return 0
    print(result.roles.to_string(index=False))
    print()
    print("\n".join(result.explain()))
    if cfg.rank_pattern:
        write_json(cfg.rank_pattern, result.rank_pattern)
        print(f"\nrank_pattern written to {cfg.rank_pattern}")
    return 0


def _is_rank_pattern(path: Path) -> bool:
    """Whether ``path`` is a file recommend wrote: a JSON object of module names to integer ranks."""
    try:
        pattern = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(pattern, dict) and not path.is_symlink()
            and all(isinstance(r, int) and not isinstance(r, bool) for r in pattern.values()))
