"""How names and numbers are written in sentences, captions and tables of the report."""

from __future__ import annotations

import math

from lora_analysis.analysis.kinds import Subject

SUBJECT_LABELS = {s.value: s.label for s in Subject}


def label(subject: str) -> str:
    """The printed name of an analysis subject (``A_delta`` is ``A − A_init``)."""
    return SUBJECT_LABELS.get(subject, subject)


def fmt(x: float, digits: int = 2) -> str:
    """A number for a sentence: fixed digits, ``n/a`` for NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
