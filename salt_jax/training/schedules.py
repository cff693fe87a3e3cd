"""Host-side learning-rate schedules, one value per epoch: reduce-on-plateau (the original recipe)
and cosine cycles with warm restarts (the cosine recipe).

Both run on the host once per epoch and hand a float to the jitted step through the optimizer's
injected `learning_rate` hyperparameter, so a change of lr never recompiles anything.
"""

from __future__ import annotations

import dataclasses
import math

import optax


@dataclasses.dataclass
class ReduceOnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau(mode="max", threshold=1e-4 rel, cooldown 0).

    `step(metric)` is called once per epoch with the validation metric and returns the lr to use
    next. An epoch counts as an improvement when metric > best * (1 + threshold); after more
    than `patience` epochs without one the lr is multiplied by `factor` (not below `min_lr`), a
    reduction smaller than `eps` being skipped as torch skips it. The dataclass fields are the
    whole state, so `asdict` / `ReduceOnPlateau(**d)` checkpoint and restore it.

    Why not optax.contrib.reduce_on_plateau: it cannot reproduce torch's rule. It minimises, and
    its relative test `value < (1 - rtol) * best - atol` applied to the negated metric counts
    metric > best * (1 - rtol) as an improvement, a band below the best where torch's band lies
    above it (best 0.5: 0.49999 improves there, not in torch; 0.50001 improves there and not in
    torch either). It also reduces when the bad-epoch count reaches `patience` (torch: exceeds
    it), has no `eps`, and, as a gradient transformation, scales the updates inside the jitted
    step from per-step values, while the original steps once an epoch on the validation metric.
    """

    lr: float
    patience: int = 10
    factor: float = 0.5
    threshold: float = 1e-4
    min_lr: float = 0.0
    eps: float = 1e-8
    best: float = -math.inf
    num_bad_epochs: int = 0

    def step(self, metric: float) -> float:
        if metric > self.best * (1.0 + self.threshold):  # torch's rule, also for best <= 0
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.num_bad_epochs = 0
        return self.lr

    def reset(self) -> None:
        """Forget the best metric (a new loss round starts), keeping the current lr."""
        self.best = -math.inf
        self.num_bad_epochs = 0


def cosine_cycles(*, max_lr: float, min_lr: float, cycle_epochs: int, epochs: int) -> optax.Schedule:
    """epoch -> lr in cosine cycles of `cycle_epochs` with warm restarts (SGDR), for `epochs` epochs.

    Epoch e of a cycle gets min_lr + (max_lr - min_lr) * (1 + cos(pi * e / C)) / 2: max_lr at each
    cycle's first epoch, just above min_lr at its last, max_lr again at the next cycle's first
    (torch's CosineAnnealingWarmRestarts(T_0=C, eta_min=min_lr) stepped once an epoch). optax
    evaluates it in float32, the precision of the optimizer's lr hyperparameter.
    """
    if not 0 <= min_lr <= max_lr:
        raise ValueError(f"cosine cycles need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    cycle = dict(init_value=max_lr, peak_value=max_lr, warmup_steps=0, decay_steps=cycle_epochs, end_value=min_lr)
    return optax.sgdr_schedule([cycle] * -(-epochs // cycle_epochs))
