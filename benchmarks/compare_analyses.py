"""Two analysis folders hold the same tables: every ID column equal, every float column equal to
float64 rounding. For checking a speed change against the code before it, e.g.

    PYTHONPATH=<old checkout> python -c "from lora_analysis import analyze; analyze(...).save('/tmp/old')"
    .venv/bin/python benchmarks/compare_analyses.py /tmp/old /tmp/new

Prints, per table, its rows, whether it is bit-for-bit equal, and the largest float difference, relative
to the column's largest magnitude; exits 1 when a table differs beyond ``--rtol`` (default 1e-12).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from lora_analysis.analysis.tables import SCHEMAS, AnalysisResult


def compare(old: AnalysisResult, new: AnalysisResult, rtol: float) -> bool:
    same = True
    for name, kinds in SCHEMAS.items():
        a, b = getattr(old, name), getattr(new, name)
        identical = a.equals(b) and list(a.dtypes) == list(b.dtypes)
        worst, where = 0.0, ""
        floats = [c for c, kind in kinds.items() if kind == "float64"]
        if not identical:
            # IDs, integers, strings and NaN positions exactly; floats to rtol of the column's scale
            pd.testing.assert_frame_equal(a.drop(columns=floats), b.drop(columns=floats), check_exact=True)
            for column in floats:
                x, y = a[column].to_numpy(), b[column].to_numpy()
                if not np.array_equal(np.isnan(x), np.isnan(y)):
                    raise AssertionError(f"{name}.{column}: NaN in different rows")
                finite = np.isfinite(x)
                if not finite.any():  # all NaN (e.g. no input-geometry baseline), equal positions
                    continue
                scale = np.abs(x[finite]).max() or 1.0
                diff = np.abs(x[finite] - y[finite]).max() / scale
                if diff > worst:
                    worst, where = diff, column
        ok = identical or worst <= rtol
        same &= ok
        verdict = "bit-for-bit" if identical else f"max rel. diff {worst:.1e} ({where})"
        print(f"{name:<10} {len(a):>10,} rows  {verdict}{'' if ok else '  DIFFERS'}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rtol", type=float, default=1e-12)
    args = parser.parse_args()
    same = compare(AnalysisResult.load(args.old), AnalysisResult.load(args.new), args.rtol)
    print("same tables" if same else "tables differ")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
