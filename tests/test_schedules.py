"""The host-side lr schedules against hand-worked values of PyTorch's formulas (fast, no model)."""

import pytest

from salt_jax.training.config import TrainConfig
from salt_jax.training.schedules import ReduceOnPlateau, cosine_cycles


def test_plateau_matches_torch_rule_by_hand():
    # mode max, patience 2, factor 0.5: the lr halves on the 3rd epoch without a new best.
    p = ReduceOnPlateau(lr=1.0, patience=2, factor=0.5)
    lrs = [p.step(m) for m in (0.5, 0.6, 0.6, 0.59, 0.6, 0.7, 0.7)]
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    # An improvement below the relative threshold (1e-4) does not count: 0.50001 <= 0.5 * 1.0001.
    q = ReduceOnPlateau(lr=1.0, patience=0, factor=0.5, best=0.5)
    assert q.step(0.50001) == 0.5
    # torch skips a reduction of at most eps (1e-8): 1.5e-8 -> 7.5e-9 is a step of 7.5e-9.
    r = ReduceOnPlateau(lr=1.5e-8, patience=0, factor=0.5, best=0.5)
    assert r.step(0.4) == 1.5e-8
    # min_lr bounds the reduction: 1.0 * 0.5 -> 0.8.
    s = ReduceOnPlateau(lr=1.0, patience=0, factor=0.5, min_lr=0.8, best=0.5)
    assert s.step(0.4) == 0.8


def test_cosine_cycles_match_warm_restarts_by_hand():
    """torch's CosineAnnealingWarmRestarts(T_0=4, eta_min=0.001) from lr 0.01, one step an epoch:
    lr = 0.001 + 0.009 * (1 + cos(pi * (e mod 4) / 4)) / 2, i.e. with cos(pi/4) = sqrt(2)/2:
    e mod 4 = 0: 0.01; 1: 0.001 + 0.009 * (2 + sqrt 2) / 4 = 0.0086819805;
    2: 0.001 + 0.009 / 2 = 0.0055; 3: 0.001 + 0.009 * (2 - sqrt 2) / 4 = 0.0023180195."""
    hand = [0.01, 0.0086819805, 0.0055, 0.0023180195] * 2 + [0.01]
    schedule = cosine_cycles(max_lr=0.01, min_lr=0.001, cycle_epochs=4, epochs=9)
    got = [float(schedule(e)) for e in range(9)]
    # optax evaluates in float32 (spacing 6e-8 relative), the precision the optimizer's lr has.
    assert got == pytest.approx(hand, rel=1e-6)
    # lr == min_lr is a constant lr (the cosine recipe without annealing).
    flat = cosine_cycles(max_lr=1e-3, min_lr=1e-3, cycle_epochs=4, epochs=9)
    assert [float(flat(e)) for e in range(9)] == pytest.approx([1e-3] * 9, rel=1e-6)


def test_cosine_refuses_an_lr_below_min_lr():
    # It would anneal upwards, from lr to min_lr: refused with the fields named.
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(recipe="cosine", lr=1e-4, min_lr=1e-3).validate()
    with pytest.raises(ValueError, match="min_lr"):
        cosine_cycles(max_lr=1e-4, min_lr=1e-3, cycle_epochs=4, epochs=8)
    TrainConfig(recipe="original", lr=1e-4, min_lr=1e-3).validate()  # min_lr is the cosine's only
