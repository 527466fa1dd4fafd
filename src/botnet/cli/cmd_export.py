"""``botnet export``: ONNX / TorchScript / torch.export with dynamic batch, height and width."""
from __future__ import annotations

import argparse
import json
import sys


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
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: checkpoint's or 1000)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: checkpoint's or 3)")
    p.add_argument("--img-size", type=int, default=None,
                   help="size to trace at (default: the model's resolution); other sizes still work")
    p.add_argument("--batch", type=int, default=2, help="batch size to trace at (default 2; batch is dynamic)")
    p.add_argument("--min-size", type=int, default=8, help="smallest height/width the dynamic dims allow")
    p.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    p.set_defaults(func=handler)


def _load_checkpoint(path: str) -> tuple[dict, dict]:
    """(state_dict, metadata) from a botnet checkpoint or a plain state-dict file."""
    import torch

    try:
        from botnet.training.checkpoint import _read_weights, read_metadata, resolve_checkpoint

        from pathlib import Path

        p = Path(path)
        if p.suffix in (".pt", ".pth", ".bin"):
            return _read_weights(p), {}
        p = resolve_checkpoint(p)
        return _read_weights(p), read_metadata(p)
    except ImportError:
        pass
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        if "model_kwargs" in meta:
            meta["model_kwargs"] = json.loads(meta["model_kwargs"])
        return load_file(path), meta
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}, {}


def handler(args: argparse.Namespace) -> int:
    import torch

    import botnet
    from botnet.export import export_model, verify

    kwargs: dict = {}
    state = None
    if args.checkpoint:
        state, meta = _load_checkpoint(args.checkpoint)
        mk = meta.get("model_kwargs") or {}
        if isinstance(mk, dict):
            kwargs.update({k: v for k, v in mk.items() if k in ("num_classes", "in_chans", "img_size")})
        arch = meta.get("arch")
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
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            print(f"error: checkpoint {args.checkpoint} does not fit {args.model}: {e}", file=sys.stderr)
            return 2
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
