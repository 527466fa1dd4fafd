"""PNG plots of a run (matplotlib, Agg backend): loss/accuracy curves and a confusion matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_curves", "plot_confusion_matrix"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """tight_layout, create the folder, write a PNG (110 dpi), close the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run with no logged value would draw an empty legend and warn
        ax.legend()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def plot_curves(records: list[dict], out_dir: str | Path) -> list[Path]:
    """``loss.png`` (train loss per step, val loss per evaluation) and ``accuracy.png`` (val top-1/top-5,
    raw and EMA, plus train accuracy where logged) from ``metrics.jsonl`` records."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r.get("phase") == "train" and _num(r.get("loss")) is not None]
    val = [r for r in records if r.get("phase") == "val"]
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    for key, label in (("loss", "val loss"), ("ema_loss", "val loss (EMA)")):
        pts = [(r["step"], r[key]) for r in val if _num(r.get(key)) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", label=label)
    _label_axes(ax, "optimizer step", "cross-entropy", "Loss")
    paths.append(save_figure(fig, out_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (("top1", "val top-1"), ("top5", "val top-5"), ("ema_top1", "val top-1 (EMA)")):
        pts = [(r.get("epoch") or 0, r[key]) for r in val if _num(r.get(key)) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", label=label)
    tr_acc = [(r.get("epoch") or 0, r["train_top1"]) for r in records
              if r.get("phase") == "train_epoch" and _num(r.get("train_top1")) is not None]
    if tr_acc:
        ax.plot(*zip(*tr_acc), "s--", label="train top-1 (augmented)")
    _label_axes(ax, "epoch", "accuracy (%)", "Accuracy")
    paths.append(save_figure(fig, out_dir / "accuracy.png"))
    return paths


def plot_confusion_matrix(cm, class_names: Sequence[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: prediction) with counts."""
    import numpy as np

    plt = _plt()
    cm = np.asarray(cm, dtype=np.int64)
    n = len(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = 100.0 * np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} (top-1 {acc:.2f}%, n={int(cm.sum())})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)
