"""One validation layer for the structured files botnet reads from users.

Checkpoint metadata, training states, a published folder's ``config.json`` and COCO instances
files all arrive from disk, maybe damaged or hostile. Each is parsed with :func:`loads_json`
(which measures the nesting depth on the raw text *before* ``json.loads``, whose recursion a
deeply nested file would otherwise exhaust) and checked against a declared schema with
:func:`validate`. A failed check raises the file's own error class (``CheckpointError``,
``CocoFormatError``, ...) with one line naming the file, the field (a path such as
``extra.best`` or ``annotations[17].bbox``) and what is expected.

A schema is built from small constructors::

    META = Dict({"epoch": Int(low=0), "class_names": List(Str(), nullable=True),
                 "extra": Dict({"best": Dict({"value": Num(finite=False)}, nullable=True)})})
    validate(meta, META, source="RUN/last.safetensors", error=CheckpointError)

Fields of a :func:`Dict` are optional unless ``required=True``; unknown keys are allowed unless
``extra=False``. This module depends only on :mod:`botnet.errors`, so every layer can use it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from botnet.errors import UserInputError

__all__ = ["MAX_JSON_DEPTH", "Spec", "Int", "Num", "Str", "Bool", "List", "Tuple", "Dict", "Tensor", "Array",
           "AnyOf", "Any_", "problem", "validate", "json_depth", "loads_json"]

# Deepest nesting any file botnet writes reaches is about 8 levels (a training state's optimizer
# state); 64 leaves room for hand-written files and stays far below Python's recursion limit.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Spec:
    """One field: its kind, range and, for containers, the specs of what they hold."""

    kind: str                              # int | num | str | bool | list | tuple | dict | tensor | ndarray | any | anyof
    what: str                              # "an integer >= 0", for the message
    nullable: bool = False
    required: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False                 # low itself is not allowed (``> low``)
    finite: bool = True
    choices: tuple | None = None
    item: "Spec | None" = None             # list / tuple elements, dict values (when no fields)
    items: tuple = ()                      # tuple: one spec per position
    fields: dict = field(default_factory=dict)
    extra: bool = True                     # dict: unknown keys allowed
    min_len: int = 0
    max_len: int | None = None
    options: tuple = ()                    # anyof: alternatives
    check: Callable[[Any], str | None] | None = None  # extra rule: returns a problem or None


def _rng(low, high, low_open=False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return (" " + " and ".join(parts)) if parts else ""


def Int(low: float | None = None, high: float | None = None, **kw) -> Spec:
    return Spec("int", "an integer" + _rng(low, high), low=low, high=high, **kw)


def Num(low: float | None = None, high: float | None = None, *, finite: bool = True, low_open: bool = False,
        **kw) -> Spec:
    what = ("a finite number" if finite else "a number") + _rng(low, high, low_open)
    return Spec("num", what, low=low, high=high, finite=finite, low_open=low_open, **kw)


def Str(choices: tuple | None = None, *, min_len: int = 0, **kw) -> Spec:
    what = f"one of {', '.join(map(repr, choices))}" if choices else ("a non-empty string" if min_len else "a string")
    return Spec("str", what, choices=choices, min_len=min_len, **kw)


def Bool(**kw) -> Spec:
    return Spec("bool", "true or false", **kw)


def List(item: Spec | None = None, *, min_len: int = 0, max_len: int | None = None, what: str | None = None,
         **kw) -> Spec:
    if what is None:
        what = f"a list of {min_len}" if min_len and max_len == min_len else "a list"
        if min_len and max_len != min_len:
            what += f" of at least {min_len}"
        if item is not None and item.kind not in ("any", "anyof"):
            what += f", each {item.what}"
    return Spec("list", what, item=item, min_len=min_len, max_len=max_len, **kw)


def Tuple(*items: Spec, what: str | None = None, **kw) -> Spec:
    return Spec("tuple", what or f"a tuple of {len(items)} values", items=items, min_len=len(items),
                max_len=len(items), **kw)


def Dict(fields: dict[str, Spec] | None = None, *, item: Spec | None = None, extra: bool = True,
         what: str = "a mapping", **kw) -> Spec:
    return Spec("dict", what, fields=dict(fields or {}), item=item, extra=extra, **kw)


def Tensor(*, dtypes: tuple | None = None, ndim: int | None = None, what: str = "a tensor", **kw) -> Spec:
    return Spec("tensor", what, choices=dtypes, low=ndim, **kw)


def Array(what: str = "a numpy array", **kw) -> Spec:
    return Spec("ndarray", what, **kw)


def Any_(**kw) -> Spec:
    return Spec("any", "any value", **kw)


def AnyOf(*options: Spec, what: str | None = None, **kw) -> Spec:
    return Spec("anyof", what or " or ".join(o.what for o in options), options=options, **kw)


def _show(v: Any) -> str:
    """A value as a short phrase: ``'abc' (a string)``, ``a list of 3 items``."""
    if isinstance(v, (list, tuple, dict)):
        s = repr(v)
        if len(s) <= 40:
            return s
        return f"a mapping of {len(v)} keys" if isinstance(v, dict) else f"a {type(v).__name__} of {len(v)} items"
    if type(v).__module__ in ("torch", "numpy"):
        return f"a {type(v).__name__} of dtype {getattr(v, 'dtype', '?')}"
    s = repr(v)
    return (s[:40] + "...") if len(s) > 40 else s


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _scalar_problem(v: Any, s: Spec) -> bool:
    """True when scalar ``v`` does not fit ``s`` (kinds int/num/str/bool)."""
    if s.kind == "bool":
        return not isinstance(v, bool)
    if s.kind == "str":
        return not isinstance(v, str) or len(v) < s.min_len or (s.choices is not None and v not in s.choices)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return True
    if s.kind == "int" and not (isinstance(v, int) or (math.isfinite(v) and float(v).is_integer())):
        return True
    if (s.finite or s.kind == "int") and not math.isfinite(v):
        return True
    too_low = s.low is not None and (v <= s.low if s.low_open else v < s.low)
    return too_low or (s.high is not None and v > s.high)


def problem(value: Any, spec: Spec, path: str = "") -> str | None:
    """The first place where ``value`` breaks ``spec``, as ``"PATH is VALUE; expected WHAT"``, or None."""
    where = path or "the top level"
    if value is None:
        return None if spec.nullable or spec.kind == "any" else f"{where} is null; expected {spec.what}"
    k = spec.kind
    if k == "any":
        return None
    if k == "anyof":
        if any(problem(value, o, path) is None for o in spec.options):
            return None
        return f"{where} is {_show(value)}; expected {spec.what}"
    if k in ("int", "num", "str", "bool"):
        bad = _scalar_problem(value, spec)
    elif k == "tensor":
        bad = type(value).__name__ != "Tensor" or (spec.choices is not None and value.dtype not in spec.choices) \
            or (spec.low is not None and value.ndim != spec.low)
    elif k == "ndarray":
        bad = type(value).__name__ != "ndarray"
    elif k in ("list", "tuple"):
        kinds = (list,) if k == "list" else (tuple,)
        bad = not isinstance(value, kinds) or len(value) < spec.min_len or \
            (spec.max_len is not None and len(value) > spec.max_len)
    else:  # dict
        bad = not isinstance(value, dict)
    if bad:
        return f"{where} is {_show(value)}; expected {spec.what}"
    if k in ("list", "tuple"):
        for i, v in enumerate(value):
            sub = spec.items[i] if spec.items else spec.item
            p = problem(v, sub, _join(path, i)) if sub is not None else None
            if p:
                return p
    elif k == "dict":
        p = _dict_problem(value, spec, path)
        if p:
            return p
    if spec.check is not None:
        p = spec.check(value)
        if p:
            return f"{where} {p}"
    return None


def _dict_problem(value: dict, spec: Spec, path: str) -> str | None:
    for key, sub in spec.fields.items():
        if key not in value:
            if sub.required:
                return f"{_join(path, key)} is missing; expected {sub.what}"
            continue
        p = problem(value[key], sub, _join(path, key))
        if p:
            return p
    for key, v in value.items():
        if key in spec.fields:
            continue
        if not spec.extra:
            known = ", ".join(spec.fields)
            return f"{_join(path, key)} is not a known field (known: {known})"
        if spec.item is not None:
            p = problem(v, spec.item, _join(path, key))
            if p:
                return p
    return None


def validate(value: Any, spec: Spec, *, source: str, error: type[UserInputError] = UserInputError,
             path: str = "", hint: str = "") -> Any:
    """Return ``value`` if it fits ``spec``; else raise ``error("SOURCE: FIELD is ...; expected ...")``."""
    p = problem(value, spec, path)
    if p:
        raise error(f"{source}: {p}{'; ' + hint if hint else ''}")
    return value


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def json_depth(text: str | bytes) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON text (strings skipped), without parsing it."""
    import numpy as np

    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    bare = np.frombuffer(_STRING.sub("", text).encode("utf-8", errors="replace"), dtype=np.uint8)
    depth = deepest = 0
    for i in range(0, bare.size, 1 << 23):  # in 8 MB pieces: a large file needs little extra memory
        a = bare[i:i + (1 << 23)]
        steps = (a == 0x5B).astype(np.int32) + (a == 0x7B) - (a == 0x5D) - (a == 0x7D)
        nz = steps[steps != 0]
        if nz.size:
            run = np.cumsum(nz) + depth
            deepest, depth = max(deepest, int(run.max())), int(run[-1])
    return deepest


def loads_json(text: str | bytes, *, source: str, error: type[UserInputError] = UserInputError,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for a user's file: nesting deeper than ``max_depth`` and bad JSON become
    ``error`` naming ``source`` (the file, or ``FILE field NAME``), never a RecursionError."""
    try:
        depth = json_depth(text)
    except (TypeError, AttributeError):
        raise error(f"{source} is {type(text).__name__}, not JSON text") from None
    if depth > max_depth:
        raise error(f"{source} is nested {depth} levels deep (the limit is {max_depth}); the file is damaged "
                    f"or was not written by botnet")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source} is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        raise error(f"{source} is not valid JSON text ({' '.join(str(e).split())[:120]})") from None
