"""Where does each head of each BoT block look? Attention maps for one query position.

Forward pre-hooks on every layer of ``model.attention_layers()`` capture that layer's input
during one normal forward pass; ``RelPosMHSA.attention_probs(x)`` then gives the explicit softmax
weights ``(B, heads, N, N)``. For a query pixel of the input image we take the row of the
query's feature cell (scaled to each layer's grid) and draw it, per head, over the image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

__all__ = ["attention_maps", "plot_attention"]


@torch.no_grad()
def attention_maps(model: torch.nn.Module, x: torch.Tensor, query_yx: tuple[float, float]) -> list[dict]:
    """Attention of one query position for every BoT layer.

    Args:
        model: a botnet model (``attention_layers()`` is used).
        x: one image batch ``(1, C, H, W)`` (normalised like training).
        query_yx: query position as fractions of the image height/width in [0, 1).

    Returns:
        A list (one per attention layer, in model order) of dicts ``{"name", "grid": (h, w),
        "query": (qy, qx), "maps": tensor (heads, h, w)}``; each map sums to 1.
    """
    layers = model.attention_layers()
    if not layers:
        raise ValueError("this model has no attention layers (model.attention_layers() is empty)")
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=n: inputs.__setitem__(name, args[0].detach()))
               for n, m in layers]
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for name, mod in layers:
        feat = inputs[name]
        h, w = feat.shape[-2:]
        qy = min(int(query_yx[0] * h), h - 1)
        qx = min(int(query_yx[1] * w), w - 1)
        probs = mod.attention_probs(feat)  # (B, heads, N, N)
        row = probs[0, :, qy * w + qx, :].float().reshape(-1, h, w).cpu()
        out.append({"name": name, "grid": (h, w), "query": (qy, qx), "maps": row})
    return out


def plot_attention(image, maps: list[dict], path: str | Path, query_yx: tuple[float, float],
                   title: str = "", cmap_image: str | None = None) -> Path:
    """One row per BoT layer: the image with the query marked, then one panel per head.

    ``image``: array (H, W) or (H, W, 3) in [0, 1] for display.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np
    import torch.nn.functional as F

    img = np.asarray(image)
    H, W = img.shape[:2]
    heads = max(m["maps"].shape[0] for m in maps)
    fig, axes = plt.subplots(len(maps), heads + 1, figsize=(2.0 * (heads + 1), 2.1 * len(maps)), squeeze=False)
    for r, m in enumerate(maps):
        ax = axes[r, 0]
        ax.imshow(img, cmap=cmap_image or ("gray" if img.ndim == 2 else None))
        ax.plot([query_yx[1] * W], [query_yx[0] * H], "r+", ms=12, mew=2)
        ax.set_title(f"{m['name']}\n{m['grid'][0]}x{m['grid'][1]} tokens", fontsize=7)
        ax.axis("off")
        up = F.interpolate(m["maps"][None], size=(H, W), mode="nearest")[0].numpy()
        for hd in range(heads):
            ax = axes[r, hd + 1]
            ax.axis("off")
            if hd >= up.shape[0]:
                continue
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.imshow(up[hd], cmap="magma", alpha=0.65)
            ax.plot([query_yx[1] * W], [query_yx[0] * H], "c+", ms=10, mew=1.5)
            ax.set_title(f"head {hd} (max {m['maps'][hd].max():.2f})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    from botnet.viz.plots import save_figure

    return save_figure(fig, path)
