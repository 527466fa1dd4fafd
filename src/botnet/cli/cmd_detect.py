"""``botnet detect train|eval|predict|demo``: Mask R-CNN / Faster R-CNN with a BoTNet-FPN backbone."""
from __future__ import annotations

import argparse
import json
import sys

from botnet.cli.argtypes import positive_int, unit_float

DEMO_RECIPE = "detection-fashion-mosaic"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="object detection / instance segmentation (Mask R-CNN, Faster R-CNN, BoTNet-FPN)",
        description="Train, evaluate and run Mask R-CNN / Faster R-CNN with a BoTNet (or ResNet) FPN backbone "
                    "on COCO-format data. See docs/detection.md.",
    )
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION")

    from botnet.cli.train_args import add_train_arguments

    t = sub.add_parser("train", help="train a detector (torchrun for several processes)",
                       description="Train a detector; the same options, config sections and run-directory files as "
                                   "`botnet train`. Exit codes: 0 done, 2 bad input, 3 NaN/inf loss, 130 interrupted.")
    add_train_arguments(t, task="detection", default_recipe=None)
    t.set_defaults(func=_train)

    d = sub.add_parser("demo", help=f"fashion-mosaic Mask R-CNN demo (recipe {DEMO_RECIPE}, ~15 min on 2 CPU cores)")
    add_train_arguments(d, task="detection", default_recipe=DEMO_RECIPE)
    d.set_defaults(func=_demo)

    e = sub.add_parser("eval", help="COCO box/mask AP of a checkpoint")
    e.add_argument("checkpoint", help="checkpoint file, run directory, published folder or hf-hub:ORG/NAME")
    e.add_argument("--images", default=None, help="image folder (default: the val split of the run's config)")
    e.add_argument("--ann", default=None, help="instances JSON (default: the val split of the run's config)")
    e.add_argument("--output", "--out", dest="output", default=None,
                   help="folder for eval.json / eval.md (default: the run directory; ./NAME-eval for a "
                        "published folder)")
    e.add_argument("--backend", default="pycocotools", choices=["pycocotools", "faster_coco_eval"])
    e.add_argument("--batch-size", type=positive_int, default=2)
    e.add_argument("--strict", action="store_true", help="fail on any bad annotation record")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--threads", type=positive_int, default=None)
    e.set_defaults(func=_eval)

    r = sub.add_parser("predict", help="draw boxes, labels and masks on images (PNG)")
    r.add_argument("checkpoint", help="checkpoint file, run directory, published folder or hf-hub:ORG/NAME")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--output", "--out", dest="output", default="predictions",
                   help="output folder (PNGs + predictions.json)")
    r.add_argument("--score-threshold", type=unit_float, default=0.5)
    r.add_argument("--scale", type=positive_int, default=1, help="upscale factor of the drawings")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--threads", type=positive_int, default=None)
    r.set_defaults(func=_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _train(args: argparse.Namespace) -> int:
    from botnet.cli.cmd_train import prepare, run_training

    cfg = prepare(args)  # no --config: the schema's defaults (see --print-config)
    if cfg is None:
        return 0
    rc, summary = run_training(args, cfg)
    if rc == 0 and summary and summary.get("metrics"):
        print(f"wrote {summary['run_dir']}/eval.json, eval.md, predictions/")
    return rc


def _demo(args: argparse.Namespace) -> int:
    from botnet.cli.cmd_train import prepare, run_training

    cfg = prepare(args)
    if cfg is None:
        return 0
    print(f"demo: recipe {args.config or DEMO_RECIPE}, run dir {cfg['output']['dir']}, data {cfg['data']['root']}")
    return run_training(args, cfg)[0]


def _eval(args: argparse.Namespace) -> int:
    import os

    import torch

    from botnet.data.coco import CocoDetection
    from botnet.detection.evaluate import evaluate_detector, write_eval
    from botnet.detection.task import data_paths
    from botnet.detection.transforms import build_transforms
    from botnet.engine.checkpoint import resolve_checkpoint
    from botnet.engine.rebuild import load_model

    from botnet.cli.paths import check_output_dir

    check_output_dir(args.output, "--output")
    path = resolve_checkpoint(args.checkpoint)
    model, meta = load_model(path, device=args.device, task="detection")
    if args.threads:
        torch.set_num_threads(args.threads)
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
    # a published folder is not written into (it may be a read-only Hub cache): ./NAME-eval instead
    out = args.output or (f"{path.parent.name}-eval" if meta.get("published") else str(path.parent))
    jp, mp = write_eval(out, metrics, {"checkpoint": str(path), "images": images, "ann": ann,
                                       "num_images": len(ds), "backend": args.backend})
    print(open(mp).read())
    print(f"wrote {jp} and {mp}")
    return 0 if os.path.isfile(jp) else 1


def _predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from botnet.detection.predict import predict_images
    from botnet.engine.rebuild import load_model

    from botnet.cli.paths import check_input_images, check_output_dir
    from botnet.detection.predict import check_drawing_size

    check_output_dir(args.output, "--output")
    check_input_images(args.images, offer_skip=False)  # FIFOs, folders, 0-byte and non-image files
    check_drawing_size(args.images, args.scale)
    model, meta = load_model(args.checkpoint, device=args.device, task="detection")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = meta.get("class_names") or (meta.get("extra") or {}).get("class_names")
    if not names:
        names = ["__background__"] + [str(i) for i in range(1, model.detector_config["num_classes"])]
    recs = predict_images(model, args.images, names, args.output, score_threshold=args.score_threshold,
                          scale=args.scale)
    from botnet.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(os.path.join(args.output, "predictions.json"), json.dumps(recs, indent=1).encode())
    for r in recs:
        print(f"{r['image']}: {len(r['detections'])} detections -> {r['drawing']}")
    return 0
