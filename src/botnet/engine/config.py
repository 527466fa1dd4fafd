"""Run configuration: the declared keys every task shares, named YAML recipes, command-line overrides.

:data:`ENGINE_SCHEMA` declares the shared sections (see :mod:`botnet.engine.schema_decl`); a task
extends it with its own. A recipe is a YAML file (``configs/<name>.yaml``, or any path) holding a
subset of a task's keys; it is deep-merged over the defaults, then ``--set a.b=value`` overrides are
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

from botnet.engine.schema_decl import Field, Schema, Section, check_typed
from botnet.validation import Dict, List, Num

__all__ = ["ENGINE_SCHEMA", "ENGINE_DEFAULTS", "Field", "Section", "Schema", "config_dirs", "list_recipes",
           "find_recipe", "recipe_chain", "load_config", "apply_overrides", "set_by_path", "get_by_path", "merge",
           "validate_engine_config", "check_model_kwargs", "check_threads", "check_typed"]

_SCHEDULES = ("cosine", "onecycle", "step", "multistep", "poly", "tanh", "constant")


def check_threads(value: Any, key: str = "train.threads") -> None:
    """``auto`` or a positive whole number; a number saved as text (``"4"``, from older runs' flag) too."""
    from botnet.errors import ConfigError

    if value in (None, "auto"):
        return
    try:
        ok = int(value) == float(value) and int(value) > 0 and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: use auto or a positive number of threads")


def _check_device(value: Any, key: str) -> None:
    from botnet.errors import resolve_device

    resolve_device(value)  # a device this machine lacks is a ConfigError naming it


# The sections and keys every task shares: one vocabulary, one set of units (seconds, epochs). A
# task extends this with its own sections and keys (``ENGINE_SCHEMA.extend``); a recipe or --set
# key outside its schema is an error.
ENGINE_SCHEMA = Schema([
    Section("", (
        Field("name", "run", str, nullable=True, help="the run's name; output.dir defaults to runs/NAME"),
    )),
    Section("model", (
        Field("kwargs", {}, dict, nullable=True, spec=Dict(what="a mapping of create_model options"),
              help="extra botnet.create_model(**kwargs) options of the network (the backbone, for detection)"),
    ), help="the network"),
    Section("data", (
        Field("batch_size", 128, int, low=1, flag="--batch-size",
              help="batch size per process (global batch = this x accumulation steps x processes)"),
        Field("num_workers", "auto", int, low=0, auto=True, flag="--num-workers",
              help="DataLoader worker processes per rank (0: in the training process; auto: 0 on the CPU, "
                   "min(8, cores per process - 1) on CUDA)"),
    ), help="the data and its loading"),
    Section("optim", (
        Field("name", "sgd", str, flag="--opt",
              help="optimizer name for timm's create_optimizer_v2: sgd, adamw, lamb, ..."),
        Field("lr", 0.1, float, low=0, flag="--lr",
              help="peak learning rate (scaled by global batch / optim.lr_base_batch when set)"),
        Field("lr_base_batch", None, float, low=0, low_open=True, nullable=True,
              help="the global batch optim.lr is given for, e.g. 256 for \"0.1 per 256 images\""),
        Field("momentum", 0.9, float, low=0, high=1, help="momentum (sgd, momentum, nesterov optimizers)"),
        Field("nesterov", False, bool, help="Nesterov momentum (sgd)"),
        Field("weight_decay", 4e-5, float, low=0, flag="--weight-decay",
              help="weight decay (never on biases, norm parameters or position tables)"),
    ), help="the optimizer"),
    Section("sched", (
        Field("name", "cosine", str, choices=_SCHEDULES, flag="--sched", help="learning-rate schedule"),
        Field("warmup_epochs", 0.0, float, low=0, flag="--warmup-epochs",
              help="linear warm-up length in epochs (fractional allowed)"),
        Field("warmup_lr", 1e-6, float, low=0, nullable=True, help="learning rate at the start of the warm-up"),
        Field("min_lr", 0.0, float, low=0, nullable=True, help="learning rate at the end of the decay"),
        Field("step_epochs", 30, float, low=0, low_open=True, nullable=True, help="step: decay every N epochs"),
        Field("milestones", [0.667, 0.917], list, nullable=True, spec=List(Num(low=0, high=1)),
              help="multistep: decay points as fractions of the training"),
        Field("gamma", 0.1, float, low=0, low_open=True,
              help="step, multistep: decay factor at each point; poly: the power"),
        Field("pct_start", 0.25, float, low=0, high=1, help="onecycle: fraction of the steps that raise the rate"),
        Field("fit_time_budget", True, bool, help="with train.time_budget: end the decay when the budget ends"),
    ), help="the learning-rate schedule"),
    Section("train", (
        Field("epochs", 10, float, low=0, low_open=True, flag="--epochs",
              help="number of epochs (fractional allowed for classification)"),
        Field("max_steps", None, int, low=1, nullable=True, flag="--max-steps",
              help="stop after this many optimizer steps (the schedule still follows --epochs)"),
        Field("accum_steps", 1, int, low=1, flag="--accum-steps",
              help="gradient accumulation: batches per optimizer step"),
        Field("time_budget", None, float, low=0, low_open=True, nullable=True, flag="--time-budget",
              help="wall-clock budget in seconds; training stops when it is reached and the model is evaluated "
                   "(the decay is fitted to it)"),
        Field("ema", False, bool, flag="--ema",
              help="keep an EMA of the weights (timm ModelEmaV3) and evaluate it beside the raw weights"),
        Field("ema_decay", 0.9999, float, low=0, high=1, flag="--ema-decay", help="EMA decay (with --ema)"),
        Field("ema_warmup", False, bool, help="timm ModelEmaV3's warm-up of the decay"),
        Field("amp", "auto", str, choices=("auto", "none", "bf16", "fp16"), nullable=True, flag="--amp",
              help="mixed precision autocast (fp16 uses a gradient scaler; auto: bf16 for classification on CUDA, "
                   "none on the CPU)"),
        Field("grad_clip", None, float, low=0, low_open=True, nullable=True, flag="--grad-clip",
              help="clip the global gradient norm to this value"),
        Field("channels_last", "auto", bool, auto=True, flag="--channels-last",
              help="use channels_last memory format (auto: the task's CUDA default, off on the CPU)"),
        Field("cudnn_benchmark", "auto", bool, auto=True,
              help="cudnn.benchmark (auto: on for fixed shapes, classification; off for detection)"),
        Field("compile", False, bool, flag="--compile", help="torch.compile the model"),
        Field("sync_bn", False, bool, flag="--sync-bn", help="convert BatchNorm to SyncBatchNorm under DDP (CUDA)"),
        Field("freeze_bn", False, bool, flag="--freeze-bn",
              help="keep BatchNorm layers in eval mode (running statistics) while training"),
        Field("seed", 0, int, low=0, flag="--seed", help="random seed (data order, augmentation, initialisation)"),
        Field("deterministic", False, bool, flag="--deterministic",
              help="torch.use_deterministic_algorithms (bitwise repeatable runs; slower)"),
        Field("device", "auto", str, check=_check_device, what="auto, cpu, cuda or cuda:N", flag="--device",
              help="auto, cpu, cuda or cuda:N (under torchrun each rank takes GPU LOCAL_RANK)"),
        Field("threads", "auto", int, low=1, auto=True, check=check_threads, what="an integer >= 1, or auto",
              flag="--threads", help="CPU threads for torch: auto picks the fastest count by timing real steps "
                                     "(on a busy shared machine fewer threads are often faster), or a number"),
        Field("eval_every", 1, int, low=0, flag="--eval-every", help="evaluate every N epochs (0: only at the end)"),
        Field("save_every_steps", None, int, low=1, nullable=True, flag="--save-every-steps",
              help="also write RUN/last.safetensors every N steps"),
        Field("log_every", 20, int, low=1, help="steps between log records"),
        Field("progress", True, bool, flag="--progress",
              help="tqdm progress bars on a terminal; --no-progress (or output to a file or pipe) logs a plain "
                   "line every train.log_every steps instead"),
        Field("plots", True, bool, flag="--plots", help="write PNG curves (and the task's pictures) at the end"),
    ), help="the training loop"),
    Section("output", (
        Field("dir", None, str, nullable=True, flag="--output",
              help="run directory (default runs/NAME: the recipe's name, else DATA-MODEL for classification, e.g. "
                   "runs/flowers-botnet50; --print-config shows it)"),
    ), help="where the run is written"),
])
ENGINE_DEFAULTS: dict[str, Any] = ENGINE_SCHEMA.defaults()


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

    ``defaults`` is the task's defaults (``SCHEMA.defaults()``): a recipe key it does not know is an
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


# ----------------------------------------------------------------------------- checks beyond one key
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
    """Check the sections every task shares; each bad value is a one-line ``ConfigError`` naming its key."""
    return ENGINE_SCHEMA.validate(cfg)
