"""Export BoTNet models with dynamic batch, height and width: ONNX, TorchScript, torch.export.

- :func:`export_onnx`: the dynamo exporter (``torch.onnx.export(..., dynamo=True,
  dynamic_shapes=...)``, needs ``onnxscript``); input ``images`` (batch, C, height, width) and
  output ``logits`` with symbolic batch/height/width. Each RelPosMHSA becomes a Scan over query
  blocks (:mod:`botnet.export.onnx_attention`), so ONNX Runtime never holds the N x N logits.
- :func:`export_torchscript`: ``torch.jit.trace``. RelPosMHSA takes its table-resize path whenever
  it is traced, and the tracer records the shape arithmetic, so the traced graph runs at other
  batch sizes and image sizes too (checked by the tests at two sizes).
- :func:`export_program`: ``torch.export.export`` with dynamic dims, saved as ``.pt2``.

Every function puts the model in eval mode and returns the path written. :func:`verify` runs the
exported artifact next to the eager model at given input sizes and returns the max abs errors.

Every file written carries a marker naming botnet export (ONNX: ``metadata_props["botnet.export"]``;
TorchScript and ``.pt2``: the extra file ``extra/botnet-export.json`` in the zip archive). The path
is checked first (:func:`check_out_path`): a folder, a checkpoint or any file without that marker is
refused, and an earlier export is replaced only with ``overwrite=True``. Files are written to a
temporary name beside the target and renamed into place, so a failed export leaves the old file.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from botnet.errors import ConfigError
from botnet.io.atomic import fault_point, make_shareable, unlink_quiet
from botnet.io.temp_beside import TempBeside, remove_abandoned

__all__ = ["FORMATS", "ONNX_ATTENTION", "export_model", "export_onnx", "export_torchscript", "export_program",
           "load_exported", "run_exported", "verify", "verify_inputs", "dynamic_shapes", "check_out_path", "read_export_marker"]

FORMATS = ("onnx", "torchscript", "export")
ONNX_ATTENTION = ("scan", "sdpa")  # how export_onnx writes RelPosMHSA
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "export": ".pt2"}
MARKER_FILE = "botnet-export.json"  # TorchScript / torch.export extra file (stored as ARCHIVE/extra/NAME)
ONNX_KEY = "botnet.export"           # ONNX model metadata_props key
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_MAX_MARKER = 1 << 16


def _marker_text(fmt: str) -> str:
    from botnet import __version__

    return json.dumps({"producer": "botnet export", "format": fmt, "botnet_version": __version__})


def _parse_marker(raw: bytes | str) -> dict[str, Any] | None:
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return m if isinstance(m, dict) and m.get("producer") == "botnet export" else None


def _varint(f) -> int | None:
    shift, out = 0, 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            return None
        out |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return out
        shift += 7
    return None


def _onnx_marker(path: Path) -> dict[str, Any] | None:
    """The marker in an ONNX file's metadata_props (ModelProto field 14), found by stepping over the
    top-level protobuf fields without reading the graph: bounded memory for any file."""
    import onnx

    size = path.stat().st_size
    with open(path, "rb") as f:
        for _ in range(100_000):
            tag = _varint(f)
            if tag is None:
                return None
            field, wire = tag >> 3, tag & 7
            if wire == 0 and _varint(f) is not None:
                continue
            if wire in (1, 5):
                f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                continue
            n = _varint(f) if wire == 2 else None
            if n is None or f.tell() + n > size:
                return None
            if field != 14 or n > _MAX_MARKER:
                f.seek(n, os.SEEK_CUR)
                continue
            try:
                entry = onnx.StringStringEntryProto.FromString(f.read(n))
            except Exception:  # not protobuf: not ours
                return None
            if entry.key == ONNX_KEY:
                return _parse_marker(entry.value)
    return None


def read_export_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a file botnet export wrote (producer, format, version), else None. Only zip
    directories and protobuf field headers are read: nothing in the file is run or unpickled."""
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                for info in z.infolist():
                    if info.filename.endswith("/extra/" + MARKER_FILE) and info.file_size <= _MAX_MARKER:
                        return _parse_marker(z.read(info))
            return None
        return _onnx_marker(p)
    except (OSError, zipfile.BadZipFile, ImportError, ValueError):
        return None


