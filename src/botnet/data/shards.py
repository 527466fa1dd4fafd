"""Sharded tar data sets in the webdataset format: ``botnet data shards SRC OUT`` and their index.

A folder read file by file is dominated, at scale, by file-system metadata and small random reads;
shards are a few large files read front to back. Layout written by :func:`write_shards`::

    OUT/train-000000.tar ...      one sample = KEY.jpg (the image file's bytes, unchanged; .png etc. keep
    OUT/val-000000.tar ...        theirs), KEY.cls (the class index as text), KEY.json ({"filename":
                                  "CLASS/NAME.jpg"}); KEY is the sample's index in its split (ImageFolder
                                  order, zero-padded). Training samples are shuffled (seeded) across shards.
    OUT/_info.json                the index: the task, the classes and, per split, the shard names and sample
                                  counts (the file timm's ``wds/`` reader reads, so timm can use the same shards)
    OUT/.botnet-generated.json    the marker (written last): botnet wrote this folder, from which source

A COCO set as SRC (``train/`` + ``instances_train.json``, or COCO 2017's layout) is written as detection
shards instead (:mod:`botnet.data.coco_shards`: a sample is an image and its annotation records, the index
holds the categories, and ``OUT/instances_val.json`` keeps the validation ground truth for COCO evaluation).

The shards are written with webdataset's ``ShardWriter`` into a temporary folder beside OUT, then
swapped into place (:mod:`botnet.io.dirswap`). OUT must be new or empty, or hold shards botnet
wrote (replaced only with ``overwrite``); nothing else is ever written into or deleted. Reading is
:mod:`botnet.data.shard_stream`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from botnet.data.errors import DataError, DatasetNotFoundError
from botnet.io.atomic import fault_point

__all__ = ["INDEX", "MARKER", "GENERATOR", "TASKS", "ShardIndex", "ShardJob", "read_index", "write_shards", "IMAGE_KEYS",
           "image_field"]

INDEX = "_info.json"
MARKER = ".botnet-generated.json"
GENERATOR = "botnet data shards"
FORMAT = "botnet-shards-1"
# the sample fields that may hold the image (webdataset keys are the file extensions)
IMAGE_KEYS = ("jpg", "png", "webp", "jpeg", "ppm", "bmp", "pgm", "tif", "tiff", "gif", "jfif")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
_WRITTEN = re.compile(r"^([A-Za-z0-9_]+-\d{6}\.tar|instances_[A-Za-z0-9_]+\.json)$")


@dataclass(frozen=True)
class ShardIndex:
    """A shards folder's index: ``splits[name] = (shard file names, samples in each)``; ``info`` is the whole
    checked index file (detection shards keep their categories and annotation counts there)."""

    root: Path
    classes: list[str]
    splits: dict[str, tuple[list[str], list[int]]]
    task: str = "classification"
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- reading the index
def _index_spec():
    from botnet.validation import Dict, Int, List, Str

    split = Dict({"name": Str(), "num_samples": Int(low=1, required=True),
                  "filenames": List(Str(min_len=1), min_len=1, required=True),
                  "shard_lengths": List(Int(low=1), min_len=1, required=True)})
    return Dict({"classes": List(Str(min_len=1), min_len=1, required=True),
                 "task": Str(choices=TASKS), "splits": Dict(item=split, required=True)})


TASKS = ("classification", "detection")
# what each task's shards are written from, and the other option where a folder is no shards folder
_SOURCE = {"classification": ("SRC", "use --dataset folder for an image folder"),
           "detection": ("COCO_ROOT", "use --dataset coco (or fashion-mosaic) for a COCO set")}


def read_index(root: str | os.PathLike, splits: tuple[str, ...], *, task: str = "classification",
               optional: tuple[str, ...] = ()) -> ShardIndex:
    """The index of the shards folder ``root`` for ``task``, checked: the shards are that task's, every split
    asked for is there (those in ``optional`` when present), its counts add up, and each shard named is a
    regular file inside ``root``. Raises :class:`DataError` (one line)."""
    from botnet.validation import loads_json, validate

    root = Path(root)
    path = root / INDEX
    src, other = _SOURCE[task]
    if not root.is_dir():
        raise DatasetNotFoundError(f"shards folder {root} does not exist (write one with: botnet data shards {src} "
                                   f"{root})")
    if not path.is_file():
        raise DataError(f"{root} is not a shards folder: it has no {INDEX} (write one with: botnet data shards {src} "
                        f"{root}, or {other})")
    if path.stat().st_size > 64 << 20:
        raise DataError(f"{path} is {path.stat().st_size >> 20} MiB, far more than an index needs; it is not one")
    info = validate(loads_json(path.read_bytes(), source=str(path), error=DataError), _index_spec(),
                    source=str(path), error=DataError)
    written_for = info.get("task") or "classification"  # shards written before the task was recorded: images
    if written_for != task:
        how = ("botnet detect train --dataset shards" if written_for == "detection"
               else "botnet train --dataset shards")
        raise DataError(f"{root} holds {written_for} shards (written from "
                        f"{'a COCO set' if written_for == 'detection' else 'an image folder'}), not {task} shards: "
                        f"train them with {how}, or write {task} shards with botnet data shards {src} OUT")
    out = {}
    for s in (*splits, *(o for o in optional if o in info["splits"] and o not in splits)):
        if s not in info["splits"]:
            raise DataError(f"{path} has no split {s!r} (it has {', '.join(sorted(info['splits'])) or 'none'}); "
                            + ("choose one with --set data.train_split=NAME / data.val_split=NAME"
                               if task == "classification" else "write the shards with it"))
        out[s] = _check_split(root, path, s, info["splits"][s])
    return ShardIndex(root, list(info["classes"]), out, written_for, info)


def _check_split(root: Path, path: Path, name: str, sp: dict) -> tuple[list[str], list[int]]:
    files, lengths = list(sp["filenames"]), [int(n) for n in sp["shard_lengths"]]
    where = f"{path}: split {name}"
    if len(files) != len(lengths):
        raise DataError(f"{where} names {len(files)} shards but gives {len(lengths)} shard_lengths")
    if sum(lengths) != int(sp["num_samples"]):
        raise DataError(f"{where}: num_samples is {sp['num_samples']} but the shard_lengths add up to {sum(lengths)}")
    for f in files:
        # names only: an index must not point outside its folder, nor at a URL or a command
        if os.path.basename(f) != f or f.startswith(".") or not f.endswith(".tar"):
            raise DataError(f"{where}: {f!r} is not the name of a .tar file in {root}")
        if not (root / f).is_file():
            raise DataError(f"{where}: shard {root / f} is missing (or not a file); copy the whole shards folder")
    return files, lengths


# ---------------------------------------------------------------------- writing
class ShardJob(NamedTuple):
    """What a source gives the writer: its samples per split, how one becomes a webdataset sample, the
    index's task fields, per-split index fields, other files to write into OUT, and what was left out."""

    samples: dict[str, list]
    make_sample: Callable[[object], dict]
    info: dict
    split_info: dict[str, dict]
    files: dict[str, bytes]
    left_out: list[tuple[str, str]]


