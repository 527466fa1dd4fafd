"""PNG plots of a run (matplotlib, Agg backend): loss (with its terms), accuracy and AP curves, and a
confusion matrix. A plot with nothing to show is not written."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_curves", "plot_loss", "plot_accuracy", "plot_ap", "plot_confusion_matrix"]


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


def plot_loss(records: list[dict], path: str | Path, *, ylabel: str = "loss", terms_prefix: str | None = None) -> Path:
    """``loss.png``: the training loss per logged step and the validation loss per evaluation (raw and
    EMA) against optimizer steps, labelled ``ylabel`` (what the task minimises). With ``terms_prefix``,
    every logged key that starts with it (a detector's ``loss_classifier``, ``loss_box_reg``, ...) gets
    its own curve in a second panel."""
    plt = _plt()
    train = [r for r in records if r.get("phase") == "train" and _num(r.get("loss")) is not None]
    val = [r for r in records if r.get("phase") == "val"]
    terms = sorted({k for r in train for k in r if terms_prefix and k.startswith(terms_prefix)
                    and _num(r[k]) is not None})
    fig, axes = plt.subplots(1, 2 if terms else 1, figsize=(12 if terms else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    for key, label in (("loss", "val loss"), ("ema_loss", "val loss (EMA)")):
        pts = [(r["step"], r[key]) for r in val if _num(r.get(key)) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", label=label)
    _label_axes(ax, "optimizer step", ylabel, "Loss")
    if terms:
        ax = axes[0][1]
        for k in terms:
            pts = [(r["step"], r[k]) for r in train if _num(r.get(k)) is not None]
            ax.plot(*zip(*pts), label=k, lw=1)
        _label_axes(ax, "optimizer step", "loss term", f"Loss terms ({len(terms)}, summed on the left)")
    return save_figure(fig, path)


def plot_accuracy(records: list[dict], path: str | Path) -> Path | None:
    """``accuracy.png``: val top-1/top-5 (raw and EMA) and train top-1 per epoch; ``None`` (no file)
    when the run logged no accuracy."""
    plt = _plt()
    val = [r for r in records if r.get("phase") == "val"]
    series = []
    for key, label in (("top1", "val top-1"), ("top5", "val top-5"), ("ema_top1", "val top-1 (EMA)")):
        pts = [(r.get("epoch") or 0, r[key]) for r in val if _num(r.get(key)) is not None]
        if pts:
            series.append((pts, "o-", label))
    tr_acc = [(r.get("epoch") or 0, r["train_top1"]) for r in records
              if r.get("phase") == "train_epoch" and _num(r.get("train_top1")) is not None]
    if tr_acc:
        series.append((tr_acc, "s--", "train top-1 (augmented)"))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pts, style, label in series:
        ax.plot(*zip(*pts), style, label=label)
    _label_axes(ax, "epoch", "accuracy (%)", "Accuracy")
    return save_figure(fig, path)


AP_SERIES = (("box_AP", "box AP"), ("box_AP50", "box AP50"), ("mask_AP", "mask AP"), ("mask_AP50", "mask AP50"))


def plot_ap(records: list[dict], path: str | Path) -> Path | None:
    """``ap.png``: COCO AP (percent) of every evaluation during training against the epoch (box and mask,
    AP and AP50, raw and EMA); ``None`` (no file) when no evaluation logged an AP."""
    plt = _plt()
    val = [r for r in records if r.get("phase") == "val"]
    series = []
    for prefix, tag in (("", ""), ("ema_", " (EMA)")):
        for key, label in AP_SERIES:
            pts = [(r.get("epoch") or 0, r[prefix + key]) for r in val if _num(r.get(prefix + key)) is not None]
            if pts:
                series.append((pts, ("o-" if key.endswith("_AP") else "s--"), label + tag))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pts, style, label in series:
        ax.plot(*zip(*pts), style, label=label)
    _label_axes(ax, "epoch", "COCO AP (%)", "AP on the validation set")
    return save_figure(fig, path)


def plot_curves(records: list[dict], out_dir: str | Path, *, loss_label: str = "loss") -> list[Path]:
    """``loss.png`` (labelled ``loss_label``) and, when accuracy was logged, ``accuracy.png`` from
    ``metrics.jsonl`` records: a task's default plots (see ``botnet.engine.Task.plot``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_loss(records, out_dir / "loss.png", ylabel=loss_label)]
    acc = plot_accuracy(records, out_dir / "accuracy.png")
    return paths + ([acc] if acc else [])


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
