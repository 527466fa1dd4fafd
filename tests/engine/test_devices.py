"""What ``auto`` becomes per device (engine.devices) and that a run applies and logs it."""
import copy

import torch

from botnet.classification.task import ClassificationTask
from botnet.detection.task import DetectionTask
from botnet.engine import devices
from botnet.engine.config import ENGINE_DEFAULTS


def _cfg(**train):
    cfg = copy.deepcopy(ENGINE_DEFAULTS)
    cfg["train"].update(train)
    return cfg


def test_auto_on_the_cpu_is_full_precision_contiguous_and_no_workers():
    cfg = _cfg()
    changed = devices.resolve_device_defaults(cfg, ClassificationTask.cuda_defaults, torch.device("cpu"))
    assert (cfg["train"]["amp"], cfg["train"]["channels_last"], cfg["train"]["cudnn_benchmark"]) == ("none", False, False)
    assert cfg["data"]["num_workers"] == 0
    assert changed["train.amp"] == ("auto", "none")


def test_auto_on_cuda_follows_the_task(monkeypatch):
    monkeypatch.setattr(devices, "bf16_supported", lambda d: True)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 16)
    before = torch.backends.cudnn.benchmark
    try:
        cls = _cfg()
        devices.resolve_device_defaults(cls, ClassificationTask.cuda_defaults, torch.device("cuda"))
        assert (cls["train"]["amp"], cls["train"]["channels_last"], cls["train"]["cudnn_benchmark"]) == ("bf16", True, True)
        assert torch.backends.cudnn.benchmark is True
        assert cls["data"]["num_workers"] == 8
        det = _cfg()
        devices.resolve_device_defaults(det, DetectionTask.cuda_defaults, torch.device("cuda"), world_size=4)
        assert det["train"]["cudnn_benchmark"] is False and torch.backends.cudnn.benchmark is False
        assert det["train"]["amp"] == "none" and det["data"]["num_workers"] == 3
    finally:
        torch.backends.cudnn.benchmark = before


def test_a_gpu_without_bf16_gets_full_precision_not_fp16(monkeypatch):
    monkeypatch.setattr(devices, "bf16_supported", lambda d: False)
    cfg = _cfg()
    devices.resolve_device_defaults(cfg, ClassificationTask.cuda_defaults, torch.device("cuda"))
    assert cfg["train"]["amp"] == "none"
    torch.backends.cudnn.benchmark = False


def test_explicit_values_are_kept():
    cfg = _cfg(amp="bf16", channels_last=True, cudnn_benchmark=False)
    cfg["data"]["num_workers"] = 3
    assert devices.resolve_device_defaults(cfg, ClassificationTask.cuda_defaults, torch.device("cpu")) == {}
    assert (cfg["train"]["amp"], cfg["train"]["channels_last"], cfg["data"]["num_workers"]) == ("bf16", True, 3)
