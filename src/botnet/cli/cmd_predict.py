"""``botnet predict IMAGE...``: top-5 classes with names for image files."""
from __future__ import annotations

import argparse
import sys

from botnet.cli.argtypes import positive_int
from botnet.errors import UserInputError

HELP = """Classify image files with a checkpoint from `botnet train` / `botnet demo`.

Grayscale, RGB, RGBA (composited on white) and palette images are all accepted and converted to
the model's channel count. An unreadable file stops with its name, or is skipped with
--skip-bad (and counted). For the Fashion-MNIST model, images are resized to 28x28; that data
set shows light garments on a black background, so pass --invert for ordinary photos of dark
items on a white background.

Each image is classified as given (one view), as `botnet attention` does; --tta hflip averages its
probabilities with its mirror image's (what `botnet eval` measures for a run whose recipe sets
data.eval_tta: hflip). The last line says which."""


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="top-5 predictions for image files", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    p.add_argument("--checkpoint", "-k", required=True, metavar="CKPT",
                   help="RUN/best.safetensors, RUN/last.safetensors, a run directory, a published folder "
                        "(botnet publish) or hf-hub:ORG/NAME")
    p.add_argument("--topk", type=positive_int, default=5, help="how many classes to show per image (default 5)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights from the .state.safetensors beside the checkpoint")
    p.add_argument("--invert", action="store_true", help="invert grey levels first (photos of dark items on white)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files (counted in the summary)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the predictions as JSON")
    p.add_argument("--tta", default="none", choices=["none", "hflip"],
                   help="test-time augmentation: none classifies each image as given (one view, the default, as "
                        "botnet attention shows it); hflip averages its and its mirror image's probabilities")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=handler)


def views(tta: str) -> str:
    """How many views a prediction averaged, in words (predict and attention print it)."""
    return "each image averaged with its mirror image: --tta hflip" if tta == "hflip" else "one view: --tta none"


def handler(args) -> int:
    import json

    from botnet.data.errors import BadImageError
    from botnet.errors import CheckpointError
    from botnet.io.atomic import atomic_write_bytes
    from botnet.classification.predict import load_for_inference, predict_files

    from botnet.cli.paths import check_input_images, missing_image
    from botnet.io.folders import check_output_file

    check_output_file(args.json, "--json")
    check_input_images(args.images, args.skip_bad, missing_ok=True)  # before the model loads; bad ones are skipped below
    try:
        model, transform, names, meta = load_for_inference(args.checkpoint, use_ema=args.ema, device=args.device)
        tta = args.tta
        results, skipped = predict_files(model, transform, names, args.images, args.topk, args.skip_bad,
                                         args.invert, args.device, tta)
    except FileNotFoundError as e:
        raise missing_image(e) from None
    except (CheckpointError, BadImageError, ValueError) as e:
        raise UserInputError(' '.join(str(e).split())) from None
    for r in results:
        print(r["file"])
        for i, t in enumerate(r["top"], 1):
            print(f"  {i}. {t['class']:<20s} {100 * t['prob']:6.2f}%")
    for p, reason in skipped:
        print(f"skipped unreadable file {p}: {reason}", file=sys.stderr)
    print(f"{len(results)} image(s) classified" + (f", {len(skipped)} skipped" if skipped else "") + f" ({views(tta)})")
    if args.json:
        out = {"predictions": results, "skipped": skipped, "tta": tta}
        atomic_write_bytes(args.json, (json.dumps(out, indent=2) + "\n").encode())
    return 0
