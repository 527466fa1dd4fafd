"""Export a botnet detector (torchvision Mask R-CNN / Faster R-CNN over BoTNet-FPN) with a dynamic
image size: a ``torch.export`` program (``.pt2``) or ONNX (the dynamo exporter, from that program).

The exported graph is the whole eager detector on one image: input ``image``, a float (3, H, W)
RGB tensor in [0, 1] of any height and width (2 to :data:`MAX_SIDE`), as torchvision detectors
take it; outputs ``boxes`` (N, 4) in the image's pixels, ``labels`` (N,) int64, ``scores`` (N,)
and for Mask R-CNN ``masks`` (N, 1, H, W) probabilities, N at most ``box_detections_per_img``.
Resizing to the canvas, normalisation, padding, RPN, NMS, RoI heads and mask pasting are in the
graph, with the thresholds the detector was built with.

torchvision's detection code branches on Python values of data-dependent sizes in four places,
which ``torch.export`` cannot trace (pytorch/vision#9321). While exporting, :func:`exportable`
puts in their place functions that compute the same thing without those branches:

- ``batched_nms``: always the coordinate-offset form (torchvision's own form when traced for ONNX;
  the per-class loop it uses eagerly above 1000 boxes keeps the same boxes);
- ``_multiscale_roi_align``: the number of RoIs read from the tensor's shape, not ``len()``;
- ``_resize_image_and_masks``: the same scale, ``min(canvas / short side, canvas / long side)``,
  written with ``torch.sym_min`` / ``sym_max`` so portrait and landscape share one program;
- ``paste_masks_in_image``: each mask is resized into its box as two interpolation matrices
  (rows x mask x columns, with ``F.interpolate``'s bilinear weights) instead of one
  ``interpolate`` per detection, so the number of detections stays symbolic.

In ONNX the resized image size is computed in float64, as Python computes it eagerly (the
exporter's float32 resized a 191 px side to 95 px instead of 96): :func:`_double_size_arithmetic`.

Only fixed-canvas detectors (``model.canvas`` set, as in every botnet recipe) are exported: with
variable-size batches the FPN's coarsest map is a single pixel for some image shapes, and
``torch.export`` fixes such a dimension to its traced value, so no one program serves every size.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from botnet.errors import ConfigError

__all__ = ["FORMATS", "MAX_SIDE", "DetectorProgram", "DetectionCheck", "is_detector", "check_exportable",
           "exportable", "export_detector", "load_exported_detector", "compare_detections", "verify_detector",
           "verify_sizes", "verify_images"]

FORMATS = ("onnx", "export")
MAX_SIDE = 16384  # largest image height/width the exported program accepts


def is_detector(model: nn.Module) -> bool:
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    return isinstance(model, GeneralizedRCNN)


def check_exportable(model: nn.Module, what: str = "the detector") -> None:
    """One line if ``model`` is a detector this module cannot export with a dynamic size."""
    from botnet.detection.models import CanvasRCNNTransform

    if not isinstance(model.transform, CanvasRCNNTransform):
        raise ConfigError(f"{what} uses variable-size batches (model.canvas: null); detector export needs a fixed "
                          f"canvas (model.canvas, as in every botnet recipe): retrain with --set model.canvas=N")


class DetectorProgram(nn.Module):
    """The detector on one image: (3, H, W) in [0, 1] -> (boxes, labels, scores[, masks])."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector
        self.output_names = ["boxes", "labels", "scores"] + (["masks"] if detector.roi_heads.has_mask() else [])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.detector([image])[0]
        return tuple(out[k] for k in self.output_names)


# ---------------------------------------------------------------- export-friendly torchvision parts
def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    from torchvision.ops import nms

    # offset each class's boxes past every other's; the zero keeps max() defined with no boxes
    top = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    return nms(boxes + (idxs.to(boxes) * (top + 1))[:, None], scores, iou_threshold)


def _multiscale_roi_align(x_filtered, boxes, output_size, sampling_ratio, scales, mapper) -> torch.Tensor:
    from torchvision.ops import roi_align
    from torchvision.ops.poolers import _convert_to_roi_format

    rois = _convert_to_roi_format(boxes)
    if len(x_filtered) == 1:
        return roi_align(x_filtered[0], rois, output_size=output_size, spatial_scale=scales[0],
                         sampling_ratio=sampling_ratio)
    levels = mapper(boxes)
    result = x_filtered[0].new_zeros((rois.shape[0], x_filtered[0].shape[1], *output_size))
    for level, (feature, scale) in enumerate(zip(x_filtered, scales)):
        idx = torch.where(levels == level)[0]
        result[idx] = roi_align(feature, rois[idx], output_size=output_size, spatial_scale=scale,
                                sampling_ratio=sampling_ratio).to(result.dtype)
    return result


