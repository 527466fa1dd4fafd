"""Declared schemas of the files a checkpoint is made of, and the checks a resume needs.

:data:`METADATA` describes a weights file's metadata (after its JSON fields are decoded),
:data:`TRAINING_STATE` the tree in ``*.state.safetensors``. :func:`optimizer_fit_problem` says
whether a stored optimizer state fits the optimizer it is about to be loaded into (PyTorch only
checks the number of groups, and another optimizer's state fails at the first step).
See :mod:`botnet.validation` for the layer itself.
"""
from __future__ import annotations

from typing import Any

import torch

from botnet.io.published import RUN_CONFIG
from botnet.validation import Array, Dict, Int, List, Num, Spec, Str, Tensor, Tuple

__all__ = ["METADATA", "TRAINING_STATE", "EXTRA", "optimizer_fit_problem", "consistency_problem"]

_BEST = Dict({"value": Num(finite=False, nullable=True), "which": Str(nullable=True), "step": Int(low=0),
              "epoch": Num(low=0), "metric": Str()}, nullable=True)


EXTRA = Dict({"epoch": Int(low=0), "batch_in_epoch": Int(low=0), "best": _BEST, "train_seconds": Num(low=0),
              "weights": Str(), "val": Dict(nullable=True), "class_names": List(Str(), nullable=True),
              "world_size": Int(low=1), "global_batch": Int(low=1)})

METADATA = Dict({
    "format": Str(), "task": Str(min_len=1), "save_id": Str(), "arch": Str(min_len=1),
    "model_kwargs": Dict({"num_classes": Int(low=1), "in_chans": Int(low=1)}, what="a mapping of model options"),
    "class_names": List(Str(), nullable=True, max_len=1_000_000),
    "epoch": Int(low=0), "step": Int(low=0), "extra": EXTRA, "config": RUN_CONFIG,
})

_PY_RNG = Tuple(Int(), Spec("tuple", "a tuple of 625 integers", item=Int(low=0), min_len=625, max_len=625),
                Num(nullable=True), what="python's random state (version, 625 integers, gauss)")
_NP_RNG = Tuple(Str(("MT19937",)), Array(), Int(), Int(), Num(), what="numpy's MT19937 state")
_BYTES = Tensor(dtypes=(torch.uint8,), ndim=1, what="a 1-D uint8 tensor")
_OPT_STATE = Dict({
    "state": Dict(item=Dict(what="a mapping of per-parameter tensors"), required=True),
    "param_groups": List(Dict({"params": List(Int(low=0), required=True)}), min_len=1, required=True,
                         what="a non-empty list of parameter groups"),
}, what="an optimizer state")

_RNG = Dict({"python": _PY_RNG, "numpy": _NP_RNG, "torch": _BYTES, "cuda": List(_BYTES)}, what="RNG states")

TRAINING_STATE = Dict({
    "save_id": Str(), "epoch": Int(low=0), "step": Int(low=0), "arch": Str(), "extra": EXTRA,
    "optimizer": _OPT_STATE,
    "scheduler": Dict({"kind": Str(("timm", "torch")), "total_steps": Int(low=0), "warmup_steps": Int(low=0),
                       "sched": Dict()}),
    "ema": Dict(item=Tensor()),
    "scaler": Dict(),
    "rng": _RNG,
    "rng_ranks": List(_RNG, what="a list of RNG states, one per rank"),
})


def consistency_problem(tree: dict[str, Any], meta: dict[str, Any] | None = None) -> str | None:
    """Fields that are each valid but cannot be true together (e.g. further into an epoch than the
    run has steps), or that differ between a weights file and the training state of the same save."""
    ex = tree.get("extra") or {}
    step = tree.get("step")
    if isinstance(step, int) and isinstance(ex.get("batch_in_epoch"), int) and ex["batch_in_epoch"] > step:
        return f"extra.batch_in_epoch is {ex['batch_in_epoch']}, more than the {step} steps of the run"
    for key in ("epoch", "step"):
        if meta is not None and key in meta and key in tree and meta[key] != tree[key]:
            return f"{key} is {tree[key]!r} but {meta[key]!r} in the weights file of the same save"
    return None


# keys PyTorch added to param groups over its versions and fills in when loading an older state
_VERSION_KEYS = {"foreach", "maximize", "capturable", "differentiable", "fused", "initial_lr", "decoupled_weight_decay"}


def optimizer_fit_problem(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> str | None:
    """Why the stored optimizer state ``sd`` does not fit ``optimizer`` (None when it does):
    the number of groups and of parameters per group, the hyper-parameter names (another kind of
    optimizer has others), and the shapes of per-parameter tensors."""
    groups, saved = optimizer.param_groups, sd["param_groups"]
    if len(saved) != len(groups):
        return f"it has {len(saved)} parameter group(s), the optimizer {len(groups)}"
    for i, (g, s) in enumerate(zip(groups, saved)):
        if len(s["params"]) != len(g["params"]):
            return f"param_groups[{i}] holds {len(s['params'])} parameters, the optimizer's group {len(g['params'])}"
        mine, theirs = set(g) - {"params"} - _VERSION_KEYS, set(s) - {"params"} - _VERSION_KEYS
        # Adam and AdamW share their keys and differ in this flag alone
        flag = "decoupled_weight_decay"
        if mine != theirs or (flag in g and flag in s and bool(g[flag]) != bool(s[flag])):
            return (f"it is the state of another kind of optimizer (param_groups[{i}] has "
                    f"{', '.join(sorted(theirs - mine)) or 'other settings'}; this one needs "
                    f"{', '.join(sorted(mine - theirs)) or 'others'})")
    index = {k: p for s, g in zip(saved, groups) for k, p in zip(s["params"], g["params"])}
    for k, st in sd["state"].items():
        if k not in index:
            return f"state[{k!r}] belongs to no parameter of its param_groups"
        p = index[k]
        for name, v in st.items():
            if isinstance(v, torch.Tensor) and v.ndim == p.ndim > 0 and tuple(v.shape) != tuple(p.shape):
                return f"state[{k}].{name} has shape {tuple(v.shape)} but its parameter {tuple(p.shape)}"
    return None
