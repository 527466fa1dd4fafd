"""BudgetFitter: how many optimizer steps a wall-clock budget holds (the clock is simulated)."""
import pytest

import botnet.engine.budget as budget_mod
from botnet.engine.budget import BudgetFitter


@pytest.fixture
def clock(monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: now["t"])
    return now


def _fitter(clock, eval_every, budget=100.0, step_s=0.1, spe=100, planned=10_000):
    f = BudgetFitter(budget, clock["t"], planned_steps=planned, steps_per_epoch=spe, eval_every=eval_every,
                     n_eval_items=0)
    for _ in range(100):
        f.add_step(step_s)
    f.add_eval(0.0)  # evaluations measured as free: the budget is all steps
    return f


def test_one_final_evaluation_keeps_the_partial_epoch(clock):
    # 98 s, 0.1 s a step, 5 s reserve, 3 % margin: int(930 * 0.97) = 902 steps, 9.02 epochs.
    # With no evaluations between epochs the 2 steps of the 10th epoch are training, not waste.
    f = _fitter(clock, eval_every=0, budget=98.0)
    assert f.target_steps(step=0, items_per_s=1000.0) == 902


def test_evaluations_at_epoch_ends_snap_a_short_last_epoch_away(clock):
    f = _fitter(clock, eval_every=1, budget=98.0)
    assert f.target_steps(step=0, items_per_s=1000.0) == 900  # not 2 steps of a 10th epoch, then a 10th evaluation
    f = _fitter(clock, eval_every=1, budget=100.0)
    assert f.target_steps(step=0, items_per_s=1000.0) == 921  # 21 steps (over 15 % of an epoch) are worth it


def test_target_follows_the_clock_and_stays_within_the_plan(clock):
    f = _fitter(clock, eval_every=0, planned=500)
    assert f.target_steps(step=0, items_per_s=1000.0) == 500  # the recipe's epochs cap it
    f = _fitter(clock, eval_every=0)
    clock["t"] += 50.0  # half the budget gone after 400 steps: 450 more fit, 3 % margin on the total
    assert f.target_steps(step=400, items_per_s=1000.0) == int((400 + 450) * 0.97)
    clock["t"] += 60.0  # past the budget: one more step at least, and exhausted() says stop
    assert f.target_steps(step=900, items_per_s=1000.0) == 901 and f.exhausted()
