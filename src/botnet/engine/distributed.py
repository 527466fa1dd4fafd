"""Distributed helpers: one code path for 1 process, ``torchrun`` on one node, or several nodes.

Launch with ``torchrun --nproc_per_node=N -m botnet.cli train ...``; ``torchrun`` sets the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` that :func:`init_distributed` reads. Without them everything runs as a single
process (``DistInfo(rank=0, world_size=1, ...)``) and every helper here is a no-op. Under
``torchrun --max-restarts`` each generation of workers takes a key prefix of its own in torchrun's
store (:func:`_generation_store`), so restarted workers never meet the keys of the killed ones.

Typical use (also from the detection trainer)::

    from botnet.engine.distributed import init_distributed, reduce_dict, barrier, cleanup
    dist_info = init_distributed()            # gloo on CPU, nccl on CUDA
    model.to(dist_info.device)
    if dist_info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=dist_info.device_ids)
    ...
    metrics = reduce_dict({"loss_sum": s, "count": n}, op="sum")   # identical on every rank
    if dist_info.is_main: save(...)
    cleanup()
"""
from __future__ import annotations

import datetime
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "get_dist_info",
    "is_distributed",
    "barrier",
    "all_reduce_tensor",
    "all_reduce_mean",
    "reduce_dict",
    "all_gather_object",
    "gather_object",
    "broadcast_object",
    "elastic_launch",
    "any_rank_true",
    "cleanup",
    "seed_everything",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 .. world_size-1).
        world_size: number of processes in the job.
        local_rank: rank on this node (selects the GPU).
        device: the ``torch.device`` this process computes on.
        is_main: ``rank == 0``; only the main rank logs, plots and writes checkpoints.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.world_size > 1

    @property
    def device_ids(self) -> list[int] | None:
        """``device_ids`` argument for ``DistributedDataParallel`` (None on CPU)."""
        return [self.device.index] if self.device.type == "cuda" else None


_INFO = DistInfo()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group from the ``torchrun`` environment, or run single-process.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available, else CPU). With CUDA each
            process uses GPU ``LOCAL_RANK``.
        backend: process-group backend; default ``nccl`` on CUDA and ``gloo`` on CPU.
        timeout_s: collective timeout.

    Returns:
        The :class:`DistInfo` of this process (also kept for :func:`get_dist_info`).
    """
    global _INFO
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    from botnet.errors import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else local_rank % max(torch.cuda.device_count(), 1)
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs: dict[str, Any] = {}
        if dev.type == "cuda" and backend == "nccl":
            kwargs["device_id"] = dev
        store = _generation_store(rank, world_size, timeout_s)
        if store is not None:
            kwargs["store"] = store
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    _INFO = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                     is_main=(rank == 0))
    return _INFO


_HANDSHAKE = "botnet/elastic/"


def _generation_store(rank: int, world_size: int, timeout_s: float):
    """A key space of its own for this generation of workers in torchrun's shared store (None: not under one).

    torchrun's c10d rendezvous hands its workers the agent's own TCPStore (``TORCHELASTIC_USE_AGENT_STORE``)
    and keeps that store, at the same port, across restarts. The process group of the killed generation left its
    keys there (each rank's gloo/NCCL address); restarted workers read them at once and connect to dead
    processes: "connectFullMesh ... connection refused", or a hang. The restart counter cannot name the
    generation, since each agent counts its own restarts. So rank 0 draws a fresh token and hands it to every
    rank through keys no earlier generation can have written.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not os.environ.get("MASTER_PORT"):
        return None
    timeout = datetime.timedelta(seconds=timeout_s)
    client = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"]),
                           is_master=False, timeout=timeout)
    token = _agree_on_token(client, rank, world_size, timeout_s)
    return dist.PrefixStore(f"{_HANDSHAKE}gen/{token}/", client)


def _agree_on_token(store, rank: int, world_size: int, timeout_s: float) -> str:
    """Rank 0 answers each rank's fresh nonce with its fresh token until every rank confirms under that token.

    Rank r writes ``req/r = nonce`` and waits for ``ack/<nonce>``; a stale ``req/r`` of a dead worker gets
    an answer nobody reads, and the live one's is answered as soon as its nonce appears."""
    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"{_HANDSHAKE}req/{rank}", nonce)
        store.wait([f"{_HANDSHAKE}ack/{nonce}"])
        token = store.get(f"{_HANDSHAKE}ack/{nonce}").decode()
        store.set(f"{_HANDSHAKE}done/{token}/{rank}", "1")
        return token
    token, served = uuid.uuid4().hex, {}
    pending, deadline = set(range(1, world_size)), time.monotonic() + timeout_s
    while pending:
        for r in sorted(pending):
            if store.check([f"{_HANDSHAKE}done/{token}/{r}"]):
                pending.discard(r)
            elif store.check([f"{_HANDSHAKE}req/{r}"]):
                nonce = store.get(f"{_HANDSHAKE}req/{r}")
                if served.get(r) != nonce:
                    store.set(f"{_HANDSHAKE}ack/{nonce.decode()}", token)
                    served[r] = nonce
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"ranks {sorted(pending)[:8]} did not join within {timeout_s:.0f} s")
        time.sleep(0.01 if pending else 0)
    return token


def get_dist_info() -> DistInfo:
    """The :class:`DistInfo` set by the last :func:`init_distributed` (single-process default)."""
    return _INFO


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_tensor(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce ``tensor`` in place (``op`` in ``sum``, ``max``, ``min``) and return it."""
    if is_distributed():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks (a new tensor; unchanged in a single process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def reduce_dict(values: dict[str, float | torch.Tensor], op: str = "sum",
                device: torch.device | None = None) -> dict[str, float]:
    """Reduce a dict of scalars across ranks in one collective; returns Python floats.

    Use ``op="sum"`` with sums and counts (``{"loss_sum":..., "correct":..., "n":...}``) so that
    ranks with different numbers of samples are weighted correctly; ``op="mean"`` averages.
    """
    keys = sorted(values)
    if not keys:
        return {}
    dev = device or get_dist_info().device
    if is_distributed() and dist.get_backend() == "gloo":
        dev = torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dev)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def any_rank_true(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on at least one rank (one all-reduce)."""
    if not is_distributed():
        return bool(flag)
    return reduce_dict({"flag": 1.0 if flag else 0.0}, op="max", device=device)["flag"] > 0


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's picklable ``obj`` as a list on rank ``dst`` (None elsewhere; ``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    rank = dist.get_rank()
    out: list[Any] | None = [None] * dist.get_world_size() if rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def elastic_launch() -> bool:
    """True under ``torchrun --max-restarts N`` with N > 0: torchrun restarts a failed worker group, and the new
    workers must continue the run (``--resume auto`` is their default)."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID")) and _env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to all ranks and return it."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Destroy the process group if one was created (safe to call always)."""
    global _INFO
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # pragma: no cover - a dead peer must not hide the real error
            pass
        dist.destroy_process_group()
    _INFO = DistInfo(device=_INFO.device)


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with ``seed + rank``.

    With ``deterministic=True`` also switch on ``torch.use_deterministic_algorithms`` (and the
    cuBLAS workspace setting it needs), so runs repeat bit for bit on the same machine.
    """
    import numpy as np

    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
