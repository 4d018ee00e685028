"""The kinds of things the analysis tables name: subjects, comparisons and sides.

String-valued Enums (``StrEnum``): a member equals its string, so the Parquet tables hold the same
strings as before and a config or a table read back compares equal to the member. Tables are written
with ``.value`` so nothing depends on how a member prints.
"""

from __future__ import annotations

from enum import StrEnum


class Subject(StrEnum):
    """A matrix whose subspace is compared: A's rows (input space), B's columns (output space), dW's."""

    A = "A"
    A_init = "A_init"  # A at step 0: the control (its random init)
    A_delta = "A_delta"  # A - A_init: what training added to A
    B = "B"
    dW = "dW"  # scale * B @ A; right singular vectors unless ``dw_side=left``

    @property
    def label(self) -> str:
        """The printed name (``A − A_init`` for ``A_delta``, ``ΔW`` for ``dW``)."""
        return {"A_delta": "A − A_init", "dW": "ΔW"}.get(self.value, self.value)


class Comparison(StrEnum):
    """Which runs are paired in the phi table."""

    rank = "rank"  # same seed and group, different r
    seed = "seed"  # same r and group, different seed
    random = "random"  # a run against two Gaussian matrices of its shape (run_b = GAUSSIAN)
    other = "other"  # two adapters of one base that differ in something else or in what is not known (two tasks)


class Side(StrEnum):
    """Singular vectors of a matrix: left (output space) or right (input space)."""

    left = "left"
    right = "right"


GAUSSIAN = "gaussian"  # run_b of a ``random`` comparison: the Gaussian matrices, not a run
