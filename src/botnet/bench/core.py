"""Measurement primitives: interleaved timing in one process, peak memory in a fresh process.

Timing: every variant of one comparison is built in the same process and run in turn
(A, B, A, B, ...) after ``warmup`` untimed rounds; each variant's figure is the median of its
``repeats`` timed runs, and the ratio is median(ours) / median(baseline). Interleaving makes
slow drifts of a shared machine (other jobs starting and stopping) hit both variants alike.

Memory on CUDA: ``torch.cuda.max_memory_allocated`` after one warm-up step and
``reset_peak_memory_stats``, minus what was allocated before the step (model, inputs), in this
process (:func:`measure_cuda_peak_memory`).

Memory on the CPU: the CPU allocator keeps no peak statistics, so the peak is the process's resident-set
high-water mark. Each configuration runs in its own interpreter (``python -m botnet.bench.worker``)
that imports torch, builds the model and inputs, runs one warm-up step, returns freed memory
to the OS, resets the kernel's high-water mark (``/proc/self/clear_refs``), runs one more step
and reports ``VmHWM - VmRSS(before the step)``: the extra memory that step needed at its peak.
glibc's dynamic mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so every large block is
returned to the OS when freed and cannot hide in the heap between the two readings.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

__all__ = [
    "time_interleaved",
    "measure_peak_memory",
    "read_status_kib",
    "reset_peak_rss",
    "trim_heap",
    "measure_cuda_peak_memory",
]


def time_interleaved(
    steps: dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5
) -> dict[str, list[float]]:
    """Run each step in turn ``warmup`` times untimed, then ``repeats`` rounds timed.

    Returns the wall-clock seconds of every timed run, per step name, in run order.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    names = list(steps)
    for _ in range(max(0, warmup)):
        for n in names:
            steps[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        # alternate the order each round so neither variant always runs right after the other
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ---------------------------------------------------------------------- memory helpers
def read_status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_peak_memory(config: dict, *, timeout: float = 1800.0) -> dict:
    """Run one configuration in a fresh interpreter and return its memory report.

    The report has ``peak_bytes`` (extra resident memory at the step's peak), ``rss_before_bytes``
    and ``method``; on failure ``error`` holds the worker's message and ``peak_bytes`` is None.
    """
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # fixed threshold: large frees go back to the OS
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, "-m", "botnet.bench.worker", json.dumps(config)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"peak_bytes": None, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"peak_bytes": None, "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def measure_cuda_peak_memory(config: dict) -> dict:
    """Peak CUDA memory one step of ``config`` allocates above what is resident before it."""
    import torch

    from botnet.bench.cases import build_step

    step = build_step(config)
    step()  # warm-up: workspaces, cuBLAS handles and autotuning are not the step's peak
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    peak = torch.cuda.max_memory_allocated() - before
    del step
    gc.collect()
    torch.cuda.empty_cache()
    return {"peak_bytes": int(peak), "allocated_before_bytes": int(before),
            "method": "torch.cuda.max_memory_allocated after reset_peak_memory_stats minus memory_allocated before the step"}
