"""``botnet train``: train an image classifier from a recipe (single process or under torchrun)."""
from __future__ import annotations

import argparse
import os
import sys

HELP = """Train a BoTNet/ResNet image classifier.

Data: Fashion-MNIST (default; read from /usr/share/datasets/fashion-mnist or --data-dir) or any
ImageNet-layout folder (--dataset folder --data-dir ROOT with ROOT/train/CLASS/*.jpg and
ROOT/val/CLASS/*.jpg), or tar shards of one (botnet data shards ROOT OUT, then --dataset shards
--data-dir OUT).

Config: a run starts from the task's neutral base, where the model keeps its own defaults (its
strides, its image size: 224 for botnet50, 28 for botnet_mini) and nothing is assumed about the
data (no flips, no flip-averaged evaluation, no label smoothing). A recipe changes that only when
named with --config (fashion-mnist: the demo's tuned recipe; imagenet-botnet-s1-*: the paper's
T3-T7); flags and --set override both. --img-size sets the image size and the attention tables'
size together. --print-config shows every value with where it came from. A run is named after its
recipe, else after its data and model (runs/flowers-botnet50 for --data-dir .../flowers).

Writes RUN/config.json, RUN/last.safetensors (+ last.state.safetensors for --resume),
RUN/best.safetensors, metrics (TensorBoard in RUN/tb, metrics.jsonl, metrics.csv), loss/accuracy/
confusion-matrix PNGs and summary.json. Multi-GPU: torchrun --nproc_per_node=8 -m botnet.cli train ...

A run folder belongs to one run (docs/run-folder.md): a run locks it (a second process is refused),
a new run refuses a folder that holds a run unless --overwrite (replace it) or --resume (continue
it) is given, and --resume RUN writes into RUN.

Exit codes: 0 done (also when stopped by --time-budget/--max-steps, or the run was already
finished), 2 bad input (data, config, checkpoint), 3 NaN/inf loss, 130 interrupted (checkpoint
saved; continue with --resume)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an image classifier (recipes, DDP, resume)", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    from botnet.cli.train_args import add_train_arguments

    add_train_arguments(p, task="classification", default_recipe=None)
    p.set_defaults(func=handler)


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a ``torchrun`` job: the one that reports and writes extras."""
    return int(os.environ.get("RANK", "0")) == 0


def run_training(args, cfg: dict) -> tuple[int, dict | None]:
    """Shared by every training command: run; returns ``(exit code, summary or None)``.

    Bad input raises ``UserInputError``, which ``botnet.cli.main`` reports in one line (exit 2).
    """
    from botnet.engine.guards import NonFiniteLossError
    from botnet.engine.trainer import train
    from botnet.tasks import load_task

    try:
        summary = train(load_task(args.task), cfg, resume=args.resume, init_weights=args.init_weights,
                        overwrite=bool(getattr(args, "overwrite", False)))
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3, None
    if summary["status"] == "interrupted":
        return 130, summary
    if summary["status"] == "already_finished" or not is_main_process():
        return 0, summary
    line = (f"done ({summary['status']}): {summary['steps']} steps, {summary['epochs']:.2f} of "
            f"{round(summary['epochs_planned'], 2):g} epochs, train {summary['train_seconds']:.0f}s, "
            f"wall {summary['wall_seconds']:.0f}s")
    for k, v in summary.get("final", {}).items():
        line += f" | {k} " + ", ".join(f"{m} {x:.4g}" for m, x in v.items() if m not in ("n", "n_skipped"))
    print(line)
    print(f"run directory: {summary['run_dir']}")
    return 0, summary


def prepare(args) -> dict | None:
    """The config of a training command, or None when --list-recipes / --print-config answered."""
    from botnet.cli.train_args import config_from_args, print_config
    from botnet.engine.config import list_recipes

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return None
    sources: dict[str, str] = {}
    cfg = config_from_args(args, sources)
    if args.resume:
        _resume_output(args, cfg)
        sources["output.dir"] = f"--resume {args.resume}"
    if args.print_config:
        print_config(cfg, sources)
        return None
    return cfg


def _resume_output(args, cfg: dict) -> None:
    """``--resume RUN`` writes into RUN (the checkpoint's folder), never into the ``output.dir`` recorded in the
    checkpoint (a moved run would write into its old place); an ``--output`` naming another folder is refused."""
    from botnet.engine.run_folder import RunFolderError, resume_folder, same_folder

    if not isinstance(cfg.get("output"), dict):
        return  # a malformed output section is reported by the config check
    folder = resume_folder(args.resume)
    asked = cfg["output"].get("dir")
    named = args.output is not None or any(o.split("=", 1)[0].strip() in ("output", "output.dir") for o in args.set)
    if named and asked and not same_folder(asked, folder):
        raise RunFolderError(f"--resume {args.resume} continues the run in {folder}, but --output names {asked}: "
                             f"drop --output, or start a new run there from its weights with --init-weights "
                             f"{folder / 'last.safetensors'} --output {asked}")
    if getattr(args, "overwrite", False):
        raise RunFolderError(f"--overwrite and --resume contradict each other: --resume continues the run in "
                             f"{folder}, --overwrite replaces it; give one of them")
    cfg["output"]["dir"] = str(folder)


def handler(args) -> int:
    cfg = prepare(args)
    return 0 if cfg is None else run_training(args, cfg)[0]
