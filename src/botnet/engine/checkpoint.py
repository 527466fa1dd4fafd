"""Checkpoints: weights and training state as safetensors files; nothing is ever unpickled.

A checkpoint ``DIR/last.safetensors`` is a pair of files:

* ``DIR/last.safetensors`` - the model's ``state_dict`` (plain tensors, loadable without
  pickle) with string metadata: architecture name, ``model_kwargs`` (JSON), class names, epoch,
  step, a ``save_id`` and a free-form ``extra`` JSON;
* ``DIR/last.state.safetensors`` - everything needed to continue training exactly: optimizer, LR
  scheduler, EMA weights, AMP grad scaler, epoch, step, RNG states (python, numpy, torch, CUDA)
  and the same ``save_id``; its tensors are safetensors entries and the rest a JSON skeleton in
  the file's metadata (:mod:`botnet.engine.safe_state`). Run directories get shared, so no
  file botnet reads can run code: ``.pt``/``.pth`` weights are read with ``weights_only=True``.

Every file is written to a temporary file in the same directory, flushed, ``fsync``-ed and
moved into place with ``os.replace`` (atomic on POSIX). A pair is saved crash-consistently: both
new files are written and fsync-ed under temporary names first; the current pair, when complete,
is kept reachable as ``last.prev.safetensors`` + ``last.prev.state.safetensors`` (hard links, a
copy where links are unsupported); then the state and the weights are renamed into place, and
the previous pair is removed once the new one is complete and durable. At every instant one of
the two pairs carries matching ``save_id`` s, and a resume (:func:`select_resume_pair`) takes the
newest such pair. A full disk is one :class:`CheckpointError` naming the folder and the space
needed; nothing is renamed and no temporary file is left.

Test-only fault injection: each step of a save calls ``_fault_point(NAME)`` (names in
``SAVE_POINTS``); ``fault_hook`` (a callable, set by tests) may raise there, and the environment
variable ``BOTNET_FAULT_KILL_AT=NAME[:N]`` SIGKILLs the process the N-th time it reaches NAME.

API::

    save_checkpoint(path, model, optimizer=opt, scheduler=sched, ema=ema, scaler=scaler,
                    epoch=e, step=s, arch="botnet_mini", model_kwargs={...}, class_names=[...])
    info = load_checkpoint(path, model, optimizer=opt, scheduler=sched, ema=ema, scaler=scaler)
    load_weights(model, path)          # raises CheckpointMismatchError listing bad keys
    meta = read_metadata(path)         # arch, model_kwargs, class_names, ... without loading
"""
from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from botnet.errors import CheckpointError
from botnet.io.dirswap import fsync_dir
from botnet.io.weights import (STATE_SUFFIX, WEIGHTS_SUFFIX, CheckpointMismatchError,
                               check_state_dict, read_weights_file, resolve_checkpoint, unwrap_model)
from botnet.io.weights import clean_key as _clean_key
from botnet.io.weights import read_weights as _read_weights
from botnet.io.weights import short_error as _short
from botnet.log import get_logger

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "atomic_write_bytes",
    "atomic_write",
    "unwrap_model",
    "state_path_for",
    "resolve_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_metadata",
    "read_training_state",
    "write_training_state",
    "remove_stale_temp_files",
    "check_resumable",
    "select_resume_pair",
    "previous_path",
    "has_checkpoint",
    "SAVE_POINTS",
    "read_weights_file",
    "get_rng_state",
    "set_rng_state",
]

log = get_logger("checkpoint")
STATE_FORMAT = "botnet-state-v1"
_TEMP_NAME = re.compile(r"^\..+\.(safetensors|json|jsonl|csv|md|yaml|png|txt|onnx|pt2|ts)\.[a-z0-9_]{8}\.tmp$")


# ----------------------------------------------------------------------------- fault injection (test-only)
FAULT_ENV = "BOTNET_FAULT_KILL_AT"
# the steps of a pair save, in order; a weights-only save (best.safetensors) runs the weights.* ones
SAVE_POINTS = ("state.write", "state.fsync", "weights.write", "weights.fsync",
               "prev.state.link", "prev.state.rename", "prev.weights.link", "prev.weights.rename", "prev.dir.fsync",
               "state.rename", "weights.rename", "dir.fsync", "prev.weights.unlink", "prev.state.unlink", "done")
