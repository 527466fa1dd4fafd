"""What the benchmark runs: model/input builders for one configuration, and the suites.

A *configuration* is a plain JSON-able dict, so the memory worker process can rebuild it::

    {"model": "attn:botnet", "mode": "fwd", "size": 64, "batch": 2, "dim": 512, "heads": 4,
     "channels_last": false, "bf16": false, "compile": false}

``model`` is one of
- ``attn:botnet``  - :class:`botnet.layers.RelPosMHSA` (``dim``, ``heads``; ``impl`` optional, default auto),
- ``attn:timm``    - ``timm.layers.bottleneck_attn.BottleneckAttn(scale_pos_embed=True)`` with the
  weights of the ``attn:botnet`` layer built from the same seed copied in (same numbers),
- ``botnet:NAME``  - ``botnet.create_model(NAME)``,
- ``tv:NAME``      - ``torchvision.models.NAME(weights=None)``,
- ``timm:NAME``    - ``timm.create_model(NAME, pretrained=False)``,
- ``det:botnet50`` - ``botnet.detection.maskrcnn_botnet50_fpn`` at ``size`` px,
- ``det:torchvision`` - ``torchvision...maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``,
- ``onnx:NAME``    - the ONNX file ``onnx_path`` (``botnet export NAME --format onnx``) in an ONNX Runtime
  session on the CPU provider (``threads`` intra-op threads, otherwise default options); mode ``infer``.

``mode``: ``fwd`` (no grad), ``fwdbwd`` (forward + backward to the input and the weights),
``infer`` (eval mode, no grad), ``train`` (train mode, loss, backward, SGD step).

A *comparison* pairs two configurations, ``ours`` and ``baseline``, with optional targets on
the ratios ours/baseline.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Comparison", "build_step", "copy_to_timm_attn", "SUITES", "make_suite"]

DEFAULTS = dict(mode="fwd", size=14, batch=1, dim=512, heads=4, channels_last=False, bf16=False,
                compile=False, seed=0, device="cpu")


@dataclass
class Comparison:
    group: str
    name: str
    ours: dict
    baseline: dict
    ours_label: str
    baseline_label: str
    targets: dict = field(default_factory=dict)  # {"time": 0.7, "mem": 0.2}: ratio must be <= this
    memory: bool = True  # measure peak memory (one process per configuration)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def full_config(cfg: dict) -> dict:
    out = dict(DEFAULTS)
    out.update(cfg)
    return out


# ---------------------------------------------------------------------- attention layers
def copy_to_timm_attn(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy a RelPosMHSA's weights into timm's BottleneckAttn (scale_pos_embed=True).

    Layouts: both 1x1 qkv convs order their output channels [q; k; v], each head-major
    (channel = head * d + i), so the weight copies as is. Our ``rel_h`` (2H-1, d) and ``rel_w``
    (2W-1, d) are indexed by key - query + L - 1, which is the index timm's pad/reshape
    ``rel_logits_1d`` produces for ``pos_embed.height_rel`` and ``pos_embed.width_rel``.
    """
    with torch.no_grad():
        theirs.qkv.weight.copy_(ours.qkv.weight)
        theirs.pos_embed.height_rel.copy_(ours.rel_h)
        theirs.pos_embed.width_rel.copy_(ours.rel_w)


def _hw(cfg: dict) -> tuple[int, int]:
    """(H, W) of an attention configuration: ``size`` is an int (square) or [H, W]."""
    s = cfg["size"]
    return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


def size_label(size) -> str:
    return f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"


def _attn_pair(cfg: dict) -> tuple[nn.Module, nn.Module]:
    from timm.layers.bottleneck_attn import BottleneckAttn

    from botnet.layers import RelPosMHSA

    hw = _hw(cfg)
    torch.manual_seed(cfg["seed"])
    ours = RelPosMHSA(cfg["dim"], cfg["heads"], hw, impl=cfg.get("impl", "auto"))
    theirs = BottleneckAttn(cfg["dim"], feat_size=hw, num_heads=cfg["heads"], scale_pos_embed=True)
    copy_to_timm_attn(ours, theirs)
    return ours, theirs


