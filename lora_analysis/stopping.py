"""When a run stops: at its validation optimum. The criterion the trainer applies and the report quotes.

Every ``optim.eval_every`` steps (and at the last step) the run scores its validation split. The criterion
is the validation loss: on 1,000 examples it moves smoothly, where accuracy moves in steps of 0.1% and
ties. An evaluation improves on the best so far when its loss is lower; after ``optim.patience``
evaluations in a row without improvement the run stops. ``optim.steps`` is a ceiling. The saved adapter
(and every test number) is the state of the best evaluation, not the last.

Verdict (``stop_reason``), one criterion for "trained enough?":

- ``converged``: the best evaluation was followed by ``patience`` evaluations without improvement (the run
  stopped there, or reached the ceiling just then);
- ``ceiling``: the run reached ``optim.steps`` still improving (its best evaluation among the last
  ``patience``): more steps might have found a better state;
- ``not measured``: no validation split (``data.val_size=0``);
- ``fixed steps``: ``optim.keep=last``, a control trained for a matched number of steps, its last state kept;
- ``halved``: a search run that successive halving dropped at its rung (``pause_at`` with ``halt=true``): its
  best state up to the rung kept; its rate is not chosen (``train.halving``).

With ``patience=0`` the run always trains to the ceiling and keeps its best state; it has ``converged``
when its best evaluation is not the last one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

VERDICTS = ("converged", "ceiling", "not measured")
FIXED = "fixed steps"
HALVED = "halved"


@dataclass
class EarlyStopping:
    """The best validation loss so far, where it was, and the evaluations since (saved in checkpoints)."""

    patience: int
    best_loss: float = math.inf
    best_step: int = 0
    since_best: int = 0  # evaluations after the best one, none of them better
    evaluations: int = 0

    def update(self, step: int, loss: float) -> bool:
        """Record the evaluation at ``step``; True when it is the best so far (the caller keeps the state)."""
        self.evaluations += 1
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.since_best = loss, step, 0
            return True
        self.since_best += 1
        return False

    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def verdict(self) -> str:
        if self.evaluations == 0:
            return VERDICTS[2]
        return VERDICTS[0] if self.since_best >= max(1, self.patience) else VERDICTS[1]

    def state(self) -> dict:
        return asdict(self)
