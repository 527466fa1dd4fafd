"""Run configuration: named YAML recipes + command-line overrides.

A recipe is a YAML file (``configs/<name>.yaml``, or any path) holding a subset of
:data:`DEFAULTS`; it is deep-merged over the defaults, then ``--set a.b=value`` overrides are
applied (values parsed as YAML, so ``--set optim.lr=0.1 --set train.amp=bf16
--set data.mean=[0.5,0.5,0.5]`` work). A recipe may name a base with ``base: other-recipe``.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ENGINE_DEFAULTS", "task_schema", "config_dirs", "list_recipes", "find_recipe", "recipe_chain", "load_config",
           "apply_overrides", "set_by_path", "get_by_path", "merge"]

# The sections and keys every task shares: one vocabulary, one set of units (seconds, epochs).
# A task's schema is ``merge(ENGINE_DEFAULTS, its own model/data/eval keys)``; a recipe or --set key
# outside the schema is an error.
ENGINE_DEFAULTS: dict[str, Any] = {
    "name": "run",
    "model": {
        "kwargs": {},               # extra botnet.create_model(**kwargs) options of the (backbone) model
    },
    "data": {
        "batch_size": 128,          # per process
        "num_workers": "auto",      # DataLoader worker processes per rank (auto: 0 on the CPU, see devices.py on CUDA)
    },
    "optim": {
        "name": "sgd",              # any timm create_optimizer_v2 name: sgd, momentum, adamw, lamb ...
        "lr": 0.1,                  # absolute lr; with lr_base_batch set, scaled by global batch / lr_base_batch
        "lr_base_batch": None,      # e.g. 256 for "0.1 per 256 images"
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 4e-5,       # never on biases, norms or position tables (the model's no_weight_decay())
    },
    "sched": {
        "name": "cosine",           # cosine | onecycle | step | multistep | poly | tanh | constant
        "warmup_epochs": 0.0,       # linear warm-up (may be fractional)
        "warmup_lr": 1e-6,
        "min_lr": 0.0,
        "step_epochs": 30,          # step: decay every N epochs
        "milestones": [0.667, 0.917],  # multistep: decay points as fractions of the training
        "gamma": 0.1,
        "pct_start": 0.25,          # onecycle
        "fit_time_budget": True,    # with train.time_budget: end the decay when the budget ends
    },
    "train": {
        "epochs": 10,
        "max_steps": None,          # stop after this many optimizer steps
        "accum_steps": 1,           # batches per optimizer step (global batch = batch_size x this x processes)
        "time_budget": None,        # wall-clock seconds for the run; then stop and evaluate
        "ema": False,
        "ema_decay": 0.9999,
        "ema_warmup": False,        # timm ModelEmaV3 warm-up of the decay
        "amp": "auto",              # auto | none | bf16 | fp16 (fp16 uses a gradient scaler); auto: the task's CUDA default
        "grad_clip": None,          # max global gradient norm
        "channels_last": "auto",    # auto | true | false; auto: the task's CUDA default, false on the CPU
        "cudnn_benchmark": "auto",  # auto | true | false; auto: on for fixed shapes (classification), off for detection
        "compile": False,           # torch.compile the model
        "sync_bn": False,           # SyncBatchNorm under DDP (CUDA only)
        "freeze_bn": False,         # keep BatchNorm in eval mode (running statistics; affine params still train)
        "seed": 0,
        "deterministic": False,
        "device": "auto",           # auto | cpu | cuda | cuda:N
        "threads": "auto",          # CPU threads: auto (measured: shared machines are often faster with fewer) or N
        "eval_every": 1,            # evaluate every N epochs (0: only at the end)
        "save_every_steps": None,   # also checkpoint every N steps
        "log_every": 20,            # steps between log records
        "progress": True,           # tqdm progress bars
        "plots": True,              # PNG curves (and the task's pictures) at the end
    },
    "output": {"dir": None},        # default runs/<name>
}

def task_schema(own: dict[str, Any]) -> dict[str, Any]:
    """The full schema of a task: :data:`ENGINE_DEFAULTS` with the task's own keys merged in."""
    return merge(ENGINE_DEFAULTS, own)


