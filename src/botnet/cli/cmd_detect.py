"""``botnet detect train|eval|predict|demo``: Mask R-CNN / Faster R-CNN with a BoTNet-FPN backbone."""
from __future__ import annotations

import argparse
import json
import sys

from botnet.cli.argtypes import positive_int, unit_float
from botnet.errors import ConfigError

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
                   help="folder for eval.json, eval.md and coco_results.json (default: the run directory; "
                        "./NAME-eval for a published folder)")
    e.add_argument("--backend", default="pycocotools", choices=["pycocotools", "faster_coco_eval"])
    e.add_argument("--batch-size", type=positive_int, default=2)
    e.add_argument("--strict", action="store_true", help="fail on any bad annotation record")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--threads", type=positive_int, default=None)
    e.set_defaults(func=_eval)

    r = sub.add_parser("predict", help="detect on images: drawings (PNG), predictions.json, coco_results.json",
                       description="Run a detector on image files, or on the images of a COCO instances file "
                                   "(--images DIR --ann FILE: its image ids and category ids, and its ground truth "
                                   "drawn beside the predictions). Writes one PNG per image, predictions.json "
                                   "(per image: file, image_id, detections with score >= --score-threshold) and "
                                   "coco_results.json (every detection, in COCO results format). See "
                                   "docs/detection.md.")
    r.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint file, run directory, published folder or hf-hub:ORG/NAME (or --checkpoint)")
    r.add_argument("files", nargs="*", metavar="IMAGE",
                   help="image files (image_id 1, 2, ... in this order; with --ann, images of that file)")
    r.add_argument("--checkpoint", dest="checkpoint_opt", metavar="CHECKPOINT", default=None,
                   help="the checkpoint as botnet predict takes it (then every positional argument is an image)")
    r.add_argument("--images", dest="image_dir", metavar="DIR", default=None, help="image folder of --ann")
    r.add_argument("--ann", metavar="FILE", default=None,
                   help="COCO instances JSON: image_id and category_id from it, ground truth drawn beside; without "
                        "IMAGE arguments every image it lists")
    r.add_argument("--output", "--out", dest="output", default="predictions",
                   help="output folder (PNGs, predictions.json, coco_results.json)")
    r.add_argument("--score-threshold", type=unit_float, default=0.5,
                   help="lowest score drawn and listed in predictions.json (coco_results.json keeps all)")
    r.add_argument("--scale", type=positive_int, default=None,
                   help="upscale factor of the drawings (default: enough for a long side of 512 px)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--threads", type=positive_int, default=None)
    r.set_defaults(func=_predict, trailing_positionals="files")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _train(args: argparse.Namespace) -> int:
    from botnet.cli.cmd_train import prepare, run_training

    cfg = prepare(args)  # no --config: the schema's defaults (see --print-config)
    if cfg is None:
        return 0
    rc, summary = run_training(args, cfg)
    if rc == 0 and summary and summary.get("metrics"):
        print(f"wrote {summary['run_dir']}/eval.json, eval.md, coco_results.json, predictions/")
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

    from botnet.detection.evaluate import RESULTS_NAME, evaluate_detector, write_eval, write_results
    from botnet.io.weights import resolve_checkpoint
    from botnet.engine.rebuild import load_model
    from botnet.io.folders import check_output_dir

    if args.output is not None:
        check_output_dir(args.output, "--output")
    path = resolve_checkpoint(args.checkpoint)
    model, meta = load_model(path, device=args.device, task="detection")
    if args.threads:
        torch.set_num_threads(args.threads)
    images, ann = args.images, args.ann
    cfg = meta.get("config") or {}
    if not (images or ann) and (cfg.get("data") or {}).get("dataset") == "shards":
        ds, images, ann = _shard_val_set(model, cfg, args.strict)  # the val shards and their instances_val.json
    else:
        if not (images and ann):
            if not cfg:
                raise ConfigError("the checkpoint has no stored config; pass --images and --ann")
            from botnet.detection.task import data_paths

            paths = data_paths(cfg, generate=False)
            images, ann = images or paths["val_images"], ann or paths["val_ann"]
        ds = _annotated_set(model, meta, images, ann, strict=args.strict)
    print(ds.report.summary())
    if ds.report.num_annotations == 0:
        raise ConfigError(f"{ann} has no (usable) annotations, so there is nothing to measure AP against; evaluate "
                          f"on an annotated split")
    metrics, results = evaluate_detector(model, ds, batch_size=args.batch_size, backend=args.backend,
                                         return_results=True)
    # a published folder is not written into (it may be a read-only Hub cache): ./NAME-eval instead
    out = args.output or (f"{path.parent.name}-eval" if meta.get("published") else str(path.parent))
    rp = write_results(out, results)
    jp, mp = write_eval(out, metrics, {"checkpoint": str(path), "images": images, "ann": ann,
                                       "num_images": len(ds), "backend": args.backend, "results": RESULTS_NAME})
    print(open(mp).read())
    print(f"wrote {jp}, {mp} and {rp} (COCO results, {len(results)} detections)")
    return 0 if os.path.isfile(jp) else 1


