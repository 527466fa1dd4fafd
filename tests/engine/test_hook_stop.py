"""A hook's wish to stop is reduced over the ranks: when one rank's hook wants to stop and the other's does
not (a wall-clock budget runs out on one rank first), both stop after the same step with its reason."""
import datetime
import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from botnet.engine.hooks import Hook
from botnet.engine.trainer import Trainer


class _Interrupt:
    requested = False


class _OnRank(Hook):
    stop_reason = "enough"

    def __init__(self, rank: int):
        self.rank = rank

    def wants_stop(self) -> bool:
        return dist.get_rank() == self.rank


def _decide(rank: int, port: int, out) -> None:
    from botnet.engine.distributed import reduce_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    try:
        t = Trainer.__new__(Trainer)  # only the stop decision: no model, no data
        t.hooks, t.interrupt, t.stop_reason = [Hook(), _OnRank(1)], _Interrupt(), None
        flags = reduce_dict(t._stop_flags(0.5), op="max")
        for i, h in enumerate(t.hooks):
            if flags[f"hook{i}"]:
                t.stop(h.stop_reason)
        out.put((rank, t.stop_reason, sorted(flags)))
    finally:
        dist.destroy_process_group()


def test_one_ranks_hook_stops_every_rank():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_decide, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert all(p.exitcode == 0 for p in procs)
    got = sorted(out.get(timeout=5) for _ in procs)
    assert [g[1] for g in got] == ["enough", "enough"]
    assert got[0][2] == got[1][2]  # the same keys on both ranks