def config_dirs() -> list[Path]:
    """Where named recipes are looked up: $BOTNET_CONFIG_DIR, ./configs, the repo's configs/, the package."""
    here = Path(__file__).resolve()
    dirs = []
    if os.environ.get("BOTNET_CONFIG_DIR"):
        dirs.append(Path(os.environ["BOTNET_CONFIG_DIR"]))
    dirs += [Path.cwd() / "configs", here.parents[3] / "configs", here.parents[1] / "configs"]
    out = []
    for d in dirs:
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def list_recipes() -> list[str]:
    names = set()
    for d in config_dirs():
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    for d in config_dirs():
        for cand in (d / name_or_path, d / f"{name_or_path}.yaml"):
            if cand.is_file():
                return cand
    from botnet.errors import ConfigError

    raise ConfigError(f"no recipe {name_or_path!r}: not a file, and not a name in {', '.join(map(str, config_dirs()))}; "
                      f"known recipes: {', '.join(list_recipes()) or 'none'}")


def merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def get_by_path(cfg: dict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_by_path(cfg: dict, dotted: str, value: Any, strict: bool = True) -> None:
    """Set ``cfg["a"]["b"] = value`` for ``dotted="a.b"``; unknown keys raise unless under ``kwargs``."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            if strict and "kwargs" not in parts[: i + 1]:
                from botnet.errors import ConfigError

                known = ", ".join(k for k in node if isinstance(node[k], dict)) if node is cfg else ", ".join(node)
                raise ConfigError(f"unknown config key {dotted!r} ({'.'.join(parts[:i + 1])!r} is not a section; "
                                  f"known: {known})")
            node[part] = {}
        node = node[part]
    if strict and parts[-1] not in node and "kwargs" not in parts:
        from botnet.errors import ConfigError

        section = ".".join(parts[:-1])
        raise ConfigError(f"unknown config key {dotted!r} (known in {section or 'top level'}: {', '.join(node)})")
    node[parts[-1]] = value


# Caps on what a recipe, --config file or --set value may ask of the parser: a few hundred bytes of
# nested aliases ("billion laughs") otherwise expand to gigabytes once copied or written out.
MAX_YAML_BYTES = 1 << 20     # a document (the shipped recipes are < 2 KB)
MAX_YAML_DEPTH = 64          # nesting of mappings/sequences
MAX_YAML_NODES = 100_000     # nodes once every alias is expanded


class YamlLimitError(yaml.YAMLError):
    """A YAML document over one of the caps above."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2 floats: ``5e-4`` and ``1e3`` are numbers, not strings, and
    caps on nesting depth and on the size of the document with its aliases expanded."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {})
        return node


def _expanded_size(node, memo: dict) -> int:
    """Nodes in ``node`` with aliases expanded (memoised per node, so it costs one pass)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node reached again while being counted (a recursive alias) counts once
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(c, memo) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    if n > MAX_YAML_NODES:
        raise YamlLimitError(f"more than {MAX_YAML_NODES:,} values once its aliases are expanded (nested aliases?)")
    memo[id(node)] = n
    return n


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    if len(text) > MAX_YAML_BYTES:
        raise YamlLimitError(f"longer than {MAX_YAML_BYTES:,} characters")
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Apply ``["optim.lr=0.1", ...]`` (values parsed as YAML)."""
    for item in overrides or []:
        from botnet.errors import ConfigError

        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = _yaml_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())[:120]})") from None
        set_by_path(cfg, key.strip(), value)
    return cfg


def _load_yaml(path: Path, seen: tuple = ()) -> dict:
    data: dict = {}
    for _, layer in recipe_chain(path, seen):
        data = merge(data, layer)
    return data


def recipe_chain(path: Path, seen: tuple = ()) -> list[tuple[Path, dict]]:
    """A recipe and the ones it starts from (``base:``), the first base first: ``[(file, its own keys)]``.

    Merged in order they give the recipe (a base's ``name`` left out); kept apart they say which
    file set each value (``--print-config``)."""
    from botnet.errors import ConfigError

    try:
        if not path.is_file():  # a FIFO or device would block or never end
            raise ConfigError(f"recipe {path} is not a regular file")
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_YAML_BYTES + 1)
        data = _yaml_load(text) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {' '.join(str(e).split())[:160]}") from None
    except OSError as e:
        raise ConfigError(f"cannot read recipe {path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping")
    base = data.pop("base", None)
    if not base:
        return [(path, data)]
    bp = find_recipe(base)
    if bp in seen:
        raise ConfigError(f"recipe {path}: circular base {base}")
    # a base's name is not inherited: a run is named after the recipe it names (or that file's name)
    bases = [(p, {k: v for k, v in d.items() if k != "name"}) for p, d in recipe_chain(bp, seen + (path,))]
    return bases + [(path, data)]


