"""``botnet detect train|eval|predict|demo``: Mask R-CNN / Faster R-CNN with a BoTNet-FPN backbone."""
from __future__ import annotations

import argparse
import json
import sys

from botnet.cli.argtypes import positive_float, positive_int, unit_float

DEMO_RECIPE = "detection-fashion-mosaic"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="object detection / instance segmentation (Mask R-CNN, Faster R-CNN, BoTNet-FPN)",
        description="Train, evaluate and run Mask R-CNN / Faster R-CNN with a BoTNet (or ResNet) FPN backbone "
                    "on COCO-format data. See docs/detection.md.",
    )
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION")

    def common_train(sp):
        sp.add_argument("--config", default=None, help="YAML recipe (path or name in configs/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (YAML), e.g. --set train.lr=0.01 --set model.canvas=512")
        sp.add_argument("--out", default=None, help="run directory (config key out_dir)")
        sp.add_argument("--resume", default=None, help="checkpoint, run dir, or 'auto' (continue out_dir/last)")
        sp.add_argument("--time-budget-min", type=positive_float, default=None, help="stop training after N minutes")
        sp.add_argument("--epochs", type=positive_int, default=None)
        sp.add_argument("--device", default=None, help="auto | cpu | cuda")
        sp.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")

    t = sub.add_parser("train", help="train a detector (torchrun for several processes)")
    common_train(t)
    t.set_defaults(func=_train)

    d = sub.add_parser("demo", help=f"fashion-mosaic Mask R-CNN demo (recipe {DEMO_RECIPE}, ~15 min on 2 CPU cores)")
    common_train(d)
    d.set_defaults(func=_demo, config=DEMO_RECIPE)

    e = sub.add_parser("eval", help="COCO box/mask AP of a checkpoint")
    e.add_argument("checkpoint", help="checkpoint file or run directory")
    e.add_argument("--images", default=None, help="image folder (default: the val split of the run's config)")
    e.add_argument("--ann", default=None, help="instances JSON (default: the val split of the run's config)")
    e.add_argument("--out", default=None, help="folder for eval.json / eval.md (default: the run directory)")
    e.add_argument("--backend", default="pycocotools", choices=["pycocotools", "faster_coco_eval"])
    e.add_argument("--batch-size", type=positive_int, default=2)
    e.add_argument("--strict", action="store_true", help="fail on any bad annotation record")
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=positive_int, default=None)
    e.set_defaults(func=_eval)

    r = sub.add_parser("predict", help="draw boxes, labels and masks on images (PNG)")
    r.add_argument("checkpoint", help="checkpoint file or run directory")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--out", default="predictions", help="output folder (PNGs + predictions.json)")
    r.add_argument("--score-threshold", type=unit_float, default=0.5)
    r.add_argument("--scale", type=positive_int, default=1, help="upscale factor of the drawings")
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=positive_int, default=None)
    r.set_defaults(func=_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _config(args: argparse.Namespace) -> dict:
    from botnet.detection.engine import load_detection_config

    overrides = list(args.set)
    for key, val in (("out_dir", args.out), ("train.resume", args.resume), ("train.time_budget_min", args.time_budget_min),
                     ("train.epochs", args.epochs), ("train.device", args.device), ("train.threads", args.threads)):
        if val is not None:
            overrides.append(f"{key}={json.dumps(val)}")
    return load_detection_config(args.config, overrides)


def _run_train(cfg: dict) -> int:
    from botnet.detection.engine import train_detector

    summary = train_detector(cfg)  # bad input raises UserInputError: one line, exit 2 (botnet.cli.main)
    if summary.get("already_finished"):
        return 0
    if summary.get("metrics"):
        print(json.dumps({k: round(100 * v, 2) for k, v in summary["metrics"].items()}))
        print(f"wrote {summary['out_dir']}/eval.json, eval.md, predictions/ "
              f"(training wall time {summary['train_wall_s'] / 60:.1f} min, stopped: {summary['stopped'] or 'finished'})")
    return 0


def _train(args: argparse.Namespace) -> int:
    return _run_train(_config(args))


def _demo(args: argparse.Namespace) -> int:
    cfg = _config(args)
    print(f"demo: recipe {args.config}, run dir {cfg['out_dir']}, data {cfg['data']['root']}")
    return _run_train(cfg)


def _eval(args: argparse.Namespace) -> int:
    import os

    import torch

    from botnet.data.coco import CocoDetection
    from botnet.detection.engine import data_paths, evaluate_detector, load_detector, write_eval
    from botnet.detection.transforms import build_transforms
    from botnet.training.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_detector(path, args.device)
    images, ann = args.images, args.ann
    if not (images and ann):
        cfg = meta.get("config") or {}
        if not cfg:
            print("error: the checkpoint has no stored config; pass --images and --ann", file=sys.stderr)
            return 2
        paths = data_paths(cfg, generate=False)
        images, ann = images or paths["val_images"], ann or paths["val_ann"]
    ds = CocoDetection(images, ann, with_masks=model.detector_config["kind"] == "maskrcnn",
                       strict=args.strict, transforms=build_transforms(False))
    print(ds.report.summary())
    if ds.report.num_annotations == 0:
        print(f"error: {ann} has no (usable) annotations, so there is nothing to measure AP against; evaluate on "
              f"an annotated split", file=sys.stderr)
        return 2
    train_names = (meta.get("extra") or {}).get("class_names") or meta.get("class_names")
    if train_names and train_names != ds.class_names:
        print(f"warning: evaluation categories {ds.class_names[1:]} differ from the training ones {train_names[1:]}",
              file=sys.stderr)
    metrics = evaluate_detector(model, ds, batch_size=args.batch_size, backend=args.backend)
    out = args.out or (str(path.parent))
    jp, mp = write_eval(out, metrics, {"checkpoint": str(path), "images": images, "ann": ann,
                                       "num_images": len(ds), "backend": args.backend})
    print(open(mp).read())
    print(f"wrote {jp} and {mp}")
    return 0 if os.path.isfile(jp) else 1


def _predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from botnet.detection.engine import load_detector, predict_images

    if args.threads:
        torch.set_num_threads(args.threads)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        print(f"error: image file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    model, meta = load_detector(args.checkpoint, args.device)
    names = meta.get("class_names") or (meta.get("extra") or {}).get("class_names")
    if not names:
        names = ["__background__"] + [str(i) for i in range(1, model.detector_config["num_classes"])]
    recs = predict_images(model, args.images, names, args.out, score_threshold=args.score_threshold, scale=args.scale)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "predictions.json"), "w") as f:
        json.dump(recs, f, indent=1)
    for r in recs:
        print(f"{r['image']}: {len(r['detections'])} detections -> {r['drawing']}")
    return 0
