"""--threads auto: the tuner keeps the count whose measured steps are fastest and re-measures on drift."""
import torch

from botnet.engine.threads import ThreadTuner


def _drive(tuner, cost, steps):
    used = []
    for _ in range(steps):
        n = torch.get_num_threads()
        used.append(n)
        tuner.after_step(cost[n])
    return used


def test_picks_fastest_and_follows_a_change_of_load():
    old = torch.get_num_threads()
    try:
        t = ThreadTuner(max_threads=2, probe_steps=3, reprobe_every=1000)
        used = _drive(t, {1: 1.0, 2: 0.5}, 20)  # quiet machine: 2 threads are faster
        assert t.best == 2 and used[-5:] == [2] * 5
        used = _drive(t, {1: 1.0, 2: 5.0}, 30)  # another job takes a core: 2 threads become 5x slower
        assert t.best == 1 and used[-10:] == [1] * 10
        assert used.count(2) <= 6  # the slow setting was dropped quickly
    finally:
        torch.set_num_threads(old)
