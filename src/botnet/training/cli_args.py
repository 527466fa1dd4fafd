"""Command-line options shared by ``botnet train`` and ``botnet demo``: each flag maps to a config key."""
from __future__ import annotations

import argparse

from botnet.cli.argtypes import (nonneg_float, nonneg_int, positive_float, positive_int, threads, unit_float)

__all__ = ["add_train_arguments", "config_from_args", "FLAG_TO_KEY"]

# flag dest -> (config key, help); None values are "not given" and leave the recipe's value
FLAG_TO_KEY: dict[str, tuple[str, str]] = {
    "dataset": ("data.dataset", "data set type: fashion-mnist, or folder (ImageNet layout ROOT/train/CLASS/*.jpg, ROOT/val/CLASS/*.jpg)"),
    "data_dir": ("data.root", "data folder: ROOT with train/ and val/ for 'folder'; a folder with the Fashion-MNIST IDX files "
                              "(or torchvision's FashionMNIST root) for fashion-mnist"),
    "model": ("model.name", "architecture name from botnet.list_models(), e.g. botnet_mini, botnet50, botnet_s1_59"),
    "img_size": ("data.img_size", "training resolution in pixels (also the model's attention-table size)"),
    "epochs": ("train.epochs", "number of epochs (fractional allowed)"),
    "batch_size": ("data.batch_size", "batch size per process (global batch = this x number of processes)"),
    "lr": ("optim.lr", "peak learning rate (scaled by global batch / optim.lr_base_batch when that is set)"),
    "opt": ("optim.name", "optimizer name for timm's create_optimizer_v2: sgd, adamw, lamb, ..."),
    "weight_decay": ("optim.weight_decay", "weight decay (not applied to biases and norm parameters)"),
    "sched": ("sched.name", "learning-rate schedule: cosine, onecycle, step, multistep, poly, tanh, constant"),
    "warmup_epochs": ("sched.warmup_epochs", "linear warm-up length in epochs (fractional allowed)"),
    "label_smoothing": ("train.label_smoothing", "label smoothing (paper: 0.1)"),
    "mixup": ("train.mixup", "mixup alpha (0 = off)"),
    "cutmix": ("train.cutmix", "cutmix alpha (0 = off)"),
    "auto_augment": ("data.auto_augment", "timm auto-augment string for folders, e.g. rand-m9-mstd0.5-inc1 (RandAugment)"),
    "drop_rate": ("model.drop_rate", "dropout before the classifier"),
    "drop_path_rate": ("model.drop_path_rate", "stochastic depth rate"),
    "amp": ("train.amp", "mixed precision autocast: none, bf16 or fp16 (fp16 uses a gradient scaler)"),
    "ema_decay": ("train.ema_decay", "EMA decay (with --ema)"),
    "grad_clip": ("train.grad_clip", "clip the global gradient norm to this value"),
    "num_workers": ("data.num_workers", "DataLoader worker processes per rank (0: load in the training process)"),
    "seed": ("train.seed", "random seed (data order, augmentation, initialisation)"),
    "device": ("train.device", "auto, cpu or cuda (under torchrun each rank takes GPU LOCAL_RANK)"),
    "threads": ("train.threads", "CPU threads for torch: auto picks the fastest count by timing real steps "
                                 "(on a busy shared machine fewer threads are often faster), or a number"),
    "time_budget": ("train.time_budget", "wall-clock budget in seconds for the run; training stops when it is reached "
                                         "and the model is evaluated (the cosine decay is fitted to the budget)"),
    "max_steps": ("train.max_steps", "stop after this many optimizer steps (the schedule still follows --epochs)"),
    "eval_every": ("train.eval_every", "evaluate every N epochs (0: only at the end)"),
    "save_every_steps": ("train.save_every_steps", "also write RUN/last.safetensors every N steps"),
    "limit_train": ("data.limit_train", "use only N training images (smoke tests)"),
    "limit_val": ("data.limit_val", "use only N validation images"),
    "output": ("output.dir", "run directory (default runs/<recipe name>)"),
}
BOOL_FLAGS: dict[str, tuple[str, str]] = {
    "ema": ("train.ema", "keep an EMA of the weights (timm ModelEmaV3) and evaluate it beside the raw weights"),
    "channels_last": ("train.channels_last", "use channels_last memory format"),
    "compile": ("train.compile", "torch.compile the model"),
    "sync_bn": ("train.sync_bn", "convert BatchNorm to SyncBatchNorm under DDP"),
    "freeze_bn": ("train.freeze_bn", "keep BatchNorm layers in eval mode (use running statistics) while training, "
                                     "e.g. fine-tuning with small per-GPU batches"),
    "deterministic": ("train.deterministic", "torch.use_deterministic_algorithms (bitwise repeatable runs; slower)"),
    "skip_bad": ("data.skip_bad", "skip unreadable image files (counted and listed in the summary) instead of stopping"),
    "download": ("data.download", "let torchvision download Fashion-MNIST when it is not installed (needs internet)"),
    "progress": ("train.progress", "show tqdm progress bars"),
    "plots": ("train.plots", "write PNG curves and a confusion matrix at the end"),
}
TYPES = {"img_size": positive_int, "epochs": positive_float, "batch_size": positive_int, "lr": nonneg_float,
         "weight_decay": nonneg_float, "warmup_epochs": nonneg_float, "label_smoothing": unit_float,
         "mixup": nonneg_float, "cutmix": nonneg_float, "drop_rate": unit_float, "drop_path_rate": unit_float,
         "ema_decay": unit_float, "grad_clip": positive_float, "num_workers": nonneg_int, "seed": nonneg_int,
         "time_budget": positive_float, "max_steps": positive_int, "eval_every": nonneg_int,
         "save_every_steps": positive_int, "limit_train": positive_int, "limit_val": positive_int, "threads": threads}