def write_shards(src: str | os.PathLike, out: str | os.PathLike, *, splits: tuple[str, ...] = ("train", "val"),
                 max_count: int = 1000, max_size: int = 1 << 30, seed: int = 0, skip_bad: bool = False,
                 overwrite: bool = False, progress: bool = False) -> dict:
    """Write the ImageNet-layout folder ``src`` (``src/SPLIT/CLASS/*.jpg``), or the COCO set ``src``
    (:func:`botnet.data.coco_shards.collect_coco`), as shards in ``out``; return the summary (the index plus
    the files or records left out). Every image's header is checked first: an unreadable file (for COCO, a
    record the validation pass drops) stops the command, naming it, unless ``skip_bad`` leaves it out."""
    from botnet.data.mosaic import coco_layout

    src, out = Path(src), Path(out)
    _check_args(src, out, splits, max_count, max_size)
    state = _check_out(out, overwrite)
    if src.is_dir() and coco_layout(src) is not None:
        from botnet.data.coco_shards import collect_coco

        job = collect_coco(src, splits, skip_bad)
    else:
        job = _collect(src, splits, skip_bad, progress)
    from botnet.io.folders import check_output_dir

    parent = out.absolute().parent
    check_output_dir(str(parent), "the folder of OUT")
    parent.mkdir(parents=True, exist_ok=True)
    from botnet.io.temp_beside import TempBeside, remove_abandoned

    remove_abandoned(parent / out.name, _remove_shards, what="an interrupted botnet data shards")
    claim = TempBeside(parent / out.name, folder=True)
    tmp = claim.path
    try:
        info = {"name": out.absolute().name, "format": FORMAT, **job.info, "splits": {}}
        for s in splits:
            entry = _write_split(tmp, s, job.samples[s], job.make_sample, max_count, max_size, seed, progress)
            info["splits"][s] = {**entry, **job.split_info.get(s, {})}
        for name, data in job.files.items():
            _write_synced(tmp / name, data)
        _finish(tmp, info, src, dict(splits=list(splits), max_count=max_count, max_size=max_size, seed=seed))
        fault_point("shards.swap")
        _swap(tmp, out, state)
    except BaseException:
        _remove_shards(tmp)
        raise
    finally:
        claim.close()
    return {**info, "out": str(out), "left_out": [{"file": p, "reason": r} for p, r in job.left_out]}


