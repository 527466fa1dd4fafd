"""Drawing and running a detector on image files (``botnet detect predict``, run pictures)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["draw_predictions", "predict_images", "check_drawing_size", "MAX_DRAWING_PIXELS"]

MAX_DRAWING_PIXELS = 1 << 26  # 64 megapixels (8192 x 8192) per drawing: ~0.2 GB as uint8, ~1 GB in float

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def draw_predictions(image_u8: torch.Tensor, output: dict, class_names: list[str], *,
                     score_threshold: float = 0.5, scale: int = 1, mask_threshold: float = 0.5) -> torch.Tensor:
    """Draw boxes, ``label score`` captions and masks on a uint8 (3, H, W) image."""
    import torch.nn.functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output["scores"] >= score_threshold
    boxes = output["boxes"][keep].detach().cpu().float()
    labels = output["labels"][keep].detach().cpu()
    scores = output["scores"][keep].detach().cpu()
    img = image_u8.cpu()
    if scale > 1:
        img = F.interpolate(img[None].float(), scale_factor=scale, mode="nearest")[0].to(torch.uint8)
        boxes = boxes * scale
    colors = [_PALETTE[int(lab) % len(_PALETTE)] for lab in labels]
    if "masks" in output and len(boxes):
        masks = output["masks"][keep].detach().cpu().float()
        if scale > 1:
            masks = F.interpolate(masks, scale_factor=scale, mode="bilinear", align_corners=False)
        img = draw_segmentation_masks(img, masks[:, 0] > mask_threshold, alpha=0.45, colors=colors)
    if len(boxes):
        names = [f"{class_names[int(lab)] if int(lab) < len(class_names) else int(lab)} {float(s):.2f}"
                 for lab, s in zip(labels, scores)]
        img = draw_bounding_boxes(img, boxes, labels=names, colors=colors, width=max(1, scale // 2))
    return img


def check_drawing_size(paths: list[str], scale: int, option: str = "--scale") -> None:
    """Refuse a ``scale`` whose drawings would not fit (read from the image headers, before the model
    loads): each drawing is (H x scale) x (W x scale) pixels, and its masks as many floats each."""
    from PIL import Image

    from botnet.data.folder import open_regular
    from botnet.errors import ConfigError

    for p in paths:
        with open_regular(p) as f, Image.open(f) as img:
            w, h = img.size
        px = w * h * scale * scale
        if px > MAX_DRAWING_PIXELS:
            best = max(int((MAX_DRAWING_PIXELS / (w * h)) ** 0.5), 1)
            raise ConfigError(f"{option} {scale}: the drawing of {p} ({w}x{h}) would be {w * scale}x{h * scale} "
                              f"pixels, more than the limit of {MAX_DRAWING_PIXELS:,}; lower {option} (at most "
                              f"{best} for this image)")


@torch.no_grad()
def predict_images(model, paths: list[str], class_names: list[str], out_dir: str | os.PathLike, *,
                   score_threshold: float = 0.5, scale: int = 1) -> list[dict]:
    """Run ``model`` on image files, save ``out_dir/<name>.png`` drawings; return per-image records."""
    from PIL import Image

    from botnet.data.coco import read_image_rgb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = model.module if hasattr(model, "module") else model
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    records = []
    for p in paths:
        img = read_image_rgb(p).as_subclass(torch.Tensor)
        out = net([img.to(device).float() / 255.0])[0]
        drawn = draw_predictions(img, out, class_names, score_threshold=score_threshold, scale=scale)
        dst = out_dir / (Path(p).stem + ".png")
        Image.fromarray(drawn.permute(1, 2, 0).contiguous().numpy()).save(dst)
        keep = out["scores"] >= score_threshold
        records.append({
            "image": str(p), "drawing": str(dst),
            "detections": [{"label": class_names[int(lab)] if int(lab) < len(class_names) else int(lab),
                            "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                           for b, lab, s in zip(out["boxes"][keep], out["labels"][keep], out["scores"][keep])],
        })
    net.train(was)
    return records