def _resize_image(original: Callable) -> Callable:
    def resize(image, self_min_size, self_max_size, target=None, fixed_size=None):
        if target is not None or fixed_size is not None:  # training / fixed size: not exported
            return original(image, self_min_size, self_max_size, target, fixed_size)
        h, w = image.shape[-2], image.shape[-1]
        scale = torch.sym_min(self_min_size / torch.sym_min(h, w), self_max_size / torch.sym_max(h, w))
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                              align_corners=False)[0]
        return image, target

    return resize


def _interpolation_matrix(start: torch.Tensor, end: torch.Tensor, size: int, m: int) -> torch.Tensor:
    """(N, size, m): row p holds the bilinear weights (align_corners=False, as F.interpolate computes
    them) of pixel p of the axis when an m-long mask is resized onto [start, end]; zero outside."""
    n_out = (end - start + 1).clamp(min=1).to(torch.float32)
    pos = torch.arange(size, device=start.device)
    i = pos[None, :] - start[:, None]
    inside = (i >= 0) & (pos[None, :] <= end[:, None])
    src = ((i.to(torch.float32) + 0.5) * (m / n_out)[:, None] - 0.5).clamp(min=0)
    lo = src.floor().to(torch.int64).clamp(max=m - 1)
    frac = (src - lo.to(torch.float32)).clamp(0, 1)
    hi = torch.where(lo < m - 1, lo + 1, lo)
    k = torch.arange(m, device=start.device)
    weights = (k == lo[..., None]).to(torch.float32) * (1 - frac)[..., None] \
        + (k == hi[..., None]).to(torch.float32) * frac[..., None]
    return weights * inside[..., None]


def _paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, img_shape, padding: int = 1) -> torch.Tensor:
    """torchvision's ``paste_masks_in_image`` (same padding, box expansion and integer boxes) for
    all detections at once: each pasted mask is rows @ mask @ columns^T."""
    from torchvision.models.detection.roi_heads import expand_boxes

    m = masks.shape[-1]
    boxes = expand_boxes(boxes, float(m + 2 * padding) / m).to(dtype=torch.int64)
    masks = F.pad(masks, (padding,) * 4)[:, 0].to(torch.float32)
    im_h, im_w = img_shape
    rows = _interpolation_matrix(boxes[:, 1], boxes[:, 3], im_h, m + 2 * padding)
    cols = _interpolation_matrix(boxes[:, 0], boxes[:, 2], im_w, m + 2 * padding)
    return (rows @ masks @ cols.transpose(1, 2))[:, None]


@contextlib.contextmanager
def exportable() -> Iterator[None]:
    """Swap the four torchvision functions named in the module docstring for the duration of an
    export (in this process; restored on exit, also after an error)."""
    import torchvision.models.detection.transform as tv_transform
    import torchvision.ops.boxes as tv_boxes
    import torchvision.ops.poolers as tv_poolers

    swaps = [(tv_boxes, "batched_nms", _batched_nms), (tv_poolers, "_multiscale_roi_align", _multiscale_roi_align),
             (tv_transform, "_resize_image_and_masks", _resize_image(tv_transform._resize_image_and_masks)),
             (tv_transform, "paste_masks_in_image", _paste_masks_in_image)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in swaps]
    try:
        for mod, name, fn in swaps:
            setattr(mod, name, fn)
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