def load_config(recipe: str | None, overrides: list[str] | None = None, *, defaults: dict) -> dict:
    """Defaults <- recipe (name or path) <- ``--set`` overrides.

    ``defaults`` is the task's schema (:func:`task_schema`): a recipe key it does not know is an
    error.
    """
    cfg = copy.deepcopy(defaults)
    if recipe:
        data = _load_yaml(find_recipe(recipe))
        _check_keys(data, defaults, "")
        cfg = merge(cfg, data)
    return apply_overrides(cfg, overrides)


def _check_keys(data: dict, ref: dict, prefix: str) -> None:
    for k, v in data.items():
        if k not in ref:
            from botnet.errors import ConfigError

            raise ConfigError(f"unknown config key {prefix}{k} in recipe (known: {', '.join(ref)})")
        # "kwargs" and empty default sections are free-form
        if isinstance(v, dict) and isinstance(ref[k], dict) and k != "kwargs" and ref[k]:
            _check_keys(v, ref[k], f"{prefix}{k}.")


# ----------------------------------------------------------------------------- validation
def _num(cfg: dict, key: str, *, kind: type = float, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """Check one numeric config value; raise :class:`ConfigError` naming the key and the range."""
    from botnet.errors import ConfigError

    v = get_by_path(cfg, key)
    if v is None and optional:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok and kind is int:
        ok = float(v).is_integer()
    if ok:
        import math

        ok = math.isfinite(float(v))
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key} = {v!r} is invalid: it must be {what}{' ' + rng if rng else ''}"
                          f"{' (or null)' if optional else ''}")


def _choice(cfg: dict, key: str, choices: tuple, optional: bool = False) -> None:
    from botnet.errors import ConfigError

    v = get_by_path(cfg, key)
    if v is None and optional:
        return
    if v not in choices:
        raise ConfigError(f"{key} = {v!r} is invalid: use one of {', '.join(map(str, choices))}")


def check_sections(cfg: Any, schema: dict, prefix: str = "") -> None:
    """Every section of ``schema`` (a key whose default is a non-empty mapping) is a mapping in
    ``cfg``: ``--set train=5`` or ``--set data=null`` is one line naming the section, not a crash."""
    from botnet.errors import ConfigError

    for k, ref in schema.items():
        if not (isinstance(ref, dict) and ref) or k == "kwargs":
            continue
        v = cfg.get(k) if isinstance(cfg, dict) else None
        if not isinstance(v, dict):
            raise ConfigError(f"{prefix}{k} = {v!r} is invalid: it must be a mapping of {prefix}{k}.* keys (known: "
                              f"{', '.join(ref)}); set one of them with --set {prefix}{k}.KEY=VALUE")
        check_sections(v, ref, f"{prefix}{k}.")


def check_typed(cfg: dict, key: str, spec) -> None:
    """Check one config value against a :mod:`botnet.validation` spec; one line naming the key."""
    from botnet.errors import ConfigError
    from botnet.validation import problem

    v = get_by_path(cfg, key)
    why = problem(v, spec, key)
    if why:
        raise ConfigError(f"{key} = {v!r} is invalid: {why.split('; ', 1)[-1]}" if why.startswith(key + " is")
                          else f"{key} = {v!r} is invalid: {why}")


def check_stats(cfg: dict) -> None:
    """``data.mean`` / ``data.std``: both unset (the data set's statistics) or both lists of 1 or 3
    finite numbers of the same length, std > 0 (a zero std turns every image into NaN)."""
    from botnet.errors import ConfigError
    from botnet.validation import List, Num

    d = cfg["data"]
    if d.get("mean") is None and d.get("std") is None:
        return
    for key in ("data.mean", "data.std"):
        if get_by_path(cfg, key) is None:
            other = "data.std" if key == "data.mean" else "data.mean"
            raise ConfigError(f"{other} is set but {key} is not: give both (one number per channel), or neither "
                              f"for the data set's own statistics")
    check_typed(cfg, "data.mean", List(Num(), min_len=1, max_len=3))
    check_typed(cfg, "data.std", List(Num(low=0, low_open=True), min_len=1, max_len=3))
    if len(d["mean"]) != len(d["std"]) or len(d["mean"]) == 2:
        raise ConfigError(f"data.mean {d['mean']} and data.std {d['std']} must both have 1 or 3 values (one per "
                          f"channel)")


