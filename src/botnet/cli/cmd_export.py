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
            "ONNX attention: each BoT attention layer becomes a Scan over blocks of 512 queries (standard "
            "ops, opset >= 15; checked with onnxruntime 1.32), so ONNX Runtime's memory stays linear in "
            "the number of tokens; --onnx-attention sdpa keeps the exporter's translation instead. "
            "Unless --no-verify, the file is reloaded and compared with the eager model at the trace size, "
            "a second size and a size whose attention grid is not square."
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
    p.add_argument("--onnx-attention", choices=("scan", "sdpa"), default="scan",
                   help="ONNX only: scan (default) = a Scan over query blocks, memory-linear in ONNX Runtime; "
                        "sdpa = the exporter's own translation of scaled_dot_product_attention: MatMul/Softmax/"
                        "MatMul below opset 23, the ONNX Attention op from --opset 23 (needs onnxruntime >= "
                        "1.23); ONNX Runtime 1.32's CPU kernels hold the N x N logits for both")
    p.add_argument("--opset", type=positive_int, default=None,
                   help="ONNX only: opset version, 18 to 23 (default: the exporter's, 20 with torch 2.14)")
    p.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    p.set_defaults(func=handler)


def _build(args: argparse.Namespace):
    """The model to export: rebuilt from a botnet checkpoint, or MODEL (+ a .pt/.pth state dict)."""
    from pathlib import Path

    import botnet
    from botnet.engine import checkpoint as ckpt
    from botnet.engine.rebuild import load_model
    from botnet.errors import ConfigError

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
        model = botnet.create_model(args.model, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {args.model!r}: {' '.join(str(e).split())}") from None
    if state is not None:
        ckpt.check_state_dict(model, state, p)  # one-line error naming the keys, exit 2
        model.load_state_dict(state, strict=True)
    return model


def _check_onnx_options(args: argparse.Namespace) -> None:
    from botnet.errors import ConfigError

    onnx_only = [f for f, v in (("--opset", args.opset), ("--onnx-attention", args.onnx_attention != "scan")) if v]
    if args.format != "onnx" and onnx_only:
        raise ConfigError(f"{onnx_only[0]} applies to --format onnx only")
    if args.opset is not None and not 18 <= args.opset <= 23:
        raise ConfigError(f"--opset {args.opset}: the exporter writes opsets 18 to 23; choose one of them")


def handler(args: argparse.Namespace) -> int:
    from botnet.export import check_out_path, export_model, verify, verify_inputs

    check_out_path(args.out, args.format, overwrite=args.overwrite)  # before the model is built
    _check_onnx_options(args)
    model = _build(args)
    model.eval()
    if args.img_size:
        from botnet.models.limits import check_input_size

        check_input_size(model, args.img_size, "--img-size")  # before tracing allocates anything
    from botnet.export import smallest_dynamic_size

    args.min_size = args.min_size or smallest_dynamic_size(model)
    path = export_model(model, args.format, args.out, img_size=args.img_size, batch=args.batch,
                        min_size=args.min_size, overwrite=args.overwrite, opset=args.opset,
                        onnx_attention=args.onnx_attention)
    print(f"wrote {path} ({args.format}, dynamic batch/height/width)")
    if not args.no_verify:
        inputs = verify_inputs(model, img_size=args.img_size, batch=args.batch, min_size=args.min_size)
        errs = verify(model, args.format, path, inputs)
        for x, e in zip(inputs, errs):
            print(f"verify {tuple(x.shape)}: max |exported - eager| = {e:.3g}")
        if max(errs) > 1e-3:
            print("error: exported model differs from eager", file=sys.stderr)
            return 1
    return 0
