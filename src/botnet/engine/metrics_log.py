"""Metrics logging: TensorBoard events, ``metrics.jsonl`` and ``metrics.csv`` (main rank only).

::

    log = MetricsLogger("runs/x", enabled=dist_info.is_main)
    log.log({"loss": 0.7, "lr": 0.1}, step=120, phase="train", epoch=1)
    log.log({"top1": 91.2}, step=120, phase="val", epoch=1)
    log.close()

Every call appends one JSON object to ``metrics.jsonl`` (``{"phase", "step", "epoch",
"time", ...metrics}``), one row to ``metrics.csv`` (the header grows when new metric names
appear; the file is then rewritten atomically) and one scalar per metric to TensorBoard under
``phase/name``. On non-main ranks (``enabled=False``) every method does nothing.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from botnet.errors import UserInputError
from botnet.validation import loads_json

__all__ = ["MetricsLogger", "read_jsonl"]


def _to_float(v: Any) -> Any:
    try:
        import torch

        if isinstance(v, torch.Tensor):
            return v.item()
    except ImportError:  # pragma: no cover
        pass
    return v


class MetricsLogger:
    """Write scalars to TensorBoard + JSONL + CSV under ``log_dir``.

    Args:
        log_dir: run directory (created).
        enabled: set to ``dist_info.is_main``; when False nothing is written.
        tensorboard: also write TensorBoard events (``log_dir/tb``).
        resume: keep existing ``metrics.jsonl``/``metrics.csv`` (append) instead of starting fresh.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resume: bool = False):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self.records: list[dict[str, Any]] = []
        self.writer = None
        self._columns: list[str] = []
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.log_dir / "metrics.jsonl"
        self.csv_path = self.log_dir / "metrics.csv"
        if resume and self.jsonl_path.is_file():
            self.records = read_jsonl(self.jsonl_path)
        else:
            self.jsonl_path.write_text("")
        self._rewrite_csv()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.log_dir / "tb"))
            except Exception as e:  # pragma: no cover - tensorboard is a dependency
                from botnet.log import get_logger

                get_logger("engine").warning(f"TensorBoard disabled ({e})")

    def _rewrite_csv(self) -> None:
        cols: list[str] = ["phase", "step", "epoch", "time"]
        for r in self.records:
            for k in r:
                if k not in cols:
                    cols.append(k)
        self._columns = cols
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in self.records:
            w.writerow(r)
        from botnet.io.atomic import atomic_write_bytes

        atomic_write_bytes(self.csv_path, buf.getvalue().encode())

    def log(self, metrics: dict[str, Any], step: int, phase: str = "train", epoch: float | None = None) -> None:
        """Record ``metrics`` (name -> number) at global ``step`` for ``phase`` (train/val/...)."""
        if not self.enabled:
            return
        rec: dict[str, Any] = {"phase": phase, "step": int(step), "epoch": epoch, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            v = _to_float(v)
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)  # JSON has no NaN/inf
            rec[k] = v
        self.records.append(rec)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if any(k not in self._columns for k in rec):
            self._rewrite_csv()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore").writerow(rec)
        if self.writer is not None:
            for k, v in rec.items():
                if k in ("phase", "step", "epoch", "time") or not isinstance(v, (int, float)):
                    continue
                self.writer.add_scalar(f"{phase}/{k}", v, int(step))

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text, step)

    def add_figure(self, tag: str, figure, step: int = 0) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=False)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file into a list of dicts (blank/partial lines skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = loads_json(line, source=str(path))  # depth-capped: a resumed folder may come from anyone
        except UserInputError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