def check_threads(value: Any, key: str = "train.threads") -> None:
    from botnet.errors import ConfigError

    if value in (None, "auto"):
        return
    try:
        ok = int(value) == float(value) and int(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: use auto or a positive number of threads")


def check_model_kwargs(arch: str, kwargs: dict, key: str = "model.kwargs") -> None:
    """Build ``arch`` with ``kwargs`` on the meta device (no memory, no time) to find bad options now."""
    import torch

    from botnet.errors import ConfigError
    from botnet.models import create_model, list_models

    if arch not in list_models():
        raise ConfigError(f"model.name = {arch!r} is not a botnet model; known: {', '.join(list_models())}")
    from botnet.models.limits import ModelTooLargeError

    try:
        with torch.device("meta"):
            create_model(arch, **kwargs)
    except ModelTooLargeError as e:  # already names the model, the value and the option to lower
        raise ConfigError(f"{key}: {' '.join(str(e).split())}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key} {kwargs} do not fit {arch}: {' '.join(str(e).split())}") from None


def validate_engine_config(cfg: dict) -> dict:
    """Check the sections every task shares (``optim``, ``sched``, ``train``, ``data.batch_size``...).

    Every out-of-range value, unknown choice or unavailable device raises
    :class:`botnet.errors.ConfigError` with a one-line message naming the key.
    """
    from botnet.errors import resolve_device
    from botnet.validation import Bool, Str

    check_sections(cfg, ENGINE_DEFAULTS)
    for key in ("train.ema", "train.ema_warmup", "train.compile", "train.sync_bn", "train.freeze_bn",
                "train.deterministic", "train.progress", "train.plots", "optim.nesterov", "sched.fit_time_budget"):
        check_typed(cfg, key, Bool())
    check_typed(cfg, "optim.name", Str(min_len=1))
    check_typed(cfg, "output.dir", Str(min_len=1, nullable=True))
    _num(cfg, "train.epochs", low=0, low_open=True)
    _num(cfg, "train.max_steps", kind=int, low=1, optional=True)
    _num(cfg, "train.accum_steps", kind=int, low=1)
    _num(cfg, "train.time_budget", low=0, low_open=True, optional=True)
    _num(cfg, "train.ema_decay", low=0, high=1)
    _num(cfg, "train.grad_clip", low=0, low_open=True, optional=True)
    _num(cfg, "train.seed", kind=int, low=0)
    _num(cfg, "train.eval_every", kind=int, low=0)
    _num(cfg, "train.save_every_steps", kind=int, low=1, optional=True)
    _num(cfg, "train.log_every", kind=int, low=1)
    _choice(cfg, "train.amp", ("auto", "none", "bf16", "fp16", None))
    _choice(cfg, "train.channels_last", ("auto", True, False))
    _choice(cfg, "train.cudnn_benchmark", ("auto", True, False))
    check_threads(cfg["train"].get("threads"))
    resolve_device(cfg["train"]["device"])
    _num(cfg, "data.batch_size", kind=int, low=1)
    if cfg["data"]["num_workers"] != "auto":
        _num(cfg, "data.num_workers", kind=int, low=0)
    _num(cfg, "optim.lr", low=0)
    _num(cfg, "optim.weight_decay", low=0)
    _num(cfg, "optim.momentum", low=0, high=1)
    _num(cfg, "optim.lr_base_batch", low=0, low_open=True, optional=True)
    _choice(cfg, "sched.name", ("cosine", "onecycle", "step", "multistep", "poly", "tanh", "constant"))
    _num(cfg, "sched.warmup_epochs", low=0)
    _num(cfg, "sched.min_lr", low=0)
    if not isinstance(cfg["model"].get("kwargs") or {}, dict):
        from botnet.errors import ConfigError

        raise ConfigError(f"model.kwargs must be a mapping of create_model options, got {cfg['model']['kwargs']!r}")
    return cfg
