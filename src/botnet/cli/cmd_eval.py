"""``botnet eval``: top-1/top-5 accuracy of a checkpoint on a validation split."""
from __future__ import annotations

import argparse

from botnet.cli.argtypes import nonneg_int, positive_int, unit_float
from botnet.errors import ConfigError, UserInputError

HELP = """Evaluate a classification checkpoint written by `botnet train` / `botnet demo`.

The model and the evaluation transform are rebuilt from the checkpoint's metadata (architecture,
classes, recipe); for image folders the standard ImageNet evaluation is used (resize to
img_size / crop_pct, centre crop). Prints top-1, top-5 and mean loss; optionally writes JSON and
a confusion-matrix PNG."""


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a classification checkpoint", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint: RUN/best.safetensors, RUN/last.safetensors, a run directory (best, else last), "
                        "a published folder (botnet publish) or hf-hub:ORG/NAME")
    p.add_argument("--checkpoint", dest="checkpoint_opt", metavar="CKPT", default=None, help="same as the positional argument")
    p.add_argument("--data-dir", default=None, help="data folder (default: the one the checkpoint was trained with)")
    p.add_argument("--dataset", default=None, choices=["fashion-mnist", "folder", "shards"], help="data set type (default: from the checkpoint)")
    p.add_argument("--split", default=None, help="split folder to evaluate for image folders (default: val)")
    p.add_argument("--img-size", type=positive_int, default=None, help="evaluation resolution (default: the training resolution)")
    p.add_argument("--crop-pct", type=unit_float, default=None, help="centre-crop fraction for folders (default: recipe, 0.875)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--num-workers", type=nonneg_int, default=None, help="DataLoader workers (default: recipe)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only N images (quick checks)")
    p.add_argument("--ema", action="store_true", help="also evaluate the EMA weights stored in the .state.safetensors beside the weights")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable image files (counted) instead of stopping")
    p.add_argument("--tta", default=None, choices=["none", "hflip"],
                   help="test-time augmentation: hflip averages each image's and its mirror image's probabilities "
                        "(default: the recipe's data.eval_tta)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--confusion", default=None, metavar="PNG", help="write the confusion matrix plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def handler(args) -> int:
    import json

    from botnet.engine.rebuild import load_model
    from botnet.errors import resolve_device
    from botnet.io.atomic import atomic_write_bytes
    from botnet.io.folders import check_output_file
    from botnet.io.weights import resolve_checkpoint
    from botnet.tasks import load_task

    path = args.checkpoint or args.checkpoint_opt
    if not path:
        raise ConfigError("give a checkpoint (botnet eval RUN/best.safetensors)")
    check_output_file(args.json, "--json")
    check_output_file(args.confusion, "--confusion")
    device, task = resolve_device(args.device), load_task("classification")
    try:
        model, meta = load_model(path, device=device, task="classification")
        if args.ema and meta.get("published"):  # before any evaluation: the folder holds one set of weights
            load_model(path, use_ema=True, task="classification")
        cfg = _eval_config(task.saved_config(meta.get("config")), args)
        run = dict(amp=args.amp, progress=not args.no_progress)
        which = (meta.get("extra") or {}).get("weights", "raw")
        results = {which: task.evaluate_checkpoint(model, meta, cfg, device, **run)}
        if args.ema:
            ema_model, _ = load_model(path, use_ema=True, device=device, task="classification")
            results["ema"] = task.evaluate_checkpoint(ema_model, meta, cfg, device, desc="eval EMA", **run)
    except FileNotFoundError as e:  # other bad input is a UserInputError, reported by botnet.cli.main
        raise UserInputError(' '.join(str(e).split())) from None
    tta, out = cfg["data"]["eval_tta"], {}
    for k, r in results.items():
        print(f"{resolve_checkpoint(path)} [{k} weights] on {r['n']} images: top-1 {r['top1']:.2f}%  "
              f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}" + (f"  (tta {tta})" if tta != "none" else "")
              + (f"  (skipped {r['n_skipped']} unreadable files)" if r["n_skipped"] else ""))
        out[k] = {**{m: r[m] for m in ("top1", "top5", "loss", "n", "n_skipped")}, "tta": tta,
                  "skipped_files": r["skipped"]}
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(out, indent=2) + "\n").encode())
    if args.confusion:
        from botnet.viz.plots import plot_confusion_matrix

        best = max(results, key=lambda k: results[k]["top1"])
        plot_confusion_matrix(results[best]["confusion"], results[best]["class_names"], args.confusion)
    return 0


def _eval_config(cfg: dict, args) -> dict:
    """The run's config with the data the flags name."""
    d = cfg["data"]
    for key, val in (("root", args.data_dir), ("dataset", args.dataset), ("val_split", args.split),
                     ("eval_img_size", args.img_size), ("crop_pct", args.crop_pct), ("limit_val", args.limit),
                     ("num_workers", args.num_workers), ("eval_tta", args.tta)):
        if val is not None:
            d[key] = val
    d.update(eval_batch_size=args.batch_size, skip_bad=args.skip_bad, limit_train=None)
    return cfg
