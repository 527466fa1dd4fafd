"""Initialise a BoT (or any registered) model from a ResNet checkpoint the user has on disk.

No weights are downloaded: the checkpoint is a torchvision or timm ResNet state dict (``.pth``/
``.pt``, loaded with ``weights_only=True``, or ``.safetensors``). torchvision and timm share the
parameter names used here (``conv1``, ``bn1``, ``layerX.Y.convZ``, ``downsample.0/1``, ``fc``,
timm's ``se.fc1/fc2``), so a tensor transfers when its name and shape match.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

__all__ = ["TransferReport", "load_resnet_weights", "read_state_dict"]

_log = logging.getLogger(__name__)

# Wrappers that training scripts put around a state dict.
_NESTED_KEYS = ("state_dict", "model", "model_state", "module", "state_dict_ema", "model_ema")


@dataclass
class TransferReport:
    """What :func:`load_resnet_weights` did; ``str(report)`` is a short human summary."""

    transferred: list[str] = field(default_factory=list)  # copied from the checkpoint
    fresh: list[str] = field(default_factory=list)  # model tensors left freshly initialised
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, ckpt, model)
    unused: list[str] = field(default_factory=list)  # checkpoint tensors with no place in the model

    def __str__(self) -> str:
        lines = [
            f"transferred {len(self.transferred)} tensors; {len(self.fresh)} stay freshly initialised; "
            f"{len(self.shape_mismatch)} shape mismatches; {len(self.unused)} checkpoint tensors unused"
        ]
        if self.fresh:
            lines.append("fresh: " + ", ".join(_summarise(self.fresh)))
        for name, got, want in self.shape_mismatch:
            lines.append(f"shape mismatch (kept fresh): {name}: checkpoint {list(got)} vs model {list(want)}")
        if self.unused:
            lines.append("unused: " + ", ".join(_summarise(self.unused)))
        return "\n".join(lines)


def _summarise(names: list[str], limit: int = 12) -> list[str]:
    return names[:limit] + ([f"... (+{len(names) - limit} more)"] if len(names) > limit else [])


def read_state_dict(source: str | PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a path (.safetensors / .pth / .pt / .bin) or a mapping.

    Unwraps ``{"state_dict": ...}``-style nesting and strips DDP's ``module.`` prefix. Pickled files
    are read with ``weights_only=True``: no code in a checkpoint is ever executed.
    """
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        from botnet.engine.checkpoint import CheckpointError, _read_weights

        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        # safetensors, or torch.load(weights_only=True): pickles with arbitrary objects are refused
        sd = _read_weights(path)
    for key in _NESTED_KEYS:
        if key in sd and isinstance(sd[key], Mapping):
            sd = dict(sd[key])
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        from botnet.engine.checkpoint import CheckpointError

        raise CheckpointError(f"checkpoint entries that are not tensors: {_summarise(bad)}")
    return sd


def load_resnet_weights(
    model: nn.Module,
    source: str | PathLike | Mapping[str, torch.Tensor],
    *,
    include_classifier: bool | None = None,
    verbose: bool = True,
) -> TransferReport:
    """Copy every tensor whose name and shape match from a ResNet checkpoint into ``model``.

    BoT blocks keep their attention (``mhsa.*``) freshly initialised, since a ResNet has none; the
    rest of the network (stem, c2-c4, the 1x1 convs and BNs of c5, shortcuts) transfers. The
    classifier transfers only when its shape matches (or never, with ``include_classifier=False``).
    Returns a :class:`TransferReport`; with ``verbose`` it is also logged.
    """
    sd = read_state_dict(source)
    own = model.state_dict()
    report = TransferReport()
    new_sd = {}
    for name, tensor in sd.items():
        if name not in own:
            report.unused.append(name)
            continue
        if include_classifier is False and name.split(".")[0] == "fc":
            report.unused.append(name)
            continue
        if tuple(tensor.shape) != tuple(own[name].shape):
            report.shape_mismatch.append((name, tuple(tensor.shape), tuple(own[name].shape)))
            continue
        new_sd[name] = tensor.to(own[name].dtype)
        report.transferred.append(name)
    report.fresh = [k for k in own if k not in new_sd]
    if not report.transferred:
        from botnet.engine.checkpoint import CheckpointError

        raise CheckpointError(
            "no tensor of the checkpoint matches the model by name and shape; is it a ResNet "
            f"state dict? first checkpoint keys: {_summarise(list(sd), 5)}"
        )
    model.load_state_dict(new_sd, strict=False)
    if verbose:
        _log.warning("load_resnet_weights: %s", report)
    return report