def _shard_val_set(model, cfg: dict, strict: bool):
    """The val split of the detection shards a run trained on: ``(data set, shards folder, its instances file)``."""
    from botnet.data.coco_shards import CocoShardVal, instances_name, read_detection_index
    from botnet.data.errors import DataError
    from botnet.detection.transforms import build_transforms

    index = read_detection_index(cfg["data"]["root"])
    if "val" not in index.splits:
        raise DataError(f"the shards in {index.root} have no val split; pass --images DIR --ann FILE")
    ds = CocoShardVal(index, "val", with_masks=model.detector_config["kind"] == "maskrcnn", strict=strict,
                      transforms=build_transforms(False))
    return ds, str(index.root), str(index.root / instances_name("val"))


def _annotated_set(model, meta: dict, images: str, ann: str, *, strict: bool = False):
    """The COCO set that ``detect eval`` / ``detect predict --ann`` score against (untransformed images:
    both feed the detector the same tensors), with a warning when its categories are not the training ones."""
    from botnet.data.coco import CocoDetection
    from botnet.detection.transforms import build_transforms

    ds = CocoDetection(images, ann, with_masks=model.detector_config["kind"] == "maskrcnn", strict=strict,
                       transforms=build_transforms(False))
    train_names = (meta.get("extra") or {}).get("class_names") or meta.get("class_names")
    if train_names and train_names != ds.class_names:
        print(f"warning: evaluation categories {ds.class_names[1:]} differ from the training ones {train_names[1:]}",
              file=sys.stderr)
    return ds


def _predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from botnet.cli.paths import check_input_images
    from botnet.detection.evaluate import write_results
    from botnet.detection.predict import annotated_items, check_drawing_size, label_to_category, predict_images
    from botnet.io.atomic import atomic_write_bytes
    from botnet.engine.rebuild import load_model
    from botnet.errors import ConfigError
    from botnet.io.folders import check_output_dir

    if args.checkpoint_opt is not None:  # `detect predict IMAGE... --checkpoint C`, as `botnet predict` takes it
        args.files = ([args.checkpoint] if args.checkpoint is not None else []) + args.files
        args.checkpoint = args.checkpoint_opt
    if args.checkpoint is None:
        raise ConfigError("give the checkpoint: botnet detect predict CHECKPOINT IMAGE ..., or --checkpoint CHECKPOINT")
    check_output_dir(args.output, "--output")
    if bool(args.ann) != bool(args.image_dir):
        raise ConfigError("--ann and --images go together (the instances JSON and its image folder)")
    if not args.files and not args.ann:
        raise ConfigError("give image files, or --images DIR --ann FILE for the images of a COCO instances file")
    check_input_images(args.files, offer_skip=False)  # FIFOs, folders, 0-byte and non-image files
    check_drawing_size(args.files, args.scale, panels=2 if args.ann else 1)
    model, meta = load_model(args.checkpoint, device=args.device, task="detection")
    if args.threads:
        torch.set_num_threads(args.threads)
    num_classes = model.detector_config["num_classes"]
    names = meta.get("class_names") or (meta.get("extra") or {}).get("class_names")
    if not names:
        names = ["__background__"] + [str(i) for i in range(1, num_classes)]
    if args.ann:
        ds = _annotated_set(model, meta, args.image_dir, args.ann)
        items = annotated_items(ds, args.files or None)
        check_drawing_size([p for p, _, _ in items], args.scale, panels=2)
        mapping, gt_names = ds.label_to_cat_id, ds.class_names
    else:
        items, mapping, gt_names = list(args.files), label_to_category(meta, num_classes), None
    recs, results = predict_images(model, items, names, args.output, score_threshold=args.score_threshold,
                                   scale=args.scale, label_to_cat_id=mapping, target_names=gt_names)
    atomic_write_bytes(os.path.join(args.output, "predictions.json"), json.dumps(recs, indent=1).encode())
    rp = write_results(args.output, results)
    for r in recs:
        print(f"{r['image']} (image_id {r['image_id']}): {len(r['detections'])} detections -> {r['drawing']}")
    print(f"wrote {os.path.join(args.output, 'predictions.json')} and {rp} (COCO results, {len(results)} detections)")
    return 0
