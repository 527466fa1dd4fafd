"""Reading shards for training and evaluation: every rank and loader worker reads its own shards, each
epoch in an order drawn from the seed, and a resumed run continues exactly where it stopped.

The epoch plan (pure arithmetic on the index, the same on every rank):

1. The split's shards are put in an order drawn from ``(seed, epoch)``; their samples, end to end,
   form the epoch's sequence of ``n`` positions.
2. Rank ``r`` of ``R`` takes the contiguous span ``[r*L, (r+1)*L)``, ``L = n // R`` (as
   ``DistributedSampler(drop_last=True)``, the last ``n % R`` positions wait for another epoch), and
   makes ``S = L // B`` batches of it: every rank runs the same number of steps.
3. Those ``S`` batches are split between the ``W`` loader workers in contiguous runs (``S // W`` each,
   one more for the first ``S % W``), so a worker reads a run of consecutive shards, sharing at most the
   shard at either end with its neighbours. PyTorch's loader takes one batch from each worker in turn,
   which makes the order in which batches arrive a function of ``(seed, epoch, R, W, B)``.
4. Inside its run a worker shuffles blocks of ``shuffle_block`` consecutive samples (each block with its
   own seed), which is the memory a reader holds (the writer already shuffled the samples across shards).
5. Each training sample is augmented under its own seed ``(seed, epoch, sample)``, so what it becomes
   does not depend on which process read it or when.

A resume at batch ``k`` of an epoch tells each worker how many of its batches were used; the worker
skips whole shards by arithmetic, reads (without decoding) into the shard it stopped in, refills that
block and continues; the workers' turns are rotated so the next batch comes from the worker whose turn
it was. The result is bit-identical to the uninterrupted run with the same ``R``, ``W`` and batch size.
The tar files are read with webdataset's tar iterators on files botnet opens itself (never a URL or a
``pipe:`` command from the index).
"""
from __future__ import annotations

import contextlib
import random
import tarfile
import zlib
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from botnet.data.errors import BadImageError, DataError
from botnet.data.shards import IMAGE_KEYS, ShardIndex

__all__ = ["ShardSplit", "ShardStream", "ShardLoader", "shard_order", "worker_runs", "batches_used",
           "build_shard_datasets", "shard_train_loader", "shard_eval_loader"]

_MASK = (1 << 63) - 1


@dataclass
class ShardSplit:
    """One split of a shards folder, what ``build_datasets`` returns for ``data.dataset: shards``."""

    index: ShardIndex
    name: str
    transform: Callable | None = None
    mode: str = "RGB"
    skip_bad: bool = False
    limit: int | None = None
    files: list[str] = field(init=False)
    lengths: list[int] = field(init=False)

    def __post_init__(self):
        files, lengths = self.index.splits[self.name]
        if self.limit:  # the first ``limit`` samples in shard order (smoke runs and tests)
            keep, left = [], int(self.limit)
            for f, n in zip(files, lengths):
                if left <= 0:
                    break
                keep.append((f, min(n, left)))
                left -= n
            files, lengths = [f for f, _ in keep], [n for _, n in keep]
        self.files, self.lengths = list(files), list(lengths)
        self.classes = list(self.index.classes)

    def __len__(self) -> int:
        return sum(self.lengths)


# ---------------------------------------------------------------------- the plan (pure arithmetic)
def shard_order(num_shards: int, seed: int, epoch: int | None) -> list[int]:
    """The epoch's shard order: a permutation drawn from ``(seed, epoch)``; the file order for ``None``."""
    if epoch is None:
        return list(range(num_shards))
    return np.random.default_rng([int(seed) & _MASK, int(epoch), 0x5A4D]).permutation(num_shards).tolist()


def worker_runs(num_batches: int, workers: int) -> list[tuple[int, int]]:
    """``[(first batch, number of batches)]`` of each worker slot: contiguous, sizes differing by at most one."""
    q, rem = divmod(num_batches, workers)
    return [(s * q + min(s, rem), q + (s < rem)) for s in range(workers)]


