"""``botnet export``: ONNX / TorchScript / torch.export with dynamic batch, height and width."""
from __future__ import annotations

import argparse
import json
import sys

from botnet.cli.argtypes import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a torch.export program (dynamic sizes)",
        description=(
            "Export MODEL (a name from `botnet.list_models()`) with dynamic batch, height and width. "
            "onnx: dynamo exporter (needs onnxscript), input 'images', output 'logits'. "
            "torchscript: torch.jit.trace (runs at other sizes too). export: torch.export program (.pt2). "
            "With --verify (default on) the file is reloaded and compared with the eager model at the "
            "trace size and a second size."
        ),
    )
    p.add_argument("model", nargs="?", default=None,
                   help="model name, e.g. botnet50, botnet_mini (optional with a botnet checkpoint, which names its "
                        "architecture and every option it was trained with)")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "export"))
    p.add_argument("--output", "--out", dest="out", required=True,
                   help="output file (.onnx, .ts/.pt, .pt2); a new file, or an earlier botnet export with --overwrite "
                        "(a folder, a checkpoint or any other existing file is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier botnet export")
    p.add_argument("--checkpoint", default=None,
                   help="weights: a botnet checkpoint, run directory, published folder or hf-hub:ORG/NAME (the trained "
                        "model is rebuilt exactly from "
                        "its stored architecture and options) or a .pt/.pth state dict (needs MODEL)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="classifier size (default: checkpoint's or 1000)")
    p.add_argument("--in-chans", type=positive_int, default=None, help="input channels (default: checkpoint's or 3)")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="size to trace at (default: the model's resolution); other sizes still work")
    p.add_argument("--batch", type=positive_int, default=2, help="batch size to trace at (default 2; batch is dynamic)")
    p.add_argument("--min-size", type=positive_int, default=None,
                   help="smallest height/width the dynamic dims allow (default: the model's stride + 1, so its "
                        "last feature map is at least 2x2)")
    p.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    p.set_defaults(func=handler)


def _build(args: argparse.Namespace):
    """The model to export: rebuilt from a botnet checkpoint, or MODEL (+ a .pt/.pth state dict)."""
    from pathlib import Path

    from botnet.engine import checkpoint as ckpt
    from botnet.engine.rebuild import load_model
    from botnet.errors import ConfigError
    from botnet.models import create_model

    p = Path(args.checkpoint) if args.checkpoint else None
    if p is not None and p.suffix not in (".pt", ".pth", ".bin"):
        model, meta = load_model(p, task="classification")
        if args.model and args.model != meta["arch"]:
            raise ConfigError(f"{p} holds a {meta['arch']} model, not {args.model}; leave MODEL out to export it")
        if args.num_classes is not None or args.in_chans is not None:
            raise ConfigError("--num-classes / --in-chans do not apply to a botnet checkpoint (it stores both)")
        return model
    if not args.model:
        raise ConfigError("give MODEL (e.g. botnet50), or a botnet checkpoint with --checkpoint")
    state = ckpt.read_weights_file(p) if p is not None else None
    kwargs: dict = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.in_chans is not None:
        kwargs["in_chans"] = args.in_chans
    if state is not None and "fc.weight" in state and "num_classes" not in kwargs:
        kwargs["num_classes"] = state["fc.weight"].shape[0]
    if state is not None and "conv1.weight" in state and "in_chans" not in kwargs:
        kwargs["in_chans"] = state["conv1.weight"].shape[1]
    try:
        model = create_model(args.model, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {args.model!r}: {' '.join(str(e).split())}") from None
    if state is not None:
        ckpt.check_state_dict(model, state, p)  # one-line error naming the keys, exit 2
        model.load_state_dict(state, strict=True)
    return model


def handler(args: argparse.Namespace) -> int:
    import torch

    from botnet.export import check_out_path, export_model, verify

    check_out_path(args.out, args.format, overwrite=args.overwrite)  # before the model is built
    model = _build(args)
    model.eval()
    if args.img_size:
        from botnet.models.limits import check_input_size

        check_input_size(model, args.img_size, "--img-size")  # before tracing allocates anything
    from botnet.export import smallest_dynamic_size

    args.min_size = args.min_size or smallest_dynamic_size(model)
    path = export_model(model, args.format, args.out, img_size=args.img_size, batch=args.batch,
                        min_size=args.min_size, overwrite=args.overwrite)
    print(f"wrote {path} ({args.format}, dynamic batch/height/width)")
    if not args.no_verify:
        h = args.img_size or model.pretrained_cfg["img_size"][0]
        c = model.pretrained_cfg["input_size"][0]
        h2 = max(args.min_size, h + 32 if h >= 32 else h + 8)
        inputs = [torch.randn(args.batch, c, h, h), torch.randn(args.batch + 1, c, h2, h2 - 4)]
        errs = verify(model, args.format, path, inputs)
        for x, e in zip(inputs, errs):
            print(f"verify {tuple(x.shape)}: max |exported - eager| = {e:.3g}")
        if max(errs) > 1e-3:
            print("error: exported model differs from eager", file=sys.stderr)
            return 1
    return 0
