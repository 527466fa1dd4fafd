"""``botnet publish RUN_DIR OUT_DIR``: a trained model as a timm / Hugging Face folder with a model card."""
from __future__ import annotations

import argparse

HELP = """Write OUT_DIR/config.json, model.safetensors and README.md (a model card) from a run directory
of `botnet train` or `botnet detect train`.

A classifier's folder loads with timm.create_model("local-dir:OUT_DIR", pretrained=True) (or
"hf-hub:ORG/NAME" once uploaded, e.g. with `huggingface-cli upload ORG/NAME OUT_DIR`) and with
botnet.create_model(NAME, pretrained="OUT_DIR"); a detector's with botnet.hub.load_detector("OUT_DIR").
Every botnet command that takes a run directory (predict, eval, attention, export, detect predict|eval)
takes the folder too, and --init-weights / model.backbone_weights start new training from it.
The folder is written beside OUT_DIR and swapped into place when complete. --force replaces only an
earlier publish (a folder holding just these three files, written by botnet publish); any other
non-empty folder, the run itself or a folder holding it is refused. See docs/sharing.md."""


def register(subparsers) -> None:
    p = subparsers.add_parser("publish", help="a run as a timm / Hugging Face model folder with a model card",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (holds best/last.safetensors)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must be new or empty, unless --force)")
    p.add_argument("--weights", default="best", choices=["best", "last", "ema"],
                   help="best.safetensors (default; last if there is none), last.safetensors, or the EMA weights")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds an earlier botnet publish (nothing else is ever replaced)")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="classification: skip re-measuring accuracy (and per-class accuracy) on the run's data")
    p.add_argument("--hardware", default=None, metavar="TEXT",
                   help="the training machine, for the card (default: this machine, said to be the publisher)")
    p.set_defaults(func=handler)


def handler(args) -> int:
    import json

    from botnet.hub.publish import publish_run

    out = publish_run(args.run_dir, args.out_dir, weights=args.weights, force=args.force, evaluate=args.evaluate,
                      hardware=args.hardware)
    for name in ("config.json", "model.safetensors", "README.md"):
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)")
    task = json.loads((out / "config.json").read_text())["botnet"]["task"]
    how = (f'timm.create_model("local-dir:{out}", pretrained=True)' if task == "classification"
           else f'botnet.hub.load_detector("{out}")')
    print(f"load it: {how}, or pass {out} to the botnet commands that take a run directory")
    return 0