def _is_checkpoint(p: Path) -> bool:
    """A weights file botnet's checkpoint reader takes: by name, or a safetensors header."""
    if p.name.endswith(_CHECKPOINT_SUFFIXES):
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and 0 < int.from_bytes(head[:8], "little") < (100 << 20) and head[8:9] == b"{"


def check_out_path(path: str | os.PathLike, fmt: str | None = None, *, overwrite: bool = False,
                   what: str = "--out") -> Path:
    """Refuse, in one line, an output path export must not write: a folder, a checkpoint, a file it
    did not write, or its own earlier export without ``overwrite``; also a path under a file."""
    p = Path(path)
    example = p / f"model{SUFFIX.get(fmt or '', '.onnx')}"
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a folder; give a file name, e.g. {example}")
    if p.name.endswith(".safetensors"):
        why = ("is a checkpoint; export never replaces one" if os.path.lexists(p) else
               "is named like a checkpoint; export writes ONNX, TorchScript or .pt2 files, never .safetensors")
        raise ConfigError(f"{what} {p} {why}: choose a new file name, e.g. "
                          f"{p.with_suffix(SUFFIX.get(fmt or '', '.onnx'))}")
    if os.path.lexists(p):
        _check_existing(p, fmt, overwrite, what)
        return p
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{what} {p} cannot be created: {anc} is not a folder")
    return p


def _check_existing(p: Path, fmt: str | None, overwrite: bool, what: str) -> None:
    if not p.is_file():
        raise ConfigError(f"{what} {p} exists and is not a regular file; choose a new file name")
    marker = read_export_marker(p)
    if marker is None and _is_checkpoint(p):
        raise ConfigError(f"{what} {p} is a checkpoint; export never replaces one: choose a new file name, e.g. "
                          f"{p.with_suffix(SUFFIX.get(fmt or '', '.onnx'))}")
    if marker is None:
        raise ConfigError(f"{what} {p} exists and was not written by botnet export; choose a new file name (export "
                          f"replaces only its own earlier exports, with --overwrite)")
    if not overwrite:
        raise ConfigError(f"{what} {p} holds an earlier botnet export ({marker.get('format')}); pass --overwrite to "
                          f"replace it, or choose a new file name")