def batches_used(done: int, num_batches: int, workers: int, slot: int) -> int:
    """How many of ``slot``'s batches the loader has handed out after ``done`` batches of the epoch (it takes
    one from each worker in turn, skipping workers that have run out)."""
    q = num_batches // workers
    if done <= q * workers:
        return max(0, (done - slot + workers - 1) // workers)
    return q + (done - q * workers > slot)


def _locate(lengths: list[int], order: list[int], start: int, count: int) -> Iterator[tuple[int, int, int]]:
    """``(shard, first sample in it, samples)`` pieces covering positions ``[start, start+count)`` of the
    sequence of shards in ``order``."""
    pos = 0
    for s in order:
        n = lengths[s]
        lo, hi = max(start, pos), min(start + count, pos + n)
        if lo < hi:
            yield s, lo - pos, hi - lo
        pos += n
        if pos >= start + count:
            return


# ---------------------------------------------------------------------- the data set a loader iterates
class ShardStream(IterableDataset):
    """What one rank's loader iterates: training batches per the epoch plan, or its part of the
    evaluation split in file order. ``set_epoch`` / ``skip`` are the sampler calls the trainer makes."""

    def __init__(self, split: ShardSplit, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, seed: int = 0, shuffle_block: int = 1000, train: bool = True):
        self.split, self.batch_size, self.rank, self.world_size = split, int(batch_size), int(rank), int(world_size)
        self.workers, self.seed, self.block, self.train = max(int(num_workers), 1), int(seed), int(shuffle_block), train
        self.epoch, self._skip = 0, 0

    # the sampler interface of botnet.data.builder.ResumableSampler
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, n: int) -> None:
        """Leave out this rank's first ``n`` samples (whole batches) of the next epoch started."""
        self._skip = int(n) // self.batch_size

    def num_batches(self) -> int:
        """Training steps per epoch (the same on every rank)."""
        return (len(self.split) // self.world_size) // self.batch_size

    def __len__(self) -> int:
        return len(self.split)

    def __iter__(self):
        """Not a generator: the plan is fixed now, when the loader starts (its workers copy this object)."""
        info = get_worker_info()
        wid = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"ShardStream planned for {self.workers} workers, the loader has {info.num_workers}")
        return self._train_iter(wid) if self.train else self._eval_iter(wid)

    def _train_iter(self, wid: int) -> Iterator:
        S, W, B, done = self.num_batches(), self.workers, self.batch_size, self._skip
        slot = (wid + done) % W  # the loader starts with worker 0; the epoch continues with the turn of slot done % W
        first, count = worker_runs(S, W)[slot]
        used = batches_used(done, S, W, slot)
        span = len(self.split) // self.world_size
        start = self.rank * span + first * B
        order = shard_order(len(self.split.lengths), self.seed, self.epoch)
        samples = self._shuffled(order, start, count * B, used * B)
        return (self._decode(raw, augment_seed=(self.seed, self.epoch)) for raw in samples)

    def _eval_iter(self, wid: int) -> Iterator:
        n, R, W = len(self.split), self.world_size, self.workers
        lo, hi = self.rank * n // R, (self.rank + 1) * n // R
        a, b = lo + wid * (hi - lo) // W, lo + (wid + 1) * (hi - lo) // W
        order = shard_order(len(self.split.lengths), self.seed, None)
        return (self._decode(raw, augment_seed=None) for raw in self._read(order, a, b - a))

    def _shuffled(self, order: list[int], start: int, count: int, skip: int) -> Iterator[tuple[str, dict]]:
        """Positions ``[start, start+count)``, each block of ``self.block`` shuffled under its own seed,
        the first ``skip`` of them left out (read, not decoded, only inside the block they end in)."""
        K = self.block
        first_block = skip // K
        raw = self._read(order, start + first_block * K, count - first_block * K)
        for j in range(first_block, (count + K - 1) // K):
            block = list(islice(raw, min(K, count - j * K)))
            g = np.random.default_rng([self.seed & _MASK, self.epoch, start + j * K, 0xB10C])
            perm = g.permutation(len(block)).tolist()
            lead = skip - j * K if j == first_block else 0
            for i in perm[max(lead, 0):]:
                yield block[i]

    def _read(self, order: list[int], start: int, count: int) -> Iterator[tuple[str, dict]]:
        """The raw samples at positions ``[start, start+count)``: ``(shard name, {ext: bytes, "__key__": ...})``."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        from botnet.data.folder import open_regular

        root = self.split.index.root
        for s, off, take in _locate(self.split.lengths, order, start, count):
            name, got = self.split.files[s], 0
            try:
                with open_regular(root / name) as f:
                    samples = group_by_keys(tar_file_expander([{"url": name, "stream": f}]))
                    for sample in islice(samples, off, off + take):
                        got += 1
                        yield name, sample
            except (tarfile.TarError, OSError, ValueError) as e:  # a damaged or truncated shard
                raise DataError(f"shard {root / name} cannot be read after {off + got} samples ({type(e).__name__}: "
                                f"{' '.join(str(e.args[0] if e.args else e).split())[:200]}); write the shards "
                                f"again") from None
            if got < take:
                raise DataError(f"shard {root / name} holds fewer samples than its index "
                                f"{root / '_info.json'} says ({off + got} < {off + take}); write the shards again")

    def _decode(self, raw: tuple[str, dict], augment_seed) -> tuple[Any, Any]:
        """``(transform(image), class)``; ``(None, name)`` for an unreadable image with ``skip_bad``."""
        from botnet.data.folder import pil_from_bytes

        shard, sample = raw
        key = sample.get("__key__", "?")
        name = f"{self.split.index.root / shard}:{key}"
        try:
            data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            if data is None:
                raise DataError(f"sample {name} has no image (fields {', '.join(sorted(sample))}); write the shards "
                                f"with botnet data shards")
            target = _class_of(sample, name, len(self.split.classes))
            img = pil_from_bytes(data, name, self.split.mode)
        except BadImageError:
            if self.split.skip_bad:
                return None, name
            raise
        if self.split.transform is None:
            return img, target
        if augment_seed is None:
            return self.split.transform(img), target
        with _seeded(augment_seed[0], augment_seed[1], _sample_id(key)):
            return self.split.transform(img), target


def _class_of(sample: dict, name: str, num_classes: int) -> int:
    try:
        c = int(sample["cls"])
    except (KeyError, ValueError):
        raise DataError(f"sample {name} has no class index (a .cls field holding a number)") from None
    if not 0 <= c < num_classes:
        raise DataError(f"sample {name} has class {c}, outside the {num_classes} classes of the index")
    return c


def _sample_id(key: str) -> int:
    return int(key) if key.isdigit() else zlib.crc32(key.encode())


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): cheap, and neighbouring inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & _MASK


@contextlib.contextmanager
def _seeded(seed: int, epoch: int, sample: int):
    """Python, numpy and torch (CPU) RNGs seeded from ``(seed, epoch, sample)`` inside, restored after (in the
    main process they are the training's RNGs, which the checkpoint keeps). ``torch.manual_seed`` is not used:
    without CUDA initialised it queues a CUDA seeding with a stack trace on every call."""
    s = _mix(seed, epoch, sample)
    gen = torch.default_generator
    keep = get_worker_info() is None  # a loader worker's RNGs serve nothing else: no need to keep them
    if keep:
        py, npy, pt = random.getstate(), np.random.get_state(), gen.get_state()
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)
    gen.manual_seed(s)
    try:
        yield
    finally:
        if keep:
            random.setstate(py)
            np.random.set_state(npy)
            gen.set_state(pt)


# ---------------------------------------------------------------------- loaders
class ShardLoader:
    """A ``DataLoader`` over a :class:`ShardStream` that the trainer drives like a sampler-based one:
    ``len()`` is the steps per epoch and ``sampler.set_epoch`` / ``sampler.skip`` reach the stream."""

    def __init__(self, stream: ShardStream, *, batch_size: int, num_workers: int, collate_fn=None,
                 pin_memory: bool = False):
        self.dataset = self.sampler = stream
        self.batch_size = batch_size
        # fresh workers every epoch: they copy the stream's epoch and skip when the epoch starts
        self._loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                                  pin_memory=pin_memory, persistent_workers=False,
                                  generator=torch.Generator().manual_seed(0))  # not the training's RNG

    def __len__(self) -> int:
        return self.dataset.num_batches() if self.dataset.train else -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        it = iter(self._loader)  # the plan (epoch, skip) is taken here
        self.dataset._skip = 0
        return _worker_errors(it)


def _worker_errors(it) -> Iterator:
    """A botnet error raised in a loader worker arrives with the worker's traceback in its message: keep its line."""
    try:
        yield from it
    except DataError as e:
        lines = [ln for ln in str(e).splitlines() if "DataError: " in ln]
        if len(lines) and not isinstance(e, BadImageError):
            raise DataError(lines[-1].split("DataError: ", 1)[1]) from None
        raise


def build_shard_datasets(cfg: dict, train: bool, val: bool, in_chans: int, train_tf, val_tf):
    """``(train ShardSplit or None, val ShardSplit or None, classes)`` of ``data.root``."""
    from botnet.data.shards import read_index

    d = cfg["data"]
    if not d["root"]:
        raise DataError("data.dataset=shards needs the shards folder: --data-dir OUT (written by botnet data shards "
                        "SRC OUT)")
    splits = tuple(s for s, use in ((d["train_split"], train), (d["val_split"], val)) if use)
    index = read_index(d["root"], splits)
    mode = "L" if in_chans == 1 else "RGB"
    tr = ShardSplit(index, d["train_split"], train_tf, mode, bool(d["skip_bad"]), d["limit_train"]) if train else None
    va = ShardSplit(index, d["val_split"], val_tf, mode, bool(d["skip_bad"]), d["limit_val"]) if val else None
    return tr, va, list(index.classes)


def shard_train_loader(split: ShardSplit, cfg: dict, rank: int, world_size: int, num_workers: int,
                       collate_fn) -> ShardLoader:
    stream = ShardStream(split, batch_size=int(cfg["data"]["batch_size"]), rank=rank, world_size=world_size,
                         num_workers=num_workers, seed=int(cfg["train"]["seed"]),
                         shuffle_block=int(cfg["data"].get("shuffle_block") or 1000), train=True)
    return ShardLoader(stream, batch_size=stream.batch_size, num_workers=num_workers, collate_fn=collate_fn,
                       pin_memory=torch.cuda.is_available())


def shard_eval_loader(split: ShardSplit, cfg: dict, rank: int, world_size: int, num_workers: int,
                      collate_fn) -> ShardLoader:
    bs = int(cfg["data"]["eval_batch_size"] or 2 * int(cfg["data"]["batch_size"]))
    stream = ShardStream(split, batch_size=bs, rank=rank, world_size=world_size, num_workers=num_workers, train=False)
    return ShardLoader(stream, batch_size=bs, num_workers=num_workers, collate_fn=collate_fn,
                       pin_memory=torch.cuda.is_available())
