"""``botnet TASK train|eval``: the commands of every registered task that has no hand-written ones.

A task registered in :mod:`botnet.tasks` gets a command group named after it: ``train`` takes the
same recipe, flag and checkpoint options as ``botnet train`` (its own keys through ``--set``), and
``eval`` measures a checkpoint, run folder or published folder on the validation data its config
names. ``botnet publish`` and ``botnet.engine.load_model`` serve every task as they are.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from botnet.tasks import task_specs

    for spec in task_specs():
        if spec.generated:
            _register_task(subparsers, spec)


def _register_task(subparsers, spec) -> None:
    from botnet.cli.train_args import add_train_arguments

    p = subparsers.add_parser(spec.cli_name, help=spec.help or f"the {spec.name} task (train, eval)",
                              description=spec.help or None)
    sub = p.add_subparsers(dest=f"{spec.cli_name}_command", metavar="ACTION")
    t = sub.add_parser("train", help=f"train a {spec.name} model (torchrun for several processes)",
                       description=f"Train a {spec.name} model: the options, config sections and run-folder files "
                                   f"of `botnet train`. Exit codes: 0 done, 2 bad input, 3 NaN/inf loss, 130 "
                                   f"interrupted.")
    add_train_arguments(t, task=spec.name, default_recipe=None)
    t.set_defaults(func=train_handler)
    e = sub.add_parser("eval", help="measure a checkpoint on the validation data of its run's config",
                       description="Measure a checkpoint file, run folder or published folder on the validation "
                                   "data its run's config names (change any key with --set).")
    e.add_argument("checkpoint", help="checkpoint file, run directory, published folder or hf-hub:ORG/NAME")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the run's config, e.g. --set data.root=DIR")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--json", default=None, metavar="FILE", help="write the metrics as JSON")
    e.set_defaults(func=eval_handler, task=spec.name)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def train_handler(args: argparse.Namespace) -> int:
    from botnet.cli.cmd_train import prepare, run_training

    cfg = prepare(args)
    return 0 if cfg is None else run_training(args, cfg)[0]


def eval_handler(args: argparse.Namespace) -> int:
    import json

    from botnet.engine.config import apply_overrides
    from botnet.engine.rebuild import load_model
    from botnet.errors import resolve_device
    from botnet.io.atomic import atomic_write_bytes
    from botnet.io.folders import check_output_file
    from botnet.tasks import load_task

    check_output_file(args.json, "--json")
    task, device = load_task(args.task), resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device=device, task=args.task)
    cfg = apply_overrides(task.saved_config(meta.get("config")), args.set)
    task.validate(cfg)
    metrics = task.evaluate_checkpoint(model, meta, cfg, device)
    print(f"{args.checkpoint}: {task.describe(metrics)}")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(metrics, indent=2, default=str) + "\n").encode())
    return 0