CHOICES = {"amp": ["none", "bf16", "fp16"], "dataset": ["fashion-mnist", "folder"],
           "sched": ["cosine", "onecycle", "step", "multistep", "poly", "tanh", "constant"]}


def add_train_arguments(p: argparse.ArgumentParser, default_recipe: str | None = "fashion-mnist") -> None:
    g = p.add_argument_group("recipe")
    p.set_defaults(default_recipe=default_recipe)
    g.add_argument("-c", "--config", default=None, metavar="RECIPE",
                   help=f"recipe name (configs/<name>.yaml) or path to a YAML file (default: {default_recipe}); "
                        "see --list-recipes")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, value parsed as YAML (repeatable), e.g. --set optim.lr=0.05 "
                        "--set model.kwargs.heads=2")
    g.add_argument("--list-recipes", action="store_true", help="print the available recipe names and exit")
    g.add_argument("--print-config", action="store_true", help="print the final config as YAML and exit")
    g = p.add_argument_group("options (each overrides one config key)")
    for dest, (key, help_) in FLAG_TO_KEY.items():
        flag = "--" + dest.replace("_", "-")
        extra = {"type": TYPES[dest]} if dest in TYPES else {}
        if dest in CHOICES:
            extra["choices"] = CHOICES[dest]
        g.add_argument(flag, dest=dest, default=None, help=f"{help_} [{key}]", **extra)
    for dest, (key, help_) in BOOL_FLAGS.items():
        flag = "--" + dest.replace("_", "-")
        g.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction, help=f"{help_} [{key}]")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue a run exactly from RUN/last.safetensors (+ last.state.safetensors), or a run directory; "
                        "the run's saved config is used unless --config is given explicitly")
    g.add_argument("--init-weights", metavar="CKPT", default=None,
                   help="start from these weights (same architecture; mismatching keys are listed and refused)")


def config_from_args(args: argparse.Namespace) -> dict:
    """Recipe (or, for ``--resume`` without ``--config``, the run's saved config) + flags + ``--set``."""
    from botnet.training.config import DEFAULTS, apply_overrides, load_config, merge, set_by_path

    if getattr(args, "resume", None):
        from botnet.training.checkpoint import check_resumable

        _, meta = check_resumable(args.resume)  # a bad --resume fails here, before anything else
    if getattr(args, "resume", None) and not args.config:
        cfg = merge(DEFAULTS, meta.get("config") or {})
    else:
        cfg = load_config(args.config or args.default_recipe)
    for dest, (key, _) in {**FLAG_TO_KEY, **BOOL_FLAGS}.items():
        v = getattr(args, dest, None)
        if v is not None:
            set_by_path(cfg, key, v)
    return apply_overrides(cfg, args.set)