fault_hook: Callable[[str], None] | None = None  # test-only: called with each point's name; may raise
_fault_seen: dict[str, int] = {}


def _fault_point(point: str) -> None:
    """Test-only hook at each step of a save: lets the crash tests stop a save exactly here."""
    if fault_hook is not None:
        fault_hook(point)
    spec = os.environ.get(FAULT_ENV)
    if spec and spec.partition(":")[0] == point:
        _fault_seen[point] = _fault_seen.get(point, 0) + 1
        if _fault_seen[point] >= int(spec.partition(":")[2] or 1):
            os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- atomic writes
def _unlink_quiet(path: str | os.PathLike | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _write_temp(path: Path, write_fn: Callable[[str], None], point: str | None = None) -> str:
    """``write_fn(tmp)`` into a fsync-ed temporary file beside ``path``; returns its name.
    On any error (or Ctrl-C) the temporary file is removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        if point:
            _fault_point(f"{point}.write")
        write_fn(tmp)
        if point:
            _fault_point(f"{point}.fsync")
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None], *, point: str | None = None) -> Path:
    """Write ``path`` atomically: ``write_fn(tmp_path)`` writes a temp file in the same
    directory, which is fsync-ed and then ``os.replace``-d onto ``path``.

    If ``write_fn`` raises (or the process dies) the old ``path`` is untouched and the temp file
    is removed (or left as ``.*.tmp``, never under the final name). ``point`` names the steps for
    the fault-injection tests (``weights``: ``weights.write``, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = _write_temp(path, write_fn, point)
    try:
        if point:
            _fault_point(f"{point}.rename")
        os.replace(tmp, path)
        tmp = None
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if point:
        _fault_point("dir.fsync")
    fsync_dir(path.parent)
    if point:
        _fault_point("done")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _w)


# ----------------------------------------------------------------------------- helpers
def state_path_for(weights_path: str | os.PathLike) -> Path:
    """``x/last.safetensors`` -> ``x/last.state.safetensors``."""
    p = Path(weights_path)
    name = p.name
    for suffix in (STATE_SUFFIX, WEIGHTS_SUFFIX):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = p.stem
    return p.with_name(name + STATE_SUFFIX)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed save left in ``directory``; returns them.

    :func:`atomic_write` never leaves a temporary file under a final name, but a SIGKILL between
    its write and its rename leaves the temporary file itself. Call this at the start of a run,
    before anything writes into the directory (main rank only).
    """
    d = Path(directory)
    removed = []
    if d.is_dir():
        for f in d.glob(".*.tmp"):
            # only the names atomic_write makes (".NAME.<8 mkstemp chars>.tmp" for files botnet writes)
            if f.is_file() and _TEMP_NAME.match(f.name):
                try:
                    f.unlink()
                    removed.append(f)
                except OSError:
                    pass
    return removed


def get_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU) and every CUDA device."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    import numpy as np

    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = unwrap_model(model).state_dict()
    # clone: safetensors refuses tensors sharing storage; contiguous CPU copies are always valid
    return {_clean_key(k): v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, *, optimizer=None, scheduler=None,
                    ema=None, scaler=None, epoch: int = 0, step: int = 0, arch: str | None = None,
                    model_kwargs: dict | None = None, class_names: list[str] | None = None,
                    extra: dict | None = None, config: dict | None = None,
                    save_state: bool = True, rng: bool = True, task: str = "classification",
                    rank_rng: list[dict[str, Any]] | None = None) -> Path:
    """Write ``path`` (safetensors weights) and, if ``save_state``, ``path.state.safetensors`` atomically.

    Args:
        path: target weights file (``.safetensors`` is appended when missing).
        model: the model (DDP / compiled models are unwrapped).
        optimizer, scheduler, ema, scaler: objects with ``state_dict()``; ``None`` to skip.
            For timm schedulers (no ``state_dict``), the scheduler is stored with ``__dict__``.
        epoch: number of *completed* epochs; step: number of completed optimizer steps.
        arch, model_kwargs, class_names: stored as metadata so ``botnet eval/predict`` can rebuild
            the model from the file alone.
        extra: JSON-serialisable dict (e.g. best accuracy, position inside the epoch).
        config: the full run config (JSON-serialisable).
        rng: store python/numpy/torch/CUDA RNG states for an exact resume.
        rank_rng: under DDP, every rank's RNG states (rank order), so each rank continues its own stream.

    Only call this on the main rank.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX):
        path = path.with_name(path.name + WEIGHTS_SUFFIX)
    save_id = uuid.uuid4().hex
    meta = {
        "format": "botnet-checkpoint-v1",
        "task": task,
        "save_id": save_id,
        "arch": arch or unwrap_model(model).__class__.__name__,
        "model_kwargs": json.dumps(model_kwargs or {}),
        "class_names": json.dumps(list(class_names) if class_names is not None else None),
        "epoch": str(int(epoch)),
        "step": str(int(step)),
        "extra": json.dumps(extra or {}),
        "config": json.dumps(config or {}, default=str),
    }
    weights = _model_state(model)
    sizes = [_payload_bytes(weights, meta)]
    try:
        if not save_state:  # best.safetensors: one file, replaced atomically
            return atomic_write(path, lambda tmp: save_file(weights, tmp, metadata=meta), point="weights")
        state = _training_state(save_id, epoch, step, extra, meta["arch"], optimizer, scheduler, ema, scaler, rng)
        if rng and rank_rng:
            state["rng_ranks"] = list(rank_rng)
        tensors, smeta = _state_payload(state, save_id)
        sizes.append(_payload_bytes(tensors, smeta))
        _save_pair(path, lambda tmp: save_file(weights, tmp, metadata=meta),
                   lambda tmp: save_file(tensors, tmp, metadata=smeta))
    except Exception as e:
        if not _is_disk_full(e):
            raise
        raise CheckpointError(f"no space left on the disk of {path.parent} while saving {path.name}: it needs about "
                              f"{sum(sizes) / 2**20:.1f} MB free (the new checkpoint files); free space there (or move "
                              f"the run folder to a larger disk) and continue with --resume {path.parent}; the previous "
                              f"checkpoint, if any, is kept") from None
    return path


