"""``botnet data``: generate the fashion-mosaic detection set; check a COCO-format data set; write an image
folder or a COCO set as tar shards."""
from __future__ import annotations

import argparse
import json
import sys
from botnet.errors import UserInputError


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="data sets: generate fashion-mosaic, check COCO annotations, write tar shards")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    m = sub.add_parser(
        "fashion-mosaic",
        help="write the deterministic fashion-mosaic COCO-format instance-segmentation set",
        description="Place Fashion-MNIST items on canvases; write OUT/{train,val}/*.png and "
                    "OUT/instances_{train,val}.json (10 categories, boxes and RLE masks), and the marker "
                    "OUT/.botnet-generated.json. OUT must be new or empty; a set botnet generated there with the "
                    "same settings is reused, one with other settings is replaced only with --overwrite, and any "
                    "other folder is never written into.",
    )
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--num-train", type=int, default=512)
    m.add_argument("--num-val", type=int, default=128)
    m.add_argument("--canvas", type=int, default=160, help="square image size in pixels")
    m.add_argument("--min-items", type=int, default=2)
    m.add_argument("--max-items", type=int, default=5)
    m.add_argument("--min-item-size", type=int, default=28)
    m.add_argument("--max-item-size", type=int, default=72)
    m.add_argument("--max-overlap", type=float, default=0.2, help="max box IoU between items (0: no overlap)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--source", default=None, help="folder with the Fashion-MNIST IDX files")
    m.add_argument("--overwrite", action="store_true",
                   help="replace a set botnet generated in OUT (marked by OUT/.botnet-generated.json); nothing else is "
                        "ever replaced")
    m.set_defaults(func=_mosaic)

    c = sub.add_parser("check-coco", help="run the validation pass over a COCO instances file and print the counts",
                       description="Print the counts of kept records and of each problem, with examples. Exit code 0 "
                                   "when no record would be dropped (clipped boxes are reported, not errors), 2 when "
                                   "some would be (training drops them and trains on the rest, or stops with "
                                   "data.strict: true).")
    c.add_argument("ann", help="instances JSON")
    c.add_argument("--images", default=None, help="image folder (checks the files exist and their sizes)")
    c.add_argument("--masks", action="store_true", help="require a segmentation on every annotation")
    c.set_defaults(func=_check)
    _register_shards(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _register_shards(sub) -> None:
    from botnet.cli.argtypes import positive_int

    s = sub.add_parser(
        "shards", help="write an ImageNet-layout image folder or a COCO set as tar shards (webdataset format) with "
                       "an index",
        description="Write SRC/SPLIT/CLASS/*.jpg as OUT/SPLIT-000000.tar ... (webdataset samples: the image file's "
                    "bytes, its class index, its file name), the index OUT/_info.json (classes; per split the shard "
                    "names and sample counts; timm's wds/ reader reads it too) and the marker "
                    "OUT/.botnet-generated.json. Train from them with --dataset shards --data-dir OUT. A COCO set as "
                    "SRC (SRC/train/ + SRC/instances_train.json, or COCO 2017's train2017/ + "
                    "annotations/instances_train2017.json; val likewise) is written as detection shards: a sample is "
                    "the image file's bytes and its image and annotation records (validated first), the index holds "
                    "the categories, and OUT/instances_val.json keeps the val split's ground truth for COCO "
                    "evaluation; train from them with botnet detect train --dataset shards --data-dir OUT. OUT must "
                    "be new or empty, or hold shards botnet wrote (replaced only with --overwrite); it is written "
                    "beside OUT and swapped in, and nothing botnet did not write is ever replaced.",
    )
    s.add_argument("src", metavar="SRC", help="image folder with SRC/train/CLASS/*.jpg and SRC/val/CLASS/*.jpg, or "
                                              "a COCO set")
    s.add_argument("out", metavar="OUT", help="output folder for the shards")
    s.add_argument("--splits", default="train,val", help="comma list of split folders to write (default train,val)")
    s.add_argument("--max-count", type=positive_int, default=1000, help="images per shard at most (default 1000)")
    s.add_argument("--max-size-mb", type=positive_int, default=1024, help="MiB per shard at most (default 1024)")
    s.add_argument("--seed", type=int, default=0, help="seed of the shuffle of the training images across shards")
    s.add_argument("--skip-bad", action="store_true", help="leave unreadable image files (for a COCO set, the "
                                                           "records its validation pass drops) out, listed in the "
                                                           "summary")
    s.add_argument("--overwrite", action="store_true",
                   help="replace shards botnet wrote in OUT (marked by OUT/.botnet-generated.json); nothing else is "
                        "ever replaced")
    s.set_defaults(func=_shards)


def _mosaic(args: argparse.Namespace) -> int:
    from botnet.data.errors import DataError
    from botnet.data.mosaic import generate_fashion_mosaic

    try:
        summary = generate_fashion_mosaic(
            args.out, source=args.source, progress=True, overwrite=args.overwrite,
            num_train=args.num_train, num_val=args.num_val, canvas=args.canvas, min_items=args.min_items,
            max_items=args.max_items, min_item_size=args.min_item_size, max_item_size=args.max_item_size,
            max_overlap=args.max_overlap, seed=args.seed,
        )
    except (ValueError, FileNotFoundError, DataError) as e:
        raise UserInputError(' '.join(str(e).split())) from None
    print(json.dumps(summary, indent=1))
    return 0


def _check(args: argparse.Namespace) -> int:
    from botnet.data.coco import CocoFormatError, read_json_file, validate_coco

    data = read_json_file(args.ann)  # a file that is not a COCO file: CocoFormatError, one line, exit 2
    _, rep = validate_coco(data, args.images, require_masks=args.masks, check_files=args.images is not None,
                           check_image_sizes=args.images is not None, source=args.ann)
    print(rep.summary())
    if rep.num_errors:  # the report above has the examples; the error line says what it means
        raise CocoFormatError(f"{args.ann}: {rep.num_errors} problem(s) that drop records ({rep.errors_line()}); "
                              f"fix them, or train anyway: training drops those records (unless data.strict: true)")


def _shards(args: argparse.Namespace) -> int:
    from botnet.data.shards import write_shards

    splits = tuple(x.strip() for x in args.splits.split(",") if x.strip())
    summary = write_shards(args.src, args.out, splits=splits, max_count=args.max_count,
                           max_size=args.max_size_mb << 20, seed=args.seed, skip_bad=args.skip_bad,
                           overwrite=args.overwrite, progress=sys.stderr.isatty())
    detection = summary.get("task") == "detection"
    for name, sp in summary["splits"].items():
        anns = f", {sp['num_annotations']} annotations" if detection else ""
        extra = f"; ground truth {sp['instances']}" if sp.get("instances") else ""
        print(f"{name}: {sp['num_samples']} images{anns} in {len(sp['filenames'])} shard(s){extra}")
    for bad in summary["left_out"]:
        print(f"left out {bad['file']}: {bad['reason']}")
    what, cmd = ("categories", "botnet detect train") if detection else ("classes", "botnet train")
    print(f"wrote {summary['out']} ({len(summary['classes'])} {what}); train with: {cmd} --dataset shards "
          f"--data-dir {summary['out']} ...")
    return 0
