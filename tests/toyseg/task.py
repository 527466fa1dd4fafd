"""Segment a bright rectangle from noise: a model with one BoT attention layer, mean IoU as its metric.

This module is all a new task takes: the task class, its config section and its registration.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from botnet.data.builder import ResumableSampler
from botnet.engine import StepOutput, Task, TaskSetup
from botnet.engine.config import ENGINE_SCHEMA
from botnet.engine.schema_decl import Field, Section
from botnet.layers import RelPosMHSA
from botnet.tasks import TaskSpec, register_task

ARCH = "toyseg_net"
# The task's config: the engine's sections with its own keys, each declared once (default, range, flag, help);
# `botnet toyseg train` gets --width, --img-size and --num-classes from it, and validation and --print-config too.
SCHEMA = ENGINE_SCHEMA.extend(
    Section("model", (Field("width", 8, int, "channels of the stem and the attention", low=1, flag="--width"),
                      Field("heads", 2, int, "attention heads (must divide the width)", low=1))),
    Section("data", (Field("img_size", 16, int, "image size in pixels", low=8, flag="--img-size"),
                     Field("num_train", 64, int, "generated training images", low=1),
                     Field("num_val", 16, int, "generated validation images", low=1),
                     Field("seed", 0, int, "seed of the generated images", low=0))),
    Section("seg", (Field("num_classes", 2, int, "classes per pixel", low=2, flag="--num-classes"),),
            help="the segmentation task's own keys"),
    defaults={"name": "toyseg", "data.batch_size": 8, "data.num_workers": 0, "optim.lr": 0.05, "train.epochs": 3},
)


class ToySegNet(nn.Module):
    """conv (stride 2) -> global relative-position self-attention -> per-pixel classes at full size."""

    def __init__(self, *, num_classes: int = 2, width: int = 8, heads: int = 2, img_size: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.attn = RelPosMHSA(width, heads=heads, feat_size=img_size // 2)
        self.head = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)                                  # (B, C, H/2, W/2)
        f = torch.cat([f, self.attn(f)], dim=1)           # (B, 2C, H/2, W/2)
        return F.interpolate(self.head(f), size=x.shape[-2:], mode="bilinear", align_corners=False)


def make_set(n: int, size: int, seed: int) -> TensorDataset:
    """Images of noise with one bright rectangle each; the mask marks the rectangle."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.rand(n, 1, size, size, generator=g)
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        h, w = (int(v) for v in torch.randint(3, size // 2 + 1, (2,), generator=g))
        top, left = (int(v) for v in torch.randint(0, size - 4, (2,), generator=g))
        x[i, 0, top:top + h, left:left + w] += 0.7
        y[i, top:top + h, left:left + w] = 1
    return TensorDataset(x, y)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        inter = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        if union:
            ious.append(inter / union)
    return 100.0 * sum(ious) / max(len(ious), 1)


class ToySegTask(Task):
    name = "toyseg"
    key_metric = "miou"
    config_defaults = SCHEMA.defaults()

    def validate(self, cfg: dict) -> None:
        from botnet.errors import ConfigError

        SCHEMA.validate(cfg)
        if cfg["model"]["width"] % cfg["model"]["heads"]:
            raise ConfigError(f"model.heads = {cfg['model']['heads']} does not divide model.width = "
                              f"{cfg['model']['width']}")

    def build_model(self, arch: str, model_kwargs: dict[str, Any]) -> nn.Module:
        if arch != ARCH:
            raise ValueError(f"unknown architecture {arch}")
        return ToySegNet(**model_kwargs)

    def setup(self, cfg: dict, dist) -> TaskSetup:
        d = cfg["data"]
        kwargs = {"num_classes": int(cfg["seg"]["num_classes"]), "width": int(cfg["model"]["width"]),
                  "heads": int(cfg["model"]["heads"]), "img_size": int(d["img_size"])}
        train = make_set(int(d["num_train"]), int(d["img_size"]), int(d["seed"]))
        val = make_set(int(d["num_val"]), int(d["img_size"]), int(d["seed"]) + 1)
        sampler = ResumableSampler(train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                   seed=int(cfg["train"]["seed"]), drop_last=True)
        loader = DataLoader(train, batch_size=int(d["batch_size"]), sampler=sampler, drop_last=True)
        return TaskSetup(model=self.build_model(ARCH, kwargs), arch=ARCH, model_kwargs=kwargs, train_loader=loader,
                         num_val=len(val), class_names=["background", "rectangle"], state={"val": val})

    def train_step(self, model, batch, device, setup) -> StepOutput:
        x, y = (t.to(device) for t in batch)
        flip = torch.rand(x.shape[0], device=device) < 0.5  # augmentation: draws from the RNG a resume restores
        x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        right = int((logits.detach().argmax(1) == y).sum())
        return StepOutput({"loss": loss}, batch_size=int(x.shape[0]), metrics={"pixels_right": right})

    @torch.no_grad()
    def evaluate(self, model, setup, cfg, dist, desc: str = "eval") -> dict[str, Any]:
        was = model.training
        model.eval()
        x, y = setup.state["val"].tensors
        pred = model(x.to(dist.device)).argmax(1).cpu()
        model.train(was)
        return {"miou": mean_iou(pred, y, int(cfg["seg"]["num_classes"])), "n": int(x.shape[0])}


SPEC = register_task(TaskSpec(name="toyseg", task="toyseg.task:ToySegTask", schema="toyseg.task:SCHEMA",
                              help="toy segmentation (a plug-in)"))
