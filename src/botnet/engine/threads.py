"""Choose torch's CPU thread count by measurement (``--threads auto``).

On a dedicated machine every core helps; on a shared one, intra-op threads that wait for a busy
core make each step *slower* than a single thread would (measured on a 2-core machine shared with
other jobs: 2 threads 35 img/s, 1 thread 130 img/s for botnet_mini). :class:`ThreadTuner` times a
few real training steps with each candidate count, keeps the fastest, and measures again every
``reprobe_every`` steps, or as soon as the step time drifts by more than ``drift`` x from what the
last probe measured, because the load of a shared machine changes.
"""
from __future__ import annotations

import statistics

import torch

__all__ = ["ThreadTuner"]


class ThreadTuner:
    def __init__(self, max_threads: int | None = None, probe_steps: int = 3, reprobe_every: int = 300,
                 warmup_steps: int = 2, drift: float = 1.6, verbose: bool = False):
        n = max_threads or torch.get_num_threads()
        self.candidates = sorted({n, max(1, n // 2), 1}, reverse=True)
        self.probe_steps, self.reprobe_every, self.warmup = probe_steps, reprobe_every, warmup_steps
        self.verbose, self.drift = verbose, drift
        self._best_time = 0.0
        self._ema = 0.0
        self.best = n
        self._times: dict[int, list[float]] = {}
        self._queue: list[int] = []
        self._seen = 0
        self._since_probe = 0
        torch.set_num_threads(n)

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    def _start_probe(self) -> None:
        # the current choice first, so a clearly slower candidate can be dropped after one step
        order = [self.best] + [c for c in self.candidates if c != self.best]
        self._times = {c: [] for c in order}
        self._queue = [c for c in order for _ in range(self.probe_steps)]
        torch.set_num_threads(self._queue[0])

    def after_step(self, seconds: float) -> None:
        """Report the duration of the step just done; sets the thread count for the next one."""
        if not self.active:
            return
        self._seen += 1
        if self._queue:
            cur = torch.get_num_threads()
            self._times[cur].append(seconds)
            self._queue.pop(0)
            done = [statistics.median(t) for c, t in self._times.items() if c != cur and len(t) >= self.probe_steps]
            if done and seconds > 2.0 * min(done):  # clearly slower: stop probing this count
                self._queue = [c for c in self._queue if c != cur]
            if self._queue:
                torch.set_num_threads(self._queue[0])
                return
            med = {c: statistics.median(t) for c, t in self._times.items() if t}
            self.best = min(med, key=med.get)
            self._best_time = self._ema = med[self.best]
            torch.set_num_threads(self.best)
            self._since_probe = 0
            if self.verbose:
                from tqdm import tqdm

                tqdm.write("threads: " + ", ".join(f"{c}: {1000 * m:.0f} ms/step" for c, m in sorted(med.items()))
                           + f" -> using {self.best}")
            return
        self._since_probe += 1
        if self._best_time:
            self._ema = 0.8 * self._ema + 0.2 * seconds
        drifted = self._best_time and self._since_probe >= 10 and not (
            self._best_time / self.drift < self._ema < self._best_time * self.drift)
        if self._seen == self.warmup or (self._seen > self.warmup and (self._since_probe >= self.reprobe_every or drifted)):
            self._start_probe()
