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

Every file is written atomically (:mod:`botnet.io.atomic`). A pair is saved crash-consistently: both
new files are written and fsync-ed under temporary names first; the current pair, when complete,
is kept reachable as ``last.prev.safetensors`` + ``last.prev.state.safetensors`` (hard links, a
copy where links are unsupported); then the state and the weights are renamed into place, and
the previous pair is removed once the new one is complete and durable. At every instant one of
the two pairs carries matching ``save_id`` s, and a resume (:func:`select_resume_pair`) takes the
newest such pair. A full disk is one :class:`CheckpointError` naming the folder and the space
needed; nothing is renamed and no temporary file is left.

Each step of a save passes :func:`botnet.io.atomic.fault_point` (the names, in order, are
``SAVE_POINTS``), where the crash tests stop it.

API::

    save_checkpoint(path, model, optimizer=opt, scheduler=sched, ema=ema, scaler=scaler,
                    epoch=e, step=s, arch="botnet_mini", model_kwargs={...}, class_names=[...])
    info = load_checkpoint(path, model, optimizer=opt, scheduler=sched, ema=ema, scaler=scaler)
    load_weights(model, path)          # raises CheckpointMismatchError listing bad keys
    meta = read_metadata(path)         # arch, model_kwargs, class_names, ... without loading
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from botnet.engine.rng import get_rng_state, set_rng_state
from botnet.errors import CheckpointError
from botnet.io.atomic import atomic_write, fault_point, fsync_dir, is_disk_full, link_over, unlink_quiet, write_temp
from botnet.io.weights import (TORCH_SUFFIXES, WEIGHTS_SUFFIX, check_state_dict, clean_key, read_weights,
                               read_weights_file, resolve_checkpoint, short_error, state_path_for, unwrap_model)
from botnet.log import get_logger

__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "read_metadata", "read_training_state",
           "check_resumable", "select_resume_pair", "has_checkpoint", "previous_path", "PREV_TAG", "SAVE_POINTS",
           "STATE_FORMAT"]

log = get_logger("checkpoint")
STATE_FORMAT = "botnet-state-v1"
# the steps of a pair save, in order; a weights-only save (best.safetensors) runs the weights.* ones
SAVE_POINTS = ("state.write", "state.fsync", "weights.write", "weights.fsync",
               "prev.state.link", "prev.state.rename", "prev.weights.link", "prev.weights.rename", "prev.dir.fsync",
               "state.rename", "weights.rename", "dir.fsync", "prev.weights.unlink", "prev.state.unlink", "done")


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = unwrap_model(model).state_dict()
    # clone: safetensors refuses tensors sharing storage; contiguous CPU copies are always valid
    return {clean_key(k): v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


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
        if not is_disk_full(e):
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
        tmp_s = write_temp(spath, write_state, "state")
        tmp_w = write_temp(wpath, write_weights, "weights")
        if _pair_id(wpath) is not None:
            link_over(spath, state_path_for(prev), "prev.state")
            link_over(wpath, prev, "prev.weights")
            fault_point("prev.dir.fsync")
            fsync_dir(wpath.parent)
        fault_point("state.rename")
        os.replace(tmp_s, spath)
        tmp_s = None
        fault_point("weights.rename")
        os.replace(tmp_w, wpath)
        tmp_w = None
    except BaseException:
        unlink_quiet(tmp_s)
        unlink_quiet(tmp_w)
        raise
    fault_point("dir.fsync")
    fsync_dir(wpath.parent)
    for point, f in (("prev.weights.unlink", prev), ("prev.state.unlink", state_path_for(prev))):
        fault_point(point)
        unlink_quiet(f)
    fsync_dir(wpath.parent)
    fault_point("done")


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
    """Read the training state :func:`save_checkpoint` wrote; no code in the file can run.

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
        raise CheckpointError(f"cannot read training state {path}: {short_error(e)} (truncated or not a "
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
        raise CheckpointError(f"cannot read training state {spath}: {short_error(e)} (truncated or not a safetensors "
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
    if path.suffix in (*TORCH_SUFFIXES, ".ckpt"):
        raise CheckpointError(f"{path} is a {path.suffix} weights file without the architecture this command needs; "
                              f"give a botnet checkpoint (RUN/best.safetensors or a run directory), or build the "
                              f"model and load {path.name} with botnet.load_resnet_weights / --init-weights")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {short_error(e)} (truncated, or not a "
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
    if p.suffix in TORCH_SUFFIXES:
        state, meta = read_weights_file(p), {}
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
            state = {clean_key(k): v for k, v in full["ema"].items()}
        else:
            state = read_weights(p)
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
                                      f"({short_error(e)})") from None
    streams = state.get("rng_ranks") or ([state["rng"]] if "rng" in state else [])
    restored = restore_rng and rank < len(streams)
    if restored:
        try:
            set_rng_state(streams[rank])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"training state {spath}: field rng cannot be restored ({short_error(e)}); the file "
                                  f"is damaged") from None
    return {"epoch": state.get("epoch", 0), "step": state.get("step", 0), "extra": state.get("extra", {}),
            "metadata": meta, "rng_restored": restored}