def _training_state(save_id, epoch, step, extra, arch, optimizer, scheduler, ema, scaler, rng) -> dict[str, Any]:
    state: dict[str, Any] = {"save_id": save_id, "epoch": int(epoch), "step": int(step), "extra": extra or {},
                             "arch": arch}
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("ema", ema), ("scaler", scaler)):
        if obj is not None:
            state[name] = obj.state_dict()
    if rng:
        state["rng"] = get_rng_state()
    return state


def _state_payload(state: dict[str, Any], save_id: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from botnet.engine.safe_state import pack

    tensors, skeleton = pack(state)
    return tensors, {"format": STATE_FORMAT, "save_id": save_id, "skeleton": skeleton}


def _payload_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values()) + sum(len(k) + len(v) for k, v in meta.items())


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, also as safetensors' own error (which carries only the text of the OS error)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(m in text for m in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122"))


def write_training_state(path: str | os.PathLike, state: dict[str, Any], save_id: str) -> Path:
    """Atomically write a training-state tree (see :mod:`botnet.engine.safe_state`)."""
    from safetensors.torch import save_file

    tensors, meta = _state_payload(state, save_id)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


# ----------------------------------------------------------------------------- crash-consistent pairs
PREV_TAG = ".prev"  # RUN/last.safetensors -> RUN/last.prev.safetensors, kept while a save replaces the pair


def previous_path(weights_path: str | os.PathLike) -> Path:
    """``RUN/last.safetensors`` -> ``RUN/last.prev.safetensors`` (its state: ``last.prev.state.safetensors``)."""
    p = Path(weights_path)
    stem = p.name[: -len(WEIGHTS_SUFFIX)] if p.name.endswith(WEIGHTS_SUFFIX) else p.name
    return p.with_name(stem + PREV_TAG + WEIGHTS_SUFFIX)