def _check_args(src: Path, out: Path, splits, max_count: int, max_size: int) -> None:
    if not splits:
        raise DataError("--splits is empty: name at least one split (e.g. train,val)")
    for s in splits:
        if not _SPLIT_NAME.match(s):
            raise DataError(f"split name {s!r}: use letters, digits and _ (the shard files are named SPLIT-000000.tar)")
    if max_count < 1 or max_size < 1:
        raise DataError("--max-count and --max-size must be at least 1")
    a, b = src.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise DataError(f"OUT {out} and SRC {src} overlap; write the shards to a folder outside the image folder")


def _folder_state(out: Path) -> str:
    """``missing``, ``empty``, ``shards`` (botnet's marker), ``file`` or ``other``."""
    if not os.path.lexists(out):
        return "missing"
    if out.is_symlink() or not out.is_dir():
        return "file"
    if not any(out.iterdir()):
        return "empty"
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return "other"
    return "shards" if isinstance(marker, dict) and marker.get("generator") == GENERATOR else "other"


def _check_out(out: Path, overwrite: bool) -> str:
    state = _folder_state(out)
    if state == "file":
        raise DataError(f"OUT {out} is a file or a link, not a folder; choose a new folder for the shards")
    if state == "other":
        raise DataError(f"OUT {out} is not empty and botnet did not write it (no {MARKER}); botnet never writes "
                        f"over it: choose a new or empty folder")
    if state == "shards" and not overwrite:
        raise DataError(f"OUT {out} already holds shards botnet wrote; pass --overwrite to replace them, or choose "
                        f"another folder")
    extra = _foreign_file(out) if state == "shards" else None
    if extra is not None:
        raise DataError(f"OUT {out} holds shards botnet wrote, but {extra} in it is not a file botnet wrote; move it "
                        f"out (or choose another folder) before the shards are replaced")
    return state


def _collect(src: Path, splits, skip_bad: bool, progress: bool) -> ShardJob:
    """The image folder's samples ``(path, class index, relative name)`` per split, its classes, and the
    unreadable files ``[(path, reason)]``."""
    from botnet.data.folder import check_image_folder, image_files, scan_image_files

    try:
        counts = check_image_folder(src, tuple(splits))
    except DatasetNotFoundError as e:
        raise DatasetNotFoundError(str(e).replace("data folder", "SRC", 1)) from None
    except DataError as e:  # the folder check lists problems on several lines: one line here
        raise DataError("; ".join(ln.strip(" -") for ln in str(e).splitlines() if ln.strip())) from None
    classes = sorted(counts[splits[0]])
    samples = {s: [(p, ci, f"{c}/{os.path.relpath(p, src / s / c)}") for ci, c in enumerate(classes)
                   if c in counts[s] for p in image_files(src / s / c)] for s in splits}
    paths = [p for s in splits for p, _, _ in samples[s]]
    bad = scan_image_files(paths, progress=progress, desc="checking images")
    if bad and not skip_bad:
        shown = "; ".join(f"{p}: {r}" for p, r in bad[:3])
        raise DataError(f"{len(bad)} unreadable image file(s): {shown}{' ...' if len(bad) > 3 else ''}. Remove or "
                        f"replace them, or pass --skip-bad to leave them out")
    drop = {p for p, _ in bad}
    for s in splits:
        samples[s] = [t for t in samples[s] if t[0] not in drop]
        if not samples[s]:
            raise DataError(f"every image of split {s} in {src} is unreadable")
    return ShardJob(samples, _image_sample, {"task": "classification", "classes": classes}, {}, {}, bad)


