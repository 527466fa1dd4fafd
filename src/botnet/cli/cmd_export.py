"""``botnet export``: ONNX / TorchScript / torch.export with dynamic batch, height and width."""
from __future__ import annotations

import argparse
import sys

from botnet.cli.argtypes import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a torch.export program (dynamic sizes)",
        description=(
            "Export MODEL (a name from `botnet.list_models()`) with dynamic batch, height and width. "
            "onnx: dynamo exporter (needs onnxscript), input 'images', output 'logits'. "
            "torchscript: torch.jit.trace (runs at other sizes too; torch marks TorchScript deprecated, and "
            "export is its successor). export: torch.export program (.pt2). "
            "ONNX attention: each BoT attention layer becomes a Scan over blocks of 512 queries (standard "
            "ops, opset >= 15; checked with onnxruntime 1.32), so ONNX Runtime's memory stays linear in "
            "the number of tokens; --onnx-attention sdpa keeps the exporter's translation instead. "
            "Unless --no-verify, the file is reloaded and compared with the eager model at the trace size, "
            "a second size and a size whose attention grid is not square. A detection checkpoint (Mask/Faster R-CNN) exports to "
            "onnx or export: one image (3, H, W) of any size in, boxes, labels, scores (and masks) out; see "
            "docs/export.md."
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
    p.add_argument("--batch", type=positive_int, default=None,
                   help="batch size to trace at (default 2; batch is dynamic; a detector takes one image)")
    p.add_argument("--min-size", type=positive_int, default=None,
                   help="smallest height/width the dynamic dims allow (default: the model's stride + 1, so its "
                        "last feature map is at least 2x2; a detector: 2)")
    p.add_argument("--onnx-attention", choices=("scan", "sdpa"), default="scan",
                   help="ONNX only: scan (default) = a Scan over query blocks, memory-linear in ONNX Runtime; "
                        "sdpa = the exporter's own translation of scaled_dot_product_attention: MatMul/Softmax/"
                        "MatMul below opset 23, the ONNX Attention op from --opset 23 (needs onnxruntime >= "
                        "1.23); ONNX Runtime 1.32's CPU kernels hold the N x N logits for both")
    p.add_argument("--opset", type=positive_int, default=None,
                   help="ONNX only: opset version, 18 to 23 (default: the exporter's, 20 with torch 2.14)")
    p.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    p.add_argument("--verify-image", default=None, metavar="IMG",
                   help="detectors: check on this image and on it transposed and cropped (default: random images, "
                        "in which a trained detector may find nothing to compare)")
    p.set_defaults(func=handler)


def _build(args: argparse.Namespace):
    """The model to export: rebuilt from a botnet checkpoint, or MODEL (+ a .pt/.pth state dict)."""
    from pathlib import Path

    from botnet.engine.rebuild import load_model
    from botnet.errors import ConfigError
    from botnet.io.weights import TORCH_SUFFIXES, check_state_dict, read_weights_file
    from botnet.models import create_model

    p = Path(args.checkpoint) if args.checkpoint else None
    if p is not None and p.suffix not in TORCH_SUFFIXES:
        model, meta = load_model(p)  # a classifier, or a detector (exported by _export_detector)
        if args.model and args.model != meta["arch"]:
            raise ConfigError(f"{p} holds a {meta['arch']} model, not {args.model}; leave MODEL out to export it")
        if args.num_classes is not None or args.in_chans is not None:
            raise ConfigError("--num-classes / --in-chans do not apply to a botnet checkpoint (it stores both)")
        return model
    if not args.model:
        raise ConfigError("give MODEL (e.g. botnet50), or a botnet checkpoint with --checkpoint")
    state = read_weights_file(p) if p is not None else None
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
        check_state_dict(model, state, p)  # one-line error naming the keys, exit 2
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
    if args.verify_image is not None:  # a look at its header, before the model is built
        import os

        from botnet.data.errors import DataError
        from botnet.data.folder import check_image_header

        why = check_image_header(args.verify_image) if os.path.exists(args.verify_image) else "no such file"
        if why is not None:
            raise DataError(f"--verify-image {args.verify_image}: {why}; give an image file")
    _check_onnx_options(args)
    model = _build(args)
    model.eval()
    from botnet.export.detection import is_detector

    if is_detector(model):
        return _export_detector(args, model)
    if args.verify_image is not None:
        from botnet.errors import ConfigError

        raise ConfigError("--verify-image applies to detectors; a classifier is checked on random inputs")
    args.batch = args.batch or 2
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


def _export_detector(args: argparse.Namespace, model) -> int:
    """A Mask/Faster R-CNN checkpoint: one image of any size in, detections out (onnx or export)."""
    from botnet.errors import ConfigError
    from botnet.export import detection as det

    if args.format not in det.FORMATS:
        raise ConfigError(f"--format {args.format}: a detector exports to {' or '.join(det.FORMATS)}")
    if args.batch is not None:
        raise ConfigError("--batch does not apply to a detector: its exported program takes one image (3, H, W)")
    if args.no_verify and args.verify_image is not None:
        raise ConfigError("--verify-image and --no-verify contradict each other; drop one")
    det.check_exportable(model, f"--checkpoint {args.checkpoint}")
    if args.img_size and args.img_size * 5 // 4 > det.MAX_SIDE:
        raise ConfigError(f"--img-size {args.img_size} is too large for a detector export (at most "
                          f"{det.MAX_SIDE * 4 // 5}); lower it")
    min_size = args.min_size or 2
    smallest = min(min(hw) for hw in det.verify_sizes(model, args.img_size))  # also below the trace size
    if min_size > smallest:
        raise ConfigError(f"--min-size {min_size} is above the sizes the detector is traced and checked at (the "
                          f"smallest side is {smallest} px); lower it, or raise --img-size")
    images = None if args.no_verify else det.verify_images(model, args.img_size, args.verify_image, min_size=min_size)
    example = (args.img_size, args.img_size) if args.img_size else None
    path = det.export_detector(model, args.format, args.out, example_size=example, min_size=min_size,
                               overwrite=args.overwrite)
    names = det.DetectorProgram(model).output_names
    print(f"wrote {path} ({args.format}, detector: one image (3, H, W), dynamic height/width; outputs "
          f"{', '.join(names)})")
    if images is None:
        return 0
    checks = det.verify_detector(model, args.format, path, images)
    for c in checks:
        h, w = c.size
        if c.eager == c.exported == 0:
            print(f"verify {h}x{w}: no detections, eager or exported"
                  + ("" if args.verify_image else " (random image; --verify-image IMG compares real detections)"))
            continue
        counts = [f"{c.paired} paired"] + [f"{n} {what}" for n, what in (
            (c.near_cut, "near-ties at the score cut-off"), (c.unpaired, "UNPAIRED")) if n]
        masks = "" if "masks" not in names else f", masks {c.mask_err:.3g}" + (
            f" ({c.masks_skipped} pasted a pixel apart, not compared)" if c.masks_skipped else "")
        print(f"verify {h}x{w}: {c.eager} eager / {c.exported} exported detections, {', '.join(counts)}; "
              f"max |exported - eager|: boxes {c.box_err:.3g} px, scores {c.score_err:.3g}{masks}")
    if not all(c.ok() for c in checks):
        print("error: exported detector differs from eager", file=sys.stderr)
        return 1
    return 0