def _header(path: Path) -> dict[str, str] | None:
    """A safetensors file's metadata (header only), or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:
        return None


def _pair_id(weights_path: Path) -> str | None:
    """The ``save_id`` a weights file shares with its training state; None when either file is
    missing or unreadable, or the two come from different saves."""
    w, s = _header(weights_path), _header(state_path_for(weights_path))
    if w is None or s is None or s.get("format") != STATE_FORMAT or not s.get("save_id"):
        return None
    return s["save_id"] if w.get("save_id", s["save_id"]) == s["save_id"] else None


def _link_over(src: Path, dst: Path, point: str) -> None:
    """Make ``dst`` name the same file as ``src`` (a hard link; a copy where links are unsupported),
    replacing ``dst`` atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # rename() of two names of one file is a no-op that would leave the temporary name
    tmp: Path | None = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        _fault_point(f"{point}.link")
        try:
            os.link(src, tmp)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _fault_point(f"{point}.rename")
        os.replace(tmp, dst)
        tmp = None
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _save_pair(wpath: Path, write_weights: Callable[[str], None], write_state: Callable[[str], None]) -> None:
    """Replace the pair ``wpath`` + its state so that a complete pair exists at every instant.

    1. both new files are written and fsync-ed under temporary names (nothing visible changes);
    2. the current pair, if complete, gets second names ``*.prev.*`` (hard links);
    3. the state, then the weights are renamed into place (the current pair is mixed in between:
       the previous pair is the complete one);
    4. once the new pair is durable, the previous pair is removed.
    A mixed current pair left by a killed save is not linked: its ``*.prev.*`` pair is the good one.
    """
    wpath.parent.mkdir(parents=True, exist_ok=True)
    spath, prev = state_path_for(wpath), previous_path(wpath)
    tmp_s: str | None = None
    tmp_w: str | None = None
    try:
        tmp_s = _write_temp(spath, write_state, "state")
        tmp_w = _write_temp(wpath, write_weights, "weights")
        if _pair_id(wpath) is not None:
            _link_over(spath, state_path_for(prev), "prev.state")
            _link_over(wpath, prev, "prev.weights")
            _fault_point("prev.dir.fsync")
            fsync_dir(wpath.parent)
        _fault_point("state.rename")
        os.replace(tmp_s, spath)
        tmp_s = None
        _fault_point("weights.rename")
        os.replace(tmp_w, wpath)
        tmp_w = None
    except BaseException:
        _unlink_quiet(tmp_s)
        _unlink_quiet(tmp_w)
        raise
    _fault_point("dir.fsync")
    fsync_dir(wpath.parent)
    for point, f in (("prev.weights.unlink", prev), ("prev.state.unlink", state_path_for(prev))):
        _fault_point(point)
        _unlink_quiet(f)
    fsync_dir(wpath.parent)
    _fault_point("done")


