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
    p.add_argument("model", help="model name, e.g. botnet50, botnet_mini")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "export"))
    p.add_argument("--out", required=True, help="output file (.onnx, .ts/.pt, .pt2)")
    p.add_argument("--checkpoint", default=None,
                   help="weights: a botnet .safetensors checkpoint (its stored arch/model_kwargs are used) "
                        "or a .pt/.pth state dict")
    p.add_argument("--num-classes", type=positive_int, default=None, help="classifier size (default: checkpoint's or 1000)")
    p.add_argument("--in-chans", type=positive_int, default=None, help="input channels (default: checkpoint's or 3)")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="size to trace at (default: the model's resolution); other sizes still work")
    p.add_argument("--batch", type=positive_int, default=2, help="batch size to trace at (default 2; batch is dynamic)")
    p.add_argument("--min-size", type=positive_int, default=8, help="smallest height/width the dynamic dims allow")
    p.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    p.set_defaults(func=handler)


def _load_checkpoint(path: str) -> tuple[dict, dict]:
    """(state_dict, metadata) from a botnet checkpoint or a plain state-dict file (tensors only).

    Raises :class:`botnet.training.checkpoint.CheckpointError` (exit code 2) for a missing,
    corrupt or pickled file.
    """
    from pathlib import Path

    from botnet.training.checkpoint import _read_weights, read_metadata, resolve_checkpoint

    p = Path(path)
    if p.suffix in (".pt", ".pth", ".bin"):
        if not p.is_file():
            from botnet.training.checkpoint import CheckpointError

            raise CheckpointError(f"checkpoint file not found: {p}")
        return _read_weights(p), {}
    p = resolve_checkpoint(p)
    return _read_weights(p), read_metadata(p)


def handler(args: argparse.Namespace) -> int:
    import torch

    import botnet
    from botnet.export import export_model, verify

    kwargs: dict = {}
    state = None
    if args.checkpoint:
        state, meta = _load_checkpoint(args.checkpoint)
        mk = meta.get("model_kwargs") or {}
        arch = meta.get("arch")
        if isinstance(mk, dict) and (not arch or arch == args.model):
            kwargs.update(mk)  # every stored override (e.g. the demo's strides), not only the head and size
        if arch and arch != args.model and arch in botnet.list_models():
            print(f"note: checkpoint was made for {arch!r}, exporting {args.model!r}", file=sys.stderr)
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
    except Exception as e:
        print(f"error: cannot build {args.model!r}: {e}", file=sys.stderr)
        return 2
    if state is not None:
        from botnet.training.checkpoint import check_state_dict

        check_state_dict(model, state, args.checkpoint, arch=meta.get("arch"))  # one-line error, exit 2
        model.load_state_dict(state, strict=True)
    model.eval()
    path = export_model(model, args.format, args.out, img_size=args.img_size, batch=args.batch,
                        min_size=args.min_size)
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
