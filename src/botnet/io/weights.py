"""Weights files: which file a path means, reading its tensors, and whether they fit a model.

A path may be a weights file (``.safetensors``, or a ``.pt``/``.pth``/``.bin`` state dict from
torchvision or timm), a run directory (its ``best``, else ``last``, checkpoint) or a published
model folder / ``hf-hub:`` id (its ``model.safetensors``). Tensors are read with safetensors or
``torch.load(weights_only=True)``: no file botnet reads can run code. Models, the engine and the
hub all read weights through here.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from botnet.errors import CheckpointError

__all__ = ["WEIGHTS_SUFFIX", "STATE_SUFFIX", "TORCH_SUFFIXES", "CheckpointMismatchError", "resolve_checkpoint",
           "state_path_for", "read_weights", "read_weights_file", "check_state_dict", "unwrap_model", "clean_key",
           "short_error"]

WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")  # state dicts of torchvision / timm, read with weights_only=True


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's weights do not fit the model (other architecture / number of classes).

    Attributes ``missing``, ``unexpected`` and ``shape_mismatch`` list the offending keys.
    """

    def __init__(self, path: str | os.PathLike, missing: list[str], unexpected: list[str],
                 shape_mismatch: list[tuple[str, tuple, tuple]], arch: str | None = None,
                 model_arch: str | None = None, dtype_mismatch: list[tuple[str, str, str]] | None = None):
        self.path, self.missing, self.unexpected, self.shape_mismatch = str(path), missing, unexpected, shape_mismatch
        self.dtype_mismatch = dtype_mismatch or []

        def _fmt(keys: list[str], limit: int = 4) -> str:
            more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        head = f"checkpoint {path} does not match the model"
        if arch or model_arch:
            head += f" (checkpoint architecture: {arch or '?'}, model: {model_arch or '?'})"
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing from the checkpoint: {_fmt(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_fmt(unexpected)}")
        if shape_mismatch:
            shown = [f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in shape_mismatch]
            parts.append(f"{len(shape_mismatch)} keys with another shape: {_fmt(shown)}")
        if self.dtype_mismatch:  # e.g. int8 weights would load (cast) and predict the same for every class
            shown = [f"{k} (checkpoint {a} vs model {b})" for k, a, b in self.dtype_mismatch]
            parts.append(f"{len(shown)} keys not floating point where the model's are: {_fmt(shown)}")
        # one line: the user sees which file, which architectures and the first offending keys
        super().__init__(head + ": " + "; ".join(parts) + ". Use a checkpoint of the same architecture and "
                         "number of classes")


def short_error(e: BaseException) -> str:
    """An exception as one short line (library messages can span lines)."""
    msg = " ".join(str(e).split())
    return (msg[:200] + "...") if len(msg) > 200 else (msg or type(e).__name__)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip ``DistributedDataParallel`` / ``torch.compile`` / EMA wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        else:
            return model


def clean_key(k: str) -> str:
    """A state-dict key without the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    for prefix in ("module.", "_orig_mod."):
        while k.startswith(prefix):
            k = k[len(prefix):]
    return k.replace("._orig_mod.", ".")


def resolve_checkpoint(path: str | os.PathLike, prefer: tuple[str, ...] = ("best", "last")) -> Path:
    """Accept a weights file, a ``.state.safetensors`` file or a run directory (-> ``best``, else
    ``last``; resuming passes ``prefer=("last",)``), or a published model folder / ``hf-hub:`` id
    (-> its ``model.safetensors``, once its config.json and model card are checked)."""
    from botnet.io.published import published_folder, read_config

    folder = published_folder(path)
    if folder is not None:
        read_config(folder)
        return folder / "model.safetensors"
    p = Path(path)
    if p.is_dir():
        for name in prefer:
            for cand in (p / f"{name}{WEIGHTS_SUFFIX}", p / "checkpoints" / f"{name}{WEIGHTS_SUFFIX}"):
                if cand.is_file():
                    return cand
        raise CheckpointError(f"no checkpoint ({' or '.join(n + WEIGHTS_SUFFIX for n in prefer)}) in directory {p}")
    if not p.exists() and not p.name.endswith(WEIGHTS_SUFFIX):
        raise CheckpointError(f"checkpoint not found: {p} does not exist (give a run directory or a "
                              f".safetensors file)")
    if p.name.endswith(STATE_SUFFIX):
        p = p.with_name(p.name[: -len(STATE_SUFFIX)] + WEIGHTS_SUFFIX)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    return p


def state_path_for(weights_path: str | os.PathLike) -> Path:
    """``x/last.safetensors`` -> ``x/last.state.safetensors``, the training state saved with it."""
    p = Path(weights_path)
    name = p.name
    for suffix in (STATE_SUFFIX, WEIGHTS_SUFFIX):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = p.stem
    return p.with_name(name + STATE_SUFFIX)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one weights file: safetensors, or a ``.pt``/``.pth`` state dict (or a dict
    holding one, as torchvision and timm write them) read with ``weights_only=True``."""
    if path.name.endswith(WEIGHTS_SUFFIX):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {short_error(e)} (truncated, or not a "
                                  f"safetensors file)") from e
    try:  # .pt / .pth: a state_dict or a dict holding one (torchvision / timm files); never unpickles objects
        with warnings.catch_warnings():  # torch's notes on the pickle protocol: the outcome is told in one line
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as tensors only: {short_error(e).split('. ')[0]}. Accepted: "
                              f".safetensors, or a .pt/.pth file holding only tensors (a state dict)") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return {clean_key(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors`` (or a run directory) or a ``.pt``/``.pth``
    state dict read with ``weights_only=True``. Raises :class:`CheckpointError` naming the file."""
    p = Path(path)
    if p.suffix in TORCH_SUFFIXES:
        if not p.is_file():
            raise CheckpointError(f"checkpoint file not found: {p}")
        return read_weights(p)
    return read_weights(resolve_checkpoint(p))


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike = "<state_dict>",
                     arch: str | None = None) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly the model's keys and shapes."""
    own = unwrap_model(model).state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shape = sorted((k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
                   if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    dtype = sorted((k, str(state[k].dtype).replace("torch.", ""), str(own[k].dtype).replace("torch.", ""))
                   for k in own if k in state and own[k].is_floating_point() and not state[k].is_floating_point())
    if missing or unexpected or shape or dtype:
        model_arch = getattr(unwrap_model(model), "botnet_arch", None)
        raise CheckpointMismatchError(path, missing, unexpected, shape, arch=arch, model_arch=model_arch,
                                      dtype_mismatch=dtype)