def select_resume_pair(path: str | os.PathLike) -> tuple[Path, str | None]:
    """The weights file of the newest complete pair to resume ``path`` (a run directory or a weights
    file): ``last.*`` when both files come from one save, else the ``last.prev.*`` pair that an
    interrupted save kept. Returns ``(weights, note)``, ``note`` saying why the previous pair was
    taken. When neither pair is complete the current one is returned: the caller's checks name
    what is wrong with it."""
    p = Path(path)
    try:
        wpath = resolve_checkpoint(p, prefer=("last",))
    except CheckpointError:
        prev = previous_path(p / f"last{WEIGHTS_SUFFIX}")
        if not (p.is_dir() and _pair_id(prev)):
            raise
        return prev, f"{p} holds no last{WEIGHTS_SUFFIX}; using the previous checkpoint {prev.name}"
    if _pair_id(wpath) is not None or wpath.name.endswith(PREV_TAG + WEIGHTS_SUFFIX):
        return wpath, None
    prev = previous_path(wpath)
    if _pair_id(prev) is None:
        return wpath, None
    step = (_header(prev) or {}).get("step", "?")
    return prev, (f"{wpath.name} and {state_path_for(wpath).name} in {wpath.parent} come from different saves (a save "
                  f"was interrupted); using the previous complete checkpoint {prev.name} (step {step})")


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a ``last`` checkpoint to resume (its current or its previous pair)."""
    last = Path(run_dir) / f"last{WEIGHTS_SUFFIX}"
    return last.is_file() or previous_path(last).is_file()


def read_training_state(path: str | os.PathLike, expected_save_id: str | None = None) -> dict[str, Any]:
    """Read what :func:`write_training_state` wrote; no code in the file can run.

    The ``save_id`` is checked against the weights file's before any tensor is read.

    Raises:
        CheckpointError: missing, truncated or foreign file, or a state from another save.
    """
    from safetensors import safe_open

    from botnet.engine.safe_state import StateFormatError, unpack

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != STATE_FORMAT or "skeleton" not in meta:
                raise CheckpointError(f"{path} is not a botnet training state (format "
                                      f"{meta.get('format')!r}, expected {STATE_FORMAT!r})")
            if expected_save_id and meta.get("save_id") != expected_save_id:
                raise CheckpointError(f"{path} and its weights file come from different saves (interrupted "
                                      f"write?); resume from a complete checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated/garbage files
        raise CheckpointError(f"cannot read training state {path}: {_short(e)} (truncated or not a "
                              f"safetensors file)") from e
    try:
        state = unpack(tensors, meta["skeleton"])
    except StateFormatError as e:
        raise CheckpointError(f"training state {path} is corrupt: {e}") from e
    from botnet.engine.schemas import TRAINING_STATE, consistency_problem
    from botnet.validation import validate

    validate(state, TRAINING_STATE, source=f"training state {path}", error=CheckpointError,
             hint="the file is damaged; resume from another checkpoint")
    why = consistency_problem(state)
    if why:
        raise CheckpointError(f"training state {path}: {why}; the file is damaged")
    return state


def check_resumable(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Find the ``last`` checkpoint of ``path`` and check both of its files can be read, cheaply
    (headers only), so a bad ``--resume`` fails before any work. Returns ``(weights, metadata)``."""
    wpath, _ = select_resume_pair(path)
    meta = read_metadata(wpath)
    spath = state_path_for(wpath)
    if not spath.is_file():
        raise CheckpointError(f"cannot resume from {wpath}: its training state {spath} is missing (a best.* file "
                              f"holds weights only; resume from the run directory, or start from these weights "
                              f"with --init-weights {wpath})")
    from safetensors import safe_open

    try:
        with safe_open(str(spath), framework="pt", device="cpu") as f:
            smeta = dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"cannot read training state {spath}: {_short(e)} (truncated or not a safetensors "
                              f"file)") from e
    if smeta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{spath} is not a botnet training state (format {smeta.get('format')!r})")
    if meta.get("save_id") and smeta.get("save_id") != meta.get("save_id"):
        raise CheckpointError(f"{wpath} and {spath} come from different saves (interrupted write?)")
    return wpath, meta


def read_metadata(path: str | os.PathLike, prefer: tuple[str, ...] = ("best", "last")) -> dict[str, Any]:
    """Metadata of a weights file, JSON fields decoded (``arch``, ``model_kwargs``, ...)."""
    from safetensors import safe_open

    path = resolve_checkpoint(path, prefer)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(f"{path} is a {path.suffix} weights file without the architecture this command needs; "
                              f"give a botnet checkpoint (RUN/best.safetensors or a run directory), or build the "
                              f"model and load {path.name} with botnet.load_resnet_weights / --init-weights")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_short(e)} (truncated, or not a "
                              f"safetensors file)") from e
    from botnet.engine.schemas import METADATA
    from botnet.validation import loads_json, validate

    out: dict[str, Any] = dict(raw)
    for k in ("model_kwargs", "class_names", "extra", "config"):
        if k in raw:  # depth-capped: a deeply nested field is one line, not a RecursionError
            out[k] = loads_json(raw[k], source=f"checkpoint {path} (metadata field {k})", error=CheckpointError)
    for k in ("epoch", "step"):
        if k in raw:
            try:
                out[k] = int(raw[k])
            except ValueError:
                raise CheckpointError(f"checkpoint {path} has a corrupt metadata field {k}={raw[k]!r}") from None
    return validate(out, METADATA, source=f"checkpoint {path}", error=CheckpointError,
                    hint="the file's metadata is damaged; use another checkpoint")


