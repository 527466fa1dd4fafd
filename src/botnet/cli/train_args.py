"""One flag vocabulary for ``botnet train``, ``botnet demo``, ``botnet detect train`` and ``detect demo``.

Every flag maps to one config key (shown in ``--help``); ``--set KEY=VALUE`` reaches any key. The
flags come from the task's declared schema: the engine's are the same for every task, a task adds
its own (data set, model, augmentation).
"""
from __future__ import annotations

import argparse
import json

__all__ = ["add_train_arguments", "config_from_args", "print_config", "schema_of"]


def schema_of(task: str):
    """The declared config of ``task`` (:class:`botnet.engine.schema_decl.Schema`), for its flags and the keys
    it renamed; a task that declares none gets the engine's (its own keys are set with ``--set``)."""
    from botnet.engine.config import ENGINE_SCHEMA
    from botnet.tasks import config_schema

    return config_schema(task) or ENGINE_SCHEMA


def add_train_arguments(p: argparse.ArgumentParser, *, task: str, default_recipe: str | None) -> None:
    """The recipe, option and checkpoint flags of a training command for ``task``."""
    p.set_defaults(default_recipe=default_recipe, task=task)
    g = p.add_argument_group("recipe")
    default = default_recipe or "none: the task's base, where each model keeps its own defaults"
    g.add_argument("-c", "--config", default=None, metavar="RECIPE",
                   help=f"recipe name (configs/<name>.yaml) or path to a YAML file (default: {default}); "
                        "see --list-recipes")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, value parsed as YAML (repeatable), e.g. --set optim.lr=0.05 "
                        "--set model.kwargs.heads=2")
    g.add_argument("--list-recipes", action="store_true", help="print the available recipe names and exit")
    g.add_argument("--print-config", action="store_true",
                   help="print the final config as YAML and exit; a comment on each value says where it came from: "
                        "base, recipe NAME, a flag, --set or resolved (filled from the model or the data)")
    schema_of(task).add_arguments(p)  # a group per config section; each flag overrides the key it names
    g = p.add_argument_group("checkpoints")
    g.add_argument("--resume", metavar="RUN|CKPT", default=None,
                   help="continue a run exactly from RUN/last.safetensors (+ last.state.safetensors); 'auto' resumes "
                        "the output folder when it holds a checkpoint (the default under torchrun --max-restarts). The "
                        "run's saved config is used unless --config is given")
    g.add_argument("--init-weights", metavar="CKPT", default=None,
                   help="start from these weights (same architecture; mismatching keys are listed and refused)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the output folder: removes only the files botnet writes there "
                        "(checkpoints, metrics, summary, plots; docs/run-folder.md), once the new run's inputs are "
                        "checked. Without it a new run refuses a folder that holds a run")


