"""Export BoTNet models with dynamic batch, height and width: ONNX, TorchScript, torch.export.

- :func:`export_onnx`: the dynamo exporter (``torch.onnx.export(..., dynamo=True,
  dynamic_shapes=...)``, needs ``onnxscript``); input ``images`` (batch, C, height, width) and
  output ``logits`` with symbolic batch/height/width.
- :func:`export_torchscript`: ``torch.jit.trace``. RelPosMHSA takes its table-resize path whenever
  it is traced, and the tracer records the shape arithmetic, so the traced graph runs at other
  batch sizes and image sizes too (checked by the tests at two sizes).
- :func:`export_program`: ``torch.export.export`` with dynamic dims, saved as ``.pt2``.

Every function puts the model in eval mode and returns the path written. :func:`verify` runs the
exported artifact next to the eager model at given input sizes and returns the max abs errors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

__all__ = ["FORMATS", "export_model", "export_onnx", "export_torchscript", "export_program",
           "load_exported", "run_exported", "verify", "dynamic_shapes"]

FORMATS = ("onnx", "torchscript", "export")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "export": ".pt2"}


def dynamic_shapes(min_size: int = 8, max_size: int = 4096, max_batch: int = 1024) -> dict:
    """torch.export dims for the single image argument ``x``: batch, height, width."""
    from torch.export import Dim

    return {"x": {0: Dim("batch", min=1, max=max_batch), 2: Dim("height", min=min_size, max=max_size),
                  3: Dim("width", min=min_size, max=max_size)}}


def _example(model: nn.Module, img_size: int | Sequence[int] | None, batch: int) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    in_chans = cfg.get("input_size", (3,))[0]
    if img_size is None:
        img_size = cfg.get("img_size", 224)
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return torch.randn(batch, in_chans, h, w)


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, *, min_size: int = 8,
                opset: int | None = None) -> Path:
    path = Path(path)
    model = model.eval()
    kw = {} if opset is None else {"opset_version": opset}
    prog = torch.onnx.export(
        model, (example,), dynamo=True, dynamic_shapes=dynamic_shapes(min_size),
        input_names=["images"], output_names=["logits"], verbose=False, **kw,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    prog.save(str(path))
    return path


def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    path = Path(path)
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def export_program(model: nn.Module, path: str | Path, example: torch.Tensor, *, min_size: int = 8) -> Path:
    path = Path(path)
    model = model.eval()
    ep = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes(min_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, str(path))
    return path


def smallest_dynamic_size(model: nn.Module) -> int:
    """Smallest height/width the dynamic dims may take: the last feature map at least 2 x 2 (a dim
    of size 1 is specialised by torch.export, so 1x1 maps cannot share the program)."""
    info = getattr(model, "feature_info", None)
    try:
        stride = int(info[-1]["reduction"]) if info else 32
    except (TypeError, KeyError, IndexError):
        stride = 32
    return stride + 1


def export_model(model: nn.Module, fmt: str, path: str | Path, *, img_size=None, batch: int = 2,
                 min_size: int | None = None) -> Path:
    """Export ``model`` in ``fmt`` (onnx, torchscript, export), tracing at ``img_size``; dynamic sizes
    from ``min_size`` (default: :func:`smallest_dynamic_size`) up."""
    min_size = min_size or smallest_dynamic_size(model)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    example = _example(model, img_size, batch)
    if fmt == "onnx":
        return export_onnx(model, path, example, min_size=min_size)
    if fmt == "torchscript":
        return export_torchscript(model, path, example)
    return export_program(model, path, example, min_size=min_size)


def load_exported(fmt: str, path: str | Path):
    """A callable ``f(x: Tensor) -> Tensor`` running the exported artifact."""
    path = str(path)
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])

        return run
    if fmt == "torchscript":
        mod = torch.jit.load(path)
        return lambda x: mod(x)
    if fmt == "export":
        mod = torch.export.load(path).module()
        return lambda x: mod(x)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def run_exported(fmt: str, path: str | Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_exported(fmt, path)(x)


def verify(model: nn.Module, fmt: str, path: str | Path, inputs: Sequence[torch.Tensor]) -> list[float]:
    """Max |exported - eager| for each input (the model is put in eval mode)."""
    model = model.eval()
    f = load_exported(fmt, path)
    errs = []
    with torch.no_grad():
        for x in inputs:
            errs.append(float((f(x) - model(x)).abs().max()))
    return errs