def load_weights(model: torch.nn.Module, path: str | os.PathLike, *, use_ema: bool = False) -> dict[str, Any]:
    """Load model weights from a checkpoint (strict: same keys, same shapes).

    Args:
        model: the target model (DDP / compiled models are unwrapped).
        path: ``.safetensors`` file, ``.state.safetensors`` file, run directory, or a ``.pt/.pth``
            state dict (read with ``weights_only=True``).
        use_ema: load the EMA weights stored in the ``.state.safetensors`` beside the weights instead.

    Returns:
        The checkpoint metadata (empty for plain ``.pt`` files).

    Raises:
        CheckpointMismatchError: when keys or shapes differ (another architecture or number of
            classes); nothing is loaded into the model in that case.
    """
    p = Path(path)
    if p.suffix in (".pt", ".pth", ".bin"):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file not found: {p}")
        state, meta = _read_weights(p), {}
    else:
        p = resolve_checkpoint(p)
        if use_ema and p.name == f"last{WEIGHTS_SUFFIX}":
            p, _ = select_resume_pair(p)  # the EMA lives in the state file: take a pair from one save
        meta = read_metadata(p)
        if use_ema:
            sp = state_path_for(p)
            if not sp.is_file():
                raise CheckpointError(f"--ema needs {sp} (training state with EMA weights), which is missing")
            full = read_training_state(sp, expected_save_id=meta.get("save_id"))
            if "ema" not in full:
                raise CheckpointError(f"{sp} holds no EMA weights (the run was trained without EMA)")
            state = {_clean_key(k): v for k, v in full["ema"].items()}
        else:
            state = _read_weights(p)
    check_state_dict(model, state, p, arch=meta.get("arch"))
    unwrap_model(model).load_state_dict(state, strict=True)
    return meta


def _check_optimizer_fits(optimizer, sd: dict[str, Any], spath: Path, meta: dict[str, Any], wpath: Path) -> None:
    """A stored optimizer state of another optimizer loads without complaint and fails at the first
    step: refuse it here, naming the file and the option that chooses the optimizer."""
    from botnet.engine.schemas import optimizer_fit_problem

    why = optimizer_fit_problem(optimizer, sd)
    if why:
        name = ((meta.get("config") or {}).get("optim") or {}).get("name")
        was = (f"the run was trained with optim.name={name}: resume with --opt {name}, or" if name else "resume "
               "with the run's optimizer (--opt), or")
        raise CheckpointError(f"training state {spath} does not fit this run's optimizer "
                              f"({type(optimizer).__name__}): {why}; {was} start a new run from its weights with "
                              f"--init-weights {wpath}")


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None, *, optimizer=None,
                    scheduler=None, ema=None, scaler=None, restore_rng: bool = True, rank: int = 0,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint` for resuming.

    Loads the weights into ``model`` (strict, see :func:`load_weights`) and, from the
    ``.state.safetensors`` beside them, the optimizer, scheduler, EMA, scaler and RNG states for each
    object given. The RNG states restored are those of rank ``rank`` when the save holds every rank's;
    a rank the save has none for is left as it is (``rng_restored`` False). Returns ``{"epoch", "step",
    "extra", "metadata", "rng_restored"}``.

    Raises:
        CheckpointError: a file is missing/corrupt, or the two files come from different saves.
    """
    wpath, note = select_resume_pair(path)
    if note:
        log.warning(note)
    meta = load_weights(model, wpath) if model is not None else read_metadata(wpath)
    spath = state_path_for(wpath)
    if not spath.is_file():
        raise CheckpointError(f"training state {spath} is missing; cannot resume (weights alone can be "
                              f"loaded with --init-weights / load_weights)")
    state = read_training_state(spath, expected_save_id=meta.get("save_id"))
    from botnet.engine.schemas import consistency_problem

    why = consistency_problem(state, meta)
    if why:
        raise CheckpointError(f"training state {spath}: {why}; the file is damaged")
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("ema", ema), ("scaler", scaler)):
        if obj is not None:
            if name not in state:
                raise CheckpointError(f"training state {spath} has no {name} state")
            if name == "optimizer":
                _check_optimizer_fits(obj, state[name], spath, meta, wpath)
            try:  # the schema checked the shape of the tree; what is left is the object's own check
                obj.load_state_dict(state[name])
            except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
                raise CheckpointError(f"training state {spath}: its {name} state does not fit this run's {name} "
                                      f"({_short(e)})") from None
    streams = state.get("rng_ranks") or ([state["rng"]] if "rng" in state else [])
    restored = restore_rng and rank < len(streams)
    if restored:
        try:
            set_rng_state(streams[rank])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"training state {spath}: field rng cannot be restored ({_short(e)}); the file "
                                  f"is damaged") from None
    return {"epoch": state.get("epoch", 0), "step": state.get("step", 0), "extra": state.get("extra", {}),
            "metadata": meta, "rng_restored": restored}
