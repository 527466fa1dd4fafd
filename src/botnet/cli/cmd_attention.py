"""``botnet attention IMAGE --checkpoint CKPT``: where each head of each BoT block looks."""
from __future__ import annotations

import argparse
from botnet.errors import UserInputError

HELP = """Draw, for one query position, the attention weights of every head of every BoT block
(RelPosMHSA.attention_probs on the layer inputs captured with forward hooks). One row per BoT
block: the image with the query marked, then one heat map per head over the image. The maps are
of the image as given; the predicted class in the title is too (one view), as in `botnet predict`,
unless --tta hflip averages it with the mirror image's (the title says which)."""


def _frac(s: str) -> float:
    v = float(s)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError("must be a fraction in [0, 1)")
    return v


def register(subparsers) -> None:
    p = subparsers.add_parser("attention", help="attention maps of the BoT blocks for one image", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    p.add_argument("--checkpoint", "-k", required=True, metavar="CKPT", help="checkpoint file, run directory, published folder or hf-hub:ORG/NAME")
    p.add_argument("--query", nargs=2, type=_frac, default=(0.5, 0.5), metavar=("Y", "X"),
                   help="query position as fractions of image height and width (default 0.5 0.5, the centre)")
    p.add_argument("--output", "--out", "-o", dest="out", default="attention", help="output folder for the PNGs (default ./attention)")
    p.add_argument("--invert", action="store_true", help="invert grey levels first (as in botnet predict)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights")
    p.add_argument("--tta", default="none", choices=["none", "hflip"],
                   help="views behind the predicted class in the title: none (the image as given, the default, as "
                        "botnet predict) or hflip (averaged with its mirror image); the maps show the image as given")
    p.set_defaults(func=handler)


def handler(args) -> int:
    from pathlib import Path

    import numpy as np

    from botnet.data.errors import BadImageError
    from botnet.viz.attention import attention_maps, plot_attention
    from botnet.errors import CheckpointError
    from botnet.classification.predict import load_for_inference, load_image
    from botnet.classification.task import log_probs
    from botnet.cli.cmd_predict import views

    from botnet.cli.paths import check_input_images, missing_image
    from botnet.io.folders import check_output_dir

    check_output_dir(args.out, "--output")
    check_input_images(args.images, offer_skip=False, missing_ok=True)  # before the model loads
    try:
        model, transform, names, meta = load_for_inference(args.checkpoint, use_ema=args.ema)
        in_chans = model.conv1.in_channels
        import torch

        with torch.no_grad():  # scoped, so callers (tests, notebooks) keep their grad mode
            for p in args.images:
                img = load_image(p, in_chans, args.invert)
                x = transform(img).unsqueeze(0)
                pred = log_probs(model, x, args.tta).exp()[0]
                maps = attention_maps(model, x, tuple(args.query))
                disp = np.asarray(img.resize((x.shape[-1], x.shape[-2])), dtype=np.float32) / 255.0
                out = Path(args.out) / f"{Path(p).stem}_attention.png"
                c = int(pred.argmax())
                plot_attention(disp, maps, out, tuple(args.query),
                               title=f"{Path(p).name}: predicted {names[c]} ({100 * float(pred[c]):.1f}%, "
                                     f"{views(args.tta).split(':')[0]}), query at y={args.query[0]:.2f}, "
                                     f"x={args.query[1]:.2f}")
                print(f"{out}: predicted {names[c]} {100 * float(pred[c]):.2f}% ({views(args.tta)})")
    except FileNotFoundError as e:
        raise missing_image(e, offer_skip=False) from None
    except (CheckpointError, BadImageError, ValueError) as e:
        raise UserInputError(' '.join(str(e).split())) from None
    return 0