# ---------------------------------------------------------------- export and reload
def _dynamic_shapes(min_size: int, max_size: int) -> dict:
    from torch.export import Dim

    return {"image": {1: Dim("height", min=min_size, max=max_size), 2: Dim("width", min=min_size, max=max_size)}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchvision's fake ``nms`` calls a renamed torch API: a FutureWarning each time it is traced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint", category=FutureWarning)
        yield


def _program(model: nn.Module, example: torch.Tensor, min_size: int):
    from botnet.detection.models import _fix_pool_scales

    # poolers without set scales (a detector not from build_detector) would take them from the traced image
    _fix_pool_scales(model, model.backbone.strides)
    wrapper = DetectorProgram(model.eval()).eval()
    with exportable(), torch.no_grad(), _quiet():
        ep = torch.export.export(wrapper, (example,), dynamic_shapes=_dynamic_shapes(min_size, MAX_SIDE),
                                 strict=False)
    return ep, wrapper.output_names


def _double_size_arithmetic() -> dict:
    """ONNX translations computing the resized image size in float64, as Python does eagerly: the
    exporter's own are float32, in which 191 * (96 / 191) is 95.99999 (eager: 96.0), so the graph
    resized to a pixel less than eager for such sizes."""
    import operator

    from onnxscript import DOUBLE
    from onnxscript.onnx_opset import opset18 as op

    def sym_float(self):
        return op.Cast(self, to=DOUBLE.dtype)

    def truediv(self, other):
        return op.Div(op.Cast(self, to=DOUBLE.dtype), op.Cast(other, to=DOUBLE.dtype))

    return {torch.sym_float: sym_float, operator.truediv: truediv}


def export_detector(model: nn.Module, fmt: str, path: str | Path, *, example_size: tuple[int, int] | None = None,
                    min_size: int = 2, overwrite: bool = False) -> Path:
    """Export detector ``model`` (on the CPU) in ``fmt`` (``onnx`` or ``export``), traced on a
    random image of ``example_size`` (default: the canvas); heights and widths from ``min_size`` to
    :data:`MAX_SIDE` run on the file. ``path`` follows :func:`botnet.export.check_out_path`."""
    from botnet.export import MARKER_FILE, ONNX_KEY, _marker_text, _write_atomic, check_out_path

    if fmt not in FORMATS:
        raise ValueError(f"detector format must be one of {FORMATS}, got {fmt!r}")
    check_exportable(model)
    path = check_out_path(path, fmt, overwrite=overwrite, what="export path")
    h, w = example_size or (model.transform.canvas, model.transform.canvas)
    example = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    ep, names = _program(model, example, max(2, int(min_size)))
    if fmt == "export":
        extra = {MARKER_FILE: _marker_text("export")}
        return _write_atomic(path, lambda tmp: torch.export.save(ep, tmp, extra_files=extra))
    with _quiet():
        prog = torch.onnx.export(ep, (example,), dynamo=True, input_names=["image"], output_names=names,
                                 custom_translation_table=_double_size_arithmetic(), verbose=False)
    prog.model.metadata_props[ONNX_KEY] = _marker_text("onnx")
    return _write_atomic(path, lambda tmp: prog.save(tmp))


def load_exported_detector(fmt: str, path: str | Path) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``f(image) -> {"boxes", "labels", "scores"[, "masks"]}`` running the exported file."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]

        def run(image: torch.Tensor) -> dict[str, torch.Tensor]:
            outs = sess.run(None, {"image": image.detach().cpu().numpy()})
            return {n: torch.from_numpy(o) for n, o in zip(names, outs)}

        return run
    if fmt == "export":
        mod = torch.export.load(str(path)).module()
        keys = ("boxes", "labels", "scores", "masks")

        def run(image: torch.Tensor) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return dict(zip(keys, mod(image)))

        return run
    raise ValueError(f"detector format must be one of {FORMATS}, got {fmt!r}")


# ---------------------------------------------------------------- comparison with eager
@dataclass
class DetectionCheck:
    """Exported vs eager detections on one image.

    Detections are paired by label, box and score, so two near-equal scores may swap places.
    ``near_cut`` counts those left without a partner whose score is within the score tolerance of
    the lowest one kept: a near-tie there decides which detection makes the cut, so they are not
    compared; ``unpaired`` counts the others (a real difference). ``masks_skipped`` counts pairs
    whose masks were not compared because their boxes round to pixels one apart (torchvision pastes
    each mask into its box's integer pixels, so a box edge at 467.998 vs 468.002 moves the mask's
    last row); ``mask_err`` is over the rest.
    """

    eager: int
    exported: int
    paired: int
    near_cut: int
    unpaired: int
    box_err: float
    score_err: float
    mask_err: float
    masks_skipped: int = 0
    size: tuple[int, int] = (0, 0)

    def ok(self, mask_tol: float = 1e-2) -> bool:
        """Every detection paired or at the cut-off, and the compared masks within ``mask_tol``."""
        return self.unpaired == 0 and self.mask_err <= mask_tol


def _pairs(ref: dict, out: dict, box_tol: float, score_tol: float) -> list[tuple[int, int]]:
    """Greedy, in eager's score order: the closest unpaired exported detection of the same label."""
    if len(ref["scores"]) == 0 or len(out["scores"]) == 0:
        return []
    box_d = (ref["boxes"][:, None, :].float() - out["boxes"][None, :, :].float()).abs().amax(-1)
    score_d = (ref["scores"][:, None].float() - out["scores"][None, :].float()).abs()
    cost = torch.maximum(box_d / box_tol, score_d / score_tol)
    cost[ref["labels"][:, None] != out["labels"][None, :].to(ref["labels"].dtype)] = math.inf
    pairs, taken = [], set()
    for i in range(cost.shape[0]):
        for j in cost[i].argsort().tolist():
            if cost[i, j] > 1:
                break
            if j not in taken:
                taken.add(j)
                pairs.append((i, j))
                break
    return pairs


def _pasted_box(box: torch.Tensor, mask_size: int) -> torch.Tensor:
    """The integer pixels torchvision pastes a mask of ``mask_size`` into (padding 1)."""
    from torchvision.models.detection.roi_heads import expand_boxes

    return expand_boxes(box[None].float(), (mask_size + 2) / mask_size).to(torch.int64)[0]


def compare_detections(ref: dict, out: dict, *, box_tol: float = 1e-2, score_tol: float = 1e-3,
                       mask_size: int = 28) -> DetectionCheck:
    """Pair exported detections ``out`` with eager ones ``ref`` (within ``box_tol`` px and
    ``score_tol``) and report the largest differences between partners (see DetectionCheck)."""
    pairs = _pairs(ref, out, box_tol, score_tol)
    lowest = min([float(d["scores"].min()) for d in (ref, out) if len(d["scores"])], default=0.0)
    left = [float(d["scores"][k]) for d, taken in ((ref, {i for i, _ in pairs}), (out, {j for _, j in pairs}))
            for k in range(len(d["scores"])) if k not in taken]
    near_cut = sum(sc <= lowest + score_tol for sc in left)
    errs = {"boxes": 0.0, "scores": 0.0, "masks": 0.0}
    skipped = 0
    for i, j in pairs:
        for k in ("boxes", "scores"):
            errs[k] = max(errs[k], float((ref[k][i].float() - out[k][j].float()).abs().max()))
        if "masks" in ref and "masks" in out:
            if not torch.equal(_pasted_box(ref["boxes"][i], mask_size), _pasted_box(out["boxes"][j], mask_size)):
                skipped += 1
                continue
            errs["masks"] = max(errs["masks"], float((ref["masks"][i].float() - out["masks"][j].float()).abs().max()))
    return DetectionCheck(len(ref["scores"]), len(out["scores"]), len(pairs), near_cut, len(left) - near_cut,
                          errs["boxes"], errs["scores"], errs["masks"], skipped)


def verify_detector(model: nn.Module, fmt: str, path: str | Path, images: Sequence[torch.Tensor], *,
                    box_tol: float | None = None, score_tol: float = 1e-3) -> list[DetectionCheck]:
    """Run the exported file and the eager ``model`` on each (3, H, W) image and compare. Boxes pair
    within ``box_tol`` px, by default 5e-5 of the image's longer side and at least 0.01 px (float32
    differences in the box regression grow with the boxes)."""
    run = load_exported_detector(fmt, path)
    model = model.eval()
    pool = getattr(model.roi_heads, "mask_roi_pool", None)
    mask_size = 2 * int(pool.output_size[0]) if pool is not None else 28  # the mask head upsamples twice
    checks = []
    with torch.no_grad():
        for image in images:
            h, w = int(image.shape[-2]), int(image.shape[-1])
            tol = box_tol if box_tol is not None else max(1e-2, 5e-5 * max(h, w))
            check = compare_detections(model([image])[0], run(image), box_tol=tol, score_tol=score_tol,
                                       mask_size=mask_size)
            check.size = (h, w)
            checks.append(check)
    return checks


def verify_sizes(model: nn.Module, img_size: int | None = None) -> list[tuple[int, int]]:
    """Two (height, width) sizes for checking an export, portrait then landscape, neither the
    canvas itself: ``img_size`` (default: the canvas) by 3/4 of it, and 5/8 of it by 5/4."""
    s = int(img_size or model.transform.canvas)
    return [(s, max(2, s * 3 // 4)), (max(2, s * 5 // 8), max(2, s * 5 // 4))]


def verify_images(model: nn.Module, img_size: int | None = None, image_path: str | None = None, *,
                  min_size: int = 2) -> list[torch.Tensor]:
    """The two images ``botnet export --verify`` checks a detector on: random ones at
    :func:`verify_sizes`, or the image file ``image_path`` and that image transposed and cropped to
    3/4 of its new height (another size, and the other orientation)."""
    if image_path is None:
        g = torch.Generator().manual_seed(0)
        return [torch.rand(3, h, w, generator=g) for h, w in verify_sizes(model, img_size)]
    from botnet.data.coco import read_image_rgb

    image = read_image_rgb(image_path).as_subclass(torch.Tensor).float() / 255.0
    h, w = image.shape[-2:]
    low = max(min_size, 2) * 4 // 3 + 1  # the crop keeps 3/4 of the width
    if min(h, w) < low or max(h, w) > MAX_SIDE:
        raise ConfigError(f"--verify-image {image_path} is {w}x{h} pixels; use an image with sides from {low} to "
                          f"{MAX_SIDE}")
    other = image.transpose(1, 2)[:, : w * 3 // 4, :].contiguous()
    return [image, other]
