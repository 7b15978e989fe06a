"""The budget of a training run and the learning rate along it: when to stop, how
much of the budget is spent, the rate of each step, and when to evaluate."""

from __future__ import annotations

import math

from charrnn.config import TrainConfig
from charrnn.errors import named


def lr_factor(schedule: str, progress: float, step: int, warmup_steps: int, min_lr_frac: float) -> float:
    """The fraction of lr that step `step` (0-based) uses: a linear warm-up over
    the first warmup_steps steps, times the decay at `progress`, the fraction of the
    budget spent (0 to 1): cosine or linear from 1 down to min_lr_frac, or constant."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "linear":
        decay = 1.0 - p
    else:
        return warm
    return warm * (min_lr_frac + (1.0 - min_lr_frac) * decay)


class Budget:
    """A run's budget (max_steps, max_epochs, max_time: whichever comes first) on a
    text of steps_per_epoch steps."""

    def __init__(self, tcfg: TrainConfig, steps_per_epoch: int):
        self.tcfg, self.steps_per_epoch = tcfg, steps_per_epoch

    def patience_reached(self, since_best: int | None) -> bool:
        """Whether patience has run out, given the evaluations since the best one."""
        patience = self.tcfg.patience
        return patience is not None and since_best is not None and since_best >= patience

    def reached(self, step: int, elapsed: float, since_best: int | None = None) -> str | None:
        """The budget setting that is spent (as a message names it), or None while
        training should go on; patience counts too, given the evaluations since the
        best one."""
        t = self.tcfg
        if self.patience_reached(since_best):
            return (f"{named('patience', t.patience)} ({since_best} evaluations without a new best "
                    "validation loss)")
        if t.max_steps is not None and step >= t.max_steps:
            return named("max_steps", t.max_steps)
        if t.max_epochs is not None and step >= t.max_epochs * self.steps_per_epoch:
            return (f"{named('max_epochs', format(t.max_epochs, 'g'))} "
                    f"({math.ceil(t.max_epochs * self.steps_per_epoch)} steps)")
        if t.max_time is not None and elapsed >= t.max_time:
            return named("max_time", f"{t.max_time:g}s")
        return None

    def spent(self, step: int, elapsed: float) -> float:
        """The largest fraction spent of the budgets given (steps done of max_steps,
        epochs done of max_epochs, elapsed of max_time), 0 to 1."""
        t = self.tcfg
        spent = [0.0]
        if t.max_steps is not None:
            spent.append(step / t.max_steps if t.max_steps else 1.0)
        if t.max_epochs is not None:
            spent.append(step / (t.max_epochs * self.steps_per_epoch))
        if t.max_time is not None:
            spent.append(elapsed / t.max_time)
        return min(1.0, max(spent))

    def lr(self, step: int, elapsed: float) -> float:
        """The learning rate of step `step` (0-based), `elapsed` seconds into the run:
        the one place it comes from. Both are restored by a checkpoint (elapsed only
        for max_time runs, the only ones it can matter to)."""
        t = self.tcfg
        return t.lr * lr_factor(t.lr_schedule, self.spent(step, elapsed), step, t.warmup_steps, t.min_lr_frac)


def next_eval_time(elapsed: float, every_seconds: float | None) -> float:
    """With eval_every as time: the first multiple of it after elapsed, so that
    evaluations stay at whole multiples (1m, 2m, ...) whatever they cost."""
    if every_seconds is None:
        return math.inf
    return (math.floor(elapsed / every_seconds) + 1) * every_seconds