def _write_atomic(path: Path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` beside ``path`` (same suffix: the savers look at it), fsync, rename into place, over
    nothing or an earlier botnet export only (``path`` may have changed since :func:`check_out_path`: an
    export can take minutes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + path.suffix
    remove_abandoned(path, os.unlink, suffix=suffix, what="an interrupted export")
    with TempBeside(path, suffix=suffix) as claim:
        tmp = str(claim.path)
        try:
            make_shareable(tmp)
            write(tmp)
            fault_point("export.fsync")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if os.path.lexists(path) and (not path.is_file() or read_export_marker(path) is None):
                raise ConfigError(f"{path} changed while exporting and is no longer an earlier botnet export; "
                                  f"nothing was replaced: export again to a new file name")
            os.replace(tmp, path)
        except BaseException:
            unlink_quiet(tmp)
            raise
    return path


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
                opset: int | None = None, attention: str = "scan") -> Path:
    """``attention``: "scan" (default) writes each RelPosMHSA as a Scan over query blocks, memory-linear
    in ONNX Runtime (:mod:`botnet.export.onnx_attention`); "sdpa" leaves its scaled_dot_product_attention
    to the exporter (MatMul/Softmax/MatMul below opset 23, the Attention op from 23: ONNX Runtime
    1.32's CPU kernels materialise the N x N logits for both)."""
    import onnx

    from botnet.export.onnx_attention import lower_rel_pos_attention, translation_table
    from botnet.layers.functional import attention_as_op

    if attention not in ONNX_ATTENTION:
        raise ValueError(f"attention must be one of {ONNX_ATTENTION}, got {attention!r}")
    path = Path(path)
    model = model.eval()
    kw = {} if opset is None else {"opset_version": opset}
    scan = attention == "scan"
    with attention_as_op() if scan else contextlib.nullcontext():
        prog = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=dynamic_shapes(min_size),
            input_names=["images"], output_names=["logits"], verbose=False,
            custom_translation_table=translation_table() if scan else None, **kw,
        )
    proto = prog.model_proto
    lower_rel_pos_attention(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, _marker_text("onnx")
    return _write_atomic(path, lambda tmp: onnx.save_model(proto, tmp))


@contextlib.contextmanager
def _asked_for_torchscript():
    """torch 2.x warns that ``torch.jit.trace`` / ``load`` are deprecated on every call; a user who asked
    for TorchScript knows (the command's help names ``--format export`` as its successor)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    path = Path(path)
    model = model.eval()
    with torch.no_grad(), _asked_for_torchscript():
        traced = torch.jit.trace(model, (example,), check_trace=False)
    extra = {MARKER_FILE: _marker_text("torchscript")}
    return _write_atomic(path, lambda tmp: traced.save(tmp, _extra_files=extra))


def export_program(model: nn.Module, path: str | Path, example: torch.Tensor, *, min_size: int = 8) -> Path:
    path = Path(path)
    model = model.eval()
    ep = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes(min_size))
    extra = {MARKER_FILE: _marker_text("export")}
    return _write_atomic(path, lambda tmp: torch.export.save(ep, tmp, extra_files=extra))


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
                 min_size: int | None = None, overwrite: bool = False, opset: int | None = None,
                 onnx_attention: str = "scan") -> Path:
    """Export ``model`` in ``fmt`` (onnx, torchscript, export), tracing at ``img_size``; dynamic sizes
    from ``min_size`` (default: :func:`smallest_dynamic_size`) up. An existing ``path`` is replaced
    only when it is an earlier botnet export and ``overwrite`` is set (:func:`check_out_path`).
    ``opset`` and ``onnx_attention`` apply to ONNX (:func:`export_onnx`)."""
    min_size = min_size or smallest_dynamic_size(model)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    check_out_path(path, fmt, overwrite=overwrite, what="export path")
    example = _example(model, img_size, batch)
    if fmt == "onnx":
        return export_onnx(model, path, example, min_size=min_size, opset=opset, attention=onnx_attention)
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
        with _asked_for_torchscript():
            mod = torch.jit.load(path)
        return lambda x: mod(x)
    if fmt == "export":
        mod = torch.export.load(path).module()
        return lambda x: mod(x)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def run_exported(fmt: str, path: str | Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_exported(fmt, path)(x)


def verify_inputs(model: nn.Module, *, img_size: int | None = None, batch: int = 2,
                  min_size: int | None = None) -> list[torch.Tensor]:
    """Three inputs for :func:`verify`: the trace size, another batch and size, and a size whose
    attention grid is not square (width + 2 x the model's stride, so every stage's map has two or more
    columns more than rows: a lowering that mixed up rows and columns would fail there)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    c = cfg.get("input_size", (3,))[0]
    h = img_size or cfg.get("img_size", (224,))[0]
    stride = smallest_dynamic_size(model) - 1
    h2 = max(min_size or stride + 1, h + 32 if h >= 32 else h + 8)
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, c, h, h, generator=g), torch.randn(batch + 1, c, h2, h2 - 4, generator=g),
            torch.randn(1, c, h, h + 2 * stride, generator=g)]


def verify(model: nn.Module, fmt: str, path: str | Path, inputs: Sequence[torch.Tensor]) -> list[float]:
    """Max |exported - eager| for each input (the model is put in eval mode)."""
    model = model.eval()
    f = load_exported(fmt, path)
    errs = []
    with torch.no_grad():
        for x in inputs:
            errs.append(float((f(x) - model(x)).abs().max()))
    return errs
