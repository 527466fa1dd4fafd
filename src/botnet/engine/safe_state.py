"""Training state without pickle: tensors in safetensors, everything else in JSON.

A resumable training state is a tree of dicts, lists and tuples holding tensors (optimizer
moments, EMA weights, RNG states), numpy arrays (numpy's RNG state) and plain numbers and
strings. :func:`pack` splits such a tree into a flat ``{name: tensor}`` dict and a JSON-able
skeleton that refers to the tensors by name; :func:`unpack` is its exact inverse. Reading never
runs code: ``safetensors`` holds only raw tensor bytes and ``json`` only data, so a state file
from a shared run directory cannot execute anything, unlike a pickle.

Encoding of the skeleton (JSON), chosen so every value round-trips with its exact type:

* ``int``/``float``/``str``/``bool``/``None``: as they are (``NaN``/``inf`` as JSON's extensions);
* ``torch.Tensor``: ``{"$tensor": name}`` (CPU copy; the reader moves it where it belongs);
* ``numpy.ndarray``: ``{"$ndarray": nested lists, "dtype": str}``;
* ``tuple``: ``{"$tuple": [...]}``; ``list``: a JSON list;
* ``dict`` whose keys are all strings not starting with ``$``: a JSON object, else
  ``{"$dict": [[key, value], ...]}`` (optimizer states are keyed by parameter index).

Anything else raises :class:`TypeError` when saving, so an unsupported object is found when the
checkpoint is written, never when someone tries to resume from it.
"""
from __future__ import annotations

import json
from typing import Any

import torch

__all__ = ["pack", "unpack", "StateFormatError"]


class StateFormatError(ValueError):
    """The skeleton or its tensors do not form a valid state (corrupt or foreign file)."""


def pack(tree: Any) -> tuple[dict[str, torch.Tensor], str]:
    """``tree`` -> ``(tensors, skeleton_json)``."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(obj: Any, where: str) -> Any:
        if isinstance(obj, torch.Tensor):
            name = f"t{len(tensors)}"
            # clone: safetensors refuses tensors that share storage
            tensors[name] = obj.detach().to("cpu").contiguous().clone()
            return {"$tensor": name}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a dependency
            np = None
        if np is not None and isinstance(obj, np.ndarray):
            return {"$ndarray": obj.tolist(), "dtype": str(obj.dtype)}
        if np is not None and isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple):
            return {"$tuple": [enc(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [enc(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: enc(v, f"{where}.{k}") for k, v in obj.items()}
            return {"$dict": [[enc(k, where), enc(v, f"{where}[{k!r}]")] for k, v in obj.items()]}
        raise TypeError(f"training state entry {where} has type {type(obj).__name__}, which cannot be stored "
                        f"without pickle (allowed: tensors, numpy arrays, numbers, strings, lists, tuples, dicts)")

    skeleton = enc(tree, "state")
    return tensors, json.dumps(skeleton, separators=(",", ":"))


def unpack(tensors: dict[str, torch.Tensor], skeleton_json: str) -> Any:
    """Inverse of :func:`pack`. Raises :class:`StateFormatError` on anything malformed."""
    from botnet.validation import loads_json

    # depth-capped before parsing: json and dec() below both recurse once per level
    skeleton = loads_json(skeleton_json, source="its skeleton", error=StateFormatError)

    def dec(obj: Any) -> Any:
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if "$tensor" in obj:
            name = obj["$tensor"]
            if name not in tensors:
                raise StateFormatError(f"state refers to tensor {name!r}, which the file does not hold")
            return tensors[name]
        if "$ndarray" in obj:
            import numpy as np

            try:
                return np.asarray(obj["$ndarray"], dtype=np.dtype(obj["dtype"]))
            except (TypeError, ValueError, KeyError) as e:
                raise StateFormatError(f"bad array in state: {e}") from e
        if "$tuple" in obj:
            return tuple(dec(v) for v in obj["$tuple"])
        if "$dict" in obj:
            try:
                return {_hashable(dec(k)): dec(v) for k, v in obj["$dict"]}
            except (TypeError, ValueError) as e:
                raise StateFormatError(f"bad mapping in state: {e}") from e
        return {k: dec(v) for k, v in obj.items()}

    try:
        return dec(skeleton)
    except StateFormatError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # e.g. {"$tuple": 5}, an unhashable name
        raise StateFormatError(f"malformed entry in its skeleton ({type(e).__name__}: {e})") from None


def _hashable(k: Any) -> Any:
    if isinstance(k, list):
        return tuple(_hashable(v) for v in k)
    return k
