"""One flag vocabulary for ``botnet train``, ``botnet demo``, ``botnet detect train`` and ``detect demo``.

Every flag maps to one config key (shown in ``--help``); ``--set KEY=VALUE`` reaches any key. The
engine's flags are the same for every task; a task adds its own (data set, model, augmentation).
"""
from __future__ import annotations

import argparse
import json

from botnet.cli.argtypes import nonneg_float, nonneg_int, positive_float, positive_int, threads, unit_float

__all__ = ["ENGINE_FLAGS", "CLASSIFICATION_FLAGS", "DETECTION_FLAGS", "BOOL_FLAGS", "CLASSIFICATION_BOOL_FLAGS",
           "FLAG_ALSO_SETS", "add_train_arguments", "config_from_args", "print_config"]

# flag dest -> (config key, type, help); an absent flag (None) leaves the recipe's value
ENGINE_FLAGS: dict[str, tuple[str, object, str]] = {
    "epochs": ("train.epochs", positive_float, "number of epochs (fractional allowed for classification)"),
    "batch_size": ("data.batch_size", positive_int, "batch size per process (global batch = this x accumulation "
                                                    "steps x processes)"),
    "accum_steps": ("train.accum_steps", positive_int, "gradient accumulation: batches per optimizer step"),
    "lr": ("optim.lr", nonneg_float, "peak learning rate (scaled by global batch / optim.lr_base_batch when set)"),
    "opt": ("optim.name", str, "optimizer name for timm's create_optimizer_v2: sgd, adamw, lamb, ..."),
    "weight_decay": ("optim.weight_decay", nonneg_float,
                     "weight decay (never on biases, norm parameters or position tables)"),
    "sched": ("sched.name", ["cosine", "onecycle", "step", "multistep", "poly", "tanh", "constant"],
              "learning-rate schedule"),
    "warmup_epochs": ("sched.warmup_epochs", nonneg_float, "linear warm-up length in epochs (fractional allowed)"),
    "amp": ("train.amp", ["auto", "none", "bf16", "fp16"], "mixed precision autocast (fp16 uses a gradient scaler; auto: bf16 for classification on CUDA, none on the CPU)"),
    "ema_decay": ("train.ema_decay", unit_float, "EMA decay (with --ema)"),
    "grad_clip": ("train.grad_clip", positive_float, "clip the global gradient norm to this value"),
    "num_workers": ("data.num_workers", nonneg_int, "DataLoader worker processes per rank (0: in the training process)"),
    "seed": ("train.seed", nonneg_int, "random seed (data order, augmentation, initialisation)"),
    "device": ("train.device", str, "auto, cpu, cuda or cuda:N (under torchrun each rank takes GPU LOCAL_RANK)"),
    "threads": ("train.threads", threads, "CPU threads for torch: auto picks the fastest count by timing real steps "
                                         "(on a busy shared machine fewer threads are often faster), or a number"),
    "time_budget": ("train.time_budget", positive_float, "wall-clock budget in seconds; training stops when it is "
                                                         "reached and the model is evaluated (the decay is fitted to it)"),
    "max_steps": ("train.max_steps", positive_int, "stop after this many optimizer steps (the schedule still follows "
                                                   "--epochs)"),
    "eval_every": ("train.eval_every", nonneg_int, "evaluate every N epochs (0: only at the end)"),
    "save_every_steps": ("train.save_every_steps", positive_int, "also write RUN/last.safetensors every N steps"),
    "output": ("output.dir", str, "run directory (default runs/NAME: the recipe's name, else DATA-MODEL for "
                                  "classification, e.g. runs/flowers-botnet50; --print-config shows it)"),
}
CLASSIFICATION_FLAGS: dict[str, tuple[str, object, str]] = {
    "dataset": ("data.dataset", ["fashion-mnist", "folder", "shards"],
                "data set type: fashion-mnist, folder (ImageNet layout ROOT/train/CLASS/*.jpg, ROOT/val/CLASS/*.jpg) "
                "or shards (tar shards written by botnet data shards)"),
    "data_dir": ("data.root", str, "data folder: ROOT with train/ and val/ for 'folder'; the shards folder for "
                                   "'shards'; a folder with the "
                                   "Fashion-MNIST IDX files (or torchvision's FashionMNIST root) for fashion-mnist"),
    "model": ("model.name", str, "architecture name from botnet.list_models(), e.g. botnet_mini, botnet50"),
    "img_size": ("data.img_size", positive_int, "image size in pixels for training and evaluation; the attention "
                                                "tables are built for it too, unless --set model.img_size=N names "
                                                "another size (default: the model's own size, e.g. 224 for "
                                                "botnet50)"),
    "label_smoothing": ("train.label_smoothing", unit_float, "label smoothing (paper: 0.1)"),
    "mixup": ("train.mixup", nonneg_float, "mixup alpha (0 = off)"),
    "cutmix": ("train.cutmix", nonneg_float, "cutmix alpha (0 = off)"),
    "auto_augment": ("data.auto_augment", str, "timm auto-augment string for folders, e.g. rand-m9-mstd0.5-inc1"),
    "drop_rate": ("model.drop_rate", unit_float, "dropout before the classifier"),
    "drop_path_rate": ("model.drop_path_rate", unit_float, "stochastic depth rate"),
    "limit_train": ("data.limit_train", positive_int, "use only N training images (smoke tests)"),
    "limit_val": ("data.limit_val", positive_int, "use only N validation images"),
}
DETECTION_FLAGS: dict[str, tuple[str, object, str]] = {
    "dataset": ("data.dataset", ["fashion-mosaic", "coco", "shards"],
                "data set type: fashion-mosaic, coco (data.train_images/train_ann/val_images/val_ann) or shards (tar "
                "shards written by botnet data shards from a COCO set)"),
    "data_dir": ("data.root", str, "data folder: the fashion-mosaic folder (generated when missing), the COCO root, "
                                   "or the shards folder for 'shards'"),
    "backbone": ("model.backbone", str, "backbone name from botnet.list_models(), e.g. botnet50, resnet50"),
}
BOOL_FLAGS: dict[str, tuple[str, str]] = {
    "ema": ("train.ema", "keep an EMA of the weights (timm ModelEmaV3) and evaluate it beside the raw weights"),
    "channels_last": ("train.channels_last", "use channels_last memory format"),
    "compile": ("train.compile", "torch.compile the model"),
    "sync_bn": ("train.sync_bn", "convert BatchNorm to SyncBatchNorm under DDP (CUDA)"),
    "freeze_bn": ("train.freeze_bn", "keep BatchNorm layers in eval mode (running statistics) while training"),
    "deterministic": ("train.deterministic", "torch.use_deterministic_algorithms (bitwise repeatable runs; slower)"),
    "progress": ("train.progress", "tqdm progress bars on a terminal; --no-progress (or output to a file or pipe) "
                                   "logs a plain line every train.log_every steps instead"),
    "plots": ("train.plots", "write PNG curves (and the task's pictures) at the end"),
}
CLASSIFICATION_BOOL_FLAGS: dict[str, tuple[str, str]] = {
    "skip_bad": ("data.skip_bad", "leave out unreadable image files (counted and listed in the summary) instead of "
                                  "stopping"),
    "download": ("data.download", "let torchvision download Fashion-MNIST when it is not installed (needs internet)"),
}
TASK_FLAGS = {"classification": (CLASSIFICATION_FLAGS, CLASSIFICATION_BOOL_FLAGS), "detection": (DETECTION_FLAGS, {})}
# flags that set more than their own key: --img-size also sizes the attention tables (model.img_size), so
# the images and the tables agree unless --set model.img_size says otherwise (--set comes after flags)
FLAG_ALSO_SETS: dict[str, tuple[str, ...]] = {"img_size": ("model.img_size",)}