def _build_module(cfg: dict) -> nn.Module:
    kind, _, name = cfg["model"].partition(":")
    if kind == "attn":
        ours, theirs = _attn_pair(cfg)
        if name == "botnet":
            return ours
        if name == "timm":
            return theirs
    torch.manual_seed(cfg["seed"])
    if kind == "botnet":
        from botnet.models import create_model

        return create_model(name, **cfg.get("model_kwargs", {}))
    if kind == "tv":
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    if kind == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    if kind == "det":
        size = cfg["size"]
        if name in ("botnet50", "resnet50"):  # the same builder, BoT50 or R50 backbone
            from botnet.detection.models import maskrcnn_botnet50_fpn

            return maskrcnn_botnet50_fpn(num_classes=91, min_size=size, max_size=size, backbone=name)
        if name == "torchvision":
            from torchvision.models.detection import maskrcnn_resnet50_fpn

            return maskrcnn_resnet50_fpn(
                weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size
            )
    raise ValueError(f"unknown model {cfg['model']!r}")


def _det_inputs(cfg: dict, g: torch.Generator):
    s, n = cfg["size"], cfg["batch"]
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, s, s, generator=g))
        boxes = []
        for _ in range(4):
            x0, y0 = (torch.rand(2, generator=g) * s * 0.6).tolist()
            w, h = (torch.rand(2, generator=g) * s * 0.3 + s * 0.05).tolist()
            boxes.append([x0, y0, x0 + w, y0 + h])
        boxes_t = torch.tensor(boxes)
        masks = torch.zeros(len(boxes), s, s, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes_t.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        labels = torch.randint(1, 91, (len(boxes),), generator=g)
        targets.append({"boxes": boxes_t, "labels": labels, "masks": masks})
    return images, targets


def build_step(cfg: dict) -> Callable[[], None]:
    """Build the model and inputs of one configuration; return the step to time (no args).

    On CUDA the step ends with ``torch.cuda.synchronize()`` so a wall-clock timing covers its
    kernels, not only their launch.
    """
    cfg = full_config(cfg)
    step = _build_step(cfg)
    if torch.device(cfg["device"]).type != "cuda":
        return step

    def synced_step() -> None:
        step()
        torch.cuda.synchronize()

    return synced_step


def _onnx_step(cfg: dict) -> Callable[[], None]:
    """One ONNX Runtime run of the exported model on a fixed random batch (CPU provider)."""
    import numpy as np
    import onnxruntime as ort

    if cfg["mode"] != "infer":
        raise ValueError("ONNX configurations support mode='infer' only")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(cfg.get("threads") or torch.get_num_threads())
    sess = ort.InferenceSession(cfg["onnx_path"], so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(cfg["seed"] + 1)
    x = rng.standard_normal((cfg["batch"], 3, cfg["size"], cfg["size"]), dtype=np.float32)
    feeds = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feeds)


def _build_step(cfg: dict) -> Callable[[], None]:
    mode = cfg["mode"]
    if cfg["model"].startswith("data:"):  # a data loader, not a model (botnet.bench.data)
        from botnet.bench.data import build_data_step

        return build_data_step(cfg)
    if cfg["model"].startswith("onnx:"):
        return _onnx_step(cfg)
    model = _build_module(cfg)
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    kind = cfg["model"].split(":")[0]
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    dev = torch.device(cfg["device"])
    model = model.to(device=dev, memory_format=fmt)
    autocast = (
        (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if cfg["bf16"] else (lambda: torch.autocast(dev.type, enabled=False))
    )
    train = mode in ("train", "fwdbwd")
    model.train(mode == "train" or (kind == "attn" and train))
    fn = torch.compile(model) if cfg["compile"] else model

    if kind == "det":
        if mode != "train":
            raise ValueError("detection configurations support mode='train' only")
        images, targets = _det_inputs(cfg, g)
        images = [im.to(dev) for im in images]
        targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

        def det_step() -> None:
            with autocast():
                losses = fn(images, targets)
            sum(losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return det_step

    if kind == "attn":
        shape = (cfg["batch"], cfg["dim"], *_hw(cfg))
    else:
        in_chans = 3
        shape = (cfg["batch"], in_chans, cfg["size"], cfg["size"])
    x = torch.randn(*shape, generator=g).to(dev).contiguous(memory_format=fmt)

    if mode == "fwd" or mode == "infer":
        def infer_step() -> None:
            with torch.no_grad(), autocast():
                fn(x)

        return infer_step

    if mode == "fwdbwd":
        x.requires_grad_(True)
        with torch.no_grad():
            out_shape = model(x).shape
        grad_out = torch.randn(out_shape, generator=g).to(dev)

        def fwdbwd_step() -> None:
            with autocast():
                y = fn(x)
            y.backward(grad_out.to(y.dtype))
            x.grad = None
            for p in model.parameters():
                p.grad = None

        return fwdbwd_step

    if mode == "train":
        labels = torch.randint(0, 1000, (cfg["batch"],), generator=g).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def train_step() -> None:
            with autocast():
                loss = F.cross_entropy(fn(x), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return train_step
    raise ValueError(f"unknown mode {mode!r}")


# ---------------------------------------------------------------------- suites
def _pair(group, name, ours, baseline, ours_label, baseline_label, **kw) -> Comparison:
    return Comparison(group, name, full_config(ours), full_config(baseline), ours_label, baseline_label, **kw)


ATTN_TARGETS = {  # CPU (dim 512, 4 heads, fp32): ours / timm
    (64, "fwd"): {"time": 0.7, "mem": 0.2},
    (64, "fwdbwd"): {"time": 0.6, "mem": 0.3},
    (32, "fwd"): {"time": 0.6},
    (14, "fwdbwd"): {"time": 1.0},
}
# GPU targets (bf16 fwd+bwd time; peak memory <= 0.3 from 32x32 up; fp32 time <= 1.0).
GPU_ATTN_BF16_TIME = {(14, 14): 1.0, (32, 32): 0.45, (64, 64): 0.3, (50, 84): 0.5, (72, 72): 0.5}

# The configurations each suite runs, per preset: "cpu" (the 2-core CI machine) and "gpu" (the
# GPU tables on one H100/H200; batches as measured there).
PRESETS = {
    "cpu": {
        "attention": ((14, 8), (32, 8), (64, 2)),
        "backbone": (("infer", 224, 8, {"time": 1.0}), ("infer", 1024, 1, {"time": 1.15}), ("train", 224, 8, {})),
        "maskrcnn": (512, 2),
        "efficientnet": (("botnet_s1_59", 224, "efficientnet_b3", 300), ("botnet_s1_59", 224, "efficientnet_b4", 380)),
        "efficientnet_batches": (("infer", 8), ("train", 4)),
        # ONNX Runtime, CPU provider: (size, batch, targets)
        "export": ((224, 8, {"time": 1.05}), (640, 1, {}), (1024, 1, {"time": 1.25, "mem": 1.3})),
    },
    "gpu": {
        "attention": ((14, 128), (32, 32), (64, 8), ((50, 84), 4), (72, 4)),
        "backbone": (("train", 224, 128, {"time": 1.10}), ("train", 1024, 8, {"time": 1.15}),
                     ("infer", 224, 128, {}), ("infer", 1024, 8, {})),
        "maskrcnn": (1024, 2),
        "efficientnet": (("botnet_s1_59", 224, "efficientnet_b3", 300), ("botnet_s1_128", 256, "efficientnet_b5", 456),
                         ("botnet_s1_128", 384, "efficientnet_b7", 600)),
        "efficientnet_batches": (("train", 32),),
    },
}


def _attn_targets(hw: tuple[int, int], mode: str, flags: dict, dim: int, heads: int) -> dict:
    if dim != 512 or heads != 4:
        return {}
    if flags.get("device", "cpu") == "cuda":
        if mode != "fwdbwd":
            return {}
        t = {"time": GPU_ATTN_BF16_TIME[hw]} if flags.get("bf16") and hw in GPU_ATTN_BF16_TIME else {}
        if not flags.get("bf16"):
            t = {"time": 1.0}
        if hw[0] * hw[1] >= 32 * 32:
            t["mem"] = 0.3
        return t
    return ATTN_TARGETS.get((hw[0], mode), {}) if hw[0] == hw[1] else {}


def suite_attention(sizes=None, dim=512, heads=4, modes=("fwd", "fwdbwd"), impls=("auto",), preset="cpu", **flags):
    """RelPosMHSA (each ``impls`` entry) against timm's BottleneckAttn with the same weights."""
    out = []
    for size, batch in sizes or PRESETS[preset]["attention"]:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        label = size_label(size)
        for mode in modes:
            common = dict(mode=mode, size=list(hw), batch=batch, dim=dim, heads=heads, **flags)
            for impl in impls:
                suffix = "" if impls == ("auto",) else f" [{impl}]"
                out.append(_pair(
                    "attention", f"attn {label} b{batch} {mode}{suffix}",
                    dict(model="attn:botnet", impl=impl, **common), dict(model="attn:timm", **common),
                    f"RelPosMHSA ({impl})", "timm BottleneckAttn",
                    targets=_attn_targets(hw, mode, flags, dim, heads),
                ))
    return out


def suite_backbone(preset="cpu", **flags):
    control = _pair(
        "botnet50 vs resnet50", "control: infer 224px b8", dict(model="botnet:resnet50", mode="infer", size=224, batch=8, **flags),
        dict(model="tv:resnet50", mode="infer", size=224, batch=8, **flags), "our resnet50 (same architecture)",
        "torchvision resnet50", memory=False,
        note="identical networks: the distance of this ratio from 1 shows the measurement noise of the run",
    )
    return [control] + [
        _pair("botnet50 vs resnet50", f"{mode} {size}px b{batch}",
              dict(model="botnet:botnet50", mode=mode, size=size, batch=batch, **flags),
              dict(model="tv:resnet50", mode=mode, size=size, batch=batch, **flags),
              "botnet50", "torchvision resnet50", targets=t)
        for mode, size, batch, t in PRESETS[preset]["backbone"]
    ]


def suite_maskrcnn(size=None, batch=None, preset="cpu", **flags):
    psize, pbatch = PRESETS[preset]["maskrcnn"]
    size, batch = size or psize, batch or pbatch
    out = [_pair("Mask R-CNN", f"train step {size}px b{batch}",
                 dict(model="det:botnet50", mode="train", size=size, batch=batch, **flags),
                 dict(model="det:torchvision", mode="train", size=size, batch=batch, **flags),
                 "Mask R-CNN BoT50-FPN", "torchvision maskrcnn_resnet50_fpn", targets={"time": 1.15})]
    if preset == "gpu":  # the measured H200 figure: BoT50 against R50 from our own builder
        out.append(_pair("Mask R-CNN", f"train step {size}px b{batch} (same builder)",
                         dict(model="det:botnet50", mode="train", size=size, batch=batch, **flags),
                         dict(model="det:resnet50", mode="train", size=size, batch=batch, **flags),
                         "Mask R-CNN BoT50-FPN", "Mask R-CNN R50-FPN (same builder)"))
    return out


def suite_efficientnet(preset="cpu", **flags):
    # BoTNet-S1 against the EfficientNet of similar accuracy, each at its own paper resolution:
    # T3 (81.7 %) vs B3@300 (81.6 %) / B4@380 (82.9 %); T5@256 vs B5@456; T7 (s1_128@384) vs B7@600.
    tnames = {("botnet_s1_59", 224): "T3", ("botnet_s1_128", 256): "T5", ("botnet_s1_128", 384): "T7"}
    out = []
    for ours, osize, eff, esize in PRESETS[preset]["efficientnet"]:
        for mode, batch in PRESETS[preset]["efficientnet_batches"]:
            t = tnames[(ours, osize)]
            out.append(_pair(
                "BoTNet-S1 vs EfficientNet", f"{t}@{osize} vs {eff[-2:].upper()}@{esize} {mode} b{batch}",
                dict(model=f"botnet:{ours}", mode=mode, size=osize, batch=batch, **flags),
                dict(model=f"timm:{eff}", mode=mode, size=esize, batch=batch, **flags),
                f"{ours} @{osize}", f"timm {eff} @{esize}",
            ))
    return out


def suite_options():
    """channels_last and bf16 autocast against the default fp32 NCHW, same model, same run."""
    out = []
    base = dict(model="botnet:botnet50", mode="infer", size=224, batch=8)
    for label, flags in (("channels_last", dict(channels_last=True)), ("bf16 autocast", dict(bf16=True)),
                         ("channels_last + bf16", dict(channels_last=True, bf16=True))):
        out.append(_pair("options (botnet50)", f"infer 224px b8 {label}", dict(base, **flags), base,
                         f"botnet50 {label}", "botnet50 fp32 NCHW"))
    tbase = dict(model="botnet:botnet50", mode="train", size=224, batch=8)
    out.append(_pair("options (botnet50)", "train 224px b8 bf16 autocast", dict(tbase, bf16=True), tbase,
                     "botnet50 bf16 autocast", "botnet50 fp32"))
    for mode in ("fwd", "fwdbwd"):
        a = dict(model="attn:botnet", mode=mode, size=64, batch=2)
        out.append(_pair("options (attention)", f"attn 64x64 b2 {mode} bf16 autocast", dict(a, bf16=True), a,
                         "RelPosMHSA bf16", "RelPosMHSA fp32"))
    return out


def suite_compile(train_batch=8):
    out = []
    for mode, batch in (("infer", 8), ("train", train_batch)):
        c = dict(model="botnet:botnet50", mode=mode, size=224, batch=batch)
        out.append(_pair("torch.compile", f"botnet50 {mode} 224px b{batch}", dict(c, compile=True), c,
                         "botnet50 compiled", "botnet50 eager", memory=False,
                         note="first call (compilation) excluded: it runs in the warm-up"))
    return out


def suite_data(images=256, batch=32, size=224, **_):
    """Loader throughput per CPU core: tar shards against the image folder (and timm's shard reader)."""
    batch = min(batch, images)  # a tiny set (the test's) is one batch
    common = dict(images=images, batch=batch, size=size)
    name = f"{images} JPEGs 500x375"
    note = "one process, one torch thread: images/s is per core"
    return [
        _pair("data loader", f"train aug {size}px b{batch}, {name}", dict(model="data:shards", mode="train", **common),
              dict(model="data:folder", mode="train", **common), "shards (botnet)", "image folder", memory=False,
              note=note),
        _pair("data loader", f"train aug {size}px b{batch}, {name} (timm reader)",
              dict(model="data:shards", mode="train", **common), dict(model="data:timm-wds", mode="train", **common),
              "shards (botnet)", "shards (timm wds reader)", memory=False, note=note),
        _pair("data loader", f"read bytes only, {name}", dict(model="data:shards", mode="read", **common),
              dict(model="data:folder", mode="read", **common), "shards (botnet)", "image folder", memory=False,
              note="the file bytes only: what the format and the reader add on top of the file system"),
    ]


def export_onnx_files(names, *, attention: str = "scan", opset: int | None = None) -> dict[str, str]:
    """``botnet export NAME --format onnx`` for each name (seeded weights), into a folder removed when
    the process ends; returns {name: path}."""
    import atexit
    import shutil
    import tempfile

    from botnet.export import export_model
    from botnet.models import create_model

    folder = tempfile.mkdtemp(prefix="botnet-bench-onnx-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths = {}
    for name in names:
        torch.manual_seed(0)
        model = create_model(name)
        paths[name] = str(export_model(model, "onnx", f"{folder}/{name}.onnx", batch=1, opset=opset,
                                       onnx_attention=attention))
    return paths


def suite_export(preset="cpu", attention="scan", opset=None, models=("botnet50", "resnet50"), cases=None, **_flags):
    """botnet50 against resnet50, both exported to ONNX and run by ONNX Runtime (CPU provider, as many
    intra-op threads as torch uses), plus a control row of resnet50 against itself. Peak memory: the
    first run at the size, above the loaded session (``measure_first_step``). Device flags do not apply."""
    import onnxruntime as ort

    ours, base = models
    paths = export_onnx_files(dict.fromkeys(models), attention=attention, opset=opset)
    threads = torch.get_num_threads()
    tag = f"ONNX Runtime {ort.__version__}"

    def cfg(name, size, batch):
        return dict(model=f"onnx:{name}", mode="infer", size=size, batch=batch, onnx_path=paths[name],
                    threads=threads, measure_first_step=True)

    size0, batch0 = (cases or PRESETS["cpu"]["export"])[0][:2]
    control = cfg(base, size0, batch0)
    out = [_pair("export (ONNX Runtime)", f"control: {size0}px b{batch0}", control, control,
                 f"{base} ({tag})", f"{base} ({tag})", memory=False,
                 note="the same file twice: the distance of this ratio from 1 shows the measurement noise")]
    for size, batch, targets in cases or PRESETS["cpu"]["export"]:
        out.append(_pair("export (ONNX Runtime)", f"{size}px b{batch}", cfg(ours, size, batch), cfg(base, size, batch),
                         f"{ours} ({tag}, {attention} attention)", f"{base} ({tag})",
                         targets=targets if (ours, base, attention) == ("botnet50", "resnet50", "scan") else {}))
    return out


SUITES: dict[str, Callable[..., list[Comparison]]] = {
    "attention": suite_attention,
    "backbone": suite_backbone,
    "maskrcnn": suite_maskrcnn,
    "efficientnet": suite_efficientnet,
    "options": suite_options,
    "compile": suite_compile,
    "data": suite_data,
    "export": suite_export,
}


def make_suite(name: str, **kw) -> list[Comparison]:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    return SUITES[name](**kw)
