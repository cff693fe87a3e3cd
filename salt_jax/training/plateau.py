"""Host-side learning-rate schedules: reduce-on-plateau (original recipe) and cosine cycles.

Both run on the host once per epoch and hand a float to the jitted step through the optimizer's
injected `learning_rate` hyperparameter, so a change of lr never recompiles anything.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class ReduceOnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau(mode="max", threshold=1e-4 rel, cooldown 0).

    `step(metric)` is called once per epoch with the validation metric and returns the lr to use
    next. An epoch counts as an improvement when metric > best * (1 + threshold); after more
    than `patience` epochs without one the lr is multiplied by `factor`. The dataclass fields are
    the whole state, so `asdict` / `ReduceOnPlateau(**d)` checkpoint and restore it.
    """

    lr: float
    patience: int = 10
    factor: float = 0.5
    threshold: float = 1e-4
    min_lr: float = 0.0
    best: float = -math.inf
    num_bad_epochs: int = 0

    def step(self, metric: float) -> float:
        if metric > self.best * (1.0 + self.threshold):  # torch's rule, also for best <= 0
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            self.lr = max(self.lr * self.factor, self.min_lr)
            self.num_bad_epochs = 0
        return self.lr

    def reset(self) -> None:
        """Forget the best metric (a new loss round starts), keeping the current lr."""
        self.best = -math.inf
        self.num_bad_epochs = 0


def cosine_cycle_lr(epoch: int, *, max_lr: float, min_lr: float, cycle_epochs: int) -> float:
    """lr of `epoch` in cosine cycles: max_lr at each cycle's first epoch, annealed towards min_lr.

    Epoch e of a cycle gets min + (max - min) * (1 + cos(pi * e / C)) / 2, so the last epoch of a
    cycle sits just above min_lr and the next cycle restarts at max_lr (warm restarts).
    """
    e = epoch % cycle_epochs
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * e / cycle_epochs))