def _flags(task: str) -> tuple[dict, dict]:
    own, own_bool = TASK_FLAGS.get(task, ({}, {}))  # a plug-in task: the engine's flags, and --set for its keys
    return {**ENGINE_FLAGS, **own}, {**BOOL_FLAGS, **own_bool}


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
    g = p.add_argument_group("options (each overrides one config key)")
    flags, bools = _flags(task)
    for dest, (key, kind, help_) in flags.items():
        extra = {"choices": kind} if isinstance(kind, list) else {"type": kind}
        keys = ", ".join((key, *FLAG_ALSO_SETS.get(dest, ())))
        g.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, help=f"{help_} [{keys}]", **extra)
    for dest, (key, help_) in bools.items():
        g.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, action=argparse.BooleanOptionalAction,
                       help=f"{help_} [{key}]")
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


def _schema(task: str) -> dict:
    from botnet.tasks import load_task

    return load_task(task).config_defaults


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
    schema = _schema(args.task)
    sources = {} if sources is None else sources
    meta, recipe = None, None
    if args.resume and args.resume != "auto":
        from botnet.engine.checkpoint import check_resumable

        _, meta = check_resumable(args.resume)  # a bad --resume fails here, before anything else
    if meta is not None and not args.config:
        cfg = merge(schema, meta.get("config") or {})
        _mark(sources, "", meta.get("config") or {}, f"--resume {args.resume}")
    else:
        recipe = args.config or args.default_recipe
        cfg = merge(schema, {})  # a copy: the schema stays as it is
        for path, layer in recipe_chain(find_recipe(recipe)) if recipe else []:
            cfg = merge(cfg, _checked(layer, schema))
            _mark(sources, "", layer, f"recipe {path.stem}")
    for item in getattr(args, "preset", None) or []:  # a command's own defaults (botnet demo's budget, folder)
        apply_overrides(cfg, [item])
        _mark_set(sources, cfg, item, args.preset_label)
    flags, bools = _flags(args.task)
    for dest, (key, *_rest) in {**flags, **bools}.items():
        v = getattr(args, dest, None)
        if v is not None:
            flag = ("--no-" if v is False and dest in bools else "--") + dest.replace("_", "-")
            for k in (key, *FLAG_ALSO_SETS.get(dest, ())):
                set_by_path(cfg, k, v)
                _mark(sources, k, v, flag, replace=True)
    for item in args.set:
        apply_overrides(cfg, [item])
        _mark_set(sources, cfg, item, "--set")
    from botnet.tasks import load_task

    for key, why in load_task(args.task).resolve_config(cfg, recipe).items():
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
