"""DataLoader worker processes: how many, and how each is seeded."""
from __future__ import annotations

import os
import random
from typing import Any

import torch

__all__ = ["resolve_num_workers", "seed_worker"]


def resolve_num_workers(value: Any, device: torch.device | None = None, world_size: int = 1) -> int:
    """``data.num_workers`` as a number: ``auto`` is 0 on the CPU, ``min(8, cores per process)`` on CUDA."""
    if value != "auto":
        return int(value)
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if not on_cuda:
        return 0
    return max(min(8, (os.cpu_count() or 1) // max(world_size, 1) - 1), 0)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: derive numpy/python seeds from the torch worker seed."""
    import numpy as np

    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)