def _image_sample(item: tuple) -> dict:
    """An image folder's file as a sample: its bytes unchanged, its class index, its name."""
    path, ci, rel = item
    with open(path, "rb") as f:
        data = f.read()
    return {image_field(path): data, "cls": str(ci).encode(), "json": json.dumps({"filename": rel}).encode()}


def image_field(path: str | os.PathLike) -> str:
    """The sample field of an image file: its extension (``.jpeg`` and ``.jfif`` are ``jpg``)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext in ("jpeg", "jfif") else ext


def _write_split(tmp: Path, split: str, samples: list, make_sample: Callable, max_count: int, max_size: int,
                 seed: int, progress: bool) -> dict:
    """One split's shards via webdataset's ShardWriter; returns its entry of the index."""
    import numpy as np
    import webdataset as wds
    from tqdm import tqdm

    order = list(range(len(samples)))
    if split == "train":  # the epoch shuffle permutes shards: each shard must already be a random draw
        order = np.random.default_rng(seed).permutation(len(samples)).tolist()
    width = max(len(str(len(samples) - 1)), 6)
    lengths: list[tuple[str, int]] = []
    pattern = str(tmp / f"{split}-%06d.tar").replace("%", "%%").replace("%%06d", "%06d")
    w = wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0, encoder=False, mtime=0)
    w.post = lambda fname: lengths.append((_fsync(fname), w.count))
    with w:
        for i in tqdm(order, desc=f"writing {split} shards", unit="img", disable=not progress, leave=False):
            w.write({"__key__": f"{i:0{width}d}", **make_sample(samples[i])})
    return {"name": split, "num_samples": len(samples), "filenames": [n for n, _ in lengths],
            "shard_lengths": [c for _, c in lengths]}


def _fsync(fname: str) -> str:
    with open(fname, "rb") as f:
        os.fsync(f.fileno())
    return os.path.basename(fname)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _finish(tmp: Path, info: dict, src: Path, settings: dict) -> None:
    """The index, then the marker, last: a folder without the marker is never taken as botnet's."""
    from botnet import __version__

    (tmp / INDEX).write_text(json.dumps(info, indent=1) + "\n")
    marker = {"generator": GENERATOR, "botnet_version": __version__, "source": str(src.resolve()),
              "settings": settings}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    from botnet.io.atomic import make_shareable

    make_shareable(tmp)  # mkdtemp made it private; a data set is shared like any folder


def _swap(tmp: Path, out: Path, state: str) -> None:
    from botnet.io.dirswap import swap_into_place

    now = _folder_state(out)
    if now != state:  # the folder changed while the shards were written
        raise DataError(f"OUT {out} changed while the shards were written; nothing was replaced, run the command again")
    old = swap_into_place(tmp, out.absolute())
    if old is not None:
        _remove_shards(old)


def _written_names(d: Path) -> list[str]:
    """The files in ``d`` that the writer writes: the index, the marker, SPLIT-NNNNNN.tar and (detection)
    instances_SPLIT.json."""
    names = [n for n in (INDEX, MARKER) if (d / n).exists()]
    return names + sorted(e.name for e in os.scandir(d) if _WRITTEN.match(e.name) and e.is_file(follow_symlinks=False))


def _foreign_file(d: Path) -> str | None:
    mine = set(_written_names(d))
    return next((str(d / e.name) for e in sorted(os.scandir(d), key=lambda e: e.name) if e.name not in mine), None)


def _remove_shards(d: Path) -> None:
    from botnet.io.dirswap import remove_written

    if Path(d).is_dir():
        remove_written(d, _written_names(Path(d)))
