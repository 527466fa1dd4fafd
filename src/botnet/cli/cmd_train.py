"""``botnet train``: train an image classifier from a recipe (single process or under torchrun)."""
from __future__ import annotations

import argparse
import sys

HELP = """Train a BoTNet/ResNet image classifier.

Data: Fashion-MNIST (default; read from /usr/share/datasets/fashion-mnist or --data-dir) or any
ImageNet-layout folder (--dataset folder --data-dir ROOT with ROOT/train/CLASS/*.jpg and
ROOT/val/CLASS/*.jpg). A recipe (configs/*.yaml) sets everything; flags and --set override it.
Writes RUN/last.safetensors (+ last.state.safetensors for --resume), RUN/best.safetensors, metrics
(TensorBoard in RUN/tb, metrics.jsonl, metrics.csv), loss/accuracy/confusion-matrix PNGs and
summary.json. Multi-GPU: torchrun --nproc_per_node=8 -m botnet.cli train ...

Exit codes: 0 done (also when stopped by --time-budget/--max-steps), 2 bad input (data, config,
checkpoint), 3 NaN/inf loss, 130 interrupted (checkpoint saved; continue with --resume)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an image classifier (recipes, DDP, resume)", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    from botnet.training.cli_args import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=handler)


def run_training(args, cfg=None) -> tuple[int, dict | None]:
    """Shared by ``train`` and ``demo``: run; returns ``(exit code, summary or None)``."""
    from botnet.training.guards import NonFiniteLossError

    try:
        from botnet.training.classification import train

        summary = train(cfg, resume=args.resume, init_weights=args.init_weights)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3, None
    # bad input (botnet.errors.UserInputError) is reported by botnet.cli.main: one line, exit code 2
    if summary["status"] == "interrupted":
        return 130, summary
    if summary["status"] == "already_finished":
        return 0, summary
    if int(__import__("os").environ.get("RANK", "0")) != 0:
        return 0, summary
    fin = summary.get("final", {})
    line = f"done ({summary['status']}): {summary['steps']} steps, {summary['epochs']:.2f} epochs, " \
           f"train {summary['train_seconds']:.0f}s, wall {summary['wall_seconds']:.0f}s"
    for k, v in fin.items():
        line += f" | {k} top-1 {v['top1']:.2f}% top-5 {v['top5']:.2f}%"
    print(line)
    print(f"run directory: {summary['run_dir']}")
    return 0, summary


def handler(args) -> int:
    from botnet.training.cli_args import config_from_args
    from botnet.training.config import list_recipes

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    cfg = config_from_args(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    return run_training(args, cfg)[0]