def config_from_args(args: argparse.Namespace, sources: dict[str, str] | None = None) -> dict:
    """Recipe (or, for ``--resume`` without ``--config``, the run's saved config) + flags + ``--set``.

    ``--resume auto`` becomes the output folder when it holds a checkpoint, else nothing; it is the default
    under an elastic launch (``torchrun --max-restarts N``), whose restarted workers must continue the run.
    ``sources`` (when given) receives, for each key a layer set, where its value came from (``--print-config``).
    """
    from botnet.engine.config import apply_overrides, find_recipe, merge, recipe_chain, set_by_path
    from botnet.engine.distributed import elastic_launch

    if elastic_launch():
        if getattr(args, "overwrite", False):
            from botnet.engine.run_folder import RunFolderError

            raise RunFolderError("--overwrite cannot be used under torchrun --max-restarts: the restarted workers "
                                 "would replace the run they are to continue; remove the old run (or choose another "
                                 "--output) and launch without --overwrite")
        args.resume = args.resume or "auto"
    from botnet.tasks import load_task

    task, schema = load_task(args.task), schema_of(args.task)
    defaults = merge(task.config_defaults, {})  # a copy: the task's stays as it is
    sources = {} if sources is None else sources
    meta, recipe = None, None
    if args.resume and args.resume != "auto":
        from botnet.engine.checkpoint import check_resumable

        _, meta = check_resumable(args.resume)  # a bad --resume fails here, before anything else
    if meta is not None and not args.config:
        saved = schema.migrate(meta.get("config") or {})  # a run saved before keys moved keeps its values
        cfg = merge(defaults, saved)
        _mark(sources, "", saved, f"--resume {args.resume}")
    else:
        recipe = args.config or args.default_recipe
        cfg = defaults
        for path, layer in recipe_chain(find_recipe(recipe)) if recipe else []:
            layer = schema.migrate(layer)  # a recipe written before keys moved reads as its saved runs do
            cfg = merge(cfg, _checked(layer, defaults))
            _mark(sources, "", layer, f"recipe {path.stem}")
    for item in getattr(args, "preset", None) or []:  # a command's own defaults (botnet demo's budget, folder)
        apply_overrides(cfg, [item])
        _mark_set(sources, cfg, item, args.preset_label)
    for key, value, flag in schema.flag_values(args):
        set_by_path(cfg, key, value)
        _mark(sources, key, value, flag, replace=True)
    for item in args.set:
        key, eq, value = item.partition("=")
        item = schema.current_key(key.strip()) + eq + value if eq else item
        apply_overrides(cfg, [item])
        _mark_set(sources, cfg, item, "--set")
    for key, why in task.resolve_config(cfg, recipe).items():
        sources[key] = f"resolved: {why}"
    if args.resume == "auto":
        from botnet.engine.checkpoint import has_checkpoint
        from botnet.engine.trainer import run_dir_of

        # last.safetensors, or the last.prev.* pair an interrupted save kept
        args.resume = str(run_dir_of(cfg)) if has_checkpoint(run_dir_of(cfg)) else None
    return cfg


def _checked(layer: dict, schema: dict) -> dict:
    from botnet.engine.config import _check_keys

    _check_keys(layer, schema, "")  # a key the task does not know is an error, in whichever file it is
    return layer


def _mark(sources: dict[str, str], path: str, value, label: str, replace: bool = False) -> None:
    """``label`` set ``value`` at ``path``. A recipe's mapping merges into its section (``kwargs`` and a
    ``--set`` of a whole mapping replace it: what was under it is gone)."""
    if replace or path.split(".")[-1] == "kwargs":
        for k in [k for k in sources if k == path or k.startswith(path + ".")]:
            del sources[k]
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _mark(sources, f"{path}.{k}" if path else str(k), v, label)
    elif path:
        sources[path] = label


def _mark_set(sources: dict[str, str], cfg: dict, item: str, label: str) -> None:
    """``--set KEY=VALUE`` (already applied to ``cfg``) replaced whatever was at KEY."""
    from botnet.engine.config import get_by_path

    key = item.split("=", 1)[0].strip()
    _mark(sources, key, get_by_path(cfg, key), label, replace=True)


def print_config(cfg: dict, sources: dict[str, str] | None = None) -> None:
    """The config as YAML, one value a line, each with a comment saying where it came from."""
    data = json.loads(json.dumps(cfg, default=str))
    lines = ["# where each value comes from: base (the task's defaults), recipe NAME, a flag, --set, or "
             "resolved (filled from the model or the data)"]
    _yaml_lines(data, sources or {}, "", 0, lines)
    print("\n".join(lines))


def _source(sources: dict[str, str], path: str) -> str:
    parts = path.split(".")
    for n in range(len(parts), 0, -1):  # a value inside a mapping set as a whole (--set model.kwargs={...})
        if ".".join(parts[:n]) in sources:
            return sources[".".join(parts[:n])]
    return "base"


def _yaml_lines(node: dict, sources: dict[str, str], prefix: str, depth: int, lines: list[str]) -> None:
    for k, v in node.items():
        path = f"{prefix}{k}"
        key = _flow(k)
        if isinstance(v, dict) and v:
            lines.append(f"{'  ' * depth}{key}:")
            _yaml_lines(v, sources, path + ".", depth + 1, lines)
        else:
            lines.append(f"{'  ' * depth}{key}: {_flow(v)}  # {_source(sources, path)}")


def _flow(value) -> str:
    """One value as single-line YAML (lists in flow style); one YAML would break over lines (a string with
    a line break) as JSON, which YAML reads too."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False, allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...").strip()
    return json.dumps(value, ensure_ascii=False) if "\n" in text else text
